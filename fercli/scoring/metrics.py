"""How close predictions come to ground truth: the metrics behind `fer benchmark accuracy`.

Labels live on the AFEW-VA scale, integers -10..10 (21 classes). Definitions, per dimension:

- CCC, Lin's concordance correlation, with population moments (ddof = 0) as in the AVEC
  challenges: 2 cov / (var_true + var_pred + (mean_true - mean_pred)^2). When both sides are
  constant the formula is 0/0; equal constants agree perfectly and score 1.0, unequal ones 0.0
  (what the formula gives). A constant prediction against a varying truth scores 0.0.
- Pearson r: NaN when either side is constant (a single row included); correlation is undefined.
- RMSE and MAE: on the label scale, so an error of one class is 1.0.
- SAGR, sign agreement: the fraction of rows with np.sign(true) == np.sign(pred). Zero is its
  own sign, so a neutral truth (0) agrees only with a prediction of exactly 0 (the usual
  delta(sign, sign) definition of AffectNet and AFEW-VA papers).
- Accuracy (exact class), accuracy within +-k classes, macro-F1 and weighted-F1: on classes.
  Values become classes by rounding half away from zero (as `fer annotate` does for frame
  models) and clipping to -10..10. F1 is taken over the classes present in truth or prediction
  (scikit-learn's default); a class never predicted correctly scores 0. Weighted-F1 weighs each
  class by its support in the truth.
- Every metric of an empty input is NaN.

`score()` matches a truth table and a `fer annotate` table by video and second. Continuous
metrics (CCC, r, RMSE, MAE, SAGR) use the prediction's `valence_score`/`arousal_score` when the
table has them, else the integer labels; class metrics use the integer labels. Truth per second
is the mean of its frame labels (a float); its class is that mean rounded. Rows present on one
side only, and matched rows whose prediction is null (no face found), are counted, never
silently dropped.

Where the prediction has intervals (`valence_lo`, `valence_hi`, ... from a calibration), the
report adds, per dimension over the scored rows with bounds: `coverage`, the share of seconds
whose truth lies inside (bounds stored as float32, so within INTERVAL_TOLERANCE); `clip_coverage`,
the mean of each clip's share (each clip counts once: what a calibration's guarantee is about);
and `mean_width`, hi - lo on the label scale.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError
from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN, check_on_scale, to_class
from ..datasets import affwild
from ..datasets.truth import affwild_frames, load_truth, seconds_of_frames
from ..tables.rows import SECOND_KEYS

CLASSES = np.arange(LABEL_MIN, LABEL_MAX + 1)
INTERVAL_TOLERANCE = 1e-5  # labels: a float32 bound near 10 is within 1e-6 of the float64 it rounded

# Metric key -> name shown in tables, in the order of the paper's Tables 1 and 2 (F1, accuracy,
# CCC), then the others.
METRICS = {
    "f1_macro": "F1 score (macro)",
    "f1_weighted": "F1 score (weighted)",
    "accuracy": "Accuracy",
    "accuracy_within_1": "Accuracy (±1 class)",
    "ccc": "CCC",
    "pearson": "Pearson r",
    "rmse": "RMSE",
    "mae": "MAE",
    "sagr": "SAGR",
}


# --- metrics on arrays -------------------------------------------------------------------------


def ccc(y_true, y_pred) -> float:
    """Lin's concordance correlation coefficient with population moments (see module doc)."""
    t, p = _pair(y_true, y_pred)
    if t.size == 0:
        return math.nan
    mt, mp = t.mean(), p.mean()
    vt, vp = t.var(), p.var()
    cov = ((t - mt) * (p - mp)).mean()
    denom = vt + vp + (mt - mp) ** 2
    if denom == 0:  # both constant and equal
        return 1.0
    return float(2 * cov / denom)


def pearson(y_true, y_pred) -> float:
    """Pearson correlation; NaN when either side is constant or the input is empty."""
    t, p = _pair(y_true, y_pred)
    if t.size == 0:
        return math.nan
    dt, dp = t - t.mean(), p - p.mean()
    denom = math.sqrt(float((dt * dt).sum()) * float((dp * dp).sum()))
    if denom == 0:
        return math.nan
    return float(np.clip((dt * dp).sum() / denom, -1.0, 1.0))


def rmse(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2))) if t.size else math.nan


