"""`fer report`: one self-contained HTML page for a whole batch of annotations.

The page (`index.html` in the report folder) holds everything it needs: styles, inline SVG drawn
in Python, and a few lines of our own JavaScript for the interaction. It fetches nothing
when viewed; the only files it points at are the clips themselves, by a relative path, so a
report folder opened from disk (file://) or served together with the videos plays them.

What it shows (docs/views.md has the whole list): a summary of the batch and its failed clips,
per clip a timeline of valence and arousal (`timeline`; one per person with `--all-faces`) beside
the clip's player, and the circumplex.

Per-frame and per-sample tables (`--per-frame`, `--per-sample`) are not supported: the page is about seconds.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError
from ..core.files import atomic_write, check_out_dir
from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN
from .render import PREVIEW_HEIGHT
from .timeline import band_keys, finite, label_text, timeline_svg

log = logging.getLogger("fercli")
REPORT_NAME = "index.html"
PREVIEWS = "previews"  # the folder in the report for copies of clips browsers cannot play
# matplotlib's tab10, so clips keep the colours `fer plot` gives them.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
# The page's template, styles and script: package data, the last two inlined (the page fetches nothing).
ASSETS = "assets"


# --- the library entry point --------------------------------------------------------------------


def write_report(
    table_path: str | Path,
    out_dir: str | Path,
    *,
    videos: str | Path | None = None,
    overwrite: bool = False,
    title: str | None = None,
    previews: bool = True,
) -> Path:
    """Write the batch report for a `fer annotate` table to `out_dir/index.html`; returns its path.

    videos: the folder the table's `video` paths are relative to (the folder `fer annotate` was
    pointed at); default the table's own folder. A clip found there gets a player, linked by a
    path relative to the report. previews: a clip browsers cannot play (an AVI, MJPEG, HEVC,
    Matroska: `render.browser_plays`) gets a small H.264 copy in `out_dir/previews/` to play
    instead, and a note naming the original; without, its player says it cannot play it.
    overwrite: allow a non-empty `out_dir` (its `index.html` and the previews it makes are
    replaced; nothing else in it is touched). Raises FerError (one line) for a missing or
    unreadable table, a per-frame table, a missing videos folder, or a non-empty `out_dir`.
    """
    table_path, out_dir = Path(table_path), Path(out_dir)
    df = read_annotations(table_path)
    from ..tables.writers import read_errors

    errors = read_errors(table_path)  # one policy for every tool
    root = table_path.parent if videos is None else Path(videos)
    if not root.is_dir():
        raise FerError(f"{root}: --videos must be a folder (the one the table's video paths are relative to)")
    check_out_dir(out_dir, overwrite=overwrite, what="report")
    meta = _metadata(table_path)
    made = _previews(df, root, out_dir) if previews else {}
    title = title or table_path.name
    page = report_html(df, errors, out_dir=out_dir, videos_root=root, title=title, metadata=meta, previews=made)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path


def _previews(df: pd.DataFrame, root: Path, out_dir: Path) -> dict[str, Path]:
    """video -> a preview browsers play, made for each clip under `root` they cannot play as it is."""
    from ..media.inputs import clip_under
    from .plots import safe_names
    from .render import browser_plays, preview

    found = {v: clip_under(root, v) for v in pd.unique(df["video"].astype(str))}
    todo = [v for v, path in found.items() if path is not None and path.is_file() and not browser_plays(path)]
    made, stems = {}, safe_names(todo)
    for video in todo:
        target = out_dir / PREVIEWS / f"{stems[video]}.mp4"
        try:
            preview(found[video], target)
        except FerError as e:  # a clip fer annotated but cannot re-read now: its player says so
            log.warning("no preview for %s: %s", video, e)
            continue
        made[video] = target
    return made


def read_annotations(table_path: Path) -> pd.DataFrame:
    """The table as a DataFrame, checked to be a per-second fer table; FerError (one line) if not."""
    from ..tables.writers import check_keys, read_table

    df = read_table(table_path)
    if "second" not in df and ("frame" in df or "sample_index" in df):
        raise DataError(f"{table_path}: a per-frame or per-sample table; fer report reads per-second tables")
    missing = [c for c in ("video", "second", "face") if c not in df]
    missing += [d for d in DIMENSIONS if d not in df and f"{d}_score" not in df]
    if missing:
        raise DataError(f"{table_path}: missing column(s) {', '.join(missing)}")
    check_keys(df, table_path, "second")
    return df


# --- numbers --------------------------------------------------------------------------------------


@dataclass
class ClipSummary:
    """One clip's numbers, as the summary table shows them."""

    video: str
    seconds: int  # distinct seconds with a row
    face_seconds: int  # of those, seconds in which a face (any face, with --all-faces) was found
    duration: float  # the clip's end (last row's end)
    faces: int  # people: distinct `person` ids, else the most seen in one row (`people`), else 1 or 0
    mean_valence: float | None
    mean_arousal: float | None

    @property
    def face_share(self) -> float | None:
        return self.face_seconds / self.seconds if self.seconds else None


