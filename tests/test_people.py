"""fercli.media.people: shot cuts, and face tracks joined into people across cuts and absences.

The clips with known people are made from real photographs (`real_faces.cuts_frames`: the
astronaut and the player of OpenCV's messi5.jpg alternating over four cuts, the astronaut
leaving one shot for longer than a track lives) and OpenCV's own sample `Megamind.avi`
(three people, four cuts), both from Debian's opencv-doc.
"""

from __future__ import annotations

from pathlib import Path

import media
import numpy as np
import pytest
import real_faces

import fercli
from fercli.job.contract import AnnotateOptions
from fercli.media.people import SAME, ShotCuts, Tracks, colour_histogram, group_tracks

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
needs_opencv_doc = pytest.mark.skipif(
    real_faces.messi() is None or not MEGAMIND.exists(),
    reason="Debian's opencv-doc is missing (messi5.jpg, Megamind.avi): apt-get install opencv-doc",
)
FPS = 5  # the models' sampling rate


def test_colour_histogram_is_numpys_on_every_4th_pixel():
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    small = image[::4, ::4]
    want = np.concatenate([np.histogram(small[..., c], bins=16, range=(0, 256))[0] for c in range(3)])
    np.testing.assert_allclose(colour_histogram(image), want / want.sum())


def test_a_face_moving_within_a_shot_is_no_cut_a_change_of_shot_is():
    # The astronaut's head crossing the frame at 150 px/s (30 px per sample), new noise each frame.
    astro = real_faces.head(real_faces.astronaut(), real_faces.ASTRONAUT_HEAD, 180)
    frames = [real_faces.paste(real_faces.background(640, 360, seed=k), astro, 20 + 30 * k, 40) for k in range(10)]
    cuts = ShotCuts()
    assert not any(cuts(f) for f in frames)
    other = (frames[-1] * np.array([0.8, 0.95, 1.15])).clip(0, 255).astype(np.uint8)  # another camera's cast
    assert cuts(other)


def test_a_shot_is_read_from_about_hist_pixels_at_every_4th_pixel_or_further():
    from fercli.media.people import HIST_PIXELS, HIST_STEP, shot_step

    assert shot_step(240, 320) == HIST_STEP == 4  # small frames as before: every 4th pixel
    for height, width in [(720, 1280), (1080, 1920), (2160, 3840)]:
        step = shot_step(height, width)
        read = len(range(0, height, step)) * len(range(0, width, step))
        assert HIST_PIXELS <= read < 1.5 * HIST_PIXELS, (height, width, step)


def test_at_720p_a_face_moving_within_a_shot_is_no_cut_a_change_of_shot_is():
    # As at 640 x 360, with the histogram now from every 7th pixel.
    astro = real_faces.head(real_faces.astronaut(), real_faces.ASTRONAUT_HEAD, 360)
    frames = [real_faces.paste(real_faces.background(1280, 720, seed=k), astro, 40 + 60 * k, 80) for k in range(10)]
    cuts = ShotCuts()
    assert not any(cuts(f) for f in frames)
    assert cuts((frames[-1] * np.array([0.8, 0.95, 1.15])).clip(0, 255).astype(np.uint8))


def test_group_tracks_by_hand():
    a, near_a, b = np.array([1.0, 0, 0]), np.array([0.95, 0.31, 0]), np.array([0.0, 1, 0])  # cos(a, near_a) = 0.95
    # Alike and never together: one person, unless the threshold asks for more than 0.95.
    assert group_tracks({0: 3 * a, 1: 2 * near_a}, {0: {0, 1}, 1: {4, 5}}) == {0: 0, 1: 0}
    assert group_tracks({0: 3 * a, 1: 2 * near_a}, {0: {0, 1}, 1: {4, 5}}, same=0.96) == {0: 0, 1: 1}
    # Alike but on screen together (sample 1): two people.
    assert group_tracks({0: a, 1: a}, {0: {0, 1}, 1: {1, 2}}) == {0: 0, 1: 1}
    # Track 3 is like track 0 but was on screen with track 2, already joined to 0: a third person.
    assert group_tracks({0: a, 2: a, 3: near_a}, {0: {0}, 2: {5}, 3: {5}}) == {0: 0, 2: 0, 3: 1}
    # Unalike: two people, numbered in order of first appearance.
    assert group_tracks({0: b, 1: a}, {0: {9}, 1: {0}}) == {1: 0, 0: 1}


