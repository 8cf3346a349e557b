"""The report's timeline: one inline SVG of a face's valence and arousal over a clip's seconds.

Two tracks on the label scale (valence above arousal) share a time axis: a thick segment per
second a face was found, its opacity the label's confidence, a thin step line joining consecutive
seconds, grey where the face was not found, and, where the table holds bounds, a band from each
second's lower to upper bound with its legend. `report` places one per face beside the player;
the page's script reads the `data-` attributes (the axis ends, a second, a value, its bounds).
"""

from __future__ import annotations

import html
import math

import pandas as pd

from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN

COLORS = {"valence": "#3b6fb6", "arousal": "#c8453b"}
NO_FACE_FILL = "#dcdcdc"
MIN_OPACITY = 0.2  # a label with confidence 0 stays visible
BAND_OPACITY = 0.2  # an interval's fill: the line's colour, light enough for the grid and the line to show

# Timeline geometry, in SVG user units (the SVG scales to the page's width).
TL_WIDTH, TL_LEFT, TL_RIGHT = 760, 58, 12
TRACK_H, TRACK_GAP, TL_TOP, AXIS_H = 78, 10, 6, 24


def timeline_svg(
    face_rows: pd.DataFrame,
    clip_rows: pd.DataFrame,
    duration: float,
    columns: dict[str, str],
    bands: dict[str, str],
) -> str:
    """One face's timeline as an SVG string.

    face_rows: this face's rows (`face` says where it was found); clip_rows: every row of the
    clip, whose seconds the axis spans; duration: the axis' end in seconds; columns: dimension ->
    the column drawn (the label or the score); bands: dimension -> its interval's legend, for the
    dimensions whose bounds (`{dim}_lo`, `{dim}_hi`) are drawn (`band_keys`).
    """
    x0, x1 = TL_LEFT, TL_WIDTH - TL_RIGHT
    height = TL_TOP + 2 * TRACK_H + TRACK_GAP + AXIS_H
    bottom = TL_TOP + 2 * TRACK_H + TRACK_GAP

    def x(t: float) -> float:
        return x0 + (x1 - x0) * min(max(t / duration, 0.0), 1.0)

    faced = face_rows[face_rows["face"]].set_index("second")
    out = [
        f'<svg class="timeline" viewBox="0 0 {TL_WIDTH} {height}" role="img" data-x0="{x0}" data-x1="{x1}" '
        f'data-duration="{duration:.6g}" aria-label="valence and arousal over time">'
    ]
    # A transparent layer under everything takes the clicks where nothing is drawn; what is drawn
    # over it takes the pointer (its title shows) and passes its clicks up to the same handler.
    out.append(
        f'<rect class="hit" x="{x0}" y="{TL_TOP}" width="{x1 - x0}" height="{bottom - TL_TOP}" fill="transparent"/>'
    )
    out += _shading(clip_rows, faced, x, bottom)
    for k, dim in enumerate(DIMENSIONS):
        out += _track(faced, dim, TL_TOP + k * (TRACK_H + TRACK_GAP), x, columns[dim], bands.get(dim))
    out += _time_axis(duration, x, bottom)
    # The cursor, moved by the page's script.
    out.append(
        f'<line class="cursor" x1="{x0}" x2="{x0}" y1="{TL_TOP - 4}" y2="{bottom + 2}" '
        'stroke="#111" stroke-width="1.5"/>'
    )
    out.append("</svg>")
    return "".join(out)


def _shading(clip_rows: pd.DataFrame, faced: pd.DataFrame, x, bottom: float) -> list[str]:
    """A grey rect over each second of the clip in which this face was not found."""
    spans = clip_rows.groupby("second").agg(start=("start", "min"), end=("end", "max")).sort_index()
    out = []
    for s, span in spans.iterrows():
        if s not in faced.index:
            out.append(
                f'<rect class="noface" data-second="{s}" x="{x(span.start):.2f}" y="{TL_TOP}" '
                f'width="{max(x(span.end) - x(span.start), 0.5):.2f}" height="{bottom - TL_TOP}" fill="{NO_FACE_FILL}">'
                f"<title>second {s}: no face</title></rect>"
            )
    return out


def _track(faced: pd.DataFrame, dim: str, top: float, x, col: str, band: str | None) -> list[str]:
    """One dimension's track from `top` down: frame, grid, name, band, step line and segments."""
    x0, x1 = TL_LEFT, TL_WIDTH - TL_RIGHT

    def y(v: float) -> float:
        return top + TRACK_H * (LABEL_MAX + 0.5 - v) / (LABEL_MAX - LABEL_MIN + 1)

    out = [f'<rect class="track" x="{x0}" y="{top}" width="{x1 - x0}" height="{TRACK_H}" fill="none" stroke="#bbb"/>']
    for v in (-10, -5, 0, 5, 10):
        grid = "#999" if v == 0 else "#e4e4e4"
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y(v):.2f}" y2="{y(v):.2f}" stroke="{grid}" stroke-width="0.8"/>')
        out.append(f'<text x="{x0 - 4}" y="{y(v) + 3.5:.2f}" class="tick" text-anchor="end">{v}</text>')
    out.append(f'<text x="{x0 + 5}" y="{top + 12}" class="dim" fill="{COLORS[dim]}">{dim}</text>')
    if band is not None:
        out += _band(faced, dim, band, x, y, x0 + 62, top + 3)
    return out + _step_line(faced, dim, col, x, y) + _segments(faced, dim, col, x, y)