@dataclass
class BatchSummary:
    """The batch's numbers: clips annotated (in table order) and clips that failed."""

    clips: list[ClipSummary]
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> int:
        return sum(c.seconds for c in self.clips)

    @property
    def face_seconds(self) -> int:
        return sum(c.face_seconds for c in self.clips)

    @property
    def face_share(self) -> float | None:
        return self.face_seconds / self.seconds if self.seconds else None


def summarize(df: pd.DataFrame, errors: list[tuple[str, str]] | None = None) -> BatchSummary:
    """Per-clip and batch numbers for a per-second table (and the failed clips beside it)."""
    df = _normalized(df)
    clips = []
    for video, rows in df.groupby("video", sort=False):
        per_second = rows.groupby("second")["face"].any()
        faced = rows[rows["face"]]
        n_faces = _people(rows, faced)
        means = [faced[_value_column(df, d)].astype(float).mean() if len(faced) else None for d in DIMENSIONS]
        clips.append(
            ClipSummary(
                video=video,
                seconds=int(per_second.size),
                face_seconds=int(per_second.sum()),
                duration=float(rows["end"].max()),
                faces=int(n_faces),
                mean_valence=finite(means[0]),
                mean_arousal=finite(means[1]),
            )
        )
    return BatchSummary(clips, list(errors or []))


def _normalized(df: pd.DataFrame) -> pd.DataFrame:
    """video as str, start/end and face filled in where an older or hand-made table lacks them."""
    df = df.copy()
    df["video"] = df["video"].astype(str)
    df["second"] = pd.to_numeric(df["second"]).astype(int)
    if "start" not in df:
        df["start"] = df["second"].astype(float)
    if "end" not in df:
        df["end"] = df["second"] + 1.0
    v, a = (_value_column(df, d) for d in DIMENSIONS)
    has_labels = df[v].notna() & df[a].notna()
    # A row counts as a face only if it says so and carries labels: what the timeline can draw.
    df["face"] = (df["face"].fillna(False).astype(bool) if "face" in df else True) & has_labels
    return df


# --- the page -------------------------------------------------------------------------------------


def report_html(
    df: pd.DataFrame,
    errors: list[tuple[str, str]],
    *,
    out_dir: Path,
    videos_root: Path,
    title: str,
    metadata: dict | None = None,
    previews: dict[str, Path] | None = None,
) -> str:
    """The report page as one HTML string (see the module docstring for what it holds);
    `previews`: video -> a copy to play in the original's place (`write_report` makes them)."""
    from ..media.inputs import clip_under

    df = _normalized(df)
    summary = summarize(df, errors)
    colors = {c.video: PALETTE[i % len(PALETTE)] for i, c in enumerate(summary.clips)}
    bands = band_keys(df, metadata)
    sections = []
    for i, (clip, (video, rows)) in enumerate(zip(summary.clips, df.groupby("video", sort=False))):
        path = clip_under(videos_root, video)
        copy = (previews or {}).get(video)
        src = _relative_src(copy or path, out_dir) if path else None
        original = _relative_src(path, out_dir) if copy else None
        origin = _origin(copy or path) if path else 0.0
        sections.append(_clip_section(i, clip, rows, df, src, colors[video], videos_root, original, origin, bands))
    body = "\n".join(
        [
            f"<header><h1>{_e(title)}</h1>{_meta_line(metadata)}</header>",
            f'<div class="overview">{_summary_html(summary, colors)}{_circumplex_html(df, summary, colors)}</div>',
            *sections,
        ]
    )
    page = _asset("report.html")  # {title}, {css}, {body} and {js} are its only braces
    return page.format(title=_e(f"fer report: {title}"), css=_asset("report.css"), body=body, js=_asset("report.js"))


