"""Bar charts as inline SVG, drawn on the server (no script, no build step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

__all__ = ["Series", "bar_chart"]

_W, _H, _PAD = 640, 180, 28


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    css: str  # class name of its colour in style.css
    values: Sequence[float]


def bar_chart(title: str, starts: Sequence[int], series: Sequence[Series], unit: str) -> Markup:
    """Grouped bars, one group per bucket start (UNIX seconds), one bar per series."""
    top = max([v for s in series for v in s.values] + [0.0]) or 1.0
    groups = max(len(starts), 1)
    slot = (_W - 2 * _PAD) / groups
    bar = max(slot / (len(series) + 1), 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H + 30}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{_PAD}" y1="{_H}" x2="{_W - _PAD}" y2="{_H}"/>',
        f'<text class="tick" x="{_PAD}" y="12">{escape(_amount(top))} {escape(unit)}</text>',
    ]
    for g, start in enumerate(starts):
        x0 = _PAD + g * slot
        for i, s in enumerate(series):
            value = s.values[g]
            height = (value / top) * (_H - 20)
            x = x0 + (i + 0.5) * bar
            parts.append(
                f'<rect class="{s.css}" x="{x:.1f}" y="{_H - height:.1f}" '
                f'width="{bar * 0.9:.1f}" height="{height:.1f}">'
                f"<title>{escape(s.label)}: {escape(_amount(value))} {escape(unit)}</title></rect>"
            )
        if g % max(groups // 6, 1) == 0:
            when = datetime.fromtimestamp(start, UTC).strftime("%H:%M")
            parts.append(f'<text class="tick" x="{x0:.1f}" y="{_H + 16}">{when}</text>')
    legend_x = _PAD
    for s in series:
        parts.append(
            f'<rect class="{s.css}" x="{legend_x}" y="{_H + 22}" width="10" height="8"/>'
            f'<text class="tick" x="{legend_x + 14}" y="{_H + 30}">{escape(s.label)}</text>'
        )
        legend_x += 150
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def _amount(value: float) -> str:
    return f"{value:,.4f}".rstrip("0").rstrip(".")
