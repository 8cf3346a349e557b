"""Metrics against independent references (numpy, scipy, scikit-learn, hand-worked cases), table
matching and counting (ground truth's readers: test_truth.py)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from fercli.core.errors import DataError
from fercli.scoring import metrics
from fercli.scoring.metrics import (
    METRICS,
    accuracy,
    accuracy_within,
    ccc,
    f1_macro,
    f1_weighted,
    mae,
    pearson,
    report_json,
    report_markdown,
    rmse,
    sagr,
    score,
    write_metrics,
)
from fercli.tables.writers import TableWriter, read_table

ALL = [ccc, pearson, rmse, mae, sagr, accuracy, accuracy_within, f1_macro, f1_weighted]
rng = np.random.default_rng(0)


# --- metrics on arrays -------------------------------------------------------------------------


def test_ccc_hand_cases():
    # t = [1, 2, 3], p = [2, 3, 4]: means 2 and 3, population variances 2/3 and 2/3, covariance
    # 2/3, so CCC = 2 * 2/3 / (2/3 + 2/3 + (2 - 3)^2) = (4/3) / (7/3) = 4/7.
    assert ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)
    # t = [-1, 1], p = [-2, 2]: means 0, variances 1 and 4, covariance 2: 4 / (1 + 4 + 0) = 0.8.
    assert ccc([-1, 1], [-2, 2]) == pytest.approx(0.8)
    # t = [0, 2], p = [2, 0]: means 1, variances 1 and 1, covariance -1: -2 / 2 = -1.
    assert ccc([0, 2], [2, 0]) == pytest.approx(-1.0)


def test_ccc_matches_population_formula_on_random_data():
    t, p = rng.normal(0, 4, 200), rng.normal(1, 3, 200)
    cov = np.cov(t, p, ddof=0)
    expected = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (t.mean() - p.mean()) ** 2)
    assert ccc(t, p) == pytest.approx(expected)
    # Pearson times the bias correction factor (Lin 1989).
    r = np.corrcoef(t, p)[0, 1]
    cb = 2 * t.std() * p.std() / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    assert ccc(t, p) == pytest.approx(r * cb)


def test_pearson_matches_numpy_and_scipy():
    stats = pytest.importorskip("scipy.stats")
    t = rng.normal(0, 4, 300)
    p = 0.6 * t + rng.normal(0, 2, 300)
    assert pearson(t, p) == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert pearson(t, p) == pytest.approx(stats.pearsonr(t, p)[0])
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_rmse_mae_hand_case():
    # Errors 1, -2, 0, 3: squares 1 + 4 + 0 + 9 = 14, RMSE sqrt(14/4); MAE (1 + 2 + 0 + 3) / 4.
    t, p = [0, 5, -3, 10], [1, 3, -3, 13]
    assert rmse(t, p) == pytest.approx(math.sqrt(14 / 4))
    assert mae(t, p) == pytest.approx(1.5)
    t, p = rng.normal(0, 4, 50), rng.normal(0, 4, 50)
    assert rmse(t, p) == pytest.approx(np.sqrt(np.mean((t - p) ** 2)))
    assert mae(t, p) == pytest.approx(np.mean(np.abs(t - p)))


def test_sagr_zero_agrees_only_with_zero():
    # Signs: (+,+) yes, (-,+) no, (0,0) yes, (0,+) no, (-,-) yes.
    assert sagr([3, -2, 0, 0, -7], [0.4, 1, 0, 0.1, -9]) == pytest.approx(3 / 5)


def test_accuracy_hand_cases():
    t, p = [0, 1, 2, 3, -4], [0, 2, 2, 5, -3.4]  # -3.4 is class -3
    assert accuracy(t, p) == pytest.approx(2 / 5)
    assert accuracy_within(t, p, k=1) == pytest.approx(4 / 5)
    assert accuracy_within(t, p, k=2) == pytest.approx(1.0)


def test_f1_hand_cases():
    # true [0,0,0,1], pred [0,0,1,1]. Class 0: TP 2, FN 1, FP 0 -> F1 = 4/5. Class 1: TP 1, FP 1,
    # FN 0 -> F1 = 2/3. Macro (4/5 + 2/3) / 2 = 11/15; weighted by support 3 and 1:
    # (3 * 4/5 + 2/3) / 4 = 23/30.
    assert f1_macro([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(11 / 15)
    assert f1_weighted([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(23 / 30)
    # A class predicted but never true counts in the macro mean with F1 0 and weight 0:
    # class 1: TP 1, FN 1 -> 2/3; class 2: TP 0 -> 0. Macro 1/3, weighted 2/3.
    assert f1_macro([1, 1], [1, 2]) == pytest.approx(1 / 3)
    assert f1_weighted([1, 1], [1, 2]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    r = np.random.default_rng(seed)
    t = np.clip(np.round(r.normal(0, 4, 400)), -10, 10).astype(int)
    p = np.clip(t + r.integers(-2, 3, 400), -10, 10)
    p[:20] = 10  # a class that is rare or absent in the truth
    assert f1_macro(t, p) == pytest.approx(skm.f1_score(t, p, average="macro"))
    assert f1_weighted(t, p) == pytest.approx(skm.f1_score(t, p, average="weighted"))
    assert accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
    cm = metrics.confusion_matrix(t, p)
    assert (cm == skm.confusion_matrix(t, p, labels=np.arange(-10, 11))).all()


def test_perfect_agreement():
    t = [-10, -3, 0, 0, 4, 10]
    assert ccc(t, t) == pearson(t, t) == accuracy(t, t) == 1.0
    assert f1_macro(t, t) == f1_weighted(t, t) == sagr(t, t) == 1.0
    assert rmse(t, t) == mae(t, t) == 0.0


def test_constant_prediction():
    t, p = [1, 2, 3, 4], [2, 2, 2, 2]
    assert math.isnan(pearson(t, p))
    assert ccc(t, p) == 0.0  # covariance 0 against a varying truth
    assert accuracy(t, p) == pytest.approx(0.25)
    # Both constant: equal constants agree perfectly, unequal ones not at all.
    assert ccc([3, 3], [3, 3]) == 1.0
    assert ccc([3, 3], [1, 1]) == 0.0


def test_single_row():
    assert math.isnan(pearson([2], [2]))
    assert ccc([2], [2]) == 1.0 and ccc([2], [5]) == 0.0
    assert rmse([2], [5]) == mae([2], [5]) == 3.0
    assert accuracy([2], [2]) == f1_macro([2], [2]) == 1.0
    assert f1_macro([2], [5]) == 0.0


@pytest.mark.parametrize("fn", ALL)
def test_empty_is_nan(fn):
    assert math.isnan(fn([], []))


@pytest.mark.parametrize("fn", ALL)
def test_rejects_nan_and_mismatched_lengths(fn):
    with pytest.raises(ValueError):
        fn([1, np.nan], [1, 2])
    with pytest.raises(ValueError):
        fn([1, 2, 3], [1, 2])


# --- score(): matching tables ------------------------------------------------------------------


def truth_df(rows):
    return pd.DataFrame(rows, columns=["video", "second", "valence", "arousal"])


def pred_df(rows, scores=True):
    df = pd.DataFrame(rows, columns=["video", "second", "valence", "arousal"])
    df["face"] = df["valence"].notna()
    for dim in ("valence", "arousal"):
        df[dim] = df[dim].astype("Int64")
        if scores:
            df[f"{dim}_score"] = df[dim].astype("Float64") + 0.25
    return df


def test_score_counts_unmatched_and_faceless_rows():
    truth = truth_df([("a", 0, 1, 2), ("a", 1, 3, -1), ("a", 2, 0, 0), ("b", 0, -5, 5), ("c", 0, 4, 4)])
    pred = pred_df([("a", 0, 1, 2), ("a", 1, None, None), ("a", 2, 0, 1), ("b", 0, -5, 4), ("b", 1, 2, 2)])
    r = score(truth, pred)
    assert (r.matched, r.truth_only, r.pred_only, r.pred_without_face) == (4, 1, 1, 1)
    assert r.scored == {"valence": 3, "arousal": 3}
    assert r.missing_pred == {"valence": 1, "arousal": 1}
    assert r.unmatched[["video", "second", "side"]].values.tolist() == [["b", 1, "pred"], ["c", 0, "truth"]]
    # The faceless row (a, 1) is left out of every metric.
    assert r.pairs["valence"].true.tolist() == [1, 0, -5]
    assert r.metrics["valence"]["accuracy"] == 1.0
    assert r.metrics["arousal"]["accuracy"] == pytest.approx(1 / 3)


def test_score_uses_scores_for_continuous_and_labels_for_classes():
    truth = truth_df([("v", s, s - 5, 5 - s) for s in range(10)])
    pred = pred_df([("v", s, s - 5, 5 - s) for s in range(10)])  # labels exact, scores off by 0.25
    r = score(truth, pred)
    assert r.continuous_from == {"valence": "valence_score", "arousal": "arousal_score"}
    v = r.metrics["valence"]
    assert v["accuracy"] == v["f1_macro"] == 1.0
    assert v["rmse"] == pytest.approx(0.25) and v["mae"] == pytest.approx(0.25)
    assert v["ccc"] == pytest.approx(ccc(np.arange(10) - 5, np.arange(10) - 4.75))
    # Without score columns the labels feed every metric.
    r = score(truth, pred_df([("v", s, s - 5, 5 - s) for s in range(10)], scores=False))
    assert r.continuous_from == {"valence": "valence", "arousal": "arousal"}
    assert r.metrics["valence"]["rmse"] == 0.0


def test_score_mean_and_direct_computation_agree():
    n = 50
    truth = truth_df([("x", s, int(rng.integers(-10, 11)), int(rng.integers(-10, 11))) for s in range(n)])
    pred = pred_df([("x", s, int(rng.integers(-10, 11)), int(rng.integers(-10, 11))) for s in range(n)])
    r = score(truth, pred)
    for dim in ("valence", "arousal"):
        t, p = truth[dim].to_numpy(float), pred[dim].to_numpy(float)
        assert r.metrics[dim]["pearson"] == pytest.approx(np.corrcoef(t, p + 0.25)[0, 1])
        assert r.metrics[dim]["accuracy"] == pytest.approx(np.mean(t == p))
    for m in METRICS:
        assert r.mean[m] == pytest.approx((r.metrics["valence"][m] + r.metrics["arousal"][m]) / 2)


def test_score_all_rows_without_face_gives_nan_and_counts():
    truth = truth_df([("a", 0, 1, 1), ("a", 1, 2, 2)])
    pred = pred_df([("a", 0, None, None), ("a", 1, None, None)])
    r = score(truth, pred)
    assert r.matched == 2 and r.pred_without_face == 2 and r.scored == {"valence": 0, "arousal": 0}
    assert all(math.isnan(v) for v in r.metrics["valence"].values())


def test_score_rejects_duplicates_and_missing_columns():
    truth = truth_df([("a", 0, 1, 1)])
    pred = pred_df([("a", 0, 1, 1), ("a", 0, 2, 2)])
    pred["person"] = [0, 1]
    with pytest.raises(DataError, match="all-faces"):
        score(truth, pred)
    with pytest.raises(DataError, match="arousal"):
        score(truth, pred_df([("a", 0, 1, 1)]).drop(columns=["arousal", "arousal_score"]))
    with pytest.raises(DataError, match="outside"):
        score(truth, pred_df([("a", 0, 11, 1)]))


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda d: d.assign(second=d["second"] + 0.5),
            r"second must hold whole numbers, not 0\.5",
        ),  # was cut to 0 and matched
        (
            lambda d: d.assign(valence_score=[np.inf, 1.0]),
            "column valence_score holds an infinite value",
        ),  # was "no face"
        (lambda d: d.assign(arousal_score=[1.0, -np.inf]), "column arousal_score holds an infinite value"),
    ],
)
def test_a_damaged_prediction_table_is_refused_naming_its_file(tmp_path, edit, message):
    truth = tmp_path / "truth.csv"
    truth_df([("a", 0, 1, 1), ("a", 1, 2, 2)]).to_csv(truth, index=False)
    pred = tmp_path / "pred.csv"
    edit(pred_df([("a", 0, 1, 1), ("a", 1, 2, 2)])).to_csv(pred, index=False)
    with pytest.raises(DataError, match=f"^{pred}: {message}"):
        metrics.score_tables(truth, pred)


def test_score_on_a_fer_table(tmp_path):
    # Real output dtypes: nullable Int64 labels, float32 scores, from a Parquet written by fer.
    out = tmp_path / "r.parquet"
    meta = {"model": "m", "weights_sha256": "0", "fps": 5.0, "window": 5, "per_frame": False, "all_faces": False}
    w = TableWriter(out, meta, all_faces=False, resume=False)
    rows = []
    for s in range(4):
        face = s != 2
        v = s if face else None
        rows.append(
            {
                "second": s,
                "start": s,
                "end": s + 1,
                "face": face,
                "valence": v,
                "arousal": v,
                "valence_score": None if v is None else v + 0.5,
                "arousal_score": None if v is None else v - 0.5,
            }
        )
    w.add("001", rows)
    w.finish(["001"])
    truth = truth_df([("001", s, s, s) for s in range(5)])
    r = score(truth, read_table(out))
    assert (r.matched, r.truth_only, r.pred_only, r.pred_without_face) == (4, 1, 0, 1)
    assert r.metrics["valence"]["accuracy"] == 1.0
    assert r.metrics["valence"]["mae"] == pytest.approx(0.5)


# --- reports -----------------------------------------------------------------------------------


def small_report():
    truth = truth_df([("a", s, v, -v) for s, v in enumerate([-3, 0, 2, 5, 5])])
    pred = pred_df([("a", s, v, None if v is None else -v) for s, v in enumerate([-2, 0, 2, 4, None])])
    return score(truth, pred)


def test_report_json_is_keyed_by_dimension_then_metric():
    r = small_report()
    j = report_json(r)
    assert set(j) >= {"valence", "arousal", "mean", "counts"}
    for key in ("valence", "arousal", "mean"):
        assert list(j[key]) == list(METRICS)
    assert j["counts"]["pred_without_face"] == 1 and j["counts"]["matched"] == 5
    # NaN becomes null so the file is strict JSON.
    empty = score(truth_df([("a", 0, 1, 1)]), pred_df([("a", 0, None, None)]))
    text = json.dumps(report_json(empty), allow_nan=False)
    assert json.loads(text)["valence"]["ccc"] is None


def test_report_markdown_layout():
    r = small_report()
    lines = report_markdown(r).splitlines()
    assert lines[0] == "| Metric | Valence | Arousal | Mean |"
    assert lines[1] == "|---|---:|---:|---:|"
    body = lines[2 : 2 + len(METRICS)]
    assert [row.split(" | ")[0].lstrip("| ") for row in body] == list(METRICS.values())
    assert body[0].startswith("| F1 score") and "| Accuracy |" in "\n".join(body) and "| CCC |" in "\n".join(body)
    ccc_row = next(row for row in body if row.startswith("| CCC |"))
    cells = [c.strip() for c in ccc_row.strip("|").split("|")]
    assert cells[1:] == [
        f"{r.metrics['valence']['ccc']:.3f}",
        f"{r.metrics['arousal']['ccc']:.3f}",
        f"{r.mean['ccc']:.3f}",
    ]
    text = report_markdown(r)
    assert "without a face in the prediction: 1" in text and "valence_score" in text


def test_write_metrics(tmp_path):
    paths = write_metrics(small_report(), tmp_path / "out")
    assert [p.name for p in paths] == ["metrics.json", "metrics.md"]
    assert json.loads(paths[0].read_text())["counts"]["matched"] == 5
    assert paths[1].read_text().startswith("| Metric |")


def test_interval_coverage_and_width_by_hand():
    # clip a: 3 seconds, truth inside twice (one exactly on a float32 bound); clip b: 1 second, outside.
    truth = pd.DataFrame(
        {
            "video": ["a", "a", "a", "b"],
            "second": [0, 1, 2, 0],
            "valence": [1.0, 0.3, 5.0, -2.0],
            "arousal": [0.0, 0.0, 0.0, 0.0],
        }
    )
    pred = truth.rename(columns={"valence": "valence_score", "arousal": "arousal_score"}).assign(
        valence_lo=np.array([0.0, 0.3, 6.0, 0.0], dtype=np.float32),
        valence_hi=[2.5, 1.0, 7.0, 1.0],
        arousal_lo=[-1.0, -1.0, -1.0, -1.0],
        arousal_hi=[1.0, 1.0, 1.0, 1.0],
    )
    report = score(truth, pred)
    v = report.intervals["valence"]
    assert v["coverage"] == pytest.approx(2 / 4) and v["clip_coverage"] == pytest.approx((2 / 3 + 0) / 2)
    assert v["mean_width"] == pytest.approx((2.5 + 0.7 + 1 + 1) / 4, abs=1e-6) and (v["seconds"], v["clips"]) == (4, 2)
    assert report.intervals["arousal"]["coverage"] == 1.0
    assert "valence coverage 50.0% (per clip 33.3%), mean width 1.30" in metrics.intervals_line(report)
    assert metrics.report_json(report)["intervals"]["valence"]["clips"] == 2
    assert score(truth, pred.drop(columns=["arousal_hi"])).intervals is None  # bounds only where all four are
