"""Split conformal calibration over clips: the quantile by hand, the guarantee's argument checked
exactly, coverage on held-out clips of another seed, widths that follow the error, and the
command end to end through a real `fer annotate` table."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercli.core.errors import DataError, FerError
from fercli.scoring.calibration import calibrate, conformal_quantile
from fercli.scoring.metrics import interval_scores
from fercli.tables.intervals import add_intervals, difficulty

META = {
    "model": "m.pt",
    "arch": "efficientnet_b0",
    "weights_sha256": "c" * 64,
    "fps": 5.0,
    "window": 5,
    "preprocess": {"crop": "square", "size": 224},
    "per_frame": False,
    "per_sample": False,
}


# --- the quantile by hand ------------------------------------------------------------------------


@pytest.mark.parametrize("k, coverage", [(9, 0.9), (19, 0.9), (19, 0.95), (4, 0.8), (50, 0.8), (99, 0.95)])
def test_one_second_per_clip_is_the_usual_split_conformal_quantile(k, coverage):
    scores = np.random.default_rng(k).permutation(np.arange(1.0, k + 1))
    rank = math.ceil(Fraction(repr(coverage)) * (k + 1))  # ceil((n+1)(1-alpha)), in exact arithmetic
    assert conformal_quantile(scores, np.arange(k), coverage) == rank  # the rank-th smallest of 1..k


def test_the_exact_rank_where_floats_would_round_up():
    # (99 + 1) * 0.55 is 55.00000000000001 in floats: a float ceil would take the 56th smallest.
    assert (99 + 1) * 0.55 > 55
    assert conformal_quantile(np.arange(1.0, 100), np.arange(99), 0.55) == 55.0


def test_unequal_clips_by_hand():
    # K = 3 clips, each weighing 1/4 shared by its seconds (A: 1/8 each, B: 1/4, C: 1/12 each);
    # cumulative weight over the sorted scores: 1 (A) 3/24, 2 (B) 9/24, 3 (C) 11/24, 4 (C) 13/24,
    # 5 (A) 16/24, 6 (C) 18/24 = 3/4; the new clip's 1/4 is at +infinity.
    scores = [1, 5, 2, 3, 4, 6]
    clips = ["A", "A", "B", "C", "C", "C"]
    assert conformal_quantile(scores, clips, 0.5) == 4
    assert conformal_quantile(scores, clips, 0.6) == 5
    assert conformal_quantile(scores, clips, 0.75) == 6  # exactly 3/4: reached, not missed by rounding
    with pytest.raises(FerError, match="3 labelled clips cannot give 0.76 coverage: at least 4 are needed"):
        conformal_quantile(scores, clips, 0.76)


def loo_coverage(scores, clips, coverage, quantile) -> float:
    """Each clip in turn the new one, calibrated on the others: its share of seconds inside, averaged."""
    shares = []
    for c in np.unique(clips):
        q = quantile(scores[clips != c], clips[clips != c], coverage)
        shares.append(np.mean(scores[clips == c] <= q))
    return float(np.mean(shares))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_leaving_each_clip_out_covers_at_least_the_coverage_on_any_data(seed, coverage):
    # The guarantee's argument holds data set by data set: a random second of the left-out clip
    # lies under the others' quantile for at least `coverage` of the clips' seconds, on average
    # over which clip is left out, whatever the scores (heavy tails, clips of 1 to 40 seconds).
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 41, size=25)
    clips = np.repeat(np.arange(25), sizes)
    scores = rng.standard_cauchy(clips.size) ** 2 * np.repeat(rng.lognormal(0, 1, 25), sizes)
    assert loo_coverage(scores, clips, coverage, conformal_quantile) >= coverage


def test_pooling_seconds_instead_of_clips_breaks_it():
    # One long easy clip outweighs many short hard ones when seconds are pooled.
    clips = np.repeat(np.arange(20), [200] + [1] * 19)
    scores = np.where(clips == 0, 0.1, np.linspace(1, 2, clips.size))

    def pooled(s, c, coverage):
        return float(np.sort(s)[min(math.ceil((s.size + 1) * coverage), s.size) - 1])

    assert loo_coverage(scores, clips, 0.9, pooled) < 0.9 <= loo_coverage(scores, clips, 0.9, conformal_quantile)


def test_a_table_of_other_clips_is_named():
    truth = pd.DataFrame({"video": ["a"], "second": [0], "valence": [1.0], "arousal": [1.0]})
    pred = pd.DataFrame(
        {
            "video": ["b"],
            "second": [0],
            "valence_score": [1.0],
            "arousal_score": [1.0],
            "valence_sd": [1.0],
            "arousal_sd": [1.0],
        }
    )
    with pytest.raises(DataError, match=r"^p\.csv: no second with a face matches a labelled second of t/"):
        calibrate(truth, pred, META, 0.9, {"pred": "p.csv", "truth": "t/"})


# --- held-out clips of another seed -------------------------------------------------------------


def simulate(clips: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth and a per-second table whose error grows with a simulated difficulty (a clip's, times
    each second's), persistent within a clip (AR(1)), and whose spread reads that difficulty noisily."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 25, size=clips)
    video = np.repeat([f"c{c}" for c in range(clips)], sizes)
    second = np.concatenate([np.arange(n) for n in sizes])
    n = sizes.sum()
    hard = np.repeat(rng.lognormal(0, 0.4, clips), sizes)[:, None] * rng.lognormal(0, 0.6, size=(n, 2))
    e = rng.normal(size=(n, 2))
    for i in np.flatnonzero(second > 0):  # in time order, so e[i - 1] is already the clip's AR(1) value
        e[i] = 0.7 * e[i - 1] + math.sqrt(1 - 0.7**2) * e[i]
    t = np.clip(rng.normal(0, 4, (n, 2)), -10, 10)
    face = rng.random(n) > 0.1
    s = np.where(face[:, None], t + 1.5 * hard * e, np.nan)
    sd = np.where(face[:, None], hard * rng.lognormal(0, 0.3, (n, 2)), np.nan)
    truth = pd.DataFrame({"video": video, "second": second, "valence": t[:, 0], "arousal": t[:, 1]})
    pred = pd.DataFrame(
        {
            "video": video,
            "second": second,
            "valence_score": s[:, 0],
            "arousal_score": s[:, 1],
            "valence_sd": sd[:, 0],
            "arousal_sd": sd[:, 1],
            "samples": 5 * face,
        }
    )
    return truth, pred


@pytest.fixture(scope="module")
def held_out():
    return simulate(400, seed=1), simulate(400, seed=2)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_held_out_coverage_is_within_3_points_of_nominal(held_out, coverage):
    (cal_truth, cal_pred), (test_truth, test_pred) = held_out
    cal = calibrate(cal_truth, cal_pred, META, coverage)
    assert cal.clips["valence"] == 400 and cal.seconds["valence"] == cal_pred.valence_score.notna().sum()
    rows = add_intervals(test_pred, cal).merge(test_truth, on=["video", "second"])
    for dim in ("valence", "arousal"):
        got = interval_scores(rows.video, rows[dim], rows[f"{dim}_lo"], rows[f"{dim}_hi"])
        assert abs(got["clip_coverage"] - coverage) <= 0.03, (dim, got)
        assert abs(got["coverage"] - coverage) <= 0.03, (dim, got)


def test_the_widest_intervals_hold_the_largest_errors(held_out):
    (cal_truth, cal_pred), (test_truth, test_pred) = held_out
    rows = add_intervals(test_pred, calibrate(cal_truth, cal_pred, META, 0.9)).merge(test_truth, on=["video", "second"])
    rows = rows[rows.valence_score.notna()]
    width, error = (rows.valence_hi - rows.valence_lo).to_numpy(), (rows.valence - rows.valence_score).abs().to_numpy()
    order, tenth = np.argsort(width), len(rows) // 10
    narrow, wide = error[order[:tenth]].mean(), error[order[-tenth:]].mean()
    assert wide > 1.5 * narrow, (narrow, wide)  # measured: 1.64 vs 3.23 labels
    assert np.corrcoef(np.log(difficulty(rows.valence_sd)), np.log(error + 1e-3))[0, 1] > 0.3


# --- end to end through fer annotate ------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, lstm_checkpoint):
    """5 synthetic AFEW-VA clips of 1 s, their truth per second, and fer's table of them (CSV)."""
    import synthetic_afew

    import fercli
    from fercli.job.contract import AnnotateOptions

    root = tmp_path_factory.mktemp("labelled")
    clips = synthetic_afew.make_dataset(root / "afew", clips=5, frames=25, actors=5, seed=5)
    table = root / "t.csv"
    fercli.annotate(
        [root / "afew"],
        table,
        model=fercli.load_model(lstm_checkpoint, "cpu"),
        device="cpu",
        options=AnnotateOptions(workers=0),
    )
    truth = (
        pd.DataFrame(
            [(cid, i // 25, v, a) for cid, c in clips.items() for i, (v, a) in enumerate(zip(c.valence, c.arousal))],
            columns=["video", "second", "valence", "arousal"],
        )
        .groupby(["video", "second"], as_index=False)
        .mean()
    )
    return root, truth, table


def brute_force_quantile(scaled: pd.DataFrame, coverage: float) -> float:
    """The smallest score t whose clip-weighted share sum_j (1/n_j) #{s_ji <= t} / (K + 1) reaches coverage."""
    k = scaled.video.nunique()
    for t in np.sort(scaled.scaled.unique()):
        share = sum(Fraction(int((g.scaled <= t).sum()), len(g)) for _, g in scaled.groupby("video")) / (k + 1)
        if share >= Fraction(repr(coverage)):
            return float(t)
    return math.inf


def test_fer_calibrate_end_to_end(labelled, tmp_path):
    from fercli.cli import app

    root, truth, table = labelled
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--truth",
            str(root / "afew"),
            "--pred",
            str(table),
            "--out",
            str(tmp_path / "cal.json"),
            "--coverage",
            "0.8",
        ],
    )
    assert result.exit_code == 0, result.output
    cal = json.loads((tmp_path / "cal.json").read_text())
    pred = pd.read_csv(table, dtype={"video": str})
    assert cal["model"]["weights_sha256"] == json.loads((root / "t.csv.fer.json").read_text())["weights_sha256"]
    for dim in ("valence", "arousal"):  # the quantile from the truth the generator made, counted by hand
        rows = truth.merge(pred[pred.face], on=["video", "second"], suffixes=("", "_pred"))
        rows["scaled"] = (rows[dim] - rows[f"{dim}_score"]).abs() / np.sqrt(rows[f"{dim}_sd"] ** 2 + 1)
        assert cal["quantiles"][dim] == pytest.approx(brute_force_quantile(rows, 0.8), rel=1e-6)
        assert cal["clips"][dim] == 5 and cal["seconds"][dim] == len(rows)

    result = runner.invoke(
        app,
        [
            "calibrate",
            "apply",
            str(table),
            "--calibration",
            str(tmp_path / "cal.json"),
            "--out",
            str(tmp_path / "b.parquet"),
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["benchmark", "accuracy", "--truth", str(root / "afew"), "--pred", str(tmp_path / "b.parquet")]
    )
    assert result.exit_code == 0 and "intervals over" in result.output and "valence coverage" in result.output


def test_a_foreign_calibration_is_refused_on_one_line(labelled, tmp_path):
    from fercli.cli import app

    root, _, table = labelled
    runner = CliRunner()
    assert (
        runner.invoke(
            app,
            [
                "calibrate",
                "--truth",
                str(root / "afew"),
                "--pred",
                str(table),
                "--out",
                str(tmp_path / "cal.json"),
                "--coverage",
                "0.8",
            ],
        ).exit_code
        == 0
    )
    other = tmp_path / "other.csv"
    other.write_bytes(table.read_bytes())
    meta = json.loads((root / "t.csv.fer.json").read_text())
    (tmp_path / "other.csv.fer.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    result = runner.invoke(
        app,
        [
            "calibrate",
            "apply",
            str(other),
            "--calibration",
            str(tmp_path / "cal.json"),
            "--out",
            str(tmp_path / "b.csv"),
        ],
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "cal.json: made for another model" in lines[0], result.output
    assert not (tmp_path / "b.csv").exists()
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--truth",
            str(root / "afew"),
            "--pred",
            str(table),
            "--out",
            str(tmp_path / "c.json"),
            "--coverage",
            "0.95",
        ],
    )
    assert result.exit_code == 2 and "5 labelled clips cannot give 0.95 coverage: at least 19" in result.output


