"""The mobile viewer on an emulated phone link: first image, whole stack, bytes, code size.

A ``cloudfilm serve`` process (one uvicorn process, the embedded archive) holds the 300-slice
512×512 CT of ``bench.common.generate_dataset``. Debian's chromium, driven by Playwright with a
phone viewport (390×844), opens ``/viewer/studies/{uid}`` through DevTools network emulation
(``Network.emulateNetworkConditions``: 10 Mbit/s down, 5 Mbit/s up, 40 ms round trip) with an
empty browser cache, and the page reports:

- **first image**: milliseconds from the start of the navigation until the canvas shows the
  first image (``#viewer[data-first-image]``, set after the first ``drawImage``);
- **whole stack**: until every one of the 300 slices is held at display quality
  (``#viewer[data-state="complete"]``, ``data-complete-ms``);
- **bytes**: bytes received for the navigation (``Network.loadingFinished``
  ``encodedDataLength``, headers included), by kind;
- **full fidelity**: once the stack is complete, milliseconds from choosing the lung window
  preset until the slice in view is drawn from its full-fidelity pixels (WADO-RS ``/frames``,
  gzip content coding), measured from the test driver (``data-quality="full"``);
- **page code**: gzip (level 9) of the page's own HTML, its scripts (``viewer.js``,
  ``viewer-pixels.js``, ``viewer-film.js``) and styles (``viewer.css``, ``base.css``).

Each round restarts the server with an empty render cache: the first navigation ("cold") has
every JPEG rendered on demand; a second navigation in a new browser context ("warm server")
finds them in the server's render cache, as the second patient of a shared study would.

Run from the repository root: ``python -m bench.viewer`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.common import (
    OUT_DIR,
    ROOT,
    Row,
    Stats,
    Target,
    child_env,
    format_machine,
    format_table,
    generate_dataset,
    machine_info,
    wait_for_quiet,
)
from bench.dicomweb import free_port

RUN_DIR = OUT_DIR / "viewer"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
PHONE = {"width": 390, "height": 844}
#: The phone link of the issue: 10 Mbit/s down, 40 ms round trip (upload is not specified).
LINK = {"offline": False, "latency": 40, "downloadThroughput": 10e6 / 8,
        "uploadThroughput": 5e6 / 8}  # fmt: skip
STATIC = ROOT / "src" / "cloudfilm" / "web" / "static"
PACKAGES = ("cloudfilm", "fastapi", "uvicorn", "pydicom", "numpy", "pillow", "playwright")
FIRST_TARGET = Target("<=", 1000, unit="ms")
STACK_TARGET = Target("<=", 15000, unit="ms")
CODE_TARGET = Target("<=", 200, unit="kB")


# =============================================================================== data


def load_archive(data_dir: Path) -> str:
    """Load the 300-slice CT into an archive in ``data_dir`` (once); its Study Instance UID."""
    marker = data_dir / "loaded.json"
    dataset = generate_dataset()
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if meta.get("files") == len(dataset.files) and meta.get("folder") == str(dataset.folder):
            return str(meta["study_uid"])
    shutil.rmtree(data_dir, ignore_errors=True)
    import pydicom

    from cloudfilm.archive import Archive
    from cloudfilm.core.config import Settings

    # the same archive the server opens (its CLOUDFILM_* variables are dropped)
    settings = Settings(data_dir=data_dir, database_url=None, storage="file", min_free_bytes=0)
    with Archive.open(settings) as archive:
        for path in dataset.files:
            result = archive.store(path.read_bytes())
            if not result.ok:
                raise SystemExit(f"could not store {path}: {result}")
    study_uid = str(pydicom.dcmread(dataset.files[0], stop_before_pixels=True).StudyInstanceUID)
    marker.write_text(
        json.dumps({"files": len(dataset.files), "folder": str(dataset.folder),
                    "study_uid": study_uid}),
        encoding="utf-8",
    )  # fmt: skip
    return study_uid


# ============================================================================== server


@dataclass
class Server:
    origin: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(data_dir: Path, log: Path) -> Server:
    """``cloudfilm serve`` on ``data_dir`` with an empty render cache."""
    shutil.rmtree(data_dir / "cache" / "rendered", ignore_errors=True)
    port = free_port()
    env = child_env(drop_prefixes=("CLOUDFILM_",))
    env.update(CLOUDFILM_DATA_DIR=str(data_dir), CLOUDFILM_MIN_FREE_BYTES="0",
               CLOUDFILM_HTTP_PORT=str(port), CLOUDFILM_LOG_LEVEL="WARNING")  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudfilm.cli", "serve"], env=env, stdout=out, stderr=out,
            cwd=ROOT,
        )  # fmt: skip
    origin = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(f"{origin}/health", timeout=2).status_code == 200:
                return Server(origin, proc)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer /health")


# ============================================================================= browser


@dataclass
class Visit:
    """One navigation: times from its start (ms) and bytes received by kind."""

    first_image_ms: float
    complete_ms: float
    full_fidelity_ms: float
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    requests_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())


def kind_of(url: str) -> str:
    if "/static/" in url:
        return "code"
    if "/thumbnail" in url:
        return "thumbnails"
    if "/rendered" in url:
        return "rendered images"
    if "/frames/" in url:
        return "frames"
    if url.endswith("/metadata"):
        return "metadata"
    if "/viewer/studies/" in url:
        return "page"
    return "other"


def visit(browser: Any, url: str, timeout_ms: int) -> Visit:
    """Open ``url`` in a fresh context on the emulated link and wait for the whole stack."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=3, has_touch=True,
                                  is_mobile=True)  # fmt: skip
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    urls: dict[str, str] = {}
    received: dict[str, int] = defaultdict(int)
    counted: dict[str, int] = defaultdict(int)

    def on_response(event: dict[str, Any]) -> None:
        urls[event["requestId"]] = event["response"]["url"]

    def on_finished(event: dict[str, Any]) -> None:
        kind = kind_of(urls.get(event["requestId"], ""))
        received[kind] += int(event["encodedDataLength"])
        counted[kind] += 1

    cdp.on("Network.responseReceived", on_response)
    cdp.on("Network.loadingFinished", on_finished)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", LINK)
    try:
        page.goto(url, wait_until="commit")
        page.wait_for_selector("#viewer[data-first-image]", timeout=timeout_ms, state="attached")
        page.wait_for_selector("#viewer[data-state=complete]", timeout=timeout_ms, state="attached")
        first = float(page.get_attribute("#viewer", "data-first-image") or "nan")
        complete = float(page.get_attribute("#viewer", "data-complete-ms") or "nan")
        page.wait_for_timeout(200)  # let the last loadingFinished events arrive
        loaded = dict(received), dict(counted)
        start = time.perf_counter()
        page.select_option(".viewer-preset", "-600,1500")
        page.wait_for_selector("#viewer[data-quality=full]", timeout=timeout_ms, state="attached")
        full = (time.perf_counter() - start) * 1000
        return Visit(first, complete, full, *loaded)
    finally:
        context.close()


