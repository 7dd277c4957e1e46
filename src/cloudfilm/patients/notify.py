"""How one-time codes reach a patient's phone: a pluggable notifier (``notifier`` setting).

* ``outbox`` (the default, for tests and the demo): the message is kept in the index
  (``outbox_message``) and nothing is sent; ``cloudfilm patients outbox`` shows them.
* ``http``: the message is POSTed as JSON ``{"to": "+86…", "text": "…"}`` to
  ``sms_gateway_url`` (with ``Authorization: Bearer <sms_gateway_token>`` when set), which is
  how most SMS gateways, or a small adapter in front of one, are driven. A status other than
  2xx, or no answer within 10 seconds, is a failure the caller reports.

Message texts never go to the log (they hold codes); the log names the last digits only.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import insert, select

from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.index.models import OutboxMessage, utcnow

logger = logging.getLogger(__name__)

__all__ = ["Notifier", "NotifyFailed", "OutboxEntry", "notifier_for", "outbox"]


class NotifyFailed(CloudFilmError):
    """The message could not be handed to the gateway."""

    status = 503
    code = "notify-failed"


class Notifier(Protocol):
    def send(self, to: str, text: str) -> None: ...


@dataclass(frozen=True)
class OutboxEntry:
    to: str
    text: str
    at: datetime


class OutboxNotifier:
    """Keeps messages in the index instead of sending them."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def send(self, to: str, text: str) -> None:
        with self.archive.engine.begin() as conn:
            conn.execute(insert(OutboxMessage).values(to=to[:64], text=text[:1000],
                                                      created_at=utcnow()))  # fmt: skip
        logger.info("message for …%s kept in the outbox", to[-4:])


class HttpNotifier:
    """POSTs messages to an SMS gateway."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token

    def send(self, to: str, text: str) -> None:
        body = json.dumps({"to": to, "text": text}, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            logger.warning("SMS gateway not reached for …%s: %s", to[-4:], exc)
            raise NotifyFailed("the text message could not be sent; try again later") from None
        if not 200 <= status < 300:
            logger.warning("SMS gateway answered %d for …%s", status, to[-4:])
            raise NotifyFailed("the text message could not be sent; try again later")
        logger.info("message for …%s handed to the SMS gateway", to[-4:])


def notifier_for(archive: Archive) -> Notifier:
    settings = archive.settings
    if settings.notifier == "http" and settings.sms_gateway_url:
        return HttpNotifier(settings.sms_gateway_url, settings.sms_gateway_token)
    return OutboxNotifier(archive)


def outbox(archive: Archive, to: str | None = None, limit: int = 50) -> list[OutboxEntry]:
    """The newest messages the outbox notifier kept (for ``to`` when given), newest first."""
    query = select(OutboxMessage).order_by(OutboxMessage.pk.desc()).limit(limit)
    if to is not None:
        query = query.where(OutboxMessage.to == to)
    with archive.sessions() as session:
        return [OutboxEntry(m.to, m.text, m.created_at) for m in session.execute(query).scalars()]
