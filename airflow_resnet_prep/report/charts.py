"""Inline SVG charts: per-class strips and histograms. No script: hover text comes from SVG ``<title>``.

Charts are drawn in a fixed coordinate system (``viewBox``) and scale with the page's width, so they
stay readable in a narrow iframe as in a full window. Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from airflow_resnet_prep.report.stats import FAR_FRACTION, ClassRow, Histogram

LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 34
COLORS = {"train": "#3867d6", "val": "#20a39e"}
FAR_COLOR = "#e8412c"
MAX_BAR = 36.0


def _num(x: float) -> str:
    """A coordinate with at most 2 decimals: keeps 1,000-bar charts small."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {_num(width)} {_num(height)}" role="img" '
        f'aria-label="{escape(label)}">' + "".join(body) + "</svg>"
    )


def _nice_ticks(top: float, count: int = 4, integer: bool = False) -> list[float]:
    """Round tick values from 0 to about ``top`` (whole numbers only with ``integer``: counts)."""
    if top <= 0:
        return [0.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    ticks = []
    v = 0.0
    while v <= top * 1.0001:
        ticks.append(v)
        v += step
    return ticks


def _y_axis(
    ticks: list[float], y: Callable[[float], float], width: float, fmt: Callable[[float], str]
) -> list[str]:
    out = []
    for t in ticks:
        yy = _num(y(t))
        out.append(f'<line class="grid" x1="{LEFT}" x2="{_num(width - RIGHT)}" y1="{yy}" y2="{yy}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{yy}" text-anchor="end" dy="0.32em">{escape(fmt(t))}</text>'
        )
    return out


def class_strip(rows: list[ClassRow], split: str, mean: float) -> str:
    """One bar per class (label order) for ``split``, the band within :data:`FAR_FRACTION` of the
    mean shaded, classes outside it in red. Readable at 1,000 classes (one unit per bar)."""
    n = len(rows)
    if n == 0:
        return ""
    # A fixed plot width whatever the class count, so text keeps its size; a few classes get bars of at
    # most MAX_BAR units, centred in their slots.
    plot_w, plot_h = 1000.0, 130.0
    pitch = plot_w / n
    width, height = LEFT + plot_w + RIGHT, TOP + plot_h + BOTTOM
    counts = [r.counts[split] for r in rows]
    top = max(max(counts), mean * (1 + FAR_FRACTION)) * 1.08 or 1.0

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    body = _y_axis(_nice_ticks(top, integer=True), y, width, lambda v: f"{v:,.0f}")
    lo, hi = y(mean * (1 + FAR_FRACTION)), y(mean * (1 - FAR_FRACTION))
    body.append(
        f'<rect class="band" x="{LEFT}" y="{_num(lo)}" width="{_num(plot_w)}" height="{_num(hi - lo)}">'
        f"<title>within {FAR_FRACTION:.0%} of the mean ({mean * (1 - FAR_FRACTION):,.1f} to "
        f"{mean * (1 + FAR_FRACTION):,.1f})</title></rect>"
    )
    base = TOP + plot_h
    dense = pitch < 3
    if dense:
        # Hundreds of touching bars drawn one by one leave anti-aliasing seams (a moire) between them:
        # draw the profile as one shape instead, and give each class an invisible rect for its hover text.
        steps = [f"M{_num(LEFT)},{_num(base)}"]
        for i, count in enumerate(counts):
            steps.append(f"V{_num(y(count))}H{_num(LEFT + (i + 1) * pitch)}")
        body.append(f'<path class="profile" d="{"".join(steps)}V{_num(base)}Z" fill="{COLORS[split]}"/>')
    bar_w = pitch if dense else min(MAX_BAR, pitch * 0.82)
    far_bars = []  # drawn last, on top of their wider-than-a-slot neighbours
    for i, (row, count) in enumerate(zip(rows, counts, strict=True)):
        far = split in row.far
        title = f"{escape(row.synset)} (label {row.label}): {count:,} {split} images"
        if far:
            title += f", {row.far[split]:+.0%} from the mean"
        # Far classes stay visible when dense (at least 2.5 units wide) and when empty (a sliver).
        w = max(bar_w, 2.5) if far else bar_w
        h = max(base - y(count), 1.5 if far else 0.0)
        x = _num(LEFT + (i + 0.5) * pitch - w / 2)
        if far:
            attrs = f'class="bar far" y="{_num(base - h)}" height="{_num(h)}" fill="{FAR_COLOR}"'
        elif dense:
            attrs = f'class="hit" y="{TOP}" height="{_num(plot_h)}" fill="transparent"'
        else:
            attrs = f'class="bar" y="{_num(base - h)}" height="{_num(h)}" fill="{COLORS[split]}"'
        (far_bars if far else body).append(
            f'<rect {attrs} x="{x}" width="{_num(w)}"><title>{title}</title></rect>'
        )
    body.extend(far_bars)
    ym = _num(y(mean))
    body.append(f'<line class="mean" x1="{LEFT}" x2="{_num(LEFT + plot_w)}" y1="{ym}" y2="{ym}"/>')
    body.append(
        f'<text class="note" x="{_num(LEFT + plot_w - 4)}" y="{ym}" dy="-0.4em" text-anchor="end">'
        f"mean {mean:,.1f}</text>"
    )
    # Every label when they fit, else the first, the quartiles and the last.
    marks = range(n) if n <= 25 else sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
    for j in marks:
        x = _num(LEFT + (j + 0.5) * pitch)
        body.append(
            f'<text class="tick" x="{x}" y="{_num(TOP + plot_h + 14)}" text-anchor="middle">{rows[j].label}</text>'
        )
    body.append(
        f'<text class="axis" x="{_num(LEFT + plot_w / 2)}" y="{_num(height - 4)}" text-anchor="middle">'
        "class label (classes in synset order)</text>"
    )
    return _svg(width, height, body, f"{split} images per class")


def histogram(
    hist: Histogram, fmt: Callable[[float], str], x_label: str, unit: str = "images", normalise: bool = True
) -> str:
    """Bars per bin, series side by side. ``normalise`` plots each series as a share of its total, so a
    50,000-image split and a 1.28 M-image split have comparable shapes; hover text gives the counts."""
    bins = len(hist.edges) - 1
    if bins <= 0:
        return '<p class="muted">No data.</p>'
    series = [(name, c) for name, c in hist.counts.items() if sum(c)]
    totals = {name: sum(c) for name, c in series}
    values = {name: [v / totals[name] * 100 if normalise else v for v in c] for name, c in series}
    plot_w, plot_h = 1000.0, 150.0
    width, height = LEFT + plot_w + RIGHT, TOP + plot_h + BOTTOM + 6
    top = max((max(v) for v in values.values()), default=1.0) * 1.1 or 1.0

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    body = _y_axis(
        _nice_ticks(top, integer=not normalise),
        y,
        width,
        (lambda v: f"{v:g}%") if normalise else (lambda v: f"{v:,.0f}"),
    )
    pitch = plot_w / bins
    inner = pitch * 0.84 / max(1, len(series))
    for b in range(bins):
        lo, hi = hist.edges[b], hist.edges[b + 1]
        for s, (name, counts) in enumerate(series):
            v = values[name][b]
            if not counts[b]:
                continue
            x = LEFT + b * pitch + pitch * 0.08 + s * inner
            share = f" ({v:.2f}% of {name})" if normalise else ""
            body.append(
                f'<rect class="bar" x="{_num(x)}" y="{_num(y(v))}" width="{_num(inner)}" '
                f'height="{_num(TOP + plot_h - y(v))}" fill="{COLORS.get(name, "#888")}">'
                f"<title>{escape(name)}: {counts[b]:,} {unit} of {escape(fmt(lo))} to {escape(fmt(hi))}"
                f"{share}</title></rect>"
            )
    step = max(1, bins // 8)
    for b in sorted({*range(0, bins + 1, step), bins}):
        x = _num(LEFT + b * pitch)
        # The last label ends at its tick so it stays inside the chart.
        anchor = "end" if b == bins else "middle"
        body.append(
            f'<line class="tickmark" x1="{x}" x2="{x}" y1="{_num(TOP + plot_h)}" y2="{_num(TOP + plot_h + 4)}"/>'
        )
        body.append(
            f'<text class="tick" x="{x}" y="{_num(TOP + plot_h + 16)}" text-anchor="{anchor}">'
            f"{escape(fmt(hist.edges[b]))}</text>"
        )
    body.append(
        f'<text class="axis" x="{_num(LEFT + plot_w / 2)}" y="{_num(height - 4)}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    return _svg(width, height, body, x_label)


def file_bars(files: list[tuple[str, str, int]], fmt: Callable[[float], str]) -> str:
    """One horizontal bar per file (few files: the ``.rec`` of each split): ``(split, name, size)``."""
    if not files:
        return '<p class="muted">No data.</p>'
    row_h, label_w, plot_w = 26.0, 260.0, 600.0
    width, height = label_w + plot_w + 110, row_h * len(files) + 8
    top = max(size for _, _, size in files) or 1
    body = []
    for i, (split, name, size) in enumerate(files):
        yy = 4 + i * row_h
        w = max(1.0, size / top * plot_w)
        body.append(
            f'<text class="tick" x="{_num(label_w - 8)}" y="{_num(yy + row_h / 2)}" text-anchor="end" '
            f'dy="0.32em">{escape(name)}</text>'
        )
        body.append(
            f'<rect class="bar" x="{_num(label_w)}" y="{_num(yy + 4)}" width="{_num(w)}" '
            f'height="{_num(row_h - 8)}" rx="2" fill="{COLORS.get(split, "#888")}">'
            f"<title>{escape(name)}: {size:,} bytes</title></rect>"
        )
        body.append(
            f'<text class="note" x="{_num(label_w + w + 6)}" y="{_num(yy + row_h / 2)}" dy="0.32em">'
            f"{escape(fmt(size))}</text>"
        )
    return _svg(width, height, body, "output file sizes")
