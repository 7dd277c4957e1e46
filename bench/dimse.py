"""DIMSE side by side with Orthanc: C-STORE throughput and C-FIND latency, in one run.

Both servers run as their own processes on loopback, each round on fresh storage:

* **cloudfilm**: ``cloudfilm dimse`` (the embedded default: SQLite index in WAL mode with
  ``synchronous=FULL``, file blobs fsync'd, renamed and their folder fsync'd before the
  C-STORE response), with the DCMTK tools as known peers;
* **Orthanc**: Debian's ``/usr/sbin/Orthanc`` with ``bench/orthanc.json``, which is Debian's
  ``/etc/orthanc/orthanc.json`` with other paths and ports, no plugins, and the DCMTK tools as
  known modalities (Orthanc answers C-FIND only from those); its defaults stay: SQLite index,
  ``SyncStorageArea`` true (each file fsync'd before the response).

Workloads, driven by DCMTK (``/usr/bin``) with ``TCP_NODELAY=1`` in the environment of both
ends (DCMTK, and so Orthanc, reads it; cloudfilm sets the option itself):

1. ``storescu`` sends the 300-slice 512×512 CT over one association;
2. four ``storescu`` at once send 75 slices each;
3. with 1,000 one-instance studies stored in both (running side by side), ``findscu``
   study-level queries alternating between the two servers: a single study by Patient ID
   (the latency target), and a name wildcard matching ten studies (information).

Run from the repository root: ``python -m bench.dimse`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    OUT_DIR,
    ROOT,
    Row,
    Stats,
    Target,
    cpu_snapshot,
    format_machine,
    format_table,
    generate_dataset,
    machine_info,
    wait_for_quiet,
)

DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_CONFIG = ROOT / "bench" / "orthanc.json"
SYSTEMS = ("cloudfilm", "orthanc")
TARGET_ONE = Target(">=", 1.0, on="ratio")
TARGET_FOUR = Target(">=", 1.3, on="ratio")
TARGET_FIND = Target("<=", 1.0, on="ratio")
PACKAGES = ("cloudfilm", "pydicom", "pynetdicom", "SQLAlchemy")
PEERS = [
    {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104, "allow": ["store"]},
    {"ae_title": "FINDSCU", "host": "127.0.0.1", "port": 104, "allow": ["query"]},
]


def dcmtk_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFILM_")}
    env["TCP_NODELAY"] = "1"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# =================================================================================== servers

#: ``cloudfilm dimse --processes`` of the runs (``--processes``; 1 is the default setting).
PROCESSES = [1]


@dataclass
class Server:
    """A DIMSE server under test, running as its own process."""

    system: str
    storage: Path
    dicom_port: int
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def called_ae(self) -> str:
        return "CLOUDFILM" if self.system == "cloudfilm" else "ORTHANC"

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log = self.storage.with_suffix(".log")
        env = dcmtk_env()
        if self.system == "cloudfilm":
            env |= {
                "CLOUDFILM_DIMSE_PEERS": json.dumps(PEERS),
                "CLOUDFILM_LOG_LEVEL": "WARNING",
                "CLOUDFILM_DIMSE_PROCESSES": str(PROCESSES[0]),
            }
            cmd = [sys.executable, "-m", "cloudfilm.cli", "dimse", "--data-dir",
                   str(self.storage), "--port", str(self.dicom_port)]  # fmt: skip
        else:
            self.http_port = free_port()
            env |= {
                "ORTHANC_BENCH_STORAGE": str(self.storage),
                "ORTHANC_BENCH_HTTP_PORT": str(self.http_port),
                "ORTHANC_BENCH_DICOM_PORT": str(self.dicom_port),
            }
            cmd = [str(ORTHANC), str(ORTHANC_CONFIG)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.system} exited at start; see {self.log}")
            probe = run("echoscu", "-aec", self.called_ae, "-aet", "STORESCU", "127.0.0.1",
                        str(self.dicom_port))  # fmt: skip
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise SystemExit(f"{self.system} did not answer C-ECHO within 60 s; see {self.log}")

    def instances(self) -> int:
        """How many instances the server holds (index count)."""
        if self.system == "orthanc":
            url = f"http://127.0.0.1:{self.http_port}/statistics"
            with urllib.request.urlopen(url, timeout=30) as response:
                return int(json.loads(response.read())["CountInstances"])
        from cloudfilm.archive import Archive
        from cloudfilm.core.config import Settings
        from cloudfilm.index.queries import archive_totals

        settings = Settings(data_dir=self.storage, min_free_bytes=0)
        with Archive.open(settings) as archive, archive.sessions() as session:
            return archive_totals(session)["instances"]

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT if self.system == "cloudfilm" else signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def serving(system: str, storage: Path) -> Iterator[Server]:
    server = Server(system, storage, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(tool: str, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / tool), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dcmtk_env(), check=False)  # fmt: skip


# ================================================================================ workloads


@dataclass
class StoreRun:
    system: str
    associations: int
    seconds: float
    instances: int
    bytes: int
    #: Cores busy machine-wide (server, storescu and anything else) while it ran.
    busy_cores: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds


def store_run(
    system: str, files: list[Path], associations: int, storage: Path, quiet_wait: float
) -> StoreRun:
    """Fresh storage, fresh server; time storescu sending ``files`` over N associations."""
    groups = [files[i::associations] for i in range(associations)]
    with serving(system, storage) as server:
        if quiet_wait:
            wait_for_quiet(quiet_wait)
        before = _busy()
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    str(DCMTK / "storescu"),
                    "-aec",
                    server.called_ae,
                    "127.0.0.1",
                    str(server.dicom_port),
                    *map(str, group),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dcmtk_env(),
            )
            for group in groups
        ]
        results = [p.communicate(timeout=1200) for p in procs]
        seconds = time.perf_counter() - start
        busy = (_busy() - before) / seconds
        for proc, (_, err) in zip(procs, results, strict=True):
            if proc.returncode != 0:
                raise SystemExit(f"FAILED: storescu to {system}: {err[-2000:]}")
        held = server.instances()
    if held != len(files):
        raise SystemExit(f"FAILED: {system} holds {held} instances, {len(files)} were sent")
    size = sum(f.stat().st_size for f in files)
    return StoreRun(system, associations, seconds, len(files), size, busy)


def _busy() -> float:
    return cpu_snapshot().busy


def find_dataset(studies: int, refresh: bool = False) -> list[Path]:
    """``studies`` one-instance studies (pydicom's CT_small with new identities), cached."""
    folder = OUT_DIR / "data" / f"find-{studies}"
    marker = folder / ".complete"
    if marker.is_file() and not refresh:
        return sorted(folder.glob("*.dcm"))
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str)
    template = pydicom.dcmread(source)
    for i in range(studies):
        ds = template.copy()
        ds.PatientName = f"BENCH^P{i:04d}"
        ds.PatientID = f"BENCH{i:04d}"
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = f"20{10 + i % 15:02d}{1 + i % 12:02d}{1 + i % 28:02d}"
        ds.AccessionNumber = f"ACC{i:05d}"
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
    marker.write_text("ok\n")
    return sorted(folder.glob("*.dcm"))


