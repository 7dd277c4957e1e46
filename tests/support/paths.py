"""Paths of the shared test data."""

from pathlib import Path

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