def test_each_kind_of_descriptor_has_its_threshold():
    a, b = np.array([1.0, 0, 0]), np.array([0.935, 0.3546, 0])  # cosine 0.935
    assert SAME == {"texture": 0.86, "faceid": 0.93}
    assert group_tracks({0: a, 1: b}, {0: {0}, 1: {1}}, kind="faceid") == {0: 0, 1: 0}
    c = np.array([0.925, 0.3800, 0])  # cosine 0.925: texture's one person, not the embedding's
    assert group_tracks({0: a, 1: c}, {0: {0}, 1: {1}}, kind="faceid") == {0: 0, 1: 1}
    assert group_tracks({0: a, 1: c}, {0: {0}, 1: {1}}, kind="texture") == {0: 0, 1: 0}
    with pytest.raises(ValueError, match="descriptor kind 'lbp'"):
        group_tracks({0: a}, {0: {0}}, kind="lbp")


def test_a_track_gets_a_chip_at_its_first_sample_then_one_a_second():
    tracks = Tracks()
    due = [t for t in np.arange(0, 3.01, 0.2) if tracks.chip_due(7, float(t))]
    np.testing.assert_allclose(due, [0.0, 1.0, 2.0, 3.0])
    assert tracks.chip_due(8, 0.4)  # another track has its own clock


# Shots of an interview, each changing how a face looks the way cuts do: (person, head width px,
# change); person 0 is the astronaut, 1 the player of messi5.jpg. 6 samples a shot.
INTERVIEW = (
    (0, 150, "plain"),
    (1, 150, "plain"),
    (0, 110, "mirrored, darker"),
    (1, 190, "mirrored, blue cast"),
    (0, 200, "blurred, JPEG"),
)


def interview_frames():
    import io

    from PIL import Image, ImageFilter

    photos = {0: (real_faces.astronaut(), real_faces.ASTRONAUT_HEAD), 1: (real_faces.messi(), real_faces.MESSI_HEAD)}
    for shot, (person, side, change) in enumerate(INTERVIEW):
        head = real_faces.head(*photos[person], side)
        if "mirrored" in change:
            head = head[:, ::-1]
        if "darker" in change:
            head = (255 * (head / 255.0) ** 1.6).astype(np.uint8)
        if "blue" in change:
            head = np.clip(head * np.array([0.8, 0.95, 1.2]), 0, 255).astype(np.uint8)
        if "blurred" in change:
            buf = io.BytesIO()
            Image.fromarray(head).filter(ImageFilter.GaussianBlur(1.5)).save(buf, "JPEG", quality=25)
            head = np.asarray(Image.open(buf).convert("RGB"))
        for k in range(6):
            frame = real_faces.background(480, 300, seed=10 * shot + k)
            yield shot, person, real_faces.paste(frame, np.ascontiguousarray(head), 120 + 4 * k, 30)


@needs_opencv_doc
def test_the_embedding_keeps_two_people_apart_across_changed_shots_where_texture_splits_them(
    faceid_net, landmark_predictor
):
    from fercli.media import align
    from fercli.media.faces import FaceDetector
    from fercli.nets.faceid import unit_embeddings

    tracks, texture, faces, seen, truth = Tracks(), {}, {}, {}, {}
    with FaceDetector() as detector:
        for k, (_shot, person, frame) in enumerate(interview_frames()):
            found = detector.detect(frame)
            assert len(found) == 1
            for t, (det, look) in tracks.update(k / FPS, frame, found).items():
                texture[t] = texture.get(t, 0) + look
                seen.setdefault(t, set()).add(k)
                truth.setdefault(t, set()).add(person)
                if tracks.chip_due(t, k / FPS):
                    chip = align.chip(frame, det.box, det.keypoints, landmark_predictor)
                    faces[t] = faces.get(t, 0) + unit_embeddings(faceid_net, chip[None])[0]
    assert len(tracks.cuts) == len(INTERVIEW) - 1 and all(len(p) == 1 for p in truth.values())
    by_faces = group_tracks(faces, seen, kind="faceid")
    assert {p: {next(iter(truth[t])) for t in by_faces if by_faces[t] == p} for p in set(by_faces.values())} == {
        0: {0},
        1: {1},
    }
    by_texture = group_tracks(texture, seen, kind="texture")
    assert len(set(by_texture.values())) > 2  # texture's fault (issue 38): a changed shot is someone new