@dataclass
class FindRuns:
    system: str
    by_id: list[float] = field(default_factory=list)
    by_name: list[float] = field(default_factory=list)
    matches_by_name: int = 0


def find_runs(
    files: list[Path], queries: int, run_dir: Path, quiet_wait: float = 0.0
) -> dict[str, FindRuns]:
    """Both servers, fresh, holding ``files``; time findscu study-level queries (wall, ms).

    The servers run side by side and the queries alternate between them (the one asked
    first alternates too), so that a busy moment of the machine hits both alike.
    """
    results = {system: FindRuns(system, matches_by_name=10) for system in SYSTEMS}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serving(s, run_dir / f"{s}-find")) for s in SYSTEMS]
        for server in servers:
            load = run("storescu", "-aec", server.called_ae, "127.0.0.1",
                       str(server.dicom_port), *files, timeout=1800)  # fmt: skip
            if load.returncode != 0 or server.instances() != len(files):
                raise SystemExit(
                    f"FAILED: loading {len(files)} studies into {server.system}: {load.stderr}"
                )
        step = max(1, len(files) // queries)
        for n in range(queries):
            if quiet_wait:
                wait_for_quiet(quiet_wait)
            by_id = f"PatientID=BENCH{(n * step) % len(files):04d}"
            by_name = f"PatientName=BENCH^P{(n * 10) % len(files) // 10:03d}*"
            for server in servers if n % 2 else list(reversed(servers)):
                common = ["-S", "-aec", server.called_ae, "-k", "QueryRetrieveLevel=STUDY", "-k",
                          "StudyInstanceUID", "-k", "PatientName", "-k", "StudyDate"]  # fmt: skip
                result = results[server.system]
                result.by_id.append(_findscu([*common, "-k", by_id], server, expected=1))
                result.by_name.append(_findscu([*common, "-k", by_name], server, expected=10))
    return results


def _findscu(args: list[str], server: Server, expected: int) -> float:
    start = time.perf_counter()
    out = run("findscu", "-v", *args, "127.0.0.1", str(server.dicom_port))
    elapsed = (time.perf_counter() - start) * 1000
    found = len(re.findall(r"Find Response: \d+ \(Pending\)", out.stderr))
    if out.returncode != 0 or found != expected:
        raise SystemExit(f"FAILED: findscu on {server.system}: {found} matches\n{out.stderr}")
    return elapsed


# ==================================================================================== report


def build_rows(stores: list[StoreRun], finds: dict[str, FindRuns]) -> list[Row]:
    def rates(system: str, n: int) -> Stats:
        return Stats.of(r.per_second for r in stores if r.system == system and r.associations == n)

    def mbps(system: str, n: int) -> Stats:
        return Stats.of(
            r.bytes / MB / r.seconds for r in stores if r.system == system and r.associations == n
        )

    rows = []
    for n, target in ((1, TARGET_ONE), (4, TARGET_FOUR)):
        total = next(r.instances for r in stores)
        label = f"1 association × {total}" if n == 1 else f"4 associations × {total // 4}"
        ours, theirs = rates("cloudfilm", n), rates("orthanc", n)
        rows += [
            Row(f"C-STORE {label}: cloudfilm", "inst/s", ours, theirs.median, target),
            Row(f"C-STORE {label}: Orthanc (reference)", "inst/s", theirs),
            Row(
                f"C-STORE {label}: cloudfilm",
                "MB/s",
                mbps("cloudfilm", n),
                mbps("orthanc", n).median,
            ),
        ]
    ours, theirs = Stats.of(finds["cloudfilm"].by_id), Stats.of(finds["orthanc"].by_id)
    rows += [
        Row(
            "C-FIND study, 1 match by Patient ID: cloudfilm", "ms", ours, theirs.median, TARGET_FIND
        ),
        Row("C-FIND study, 1 match by Patient ID: Orthanc (reference)", "ms", theirs),
    ]
    ours, theirs = Stats.of(finds["cloudfilm"].by_name), Stats.of(finds["orthanc"].by_name)
    rows += [
        Row("C-FIND study, name wildcard, 10 matches: cloudfilm", "ms", ours, theirs.median),
        Row("C-FIND study, name wildcard, 10 matches: Orthanc", "ms", theirs),
    ]
    for system in SYSTEMS:
        busy = Stats.of(r.busy_cores for r in stores if r.system == system)
        rows.append(Row(f"CPU busy, all processes, during {system}'s C-STOREs", "cores", busy))
    return rows


def orthanc_config_differences() -> list[str]:
    """Lines where bench/orthanc.json differs from Debian's default (for the record)."""
    import difflib

    default = Path("/etc/orthanc/orthanc.json")
    if not default.is_file():
        return ["(Debian's /etc/orthanc/orthanc.json is not here to compare with)"]
    diff = difflib.unified_diff(
        default.read_text().splitlines(), ORTHANC_CONFIG.read_text().splitlines(), n=0,
        lineterm="",
    )  # fmt: skip
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dimse", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each C-STORE run (3)")
    parser.add_argument("--slices", type=int, default=300, help="CT slices (300)")
    parser.add_argument("--studies", type=int, default=1000, help="studies for C-FIND (1000)")
    parser.add_argument("--queries", type=int, default=20, help="C-FIND queries of each kind")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the runs write (default bench/out/runs)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed run, wait up to this long for a quiet machine",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes of cloudfilm's DIMSE server (1, the default setting)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--refresh-data", action="store_true", help="regenerate the data sets")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slices < 4 or args.studies < 10 or args.queries < 1:
        parser.error("--rounds, --queries ≥ 1, --slices ≥ 4, --studies ≥ 10")
    if not 1 <= args.processes <= 64:
        parser.error("--processes is 1 to 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "findscu", "echoscu"):
        if not (DCMTK / tool).is_file():
            raise SystemExit(f"DCMTK's {tool} is not in {DCMTK} (apt-get install dcmtk)")
    if not ORTHANC.is_file():
        raise SystemExit(f"{ORTHANC} is missing (apt-get install orthanc)")
    PROCESSES[0] = args.processes
    data = generate_dataset(modality="CT", slices=args.slices, refresh=args.refresh_data)
    files = list(data.files)
    find_files = find_dataset(args.studies, args.refresh_data)
    parent = (args.data_dir or OUT_DIR / "runs").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="dimse-", dir=parent))

    started = datetime.now(UTC)
    machine = machine_info(run_dir, PACKAGES)
    print(f"cloudfilm DIMSE benchmark beside Orthanc — {started:%Y-%m-%d %H:%M} UTC")
    print(format_machine(machine))
    print(f"cloudfilm: cloudfilm dimse --processes {args.processes}")
    print(f"data:     {len(files)} CT instances, {data.total_bytes / MB:.1f} MB, from "
          f"{data.generator}; {len(find_files)} one-instance studies for C-FIND")  # fmt: skip
    version = subprocess.run([str(ORTHANC), "--version"], capture_output=True, text=True)
    print(f"orthanc:  {version.stdout.splitlines()[0] if version.stdout else '?'}; "
          f"{ORTHANC_CONFIG.relative_to(ROOT)} differs from Debian's default in:")  # fmt: skip
    for line in orthanc_config_differences():
        print(f"            {line.strip()}")
    print(flush=True)

    stores: list[StoreRun] = []
    finds: dict[str, FindRuns] = {}
    try:
        for n in range(1, args.rounds + 1):
            order = SYSTEMS if n % 2 else tuple(reversed(SYSTEMS))
            for associations in (1, 4):
                for system in order:
                    folder = run_dir / f"{system}-{associations}-{n}"
                    result = store_run(system, files, associations, folder, args.quiet_wait)
                    stores.append(result)
                    print(f"round {n}: {system:9} {associations} assoc.: "
                          f"{result.per_second:6.1f} inst/s ({result.seconds:.2f} s)",
                          flush=True)  # fmt: skip
                    shutil.rmtree(folder, ignore_errors=True)
        finds = find_runs(find_files, args.queries, run_dir, args.quiet_wait)
        for system in SYSTEMS:
            median = Stats.of(finds[system].by_id).median
            print(f"C-FIND:  {system:9} {median:.1f} ms by Patient ID", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    rows = build_rows(stores, finds)
    print()
    print(format_table(rows))
    missed = [r.measurement for r in rows if r.verdict == "MISSED"]
    print()
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.json:
        figures = {
            "benchmark": "dimse",
            "started": started.isoformat(),
            "machine": machine,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [r.to_json() for r in rows],
            "stores": [vars(r) for r in stores],
            "finds": {k: vars(v) for k, v in finds.items()},
            "missed": missed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
