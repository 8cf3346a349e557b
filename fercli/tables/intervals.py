"""Intervals per second from a calibration: `valence_lo`/`_hi`, `arousal_lo`/`_hi` (docs/intervals.md).

A calibration (`scoring.calibration` makes one from labelled clips) holds, per dimension, a
quantile q of the scaled residual |truth - score| / difficulty. A row's interval is
score +- q * difficulty, clipped to the label scale. The difficulty is one rule for both sides
(`difficulty`): sqrt(sd^2 + SPREAD_FLOOR^2) from the row's spread (`valence_sd`, `arousal_sd`),
a row without one (a frame model's one-sample second) counted as MISSING_SD.

A calibration is tied to the model whose outputs it measured: the weights (SHA-256), the
preprocessing, the sampling rate and the window (`MODEL_KEYS`, from the table's metadata). A
table of another model, or rows per frame or per sample (calibrated per second only), is refused
with one line naming the calibration file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError
from ..core.files import atomic_write, is_regular_file, read_json_object
from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN
from .writers import INTERVAL_COLUMNS

SPREAD_PARTS = ("score", "sd")  # a second's point and spread per dimension: `{dim}_score`, `{dim}_sd`

FORMAT = 1  # calibration.json's layout; a file of another is refused
# Labels: a spread below one class says nothing finer than the labels themselves, so a steady
# second still gets an interval of its own size, and no second divides by zero.
SPREAD_FLOOR = 1.0
MISSING_SD = 1.0  # labels: one sample shows no steadiness; counted as a class of spread
# The run metadata that decides what the model outputs for a face, and so what the residuals were.
MODEL_KEYS = ("arch", "weights_sha256", "fps", "window", "preprocess")
SCHEME = "clip-weighted split conformal"  # scoring.calibration.conformal_quantile


@dataclass(frozen=True)
class Calibration:
    """What `fer calibrate` measured, as calibration.json holds it."""

    coverage: float  # nominal share of seconds inside their interval, 0..1
    quantiles: dict[str, float]  # dimension -> q, in units of difficulty
    model: dict  # MODEL_KEYS of the table it was made from, and its `model` name (shown only)
    clips: dict[str, int]  # dimension -> labelled clips behind q
    seconds: dict[str, int]  # dimension -> labelled seconds behind q
    scheme: str = SCHEME
    floor: float = SPREAD_FLOOR  # labels
    missing_sd: float = MISSING_SD  # labels
    source: dict = field(default_factory=dict)  # truth, pred, fer_version, created

    def to_json(self) -> dict:
        return {"fer_calibration": FORMAT, **asdict(self)}


def difficulty(sd, floor: float = SPREAD_FLOOR, missing: float = MISSING_SD) -> np.ndarray:
    """Each row's difficulty in labels from its spread (NaN: none): sqrt(sd^2 + floor^2)."""
    sd = np.asarray(sd, dtype=float)
    return np.sqrt(np.where(np.isnan(sd), missing, sd) ** 2 + floor**2)


def model_identity(metadata: dict) -> dict:
    """The MODEL_KEYS of a table's run metadata (`writers.read_metadata`)."""
    return {k: metadata.get(k) for k in MODEL_KEYS}


