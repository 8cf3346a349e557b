"""Ground truth per second (`fercli.datasets.truth.load_truth`): AFEW-VA folders and truth tables,
worked out by hand; Aff-Wild2 truth is tested in test_affwild.py."""

import json

import pandas as pd
import pytest

from fercli.core.errors import DataError
from fercli.datasets.truth import load_truth
from fercli.media.inputs import find_clips


def afew_clip(folder, valence, arousal, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        f"{i:05d}": {"valence": v, "arousal": a, "landmarks": [[0, 0]] * 68}
        for i, (v, a) in enumerate(zip(valence, arousal))
    }
    (folder / f"{folder.name}.json").write_text(json.dumps({"video_id": folder.name, "frames": frames, **extra}))
    for i in range(len(valence)):  # a frame file per label, as AFEW-VA has (find_clips sees an image-sequence clip)
        (folder / f"{i:05d}.png").write_bytes(b"")


def test_afew_va_truth_per_second_by_hand(tmp_path):
    root = tmp_path / "AFEW-VA"
    # At 2 frames/s: second 0 = frames 0-1, second 1 = frames 2-3, second 2 = frame 4.
    afew_clip(root / "001", [1, 3, 5, -2, 0], [-10, 10, 4, 4, 7])
    afew_clip(root / "002", [2, 2, 2], [0, 1, 1])
    truth = load_truth(root, frames_fps=2)
    assert truth.to_dict("records") == [
        {"video": "001", "second": 0, "valence": 2.0, "arousal": 0.0},
        {"video": "001", "second": 1, "valence": 1.5, "arousal": 4.0},
        {"video": "001", "second": 2, "valence": 0.0, "arousal": 7.0},
        {"video": "002", "second": 0, "valence": 2.0, "arousal": 0.5},
        {"video": "002", "second": 1, "valence": 2.0, "arousal": 1.0},
    ]
    # Default 25 frames/s: 30 frames = second 0 (frames 0-24) and second 1 (frames 25-29).
    afew_clip(root / "003", list(range(-10, 11)) + [4] * 9, [1] * 25 + [3] * 5)
    t3 = load_truth(root)[lambda d: d["video"] == "003"]
    assert t3["second"].tolist() == [0, 1]
    # Second 0: -10..10 sum to 0, plus frames 21-24 at 4: 16 / 25. Second 1: all 4.
    assert t3["valence"].tolist() == pytest.approx([16 / 25, 4.0])
    assert t3["arousal"].tolist() == [1.0, 3.0]


def test_afew_va_labels_beside_the_clip_folder_are_read_as_fer_train_reads_them(tmp_path):
    from fercli.datasets.afew import read_dataset

    root = tmp_path / "AFEW-VA"
    afew_clip(root / "001", [1, 3], [2, 4])
    afew_clip(root / "002", [-5, -7], [0, 0])
    (root / "002" / "002.json").rename(root / "002.json")  # <root>/<id>.json beside <root>/<id>/
    assert [c.id for c in read_dataset(root)] == ["001", "002"]  # what training accepts
    truth = load_truth(root, frames_fps=2)
    assert truth.to_dict("records") == [
        {"video": "001", "second": 0, "valence": 2.0, "arousal": 3.0},
        {"video": "002", "second": 0, "valence": -6.0, "arousal": 0.0},
    ]


def test_afew_va_video_names_match_fer_annotate(tmp_path):
    root = tmp_path / "AFEW-VA"
    afew_clip(root / "001", [1], [1])
    afew_clip(root / "part2" / "050", [1], [1])
    clip_names = sorted(c.name for c in find_clips([root]).clips)
    assert clip_names == ["001", "part2/050"]
    assert sorted(set(load_truth(root)["video"])) == clip_names
    # A single clip folder given directly is named after itself, as fer annotate names it.
    assert set(load_truth(root / "001")["video"]) == {c.name for c in find_clips([root / "001"]).clips} == {"001"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"video_id": "001"}), "frames"),
        (json.dumps({"frames": {"00000": {"valence": 1}}}), "arousal"),
        (json.dumps({"frames": {"00000": {"valence": 11, "arousal": 0}}}), "outside"),
        (json.dumps({"frames": {"00000": {"valence": "high", "arousal": 0}}}), "valence"),
        (json.dumps({"frames": {"first": {"valence": 1, "arousal": 0}}}), "frame number"),
    ],
)
def test_afew_va_malformed_json_names_the_file(tmp_path, content, message):
    afew_clip(tmp_path / "ok", [1], [1])
    bad = tmp_path / "007" / "007.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        load_truth(tmp_path)
    assert str(bad) in str(err.value)


def test_truth_folder_without_annotations(tmp_path):
    with pytest.raises(DataError, match="no AFEW-VA"):
        load_truth(tmp_path)
    with pytest.raises(DataError, match="no such"):
        load_truth(tmp_path / "missing")


def test_truth_tables_by_second_and_by_frame(tmp_path):
    by_second = pd.DataFrame({"video": ["1", "1"], "second": [0, 1], "valence": [2, -3], "arousal": [0, 1]})
    by_second.to_csv(tmp_path / "s.csv", index=False)
    t = load_truth(tmp_path / "s.csv")
    assert t["video"].tolist() == ["1", "1"] and t["valence"].tolist() == [2.0, -3.0]  # "1" stays a string
    # Frames at 4 frames/s: frames 0-3 are second 0, 4-5 second 1.
    by_frame = pd.DataFrame({"video": ["x"] * 6, "frame": range(6), "valence": [0, 1, 2, 3, 4, 6], "arousal": [1] * 6})
    by_frame.to_parquet(tmp_path / "f.parquet")
    t = load_truth(tmp_path / "f.parquet", frames_fps=4)
    assert t[["second", "valence"]].values.tolist() == [[0, 1.5], [1, 5.0]]


@pytest.mark.parametrize(
    "df, message",
    [
        (pd.DataFrame({"video": ["a"], "second": [0], "valence": [12], "arousal": [0]}), "outside"),
        (pd.DataFrame({"video": ["a"], "second": [0], "valence": [1]}), "arousal"),
        (pd.DataFrame({"video": ["a", "a"], "second": [0, 0], "valence": [1, 1], "arousal": [0, 0]}), "more than one"),
        (pd.DataFrame({"video": ["a"], "second": [-1], "valence": [1], "arousal": [0]}), "whole numbers"),
    ],
)
def test_bad_truth_tables(tmp_path, df, message):
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=message) as err:
        load_truth(path)
    assert str(path) in str(err.value)
