"""A link's token never reaches the server's log (it opens the patient's images)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests
from share_support import People, ServeProcess, token_of, unlock

from cloudfilm.core.logs import RedactSecrets, redact
from cloudfilm.sharing.links import ShareLinks, ShareRequest

TOKEN = "AbCdEfGhIjKlMnOpQrStUv"


def test_redact_hides_share_tokens_and_secret_query_values() -> None:
    assert redact(f"GET /s/{TOKEN}/dicomweb/studies HTTP/1.1") == (
        "GET /s/{token}/dicomweb/studies HTTP/1.1"
    )
    wado = f"/wado?requestType=WADO&token={TOKEN}&x=1"
    assert redact(wado) == "/wado?requestType=WADO&token=***&x=1"
    assert redact("/dicomweb/studies?PatientID=123") == "/dicomweb/studies?PatientID=123"


def test_the_filter_rewrites_arguments_as_uvicorn_passes_them() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/s/{TOKEN}?lang=en", "1.1", 200), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record)
    assert TOKEN not in record.getMessage()
    assert "/s/{token}?lang=en" in record.getMessage()


@pytest.mark.db
@pytest.mark.slow
def test_serve_logs_no_token(
    cli_env: dict[str, str], people: People, links: ShareLinks, tmp_path: Path
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    server = ServeProcess(cli_env, tmp_path / "serve.log", log_level="INFO")
    try:
        server.wait_healthy()
        session = requests.Session()
        assert session.get(f"{server.origin}/s/{token}", timeout=30).status_code == 200
        assert unlock(session, server.origin, token, "000000").status_code in (401, 429)
        assert unlock(session, server.origin, token, issued.code or "").status_code == 303
        studies = session.get(f"{server.origin}/s/{token}/dicomweb/studies", timeout=30)
        assert studies.status_code == 200
        assert session.get(f"{server.origin}/s/{token}/no-such-page", timeout=30).status_code == 404
    finally:
        server.stop()
    output = server.output()
    assert "/s/{token}/dicomweb/studies" in output  # the access log is on, and redacted
    assert token not in output
    assert (issued.code or "") not in output
