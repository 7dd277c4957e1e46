"""Helpers shared by the benchmarks: statistics, child processes, memory, tables, data sets.

Every measured workload runs in a fresh child process (``run_child``) so that neither the
parent's memory nor its warm state counts; the child writes its figures to a JSON file and the
parent reads the child's peak RSS from ``os.wait4`` (the kernel's ``ru_maxrss`` of that one
child, not the cumulative ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

#: Repository root (the folder holding ``bench/`` and ``src/``).
ROOT = Path(__file__).resolve().parent.parent
#: Generated data, run folders and results; git-ignored.
OUT_DIR = ROOT / "bench" / "out"

MB = 1_000_000  # throughput is reported in decimal megabytes per second
MIB = 1024 * 1024  # memory is reported in MiB

# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    """Median, minimum and maximum of repeated measurements (all values kept)."""

    median: float
    min: float
    max: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats:
        vals = tuple(float(v) for v in values)
        if not vals:
            raise ValueError("no values to summarise")
        return cls(statistics.median(vals), min(vals), max(vals), vals)

    def scaled(self, factor: float) -> Stats:
        return Stats.of(v * factor for v in self.values)

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "values": self.values}


def repeat(measure: Callable[[], float], n: int) -> Stats:
    """Call ``measure`` ``n`` times; each call returns one measured value."""
    if n < 1:
        raise ValueError("n must be at least 1")
    return Stats.of(measure() for _ in range(n))


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------- memory


def proc_status_bytes(name: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``…) in bytes; None if absent."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    rss = proc_status_bytes("VmRSS")
    if rss is None:  # not Linux: fall back to the peak, the best we have
        return peak_rss()
    return rss


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kibibytes, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


@dataclass
class ChildRun:
    """One workload run in a fresh interpreter."""

    args: list[str]
    returncode: int
    #: Peak RSS of the child as the kernel accounted it (``wait4`` ``ru_maxrss``), in bytes.
    peak_rss: int
    #: Wall-clock seconds from spawn to exit (interpreter start-up included; not a measurement).
    wall: float
    #: What the child wrote to its result file (empty when it wrote none).
    result: dict[str, Any] = field(default_factory=dict)


def child_env(drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The environment for a child: ours, ``ROOT`` on ``PYTHONPATH``, some variables dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def run_child(
    module: str,
    args: Sequence[str],
    result_file: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> ChildRun:
    """Run ``python -m module args…`` from ``ROOT`` and wait for it.

    The child is expected to write a JSON object to ``result_file``. Its peak RSS comes from
    ``os.wait4``, i.e. the rusage of exactly this child.
    """
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", module, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env) if env is not None else child_env())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {}
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
    return ChildRun(cmd, proc.returncode, _maxrss_bytes(usage.ru_maxrss), wall, result)


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Write a child's result file (atomically, so a crash never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- CPU load


@dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy CPU seconds, this process's CPU seconds, and a monotonic time."""

    busy: float
    own: float
    at: float


def cpu_snapshot() -> CpuSnapshot:
    """Busy = user+nice+system+irq+softirq+steal from ``/proc/stat`` (0 when unavailable)."""
    busy = 0.0
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        busy = (user + nice + system + irq + softirq + steal) / ticks
    except (OSError, ValueError, IndexError):
        pass
    own = time.process_time()
    return CpuSnapshot(busy, own, time.monotonic())


def background_cores(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Cores kept busy by everything but this process between two snapshots (≥ 0)."""
    wall = after.at - before.at
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 2.0) -> float:
    """Sleep until other processes use less than ``threshold`` cores over ``window`` seconds.

    Gives up after ``max_wait`` seconds. Returns the background load of the last window.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_snapshot()
        time.sleep(window)
        load = background_cores(before, cpu_snapshot())
        if load < threshold or time.monotonic() >= deadline:
            return load


# ------------------------------------------------------------------------------- tables

Verdict = Literal["met", "MISSED", "info", ""]


@dataclass(frozen=True)
class Target:
    """A goal on a row's median (``on="median"``) or on its ratio to the reference."""

    op: Literal[">=", "<=", "<", ">"]
    threshold: float
    on: Literal["median", "ratio"] = "median"
    unit: str = ""

    def check(self, value: float) -> bool:
        return {
            ">=": value >= self.threshold,
            "<=": value <= self.threshold,
            "<": value < self.threshold,
            ">": value > self.threshold,
        }[self.op]

    def __str__(self) -> str:
        suffix = "×" if self.on == "ratio" else (f" {self.unit}" if self.unit else "")
        return f"{self.op} {self.threshold:g}{suffix}"


@dataclass(frozen=True)
class Row:
    """One line of a results table."""

    measurement: str
    unit: str
    stats: Stats
    reference: float | None = None
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.stats.median / self.reference

    @property
    def verdict(self) -> Verdict:
        if self.target is None:
            return "info"
        value = self.ratio if self.target.on == "ratio" else self.stats.median
        if value is None:
            return ""
        return "met" if self.target.check(value) else "MISSED"

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "unit": self.unit,
            **self.stats.to_json(),
            "reference_median": self.reference,
            "ratio": self.ratio,
            "target": str(self.target) if self.target else None,
            "verdict": self.verdict,
        }


HEADERS = (
    "measurement",
    "unit",
    "median",
    "min–max",
    "reference median",
    "ratio",
    "target",
    "verdict",
)


