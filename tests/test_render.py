"""`fer render`: the overlay against the source, both read back with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import media
import numpy as np
import pandas as pd
import pytest
from conftest import gap_faces

from fercli.core.errors import FerError
from fercli.views.render import (
    AROUSAL_COLOUR,
    BOX_WIDTH,
    VALENCE_COLOUR,
    bar_layout,
    render,
)

GAP = "sub/gap.mkv"  # 5 s at 30 frames/s, 320 x 240; no face for 2 <= t < 4
VALENCE = [-4.0, 7.5, None, None, 10.0]  # per second; None: no face
AROUSAL = [2.0, -6.0, None, None, 0.0]
COLOUR_DISTANCE = 90  # summed |RGB| difference that still counts as the bar's colour after H.264
LENGTH_TOLERANCE = 2  # px: yuv420p halves the chroma, blurring a bar's end by a pixel or so
# px between the centres of the box drawn (the detector's, a little larger than the portrait's
# face) and the face placed: the detector's box sits 3-4 px from the portrait's own face box.
CENTRE_TOLERANCE = 10


def decoded(path):
    """(frames as RGB arrays, their times in s, the container's duration in s), read by PyAV."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        duration = c.duration / 1e6
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames], duration


def second_table(path, video=GAP):
    rows = []
    for s, (v, a) in enumerate(zip(VALENCE, AROUSAL)):
        face = v is not None
        box = media.face_box(gap_faces(s + 0.4)[0]) if face else (None,) * 4
        rows.append(
            dict(
                video=video,
                second=s,
                start=float(s),
                end=float(s + 1),
                face=face,
                valence=round(v) if face else None,
                arousal=round(a) if face else None,
                valence_score=v,
                arousal_score=a,
                face_x0=box[0],
                face_y0=box[1],
                face_x1=box[2],
                face_y1=box[3],
                face_score=0.9 if face else None,
                face_share=1.0 if face else 0.0,
            )
        )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def bar_reach(frame: np.ndarray, dim: str) -> int:
    """Pixels of the bar's colour from the track's centre, signed (negative: to the left), measured."""
    h, w = frame.shape[:2]
    bar = bar_layout(w, h)[dim]
    colour = np.array(VALENCE_COLOUR if dim == "valence" else AROUSAL_COLOUR)
    row = frame[(bar.y0 + bar.y1) // 2, bar.centre - bar.half : bar.centre + bar.half + 1].astype(int)
    hit = np.abs(row - colour).sum(axis=1) < COLOUR_DISTANCE
    right, left = hit[bar.half :], hit[: bar.half][::-1]
    return int(right.sum()) if right.sum() >= left.sum() else -int(left.sum())


@pytest.fixture(scope="module")
def overlay(tmp_path_factory, clips_dir):
    root = tmp_path_factory.mktemp("render")
    out = render(clips_dir / GAP, second_table(root / "t.csv"), root / "overlay.mp4")
    return out, decoded(out.out), decoded(clips_dir / GAP)


def test_every_source_frame_with_its_timestamps(overlay):
    result, (frames, times, duration), (src_frames, src_times, src_duration) = overlay
    assert result.frames == len(frames) == len(src_frames) == 150
    assert times == pytest.approx(src_times, abs=1e-9)
    assert duration == pytest.approx(src_duration, abs=1e-6)
    assert frames[0].shape == src_frames[0].shape
    assert result.video == GAP  # matched by its path's tail


def off(a, b) -> float:
    """Distance (px) between two boxes' centres."""
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


def drawn_box(frame: np.ndarray):
    """The bounding box (x0, y0, x1, y1) of the box colour's pixels, or None where none is drawn."""
    r, g, b = (frame[..., c].astype(int) for c in range(3))
    ys, xs = np.nonzero((g > 180) & (r < 110) & (b < 110))
    if len(xs) < 4 * BOX_WIDTH:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_the_box_is_drawn_where_the_face_is_and_not_in_a_faceless_second(overlay):
    _, (frames, times, _), (src, _, _) = overlay
    for i, t in enumerate(times):
        s = int(t + 1e-6)
        if s in (2, 3):
            assert drawn_box(frames[i]) is None, f"a box in faceless second {s}"
            continue
        truth = media.face_box(gap_faces(t)[0])
        assert off(drawn_box(frames[i]), truth) < CENTRE_TOLERANCE, f"frame {i}"
        x0, y0, x1, y1 = (round(v) for v in truth)
        diff = np.abs(frames[i].astype(int) - src[i].astype(int)).sum(axis=2)
        assert diff[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].mean() < 15  # the face itself is left alone


def test_the_box_follows_a_fast_face_within_its_second(tmp_path):
    """A face crossing at 150 px/s: the second's mean box is 75 px off it at the second's start
    and end; the box drawn is the face's own in every frame."""
    place = lambda t: (20 + round(150 * t), 40, 160)  # noqa: E731
    clip = media.make_clip(tmp_path / "fast.mp4", 2.0, 25, (560, 260), lambda t: [place(t)])
    rows = []
    for s in range(2):
        x0, y0, x1, y1 = media.face_box(place(s + 0.5))  # the second's mean box
        rows.append(
            dict(
                video="fast.mp4",
                second=s,
                start=float(s),
                end=float(s + 1),
                face=True,
                valence=1,
                arousal=1,
                valence_score=1.0,
                arousal_score=1.0,
                face_x0=x0,
                face_y0=y0,
                face_x1=x1,
                face_y1=y1,
            )
        )
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    frames, times, _ = decoded(render(clip, tmp_path / "t.csv", tmp_path / "o.mp4").out)
    truth = [media.face_box(place(t)) for t in times]
    means = [media.face_box(place(int(t + 1e-6) + 0.5)) for t in times]
    assert max(off(m, b) for m, b in zip(means, truth)) > 70  # where the mean box would be drawn
    assert max(off(drawn_box(f), b) for f, b in zip(frames, truth)) < CENTRE_TOLERANCE


def test_bar_lengths_follow_the_values(overlay):
    _, (frames, times, _), _ = overlay
    h, w = frames[0].shape[:2]
    for s in range(5):
        frame = frames[[i for i, t in enumerate(times) if int(t + 1e-6) == s][3]]
        for dim, values in (("valence", VALENCE), ("arousal", AROUSAL)):
            v = values[s]
            want = round(v / 10 * bar_layout(w, h)[dim].half) if v is not None else 0
            assert abs(bar_reach(frame, dim) - want) <= LENGTH_TOLERANCE, (dim, s)


def test_per_frame_tables_hold_each_sample_until_the_next(tmp_path, clips_dir):
    # samples every 0.2 s for 1 s, valence rising by 2 each
    rows = [
        dict(
            video="gap.mkv",
            frame=k,
            time=k / 5,
            face=True,
            valence=2 * k,
            valence_score=2.0 * k,
            arousal=0,
            arousal_score=0.0,
        )
        for k in range(5)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "f.csv", index=False)
    out = render(clips_dir / GAP, tmp_path / "f.csv", tmp_path / "f.mp4", name="gap.mkv")
    frames, times, _ = decoded(out.out)
    half = bar_layout(320, 240)["valence"].half
    for i, t in enumerate(times[:30]):
        k = int(t * 5 + 1e-6)  # the sample on screen
        assert abs(bar_reach(frames[i], "valence") - round(2 * k / 10 * half)) <= LENGTH_TOLERANCE, i
    # after the last sample its values stay on screen to the end of the clip
    assert abs(bar_reach(frames[-1], "valence") - round(8 / 10 * half)) <= LENGTH_TOLERANCE


def test_existing_output_is_refused_without_overwrite(tmp_path, clips_dir):
    table = second_table(tmp_path / "t.csv")
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep")
    with pytest.raises(FerError, match="already exists.*--overwrite"):
        render(clips_dir / GAP, table, out)
    assert out.read_bytes() == b"keep"
    render(clips_dir / GAP, table, out, overwrite=True)
    assert len(decoded(out)[0]) == 150


def test_cli_errors_are_one_line(tmp_path, clips_dir):
    from typer.testing import CliRunner

    from fercli.cli import app

    table = second_table(tmp_path / "t.csv", video="other.mp4")
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, ["render", *map(str, args)], env={"COLUMNS": "2000"})  # no wrapping by width
        return r.exit_code, r.output.strip()

    code, text = run(tmp_path / "nope.mp4", "--table", table, "--out", tmp_path / "o.mp4")
    assert code == 2 and "nope.mp4: no such video" in text and "\n" not in text
    code, text = run(clips_dir / GAP, "--table", tmp_path / "none.csv", "--out", tmp_path / "o.mp4")
    assert code == 2 and "none.csv: no such table" in text and "\n" not in text
    code, text = run(clips_dir / GAP, "--table", table, "--out", tmp_path / "o.mp4")
    assert code == 2 and "no rows for gap.mkv" in text and "other.mp4" in text and "--name" in text and "\n" not in text
    assert not (tmp_path / "o.mp4").exists()
    code, text = run(clips_dir / GAP, "--table", table, "--out", tmp_path / "o.mp4", "--name", "other.mp4")
    assert code == 0 and "150 frames" in text and (tmp_path / "o.mp4").exists()


