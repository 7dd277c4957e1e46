"""The server-drawn charts: round axes, exact values in their titles, text escaped, no style."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from cloudfilm.film.charts import Series, bar_chart, line_chart, nice_scale

ROOT = Path(__file__).resolve().parents[2]


def test_nice_scale() -> None:
    assert nice_scale(0, 7) == (0, 8, 2)
    assert nice_scale(0, 0) == (0.0, 1.0, 0.25)
    assert nice_scale(-12.5, 26.5) == (-20, 30, 10)
    assert nice_scale(0, 1234) == (0, 1500, 500)


def test_bars_carry_their_values_and_escape_text() -> None:
    svg = str(bar_chart("<b>t</b>", "c1", ["<x>", "2026-W14"],
                        [Series("a&b", [3, 0]), Series("放射科", [-1.5, 2])]))  # fmt: skip
    assert svg.startswith('<svg class="chart" id="c1"') and svg.endswith("</svg>")
    assert "<b>" not in svg and "&lt;b&gt;t&lt;/b&gt;" in svg and "&lt;x&gt;" in svg
    assert "a&amp;b" in svg and "放射科" in svg
    values = re.findall(r'data-value="([^"]+)"', svg)
    assert values == ["3", "-1.50", "0", "2"]
    assert " style=" not in svg and "<script" not in svg
    heights = [float(h) for h in re.findall(r'<rect class="bar[^>]*height="([^"]+)"', svg)]
    assert heights[2] == 0 and heights[0] > heights[3] > 0


def test_lines_have_a_point_per_category() -> None:
    svg = str(line_chart("t", "c2", ["a", "b", "c"], [Series("s", [1, 5, 2])]))
    assert svg.count("<circle") == 3 and svg.count("<polyline") == 1
    assert "c · s: 5</title>" not in svg and "b · s: 5</title>" in svg


def test_migration_0015_reads_the_film_size_back() -> None:
    path = ROOT / "src/cloudfilm/migrations/versions/0015_sheet_film_size.py"
    spec = importlib.util.spec_from_file_location("migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = {"00082111": {"vr": "ST", "Value": [
        "cloudfilm film sheet STANDARD\\4,5 on 14INX17IN PORTRAIT, 150 dpi"]}}  # fmt: skip
    assert module._film_size(json.dumps(header)) == "14INX17IN"
    header["00082111"]["Value"] = ["cloudfilm film sheet ROW\\2,3 on 8_5INX11IN LANDSCAPE, 72 dpi"]
    assert module._film_size(json.dumps(header)) == "8_5INX11IN"
    assert module._film_size(json.dumps({"00082111": {"vr": "ST"}})) is None
    assert module._film_size("not json") is None