def fmt_num(value: float) -> str:
    """A figure with about three significant digits (no exponent)."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table (columns padded with spaces)."""
    cells = [list(HEADERS)]
    for row in rows:
        s = row.stats
        cells.append(
            [
                row.measurement,
                row.unit,
                fmt_num(s.median),
                f"{fmt_num(s.min)}–{fmt_num(s.max)}",
                "" if row.reference is None else fmt_num(row.reference),
                "" if row.ratio is None else f"{row.ratio:.2f}×",
                "" if row.target is None else str(row.target),
                row.verdict,
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    numeric = {2, 3, 4, 5}

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if i in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


# ------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for text in fh:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for text in fh:
                if text.startswith("MemTotal:"):
                    total = int(text.split()[1]) * 1024
    except OSError:
        pass
    return f"{total / 1024**3:.1f} GiB" if total else "unknown"


def filesystem_of(path: Path) -> dict[str, str]:
    """Filesystem type, device, mount point and mount options of ``path``."""
    info = {"type": "unknown", "device": "", "mount": "", "options": ""}
    try:
        out = subprocess.run(
            ["df", "-T", "-P", str(path)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        fields = out[-1].split()
        info.update(device=fields[0], type=fields[1], mount=fields[-1])
    except (OSError, subprocess.CalledProcessError, IndexError):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            info["type"] = subprocess.run(
                ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
            ).stdout.strip()
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for text in fh:
                parts = text.split()
                if len(parts) >= 4 and parts[1] == info["mount"] and parts[0] == info["device"]:
                    info["options"] = parts[3]
    except OSError:
        pass
    return info


def package_versions(names: Iterable[str]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info(data_dir: Path, packages: Iterable[str] = ()) -> dict[str, Any]:
    """What the figures were measured on."""
    import sqlite3

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram": _mem_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "data_dir": str(data_dir),
        "filesystem": filesystem_of(data_dir),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": package_versions(packages),
    }


def format_machine(info: Mapping[str, Any]) -> str:
    fs = info["filesystem"]
    pkgs = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    return "\n".join(
        [
            f"machine:  {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
            f"{info['ram']} RAM, {info['kernel']}",
            f"disk:     {info['data_dir']} on {fs['type']} ({fs['device']} at {fs['mount']}"
            + (f", {fs['options']})" if fs["options"] else ")"),
            f"software: {info['python']}, SQLite {info['sqlite']}, {pkgs}",
        ]
    )


# -------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SynthData:
    """A cached synthetic data set: its files (sorted) and their total size."""

    folder: Path
    files: tuple[Path, ...]
    total_bytes: int
    generator: str

    @property
    def manifest(self) -> Path:
        """The file list, one absolute path a line (what the workers read)."""
        return self.folder / "manifest.txt"

    def write_manifest(self) -> None:
        self.manifest.write_text("".join(f"{f}\n" for f in self.files), encoding="utf-8")


def read_manifest(path: Path) -> list[Path]:
    return [Path(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _is_part10(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _natural_key(path: Path) -> tuple[str, int, str]:
    """Sort ``…/2.dcm`` before ``…/10.dcm``."""
    stem = path.stem
    return (path.parent.as_posix(), int(stem) if stem.isdigit() else -1, path.name)


def _synth_cli_available() -> bool:
    exe = shutil.which("cloudfilm")
    if exe is None:
        return False
    probe = subprocess.run([exe, "synth", "--help"], capture_output=True, text=True)
    return probe.returncode == 0


def generate_dataset(
    *, modality: str = "CT", slices: int = 300, seed: int = 1, refresh: bool = False
) -> SynthData:
    """The synthetic study, generated once and cached under ``bench/out/data``.

    Uses the ``cloudfilm synth`` CLI when it is installed and answers, otherwise
    ``cloudfilm.dicom.synth.write_studies``. The cache is trusted only when its marker file
    (written last) lists files that all still exist.
    """
    folder = OUT_DIR / "data" / f"{modality.lower()}-{slices}-seed{seed}"
    marker = folder / ".complete.json"
    if marker.is_file() and not refresh:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        files = tuple(folder / name for name in meta["files"])
        if all(f.is_file() for f in files):
            data = SynthData(folder, files, sum(f.stat().st_size for f in files), meta["generator"])
            data.write_manifest()
            return data
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    generator = _generate(partial, modality=modality, slices=slices, seed=seed)
    found = sorted(
        (p for p in partial.rglob("*") if p.is_file() and _is_part10(p)), key=_natural_key
    )
    if len(found) != slices:
        raise SystemExit(
            f"the generator ({generator}) wrote {len(found)} Part 10 files into {partial}, "
            f"expected {slices}"
        )
    names = [p.relative_to(partial).as_posix() for p in found]
    (partial / marker.name).write_text(
        json.dumps({"generator": generator, "files": names}, indent=1), encoding="utf-8"
    )
    partial.rename(folder)
    files = tuple(folder / name for name in names)
    data = SynthData(folder, files, sum(f.stat().st_size for f in files), generator)
    data.write_manifest()
    return data


def _generate(out: Path, *, modality: str, slices: int, seed: int) -> str:
    if _synth_cli_available():
        cmd = ["cloudfilm", "synth", "--out", str(out), "--modality", modality]
        cmd += ["--slices", str(slices), "--seed", str(seed)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            return " ".join(cmd[:2] + [a if a != str(out) else "DIR" for a in cmd[2:]])
        print(
            f"warning: `{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}"
            "\n         falling back to cloudfilm.dicom.synth.write_studies",
            file=sys.stderr,
        )
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    try:
        from cloudfilm.dicom.synth import write_studies
    except ImportError as exc:
        raise SystemExit(
            "no synthetic data generator: neither `cloudfilm synth` nor "
            f"cloudfilm.dicom.synth.write_studies is available ({exc})"
        ) from exc
    write_studies(out, seed=seed, modality=modality, slices=slices)
    return (
        f"cloudfilm.dicom.synth.write_studies(seed={seed}, modality={modality!r}, slices={slices})"
    )
