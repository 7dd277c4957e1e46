"""Where ``Archive.store`` spends its time: wall-clock per phase, per stored instance.

``python -m bench.ingest_phases [--slices 300]`` stores the benchmark's CT into a fresh
archive (input preloaded, like ``bench.ingest``) with timers wrapped around the functions
``store`` calls, and prints milliseconds per instance for each. Figures are inclusive (a
phase contains its indented sub-phases). A diagnostic, not a benchmark: the wrappers cost a
little, and the functions are looked up by name, so a renamed one is reported as missing.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT_DIR, background_cores, cpu_snapshot, generate_dataset

_A, _FS, _SA = "cloudfilm.archive", "cloudfilm.storage.fs", "sqlalchemy.engine.default"
#: (depth, label, module, attribute path): the phases, in the order ``store`` runs them.
PHASES: tuple[tuple[int, str, str, str], ...] = (
    (1, "parse_instance (pydicom header read)", _A, "parse_instance"),
    (1, "extract_index_fields", _A, "extract_index_fields"),
    (1, "_existing_identity (SELECT by UID)", _A, "Archive._existing_identity"),
    (1, "header_json (DICOM JSON of the header)", _A, "header_json"),
    (1, "FileBlobStore.put", _FS, "FileBlobStore.put"),
    (2, "copy_hashing (write + SHA-256)", _FS, "copy_hashing"),
    (2, "_make_parents (mkdir ab/cd)", _FS, "_make_parents"),
    (2, "_fsync_dir (leaf + created parents)", _FS, "_fsync_dir"),
    (1, "_commit_instance (index transaction)", _A, "Archive._commit_instance"),
    (2, "_get_or_create ×3 (patient, study, series)", _A, "Archive._get_or_create"),
    (2, "_lock_study (incl. its _get_or_create)", _A, "Archive._lock_study"),
    (2, "_add_to_counts (+ _refresh_study)", _A, "Archive._add_to_counts"),
    (2, "COMMIT (SQLite WAL, synchronous=FULL)", _SA, "DefaultDialect.do_commit"),
    (1, "_finish_pending_deletes (SELECT)", _A, "Archive._finish_pending_deletes"),
)
#: Counted separately: every fsync the process makes (blob file and folders; not SQLite's).
FSYNC = ("os", "fsync")


def _wrap(owner: Any, name: str, label: str, totals: dict[str, float]) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(owner, name, timed)


def instrument(totals: dict[str, float]) -> list[str]:
    """Wrap every phase; returns the labels that could not be found."""
    missing = []
    for _depth, label, module_name, path in (*PHASES, (0, "os.fsync", *FSYNC)):
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        try:
            for part in parents:
                owner = getattr(owner, part)
            getattr(owner, name)
        except AttributeError:
            missing.append(label)
            continue
        _wrap(owner, name, label, totals)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_phases", description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    data = generate_dataset(modality="CT", slices=args.slices, seed=args.seed)
    from cloudfilm.archive import Archive
    from cloudfilm.core.config import Settings

    totals: dict[str, float] = collections.defaultdict(float)
    missing = instrument(totals)
    datas = [f.read_bytes() for f in data.files]
    (OUT_DIR / "runs").mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="phases-", dir=OUT_DIR / "runs"))
    try:
        archive = Archive.open(Settings(data_dir=folder, min_free_bytes=0))
        cpu_before = cpu_snapshot()
        cpu_start = time.process_time()
        start = time.perf_counter()
        for blob in datas:
            result = archive.store(blob)
            if result.status != "stored":
                raise SystemExit(f"store answered {result.status}: {result.reason}")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        load = background_cores(cpu_before, cpu_snapshot())
        archive.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    n = len(datas)
    per = 1000 / n
    print(f"Archive.store of {n} instances: {elapsed * per:.2f} ms per instance wall-clock,")
    print(f"  of which {cpu * per:.2f} ms CPU in this process; other processes: {load:.2f} cores")
    for depth, label, *_ in PHASES:
        value = totals.get(label)
        text = "missing" if value is None else f"{value * per:6.2f} ms  {value / elapsed:5.1%}"
        print(f"{'  ' * depth}{label:<{48 - 2 * depth}} {text}")
    top = sum(totals.get(label, 0.0) for depth, label, *_ in PHASES if depth == 1)
    print(f"  {'rest of store (spool, dataclasses, …)':<46} {(elapsed - top) * per:6.2f} ms")
    fsyncs = totals.get("os.fsync", 0.0) * per
    print(f"  {'os.fsync, all calls (blob files and folders)':<46} {fsyncs:6.2f} ms")
    if missing:
        print(f"not found (renamed?): {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
