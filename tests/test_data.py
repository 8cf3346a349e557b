import json
import logging
from pathlib import Path

import numpy as np
import pytest

import afew
import media
from fercli import data
from fercli.errors import DataError
from fercli.faces import Detection, iou
from fercli.model import Preprocess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """6 clips x 12 frames, 3 actors; frame 4 of clip 002 missing, frame 6 of clip 003 truncated."""
    root = tmp_path_factory.mktemp("afew-small")
    afew.make_dataset(root, clips=6, frames=12, actors=3, missing={"002": [4]}, corrupt={"003": [6]})
    return root


def copy_clip(src: Path, dst_root: Path, cid: str = "001") -> Path:
    import shutil

    shutil.copytree(src / cid, dst_root / cid)
    return dst_root / cid


def edit_json(folder: Path, edit) -> None:
    path = folder / f"{folder.name}.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


# --- reading and checking ----------------------------------------------------------------------


def test_reads_clips_actors_labels_and_landmarks(small):
    clips = data.read_dataset(small)
    assert [c.id for c in clips] == ["001", "002", "003", "004", "005", "006"]
    assert clips[0].actor == "actor00" and clips[3].actor == "actor00"
    assert clips[0].n_frames == 12 and len(clips[0].images) == 12
    assert 4 not in clips[1].images  # the missing frame
    label = clips[0].labels[0]
    assert -10 <= label.valence <= 10 and abs(label.arousal) == afew.AROUSAL
    assert label.landmarks.shape == (68, 2)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.__setitem__("frames", []), "malformed JSON"),
        (lambda d: d["frames"]["00003"].__setitem__("valence", 11), "frame 00003: valence 11 is outside -10..10"),
        (lambda d: d["frames"]["00002"].__setitem__("arousal", -12), "arousal -12 is outside"),
        (lambda d: d["frames"]["00001"].__setitem__("valence", "high"), "not an integer label"),
        (lambda d: d["frames"]["00001"].__setitem__("arousal", 2.5), "not an integer label"),
        (lambda d: d["frames"]["00001"].__setitem__("landmarks", [[1, 2]] * 5), "landmarks must be 68"),
        (lambda d: d["frames"].__setitem__("frame7", d["frames"]["00001"]), "not a frame number"),
        (lambda d: d.__setitem__("video_id", "999"), "does not match the folder"),
    ],
)
def test_bad_labels_are_clear_errors_naming_the_clip(small, tmp_path, edit, message):
    folder = copy_clip(small, tmp_path)
    edit_json(folder, edit)
    with pytest.raises(DataError, match=message) as err:
        data.read_dataset(tmp_path)
    assert "clip 001" in str(err.value)