def detections_with_truth(frames, fps):
    """Per sample: (time, frame, detections, the true person of each detection by head centre)."""
    from fercli.media.faces import FaceDetector

    def centre(box):
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])

    out = []
    with FaceDetector() as detector:
        for i, frame in enumerate(frames):
            t = i / fps
            found = detector.detect(frame)
            truth = real_faces.people_at(t)
            who = [min(truth, key=lambda pb: np.linalg.norm(centre(pb[1]) - centre(d.box)))[0] for d in found]
            out.append((t, frame, found, who))
    return out


@needs_opencv_doc
def test_two_people_keep_one_id_each_across_cuts_and_an_absence():
    tracks, looks, seen, pairs = Tracks(), {}, {}, []
    for k, (t, frame, found, who) in enumerate(detections_with_truth(real_faces.cuts_frames(FPS), FPS)):
        assert len(found) == len(real_faces.people_at(t))  # the detector sees each head
        out = tracks.update(t, frame, found)
        by_box = {det.box: track for track, (det, _) in out.items()}
        for track, (_, look) in out.items():
            looks[track] = looks.get(track, 0) + look
            seen.setdefault(track, set()).add(k)
        pairs += [(by_box[d.box], truth) for d, truth in zip(found, who)]
    assert all(any(abs(c - cut) < 1 / FPS for c in tracks.cuts) for cut in real_faces.CUTS)
    person = group_tracks(looks, seen)
    assert len(set(looks)) >= 6  # each shot (and the return) began new tracks
    truth_of = {}
    for track, truth in pairs:
        truth_of.setdefault(person[track], set()).add(truth)
    assert truth_of == {0: {0}, 1: {1}}  # two ids, each one person's, in order of appearance


@pytest.fixture(scope="module")
def cuts_clip(tmp_path_factory):
    if real_faces.messi() is None:
        pytest.skip("Debian's opencv-doc is missing (messi5.jpg): apt-get install opencv-doc")
    path = tmp_path_factory.mktemp("cuts") / "cuts.mp4"
    return media.write_video(path, real_faces.cuts_frames(10), 10)


def truth_per_second(second: int) -> set[int]:
    return {p for k in range(FPS) for p, _ in real_faces.people_at(second + k / FPS)}


def whose(row) -> int:
    """The true person whose head is nearest the row's mean box, over the row's second."""
    cx, cy = (row.face_x0 + row.face_x1) / 2, (row.face_y0 + row.face_y1) / 2
    heads = [(p, b) for k in range(FPS) for p, b in real_faces.people_at(row.second + k / FPS)]
    return min(heads, key=lambda pb: np.hypot((pb[1][0] + pb[1][2]) / 2 - cx, (pb[1][1] + pb[1][3]) / 2 - cy))[0]


def test_all_faces_gives_one_row_per_person_per_second(cuts_clip, lstm_checkpoint, tmp_path):
    model = fercli.load_model(lstm_checkpoint, "cpu")
    fercli.annotate(
        [cuts_clip], tmp_path / "all.csv", model=model, device="cpu", options=AnnotateOptions(all_faces=True)
    )
    table = fercli.read_table(tmp_path / "all.csv")
    faced = table[table.face]
    assert sorted(faced.person.unique()) == [0, 1]
    assert {int(r.person): whose(r) for r in faced.itertuples()} == {0: 0, 1: 1}  # each id one person
    assert not table.duplicated(["second", "person"]).any()
    for second, rows in table.groupby("second"):
        assert set(rows.loc[rows.face, "person"]) == truth_per_second(second)
        assert set(rows.people) == {len(truth_per_second(second))}


def test_the_default_table_follows_the_person_on_screen_longest(cuts_clip, lstm_checkpoint, tmp_path):
    model = fercli.load_model(lstm_checkpoint, "cpu")
    fercli.annotate([cuts_clip], tmp_path / "one.csv", model=model, device="cpu")
    table = fercli.read_table(tmp_path / "one.csv")
    assert "person" not in table
    assert list(table.second) == list(range(13))
    for row in table.itertuples():  # the astronaut (7.6 s on screen against 6), never the player
        assert row.face == (0 in truth_per_second(row.second))
        assert row.people == len(truth_per_second(row.second))
        if row.face:
            assert whose(row) == 0


