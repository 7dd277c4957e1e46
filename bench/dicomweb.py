"""DICOMweb side by side with Orthanc: STOW-RS, QIDO-RS, WADO-RS, frames, rendered, memory.

Both servers run on loopback in their own processes, loaded with the same synthetic data (the
300-slice 512×512 CT of ``bench.common.generate_dataset`` and ``--small-studies`` one-slice
studies), and are driven by the same client (``requests``, one connection, the same
concurrency) with the same requests:

- cloudfilm: ``cloudfilm serve`` (uvicorn, one process) on an embedded archive (SQLite WAL
  ``synchronous=FULL`` + file store) in a fresh folder under ``bench/out/dicomweb/``;
- Orthanc: ``/usr/sbin/Orthanc bench/orthanc-dicomweb.json`` (Debian's ``orthanc`` +
  ``orthanc-dicomweb``), whose configuration differs from ``/etc/orthanc`` only in paths,
  ports and the plugin list (checked at start), with a fresh ``bench/out/orthanc-dicomweb-db``.

Measurements (each figure for both servers and their ratio):

- STOW-RS of the CT as one request of 300 instances, and as 300 requests of one instance
  (``--rounds`` fresh servers each; instances/s);
- QIDO-RS ``/studies?PatientID=`` and ``/studies?PatientName=<prefix>*``; the listing of the
  300 instances of the CT series; study ``/metadata``; whole-study WADO-RS (``transfer-syntax=*``,
  MB/s); one frame (``application/octet-stream``); one ``/rendered`` JPEG, each request on
  another slice so that nothing derived is cached yet (milliseconds, ``--repeat`` requests);
- peak RSS of each server during each workload (``VmHWM`` after resetting it through
  ``/proc/PID/clear_refs`` at the start of the workload).

Run from the repository root: ``python -m bench.dicomweb`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.common import (
    MB,
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

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_CONFIG = ROOT / "bench" / "orthanc-dicomweb.json"
ORTHANC_DB = ROOT / "bench" / "out" / "orthanc-dicomweb-db"
ORTHANC_HTTP = 18542
ORTHANC_DEFAULTS = (Path("/etc/orthanc/orthanc.json"), Path("/etc/orthanc/dicomweb.json"))
#: The only top-level settings allowed to differ from Debian's defaults.
ALLOWED_DIFFERENCES = {"StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort", "Plugins"}
RUN_DIR = OUT_DIR / "dicomweb"
BOUNDARY = "bench-dicomweb-boundary-0b7c"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
PACKAGES = ("cloudfilm", "fastapi", "uvicorn", "pydicom", "SQLAlchemy", "numpy", "pillow")

#: The issue's targets, on the ratio cloudfilm / Orthanc.
THROUGHPUT_TARGET = Target(">=", 1.2, on="ratio")
QUERY_TARGET = Target("<=", 0.5, on="ratio")
METADATA_TARGET = Target("<=", 0.2, on="ratio")
RETRIEVE_TARGET = Target(">=", 1.0, on="ratio")
RENDER_TARGET = Target("<=", 1.0, on="ratio")
RSS_TARGET = Target("<=", 1.0, on="ratio")


# =============================================================================== servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One running server: its DICOMweb root, process and a client session."""

    name: str
    base: str
    proc: subprocess.Popen[bytes]
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reset_peak(self) -> None:
        """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5)."""
        with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")

    def peak_rss(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmHWM for {self.name}")

    def stop(self) -> None:
        self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_until(url: str, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited at start:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{name} did not answer {url}")


def start_cloudfilm(folder: Path, principal: str = "development") -> Server:
    """A cloudfilm server on a fresh data folder. ``principal``: ``development`` (requests
    without credentials) or ``institution`` (every request with the API key of a hospital's
    technologist, so that stores are that hospital's and queries pay for its access rules:
    the institution's studies or a patient's consent)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = free_port()
    env = child_env(drop_prefixes=("CLOUDFILM_",))
    env.update(CLOUDFILM_DATA_DIR=str(folder / "data"), CLOUDFILM_MIN_FREE_BYTES="0",
               CLOUDFILM_HTTP_PORT=str(port), CLOUDFILM_LOG_LEVEL="WARNING")  # fmt: skip
    key = _institution_key(env) if principal == "institution" else None
    log = folder / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudfilm.cli", "serve"], env=env, stdout=out, stderr=out,
            cwd=ROOT,
        )  # fmt: skip
    origin = f"http://127.0.0.1:{port}"
    _wait_until(f"{origin}/health", proc, "cloudfilm", log)
    server = Server("cloudfilm", f"{origin}/dicomweb", proc)
    if key is not None:
        server.session.headers["Authorization"] = f"Bearer {key}"
    return server


def _institution_key(env: dict[str, str]) -> str:
    """Add the hospital ``bench`` and create its technologist's API key (``cloudfilm`` CLI)."""

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cloudfilm.cli", *args], env=env, cwd=ROOT,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout

    cli("institutions", "add", "bench", "--name", "Bench Hospital")
    created = json.loads(cli("apikeys", "create", "--institution", "bench", "--json"))
    return str(created["key"])


def start_orthanc() -> Server:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", ORTHANC_HTTP)) == 0:
            raise SystemExit(f"port {ORTHANC_HTTP} is taken: is another Orthanc running?")
    shutil.rmtree(ORTHANC_DB, ignore_errors=True)
    ORTHANC_DB.parent.mkdir(parents=True, exist_ok=True)
    log = RUN_DIR / "orthanc.log"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ORTHANC), str(ORTHANC_CONFIG)], stdout=out, stderr=out)
    _wait_until(f"http://127.0.0.1:{ORTHANC_HTTP}/system", proc, "Orthanc", log)
    return Server("Orthanc", f"http://127.0.0.1:{ORTHANC_HTTP}/dicom-web", proc)


