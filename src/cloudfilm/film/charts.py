"""Small charts as inline SVG, drawn on the server (the pages carry no script).

Only presentation attributes and CSS classes are used, never a ``style`` attribute: the
Content-Security-Policy of the pages forbids inline styles. Series are coloured by the classes
``s0`` … ``s5`` (``staff.css``). Every text is escaped; each bar or point has a ``<title>``
(shown on hover) with its exact value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Series", "bar_chart", "line_chart", "nice_scale"]

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 34, 46
#: Most category labels written under the axis (every n-th one beyond).
MAX_LABELS = 16


@dataclass(frozen=True)
class Series:
    """One coloured series: its name (in the legend) and a value per category."""

    name: str
    values: Sequence[float]


def nice_scale(low: float, high: float, ticks: int = 4) -> tuple[float, float, float]:
    """An axis from ≤ ``low`` to ≥ ``high`` (both including 0) in round steps:
    ``(bottom, top, step)``."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        return 0.0, 1.0, 0.25 if ticks == 4 else 1.0 / ticks
    raw = (high - low) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


class _Frame:
    """The plot area, the value axis and the category labels of one chart."""

    def __init__(self, categories: Sequence[str], series: Sequence[Series]) -> None:
        self.legend, legend_height = _legend(series)
        self.top_y = max(TOP, legend_height + 14)
        values = [v for s in series for v in s.values] or [0.0]
        self.bottom, self.top, self.step = nice_scale(min(values), max(values))
        self.categories = list(categories)
        self.plot_w = WIDTH - LEFT - RIGHT
        self.plot_h = HEIGHT - self.top_y - BOTTOM

    def y(self, value: float) -> float:
        share = (value - self.bottom) / (self.top - self.bottom)
        return round(self.top_y + self.plot_h * (1 - share), 2)

    def slot(self) -> float:
        return self.plot_w / max(len(self.categories), 1)

    def axis(self) -> list[str]:
        parts = []
        tick = self.bottom
        while tick <= self.top + self.step / 2:
            y = self.y(tick)
            parts.append(
                f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>'
                f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
                f"{escape(_number(tick))}</text>"
            )
            tick += self.step
        zero = self.y(0.0)
        parts.append(
            f'<line class="axis" x1="{LEFT}" y1="{zero}" x2="{WIDTH - RIGHT}" y2="{zero}"/>'
        )
        every = max(1, math.ceil(len(self.categories) / MAX_LABELS))
        for index, name in enumerate(self.categories):
            if index % every:
                continue
            x = round(LEFT + self.slot() * (index + 0.5), 2)
            parts.append(
                f'<text class="label" x="{x}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(name)}</text>'
            )
        return parts


def _text_width(text: str) -> int:
    """About how wide ``text`` is at the legend's 12 px (CJK characters are square)."""
    return sum(12 if ord(c) > 0x2E7F else 7 for c in text)


def _legend(series: Sequence[Series]) -> tuple[list[str], int]:
    """The legend, wrapped onto as many lines as it needs, and its height."""
    parts, x, y = [], LEFT, 8
    for index, one in enumerate(series):
        width = 16 + _text_width(one.name) + 18
        if x > LEFT and x + width > WIDTH - RIGHT:
            x, y = LEFT, y + 18
        parts.append(
            f'<rect class="s{index % 6}" x="{x}" y="{y}" width="12" height="12"/>'
            f'<text class="legend" x="{x + 16}" y="{y + 10}">{escape(one.name)}</text>'
        )
        x += width
    return parts, y + 12


def _svg(title: str, ident: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" id="{escape(ident)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def bar_chart(
    title: str,
    ident: str,
    categories: Sequence[str],
    series: Sequence[Series],
    value_text: Callable[[float], str] = _number,
) -> Markup:
    """Grouped vertical bars: one group of bars per category, one bar per series."""
    frame = _Frame(categories, series)
    body = frame.axis() + frame.legend
    slot = frame.slot()
    width = slot * 0.8 / max(len(series), 1)
    zero = frame.y(0.0)
    for index, name in enumerate(frame.categories):
        for number, one in enumerate(series):
            value = float(one.values[index])
            top = frame.y(value)
            x = round(LEFT + slot * index + slot * 0.1 + width * number, 2)
            body.append(
                f'<rect class="bar s{number % 6}" x="{x}" y="{min(top, zero)}" '
                f'width="{round(width, 2)}" height="{round(abs(zero - top), 2)}" '
                f'data-value="{escape(value_text(value))}">'
                f"<title>{escape(name)} · {escape(one.name)}: {escape(value_text(value))}</title>"
                f"</rect>"
            )
    return _svg(title, ident, body)


def line_chart(
    title: str,
    ident: str,
    categories: Sequence[str],
    series: Sequence[Series],
    value_text: Callable[[float], str] = _number,
) -> Markup:
    """One line per series over the categories, with a dot (and its value) at each point."""
    frame = _Frame(categories, series)
    body = frame.axis() + frame.legend
    slot = frame.slot()
    for number, one in enumerate(series):
        points = [
            (round(LEFT + slot * (i + 0.5), 2), frame.y(float(v)), float(v))
            for i, v in enumerate(one.values)
        ]
        path = " ".join(f"{x},{y}" for x, y, _ in points)
        body.append(f'<polyline class="line s{number % 6}" points="{path}"/>')
        for (x, y, value), name in zip(points, frame.categories, strict=True):
            body.append(
                f'<circle class="dot s{number % 6}" cx="{x}" cy="{y}" r="3">'
                f"<title>{escape(name)} · {escape(one.name)}: {escape(value_text(value))}</title>"
                f"</circle>"
            )
    return _svg(title, ident, body)
