import math

import numpy as np
import pytest
import torch

from fercli.tables.rows import (
    Aggregator,
    FrameFeatures,
    fill_window,
    label_rows,
    label_units,
    n_seconds,
)


def feat(k):
    return torch.full((3,), float(k))


def tags(window):
    return window[:, 0].int().tolist()


@pytest.mark.parametrize("last_start,expected", [(89 / 30, 3), (3.0, 4), (0.0, 1), (2.999, 3), (3.0 - 1e-7, 4)])
def test_rows_run_to_the_second_the_last_frame_starts_in(last_start, expected):
    assert n_seconds(last_start) == expected


def test_no_row_for_a_sliver_past_the_last_whole_second():
    # 120 frames at 30 fps whose last frame ends at 4.0003 s: frames start in seconds 0-3 only.
    agg = Aggregator(window=1, duration=4.0003, window_model=False, last_start=119 / 30)
    units = push_all(agg, 5, 20, present=set(range(20)))
    assert [u.key["second"] for u in units] == [0, 1, 2, 3]
    assert units[-1].key["end"] == 4.0003 and all(u.has_face for u in units)


def test_a_long_last_frame_keeps_its_samples_in_the_last_row():
    # VFR: the last frame starts at 2.5 s and stays until 4.0 s; its samples go to second 2.
    agg = Aggregator(window=1, duration=4.0, window_model=False, last_start=2.5)
    units = push_all(agg, 2, 8, present=set(range(8)))
    assert [(u.key["second"], u.key["end"]) for u in units] == [(0, 1.0), (1, 2.0), (2, 4.0)]
    assert units[-1].scores.tolist() == [5.5, 5.5, 5.5]  # mean of samples 4..7


def test_fill_window_forward_then_back():
    assert fill_window([None, feat(1), None, feat(3)]) is not None
    assert tags(fill_window([None, feat(1), None, feat(3)])) == [1, 1, 1, 3]
    assert tags(fill_window([None, None, feat(2)], before=feat(9))) == [9, 9, 2]
    assert fill_window([None, None]) is None


def push_all(agg, fps, n, present):
    units = []
    for k in range(n):
        faces = {0: feat(k)} if k in present else {}
        units += agg.push(FrameFeatures(k, k / fps, faces))
    return units + agg.finish()


def test_window_for_each_second_ends_with_its_last_sample():
    # fps 2, T 3, 2.5 s: samples at 0, .5, 1, 1.5, 2; the face is missed at t = 1.0 (k = 2).
    agg = Aggregator(window=3, duration=2.5, window_model=True)
    units = push_all(agg, fps=2, n=5, present={0, 1, 3, 4})
    assert [u.key["second"] for u in units] == [0, 1, 2]
    assert [u.key["end"] for u in units] == [1.0, 2.0, 2.5]
    # second 0: padded on the left with its first face; second 1: k=2 holds k=1;
    # second 2: k=2 (outside the face samples) is filled from k=1, which left the window.
    assert [tags(u.window) for u in units] == [[0, 0, 1], [1, 1, 3], [1, 3, 4]]


def test_faceless_seconds_are_kept_with_no_window():
    agg = Aggregator(window=2, duration=3.0, window_model=True)
    units = push_all(agg, fps=2, n=6, present={0, 1, 4, 5})
    assert [(u.key["second"], u.has_face) for u in units] == [(0, True), (1, False), (2, True)]
    assert units[1].person is None
    # second 2 starts after a faceless second: its window holds only its own frames
    assert tags(units[2].window) == [4, 5]


def test_second_without_samples_still_gets_a_row():
    # fps 0.5: samples at 0, 2, 4 -> seconds 1 and 3 contain none
    agg = Aggregator(window=1, duration=5.0, window_model=True)
    units = push_all(agg, fps=0.5, n=3, present={0, 1, 2})
    assert [(u.key["second"], u.has_face) for u in units] == [(0, True), (1, False), (2, True), (3, False), (4, True)]


def test_frame_model_averages_its_seconds_samples():
    agg = Aggregator(window=1, duration=2.0, window_model=False)
    units = []
    scores = [(1.0, -2.0), (3.0, -4.0), (5.0, 5.0), (7.0, 7.0)]
    for k, s in enumerate(scores):
        units += agg.push(FrameFeatures(k, k / 2, {0: torch.tensor(s)}))
    units += agg.finish()
    assert [u.scores.tolist() for u in units] == [[2.0, -3.0], [6.0, 6.0]]


