"""Splits by clip and actor, and by window."""

import json
from pathlib import Path

import numpy as np
import pytest

from fercli.core.errors import DataError
from fercli.datasets import afew, examples, splits

REPO = Path(__file__).resolve().parents[1]

from conftest import fake_samples  # noqa: E402

# --- splits ------------------------------------------------------------------------------------


def clips_with_actors(n: int, actors: int | None):
    return [
        afew.AfewClip(f"{i:03d}", Path(f"{i:03d}"), f"a{i % actors}" if actors else None, {0: None}, {}, Path("x.json"))
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize("actors", [None, 7, 20])
def test_clip_split_is_disjoint_by_clip_and_actor_and_seeded(actors):
    clips = clips_with_actors(100, actors)
    split = splits.split_clips(clips, seed=0)
    parts = split.parts
    assert sorted(sum(parts.values(), [])) == [c.id for c in clips]
    actor = {c.id: c.actor or c.id for c in clips}
    seen = [{actor[c] for c in parts[p]} for p in splits.PARTS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert all(parts[p] for p in splits.PARTS)
    if actors != 7:  # with 7 actors of ~14 clips, shares can only be near their ratios
        assert abs(len(parts["train"]) - 70) <= 5 and abs(len(parts["test"]) - 15) <= 5
    assert splits.split_clips(clips, seed=0).parts == parts
    assert splits.split_clips(clips, seed=1).parts != parts


def test_split_file_lists_are_checked(tmp_path):
    clips = clips_with_actors(6, 3)
    split = splits.split_clips(clips, lists={"train": ["001", "004"], "val": ["002", "005"], "test": ["003", "006"]})
    assert split.parts["val"] == ["002", "005"]
    with pytest.raises(DataError, match="clip 042: named in the split's test list"):
        splits.split_clips(clips, lists={"train": ["001"], "val": ["002"], "test": ["042"]})
    with pytest.raises(DataError, match="clip 004: actor 'a1' is in both train and test"):
        splits.split_clips(clips, lists={"train": ["001"], "val": ["002"], "test": ["004"]})
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["001"], "val": ["002"]}))
    with pytest.raises(DataError, match="needs all of train, val, test"):
        splits.read_split_file(bad)
    bad.write_text(json.dumps({"ratios": {"train": 0.9, "val": 0.2, "test": 0.1}}))
    with pytest.raises(DataError, match="sum to 1"):
        splits.read_split_file(bad)


@pytest.mark.parametrize(
    "lists,message",
    [
        (
            {"train": ["001", "002"], "val": ["003"], "test": ["001", "004"]},
            "clip 001 is in both the train and test lists",
        ),
        ({"train": ["001", "002", "002"], "val": ["003"], "test": ["004"]}, "clip 002 is twice in the train list"),
        (
            {"train": [1, 2], "val": ["3"], "test": ["1"]},
            "clip 1 is in both the train and test lists",
        ),  # numbers read as names
        ({"train": "001", "val": ["002"], "test": ["003"]}, "'train' must be a list of clip names"),
        ({"train": [["001"]], "val": ["002"], "test": ["003"]}, "'train' must be a list of clip names"),
    ],
)
def test_a_split_file_naming_a_clip_twice_is_refused(tmp_path, lists, message):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(lists))
    with pytest.raises(DataError, match=f"{path}: .*{message}"):
        splits.read_split_file(path)


def test_clips_a_split_file_leaves_out_are_said_once(caplog):
    import logging

    clips = clips_with_actors(9, None)
    with caplog.at_level(logging.WARNING, logger="fercli"):
        split = splits.split_clips(
            clips, lists={"train": ["001", "002"], "val": ["003"], "test": ["004"]}, source="s.json"
        )
    assert sorted(sum(split.parts.values(), [])) == ["001", "002", "003", "004"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "s.json: 5 clip(s) of the data are in none of its lists and are not used: 005, 006, 007, 008, 009"


def test_default_split_file_documents_the_code_defaults():
    doc = splits.read_split_file(REPO / "train" / "splits" / "afew-va-clip-split.json")
    assert doc["seed"] == splits.DEFAULT_SPLIT_SEED and doc["ratios"] == splits.DEFAULT_RATIOS
    assert doc["kind"] == "clip" and not any(p in doc for p in splits.PARTS)


def test_window_split_shares_clips_between_parts():
    s = [fake_samples([1] * 20, range(20)), fake_samples([1] * 20, range(20))]
    w = examples.training_windows(s, window=5)
    split, rows = splits.split_windows(w, s, seed=3)
    assert split.kind == "window"
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(w)))
    assert set(w.clip[rows["train"]]) & set(w.clip[rows["test"]])  # the leak this split is kept to show


def _clip(cid, actor):
    return afew.AfewClip(cid, Path(cid), actor, {}, {}, Path(f"{cid}/{cid}.json"))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_fraction_keeps_whole_actors_of_the_training_part_only(fraction):
    clips = [_clip(f"{i:03d}", f"actor{i % 8}") for i in range(40)]
    split = splits.split_clips(clips, seed=0)
    kept = splits.keep_fraction(split, clips, fraction, seed=3)
    assert kept.parts["val"] == split.parts["val"] and kept.parts["test"] == split.parts["test"]
    train, kept_train = set(split.parts["train"]), set(kept.parts["train"])
    assert kept_train < train and len(kept_train) >= fraction * len(train)
    actor = {c.id: c.actor for c in clips}
    kept_actors = {actor[c] for c in kept_train}
    assert {c for c in train if actor[c] in kept_actors} == kept_train  # whole actors, never part of one
    assert len(kept_train) - fraction * len(train) < max(sum(actor[c] == a for c in train) for a in kept_actors)
    assert splits.keep_fraction(split, clips, fraction, seed=3) == kept  # seeded
    assert splits.keep_fraction(split, clips, 1.0, seed=3) == split


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction):
    clips = [_clip(f"{i:03d}", f"a{i % 4}") for i in range(12)]
    with pytest.raises(DataError, match="--fraction"):
        splits.keep_fraction(splits.split_clips(clips, seed=0), clips, fraction, seed=0)
