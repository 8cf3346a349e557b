"""Pictures: accuracy plots for `fer benchmark accuracy`, annotation plots for `fer plot`, training curves.

matplotlib is imported inside the functions and used through its object interface with the Agg
canvas (no pyplot), so importing fer stays fast, no window ever opens, the caller's backend is
left alone, and figures are freed with their last reference. Each PNG is written to a temporary
file and renamed.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import re
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError
from ..core.labels import DIMENSIONS
from ..scoring.metrics import (
    CLASSES,
    LABEL_MAX,
    LABEL_MIN,
    Report,
    confusion_matrix,
    write_metrics,
)

DPI = 100
TRUE_COLOR, PRED_COLOR = "#4c72b0", "#dd8452"
DIM_COLORS = {"valence": "#4c72b0", "arousal": "#c44e52"}
LIM = (LABEL_MIN - 0.5, LABEL_MAX + 0.5)


# File names are at most 255 bytes (UTF-8 on Linux and macOS); a stem gets suffixes up to about
# 40 (`-2`, an export's `.face12.valence.annotation~`). A longer stem keeps its start (whole
# characters) and a hash of the whole name.
MAX_STEM_BYTES = 200
TITLE_CHARS = 90  # a timeline's title at most: a longer path squeezed the plot away
LEGEND_CHARS = 40  # a circumplex legend entry at most
# Fonts for the letters of video names that matplotlib's own font (DejaVu Sans: Latin, Greek,
# Cyrillic) lacks, Chinese, Japanese and Korean above all: those installed are tried glyph by glyph
# after it (naming one that is not installed makes matplotlib warn at every text).
NAME_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Hiragino Sans",
    "Yu Gothic",
    "Microsoft YaHei",
    "Malgun Gothic",
    "Arial Unicode MS",
)
NO_GLYPH_HINT = "install a font for them (Debian: fonts-noto-cjk) and plot again"

log = logging.getLogger("fercli")


# --- accuracy ----------------------------------------------------------------------------------


def accuracy_pictures(report: Report, out_dir: str | Path) -> list[Path]:
    """histograms.png, confusion.png and scatter.png in `out_dir`."""
    out_dir = Path(out_dir)
    return [
        histograms(report, out_dir / "histograms.png"),
        confusion(report, out_dir / "confusion.png"),
        scatter(report, out_dir / "scatter.png"),
    ]


def write_scores(report: Report, out: str | Path) -> list[Path]:
    """metrics.json, metrics.md and the pictures (`accuracy_pictures`) of `report` in `out`."""
    return write_metrics(report, out) + accuracy_pictures(report, out)


def histograms(report: Report, path: str | Path) -> Path:
    """Counts of true and predicted classes per dimension, side by side (the paper's Figure 3)."""
    fig = _figure(figsize=(11, 4))
    for ax, dim in zip(fig.subplots(1, 2, sharey=True), DIMENSIONS):
        pairs = report.pairs[dim]
        true = np.bincount(pairs.true_class - LABEL_MIN, minlength=len(CLASSES))
        pred = np.bincount(pairs.pred_class - LABEL_MIN, minlength=len(CLASSES))
        ax.bar(CLASSES - 0.2, true, width=0.4, color=TRUE_COLOR, label="true")
        ax.bar(CLASSES + 0.2, pred, width=0.4, color=PRED_COLOR, label="predicted")
        ax.set(title=f"{dim.capitalize()} (n = {len(pairs.true_class)})", xlabel="label", xlim=LIM)
        ax.set_xticks(CLASSES[::2])
        ax.legend(frameon=False)
    fig.axes[0].set_ylabel("seconds")
    return _save(fig, path)


def confusion(report: Report, path: str | Path) -> Path:
    """21 x 21 confusion matrix per dimension, each true class's row scaled to sum to 1."""
    fig = _figure(figsize=(11, 5))
    axes = fig.subplots(1, 2)
    for ax, dim in zip(axes, DIMENSIONS):
        pairs = report.pairs[dim]
        cm = confusion_matrix(pairs.true_class, pairs.pred_class).astype(float)
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        extent = (LIM[0], LIM[1], LIM[0], LIM[1])
        im = ax.imshow(share, origin="lower", extent=extent, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        acc = report.metrics[dim]["accuracy"]
        ax.set(title=f"{dim.capitalize()} (accuracy {_num(acc)})", xlabel="predicted", ylabel="true")
        ax.set_xticks(CLASSES[::2])
        ax.set_yticks(CLASSES[::2])
    fig.colorbar(im, ax=list(axes), label="share of the true class")
    return _save(fig, path)


def scatter(report: Report, path: str | Path) -> Path:
    """Predicted (continuous) against true value per dimension, with the identity line."""
    fig = _figure(figsize=(10, 5))
    for ax, dim in zip(fig.subplots(1, 2), DIMENSIONS):
        pairs = report.pairs[dim]
        ax.plot(LIM, LIM, color="0.6", lw=1, zorder=1)
        ax.scatter(pairs.true, pairs.pred, s=8, alpha=0.4, color=DIM_COLORS[dim], edgecolors="none", zorder=2)
        m = report.metrics[dim]
        ax.set(
            title=f"{dim.capitalize()}: CCC {_num(m['ccc'])}, r {_num(m['pearson'])}",
            xlabel="true (per-second mean)",
            ylabel=f"predicted ({report.continuous_from[dim]})",
            xlim=LIM,
            ylim=LIM,
            aspect="equal",
        )
    return _save(fig, path)


# --- annotations (`fer plot`) ------------------------------------------------------------------


def plot_table(table_path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Timelines per video (under `out_dir/timelines/`) and `out_dir/circumplex.png`.

    A non-empty `out_dir` is refused unless `overwrite` (then the pictures in it are replaced).
    """
    from ..core.files import check_out_dir
    from ..tables.writers import read_table

    table_path = Path(table_path)
    df = read_table(table_path)
    _check_annotations(df, str(table_path))
    check_out_dir(out_dir, overwrite=overwrite, what="pictures")
    out_dir = Path(out_dir)
    with _glyphs_checked(out_dir):
        return timelines(df, out_dir / "timelines") + [circumplex(df, out_dir / "circumplex.png")]


def timelines(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per video: valence and arousal over time, with gaps and grey where no face."""
    _check_annotations(df, "table")
    out_dir = Path(out_dir)
    names = safe_names(list(pd.unique(df["video"].astype(str))))
    paths = []
    with _glyphs_checked(out_dir):
        for video, group in df.groupby(df["video"].astype(str), sort=False):
            paths.append(_save(timeline_figure(group, video), out_dir / f"{names[video]}.png"))
    return paths


def circumplex(df: pd.DataFrame, path: str | Path) -> Path:
    """Valence (x) against arousal (y) for every row with a face, in Russell's circumplex."""
    _check_annotations(df, "table")
    fig = _figure(figsize=(6.5, 6.5))
    ax = fig.subplots()
    ax.add_patch(_circle())
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    for (qx, qy), text in {(1, 1): "excited", (-1, 1): "tense", (-1, -1): "sad", (1, -1): "calm"}.items():
        ax.text(8 * qx, 9.5 * qy, text, ha="center", va="center", color="0.5", fontsize=9)
    v_col, a_col = (_value_column(df, d) for d in DIMENSIONS)
    rows = df[df[v_col].notna() & df[a_col].notna()]
    videos = list(pd.unique(rows["video"].astype(str)))
    for i, (video, group) in enumerate(rows.groupby(rows["video"].astype(str), sort=False)):
        v, a = group[v_col].to_numpy(dtype=float), group[a_col].to_numpy(dtype=float)
        color = f"C{i % 10}" if len(videos) <= 10 else DIM_COLORS["valence"]
        if v_col == "valence":  # integer labels pile up: one dot per label pair, sized by count
            pts, counts = np.unique(np.stack([v, a], axis=1), axis=0, return_counts=True)
            v, a, size = pts[:, 0], pts[:, 1], 12 + 6 * counts
        else:
            size = 10
        label = _tail(video, LEGEND_CHARS) if len(videos) <= 10 else None
        ax.scatter(v, a, s=size, alpha=0.5, color=color, edgecolors="none", label=label)
    if 0 < len(videos) <= 10:
        font = {"family": name_fonts(), "size": 8}
        ax.legend(frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, prop=font)
    ax.set(xlim=LIM, ylim=LIM, aspect="equal", xlabel=v_col.replace("_", " "), ylabel=a_col.replace("_", " "))
    ax.set_title(f"{len(rows)} rows with a face, {len(videos)} videos", loc="right", fontsize=9)
    with _glyphs_checked(path):
        return _save(fig, path)


def timeline_figure(group: pd.DataFrame, video: str | None = None):
    """The timeline of one video's rows as a matplotlib Figure (axes: valence, then arousal).

    Each row's value is drawn over the row's span, not at its start: second *s* as a flat step
    over [`start`, `end`) (the last second ends at the clip's end), a per-frame sample from its
    `time` until the next sample. The line breaks where there is no value or no row. Each value
    line is a Line2D with gid "<dimension>" (or "<dimension> face <id>" per face).
    """
    _check_annotations(group, "table")
    x = "second" if "second" in group else "time"
    step = 1.0 if x == "second" else _step(group[x])
    fig = _figure(figsize=(10, 4.5))
    axes = fig.subplots(2, 1, sharex=True)
    faces = group.groupby("person", sort=True) if "person" in group else [(None, group)]  # null person: no face
    for person, rows in faces:
        begin, end = _spans(rows, x, step)
        order = np.argsort(begin, kind="stable")
        for ax, dim in zip(axes, DIMENSIONS):
            y = pd.to_numeric(rows[_value_column(rows, dim)], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            xs, ys = _steps(begin[order], end[order], y[order])
            label, color = (None, DIM_COLORS[dim]) if person is None else (f"person {person}", None)
            gid = dim if person is None else f"{dim} person {person}"
            ax.plot(xs, ys, "-", lw=1.5, label=label, color=color, gid=gid)
    _shade_no_face(axes, group, x, step)
    for ax, dim in zip(axes, DIMENSIONS):
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set(ylim=LIM, ylabel=dim)
        ax.set_yticks([-10, -5, 0, 5, 10])
    if "person" in group and group["person"].notna().any():
        axes[0].legend(frameon=False, fontsize=8)
    axes[-1].set_xlabel("seconds" if x == "second" else "time (s)")
    if video is not None:
        axes[0].set_title(_tail(video), loc="left", fontfamily=name_fonts())
    return fig


def _spans(rows: pd.DataFrame, x: str, step: float) -> tuple[np.ndarray, np.ndarray]:
    """[begin, end) of each row: a second's `start` and `end` (`second`, `second` + 1 in a table
    without them), a sample's `time` plus the sampling period."""
    if x == "second":
        begin = rows["start"] if "start" in rows else rows["second"]
        end = rows["end"] if "end" in rows else rows["second"] + 1
    else:
        begin = rows["time"]
        end = rows["time"] + step
    return begin.to_numpy(dtype=float), end.to_numpy(dtype=float)


def _steps(begin: np.ndarray, end: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a line holding y[i] from begin[i] to end[i]. Adjacent spans join with a riser;
    a NaN point is put where one span does not start at the previous one's end (missing rows), so
    the line breaks there, as it does over NaN values."""
    xs, ys = [], []
    for i, (b, e, v) in enumerate(zip(begin, end, y)):
        if i and not np.isclose(b, end[i - 1]):
            xs.append(np.nan)
            ys.append(np.nan)
        xs += [b, e]
        ys += [v, v]
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _shade_no_face(axes, group: pd.DataFrame, x: str, step: float) -> None:
    """Grey over the span of every row without a face (in an --all-faces table: seconds without any)."""
    missing = group[_value_column(group, "valence")].isna()
    if "face" in group:
        missing |= ~group["face"].fillna(False).astype(bool)
    begin, end = _spans(group[missing], x, step)
    for b, e in zip(begin, end):
        for ax in axes:
            ax.axvspan(b, e, color="0.9", lw=0, zorder=0)


def _step(times: pd.Series) -> float:
    diffs = np.diff(np.sort(times.to_numpy(dtype=float)))
    diffs = diffs[diffs > 0]
    return float(np.median(diffs)) if diffs.size else 1.0


def _value_column(df: pd.DataFrame, dim: str) -> str:
    """The integer label when the table has it, else the score."""
    return dim if dim in df else f"{dim}_score"


def _check_annotations(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in ("video",) if c not in df]
    if "second" not in df and "time" not in df:
        missing.append("second (or time)")
    missing += [d for d in DIMENSIONS if d not in df and f"{d}_score" not in df]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")


def safe_names(videos: list[str]) -> dict[str, str]:
    """A file-name stem per video: path separators and punctuation become '_', letters and digits
    of every script stay ('被験者1/笑顔.mp4' -> '被験者1_笑顔.mp4'); clashes get a suffix ('a/b' and
    'a_b' become 'a_b' and 'a_b-2'), case-insensitively, for macOS and Windows. A stem over
    MAX_STEM_BYTES (UTF-8) is cut and ends in 8 hex digits of the video name's SHA-1."""
    out, taken = {}, set()
    for video in videos:
        # NFC: macOS hands out decomposed names (e + U+0301), which \w alone would split at the accent.
        stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", video)).strip("._") or "video"
        if len(stem.encode()) > MAX_STEM_BYTES:
            digest = hashlib.sha1(video.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()[:8]
            head = stem.encode()[: MAX_STEM_BYTES - 9].decode(errors="ignore")  # no half character
            stem = f"{head}-{digest}"
        name, n = stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        out[video] = name
    return out


@functools.cache
def name_fonts() -> list[str]:
    """The font families for video names: matplotlib's sans-serif, then the NAME_FONTS installed."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    # matplotlib lists the system's fonts once and keeps the list: a font installed since is added.
    known = {font.fname for font in manager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            try:
                manager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # a file FreeType cannot read
                pass
    installed = {font.name for font in manager.ttflist}
    return ["sans-serif", *(name for name in NAME_FONTS if name in installed)]


_GLYPHS_CHECKED = contextvars.ContextVar("glyphs_checked", default=False)


@contextmanager
def _glyphs_checked(where: Path):
    """matplotlib warns once per letter that no font draws (shown as a box): one line instead,
    for the outermost of nested calls (`fer plot`'s timelines and circumplex together)."""
    if _GLYPHS_CHECKED.get():
        yield
        return
    token = _GLYPHS_CHECKED.set(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _GLYPHS_CHECKED.reset(token)
    missing = sorted({str(w.message).split(" (")[0] for w in caught if "missing from font" in str(w.message)})
    for w in caught:
        if "missing from font" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        message = "%s: %d letters of the video names have no font here and show as boxes: %s"
        log.warning(message, where, len(missing), NO_GLYPH_HINT)


def _tail(name: str, chars: int = TITLE_CHARS) -> str:
    """A long video path as its end (the file name and the folders nearest it), which tells clips apart."""
    return name if len(name) <= chars else "…" + name[-(chars - 1) :]


# --- training curves (`fer train`) --------------------------------------------------------------


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """curves.png: loss and accuracy per epoch for train and validation (the paper's Figure 2).

    `history` holds summary.csv's rows: `epoch`, `{train,val}_loss`, `{train,val}_acc_{valence,arousal}`.
    """
    epochs = [r["epoch"] for r in history]
    fig = _figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for part, style in (("train", "-"), ("val", "--")):
        loss_ax.plot(epochs, [r[f"{part}_loss"] for r in history], style, color="k", label=part)
        for dim in DIMENSIONS:
            values = [r[f"{part}_acc_{dim}"] for r in history]
            acc_ax.plot(epochs, values, style, color=DIM_COLORS[dim], label=f"{part} {dim}")
    loss_ax.set(title="Loss (sum of both heads' cross-entropy)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Accuracy (21 classes)", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    loss_ax.legend(frameon=False)
    acc_ax.legend(frameon=False, fontsize="small")
    return _save(fig, path)


# --- matplotlib plumbing -----------------------------------------------------------------------


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _circle():
    from matplotlib.patches import Circle

    return Circle((0, 0), LABEL_MAX, fill=False, color="0.75", lw=1)


def _save(fig, path: str | Path) -> Path:
    from ..core.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _num(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.2f}"
