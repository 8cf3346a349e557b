"""Does the face (detector score, face size) add to the model's spread as a difficulty? (issue 39)

    python bench/intervals.py --truth LABELS --pred TABLE [--coverage 0.9]
    python bench/intervals.py --synthetic [--clips 400] [--seed 0]

Cross-fitted over clips: the clips are split in two halves by name; on one half a face term is
fitted (least squares of log |residual| / difficulty on 1 - face_score and log face height), on
the other both difficulties are calibrated (fer's clip-weighted conformal quantile) and the mean
interval width at that coverage compared; then the halves swap. The face helps when its width is
smaller at the same coverage; the coverage of the worst third of faces (smallest, least sure)
shows whether it evens out coverage across faces. --synthetic runs it on simulated clips twice:
once where the error grows with small, unsure faces, once where the face says nothing.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fercli.scoring.calibration import conformal_quantile  # noqa: E402
from fercli.tables.intervals import difficulty  # noqa: E402

EPS = 0.05  # labels: keeps log |residual| finite where the prediction hit the truth


def face_features(rows: pd.DataFrame) -> np.ndarray:
    """The face term's inputs: unsureness of the detector and the face's log height (pixels)."""
    height = (rows["face_y1"] - rows["face_y0"]).clip(lower=1.0)
    return np.column_stack([1 - rows["face_score"], np.log(height)])


def fit_face_term(rows: pd.DataFrame) -> np.ndarray:
    """Least-squares coefficients (intercept, unsure, log height) of log(|r| + EPS) - log(d)."""
    x = np.column_stack([np.ones(len(rows)), face_features(rows)])
    y = np.log(rows["abs_error"] + EPS) - np.log(difficulty(rows["sd"]))
    return np.linalg.lstsq(x, y, rcond=None)[0]


def widths(rows: pd.DataFrame, d: np.ndarray, coverage: float) -> tuple[float, float, float]:
    """Mean width, coverage, and coverage of the worst third of faces, with difficulty `d` calibrated on `rows`."""
    scaled = rows["abs_error"].to_numpy() / d
    q = conformal_quantile(scaled, rows["video"].to_numpy(), coverage)
    inside = scaled <= q
    worst = face_features(rows) @ np.array([1.0, -1.0])  # unsure and small
    third = worst >= np.quantile(worst, 2 / 3)
    return float(np.mean(2 * q * d)), float(inside.mean()), float(inside[third].mean())


def compare(rows: pd.DataFrame, coverage: float) -> pd.DataFrame:
    half = rows["video"].map(lambda v: zlib.crc32(str(v).encode()) % 2).to_numpy()
    out = []
    for fit in (0, 1):
        train, test = rows[half == fit], rows[half != fit]
        beta = fit_face_term(train)
        spread = difficulty(test["sd"])
        face = spread * np.exp(face_features(test) @ beta[1:])
        for name, d in (("spread", spread), ("spread + face", face)):
            out.append((name, fit, *widths(test, d, coverage)))
    table = pd.DataFrame(
        out, columns=["difficulty", "fitted on half", "mean width", "coverage", "worst-third coverage"]
    )
    return table.groupby("difficulty", sort=False)[["mean width", "coverage", "worst-third coverage"]].mean()


def from_tables(truth: Path, pred: Path) -> dict[str, pd.DataFrame]:
    from fercli.datasets.truth import load_truth
    from fercli.tables.writers import read_table

    table = read_table(pred, require=("video", "second", "face_score", "face_y0", "face_y1"))
    both = load_truth(truth).merge(table, on=["video", "second"], suffixes=("", "_pred"))
    return {dim: _rows(both, dim, both[dim], both[f"{dim}_score"], both[f"{dim}_sd"]) for dim in ("valence", "arousal")}


def _rows(both, dim, truth, score, sd) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "video": both["video"],
            "abs_error": (truth - score).abs(),
            "sd": sd,
            "face_score": both["face_score"],
            "face_y0": both["face_y0"],
            "face_y1": both["face_y1"],
        }
    )
    return rows.dropna(subset=["abs_error", "face_score", "face_y0", "face_y1"]).reset_index(drop=True)


def synthetic(clips: int, seed: int, face_matters: bool) -> pd.DataFrame:
    """Seconds whose error has a spread-read part and, if `face_matters`, a part the face shows."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 25, size=clips)
    n = int(sizes.sum())
    hard = np.repeat(rng.lognormal(0, 0.3, clips), sizes) * rng.lognormal(0, 0.4, n)
    height = np.repeat(rng.uniform(30, 300, clips), sizes) * rng.lognormal(0, 0.1, n)
    score = np.clip(rng.beta(8, 1.5, n), 0.5, 1.0)
    face = np.sqrt(120 / height) * (1 + 2 * (1 - score)) if face_matters else np.ones(n)
    error = rng.normal(size=n) * 1.5 * hard * face
    both = pd.DataFrame(
        {
            "video": np.repeat([f"c{c}" for c in range(clips)], sizes),
            "face_score": score,
            "face_y0": 0.0,
            "face_y1": height,
        }
    )
    return _rows(both, "valence", pd.Series(error), pd.Series(np.zeros(n)), pd.Series(hard * rng.lognormal(0, 0.3, n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--pred", type=Path)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.synthetic:
        cases = {
            f"synthetic, face {'matters' if m else 'says nothing'} ({args.clips} clips, seed {args.seed})": synthetic(
                args.clips, args.seed, m
            )
            for m in (True, False)
        }
    else:
        cases = {f"{args.pred}: {dim}": rows for dim, rows in from_tables(args.truth, args.pred).items()}
    pd.set_option("display.float_format", "{:.3f}".format)
    for name, rows in cases.items():
        print(f"\n{name}: {len(rows)} seconds of {rows['video'].nunique()} clips, coverage {args.coverage:g}")
        print(compare(rows, args.coverage).to_string())


if __name__ == "__main__":
    main()
