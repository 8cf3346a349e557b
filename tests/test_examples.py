"""Training windows and their labels."""

from pathlib import Path

import numpy as np
import synthetic_afew

from fercli.datasets import examples
from fercli.tables.rows import fill_index

REPO = Path(__file__).resolve().parents[1]

from conftest import fake_samples  # noqa: E402

# --- windows -----------------------------------------------------------------------------------


def test_fill_index_repeats_the_last_good_sample_like_annotate():
    assert fill_index(np.array([1, 0, 0, 1, 0], bool)).tolist() == [0, 0, 0, 3, 3]
    assert fill_index(np.array([0, 0, 1, 1, 0], bool)).tolist() == [2, 2, 2, 3, 3]


def test_windows_mean_their_present_labels_and_round_to_classes():
    s = fake_samples([1, 1, 0, 1, 1, 1], [1, 2, 9, 4, 5, 6])
    w = examples.training_windows([s], window=3, stride=1)
    assert w.end.tolist() == [2, 3, 4, 5]
    assert w.index.tolist() == [[0, 1, 1], [1, 1, 3], [1, 3, 4], [3, 4, 5]]
    np.testing.assert_allclose(w.valence, [1.5, 3.0, 4.5, 5.0])  # the skipped sample's 9 never counts
    assert (w.valence_class - 10).tolist() == [2, 3, 5, 5]  # half away from zero
    assert examples.training_windows([s], window=3, stride=2).end.tolist() == [2, 4]


def test_short_clip_gives_one_left_padded_window():
    w = examples.training_windows([fake_samples([1, 1], [-3, -4])], window=5)
    assert w.index.tolist() == [[0, 0, 0, 0, 1]] and w.valence.tolist() == [-3.5]
    assert (w.valence_class - 10).tolist() == [-4]


def test_synthetic_arousal_is_the_roll_direction_only(small):
    """The generator's contract: a window played backwards holds the same frames, opposite label."""
    truth = synthetic_afew.make_dataset(small.parent / "truth-only", clips=3, frames=30, actors=3, seed=5)
    for t in truth.values():
        steps = np.diff(t.roll)
        assert set(np.abs(steps)) == {synthetic_afew.ROLL_STEP}
        assert max(np.abs(t.roll)) <= synthetic_afew.MAX_ROLL
        assert (np.asarray(t.arousal[1:]) == synthetic_afew.AROUSAL * np.sign(steps)).all()
        for s in range(len(steps) - 4):  # reversed window: the same rolls, the opposite label
            rolls = np.asarray(t.roll[s : s + 5])
            assert sorted(rolls[::-1]) == sorted(rolls)
            assert np.sign(np.diff(rolls[::-1])).sum() == -np.sign(np.diff(rolls)).sum()