def mae(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p))) if t.size else math.nan


def sagr(y_true, y_pred) -> float:
    """Fraction of rows whose signs agree, np.sign equality (0 agrees only with 0)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.sign(t) == np.sign(p))) if t.size else math.nan


def accuracy(y_true, y_pred) -> float:
    """Fraction of rows in the same class."""
    return accuracy_within(y_true, y_pred, k=0)


def accuracy_within(y_true, y_pred, k: int = 1) -> float:
    """Fraction of rows whose classes differ by at most `k`."""
    t, p = _classes(y_true, y_pred)
    return float(np.mean(np.abs(t - p) <= k)) if t.size else math.nan


def f1_macro(y_true, y_pred) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    per_class, _ = _f1_per_class(y_true, y_pred)
    return float(per_class.mean()) if per_class.size else math.nan


def f1_weighted(y_true, y_pred) -> float:
    """Mean of per-class F1 weighted by each class's support in the truth."""
    per_class, support = _f1_per_class(y_true, y_pred)
    return float((per_class * support).sum() / support.sum()) if per_class.size else math.nan


def confusion_matrix(y_true, y_pred) -> np.ndarray:
    """21 x 21 counts: rows are true classes -10..10, columns predicted classes."""
    t, p = _classes(y_true, y_pred)
    n = len(CLASSES)
    return np.bincount((t - LABEL_MIN) * n + (p - LABEL_MIN), minlength=n * n).reshape(n, n)


def _f1_per_class(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    cm = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)  # true rows per class
    predicted = cm.sum(axis=0).astype(float)
    present = (support + predicted) > 0
    # F1 = 2TP / (2TP + FP + FN); the denominator is > 0 for every present class.
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return f1, support[present]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("values must be finite; drop rows without a label first (score() does)")
    return t, p


