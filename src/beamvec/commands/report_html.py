"""Inline SVG charts and the page around them, drawn in Python.

The run report is one self-contained HTML file: no script, no font or style
sheet from a CDN, so it opens from a bucket, a mail attachment or an
air-gapped laptop. Every chart is an ``<svg class="chart" id=...>`` whose
marks are ``path.series`` / ``rect.bar`` elements, which the tests look for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 46, 40

#: Colours of the marks (the test finds the charts' pixels by them).
BLUE, GREEN, RED, ORANGE, PURPLE, TEAL, BROWN, PINK, GREY = (
    "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
)


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = BLUE


@dataclass(frozen=True)
class RefLine:
    """A horizontal line, such as the configured quota."""

    name: str
    y: float
    color: str = RED


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``: 0, 20, 40 ... not 0, 17.3 ..."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _frame(chart_id: str, title: str, body: str, height: int = HEIGHT) -> str:
    return (
        f'<svg class="chart" id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}"><text x="{LEFT}" y="18" class="title">{escape(title)}</text>'
        f"{body}</svg>"
    )


def _axes(ticks: Sequence[float], y_of, x_ticks: Sequence[tuple[float, str]], x_label: str, height: int) -> str:
    parts = []
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    for x, label in x_ticks:
        parts.append(f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>')
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"{escape(x_label)}</text>"
    )
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]]) -> str:
    parts, x = [], float(LEFT)
    for name, color in items:
        parts.append(
            f'<rect x="{x:.0f}" y="25" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14:.0f}" y="34">{escape(name)}</text>'
        )
        x += 24 + 6.5 * len(name)
    return "".join(parts)


def line_chart(
    chart_id: str, title: str, series: Sequence[Series], x_label: str = "seconds since the run started",
    ref: RefLine | None = None,
) -> str:
    """Lines over a shared x axis, from 0, with an optional horizontal reference line."""
    xs = [x for s in series for x in s.xs] or [1.0]
    ys = [y for s in series for y in s.ys] or [0.0]
    x_max = max(max(xs), 1e-9)
    ticks = nice_ticks(max(max(ys), ref.y if ref else 0.0) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(x: float) -> float:
        return LEFT + plot_w * x / x_max

    def y_of(y: float) -> float:
        return TOP + plot_h * (1 - y / ticks[-1])

    x_ticks = [(x_of(t), _fmt(t)) for t in nice_ticks(x_max, 6) if t <= x_max * 1.0001]
    body = [_axes(ticks, y_of, x_ticks, x_label, HEIGHT)]
    if ref is not None:
        y = y_of(ref.y)
        body.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="ref" '
            f'stroke="{ref.color}"/>'
        )
    for s in series:
        if not s.xs:
            continue
        d = "M" + " L".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        body.append(f'<path class="series" d="{d}" stroke="{s.color}"><title>{escape(s.name)}</title></path>')
    legend = [(s.name, s.color) for s in series] + ([(ref.name, ref.color)] if ref else [])
    body.append(_legend(legend))
    return _frame(chart_id, title, "".join(body))


def bar_chart(
    chart_id: str, title: str, labels: Sequence[str], values: Sequence[float], unit: str,
    color: str = PURPLE, highlight_above: float | None = None, highlight: str = RED,
) -> str:
    """Horizontal bars in the given order; bars above ``highlight_above`` stand out."""
    row, gap = 16, 4
    height = TOP + BOTTOM + max(1, len(values)) * (row + gap)
    ticks = nice_ticks(max(values, default=0.0) * 1.05)
    label_w = 150
    plot_w = WIDTH - LEFT - RIGHT - label_w + LEFT

    def x_of(v: float) -> float:
        return label_w + plot_w * v / ticks[-1]

    body = []
    for tick in ticks:
        x = x_of(tick)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - BOTTOM}" class="grid"/>')
        body.append(f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle">{_fmt(tick)}</text>')
    body.append(
        f'<text x="{(label_w + WIDTH - RIGHT) / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"{escape(unit)}</text>"
    )
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + i * (row + gap)
        fill = highlight if highlight_above is not None and value > highlight_above else color
        short = label if len(label) <= 22 else label[:10] + "…" + label[-11:]
        body.append(
            f'<text x="{label_w - 6}" y="{y + row - 4}" text-anchor="end">{escape(short)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y}" width="{max(1.0, x_of(value) - label_w):.1f}" '
            f'height="{row}" fill="{fill}"><title>{escape(label)}: {_fmt(value)} {escape(unit)}</title></rect>'
        )
    return _frame(chart_id, title, "".join(body), height)


def column_chart(
    chart_id: str, title: str, labels: Sequence[str], values: Sequence[float], x_label: str,
    color: str = TEAL,
) -> str:
    """Vertical bars side by side: a histogram, or one bar per run."""
    ticks = nice_ticks(max(values, default=0.0) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(values))
    step = plot_w / n

    def y_of(y: float) -> float:
        return TOP + plot_h * (1 - y / ticks[-1])

    every = max(1, math.ceil(n / 8))
    x_ticks = [(LEFT + step * (i + 0.5), label) for i, label in enumerate(labels) if i % every == 0]
    body = [_axes(ticks, y_of, x_ticks, x_label, HEIGHT)]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        top = y_of(value)
        body.append(
            f'<rect class="bar" x="{LEFT + step * i + step * 0.08:.1f}" y="{top:.1f}" '
            f'width="{step * 0.84:.1f}" height="{TOP + plot_h - top:.1f}" fill="{color}">'
            f"<title>{escape(label)}: {_fmt(value)}</title></rect>"
        )
    return _frame(chart_id, title, "".join(body))


def empty_panel(chart_id: str, title: str, message: str) -> str:
    """A chart's place when there is nothing to draw, saying why."""
    return (
        f'<div class="empty" id="{escape(chart_id)}"><div class="title">{escape(title)}</div>'
        f"<p>{escape(message)}</p></div>"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(rows: Sequence[tuple[str, object]]) -> str:
    """A two-column table of labelled values."""
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555} .grid2{display:grid;grid-template-columns:repeat(2,660px);gap:12px}
svg.chart{background:#fff;border:1px solid #e4e4e4} svg text{font-size:11px;fill:#333}
svg text.title,.empty .title{font-size:13px;font-weight:600} svg text.axis{fill:#666}
svg line.grid{stroke:#eee} svg line.ref{stroke-width:2;stroke-dasharray:6 4}
svg path.series{fill:none;stroke-width:2.5;stroke-linejoin:round}
.empty{width:620px;height:80px;border:1px dashed #bbb;padding:10px;color:#666}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f6f6f6} td{max-width:520px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.kv td:first-child{color:#555}
"""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: a heading, then (heading, html) sections."""
    body = "".join(f"<h2>{escape(h)}</h2>{html}" for h, html in sections)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><div class=\"meta\">{escape(subtitle)}</div>{body}</body></html>"
    )