def write_calibration(cal: Calibration, path: str | Path) -> Path:
    """calibration.json, written whole or not at all."""
    path = Path(path)
    text = json.dumps(cal.to_json(), indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def read_calibration(path: str | Path) -> Calibration:
    """A calibration.json; DataError (one line, naming the file) for anything else."""
    path = Path(path)
    if path.exists() and not is_regular_file(path):
        raise DataError(f"{path}: not a file")
    data = read_json_object(path, "no such calibration file", "cannot read the calibration", "not a fer calibration")
    if data.get("fer_calibration") != FORMAT:
        raise DataError(f"{path}: not a fer calibration (fer calibrate writes one)")
    try:
        cal = Calibration(**{k: v for k, v in data.items() if k != "fer_calibration"})
        quantiles = [float(cal.quantiles[d]) for d in DIMENSIONS]
        ok = 0 < float(cal.coverage) < 1 and all(np.isfinite(quantiles)) and min(quantiles) >= 0
        ok = ok and cal.floor > 0 and cal.missing_sd >= 0 and isinstance(cal.model, dict)
    except (TypeError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a fer calibration ({e.__class__.__name__}: {e})") from None
    if not ok:
        raise DataError(f"{path}: not a fer calibration (coverage, quantiles or spreads out of range)")
    return cal


def check_calibration(cal: Calibration, metadata: dict | None, path: str | Path, table: str | Path = "table") -> None:
    """DataError (one line, naming the calibration file) unless `cal` was made for the model and
    rows of the run `metadata` describes (a table's, or the run's about to start)."""
    if metadata is None:
        raise DataError(f"{table}: records no model and settings, so no calibration can be checked against it")
    if metadata.get("per_frame") or metadata.get("per_sample"):
        raise DataError(f"{path}: calibrated per second; {table} has a row per frame or sample")
    ours, theirs = cal.model, model_identity(metadata)
    clash = [k for k in MODEL_KEYS if _canonical(ours.get(k)) != _canonical(theirs.get(k))]
    if clash:
        detail = ", ".join(f"{k} {_shown(ours.get(k))} vs {_shown(theirs.get(k))}" for k in clash)
        raise DataError(
            f"{path}: made for another model or preprocessing than {table} ({detail}); fer calibrate makes one for it"
        )


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def _shown(value) -> str:
    text = value if isinstance(value, str) else _canonical(value)
    return text[:12] + "..." if len(text) > 15 else text


def bounds(score, sd, dim: str, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) for scores and spreads of one dimension (NaN score: NaN bounds), clipped to the scale."""
    score = np.asarray(score, dtype=float)
    half = cal.quantiles[dim] * difficulty(sd, cal.floor, cal.missing_sd)
    return np.clip(score - half, LABEL_MIN, LABEL_MAX), np.clip(score + half, LABEL_MIN, LABEL_MAX)


def add_intervals(df: pd.DataFrame, cal: Calibration) -> pd.DataFrame:
    """`df` (a per-second table) with INTERVAL_COLUMNS set from its scores and spreads (null
    without a face), placed after `samples`."""
    out = df.drop(columns=[c for c in INTERVAL_COLUMNS if c in df])
    for dim in DIMENSIONS:
        score, sd = (_floats(df, f"{dim}_{col}") for col in SPREAD_PARTS)
        out[f"{dim}_lo"], out[f"{dim}_hi"] = bounds(score, sd, dim, cal)
    at = list(out.columns).index("samples") + 1 if "samples" in out else len(df.columns)
    rest = [c for c in out.columns if c not in INTERVAL_COLUMNS]
    return out[rest[:at] + list(INTERVAL_COLUMNS) + rest[at:]]


def with_intervals(rows: list[dict], cal: Calibration) -> list[dict]:
    """Rows (`rows.label_rows`, per second) with their INTERVAL_COLUMNS: for `fer annotate --calibration`."""
    if not rows:
        return rows
    df = pd.DataFrame([{f"{d}_{c}": r.get(f"{d}_{c}") for d in DIMENSIONS for c in SPREAD_PARTS} for r in rows])
    lo_hi = add_intervals(df, cal)[list(INTERVAL_COLUMNS)].to_numpy(dtype=float)
    return [
        {**r, **{c: (None if np.isnan(v) else float(v)) for c, v in zip(INTERVAL_COLUMNS, b)}}
        for r, b in zip(rows, lo_hi)
    ]


def calibration_metadata(cal: Calibration, path: str | Path) -> dict:
    """What a table's metadata records of the calibration its intervals came from (`calibration`
    is what --resume compares; the file may move)."""
    numbers = {
        "coverage": cal.coverage,
        "quantiles": dict(cal.quantiles),
        "clips": dict(cal.clips),
        "scheme": cal.scheme,
    }
    return {"calibration": numbers, "calibration_file": str(path)}


def load_for_run(path: str | Path, metadata: dict, out: str | Path) -> tuple[Calibration, dict]:
    """`fer annotate --calibration`: the calibration at `path` checked against the run about to
    write `out` (its run `metadata`), and the metadata the table then records."""
    cal = read_calibration(path)
    check_calibration(cal, metadata, path, out)
    return cal, {**metadata, **calibration_metadata(cal, path)}


def _floats(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        raise FerError(f"the table has no column {col}: intervals need the scores and spreads of this fer")
    return pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