def _summary_html(summary: BatchSummary, colors: dict[str, str]) -> str:
    n_ok, n_failed = len(summary.clips), len(summary.errors)
    batch = [
        ("clips", f"{n_ok + n_failed} ({n_ok} annotated, {n_failed} failed)"),
        ("seconds", f"{summary.seconds}"),
        ("seconds with a face", f"{summary.face_seconds} ({_pct(summary.face_share)})"),
        ("errors", f"{n_failed}"),
    ]
    rows = "".join(f'<tr><th scope="row">{k}</th><td data-key="{k}">{_e(v)}</td></tr>' for k, v in batch)
    clip_rows = "".join(
        f'<tr data-video="{_e(c.video)}"><td><span class="swatch" style="background:{colors[c.video]}"></span>'
        f'<a href="#clip-{i}">{_e(c.video)}</a></td><td>{c.seconds}</td><td>{c.duration:.2f} s</td>'
        f"<td>{_pct(c.face_share)}</td><td>{c.faces}</td><td>{_num(c.mean_valence)}</td>"
        f"<td>{_num(c.mean_arousal)}</td></tr>"
        for i, c in enumerate(summary.clips)
    )
    parts = [
        '<section class="summary" id="summary"><h2>Summary</h2>',
        f'<table class="batch">{rows}</table>',
        '<table class="clips"><thead><tr><th>clip</th><th>seconds</th><th>duration</th><th>with a face</th>'
        f"<th>faces</th><th>mean valence</th><th>mean arousal</th></tr></thead><tbody>{clip_rows}</tbody></table>",
    ]
    if summary.errors:
        err_rows = "".join(f"<tr><td>{_e(v)}</td><td>{_e(e)}</td></tr>" for v, e in summary.errors)
        parts.append(
            '<h3>Failed clips</h3><table class="errors"><thead><tr><th>clip</th><th>error</th></tr></thead>'
            f"<tbody>{err_rows}</tbody></table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _origin(path: Path) -> float:
    """Where the played file shows the table's t = 0 (`decode.player_origin`); 0 if unreadable."""
    from ..media.decode import player_origin

    try:
        return player_origin(path)
    except FerError:  # the player says it cannot play it
        return 0.0


def _clip_section(
    i: int,
    clip: ClipSummary,
    rows: pd.DataFrame,
    df: pd.DataFrame,
    src,
    color,
    root,
    original=None,
    origin: float = 0.0,
    bands: dict[str, str] | None = None,
) -> str:
    duration = max(clip.duration, float(rows["second"].max()) + 1e-9, 1e-3)
    faces = _faces(rows)
    columns = {d: _value_column(df, d) for d in DIMENSIONS}
    timelines, data = [], []
    for label, face_rows in faces:
        svg = timeline_svg(face_rows, rows, duration, columns, bands or {})
        timelines.append(f'<figure class="face"><figcaption>{_e(label)}</figcaption>{svg}</figure>')
        data.append({"label": label, "seconds": _readout_rows(face_rows, df)})
    if src:
        copy_note = (
            f'<p class="preview-note">a preview (H.264, {PREVIEW_HEIGHT} px high): browsers do not play '
            f'<a href="{_e(original)}">the original file</a></p>'
            if original
            else ""
        )
        player = (
            f'<div class="player"><video controls preload="metadata" src="{_e(src)}"></video>{copy_note}'
            '<p class="video-note" hidden>the browser cannot play this file</p></div>'
        )
    else:
        player = f'<div class="player missing"><p>video not found under {_e(str(root))}</p></div>'
    share = _pct(clip.face_share)
    blob = json.dumps({"video": clip.video, "duration": duration, "origin": origin, "faces": data})
    blob = blob.replace("<", "\\u003c")
    return (
        f'<section class="clip" id="clip-{i}" data-video="{_e(clip.video)}" data-duration="{duration:.6g}">'
        f'<h2><span class="swatch" style="background:{color}"></span>{_e(clip.video)}</h2>'
        f'<p class="stats">{clip.seconds} s, face in {share} of seconds, {clip.faces} face(s)'
        f' &middot; <output class="readout">click a timeline to read a second</output></p>'
        f'<div class="clip-body">{player}<div class="timelines">{"".join(timelines)}</div></div>'
        f'<script type="application/json" class="clip-data">{blob}</script></section>'
    )


def _people(rows: pd.DataFrame, faced: pd.DataFrame) -> int:
    """How many people a clip's rows saw: a default table follows one but counts the others."""
    if "person" in rows:
        return int(faced["person"].nunique())
    if "people" in rows and rows["people"].notna().any():
        return int(rows["people"].max())
    return int(len(faced) > 0)


def _faces(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(caption, rows) per timeline: one per person in an --all-faces table, else one for the clip."""
    if "person" not in rows:
        return [("valence and arousal", rows)]
    ids = sorted(int(f) for f in rows.loc[rows["face"], "person"].dropna().unique())
    if not ids:  # no face was ever found: one timeline, all shaded
        return [("no face found", rows.iloc[0:0])]
    return [(f"person {f}", rows[rows["person"] == f]) for f in ids]


def _readout_rows(face_rows: pd.DataFrame, df: pd.DataFrame) -> dict[str, list]:
    """second -> [valence, arousal, valence_conf, arousal_conf, valence_lo, valence_hi, arousal_lo,
    arousal_hi] for the seconds this face was found (None where the table has no such value)."""
    from ..tables.writers import INTERVAL_COLUMNS

    out = {}
    v_col, a_col = (_value_column(df, d) for d in DIMENSIONS)
    for _, r in face_rows[face_rows["face"]].iterrows():
        out[str(int(r["second"]))] = [
            _round(r[v_col]),
            _round(r[a_col]),
            _round(r.get("valence_conf"), 2),
            _round(r.get("arousal_conf"), 2),
            *(_round(r.get(c)) for c in INTERVAL_COLUMNS),
        ]
    return out


def _circumplex_html(df: pd.DataFrame, summary: BatchSummary, colors: dict[str, str]) -> str:
    size, pad = 440, 34
    lo, hi = LABEL_MIN - 0.5, LABEL_MAX + 0.5

    def px(v: float) -> float:
        return pad + (size - 2 * pad) * (v - lo) / (hi - lo)

    def py(a: float) -> float:
        return size - px(a)

    v_col, a_col = (_value_column(df, d) for d in DIMENSIONS)
    out = [f'<svg class="circumplex" viewBox="0 0 {size} {size}" role="img" aria-label="valence against arousal">']
    side = size - 2 * pad
    out.append(f'<rect x="{pad}" y="{pad}" width="{side}" height="{side}" fill="none" stroke="#bbb"/>')
    r10 = px(LABEL_MAX) - px(0)
    out.append(f'<circle cx="{px(0)}" cy="{py(0)}" r="{r10:.2f}" fill="none" stroke="#ccc"/>')
    out.append(f'<line x1="{px(lo)}" x2="{px(hi)}" y1="{py(0)}" y2="{py(0)}" stroke="#aaa"/>')
    out.append(f'<line x1="{px(0)}" x2="{px(0)}" y1="{py(lo)}" y2="{py(hi)}" stroke="#aaa"/>')
    for (qx, qy), word in {(1, 1): "excited", (-1, 1): "tense", (-1, -1): "sad", (1, -1): "calm"}.items():
        at_x, at_y = px(8 * qx), py(9.3 * qy) + 4
        out.append(f'<text x="{at_x:.1f}" y="{at_y:.1f}" class="quad" text-anchor="middle">{word}</text>')
    for v in (-10, -5, 0, 5, 10):
        out.append(f'<text x="{px(v):.1f}" y="{size - pad + 14}" class="tick" text-anchor="middle">{v}</text>')
        out.append(f'<text x="{pad - 5}" y="{py(v) + 4:.1f}" class="tick" text-anchor="end">{v}</text>')
    out.append(f'<text x="{size / 2}" y="{size - 4}" class="axis" text-anchor="middle">valence</text>')
    out.append(
        f'<text x="12" y="{size / 2}" class="axis" text-anchor="middle" transform="rotate(-90 12 {size / 2})">'
        "arousal</text>"
    )
    faced = df[df["face"]]
    n_points = 0
    for video, rows in faced.groupby("video", sort=False):
        pairs = rows[[v_col, a_col]].astype(float).to_numpy()
        # Integer labels pile up on the same spot: one dot per distinct pair, its area by count.
        pts, counts = np.unique(pairs, axis=0, return_counts=True)
        for (v, a), n in zip(pts, counts):
            r = 3.0 + 2.0 * math.sqrt(n - 1)
            tip = f"{video}: valence {label_text(v)}, arousal {label_text(a)}, {n} s"
            out.append(
                f'<circle class="point" data-video="{_e(video)}" data-count="{n}" cx="{px(v):.2f}" cy="{py(a):.2f}" '
                f'r="{r:.2f}" fill="{colors[video]}" fill-opacity="0.6"><title>{_e(tip)}</title></circle>'
            )
            n_points += int(n)
    out.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{colors[c.video]}"></span>{_e(c.video)}</li>'
        for c in summary.clips
    )
    return (
        '<section class="circumplex-section" id="circumplex"><h2>Circumplex</h2>'
        f'<p class="note">{summary.face_seconds} seconds with a face{_per_face(n_points, summary.face_seconds)}; '
        "a dot per (valence, arousal) pair of a clip, larger where seconds share it.</p>"
        f'<div class="circ-body">{"".join(out)}<ul class="legend">{legend}</ul></div></section>'
    )


# --- helpers --------------------------------------------------------------------------------------


def _per_face(face_seconds: int, seconds: int) -> str:
    # An --all-faces table has a dot's worth per face per second: the count of seconds is the
    # summary's, and the dots' own count is said beside it, never in its place.
    if face_seconds == seconds:
        return ""
    return f" ({face_seconds} face-seconds: each face counts in a second it was seen)"


def _relative_src(path: Path, out_dir: Path) -> str:
    """A URL for `path` relative to the report folder (an absolute file URI across drives)."""
    try:
        rel = os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:  # Windows: another drive has no relative path
        return path.resolve().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def _metadata(table_path: Path) -> dict | None:
    from ..tables.writers import read_metadata

    try:
        return read_metadata(table_path)
    except Exception:  # the table itself was readable; metadata is only a caption
        return None


def _meta_line(meta: dict | None) -> str:
    if not meta:
        return ""
    bits = [f"model {meta['model']}" if meta.get("model") else None]
    bits += [f"{meta['fps']:g} frames/s" if isinstance(meta.get("fps"), (int, float)) else None]
    bits += [f"fer {meta['fer_version']}" if meta.get("fer_version") else None]
    bits += [f"made {meta['created']}" if meta.get("created") else None]
    return f'<p class="meta">{_e(" · ".join(b for b in bits if b))}</p>'


def _value_column(df: pd.DataFrame, dim: str) -> str:
    """The integer label when the table has it, else the score."""
    return dim if dim in df else f"{dim}_score"


def _round(value, digits: int = 2):
    f = finite(value)
    return None if f is None else round(f, digits)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.1f}%"


def _asset(name: str) -> str:
    """A file of `fercli/views/assets/` (package data) as text."""
    from importlib.resources import files

    return (files(__package__) / ASSETS / name).read_text(encoding="utf-8")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