@needs_opencv_doc
def test_megamind_three_people_across_four_cuts(lstm_checkpoint, tmp_path):
    model = fercli.load_model(lstm_checkpoint, "cpu")
    # Texture: dlib's embedding joins the blurred diner with the man on this animated clip (noted in docs/people.md).
    options = AnnotateOptions(all_faces=True, identity="texture")
    fercli.annotate([MEGAMIND], tmp_path / "mm.csv", model=model, device="cpu", options=options)
    table = fercli.read_table(tmp_path / "mm.csv")
    faced = table[table.face]
    assert faced.person.nunique() == 3  # the woman, the diner behind her, the man in glasses
    width = faced.face_x1 - faced.face_x0
    largest = faced.loc[width.groupby(faced.second).idxmax()].set_index("second").person
    # The woman fills seconds 0-3 and 7 (shots 4.2 s apart), the man seconds 5 and 9-10.
    assert largest[[0, 1, 2, 3, 7]].nunique() == 1 and largest[[5, 9, 10]].nunique() == 1
    assert largest[0] != largest[5]


def test_a_cut_to_another_person_at_the_same_place_before_the_same_wall_ends_the_track():
    # Two cameras, one wall: the frame's colours hardly change at the cut (ShotCuts misses it), the
    # face's do. Astronaut 0-2 s, the player at the same place 2-4 s, the astronaut again 4-6 s.
    if real_faces.messi() is None:
        pytest.skip("Debian's opencv-doc is missing (messi5.jpg): apt-get install opencv-doc")
    photos = {0: (real_faces.astronaut(), real_faces.ASTRONAUT_HEAD), 1: (real_faces.messi(), real_faces.MESSI_HEAD)}
    on_screen = lambda t: 0 if t < 2 or t >= 4 else 1  # noqa: E731
    frames = []
    for i in range(6 * FPS):
        photo, box = photos[on_screen(i / FPS)]
        frames.append(
            real_faces.paste(real_faces.background(480, 270, seed=i), real_faces.head(photo, box, 80), 200, 90)
        )
    assert all(0.5 * np.abs(colour_histogram(a) - colour_histogram(b)).sum() < 0.08 for a, b in zip(frames, frames[1:]))
    tracks, looks, seen, truth = Tracks(), {}, {}, {}
    detector = fercli.media.faces.FaceDetector()
    for k, frame in enumerate(frames):
        found = detector.detect(frame)
        assert len(found) == 1
        for track, (_, look) in tracks.update(k / FPS, frame, found).items():
            looks[track] = looks.get(track, 0) + look
            seen.setdefault(track, set()).add(k)
            truth.setdefault(track, set()).add(on_screen(k / FPS))
    assert tracks.cuts == [] and all(len(people) == 1 for people in truth.values())  # no track holds both
    person = group_tracks(looks, seen)
    assert {p: {who for t in person if person[t] == p for who in truth[t]} for p in set(person.values())} == {
        0: {0},
        1: {1},
    }


def test_annotate_joins_people_by_the_face_embedding_and_says_so(
    cuts_clip, lstm_checkpoint, dlib_files, tmp_path, monkeypatch
):
    # The embedding's weights, as a first run would have fetched them, in this test's own cache.
    import shutil

    from fercli.nets.weights import cache_dir

    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    from fercli.tables.boxes import boxes_path, read_boxes
    from fercli.tables.writers import read_metadata

    cache_dir().mkdir(parents=True, exist_ok=True)
    for path in dlib_files.values():
        shutil.copy(path, cache_dir() / path.name)
    model = fercli.load_model(lstm_checkpoint, "cpu")
    options = AnnotateOptions(all_faces=True, identity="faceid")
    fercli.annotate([cuts_clip], tmp_path / "all.csv", model=model, device="cpu", options=options)
    assert read_metadata(tmp_path / "all.csv")["identity"].startswith("faceid: dlib_face_recognition_resnet_model_v1")
    table = fercli.read_table(tmp_path / "all.csv")
    faced = table[table.face]
    assert {int(r.person): whose(r) for r in faced.itertuples()} == {0: 0, 1: 1}  # each id one person
    for second, rows in table.groupby("second"):
        assert set(rows.loc[rows.face, "person"]) == truth_per_second(second)
    boxes = read_boxes(boxes_path(tmp_path / "all.csv"))  # each person's own box, per sample, for render
    assert set(boxes.person) == {0, 1} and set(boxes.video) == {cuts_clip.name}
    texture = AnnotateOptions(all_faces=True, identity="texture")
    fercli.annotate([cuts_clip], tmp_path / "tex.csv", model=model, device="cpu", options=texture)
    assert read_metadata(tmp_path / "tex.csv")["identity"].startswith("texture")