def _step_line(faced: pd.DataFrame, dim: str, col: str, x, y) -> list[str]:
    """A thin line through consecutive faced seconds, so the eye can follow the course."""
    path, prev = [], None
    for s, r in faced.sort_index().iterrows():
        v = float(r[col])
        cmd = "L" if prev == s - 1 else "M"
        path.append(f"{cmd}{x(r.start):.2f},{y(v):.2f} L{x(r.end):.2f},{y(v):.2f}")
        prev = s
    if not path:
        return []
    return [f'<path d="{" ".join(path)}" fill="none" stroke="{COLORS[dim]}" stroke-width="1" stroke-opacity="0.5"/>']


def _segments(faced: pd.DataFrame, dim: str, col: str, x, y) -> list[str]:
    """A thick segment over each faced second's span: its value, its confidence as opacity."""
    conf_col = f"{dim}_conf"
    out = []
    for s, r in faced.sort_index().iterrows():
        v = float(r[col])
        conf = finite(r.get(conf_col)) if conf_col in faced else None
        opacity = 1.0 if conf is None else MIN_OPACITY + (1 - MIN_OPACITY) * min(max(conf, 0.0), 1.0)
        tip = f"second {s}: {dim} {label_text(v)}" + ("" if conf is None else f", confidence {conf:.2f}")
        out.append(
            f'<line class="seg {dim}" data-second="{s}" data-value="{label_text(v)}" x1="{x(r.start):.2f}" '
            f'x2="{x(r.end):.2f}" y1="{y(v):.2f}" y2="{y(v):.2f}" stroke="{COLORS[dim]}" stroke-width="5" '
            f'stroke-opacity="{opacity:.3f}"><title>{html.escape(tip)}</title></line>'
        )
    return out


def _time_axis(duration: float, x, bottom: float) -> list[str]:
    """Ticks and clock labels under the tracks, at most about a dozen, and the unit."""
    out, step, t = [], _tick_step(duration), 0.0
    while t <= duration + 1e-9:
        out.append(f'<line x1="{x(t):.2f}" x2="{x(t):.2f}" y1="{bottom - 2}" y2="{bottom + 3}" stroke="#777"/>')
        out.append(f'<text x="{x(t):.2f}" y="{bottom + 15}" class="tick" text-anchor="middle">{_clock(t)}</text>')
        t += step
    out.append(f'<text x="4" y="{bottom + 15}" class="tick unit">time (s)</text>')
    return out


def band_keys(df: pd.DataFrame, meta: dict | None) -> dict[str, str]:
    """dimension -> its interval's legend, for the dimensions whose bounds the table holds."""
    cal = (meta or {}).get("calibration")
    out = {}
    for dim in (d for d in DIMENSIONS if f"{d}_lo" in df and f"{d}_hi" in df):
        try:
            out[dim] = f"{round(100 * cal['coverage'], 2):g}% interval, calibrated on {cal['clips'][dim]} clips"
        except (TypeError, KeyError):  # bounds made elsewhere: drawn, their coverage unknown
            out[dim] = "interval (its calibration not recorded)"
    return out


def _band(faced: pd.DataFrame, dim: str, key: str, x, y, key_x: float, key_y: float) -> list[str]:
    """A rect from lo to hi over each second's span (none without bounds), and the legend's key."""
    fill = f'fill="{COLORS[dim]}" fill-opacity="{BAND_OPACITY}"'
    out = [
        f'<rect class="band-key {dim}" x="{key_x}" y="{key_y}" width="12" height="10" {fill}/>'
        f'<text x="{key_x + 16}" y="{key_y + 9}" class="tick band-key">{html.escape(key)}</text>'
    ]
    for s, r in faced.sort_index().iterrows():
        lo, hi = finite(r[f"{dim}_lo"]), finite(r[f"{dim}_hi"])
        if lo is None or hi is None:
            continue
        tip = f"second {s}: {dim} {label_text(lo)} to {label_text(hi)} ({key})"
        out.append(
            f'<rect class="band {dim}" data-second="{s}" data-lo="{lo:g}" data-hi="{hi:g}" x="{x(r.start):.2f}" '
            f'y="{y(hi):.2f}" width="{x(r.end) - x(r.start):.2f}" height="{y(lo) - y(hi):.2f}" {fill}>'
            f"<title>{html.escape(tip)}</title></rect>"
        )
    return out


def _tick_step(duration: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration / step <= 12:
            return float(step)
    return 3600.0 * math.ceil(duration / 3600 / 12)


def _clock(t: float) -> str:
    t = int(round(t))
    return f"{t // 60}:{t % 60:02d}" if t >= 60 else str(t)


def finite(value) -> float | None:
    """`value` as a float, or None where it is missing, not a number, or infinite."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def label_text(v: float) -> str:
    """A value as the page writes it: a whole label as it is, a score to two decimals."""
    return f"{v:g}" if float(v).is_integer() else f"{v:.2f}"
