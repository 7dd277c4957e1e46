"""Routing rules and the forwarding queue: what arrives is sent on to known peers.

After each successful store (``route_stored``, called by the C-STORE handler, STOW-RS and the
importer, never by the archive itself), the instance is matched against the ``dimse_routes``
rules; for every rule that matches, one ``DimseForward`` row is queued for the rule's peer.
Only instances stored now (or replacing an older copy) are queued: an exact duplicate was
queued when it first arrived. Nothing is sent back to the AE it came from.

``ForwardWorker.step`` works the queue (from a ``jobs.JobLoop`` thread of ``cloudfilm serve``
or ``cloudfilm dimse``): it claims up to ``dimse_queue_batch`` due jobs of one peer, sends
them over one association (``scu.send_instances``: originals as stored, transcoded only if
the peer accepts nothing else) and records each outcome. A peer that cannot be reached leaves
the jobs pending for a later attempt (``jobs``: exponential back-off); an instance the peer
refuses is retried the same way; an instance no longer in the archive, or a peer no longer
known, fails the job at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pynetdicom import AE
from sqlalchemy import select

from cloudfilm.archive import Archive, StoreResult, StoreStatus
from cloudfilm.core.config import DimseRouteConfig
from cloudfilm.dimse import jobs
from cloudfilm.dimse.peers import PeerDirectory
from cloudfilm.dimse.scu import CannotAssociate, SendOutcome, send_instances
from cloudfilm.dimse.selection import RetrieveRequest, StoredInstance, select_instances
from cloudfilm.index.matching import Level
from cloudfilm.index.models import DimseForward, Series, utcnow

logger = logging.getLogger(__name__)

Origin = Literal["dimse", "stow", "import"]
#: Most UIDs in one ``IN (…)`` list.
_CHUNK = 500


@dataclass(frozen=True)
class Route:
    """A routing rule (``dimse_routes``): all its conditions must hold."""

    to: str
    from_ae: str | None = None
    sources: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: DimseRouteConfig) -> Route:
        return cls(config.to, config.from_ae, tuple(config.sources), tuple(config.modalities))

    def matches(self, origin: Origin, calling_ae: str | None, modality: str | None) -> bool:
        if self.sources and origin not in self.sources:
            return False
        if self.from_ae is not None and (origin != "dimse" or calling_ae != self.from_ae):
            return False
        return not self.modalities or (modality or "").upper() in self.modalities

    def __str__(self) -> str:
        parts = [f"from {self.from_ae}"] if self.from_ae else []
        if self.sources:
            parts.append("via " + "/".join(self.sources))
        if self.modalities:
            parts.append("modality " + "/".join(self.modalities))
        return f"{' '.join(parts) or 'everything'} -> {self.to}"


def route_stored(
    archive: Archive, result: StoreResult, *, origin: Origin, calling_ae: str | None = None
) -> int:
    """Queue a stored instance for every rule it matches; returns how many jobs were queued.

    Never raises: the instance is stored whatever happens here, so a failure is logged
    (with the instance, so that it can be sent with ``cloudfilm send``) and 0 is returned.
    """
    rules = archive.settings.dimse_routes
    if not rules or result.status is not StoreStatus.STORED or not result.sop_instance_uid:
        return 0
    try:
        return _queue(archive, [Route.of(r) for r in rules], result, origin, calling_ae)
    except Exception:
        logger.exception(
            "routing of %s (study %s) failed; it was stored but not queued",
            result.sop_instance_uid,
            result.study_uid,
        )
        return 0


def _queue(
    archive: Archive,
    routes: list[Route],
    result: StoreResult,
    origin: Origin,
    calling_ae: str | None,
) -> int:
    modality = _modality(archive, result) if any(r.modalities for r in routes) else None
    chosen: dict[str, Route] = {}
    for route in routes:
        if route.to != calling_ae and route.matches(origin, calling_ae, modality):
            chosen.setdefault(route.to, route)
    if not chosen:
        return 0
    source = f"{origin}:{calling_ae}" if calling_ae else origin
    with archive.sessions.begin() as session:
        for destination, route in chosen.items():
            session.add(
                DimseForward(
                    destination=destination,
                    study_uid=result.study_uid or "",
                    series_uid=result.series_uid or "",
                    sop_instance_uid=result.sop_instance_uid or "",
                    source=source[:100],
                    rule=str(route)[:200],
                )
            )
    jobs.notify()
    return len(chosen)


def _modality(archive: Archive, result: StoreResult) -> str | None:
    with archive.sessions() as session:
        modality = session.execute(
            select(Series.modality).where(Series.series_uid == result.series_uid)
        ).scalar()
        session.rollback()
    return modality


# ----------------------------------------------------------------------------- the worker


class ForwardWorker:
    """Works the forwarding queue: one peer's due jobs per step, over one association."""

    def __init__(self, archive: Archive, ae: AE, worker: str) -> None:
        self.archive = archive
        self.ae = ae
        self.worker = worker
        self.directory = PeerDirectory(archive)

    def step(self) -> bool:
        """Send one batch; False when nothing was due."""
        destination = self._next_destination()
        if destination is None:
            return False
        held = jobs.claim(
            self.archive,
            DimseForward,
            worker=self.worker,
            limit=self.archive.settings.dimse_queue_batch,
            where=[DimseForward.destination == destination],
        )
        if held.pks:
            self._work(destination, held)
        return True

    def _next_destination(self) -> str | None:
        now = utcnow()
        with self.archive.sessions() as session:
            found = session.execute(
                select(DimseForward.destination)
                .where(jobs.due(DimseForward, now))
                .order_by(DimseForward.next_attempt_at, DimseForward.pk)
                .limit(1)
            ).scalar()
            session.rollback()
        return found

    def _work(self, destination: str, held: jobs.Claim) -> None:
        uids = self._uids(held.pks)
        peer = self.directory.get(destination)
        if peer is None:
            reason = f"{destination} is not a known peer (cloudfilm peers add)"
            jobs.fail(self.archive, held, dict.fromkeys(held.pks, reason), hopeless=True)
            return
        instances = self._instances(list(uids.values()))
        found = {i.sop_instance_uid for i in instances}
        gone = {pk: "no longer in the archive" for pk, uid in uids.items() if uid not in found}
        jobs.fail(self.archive, held, gone, hopeless=True)
        by_uid: dict[str, list[int]] = {}
        for pk, uid in uids.items():
            by_uid.setdefault(uid, []).append(pk)
        progress = _Progress(self.archive, held)
        try:
            outcomes = send_instances(
                self.archive, self.ae, peer, instances, on_outcome=progress.seen
            )
        except CannotAssociate as exc:
            pending = [pk for pk in held.pks if pk not in gone]
            jobs.fail(self.archive, held, dict.fromkeys(pending, str(exc)))
            return
        self._record(destination, held, outcomes, by_uid)

    def _record(
        self,
        destination: str,
        held: jobs.Claim,
        outcomes: Sequence[SendOutcome],
        by_uid: dict[str, list[int]],
    ) -> None:
        done: list[int] = []
        failed: dict[int, str] = {}
        for outcome in outcomes:
            pks = by_uid.get(outcome.instance.sop_instance_uid, [])
            if outcome.category == "Failure":
                failed.update(dict.fromkeys(pks, outcome.error or "failed"))
            else:
                done.extend(pks)
        jobs.succeed(self.archive, held, done)
        jobs.fail(self.archive, held, failed)
        logger.info(
            "forwarded %d instance(s) to %s, %d failed", len(done), destination, len(failed)
        )

    def _uids(self, pks: Sequence[int]) -> dict[int, str]:
        with self.archive.sessions() as session:
            rows = session.execute(
                select(DimseForward.pk, DimseForward.sop_instance_uid).where(
                    DimseForward.pk.in_(list(pks))
                )
            ).all()
            session.rollback()
        return {pk: uid for pk, uid in rows}

    def _instances(self, uids: list[str]) -> list[StoredInstance]:
        found: list[StoredInstance] = []
        unique = list(dict.fromkeys(uids))
        with self.archive.sessions() as session:
            for start in range(0, len(unique), _CHUNK):
                request = RetrieveRequest(
                    Level.INSTANCE, sop_instance_uids=tuple(unique[start : start + _CHUNK])
                )
                found.extend(select_instances(session, request))
            session.rollback()
        return found


class _Progress:
    """Renews the claim's lease while a long batch is being sent."""

    def __init__(self, archive: Archive, held: jobs.Claim) -> None:
        self.archive = archive
        self.held = held
        self._renewed = time.monotonic()

    def seen(self, _outcome: SendOutcome) -> None:
        if time.monotonic() - self._renewed > jobs.LEASE.total_seconds() / 3:
            jobs.renew(self.archive, self.held)
            self._renewed = time.monotonic()