# ===================================================================== Orthanc configuration


def strip_json_comments(text: str) -> str:
    """JSON with ``//`` and ``/* */`` comments (Orthanc's format) as plain JSON."""
    out: list[str] = []
    i, quoted = 0, False
    while i < len(text):
        char = text[i]
        if quoted:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(char)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def orthanc_config_differences() -> set[str]:
    """Top-level settings of our configuration that differ from Debian's defaults."""
    ours = json.loads(strip_json_comments(ORTHANC_CONFIG.read_text(encoding="utf-8")))
    defaults: dict[str, Any] = {}
    for path in ORTHANC_DEFAULTS:
        defaults.update(json.loads(strip_json_comments(path.read_text(encoding="utf-8"))))
    keys = set(ours) | set(defaults)
    return {k for k in keys if ours.get(k) != defaults.get(k)}


def check_orthanc_config() -> None:
    differences = orthanc_config_differences()
    if not differences <= ALLOWED_DIFFERENCES:
        extra = sorted(differences - ALLOWED_DIFFERENCES)
        raise SystemExit(f"{ORTHANC_CONFIG} differs from /etc/orthanc in {extra}")
    config = json.loads(strip_json_comments(ORTHANC_CONFIG.read_text(encoding="utf-8")))
    assert config.get("SyncStorageArea", True) is True
    assert "PostgreSQL" not in config and "MySQL" not in config  # SQLite index


# ====================================================================================== data


@dataclass
class Data:
    ct: list[bytes]
    small: list[bytes]
    ct_study: str
    ct_series: str
    ct_instances: list[str]
    patient_id: str
    name_prefix: str


def small_studies(count: int, seed: int = 7) -> list[bytes]:
    """``count`` one-slice 64×64 CT studies of ``count`` patients (cached as files)."""
    folder = OUT_DIR / "data" / f"small-{count}-seed{seed}"
    marker = folder / ".complete"
    if not marker.is_file():
        from pydicom.dataset import Dataset

        from cloudfilm.dicom.synth import generate_studies

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        datasets: Iterator[Dataset] = generate_studies(
            seed=seed, modality="CT", slices=1, patients=count, rows=64, columns=64
        )
        for index, ds in enumerate(datasets):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            (folder / f"{index:05d}.dcm").write_bytes(buffer.getvalue())
        marker.write_text("ok")
    return [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]


