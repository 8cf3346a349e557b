"""Aff-Wild2 (ABAW VA) layout: reading, checks, layout detection, class mapping and ABAW CCC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic_afew
from PIL import Image

from fercli.core.errors import DataError
from fercli.datasets import affwild, features, splits
from fercli.datasets.features import labelled_clips
from fercli.datasets.truth import load_truth
from fercli.nets.model import Preprocess
from fercli.scoring import metrics


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


@pytest.mark.parametrize(
    "text, word",
    [
        ("val,aro\n0.1,0.2\n", "first line"),
        ("valence,arousal\n0.1,x\n", "line 2"),
        ("valence,arousal\n0.1,0.2\n1.5,0\n", "line 3"),
    ],
)
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
            rows.append(
                {
                    "video": vid,
                    "second": second,
                    "valence": int(round(v)),
                    "arousal": int(round(a)),
                    "valence_score": v,
                    "arousal_score": a,
                }
            )
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
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "accuracy",
            "--truth",
            str(tmp_path / "aw"),
            "--pred",
            str(tmp_path / "pred.csv"),
            "--frames-fps",
            str(fps),
            "--out",
            str(out),
        ],
    )
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
    table = load_truth(tmp_path / "aw", fps)
    assert table.set_index(["video", "second"]).loc[("video1", 0), "valence"] == pytest.approx(expect)


# --- training on the layout ----------------------------------------------------------------------


# Train_Set: 14 source videos (one two-person pair among them); Validation_Set: 4, a pair among them.
AFFWILD_VIDEOS = {
    **{f"video{i}": "Train_Set" for i in range(1, 13)},
    "20-30-640x480_left": "Train_Set",
    "20-30-640x480_right": "Train_Set",
    "video9": "Train_Set",
    "video30": "Validation_Set",
    "video31": "Validation_Set",
    "40-30-1280x720_left": "Validation_Set",
    "40-30-1280x720_right": "Validation_Set",
}
FAST = dict(
    backbone="efficientnet_b0",
    init="random",
    frames_fps=5.0,
    image_size=96,
    hidden=64,
    batch_size=16,
    lr=2e-3,
    patience=6,
    epochs=30,
)


@pytest.fixture(scope="module")
def affwild_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("affwild2")
    synthetic_afew.make_affwild(root, AFFWILD_VIDEOS, frames=40)
    return root


@pytest.fixture(scope="module")
def affwild_run(affwild_root, tmp_path_factory):
    from fercli.training.loop import train
    from fercli.training.options import TrainOptions

    return train(
        TrainOptions(
            affwild_root, tmp_path_factory.mktemp("runs") / "aw", cache_dir=tmp_path_factory.mktemp("feat"), **FAST
        )
    )


def test_training_clips_take_labelled_frames_times_ten_and_group_pairs(affwild_root):
    clips = {c.id: c for c in labelled_clips(affwild_root)}
    raw = {c.id: c for c in affwild.read_dataset(affwild_root)}
    assert set(clips) == set(AFFWILD_VIDEOS)
    c, r = clips["video1"], raw["video1"]
    labelled = np.flatnonzero(~np.isnan(r.valence))
    assert sorted(c.labels) == labelled.tolist() and len(labelled) < len(r.valence)  # -5 frames carry no label
    np.testing.assert_allclose([c.labels[i].valence for i in labelled], r.valence[labelled] * 10)
    assert c.aligned and c.part == "train" and clips["video30"].part == "val"
    assert clips["20-30-640x480_left"].actor == clips["20-30-640x480_right"].actor == "20-30-640x480"


def test_aligned_crop_is_the_whole_image_resized_without_detection(affwild_root, tmp_path, monkeypatch):
    import fercli.media.faces

    def no_detector(*a, **k):
        raise AssertionError("an aligned crop must not be run through the detector")

    monkeypatch.setattr(fercli.media.faces, "FaceDetector", no_detector)
    clip = next(c for c in labelled_clips(affwild_root) if c.id == "video2")
    pre = Preprocess(size=64, margin=0.2)
    samples, stats = features.prepare(
        [clip], fps=5.0, frames_fps=5.0, preprocess=pre, cache=features.FeatureCache(tmp_path)
    )
    s = samples[0]
    assert stats.detected == 0 and set(np.array(s.sources)[s.present]) == {features.ALIGNED}
    assert not s.present[np.isin(s.frames, [8, 17, 26])].any()  # the -5 frames
    k = int(np.flatnonzero(s.present)[0])
    crop = features.face_crop(clip, int(s.frames[k]), s.boxes[k], pre)
    ref = np.asarray(Image.open(clip.images[int(s.frames[k])]).convert("RGB").resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(crop, ref)


def test_validation_set_is_the_test_part_and_pairs_stay_together(affwild_root):
    clips = labelled_clips(affwild_root)
    split = splits.split_predefined(clips, seed=3)
    assert split.parts["test"] == sorted(v for v, p in AFFWILD_VIDEOS.items() if p == "Validation_Set")
    assert split.parts["val"] and set(split.parts["train"]) | set(split.parts["val"]) == {
        v for v, p in AFFWILD_VIDEOS.items() if p == "Train_Set"
    }
    pair = {"20-30-640x480_left", "20-30-640x480_right"}
    assert pair <= set(split.parts["train"]) or pair <= set(split.parts["val"])


@pytest.mark.slow
def test_fer_train_learns_on_affwild_and_its_checkpoint_scores(affwild_run, affwild_root):
    import json

    run = affwild_run
    assert run.test["ccc_valence"] > 0.8  # the held-out Validation_Set videos
    split = json.loads((run.out / "split.json").read_text())
    assert split["test"] == sorted(v for v, p in AFFWILD_VIDEOS.items() if p == "Validation_Set")
    assert split["source"].startswith("data set")
    config = json.loads((run.out / "config.json").read_text())
    assert config["options"]["data"] == str(affwild_root)


def test_fer_train_command_reads_the_affwild_layout(tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    root = tmp_path / "affwild2"  # short videos: this is about the layout and the split, at 224 px
    synthetic_afew.make_affwild(root, AFFWILD_VIDEOS, frames=12)
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--init",
            "random",
            "--epochs",
            "1",
            "--frames-fps",
            "5",
        ],
    )
    assert r.exit_code == 0, r.output
    import json

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test"] == sorted(v for v, p in AFFWILD_VIDEOS.items() if p == "Validation_Set")


def test_affwild_root_without_aligned_crops_is_a_one_line_error(tmp_path):
    d = tmp_path / "annotations" / "Train_Set"
    d.mkdir(parents=True)
    (d / "video1.txt").write_text("valence,arousal\n0.1,0.2\n")
    with pytest.raises(DataError) as e:
        labelled_clips(tmp_path)
    assert "aligned crops" in str(e.value) and "\n" not in str(e.value)


def _annotations(root: Path) -> Path:
    return root / "VA_Estimation_Challenge" / "Train_Set"


def test_a_bom_before_the_header_is_read_as_utf8_text(tmp_path):
    make_affwild(tmp_path, {"a": 10, "b": 10, "c": 10})
    path = _annotations(tmp_path) / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows' Notepad saves UTF-8
    assert [c.id for c in affwild.read_dataset(tmp_path)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"valence;arousal\n0.1;0.2\n", r"a\.txt: first line must be 'valence,arousal'"),
        (
            b"valence,arousal\n0.1,0.2\n" + b"0.1,0.2\n" * 2000 + b"0.3,0.\xe9\n",
            r"a\.txt: line 2003: byte 0xe9 is not UTF-8",
        ),
        (b"vale\xffnce,arousal\n0.1,0.2\n", r"a\.txt: line 1: byte 0xff is not UTF-8"),
    ],
)
def test_an_annotation_file_that_cannot_be_read_is_named_not_skipped(tmp_path, content, message):
    # It sits beside the other annotation files: leaving its video out would train on 4 of 5.
    make_affwild(tmp_path, {"a": 10, "b": 10, "c": 10})
    (_annotations(tmp_path) / "a.txt").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        affwild.read_dataset(tmp_path)
    assert "\n" not in str(err.value)


def test_text_files_outside_the_annotation_folders_are_not_annotations(tmp_path):
    make_affwild(tmp_path, {"a": 10, "b": 10})
    (tmp_path / "README.txt").write_text("Aff-Wild2, downloaded 2026\n")
    (tmp_path / "cropped_aligned" / "notes.txt").write_bytes(b"\xff\xfe")
    assert [c.id for c in affwild.read_dataset(tmp_path)] == ["a", "b"]


def test_a_crop_named_with_a_non_ascii_digit_is_not_a_frame(tmp_path):
    make_affwild(tmp_path, {"a": 10})
    Image.new("RGB", (16, 16)).save(tmp_path / "cropped_aligned" / "a" / "².jpg")
    (clip,) = affwild.read_dataset(tmp_path)
    assert sorted(clip.images) == [i for i in range(10) if i % 5 != 4]


def test_a_frame_with_one_value_marked_minus_5_has_no_label_and_trains(tmp_path):
    truth = make_affwild(tmp_path / "aw", {"video1": 20, "video2": 8, "video3": 8, "video4": 8})
    txt = tmp_path / "aw" / "VA_Estimation_Challenge" / "Train_Set" / "video1.txt"
    va = truth["video1"].copy()
    va[1::3, 1] = -5  # arousal alone unlabelled on these frames, valence kept
    txt.write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in va))
    both = np.flatnonzero((va[:, 0] != -5) & (va[:, 1] != -5))
    (clip,) = [c for c in affwild.read_dataset(tmp_path / "aw") if c.id == "video1"]
    assert np.flatnonzero(clip.labelled).tolist() == both.tolist()
    assert sorted(next(c for c in labelled_clips(tmp_path / "aw") if c.id == "video1").labels) == both.tolist()
    from fercli.training import TrainOptions, train

    run = train(TrainOptions(tmp_path / "aw", tmp_path / "run", init="random", image_size=64, epochs=1, frames_fps=5.0))
    assert run.epochs == 1