def _classes(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _pair(y_true, y_pred)
    return to_class(t), to_class(p)


def all_metrics(true, pred, true_class, pred_class) -> dict[str, float]:
    """Every metric of METRICS for one dimension: continuous ones on `true`/`pred`, class ones on
    the class arrays."""
    return {
        "f1_macro": f1_macro(true_class, pred_class),
        "f1_weighted": f1_weighted(true_class, pred_class),
        "accuracy": accuracy(true_class, pred_class),
        "accuracy_within_1": accuracy_within(true_class, pred_class, k=1),
        "ccc": ccc(true, pred),
        "pearson": pearson(true, pred),
        "rmse": rmse(true, pred),
        "mae": mae(true, pred),
        "sagr": sagr(true, pred),
    }


# --- matching tables ---------------------------------------------------------------------------


@dataclass
class Pairs:
    """The matched rows of one dimension that entered the metrics."""

    true: np.ndarray  # truth per row (float: the mean of the second's frame labels)
    pred: np.ndarray  # prediction used for continuous metrics (score, or label)
    true_class: np.ndarray  # truth as a class -10..10
    pred_class: np.ndarray  # predicted class -10..10


@dataclass
class Report:
    """The outcome of `score()`."""

    metrics: dict[str, dict[str, float]]  # dimension -> metric key (METRICS) -> value
    mean: dict[str, float]  # metric key -> mean over the dimensions
    matched: int  # keys (video, second) present in both tables
    truth_only: int  # truth keys without a prediction row
    pred_only: int  # prediction keys without a truth row
    pred_without_face: int  # matched keys whose prediction is null in some dimension (no face)
    scored: dict[str, int]  # dimension -> matched rows that entered the metrics
    missing_pred: dict[str, int]  # dimension -> matched rows with a null prediction
    missing_truth: dict[str, int]  # dimension -> matched rows with a null truth
    continuous_from: dict[str, str]  # dimension -> prediction column behind CCC, r, RMSE, MAE, SAGR
    pairs: dict[str, Pairs] = field(repr=False)  # dimension -> scored rows, for pictures
    unmatched: pd.DataFrame = field(repr=False)  # video, second, side ("truth" or "pred")
    # Aff-Wild2 truth only: ABAW's score (`abaw_score`), CCC over all labelled frames pooled.
    abaw: dict | None = None
    # Predictions with bounds only: dimension -> coverage, clip_coverage, mean_width, seconds, clips.
    intervals: dict[str, dict] | None = None


def score(truth: pd.DataFrame, pred: pd.DataFrame, *, on=SECOND_KEYS, names=("truth", "prediction")) -> Report:
    """Match `truth` and `pred` by `on` and compute every metric per dimension and their mean.

    `truth` needs `on` plus valence and arousal (as from `load_truth`); `pred` is a `fer annotate`
    table (per second, one face per row). See the module doc for which columns feed which metric.
    names: what errors call the two tables (their files, from `score_tables`).
    """
    on = list(on)
    truth_name, pred_name = names
    _require(truth, on + list(DIMENSIONS), truth_name)
    if "second" in on and "second" not in pred and ("frame" in pred or "sample_index" in pred):
        raise DataError(f"{pred_name}: a per-frame or per-sample table; scoring needs one row per second")
    _require(pred, on, pred_name)
    for dim in DIMENSIONS:
        if dim not in pred and f"{dim}_score" not in pred:
            raise DataError(f"{pred_name}: missing column {dim} (or {dim}_score)")
    truth, pred = _keyed(truth, on, truth_name), _keyed(pred, on, pred_name)
    truth = truth[on + list(DIMENSIONS)].rename(columns={d: f"{d}_true" for d in DIMENSIONS})
    bounded = all(f"{d}_{side}" in pred for d in DIMENSIONS for side in ("lo", "hi"))
    bounds = [f"{d}_{side}" for d in DIMENSIONS for side in ("lo", "hi")] if bounded else []
    pred = pred[on + [c for d in DIMENSIONS for c in (d, f"{d}_score") if c in pred] + bounds]

    merged = truth.merge(pred, on=on, how="outer", indicator=True)
    both = merged[merged["_merge"] == "both"].reset_index(drop=True)
    unmatched = merged.loc[merged["_merge"] != "both", on + ["_merge"]].rename(columns={"_merge": "side"})
    unmatched["side"] = unmatched["side"].map({"left_only": "truth", "right_only": "pred"}).astype(str)

    metrics, pairs, scored, missing_pred, missing_truth, source, intervals = {}, {}, {}, {}, {}, {}, {}
    no_face = np.zeros(len(both), dtype=bool)
    for dim in DIMENSIONS:
        true = _floats(both[f"{dim}_true"])
        label_col = dim if dim in pred else f"{dim}_score"
        cont_col = f"{dim}_score" if f"{dim}_score" in pred else dim
        label, cont = _floats(both[label_col]), _floats(both[cont_col])
        check_on_scale(label[np.isfinite(label)], f"{pred_name}: column {label_col}")
        for col, values in ((label_col, label), (cont_col, cont)):  # no face is null, never infinite
            if np.isinf(values).any():
                raise DataError(f"{pred_name}: column {col} holds an infinite value")
        pred_ok = np.isfinite(label) & np.isfinite(cont)
        ok = pred_ok & np.isfinite(true)
        no_face |= ~pred_ok
        pairs[dim] = Pairs(true[ok], cont[ok], to_class(true[ok]), to_class(label[ok]))
        metrics[dim] = all_metrics(pairs[dim].true, pairs[dim].pred, pairs[dim].true_class, pairs[dim].pred_class)
        scored[dim], missing_pred[dim] = int(ok.sum()), int((~pred_ok).sum())
        missing_truth[dim] = int((~np.isfinite(true)).sum())
        source[dim] = cont_col
        if bounded:
            intervals[dim] = interval_scores(
                both["video"].to_numpy()[ok], true[ok], _floats(both[f"{dim}_lo"])[ok], _floats(both[f"{dim}_hi"])[ok]
            )
    mean = {m: float(np.mean([metrics[d][m] for d in DIMENSIONS])) for m in METRICS}
    return Report(
        metrics=metrics,
        mean=mean,
        matched=len(both),
        truth_only=int((unmatched["side"] == "truth").sum()),
        pred_only=int((unmatched["side"] == "pred").sum()),
        pred_without_face=int(no_face.sum()),
        scored=scored,
        missing_pred=missing_pred,
        missing_truth=missing_truth,
        continuous_from=source,
        pairs=pairs,
        unmatched=unmatched.sort_values(on, kind="stable").reset_index(drop=True),
        intervals=intervals or None,
    )


def interval_scores(videos, true, lo, hi) -> dict:
    """How intervals did on rows of one dimension: coverage (seconds pooled), clip_coverage (each
    clip's share, averaged over clips), mean_width, and the seconds and clips with bounds."""
    videos, true, lo, hi = (np.asarray(a) for a in (videos, true, lo, hi))
    has = np.isfinite(lo) & np.isfinite(hi)
    inside = (lo[has] - INTERVAL_TOLERANCE <= true[has]) & (true[has] <= hi[has] + INTERVAL_TOLERANCE)
    per_clip = pd.Series(inside).groupby(videos[has]).mean() if has.any() else pd.Series(dtype=float)
    return {
        "coverage": float(inside.mean()) if has.any() else math.nan,
        "clip_coverage": float(per_clip.mean()) if has.any() else math.nan,
        "mean_width": float((hi[has] - lo[has]).mean()) if has.any() else math.nan,
        "seconds": int(has.sum()),
        "clips": int(per_clip.size),
    }


def intervals_line(report: Report) -> str | None:
    """One line on the prediction's intervals (None without bounds), as `fer benchmark accuracy` prints it."""
    if not report.intervals:
        return None
    parts = [
        f"{d} coverage {_pct(v['coverage'])} (per clip {_pct(v['clip_coverage'])}), mean width "
        f"{_fmt(v['mean_width'], 2)}"
        for d, v in report.intervals.items()
    ]
    seconds = report.intervals[DIMENSIONS[0]]["seconds"]
    return f"intervals over {seconds} seconds: " + "; ".join(parts)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")


def _keyed(df: pd.DataFrame, on: list[str], what: str) -> pd.DataFrame:
    df = df.copy()
    df["video"] = df["video"].astype(str)
    for col in on:
        if col != "video":
            if df[col].isna().any():
                raise DataError(f"{what}: null values in {col}")
            values = pd.to_numeric(df[col], errors="coerce")
            whole = values.notna() & (values == np.floor(values)) & values.abs().lt(2**53)
            if not whole.all():  # 1.5 is no second of a table: never cut to 1 and matched
                raise DataError(f"{what}: {col} must hold whole numbers, not {df[col][~whole].iloc[0]}")
            df[col] = values.astype(np.int64)
    dup = df.duplicated(subset=on)
    if dup.any():
        first = df.loc[dup, on].iloc[0].tolist()
        hint = " (annotate without --all-faces)" if "person" in df else ""
        raise DataError(f"{what}: {int(dup.sum())} duplicate rows for the same {'/'.join(on)}, e.g. {first}{hint}")
    return df


def _floats(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


# --- reports -----------------------------------------------------------------------------------


def score_tables(truth: str | Path, pred: str | Path, frames_fps: float = 25.0) -> Report:
    """A `fer annotate` table `pred` scored against `truth` (an AFEW-VA or Aff-Wild2 folder, or a
    CSV/Parquet table: `datasets.truth.load_truth`), per second; with Aff-Wild2 truth also ABAW's
    pooled score. DataError (one line, naming the file) for a missing or unreadable one, the truth's first."""
    from ..tables.writers import read_table

    truth_table = load_truth(truth, frames_fps)
    table = read_table(pred)
    report = score(truth_table, table, names=(str(truth), str(pred)))
    report.abaw = abaw_score(truth, table, frames_fps)  # None unless Aff-Wild2 truth
    return report


def report_json(report: Report) -> dict:
    """metrics.json: {dimension or "mean": {metric: value}, "counts": {...}}; NaN becomes null."""

    def clean(values: dict) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}

    out = {dim: clean(report.metrics[dim]) for dim in DIMENSIONS}
    out["mean"] = clean(report.mean)
    out["counts"] = {
        "matched": report.matched,
        "truth_only": report.truth_only,
        "pred_only": report.pred_only,
        "pred_without_face": report.pred_without_face,
        "scored": dict(report.scored),
        "missing_pred": dict(report.missing_pred),
        "missing_truth": dict(report.missing_truth),
    }
    out["continuous_from"] = dict(report.continuous_from)
    if report.intervals is not None:
        out["intervals"] = {d: clean(v) for d, v in report.intervals.items()}
    if report.abaw is not None:
        out["abaw"] = clean(report.abaw)
    return out


def report_markdown(report: Report, digits: int = 3) -> str:
    """metrics.md: one row per metric, columns Valence, Arousal, Mean (the paper's Tables 1-2)."""
    lines = ["| Metric | Valence | Arousal | Mean |", "|---|---:|---:|---:|"]
    for key, name in METRICS.items():
        cells = [report.metrics[d][key] for d in DIMENSIONS] + [report.mean[key]]
        lines.append(f"| {name} | " + " | ".join(_fmt(v, digits) for v in cells) + " |")
    scored = ", ".join(f"{d} {report.scored[d]}" for d in DIMENSIONS)
    lines += [
        "",
        f"Matched seconds: {report.matched} (scored: {scored}); without a face in the prediction: "
        f"{report.pred_without_face}; truth only: {report.truth_only}; prediction only: {report.pred_only}.",
        "",
        f"CCC, Pearson r, RMSE, MAE and SAGR use {' and '.join(report.continuous_from[d] for d in DIMENSIONS)}; "
        "F1 and accuracy use the integer labels -10..10 (truth: the per-second mean, rounded). "
        "RMSE and MAE are on the -10..10 scale; CCC uses population moments.",
    ]
    if (line := intervals_line(report)) is not None:
        lines += ["", line + "."]
    if (a := report.abaw) is not None:
        lines += [
            "",
            f"ABAW score (CCC over all {a['frames']} labelled frames pooled, each frame given its second's "
            f"prediction; {a['frames_without_prediction']} labelled frames had none): valence "
            f"{_fmt(a['valence'], digits)}, arousal {_fmt(a['arousal'], digits)}, mean {_fmt(a['mean'], digits)}.",
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_metrics(report: Report, out_dir: str | Path) -> list[Path]:
    """Write metrics.json and metrics.md into `out_dir`; returns their paths."""
    from ..core.files import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        out_dir / "metrics.json": json.dumps(report_json(report), indent=2) + "\n",
        out_dir / "metrics.md": report_markdown(report),
    }
    for path, text in files.items():
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    return list(files)


# --- ABAW ----------------------------------------------------------------------------------------


def abaw_ccc(truth: dict[str, np.ndarray], pred: dict[str, np.ndarray]) -> dict[str, float]:
    """ABAW's score: CCC per dimension over all labelled frames pooled, and their mean.

    `truth`/`pred`: "valence"/"arousal" -> frames pooled over all videos, on one scale (NaN = no label).
    """
    out = {}
    for dim in DIMENSIONS:
        t, p = np.asarray(truth[dim], float), np.asarray(pred[dim], float)
        keep = ~np.isnan(t) & ~np.isnan(p)
        out[dim] = ccc(t[keep], p[keep])
    out["mean"] = float(np.mean([out[d] for d in DIMENSIONS]))
    return out


def abaw_score(truth: str | Path, pred: pd.DataFrame, frames_fps: float = 25.0) -> dict | None:
    """ABAW's score of a per-second table against an Aff-Wild2 root; None for other truth.

    Every labelled frame i of a video takes the prediction of the row covering it (second
    floor(i / frames_fps)); CCC per dimension over all such frames of all videos pooled, and
    their mean. Frames whose second has no prediction (no row, or no face) are left out and
    counted.
    """
    truth = Path(truth)
    if not (truth.is_dir() and affwild.is_affwild(truth)):
        return None
    frames = affwild_frames(truth)
    frames["second"] = seconds_of_frames(frames["frame"], frames_fps)
    cols = {d: (f"{d}_score" if f"{d}_score" in pred else d) for d in DIMENSIONS}
    keyed = _keyed(pred, list(SECOND_KEYS), "prediction")
    preds = keyed[[*SECOND_KEYS, *cols.values()]].rename(columns={c: f"{d}_pred" for d, c in cols.items()})
    both = frames.merge(preds, on=list(SECOND_KEYS), how="left")
    ok = np.isfinite(both[[f"{d}_pred" for d in DIMENSIONS]].to_numpy(dtype=float)).all(axis=1)
    scale = affwild.ABAW_SCALE  # back to ABAW's -1..1 (CCC is unchanged by scaling both sides)
    out = abaw_ccc(
        {d: both[d].to_numpy(float)[ok] / scale for d in DIMENSIONS},
        {d: both[f"{d}_pred"].to_numpy(float)[ok] / scale for d in DIMENSIONS},
    )
    return {**out, "frames": int(ok.sum()), "frames_without_prediction": int((~ok).sum())}
