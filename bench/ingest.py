"""Durable ingest: ``Archive.store`` of a synthetic CT beside the raw write+fsync limit.

Each round runs, every one in a fresh interpreter and a fresh folder on the same disk:

1. ``raw-fsync``: the same files written one by one with plain Python (open, write, flush,
   ``os.fsync``, close): the reference the target is measured against;
2. ``raw-durable``: the same, but like a durable writer (temporary name, fsync, rename, fsync
   of the folder): for information;
3. ``archive``: ``Archive.store(bytes)`` of every file into a fresh embedded archive (SQLite
   WAL ``synchronous=FULL`` + file store). All three read their input into memory first; only
   the write loop is timed.

After the rounds, one ``archive-streamed`` run stores the files reading each just before its
``store`` call (reading untimed), so that its peak RSS is the archive's own footprint rather
than that of 300 preloaded inputs: it is the figure held against the memory target.

Run from the repository root: ``python -m bench.ingest`` (or ``python bench/ingest.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    OUT_DIR,
    ChildRun,
    Row,
    Stats,
    SynthData,
    Target,
    background_cores,
    child_env,
    cpu_snapshot,
    current_rss,
    format_machine,
    format_table,
    generate_dataset,
    machine_info,
    peak_rss,
    read_manifest,
    run_child,
    wait_for_quiet,
    write_result,
)

MODULE = "bench.ingest"
RAW_MODES = ("raw-fsync", "raw-durable")
ARCHIVE_MODES = ("archive", "archive-4threads", "archive-streamed")
ROUND_ORDER = ("raw-fsync", "raw-durable", "archive", "archive-4threads")
#: Concurrent callers in the ``archive-4threads`` mode (like 4 DIMSE associations).
THREADS = 4

#: The issue's targets.
RATIO_TARGET = Target(">=", 0.60, on="ratio")
RSS_TARGET = Target("<", 200, unit="MB")

LABELS = {
    "raw-fsync": "raw write+fsync",
    "raw-durable": "raw write+fsync+rename+dirfsync",
    "archive": "archive ingest (Archive.store)",
    "archive-4threads": f"archive ingest, {THREADS} threads calling Archive.store",
}
PACKAGES = ("cloudfilm", "pydicom", "SQLAlchemy", "pydantic", "numpy")


# =============================================================================== workers
# Run in a fresh interpreter: ``python -m bench.ingest --worker MODE …``.


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_worker(mode: str, files: list[Path], dest: Path) -> dict[str, Any]:
    """Write the files one by one with plain Python; only the write loop is timed."""
    durable = mode == "raw-durable"
    rss_start = current_rss()
    datas = [f.read_bytes() for f in files]
    dest.mkdir(parents=True)
    _fsync_dir(dest.parent)
    cpu_before = cpu_snapshot()
    start = time.perf_counter()
    for i, data in enumerate(datas):
        name = f"{i:05d}.dcm"
        target = dest / (f".{name}.part" if durable else name)
        with open(target, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if durable:
            os.replace(target, dest / name)
            _fsync_dir(dest)
    elapsed = time.perf_counter() - start
    return {
        "elapsed": elapsed,
        "background_cores": background_cores(cpu_before, cpu_snapshot()),
        "instances": len(datas),
        "bytes": sum(len(d) for d in datas),
        "rss_start": rss_start,
        "peak_rss_self": peak_rss(),
    }


def archive_worker(
    mode: str, files: list[Path], dest: Path, profile: Path | None = None
) -> dict[str, Any]:
    """Store the files through ``Archive.store``; only the ``store`` calls are timed."""
    rss_start = current_rss()
    from sqlalchemy import func, select

    from cloudfilm.archive import Archive, StoreStatus, is_file_store
    from cloudfilm.core.config import Settings
    from cloudfilm.index.models import Instance

    rss_imported = current_rss()
    archive = Archive.open(Settings(data_dir=dest, min_free_bytes=0))
    rss_open = current_rss()
    streamed = mode == "archive-streamed"
    datas = [] if streamed else [f.read_bytes() for f in files]
    rss_loaded = current_rss()

    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    statuses: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    latencies: list[float] = []
    size = 0
    cpu_before = cpu_snapshot()
    wall = 0.0
    if mode == "archive-4threads":
        from concurrent.futures import ThreadPoolExecutor

        def timed_store(data: bytes) -> tuple[Any, float]:
            t0 = time.perf_counter()
            answer = archive.store(data)
            return answer, time.perf_counter() - t0

        start = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(timed_store, datas))
        wall = time.perf_counter() - start
        size = sum(len(d) for d in datas)
        for path, (result, latency) in zip(files, answers, strict=True):
            latencies.append(latency)
            statuses[result.status.value] += 1
            if result.status != StoreStatus.STORED and len(failures) < 10:
                failures.append(f"{path.name}: {result.status.value}: {result.reason}")
    for i, path in enumerate(files if mode != "archive-4threads" else []):
        data = path.read_bytes() if streamed else datas[i]
        size += len(data)
        t0 = time.perf_counter()
        result = archive.store(data)
        latencies.append(time.perf_counter() - t0)
        del data
        statuses[result.status.value] += 1
        if result.status != StoreStatus.STORED and len(failures) < 10:
            failures.append(f"{path.name}: {result.status.value}: {result.reason}")
    background = background_cores(cpu_before, cpu_snapshot())
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)

    with archive.sessions() as session:
        indexed = int(session.execute(select(func.count(Instance.pk))).scalar_one())
    blob_files = sum(1 for _ in archive.blobs.keys())  # noqa: SIM118 - not a dict
    info = {
        "dialect": archive.engine.dialect.name,
        "file_store": is_file_store(archive),
    }
    archive.close()
    return {
        "elapsed": wall if mode == "archive-4threads" else sum(latencies),
        "background_cores": background,
        "instances": len(files),
        "bytes": size,
        "latencies": latencies,
        "statuses": dict(statuses),
        "failures": failures,
        "indexed": indexed,
        "blob_files": blob_files,
        "rss_start": rss_start,
        "rss_imported": rss_imported,
        "rss_open": rss_open,
        "rss_loaded": rss_loaded,
        "peak_rss_self": peak_rss(),
        **info,
    }


def worker_main(args: argparse.Namespace) -> int:
    files = read_manifest(args.manifest)
    if args.worker in RAW_MODES:
        result = raw_worker(args.worker, files, args.dest)
    else:
        result = archive_worker(args.worker, files, args.dest, args.profile_out)
    write_result(args.result, result)
    return 0


# ================================================================================ parent


def _run(
    mode: str,
    data: SynthData,
    run_dir: Path,
    tag: str,
    *,
    quiet_wait: float = 0.0,
    profile_out: Path | None = None,
) -> ChildRun:
    """One workload in a fresh interpreter writing into a fresh folder (kept until the end,
    so that no deletion's write-back or discard lands in a later measurement)."""
    dest = run_dir / f"{tag}-{mode}"
    result_file = run_dir / f"{tag}-{mode}.json"
    args = ["--worker", mode, "--manifest", str(data.manifest), "--dest", str(dest)]
    args += ["--result", str(result_file)]
    if profile_out is not None:
        args += ["--profile-out", str(profile_out)]
    os.sync()  # nothing of earlier runs left to write back
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    # The embedded defaults are what is measured: no CLOUDFILM_* from the caller's shell.
    run = run_child(MODULE, args, result_file, env=child_env(drop_prefixes=("CLOUDFILM_",)))
    if run.returncode != 0 or not run.result:
        raise SystemExit(f"{mode} run {tag} failed (exit {run.returncode}): {' '.join(run.args)}")
    if mode in ARCHIVE_MODES:
        _verify_archive_run(mode, tag, run.result, len(data.files))
    r = run.result
    print(
        f"  {tag:<7} {mode:<16} {r['instances'] / r['elapsed']:7.1f} inst/s "
        f"{r['bytes'] / r['elapsed'] / MB:6.1f} MB/s  peak RSS {run.peak_rss / MB:5.1f} MB  "
        f"other CPU load {r['background_cores']:.2f} cores",
        flush=True,
    )
    return run


def _verify_archive_run(mode: str, tag: str, result: dict[str, Any], expected: int) -> None:
    stored = result["statuses"].get("stored", 0)
    problems = []
    if stored != expected:
        problems.append(f"{stored} of {expected} answered 'stored' ({result['statuses']})")
    if result["indexed"] != expected:
        problems.append(f"index holds {result['indexed']} instances, expected {expected}")
    if result["blob_files"] != expected:
        problems.append(f"blob store holds {result['blob_files']} files, expected {expected}")
    if result["dialect"] != "sqlite" or not result["file_store"]:
        problems.append(f"measured {result['dialect']} / file store={result['file_store']}")
    if problems:
        detail = "\n  ".join(problems + result["failures"])
        raise SystemExit(f"FAILED: {mode} run {tag} did not store everything:\n  {detail}")


def _ips(run: ChildRun) -> float:
    return float(run.result["instances"] / run.result["elapsed"])


def _rates(runs: list[ChildRun]) -> tuple[Stats, Stats]:
    ips = Stats.of(_ips(r) for r in runs)
    mbps = Stats.of(r.result["bytes"] / r.result["elapsed"] / MB for r in runs)
    return ips, mbps


def build_rows(runs: dict[str, list[ChildRun]], streamed: ChildRun) -> list[Row]:
    """The results table: throughput and ratios, then memory, then the load seen."""
    raw_ips, raw_mbps = _rates(runs["raw-fsync"])
    durable_ips, durable_mbps = _rates(runs["raw-durable"])
    arch_ips, arch_mbps = _rates(runs["archive"])
    threads_ips, threads_mbps = _rates(runs["archive-4threads"])
    archive = runs["archive"]
    paired = Stats.of(_ips(a) / _ips(r) for a, r in zip(archive, runs["raw-fsync"], strict=True))
    latency_ms = Stats.of(statistics.median(r.result["latencies"]) * 1000 for r in archive)
    every_run = [run for mode in ROUND_ORDER for run in runs[mode]] + [streamed]
    streamed_ips = Stats.of([_ips(streamed)])
    streamed_peak = Stats.of([streamed.peak_rss / MB])
    preloaded_peak = Stats.of(r.peak_rss / MB for r in archive)
    growth = Stats.of((r.peak_rss - r.result["rss_loaded"]) / MB for r in archive)
    baseline = Stats.of(r.result["rss_open"] / MB for r in archive)
    background = Stats.of(r.result["background_cores"] for r in every_run)
    raw = LABELS["raw-fsync"] + " (reference)"
    return [
        Row(LABELS["archive"], "inst/s", arch_ips, raw_ips.median, RATIO_TARGET),
        Row(LABELS["archive"], "MB/s", arch_mbps, raw_mbps.median),
        Row(LABELS["archive-4threads"], "inst/s", threads_ips, raw_ips.median),
        Row(LABELS["archive-4threads"], "MB/s", threads_mbps, raw_mbps.median),
        Row(raw, "inst/s", raw_ips),
        Row(raw, "MB/s", raw_mbps),
        Row(LABELS["raw-durable"], "inst/s", durable_ips, raw_ips.median),
        Row(LABELS["raw-durable"], "MB/s", durable_mbps, raw_mbps.median),
        Row("archive vs raw+rename+dirfsync", "inst/s", arch_ips, durable_ips.median),
        Row("archive / raw write+fsync, paired by round", "×", paired),
        Row("archive store latency, median per instance", "ms", latency_ms),
        Row("archive ingest, input streamed (1 run)", "inst/s", streamed_ips, raw_ips.median),
        Row("peak RSS, archive ingest (input streamed)", "MB", streamed_peak, None, RSS_TARGET),
        Row("peak RSS, archive ingest (input preloaded)", "MB", preloaded_peak),
        Row("  RSS growth during the store loop", "MB", growth),
        Row("RSS after import + Archive.open", "MB", baseline),
        Row("other CPU load during the timed loops", "cores", background),
    ]


def print_profile(path: Path, top: int) -> None:
    import pstats

    for key in ("tottime", "cumulative"):
        print(f"\ncProfile of one archive run, top {top} by {key} ({path}):")
        stats = pstats.Stats(str(path), stream=sys.stdout)
        stats.strip_dirs().sort_stats(key).print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--slices", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the runs write (a fresh folder inside it; default bench/out/runs)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to use < 0.3 cores",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add one archive run under cProfile and print its top entries",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="entries printed (25)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--refresh-data", action="store_true", help="regenerate the data set")
    # Internal: the child side.
    parser.add_argument("--worker", choices=RAW_MODES + ARCHIVE_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker and (args.rounds < 1 or args.slices < 1):
        parser.error("--rounds and --slices must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)

    data = generate_dataset(modality="CT", slices=args.slices, seed=args.seed,
                            refresh=args.refresh_data)  # fmt: skip
    parent = (args.data_dir or OUT_DIR / "runs").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="ingest-", dir=parent))

    started = datetime.now(UTC)
    machine = machine_info(run_dir, PACKAGES)
    print(f"cloudfilm durable ingest benchmark — {started:%Y-%m-%d %H:%M} UTC")
    print(format_machine(machine))
    print(
        f"data:     {len(data.files)} CT instances, {data.total_bytes / MB:.1f} MB "
        f"(mean {data.total_bytes / len(data.files) / 1024:.0f} KiB), from {data.generator}"
    )
    print(
        f"method:   {args.rounds} rounds of {' → '.join(ROUND_ORDER)}, each run in a fresh "
        "process and folder;\n          input preloaded, write loop timed; medians over rounds"
    )
    print(flush=True)

    runs: dict[str, list[ChildRun]] = {mode: [] for mode in ROUND_ORDER}
    profile_file = None
    try:
        for n in range(1, args.rounds + 1):
            for mode in ROUND_ORDER:
                runs[mode].append(
                    _run(mode, data, run_dir, f"round {n}", quiet_wait=args.quiet_wait)
                )
        streamed = _run("archive-streamed", data, run_dir, "memory", quiet_wait=args.quiet_wait)
        if args.profile:
            profile_file = OUT_DIR / "ingest-profile.pstats"
            _run("archive", data, run_dir, "cProfile", profile_out=profile_file)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    rows = build_rows(runs, streamed)
    print()
    print(format_table(rows))
    missed = [r.measurement for r in rows if r.verdict == "MISSED"]
    print()
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    busiest = max(rows[-1].stats.values)
    if busiest > 0.3:
        print(
            f"warning: other processes kept up to {busiest:.1f} cores busy during a timed loop; "
            "figures are noisy (try --quiet-wait 120 on a quieter machine)"
        )

    if profile_file is not None:
        print_profile(profile_file, args.profile_top)

    if args.json:
        figures = {
            "benchmark": "ingest",
            "started": started.isoformat(),
            "machine": machine,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data": {
                "folder": str(data.folder),
                "instances": len(data.files),
                "bytes": data.total_bytes,
                "generator": data.generator,
            },
            "rows": [r.to_json() for r in rows],
            "runs": {
                mode: [{"peak_rss": r.peak_rss, "wall": r.wall, **r.result} for r in mode_runs]
                for mode, mode_runs in {**runs, "archive-streamed": [streamed]}.items()
            },
            "missed": missed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