def test_per_sample_units():
    agg = Aggregator(window=2, duration=1.5, window_model=True, rows="sample")
    units = push_all(agg, fps=2, n=3, present={0, 2})
    assert [(u.key["sample_index"], u.key["time"], u.has_face) for u in units] == [
        (0, 0.0, True),
        (1, 0.5, False),
        (2, 1.0, True),
    ]
    assert tags(units[2].window) == [0, 2]


def test_labels_from_logits_match_numpy():
    torch.manual_seed(0)
    logits_v, logits_a = torch.randn(2, 21), torch.randn(2, 21)

    def head(w):
        return logits_v[: len(w)], logits_a[: len(w)]

    agg = Aggregator(window=1, duration=2.0, window_model=True)
    units = push_all(agg, fps=1, n=2, present={0, 1})
    labels = label_units(units, head)
    for i, lab in enumerate(labels):
        p = np.exp(logits_v[i].numpy().astype(np.float64))
        p /= p.sum()
        assert lab["valence"] == int(np.argmax(p)) - 10
        assert lab["valence_score"] == pytest.approx(float((p * np.arange(-10, 11)).sum()), abs=1e-5)
        assert lab["valence_conf"] == pytest.approx(float(p.max()), abs=1e-6)


def test_frame_scores_round_half_away_from_zero_and_rows_carry_keys():
    agg = Aggregator(window=1, duration=3.0, window_model=False)
    units = []
    for k, v in enumerate([2.5, -2.5, 0.49]):
        units += agg.push(FrameFeatures(k, float(k), {0: torch.tensor([v, 10.0])}))
    out = label_rows(units + agg.finish(), head=None)
    assert [r["valence"] for r in out] == [3, -3, 0]
    assert [r["arousal"] for r in out] == [10, 10, 10]
    assert all(r["valence_conf"] is None and r["face"] for r in out)
    assert [r["second"] for r in out] == [0, 1, 2]
    assert math.isclose(out[2]["valence_score"], 0.49, rel_tol=1e-6)


def test_face_columns_describe_the_seconds_own_samples():
    from fercli.tables.rows import FaceSeen

    # 5 samples/s; face 0 found in samples 0, 1 of second 0 and in all of second 1; face 1 only
    # once, in sample 3 (a glimpse). Expressions: one-hot guesses, so their means are countable.
    agg = Aggregator(window=1, duration=2.0, window_model=False)
    seen = {
        0: FaceSeen((10.0, 20.0, 50.0, 80.0), 0.9, (1.0,) + (0.0,) * 7),
        1: FaceSeen((14.0, 24.0, 54.0, 84.0), 0.7, (0.0, 1.0) + (0.0,) * 6),
        5: FaceSeen((0.0, 0.0, 10.0, 10.0), 0.6, (0.0,) * 7 + (1.0,)),
    }
    units = []
    for k in range(10):
        faces, found = {}, {}
        if k in (0, 1) or k >= 5:
            faces[0], found[0] = torch.tensor([1.0, 1.0]), seen[min(k, 5)]
        if k == 3:
            faces[1], found[1] = torch.tensor([2.0, 2.0]), seen[0]
        units += agg.push(FrameFeatures(k, k / 5, faces, found))
    units += agg.finish()
    cols = {(u.key["second"], u.person): u.columns for u in units}
    first = cols[0, 0]
    assert first["face_share"] == pytest.approx(2 / 5)
    assert [first[c] for c in ("face_x0", "face_y0", "face_x1", "face_y1")] == pytest.approx([12.0, 22.0, 52.0, 82.0])
    assert first["face_score"] == pytest.approx(0.8)
    assert first["anger"] == first["contempt"] == pytest.approx(0.5) and first["surprise"] == 0.0
    assert first["expression"] == "anger"  # a tie goes to the first, as numpy's argmax
    assert cols[0, 1]["face_share"] == pytest.approx(1 / 5) and cols[0, 1]["face_score"] == pytest.approx(0.9)
    assert cols[1, 0]["face_share"] == 1.0 and cols[1, 0]["expression"] == "surprise"
    # rows take the columns along; a faceless row has share 0 and nothing else
    labelled = label_units(units, head=None)
    assert labelled[0]["face_x0"] == pytest.approx(12.0)
    agg = Aggregator(window=1, duration=1.0, window_model=False)
    (empty,) = [*agg.push(FrameFeatures(0, 0.0, {})), *agg.finish()]
    assert label_units([empty], head=None)[0]["face_share"] == 0.0 and "face_x0" not in empty.columns