def page_code_bytes(origin: str, study_uid: str) -> dict[str, int]:
    """gzip -9 sizes of the page's own HTML, script and styles."""
    html = requests.get(f"{origin}/viewer/studies/{study_uid}?lang=zh", timeout=30).content
    sizes = {"page HTML": len(gzip.compress(html, 9))}
    for name in ("viewer.js", "viewer-pixels.js", "viewer-film.js", "viewer.css", "base.css"):
        sizes[name] = len(gzip.compress((STATIC / name).read_bytes(), 9))
    return sizes


# ================================================================================= run


@dataclass
class Results:
    first: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    complete: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    full: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    total_bytes: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    bytes_by_kind: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    requests_by_kind: dict[str, int] = field(default_factory=dict)
    code: dict[str, int] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)


def run(args: argparse.Namespace) -> Results:
    from playwright.sync_api import sync_playwright

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    data_dir = RUN_DIR / "data"
    study_uid = load_archive(data_dir)
    results = Results()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for round_number in range(args.rounds):
                if args.quiet_wait:
                    results.loads.append(wait_for_quiet(args.quiet_wait))
                server = start_server(data_dir, RUN_DIR / "server.log")
                try:
                    url = f"{server.origin}/viewer/studies/{study_uid}?lang=zh"
                    for label in ("cold server", "warm server"):
                        seen = visit(browser, url, args.timeout * 1000)
                        record(results, label, seen)
                        print(f"round {round_number + 1} {label}: first image "
                              f"{seen.first_image_ms:.0f} ms, whole stack "
                              f"{seen.complete_ms:.0f} ms, {seen.total_bytes / 1e6:.2f} MB, "
                              f"full fidelity {seen.full_fidelity_ms:.0f} ms",
                              flush=True)  # fmt: skip
                    if not results.code:
                        results.code = page_code_bytes(server.origin, study_uid)
                finally:
                    server.stop()
        finally:
            browser.close()
    return results