def test_unparsable_json_names_the_clip(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    (folder / "001.json").write_text('{"frames": {"00000": ')
    with pytest.raises(DataError, match=r"clip 001 .*malformed JSON"):
        data.read_dataset(tmp_path)


def test_missing_folder_or_label_file_names_the_clip(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    (folder / "001.json").rename(tmp_path / "001.json")  # labels beside the root are accepted...
    assert [c.id for c in data.read_dataset(tmp_path)] == ["001"]
    (tmp_path / "001.json").rename(tmp_path / "007.json")  # ...but labels whose folder is gone are not
    with pytest.raises(DataError, match=r"clip 007: .*frames folder .* is missing"):
        data.read_dataset(tmp_path)
    (tmp_path / "007.json").unlink()
    with pytest.raises(DataError, match=r"clip 001 .*no label file 001.json"):
        data.read_dataset(tmp_path)
    with pytest.raises(DataError, match="no such data folder"):
        data.read_dataset(tmp_path / "nowhere")


def test_sampling_follows_the_model_frame_rate():
    assert data.sample_frames(26, 25.0, 5.0) == [0, 5, 10, 15, 20, 25]
    assert data.sample_frames(12, 30.0, 5.0) == [0, 6]
    assert data.sample_frames(11, 12.5, 5.0) == [0, 3, 5, 8, 10]  # round half up: 2.5 -> 3
    assert data.sample_frames(4, 5.0, 5.0) == [0, 1, 2, 3]
    assert data.sample_frames(3, 5.0, 10.0) == [0, 1, 2]  # a faster model never repeats a frame


# --- faces -------------------------------------------------------------------------------------


def test_box_choice_prefers_the_detection_on_the_labelled_face():
    lm = np.array([[100, 100], [200, 220]] * 34, dtype=float)
    on_face, elsewhere = Detection((105, 95, 205, 215), 0.9), Detection((0, 0, 300, 60), 0.95)
    assert data.choose_box([elsewhere, on_face], lm) == (on_face.box, "detector")
    assert data.choose_box([elsewhere], lm) == ((100.0, 100.0, 200.0, 220.0), "landmarks")
    assert data.choose_box([], lm)[1] == "landmarks"
    assert data.choose_box([elsewhere, on_face], None) == (elsewhere.box, "detector")
    assert data.choose_box([], None) is None


def test_detector_boxes_on_rolled_faces_match_the_pasted_face(small, tmp_path):
    clips = [data.read_dataset(small)[i] for i in (0, 3)]  # complete clips, two rolls each way
    samples, stats = data.prepare(clips, fps=5, frames_fps=5, preprocess=Preprocess(size=64),
                                  cache=data.FeatureCache(tmp_path))
    assert stats.detected == 24 and stats.from_landmarks == 0
    for s in samples:
        for k in np.flatnonzero(s.present):
            lm = s.clip.labels[int(s.frames[k])].landmarks
            assert iou(tuple(s.boxes[k]), data.landmark_box(lm)) > 0.3
            assert s.sources[k] == "detector"


def test_landmarks_stand_in_where_the_detector_finds_nothing(small, tmp_path):
    folder = copy_clip(small, tmp_path / "d")
    blank = media.background(*afew.FRAME_SIZE)
    from PIL import Image

    Image.fromarray(blank).save(folder / "00002.png")  # the face is gone, its landmarks stay
    samples, stats = data.prepare(data.read_dataset(tmp_path / "d"), fps=5, frames_fps=5,
                                  preprocess=Preprocess(size=64), cache=data.FeatureCache(tmp_path / "c"))
    assert samples[0].sources[2] == "landmarks" and stats.from_landmarks == 1
    assert samples[0].present.all()
    # Landmarks only: no MediaPipe at all.
    samples, stats = data.prepare(data.read_dataset(tmp_path / "d"), fps=5, frames_fps=5, crops="landmarks",
                                  preprocess=Preprocess(size=64), cache=data.FeatureCache(tmp_path / "c"))
    assert stats.detected == 0 and set(samples[0].sources) == {"landmarks"}


def test_missing_and_corrupt_frames_are_skipped_and_said_once_per_clip(small, tmp_path, caplog):
    clips = data.read_dataset(small)[:3]
    with caplog.at_level(logging.WARNING, logger="fercli"):
        samples, stats = data.prepare(clips, fps=5, frames_fps=5, crops="landmarks",
                                      preprocess=Preprocess(size=64), cache=data.FeatureCache(tmp_path))
    assert stats.skipped == 2
    assert samples[1].sources[4] == "missing" and samples[2].sources[6] == "unreadable"
    assert not samples[1].present[4] and np.isnan(samples[1].valence[4])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "clip 002" in warnings[0] and "00004 missing" in warnings[0]
    assert "clip 003" in warnings[1] and "00006 unreadable" in warnings[1]


# --- windows -----------------------------------------------------------------------------------


def fake_samples(present, valence, arousal=None) -> data.ClipSamples:
    present = np.asarray(present, bool)
    n = len(present)
    v = np.where(present, np.asarray(valence, float), np.nan)
    a = np.where(present, np.asarray(arousal if arousal is not None else valence, float), np.nan)
    clip = data.AfewClip("x", Path("x"), None, {}, {}, Path("x/x.json"))
    return data.ClipSamples(clip, np.arange(n), present, v, a, np.zeros((n, 4)), ["detector"] * n)


def test_fill_index_repeats_the_last_good_sample_like_annotate():
    assert data.fill_index(np.array([1, 0, 0, 1, 0], bool)).tolist() == [0, 0, 0, 3, 3]
    assert data.fill_index(np.array([0, 0, 1, 1, 0], bool)).tolist() == [2, 2, 2, 3, 3]


def test_windows_mean_their_present_labels_and_round_to_classes():
    s = fake_samples([1, 1, 0, 1, 1, 1], [1, 2, 9, 4, 5, 6])
    w = data.make_windows([s], window=3, stride=1)
    assert w.end.tolist() == [2, 3, 4, 5]
    assert w.index.tolist() == [[0, 1, 1], [1, 1, 3], [1, 3, 4], [3, 4, 5]]
    np.testing.assert_allclose(w.valence, [1.5, 3.0, 4.5, 5.0])  # the skipped sample's 9 never counts
    assert (w.valence_class - 10).tolist() == [2, 3, 5, 5]  # half away from zero
    assert data.make_windows([s], window=3, stride=2).end.tolist() == [2, 4]


def test_short_clip_gives_one_left_padded_window():
    w = data.make_windows([fake_samples([1, 1], [-3, -4])], window=5)
    assert w.index.tolist() == [[0, 0, 0, 0, 1]] and w.valence.tolist() == [-3.5]
    assert (w.valence_class - 10).tolist() == [-4]


def test_synthetic_arousal_is_the_roll_direction_only(small):
    """The generator's contract: a window played backwards holds the same frames, opposite label."""
    truth = afew.make_dataset(small.parent / "truth-only", clips=3, frames=30, actors=3, seed=5)
    for t in truth.values():
        steps = np.diff(t.roll)
        assert set(np.abs(steps)) == {afew.ROLL_STEP}
        assert max(np.abs(t.roll)) <= afew.MAX_ROLL
        assert (np.asarray(t.arousal[1:]) == afew.AROUSAL * np.sign(steps)).all()
        for s in range(len(steps) - 4):  # reversed window: the same rolls, the opposite label
            rolls = np.asarray(t.roll[s : s + 5])
            assert sorted(rolls[::-1]) == sorted(rolls)
            assert np.sign(np.diff(rolls[::-1])).sum() == -np.sign(np.diff(rolls)).sum()


# --- splits ------------------------------------------------------------------------------------


def clips_with_actors(n: int, actors: int | None):
    return [data.AfewClip(f"{i:03d}", Path(f"{i:03d}"), f"a{i % actors}" if actors else None, {0: None}, {},
                          Path("x.json")) for i in range(1, n + 1)]


@pytest.mark.parametrize("actors", [None, 7, 20])
def test_clip_split_is_disjoint_by_clip_and_actor_and_seeded(actors):
    clips = clips_with_actors(100, actors)
    split = data.split_clips(clips, seed=0)
    parts = split.parts
    assert sorted(sum(parts.values(), [])) == [c.id for c in clips]
    actor = {c.id: c.actor or c.id for c in clips}
    seen = [{actor[c] for c in parts[p]} for p in data.PARTS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert all(parts[p] for p in data.PARTS)
    if actors != 7:  # with 7 actors of ~14 clips, shares can only be near their ratios
        assert abs(len(parts["train"]) - 70) <= 5 and abs(len(parts["test"]) - 15) <= 5
    assert data.split_clips(clips, seed=0).parts == parts
    assert data.split_clips(clips, seed=1).parts != parts


def test_split_file_lists_are_checked(tmp_path):
    clips = clips_with_actors(6, 3)
    split = data.split_clips(clips, lists={"train": ["001", "004"], "val": ["002", "005"], "test": ["003", "006"]})
    assert split.parts["val"] == ["002", "005"]
    with pytest.raises(DataError, match="clip 042: named in the split's test list"):
        data.split_clips(clips, lists={"train": ["001"], "val": ["002"], "test": ["042"]})
    with pytest.raises(DataError, match="clip 004: actor 'a1' is in both train and test"):
        data.split_clips(clips, lists={"train": ["001"], "val": ["002"], "test": ["004"]})
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["001"], "val": ["002"]}))
    with pytest.raises(DataError, match="needs all of train, val, test"):
        data.read_split_file(bad)
    bad.write_text(json.dumps({"ratios": {"train": 0.9, "val": 0.2, "test": 0.1}}))
    with pytest.raises(DataError, match="sum to 1"):
        data.read_split_file(bad)