def test_per_frame_rows_carry_their_samples_box():
    from fercli.tables.rows import FaceSeen

    agg = Aggregator(window=1, duration=1.0, window_model=False, rows="sample")
    a = agg.push(FrameFeatures(0, 0.0, {0: torch.tensor([1.0, 1.0])}, {0: FaceSeen((1.0, 2.0, 3.0, 4.0), 0.5)}))
    b = agg.push(FrameFeatures(1, 0.2, {}))
    box = {"face_x0": 1.0, "face_y0": 2.0, "face_x1": 3.0, "face_y1": 4.0, "face_score": 0.5}
    assert a[0].columns == {"face_share": 1.0, **box, "people": 1}
    assert b[0].columns == {"face_share": 0.0, "people": 0}


def two_people(fps=5, seconds=6, second=lambda k: 10 <= k < 20, subject=lambda k: True):
    """Rows of a frame model over `seconds`: person 0 (scores 1) where subject(k), person 1
    (scores 5) where second(k)."""
    from fercli.tables.rows import follow

    agg = Aggregator(window=1, duration=float(seconds), window_model=False)
    units = []
    for k in range(fps * seconds):
        faces = {
            **({0: torch.tensor([1.0, 1.0])} if subject(k) else {}),
            **({1: torch.tensor([5.0, 5.0])} if second(k) else {}),
        }
        units += agg.push(FrameFeatures(k, k / fps, faces))
    rows = label_rows(units + agg.finish(), head=None)
    return rows, follow(rows, agg.main_person()), agg


def test_the_default_table_follows_the_person_seen_longest_and_counts_the_others():
    # Person 1 (the higher scores) passes through in seconds 2-3; person 0 is there all along.
    rows, followed, agg = two_people()
    assert agg.main_person() == 0 and agg.on_screen == {0: 30, 1: 10}
    assert [r["second"] for r in followed] == list(range(6))
    assert all(r["person"] == 0 and r["face"] and r["valence_score"] == 1.0 for r in followed)
    assert [r["people"] for r in followed] == [1, 1, 2, 2, 1, 1]
    assert len([r for r in rows if r["person"] == 1]) == 2  # --all-faces keeps them


def test_a_second_without_the_followed_person_has_no_face_whoever_else_is_there():
    # Person 0 is missing from second 2 (samples 10-14), where person 1 alone is seen.
    _, followed, _ = two_people(subject=lambda k: not 10 <= k < 15)
    row = followed[2]
    assert not row["face"] and row["valence"] is None and row["person"] is None
    assert row["face_share"] == 0.0 and row["people"] == 1
    assert all(r["face"] and r["person"] == 0 for r in followed if r["second"] != 2)


def test_the_person_seen_longest_wins_even_if_seen_later():
    # Person 1 is seen from second 1 to the end (25 samples), person 0 only in second 0 (5).
    _, followed, agg = two_people(second=lambda k: k >= 5, subject=lambda k: k < 5)
    assert agg.main_person() == 1
    assert [r["face"] for r in followed] == [False, True, True, True, True, True]
    assert all(r["valence_score"] == 5.0 for r in followed[1:])


def test_a_tie_goes_to_the_person_seen_first():
    _, _, agg = two_people(second=lambda k: k >= 15, subject=lambda k: k < 15)
    assert agg.on_screen == {0: 15, 1: 15} and agg.main_person() == 0


def push_frames(agg, times, present, tag=lambda i: i):
    """FrameFeatures for frames starting at `times`; the face (person 0) in frames `present`."""
    units = []
    for i, t in enumerate(times):
        units += agg.push(FrameFeatures(i, t, {0: feat(tag(i))} if i in present else {}))
    return units + agg.finish()