def test_a_rotated_phone_clip_comes_out_upright(tmp_path):
    # stored landscape with a -90 display matrix: annotation's boxes are in the upright frame
    upright = [media.scene(120, 160, [(10, 20, 90)], seed=i) for i in range(10)]
    path = media.write_coded(
        tmp_path / "phone.mp4", [np.rot90(f, 1) for f in upright], 25, "libx264", "yuv420p", rotation=-90
    )
    pd.DataFrame([dict(video="phone.mp4", second=0, start=0.0, end=0.4, face=False)]).to_csv(
        tmp_path / "t.csv", index=False
    )
    out = render(path, tmp_path / "t.csv", tmp_path / "o.mp4").out
    frames, _, _ = decoded(out)
    assert frames[0].shape == (160, 120, 3)
    top = slice(0, 100)  # above the bars
    assert np.abs(frames[5][top].astype(int) - upright[5][top]).mean() < 5


MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


@pytest.mark.skipif(
    not MEGAMIND.is_file(), reason="Debian's opencv-doc (OpenCV's sample Megamind.avi) is not installed"
)
def test_an_avi_whose_frame_timestamps_go_backwards_renders_every_frame_in_order(tmp_path):
    # OpenCV's sample: MPEG-4 part 2 with B-frames in AVI. The decoder hands frames their decode
    # order's pts, which go backwards; the muxer refused them (exit 3). The overlay takes decode's
    # frame starts (the packets' times in display order), as annotation does.
    from fercli.media.decode import open_video

    with av.open(str(MEGAMIND)) as c:
        stamps = [f.pts for f in c.decode(video=0)]
    assert stamps != sorted(stamps)  # the trap is in the file
    with open_video(MEGAMIND) as video:
        starts, duration = video.starts, video.info.duration
    table = tmp_path / "t.csv"
    pd.DataFrame(
        [dict(video="Megamind.avi", second=s, start=float(s), end=float(s + 1), face=False) for s in range(12)]
    ).to_csv(table, index=False)
    result = render(MEGAMIND, table, tmp_path / "o.mp4")
    frames, times, _ = decoded(result.out)
    assert result.frames == len(frames) == len(stamps)
    assert np.all(np.diff(times) > 0)
    assert np.allclose(np.array(times) - times[0], starts, atol=1e-3)  # decode's times, to the millisecond
    assert times[-1] - times[0] == pytest.approx(starts[-1]) and starts[-1] < duration