def test_default_split_file_documents_the_code_defaults():
    doc = data.read_split_file(REPO / "train" / "splits" / "afew-va-clip-split.json")
    assert doc["seed"] == data.DEFAULT_SPLIT_SEED and doc["ratios"] == data.DEFAULT_RATIOS
    assert doc["kind"] == "clip" and not any(p in doc for p in data.PARTS)


def test_window_split_shares_clips_between_parts():
    s = [fake_samples([1] * 20, range(20)), fake_samples([1] * 20, range(20))]
    w = data.make_windows(s, window=5)
    split, rows = data.split_windows(w, s, seed=3)
    assert split.kind == "window"
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(w)))
    assert set(w.clip[rows["train"]]) & set(w.clip[rows["test"]])  # the leak this split is kept to show


# --- caches ------------------------------------------------------------------------------------


def test_feature_key_names_weights_crop_settings_and_box_source():
    base = data.feature_key("a" * 64, Preprocess(size=96), "k1")
    assert base == data.feature_key("a" * 64, Preprocess(size=96), "k1")
    assert base != data.feature_key("b" * 64, Preprocess(size=96), "k1")
    assert base != data.feature_key("a" * 64, Preprocess(size=112), "k1")
    assert base != data.feature_key("a" * 64, Preprocess(size=96, margin=0.2), "k1")
    assert base != data.feature_key("a" * 64, Preprocess(size=96), "k2")
    assert data.crop_key("detector") != data.crop_key("landmarks")


def test_boxes_are_cached_and_a_changed_clip_is_recomputed(small, tmp_path):
    folder = copy_clip(small, tmp_path / "d")
    cache = data.FeatureCache(tmp_path / "c")
    kwargs = dict(fps=5, frames_fps=5, preprocess=Preprocess(size=64), cache=cache)
    _, first = data.prepare(data.read_dataset(tmp_path / "d"), **kwargs)
    _, again = data.prepare(data.read_dataset(tmp_path / "d"), **kwargs)
    assert first.detected == 12 and again.detected == 0 and again.boxes_cached == 12
    edit_json(folder, lambda d: d["frames"]["00000"].__setitem__("valence", 0))
    _, changed = data.prepare(data.read_dataset(tmp_path / "d"), **kwargs)
    assert changed.detected == 12