def load_data(small_count: int) -> Data:
    import pydicom

    ct_set = generate_dataset()
    ct = [p.read_bytes() for p in ct_set.files]
    heads = [pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True) for b in ct]
    heads.sort(key=lambda d: int(d.InstanceNumber))
    small = small_studies(small_count)
    probe = pydicom.dcmread(io.BytesIO(small[len(small) // 2]), stop_before_pixels=True)
    family = str(probe.PatientName).split("^")[0].split("=")[0]
    return Data(
        ct=ct,
        small=small,
        ct_study=str(heads[0].StudyInstanceUID),
        ct_series=str(heads[0].SeriesInstanceUID),
        ct_instances=[str(d.SOPInstanceUID) for d in heads],
        patient_id=str(probe.PatientID),
        name_prefix=family[:3] + "*",
    )


# ================================================================================== client


def multipart(parts: list[bytes]) -> bytes:
    body = bytearray()
    for part in parts:
        body += f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    return bytes(body)


def stow(server: Server, parts: list[bytes], session: requests.Session | None = None) -> None:
    response = (session or server.session).post(
        f"{server.base}/studies",
        data=multipart(parts),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=600,
    )
    if response.status_code != 200:
        raise SystemExit(
            f"{server.name} STOW answered {response.status_code}: {response.text[:300]}"
        )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def get(server: Server, path: str, accept: str, params: dict[str, str] | None = None) -> int:
    """GET and read the whole answer in chunks; returns its size. Fails unless 200."""
    size = 0
    with server.session.get(
        server.base + path + query_string(params), headers={"Accept": accept}, stream=True,
        timeout=600,
    ) as response:  # fmt: skip
        if response.status_code != 200:
            raise SystemExit(
                f"{server.name} GET {path} answered {response.status_code}: {response.text[:300]}"
            )
        for chunk in response.iter_content(chunk_size=1 << 20):
            size += len(chunk)
    return size


def query_string(params: dict[str, str] | None) -> str:
    """``?k=v&…`` with ``*`` left as is: Orthanc's DICOMweb 1.7 does not decode ``%2A``, so a
    wildcard sent the way ``requests`` encodes it would match nothing there."""
    return "?" + urlencode(params, safe="*") if params else ""


def count_results(server: Server, path: str, params: dict[str, str]) -> int:
    response = server.session.get(
        server.base + path + query_string(params),
        headers={"Accept": "application/dicom+json"},
        timeout=60,
    )
    response.raise_for_status()
    return len(response.json())


# =============================================================================== workloads


@dataclass
class Measured:
    """Values of one workload for one server, and the server's peak RSS during it."""

    values: list[float]
    peak_rss: int


def measure(server: Server, run: Callable[[], list[float]]) -> Measured:
    server.reset_peak()
    values = run()
    return Measured(values, server.peak_rss())


def stow_one_request(server: Server, data: Data) -> list[float]:
    seconds = timed(lambda: stow(server, data.ct))
    return [len(data.ct) / seconds]


def stow_many_requests(server: Server, data: Data, concurrency: int) -> list[float]:
    sessions = [requests.Session() for _ in range(concurrency)]
    for session in sessions:  # the same credentials as the server's own session
        session.headers.update(server.session.headers)

    def send(index: int) -> None:
        stow(server, [data.ct[index]], sessions[index % concurrency])

    def run() -> None:
        if concurrency == 1:
            for i in range(len(data.ct)):
                send(i)
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(send, range(len(data.ct))))

    seconds = timed(run)
    for s in sessions:
        s.close()
    return [len(data.ct) / seconds]


def latencies(server: Server, paths: list[tuple[str, str, dict[str, str] | None]]) -> list[float]:
    """Milliseconds of each request (answer read to its end)."""
    out = []
    for path, accept, params in paths:
        out.append(timed(lambda p=path, a=accept, q=params: get(server, p, a, q)) * 1000)
    return out


def read_workloads(data: Data, repeat: int) -> dict[str, Callable[[Server], list[float]]]:
    study = f"/studies/{data.ct_study}"
    series = f"{study}/series/{data.ct_series}"
    json_type = "application/dicom+json"
    octet = 'multipart/related; type="application/octet-stream"'
    middle = len(data.ct_instances) // 2
    slices = [data.ct_instances[(middle + i * 7) % len(data.ct_instances)] for i in range(repeat)]
    count = len(data.ct_instances)
    rendered = [data.ct_instances[(i * 2) % count] for i in range(repeat)]
    warm_render = [data.ct_instances[(i * 2 + 1) % count] for i in range(3)]

    def whole_study(server: Server) -> list[float]:
        out = []
        for _ in range(max(3, repeat // 10)):
            start = time.perf_counter()
            size = get(server, study, ANY_SYNTAX)
            out.append(size / MB / (time.perf_counter() - start))
        return out

    return {
        "qido-patient-id": lambda s: latencies(
            s, [("/studies", json_type, {"PatientID": data.patient_id, "limit": "1000"})] * repeat
        ),
        "qido-patient-name": lambda s: latencies(
            s,
            [("/studies", json_type, {"PatientName": data.name_prefix, "limit": "1000"})] * repeat,
        ),
        "series-instances": lambda s: latencies(
            s, [(f"{series}/instances", json_type, {"limit": "1000"})] * repeat
        ),
        "study-metadata": lambda s: latencies(s, [(f"{study}/metadata", json_type, None)] * repeat),
        "whole-study": whole_study,
        "one-frame": lambda s: latencies(
            s, [(f"{series}/instances/{uid}/frames/1", octet, None) for uid in slices]
        ),
        "rendered-warm-up": lambda s: latencies(
            s, [(f"{series}/instances/{uid}/rendered", "image/jpeg", None) for uid in warm_render]
        ),
        "rendered": lambda s: latencies(
            s, [(f"{series}/instances/{uid}/rendered", "image/jpeg", None) for uid in rendered]
        ),
    }


def check_loaded(server: Server, data: Data) -> None:
    listed = count_results(
        server, f"/studies/{data.ct_study}/series/{data.ct_series}/instances", {"limit": "1000"}
    )
    if listed != len(data.ct):
        raise SystemExit(f"{server.name} lists {listed} CT instances, expected {len(data.ct)}")
    found = count_results(server, "/studies", {"PatientID": data.patient_id, "limit": "1000"})
    if found < 1:
        raise SystemExit(f"{server.name} does not find patient {data.patient_id}")


# ==================================================================================== main


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def add(self, workload: str, server: str, measured: Measured) -> None:
        self.values.setdefault(workload, {}).setdefault(server, []).extend(measured.values)
        self.rss.setdefault(workload, {}).setdefault(server, []).append(measured.peak_rss)


def _quiet(args: argparse.Namespace, results: Results) -> None:
    """Wait (up to ``--quiet-wait`` s) for other processes to calm down; note the load."""
    if args.quiet_wait > 0:
        load = wait_for_quiet(args.quiet_wait)
        results.loads.append(load)


def run(args: argparse.Namespace) -> Results:
    check_orthanc_config()
    data = load_data(args.small_studies)
    results = Results()
    for round_index in range(args.rounds):
        order = ["cloudfilm", "Orthanc"] if round_index % 2 == 0 else ["Orthanc", "cloudfilm"]
        for name in order:
            for workload in ("stow-1-request", "stow-300-requests"):
                server = _start(name, round_index, args.principal)
                try:
                    _quiet(args, results)
                    if workload == "stow-1-request":
                        m = measure(server, lambda s=server: stow_one_request(s, data))
                    else:
                        m = measure(
                            server, lambda s=server: stow_many_requests(s, data, args.concurrency)
                        )
                    results.add(workload, name, m)
                    print(f"round {round_index + 1} {name:9s} {workload}: {m.values[0]:.1f} inst/s",
                          flush=True)  # fmt: skip
                finally:
                    server.stop()
    for name in ("cloudfilm", "Orthanc"):
        server = _start(name, 99, args.principal)
        try:
            stow(server, data.ct)
            start = time.perf_counter()
            for i in range(0, len(data.small), 100):
                stow(server, data.small[i : i + 100])
            results.info[f"{name} load of {len(data.small)} small studies (s)"] = round(
                time.perf_counter() - start, 2
            )
            check_loaded(server, data)
            matches = count_results(
                server, "/studies", {"PatientName": data.name_prefix, "limit": "1000"}
            )
            results.info[f"{name} studies matching PatientName={data.name_prefix}"] = matches
            for workload, fn in read_workloads(data, args.repeat).items():
                if workload == "rendered-warm-up":  # decoders loaded, on other slices
                    fn(server)
                    continue
                if workload != "rendered":  # rendered: each slice once, nothing cached
                    fn(server)  # warm-up pass (connections, first-use caches)
                _quiet(args, results)
                measured = measure(server, lambda f=fn, s=server: f(s))
                results.add(workload, name, measured)
                print(f"{name:9s} {workload}: median {Stats.of(measured.values).median:.2f}",
                      flush=True)  # fmt: skip
        finally:
            server.stop()
    return results


def _start(name: str, index: int, principal: str = "development") -> Server:
    if name == "cloudfilm":
        return start_cloudfilm(RUN_DIR / f"cloudfilm-{index}", principal)
    return start_orthanc()


LABELS = {
    "stow-1-request": ("STOW-RS, CT in 1 request of 300", "inst/s", THROUGHPUT_TARGET),
    "stow-300-requests": ("STOW-RS, CT in 300 requests of 1", "inst/s", THROUGHPUT_TARGET),
    "qido-patient-id": ("QIDO /studies?PatientID=", "ms", QUERY_TARGET),
    "qido-patient-name": ("QIDO /studies?PatientName=abc*", "ms", QUERY_TARGET),
    "series-instances": ("QIDO 300 instances of a series", "ms", QUERY_TARGET),
    "study-metadata": ("WADO-RS study /metadata (300)", "ms", METADATA_TARGET),
    "whole-study": ("WADO-RS whole study (157 MB)", "MB/s", RETRIEVE_TARGET),
    "one-frame": ("WADO-RS one frame", "ms", None),
    "rendered": ("WADO-RS /rendered JPEG, not cached", "ms", RENDER_TARGET),
}


def table_rows(results: Results) -> list[Row]:
    rows: list[Row] = []
    for workload, (label, unit, target) in LABELS.items():
        values = results.values.get(workload, {})
        if "cloudfilm" not in values:
            continue
        reference = Stats.of(values["Orthanc"]).median if "Orthanc" in values else None
        rows.append(
            Row(f"{label}: cloudfilm", unit, Stats.of(values["cloudfilm"]), reference, target)
        )
        if "Orthanc" in values:
            rows.append(Row(f"{label}: Orthanc", unit, Stats.of(values["Orthanc"])))
    for workload, (label, _unit, _target) in LABELS.items():
        rss = results.rss.get(workload, {})
        if "cloudfilm" in rss and "Orthanc" in rss:
            ours = Stats.of(v / MB for v in rss["cloudfilm"])
            theirs = Stats.of(v / MB for v in rss["Orthanc"])
            rows.append(Row(f"peak RSS, {label}: cloudfilm", "MB", ours, theirs.median, RSS_TARGET))
            rows.append(Row(f"peak RSS, {label}: Orthanc", "MB", theirs))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh-server STOW rounds (3)")
    parser.add_argument("--repeat", type=int, default=30, help="requests per read workload (30)")
    parser.add_argument("--small-studies", type=int, default=1000, help="small studies (1000)")
    parser.add_argument("--concurrency", type=int, default=1, help="client threads for STOW (1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each workload wait up to this many seconds for other processes to go "
        "below 0.3 busy cores (use it on a shared machine)",
    )
    parser.add_argument(
        "--principal",
        choices=("development", "institution"),
        default="development",
        help="who cloudfilm's requests come from: no credentials (development, the default) or "
        "a hospital's API key (institution: its access rules, consents included, are paid for)",
    )
    parser.add_argument(
        "--check-orthanc-config", action="store_true", help="only check the Orthanc configuration"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain `kill` stops the servers too (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not ORTHANC.exists():
        raise SystemExit("Orthanc is not installed (Debian packages orthanc, orthanc-dicomweb)")
    if args.check_orthanc_config:
        check_orthanc_config()
        print(f"{ORTHANC_CONFIG.name} differs from /etc/orthanc only in "
              f"{sorted(orthanc_config_differences())}")  # fmt: skip
        return 0
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    results = run(args)
    rows = table_rows(results)
    info = machine_info(RUN_DIR, PACKAGES)
    orthanc_version = subprocess.run([str(ORTHANC), "--version"], capture_output=True, text=True)
    print()
    print(format_machine(info))
    version = orthanc_version.stdout.splitlines()[0] if orthanc_version.stdout else "?"
    config = ORTHANC_CONFIG.relative_to(ROOT)
    print(f"orthanc:  {version}, DICOMweb plugin of orthanc-dicomweb; config {config}")
    print(
        f"client:   requests, concurrency {args.concurrency}, cloudfilm principal "
        f"{args.principal}; {args.rounds} STOW rounds; "
        f"{args.repeat} requests per read workload; {args.small_studies} small studies"
    )
    for key, value in results.info.items():
        print(f"info:     {key}: {value}")
    if results.loads:
        print(
            f"load:     other processes kept {max(results.loads):.2f} cores busy at most "
            f"(median {sorted(results.loads)[len(results.loads) // 2]:.2f}) before the workloads"
        )
    print()
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": info,
                    "rows": [r.to_json() for r in rows],
                    "info": results.info,
                    "background_loads": results.loads,
                    "raw": {"values": results.values, "rss": results.rss},
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