# -- each row on its own person: the boxes sidecar, across cuts --------------------------------

CUT_FPS = 10  # frames between samples, so the cuts fall between them
SAMPLE_S = 0.2  # the model's samples, 5 a second
# (start s, end s, [(person, x, y, head width px, leaves at s or None)]); 0 the astronaut, 1 the
# player of messi5.jpg. The cuts fall between samples (2.1, 4.1 s); the second shot puts the
# player where the astronaut stood, before the same wall; the astronaut leaves at 5.3 s.
CUT_SHOTS = (
    (0.0, 2.1, [(0, 60, 40, 150, None)]),
    (2.1, 4.1, [(1, 60, 40, 150, None)]),
    (4.1, 6.0, [(1, 30, 70, 120, None), (0, 270, 40, 150, 5.3)]),
)


def heads_at(t: float) -> dict[int, tuple]:
    """{person: head box} on screen at time t."""
    shot = next(s for s in CUT_SHOTS if s[0] <= t + 1e-9 < s[1])
    return {p: (x, y, x + w, y + w) for p, x, y, w, gone in shot[2] if gone is None or t < gone - 1e-9}


def cut_clip_frames() -> list[np.ndarray]:
    import real_faces

    photos = {0: (real_faces.astronaut(), real_faces.ASTRONAUT_HEAD), 1: (real_faces.messi(), real_faces.MESSI_HEAD)}
    frames = []
    for i in range(round(CUT_SHOTS[-1][1] * CUT_FPS)):
        frame = real_faces.background(480, 270, seed=0)  # one wall for every shot
        for p, (x0, y0, x1, _) in heads_at(i / CUT_FPS).items():
            real_faces.paste(frame, real_faces.head(*photos[p], x1 - x0), x0, y0)
        frames.append(frame)
    return frames