def test_annotate_with_a_calibration_writes_the_bounds_calibrate_apply_gives(labelled, tmp_path, lstm_checkpoint):
    import fercli
    from fercli.cli import app
    from fercli.job.contract import AnnotateOptions
    from fercli.tables.writers import read_table

    root, _, table = labelled
    runner = CliRunner()
    cal = tmp_path / "cal.json"
    argv = ["calibrate", "--truth", str(root / "afew"), "--pred", str(table), "--out", str(cal), "--coverage", "0.8"]
    assert runner.invoke(app, argv).exit_code == 0
    applied = tmp_path / "applied.csv"
    argv = ["calibrate", "apply", str(table), "--calibration", str(cal), "--out", str(applied)]
    assert runner.invoke(app, argv).exit_code == 0
    direct = tmp_path / "direct.csv"
    model = fercli.load_model(lstm_checkpoint, "cpu")
    options = AnnotateOptions(workers=0, calibration=cal)
    fercli.annotate([root / "afew"], direct, model=model, device="cpu", options=options)
    a, b = (read_table(p).sort_values(["video", "second"]).reset_index(drop=True) for p in (applied, direct))
    bounds = ["valence_lo", "valence_hi", "arousal_lo", "arousal_hi"]
    pd.testing.assert_frame_equal(a[["video", "second", *bounds]], b[["video", "second", *bounds]], atol=1e-6)
    meta = json.loads(cal.read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**meta, "model": {**meta["model"], "weights_sha256": "0" * 64}}))
    with pytest.raises(fercli.FerError, match="foreign.json"):
        fercli.annotate(
            [root / "afew"],
            tmp_path / "no.csv",
            model=model,
            device="cpu",
            options=AnnotateOptions(workers=0, calibration=foreign),
        )
    assert not (tmp_path / "no.csv").exists()
