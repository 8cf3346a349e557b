"""Intervals from a calibration: the difficulty rule, bounds, the file, and the model check."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fercli.core.errors import DataError
from fercli.tables.intervals import (
    Calibration,
    add_intervals,
    check_calibration,
    difficulty,
    load_for_run,
    read_calibration,
    with_intervals,
    write_calibration,
)
from fercli.tables.writers import INTERVAL_COLUMNS

PRE = {"crop": "box", "size": 224, "margin": 0.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
META = {
    "model": "hsemotion",
    "arch": "hsemotion",
    "weights_sha256": "a" * 64,
    "fps": 5.0,
    "window": 1,
    "preprocess": PRE,
    "per_frame": False,
    "per_sample": False,
}


def cal(q=(2.0, 0.5), coverage=0.9) -> Calibration:
    model = {k: META[k] for k in ("arch", "weights_sha256", "fps", "window", "preprocess")}
    return Calibration(
        coverage,
        {"valence": q[0], "arousal": q[1]},
        {**model, "model": "hsemotion"},
        {"valence": 30, "arousal": 30},
        {"valence": 300, "arousal": 290},
    )


def test_difficulty_by_hand():
    # sqrt(sd^2 + 1): a steady second 1, sd 3 -> sqrt(10), no spread (one sample) -> sqrt(2)
    assert difficulty([0.0, 3.0, np.nan]).tolist() == pytest.approx([1.0, math.sqrt(10), math.sqrt(2)])


def test_bounds_by_hand_clipped_to_the_scale_and_null_without_a_face():
    df = pd.DataFrame(
        {
            "video": "a",
            "second": [0, 1, 2],
            "valence_score": [1.0, 9.0, None],
            "arousal_score": [-2.0, -9.5, None],
            "valence_sd": [0.0, 3.0, None],
            "arousal_sd": [None, 0.0, None],
            "samples": [5, 5, 0],
            "face_share": [1.0, 1.0, 0.0],
        }
    )
    out = add_intervals(df, cal(q=(2.0, 0.5)))
    assert list(out.columns) == list(df.columns[:-1]) + list(INTERVAL_COLUMNS) + ["face_share"]
    # valence: 1 +- 2*1; 9 +- 2*sqrt(10) clipped at 10. arousal: -2 +- 0.5*sqrt(2); -9.5 +- 0.5 clipped at -10.
    assert out.valence_lo.tolist()[:2] == pytest.approx([-1.0, 9 - 2 * math.sqrt(10)])
    assert out.valence_hi.tolist()[:2] == pytest.approx([3.0, 10.0])
    assert out.arousal_lo.tolist()[:2] == pytest.approx([-2 - 0.5 * math.sqrt(2), -10.0])
    assert out.arousal_hi.tolist()[:2] == pytest.approx([-2 + 0.5 * math.sqrt(2), -9.0])
    assert out.loc[2, list(INTERVAL_COLUMNS)].isna().all()


def test_rows_get_the_same_bounds_as_a_table():
    rng = np.random.default_rng(0)
    rows = [
        {"second": s, "valence_score": float(v), "arousal_score": float(a), "valence_sd": float(sv), "arousal_sd": None}
        for s, (v, a, sv) in enumerate(rng.uniform(-10, 10, (6, 3)))
    ]
    rows.append({"second": 6, "valence_score": None, "arousal_score": None, "valence_sd": None, "arousal_sd": None})
    got = pd.DataFrame(with_intervals(rows, cal()))
    want = add_intervals(pd.DataFrame(rows).assign(samples=1), cal())
    for col in INTERVAL_COLUMNS:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), equal_nan=True)
    assert got.loc[6, "valence_lo"] is None or math.isnan(got.loc[6, "valence_lo"])


def test_file_round_trip_and_garbage_is_one_line(tmp_path):
    path = write_calibration(cal(), tmp_path / "calibration.json")
    assert read_calibration(path) == cal()
    for name, text in {
        "a.json": "[1]",
        "b.json": "{",
        "c.json": json.dumps({"fer_calibration": 99}),
        "d.json": json.dumps({**cal().to_json(), "coverage": 1.5}),
        "e.json": json.dumps({**cal().to_json(), "quantiles": {"valence": 1}}),
    }.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as e:
            read_calibration(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "change",
    [
        {"weights_sha256": "b" * 64},
        {"preprocess": {**PRE, "crop": "square"}},
        {"preprocess": {**PRE, "mean": [0.5, 0.5, 0.5]}},
        {"fps": 10.0},
        {"window": 5, "arch": "efficientnet_b0"},
    ],
)
def test_a_calibration_of_another_model_or_preprocessing_is_refused(change):
    check_calibration(cal(), META, "cal.json", "t.parquet")  # its own model passes
    with pytest.raises(DataError) as e:
        check_calibration(cal(), {**META, **change}, "cal.json", "t.parquet")
    message = str(e.value)
    assert message.startswith("cal.json: made for another model") and "\n" not in message
    assert all(key in message for key in change)


def test_rows_per_sample_and_tables_without_metadata_are_refused():
    with pytest.raises(DataError, match=r"^cal\.json: calibrated per second"):
        check_calibration(cal(), {**META, "per_sample": True}, "cal.json", "t.parquet")
    with pytest.raises(DataError, match=r"^t\.csv: records no model"):
        check_calibration(cal(), None, "cal.json", "t.csv")


def test_a_run_with_a_calibration_records_it_and_refuses_another_models(tmp_path):
    path = write_calibration(cal(), tmp_path / "calibration.json")
    got, meta = load_for_run(path, META, "out.parquet")
    assert got == cal() and meta["calibration"]["quantiles"] == {"valence": 2.0, "arousal": 0.5}
    assert meta["calibration_file"] == str(path) and {k: meta[k] for k in META} == META
    with pytest.raises(
        DataError, match=r"calibration\.json: made for another model or preprocessing than out\.parquet"
    ):
        load_for_run(path, {**META, "weights_sha256": "f" * 64}, "out.parquet")
