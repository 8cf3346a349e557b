"""Training data preparation: sampling (the same frames annotate reads), face boxes, cached features."""

import logging
from pathlib import Path

import media
import numpy as np
import pytest
import synthetic_afew

from fercli.datasets import afew, features
from fercli.media.faces import Detection, iou
from fercli.nets.model import Preprocess

REPO = Path(__file__).resolve().parents[1]

from conftest import copy_clip, edit_json  # noqa: E402


def test_sampling_follows_the_model_frame_rate():
    assert features.sample_frames(26, 25.0, 5.0) == [0, 5, 10, 15, 20, 25]
    assert features.sample_frames(12, 30.0, 5.0) == [0, 6]
    # 12.5 frames/s: the frame on screen at 0, .2, .4, .6, .8 s, as annotate reads the same folder
    assert features.sample_frames(11, 12.5, 5.0) == [0, 2, 5, 7, 10]
    assert features.sample_frames(4, 5.0, 5.0) == [0, 1, 2, 3]
    assert features.sample_frames(3, 5.0, 10.0) == [0, 1, 2]  # a faster model never repeats a frame


# --- faces -------------------------------------------------------------------------------------


def test_box_choice_prefers_the_detection_on_the_labelled_face():
    lm = np.array([[100, 100], [200, 220]] * 34, dtype=float)
    on_face, elsewhere = Detection((105, 95, 205, 215), 0.9), Detection((0, 0, 300, 60), 0.95)
    assert features.choose_box([elsewhere, on_face], lm) == (on_face.box, "detector")
    assert features.choose_box([elsewhere], lm) == ((100.0, 100.0, 200.0, 220.0), "landmarks")
    assert features.choose_box([], lm)[1] == "landmarks"
    assert features.choose_box([elsewhere, on_face], None) == (elsewhere.box, "detector")
    assert features.choose_box([], None) is None


def test_detector_boxes_on_rolled_faces_match_the_pasted_face(small, tmp_path):
    clips = [afew.read_dataset(small)[i] for i in (0, 3)]  # complete clips, two rolls each way
    samples, stats = features.prepare(
        clips, fps=5, frames_fps=5, preprocess=Preprocess(size=64), cache=features.FeatureCache(tmp_path)
    )
    assert stats.detected == 24 and stats.from_landmarks == 0
    for s in samples:
        for k in np.flatnonzero(s.present):
            lm = s.clip.labels[int(s.frames[k])].landmarks
            assert iou(tuple(s.boxes[k]), features.landmark_box(lm)) > 0.3
            assert s.sources[k] == "detector"


def test_landmarks_stand_in_where_the_detector_finds_nothing(small, tmp_path):
    folder = copy_clip(small, tmp_path / "d")
    blank = media.background(*synthetic_afew.FRAME_SIZE)
    from PIL import Image

    Image.fromarray(blank).save(folder / "00002.png")  # the face is gone, its landmarks stay
    samples, stats = features.prepare(
        afew.read_dataset(tmp_path / "d"),
        fps=5,
        frames_fps=5,
        preprocess=Preprocess(size=64),
        cache=features.FeatureCache(tmp_path / "c"),
    )
    assert samples[0].sources[2] == "landmarks" and stats.from_landmarks == 1
    assert samples[0].present.all()
    # Landmarks only: no face detector at all.
    samples, stats = features.prepare(
        afew.read_dataset(tmp_path / "d"),
        fps=5,
        frames_fps=5,
        crops="landmarks",
        preprocess=Preprocess(size=64),
        cache=features.FeatureCache(tmp_path / "c"),
    )
    assert stats.detected == 0 and set(samples[0].sources) == {"landmarks"}


def test_missing_and_corrupt_frames_are_skipped_and_said_once_per_clip(small, tmp_path, caplog):
    clips = afew.read_dataset(small)[:3]
    with caplog.at_level(logging.WARNING, logger="fercli"):
        samples, stats = features.prepare(
            clips,
            fps=5,
            frames_fps=5,
            crops="landmarks",
            preprocess=Preprocess(size=64),
            cache=features.FeatureCache(tmp_path),
        )
    assert stats.skipped == 2
    assert samples[1].sources[4] == "missing" and samples[2].sources[6] == "unreadable"
    assert not samples[1].present[4] and np.isnan(samples[1].valence[4])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "clip 002" in warnings[0] and "00004 missing" in warnings[0]
    assert "clip 003" in warnings[1] and "00006 unreadable" in warnings[1]


# --- caches ------------------------------------------------------------------------------------


def test_feature_key_names_weights_crop_settings_and_box_source():
    base = features.feature_key("a" * 64, Preprocess(size=96), "k1")
    assert base == features.feature_key("a" * 64, Preprocess(size=96), "k1")
    assert base != features.feature_key("b" * 64, Preprocess(size=96), "k1")
    assert base != features.feature_key("a" * 64, Preprocess(size=112), "k1")
    assert base != features.feature_key("a" * 64, Preprocess(size=96, margin=0.2), "k1")
    assert base != features.feature_key("a" * 64, Preprocess(size=96), "k2")
    assert features.crop_key("detector") != features.crop_key("landmarks")


def test_boxes_are_cached_and_a_changed_clip_is_recomputed(small, tmp_path):
    folder = copy_clip(small, tmp_path / "d")
    cache = features.FeatureCache(tmp_path / "c")
    kwargs = dict(fps=5, frames_fps=5, preprocess=Preprocess(size=64), cache=cache)
    _, first = features.prepare(afew.read_dataset(tmp_path / "d"), **kwargs)
    _, again = features.prepare(afew.read_dataset(tmp_path / "d"), **kwargs)
    assert first.detected == 12 and again.detected == 0 and again.boxes_cached == 12
    edit_json(folder, lambda d: d["frames"]["00000"].__setitem__("valence", 0))
    _, changed = features.prepare(afew.read_dataset(tmp_path / "d"), **kwargs)
    assert changed.detected == 12


@pytest.mark.parametrize("frames_fps,fps", [(25.0, 5.0), (12.5, 5.0), (30.0, 7.0), (29.97, 5.0), (5.0, 10.0)])
def test_training_samples_the_frames_annotate_reads(tmp_path, frames_fps, fps):
    """One sampling rule: the frames training picks are the ones `fer annotate` reads from the same folder."""
    from PIL import Image

    from fercli.media.decode import open_video

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(37):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i:05d}.png")
    with open_video(folder, frames_fps=frames_fps) as video:
        read = sorted({f.source for f in video.sample(fps)})
        assert all(int(f.image[0, 0, 0]) == f.source for f in video.sample(fps))  # the frame itself
    assert features.sample_frames(37, frames_fps, fps) == read
