"""Benchmarks of cloudfilm: one module per measurement, shared helpers in ``bench.common``.

Run them from the repository root, e.g. ``python -m bench.ingest``; see ``bench/README.md``.
"""