def test_rows_per_video_frame_take_windows_at_the_models_spacing():
    # 25 frames/s, a model at 5 samples/s with T = 3: the window of the frame at t is the frames on
    # screen at t - 0.4, t - 0.2 and t: 10 and 5 frames back.
    agg = Aggregator(window=3, duration=1.0, window_model=True, rows="frame", fps=5.0)
    units = push_frames(agg, [i / 25 for i in range(25)], present=set(range(25)))
    assert [(u.key["frame"], u.key["time"]) for u in units] == [(i, i / 25) for i in range(25)]
    assert tags(units[24].window) == [14, 19, 24]
    assert tags(units[12].window) == [2, 7, 12]
    assert tags(units[7].window) == [2, 2, 7]  # t - 0.4 is before the clip: padded with the first face
    assert tags(units[0].window) == [0, 0, 0]


def test_rows_per_video_frame_follow_timestamps_and_hold_missed_faces():
    # Variable rate: frames at these starts; the picks are the frames on screen at t - 0.2 j.
    times = [0.0, 0.1, 0.15, 0.3, 0.45, 0.5, 0.62, 0.7]
    agg = Aggregator(window=3, duration=0.8, window_model=True, rows="frame", fps=5.0)
    units = push_frames(agg, times, present={0, 1, 2, 4, 5, 6, 7})  # frame 3 (0.3 s) missed the face
    # Frame 7 at 0.7: on screen at 0.3 -> frame 3 (no face: holds frame 2's), at 0.5 -> 5, at 0.7 -> 7.
    assert tags(units[7].window) == [2, 5, 7]
    # Frame 6 at 0.62: at 0.22 -> frame 2, at 0.42 -> frame 3 (held: frame 2), at 0.62 -> 6.
    assert tags(units[6].window) == [2, 2, 6]
    assert not units[3].has_face and units[3].columns["face_share"] == 0.0


def test_frame_model_spread_is_the_seconds_sample_sd_and_count():
    # 2 samples/s over 3 s: second 0 finds the face in both samples, second 1 in one, second 2 in none.
    agg = Aggregator(window=1, duration=3.0, window_model=False)
    scores = {0: (1.0, -2.0), 1: (4.0, 0.5), 2: (2.5, 3.0)}
    units = []
    for k in range(6):
        units += agg.push(FrameFeatures(k, k / 2, {0: torch.tensor(scores[k])} if k in scores else {}))
    rows = label_rows(units + agg.finish(), head=None)
    want = np.std(np.array([scores[0], scores[1]]), axis=0)  # population SD (ddof 0): 1.5, 1.25
    assert [r["samples"] for r in rows] == [2, 1, 0]
    assert rows[0]["valence_sd"] == pytest.approx(want[0]) and rows[0]["arousal_sd"] == pytest.approx(want[1])
    assert rows[1]["valence_sd"] is None and rows[2]["valence_sd"] is None  # one value has no spread


def test_one_sample_frame_rows_have_no_spread():
    agg = Aggregator(window=1, duration=2.0, window_model=False)
    units = agg.push(FrameFeatures(0, 0.0, {0: torch.tensor([1.0, 2.0])})) + agg.finish()
    row = label_rows(units, head=None)[0]
    assert row["samples"] == 1 and row["valence_sd"] is None and row["arousal_sd"] is None


def test_window_model_spread_is_the_distributions_sd_and_counts_found_samples():
    torch.manual_seed(3)
    logits_v, logits_a = torch.randn(3, 21) * 2, torch.randn(3, 21)

    def head(w):
        return logits_v[: len(w)], logits_a[: len(w)]

    agg = Aggregator(window=3, duration=2.5, window_model=True)
    rows = label_rows(push_all(agg, fps=2, n=5, present={0, 1, 3, 4}), head)
    values = np.arange(-10, 11)
    for i, row in enumerate(rows):
        for logits, dim in ((logits_v, "valence"), (logits_a, "arousal")):
            p = np.exp(logits[i].numpy().astype(np.float64))
            p /= p.sum()
            mean = (p * values).sum()
            assert row[f"{dim}_sd"] == pytest.approx(float(np.sqrt((p * (values - mean) ** 2).sum())), abs=1e-4)
    # windows (samples 2 missed): [pad, 0, 1], [1, 2, 3], [2, 3, 4]: two found in each, the rest filled
    assert [r["samples"] for r in rows] == [2, 2, 2]
