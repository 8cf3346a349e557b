"""`fer calibrate`: split conformal quantiles from labelled clips, and intervals for a table.

The score of a labelled second is its scaled residual |truth - score| / difficulty
(`tables.intervals.difficulty`, from the row's spread). Seconds are not exchangeable (a clip's
seconds share a face, a light and errors that persist), but whole clips are: the guarantee is
stated over clips. Each of the K calibration clips weighs
1 / (K + 1), shared evenly by its labelled seconds, and the clip to come weighs the last
1 / (K + 1), placed at +infinity; q is the smallest score whose cumulative weight reaches the
coverage 1 - alpha (`conformal_quantile`). With one second per clip this is the usual split
conformal quantile, the ceil((K + 1)(1 - alpha))-th smallest score. For a new clip exchangeable
with the calibration clips, a second drawn at random from it lies in its interval with
probability at least 1 - alpha (docs/intervals.md has the argument and what breaks it).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError
from ..core.labels import DIMENSIONS
from ..datasets.truth import load_truth
from ..tables.intervals import (
    SPREAD_PARTS,
    Calibration,
    add_intervals,
    calibration_metadata,
    check_calibration,
    difficulty,
    model_identity,
    read_calibration,
)
from ..tables.rows import SECOND_KEYS
from ..tables.writers import INTERVAL_COLUMNS, output_format, read_metadata, read_table, schema, write_table

SPREAD_COLUMNS = tuple(f"{d}_{c}" for d in DIMENSIONS for c in SPREAD_PARTS)
COVERAGE = 0.9  # the share of seconds a calibration's intervals hold when none is asked for


def min_clips(coverage: float) -> int:
    """The fewest calibration clips K that can give `coverage`: K / (K + 1) must reach it."""
    return math.ceil(coverage / (1 - coverage) - 1e-9)


def conformal_quantile(scores, clips, coverage: float) -> float:
    """The clip-weighted split conformal quantile of `scores` (one per labelled second, `clips`
    naming each one's clip) at `coverage` (see the module doc); exact in integers. FerError when
    the clips are too few for the coverage (fewer than coverage / (1 - coverage))."""
    scores, clips = np.asarray(scores, dtype=float), np.asarray(clips)
    if scores.size == 0:
        raise FerError("no labelled seconds to calibrate on")
    _, clip_of, counts = np.unique(clips, return_inverse=True, return_counts=True)
    k, share = len(counts), Fraction(repr(float(coverage)))
    whole = math.lcm(*counts.tolist())  # a clip's weight in units of 1 / ((K + 1) * whole)
    need = share * (k + 1) * whole
    order = np.argsort(scores, kind="stable")
    total = 0
    for i in order:
        total += whole // int(counts[clip_of[i]])
        if total >= need:
            return float(scores[i])
    raise FerError(f"{k} labelled clips cannot give {coverage:g} coverage: at least {min_clips(coverage)} are needed")


def scaled_residuals(truth: pd.DataFrame, pred: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per dimension, the labelled seconds with a prediction: video, second, truth, score, sd and
    `scaled` = |truth - score| / difficulty. `truth` as `datasets.truth.load_truth` gives it."""
    both = truth.merge(pred[[*SECOND_KEYS, *SPREAD_COLUMNS]], on=list(SECOND_KEYS), suffixes=("", "_pred"))
    out = {}
    for dim in DIMENSIONS:
        t = pd.to_numeric(both[dim], errors="coerce").to_numpy(dtype=float)
        s, sd = (pd.to_numeric(both[f"{dim}_{c}"], errors="coerce").to_numpy(dtype=float) for c in SPREAD_PARTS)
        ok = np.isfinite(t) & np.isfinite(s)
        rows = pd.DataFrame(
            {
                "video": both["video"][ok].to_numpy(),
                "second": both["second"][ok].to_numpy(),
                "truth": t[ok],
                "score": s[ok],
                "sd": sd[ok],
            }
        )
        rows["scaled"] = np.abs(rows["truth"] - rows["score"]) / difficulty(rows["sd"])
        out[dim] = rows
    return out


def calibrate(
    truth: pd.DataFrame, pred: pd.DataFrame, metadata: dict, coverage: float = COVERAGE, source: dict | None = None
) -> Calibration:
    """A Calibration of the model `metadata` describes (its table's), from `truth` (video, second,
    valence, arousal) and `pred` (a per-second table with scores and spreads)."""
    if not 0 < coverage < 1:
        raise FerError(f"coverage must lie between 0 and 1, not {coverage}")
    residuals = scaled_residuals(truth, pred)
    if all(r.empty for r in residuals.values()):
        names = source or {}
        raise DataError(
            f"{names.get('pred', 'the table')}: no second with a face matches a labelled second of "
            f"{names.get('truth', 'the truth')} (video names and seconds)"
        )
    quantiles = {d: conformal_quantile(r["scaled"], r["video"], coverage) for d, r in residuals.items()}
    return Calibration(
        coverage=float(coverage),
        quantiles=quantiles,
        model={**model_identity(metadata), "model": metadata.get("model")},
        clips={d: int(r["video"].nunique()) for d, r in residuals.items()},
        seconds={d: len(r) for d, r in residuals.items()},
        source={**(source or {}), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    )


def calibrate_tables(
    truth: str | Path, pred: str | Path, coverage: float = COVERAGE, frames_fps: float = 25.0
) -> Calibration:
    """`fer calibrate`: a Calibration from labelled clips `truth` (as `fer benchmark accuracy`
    reads them) and `pred`, the `fer annotate` table of the same clips. DataError (one line,
    naming the file) for a table that cannot carry one."""
    from .. import __version__

    metadata = read_metadata(pred)
    table = prediction_table(pred, metadata)
    source = {"truth": str(truth), "pred": str(pred), "fer_version": __version__}
    return calibrate(load_truth(truth, frames_fps), table, metadata, coverage, source)


def prediction_table(pred: str | Path, metadata: dict | None) -> pd.DataFrame:
    """The table `pred` checked for calibrating: a per-second table of one face per second, with
    scores and spreads, recording the model it was made with."""
    table = read_table(pred, require=(*SECOND_KEYS, "valence_score", "arousal_score"))
    if metadata is None:
        raise DataError(
            f"{pred}: records no model and settings (fer annotate's Parquet, or a CSV beside its .fer.json)"
        )
    missing = [c for c in SPREAD_COLUMNS if c not in table]
    if missing:
        raise DataError(f"{pred}: no column {missing[0]}: annotate again with this fer, whose tables carry the spread")
    if table.duplicated(subset=list(SECOND_KEYS)).any():
        raise DataError(
            f"{pred}: more than one row per video and second (--all-faces); calibrate on one face per second"
        )
    return table


def apply_calibration(table: str | Path, calibration: str | Path, out: str | Path, overwrite: bool = False) -> int:
    """`fer calibrate apply`: `table` with its intervals (`tables.intervals.add_intervals`) written
    to `out`; returns its rows. The calibration must be for the table's model (one-line DataError)."""
    cal = read_calibration(calibration)
    metadata = read_metadata(table)
    df = read_table(table, require=(*SECOND_KEYS, *SPREAD_COLUMNS))
    check_calibration(cal, metadata, calibration, table)
    out = Path(out)
    output_format(out)
    if out.exists() and not overwrite and out != Path(table):
        raise FerError(f"{out} already exists: --overwrite replaces it")
    kind = schema("second", all_faces="person" in df, expressions="expression" in df, intervals=True)
    missing = [c for c in kind.names if c not in df and c not in INTERVAL_COLUMNS]
    if missing:
        raise DataError(f"{table}: missing column(s) {', '.join(missing)}; annotate again with this fer")
    write_table(add_intervals(df, cal), out, {**metadata, **calibration_metadata(cal, calibration)}, kind)
    return len(df)
