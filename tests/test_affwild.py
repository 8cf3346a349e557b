"""Aff-Wild2 (ABAW VA) layout: reading, checks, layout detection, class mapping and ABAW CCC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fercli import affwild, metrics
from fercli.errors import DataError


def make_affwild(root: Path, videos: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Train_Set/Validation_Set txts + cropped_aligned jpgs; every 7th frame -5, every 5th jpg missing."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (vid, n) in enumerate(sorted(videos.items())):
        split = "Train_Set" if i % 2 == 0 else "Validation_Set"
        va = np.round(rng.uniform(-1, 1, (n, 2)), 3)
        va[::7] = -5
        d = root / "VA_Estimation_Challenge" / split
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{vid}.txt").write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in va))
        crops = root / "cropped_aligned" / vid
        crops.mkdir(parents=True, exist_ok=True)
        for f in range(n):
            if f % 5 != 4:
                level = int(128 + 100 * va[f, 0]) if va[f, 0] != -5 else 128
                Image.new("RGB", (16, 16), (level, level, level)).save(crops / f"{f + 1:05d}.jpg")
        out[vid] = va
    return out


def test_reads_layout_with_no_label_frames_missing_jpgs_and_pairs(tmp_path):
    truth = make_affwild(tmp_path, {"video10_1": 20, "10-60-1280x720_left": 15, "10-60-1280x720_right": 15})
    clips = {c.id: c for c in affwild.read_dataset(tmp_path)}
    assert set(clips) == set(truth)
    c = clips["video10_1"]
    va = truth["video10_1"]
    np.testing.assert_array_equal(np.isnan(c.valence), va[:, 0] == -5)
    np.testing.assert_allclose(c.arousal[va[:, 1] != -5], va[va[:, 1] != -5, 1])
    assert 4 not in c.images and c.images[0].name == "00001.jpg"
    assert clips["10-60-1280x720_left"].source == clips["10-60-1280x720_right"].source == "10-60-1280x720"
    assert {c.split for c in clips.values()} == {"train", "val"}
    v, _a = c.classes()
    m = va[:, 0] != -5
    assert np.all(np.abs(v - va[m, 0] * 10) <= 0.5) and v.min() >= -10 and v.max() <= 10


@pytest.mark.parametrize("text, word", [
    ("val,aro\n0.1,0.2\n", "first line"),
    ("valence,arousal\n0.1,x\n", "line 2"),
    ("valence,arousal\n0.1,0.2\n1.5,0\n", "line 3"),
])
def test_malformed_txt_is_one_line_error_naming_file(tmp_path, text, word):
    p = tmp_path / "v.txt"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        affwild.read_clip(p)
    assert str(p) in str(e.value) and word in str(e.value) and "\n" not in str(e.value)


def test_more_frames_than_lines_is_an_error(tmp_path):
    make_affwild(tmp_path, {"v1": 6})
    txt = next(tmp_path.rglob("v1.txt"))
    txt.write_text("valence,arousal\n0,0\n0,0\n")
    with pytest.raises(DataError, match="frame lines"):
        affwild.read_dataset(tmp_path)


def test_detect_layout(tmp_path):
    make_affwild(tmp_path / "aw", {"v1": 5})
    assert affwild.detect_layout(tmp_path / "aw") == "affwild"
    (tmp_path / "af" / "001").mkdir(parents=True)
    (tmp_path / "af" / "001" / "001.json").write_text("{}")
    assert affwild.detect_layout(tmp_path / "af") == "afew"
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="neither"):
        affwild.detect_layout(tmp_path / "none")


def test_abaw_ccc_pools_labelled_frames_matches_numpy():
    rng = np.random.default_rng(1)
    t = rng.uniform(-1, 1, (2, 50))
    p = 0.7 * t + rng.normal(0, 0.3, t.shape)
    t[:, ::6] = np.nan

    def ref(x, y):
        k = ~np.isnan(x)
        x, y = x[k], y[k]
        return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    got = metrics.abaw_ccc({"valence": t[0], "arousal": t[1]}, {"valence": p[0], "arousal": p[1]})
    assert got["valence"] == pytest.approx(ref(t[0], p[0]))
    assert got["arousal"] == pytest.approx(ref(t[1], p[1]))
    assert got["mean"] == pytest.approx((ref(t[0], p[0]) + ref(t[1], p[1])) / 2)


def test_benchmark_accuracy_scores_affwild_truth_per_second_and_abaw_pooled(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from fercli.cli import app

    fps = 10.0
    truth = make_affwild(tmp_path / "aw", {"video1": 47, "video2_left": 33}, seed=3)
    rng = np.random.default_rng(5)
    rows = []
    for vid, va in truth.items():
        for second in range(int(np.ceil(len(va) / fps))):
            v, a = rng.uniform(-9, 9, 2)
            rows.append({"video": vid, "second": second, "valence": int(round(v)), "arousal": int(round(a)),
                         "valence_score": v, "arousal_score": a})
    rows = rows[:-1]  # the last second of video2_left has no prediction: its frames are left out
    pred = pd.DataFrame(rows)
    pred.to_csv(tmp_path / "pred.csv", index=False)

    # Hand reference: every labelled frame takes its second's score, all frames pooled, on -1..1.
    by_key = {(r["video"], r["second"]): r for r in rows}
    t, p, missing = {"valence": [], "arousal": []}, {"valence": [], "arousal": []}, 0
    for vid, va in truth.items():
        for i, (v, a) in enumerate(va):
            row = by_key.get((vid, int(i // fps)))
            for d, x in (("valence", v), ("arousal", a)):
                if x != -5 and row is not None:
                    t[d].append(x)
                    p[d].append(row[f"{d}_score"] / 10)
            missing += v != -5 and row is None

    def ccc(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["benchmark", "accuracy", "--truth", str(tmp_path / "aw"), "--pred",
                                      str(tmp_path / "pred.csv"), "--frames-fps", str(fps), "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads((out / "metrics.json").read_text())
    assert got["abaw"]["valence"] == pytest.approx(ccc(t["valence"], p["valence"]), abs=1e-9)
    assert got["abaw"]["arousal"] == pytest.approx(ccc(t["arousal"], p["arousal"]), abs=1e-9)
    assert got["abaw"]["mean"] == pytest.approx((got["abaw"]["valence"] + got["abaw"]["arousal"]) / 2)
    assert got["abaw"]["frames_without_prediction"] == missing > 0
    assert "ABAW score" in (out / "metrics.md").read_text()
    # Per second too: the truth of a second is the mean of its labelled frames times 10.
    va = truth["video1"][:10]
    expect = va[va[:, 0] != -5, 0].mean() * 10
    table = metrics.load_truth(tmp_path / "aw", fps)
    assert table.set_index(["video", "second"]).loc[("video1", 0), "valence"] == pytest.approx(expect)
