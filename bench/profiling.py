"""Summarise a py-spy profile (``py-spy record -f raw``, collapsed stacks) as two top lists.

``python -m bench.profiling FILE [--root FUNC] [--top N]``

* *inclusive*: share of the samples under ``--root`` in which a function is on the stack;
* *self*: share in which a line is the innermost Python frame (with ``py-spy --idle``, time
  blocked in ``os.fsync`` or SQLite's commit is charged to the line that called it).

Record a workload with, for example (see ``bench/README.md``)::

    py-spy record --idle -f raw -o bench/out/ingest.pyspy -- \\
        python -m bench.ingest --worker archive --manifest … --dest … --result …
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Profile:
    total: int
    inclusive: list[tuple[str, int]]
    self_lines: list[tuple[str, int]]


def _function(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def _matches(frame: str, name: str) -> bool:
    """``name`` is the frame's function, bare or class-qualified (``Archive.store``)."""
    func = frame.partition(" (")[0]
    return func == name or func.endswith("." + name)


def summarise(lines: Iterable[str], root: str | None = None) -> Profile:
    """Top functions of collapsed stacks ``f1;f2;…;fn COUNT``, below the frame ``root``."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_lines: collections.Counter[str] = collections.Counter()
    total = 0
    for text in lines:
        stack, _, count_text = text.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if root is not None:
            starts = [i for i, f in enumerate(frames) if _matches(f, root)]
            if not starts:
                continue
            frames = frames[starts[0] :]
        count = int(count_text)
        total += count
        for name in {_function(f) for f in frames}:
            inclusive[name] += count
        self_lines[frames[-1]] += count
    return Profile(total, inclusive.most_common(), self_lines.most_common())


def format_profile(profile: Profile, top: int = 25) -> str:
    out = [f"{profile.total} samples"]
    for title, entries in (("inclusive", profile.inclusive), ("self", profile.self_lines)):
        out.append(f"\ntop {top} {title}:")
        for name, count in entries[:top]:
            out.append(f"  {100 * count / max(profile.total, 1):5.1f}%  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    parser.add_argument("file", type=Path, help="py-spy raw (collapsed) output")
    parser.add_argument(
        "--root",
        default=None,
        help="only samples below this function (e.g. store or Archive.store)",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    with open(args.file, encoding="utf-8") as fh:
        print(format_profile(summarise(fh, args.root), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