def inside(box, head) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return head[0] <= cx <= head[2] and head[1] <= cy <= head[3]


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory):
    """The clip, its per-second table of both people (as --all-faces writes it) and its boxes
    sidecar made the producer's way: each sample's detections, each given to the true person."""
    import real_faces

    from fercli.media.faces import FaceDetector
    from fercli.tables.boxes import box_rows, boxes_path, write_boxes

    if real_faces.messi() is None:
        pytest.skip("Debian's opencv-doc is missing (messi5.jpg): apt-get install opencv-doc")
    root = tmp_path_factory.mktemp("cuts")
    frames = cut_clip_frames()
    path = media.write_video(root / "cuts.mp4", frames, CUT_FPS)
    samples, people = [], {}
    with FaceDetector() as detector:
        for k in range(round(CUT_SHOTS[-1][1] / SAMPLE_S)):
            t = k * SAMPLE_S
            shot = next(i for i, s in enumerate(CUT_SHOTS) if s[0] <= t < s[1])
            faces = {}
            for d in detector.detect(frames[round(t * CUT_FPS)]):
                person = next(p for p, head in heads_at(t).items() if inside(d.box, head))
                faces[10 * shot + person] = (d.box, d.score)
                people[10 * shot + person] = person
            samples.append((t, faces))
    rows = []
    for second in range(6):
        for person in sorted({p for k in range(CUT_FPS) for p in heads_at(second + k / CUT_FPS)}):
            rows.append(
                dict(
                    video="cuts.mp4",
                    second=second,
                    start=float(second),
                    end=float(second + 1),
                    person=person,
                    face=True,
                    valence=person * 5,
                    arousal=0,
                    face_x0=0.0,
                    face_y0=0.0,
                    face_x1=1.0,
                    face_y1=1.0,
                )
            )
    table = root / "all.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    write_boxes(boxes_path(table), box_rows("cuts.mp4", samples, people))
    return path, table, frames


def test_each_row_is_drawn_on_its_own_person_in_every_frame_and_nowhere_else(cut_clip):
    from fercli.tables.boxes import boxes_path, read_boxes
    from fercli.views.render import FrameBoxes, PersonBoxes, Timeline

    _, table, frames = cut_clip
    timeline = Timeline(pd.read_csv(table))
    wrong_before = 0
    with PersonBoxes(read_boxes(boxes_path(table))) as placer, FrameBoxes() as nearest:
        for i, frame in enumerate(frames):
            t = i / CUT_FPS
            heads = heads_at(t)
            rows = timeline.at(t)
            for row in placer.place(frame, rows, t):
                box = [row[c] for c in ("face_x0", "face_y0", "face_x1", "face_y1")]
                if row["person"] in heads:
                    assert None not in box and inside(box, heads[row["person"]]), (t, row["person"], box)
                else:
                    assert box == [None] * 4, (t, row["person"], box)  # not on screen: nothing drawn
            for row in nearest.place(frame, [{**r, **_row_mean_box(r)} for r in rows]):  # the nearest-box rule
                box = [row[c] for c in ("face_x0", "face_y0", "face_x1", "face_y1")]
                wrong_before += row["person"] not in heads or not inside(box, heads[row["person"]])
    assert wrong_before > 0  # issue 38: the old rule drew someone's box on another person, or on no one


def _row_mean_box(row: dict) -> dict:
    """The row's box as annotate gives it: the mean of its person's true head over the second."""
    boxes = [heads_at(row["second"] + k / CUT_FPS).get(row["person"]) for k in range(CUT_FPS)]
    boxes = np.array([b for b in boxes if b is not None], float)
    return dict(zip(("face_x0", "face_y0", "face_x1", "face_y1"), boxes.mean(axis=0)))


def test_render_reads_the_sidecar_beside_the_table(cut_clip, tmp_path):
    path, table, _ = cut_clip
    out = render(path, table, tmp_path / "o.mp4", name="cuts.mp4")
    frames, _, _ = decoded(out.out)
    assert out.frames == len(frames) == 60
    # At 5.6 s the astronaut has left: nothing green where she stood; the player's box is drawn.
    green = lambda f, x0, y0, x1, y1: int((np.abs(f[y0:y1, x0:x1].astype(int) - (0, 255, 0)).sum(axis=2) < 120).sum())  # noqa: E731
    frame = frames[round(5.6 * CUT_FPS)]
    assert green(frame, 250, 20, 440, 210) == 0 and green(frame, 20, 60, 170, 210) > 100