def record(results: Results, label: str, seen: Visit) -> None:
    results.first[label].append(seen.first_image_ms)
    results.complete[label].append(seen.complete_ms)
    results.full[label].append(seen.full_fidelity_ms)
    results.total_bytes[label].append(seen.total_bytes)
    by_kind = results.bytes_by_kind.setdefault(label, defaultdict(list))
    for kind, size in seen.bytes_by_kind.items():
        by_kind[kind].append(size)
    results.requests_by_kind = dict(seen.requests_by_kind)


def table_rows(results: Results) -> list[Row]:
    rows: list[Row] = []
    for label in results.first:
        rows.append(Row(f"first image shown, {label}", "ms", Stats.of(results.first[label]),
                        target=FIRST_TARGET))  # fmt: skip
        rows.append(Row(f"whole stack at display quality, {label}", "ms",
                        Stats.of(results.complete[label]), target=STACK_TARGET))  # fmt: skip
        rows.append(Row(f"lung preset to full-fidelity image, {label}", "ms",
                        Stats.of(results.full[label])))  # fmt: skip
        rows.append(Row(f"bytes received, {label}", "MB",
                        Stats.of(v / 1e6 for v in results.total_bytes[label])))  # fmt: skip
        for kind, sizes in sorted(results.bytes_by_kind[label].items()):
            if not any(sizes):
                continue
            rows.append(Row(f"  of which {kind}", "MB", Stats.of(v / 1e6 for v in sizes)))
    total = sum(results.code.values())
    rows.append(Row("page code and styles, gzip -9", "kB", Stats.of([total / 1000]),
                    target=CODE_TARGET))  # fmt: skip
    for name, size in results.code.items():
        rows.append(Row(f"  of which {name}", "kB", Stats.of([size / 1000])))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh-server rounds (3)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per navigation (180)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--quiet-wait", type=float, default=0.0,
        help="before each round wait up to this many seconds for other processes to go below "
        "0.3 busy cores (use it on a shared machine)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not CHROMIUM.exists():
        raise SystemExit("Debian's chromium is not installed (/usr/bin/chromium)")
    started = datetime.now(UTC)
    results = run(args)
    rows = table_rows(results)
    info = machine_info(RUN_DIR, PACKAGES)
    chromium = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True)
    print()
    print(format_machine(info))
    print(
        f"browser:  {chromium.stdout.strip()}, viewport 390×844 @3x, touch; link "
        f"{LINK['downloadThroughput'] * 8 / 1e6:g} Mbit/s down, "
        f"{LINK['uploadThroughput'] * 8 / 1e6:g} Mbit/s up, {LINK['latency']} ms round trip"
    )
    print(f"requests: {results.requests_by_kind}")
    if results.loads:
        print(f"load:     other processes kept {max(results.loads):.2f} cores busy at most "
              "before the rounds")  # fmt: skip
    print()
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"started": started.isoformat(), "machine": info,
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "rows": [r.to_json() for r in rows]}, indent=1),
            encoding="utf-8",
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
