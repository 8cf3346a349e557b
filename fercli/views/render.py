"""`fer render`: a clip re-encoded with its annotation drawn on every frame.

Every frame of the source is decoded (not only the model's samples), turned upright by its
rotation tag as annotation saw it, drawn on with PIL and encoded as H.264 (yuv420p) with the
source's own timestamps, so the overlay has the source's frame count and duration and plays in
step with it. Per frame, the row on screen at its time is drawn: per-second tables hold a
second's values over [start, end); per-frame (`--per-frame`) tables hold a sample's values until
the next sample. Drawn: the face box, the expression and its
probability above it (tables from a model with the expression head), and two bars, valence and
arousal, from the centre of their track (0) towards +10 (right) or -10 (left).

The box is the face as the detector finds it in that frame (`FrameBoxes`): a per-second row's
box is the mean over its second, which sits off a moving face at the start and end of the
second, so each frame is detected again and each row takes the nearest detection (centre to
centre, within MAX_BOX_SHIFT box sides; the nearest pairs first, a detection to one row). A
frame without one (the detector missed the face there) keeps the row's box.
A table per video frame (`--per-frame`) holds each frame's own detection and is drawn as it is.

Where the table has its boxes sidecar (`tables.boxes`: each person's box in each sample), a row
is drawn only on its own person (`PersonBoxes`): in each frame, the detection that sits on that
person's box at the samples around the frame, where no cut (found frame by frame, as
`media.people.ShotCuts` finds them) lies between; between two samples of one track the box
follows the face even where the detector missed it; and nothing where the person is not on
screen. Without a sidecar the nearest box is taken, which cannot tell two people apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..core.errors import FerError
from ..core.labels import LABEL_MAX, LABEL_MIN
from ..media.inputs import FRAMES_FPS
from ..tables.rows import (
    BOX_COLUMNS,
    TIME_EPS,  # a frame starting on a row's boundary (float times) belongs to the later row
)

# Output container by suffix; all take H.264.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
ENCODER = "libx264"
PIXEL_FORMAT = "yuv420p"  # what every player takes; needs even sides (odd ones are padded by 1 px)
ENCODER_OPTIONS = {"crf": "18", "preset": "veryfast"}  # near-transparent quality, fast on a CPU
# How far (in the row box's larger side) a frame's detection may sit from a row's box and still
# be that row's face: a face crossing at 150 px/s is 75 px off its second's mean box at the
# second's ends, about one side of an 80 px face box, where the boxes no longer overlap at all.
MAX_BOX_SHIFT = 1.5
# How far (in the person's sample box's larger side) a frame's detection may sit from that box
# and be that person: a face crossing at 500 px/s moves 100 px in a sample's 0.2 s, two thirds of
# a 150 px face box; two people side by side sit a whole box apart.
PERSON_BOX_SHIFT = 0.75

# What a browser's <video> plays (Chromium, Firefox, Safari in common): these codecs in an MP4,
# QuickTime or WebM file. Anything else (AVI, MPEG-4 part 2, MJPEG, HEVC, Matroska) gets a preview.
BROWSER_CONTAINERS = (".mp4", ".m4v", ".mov", ".webm")
BROWSER_CODECS = ("h264", "vp8", "vp9", "av1")
PREVIEW_HEIGHT = 360  # px at most; a preview is for finding one's place, not for looking closely
PREVIEW_OPTIONS = {"crf": "28", "preset": "veryfast"}  # small files, about 0.5 MB per minute at 360p

BOX_COLOUR = (0, 255, 0)  # the tracked face's box
BOX_WIDTH = 3  # px, drawn inside the box's edge
TEXT_COLOUR = (255, 255, 255)
TRACK_COLOUR = (40, 40, 40)  # a bar's track, -10 .. 10
VALENCE_COLOUR = (255, 200, 0)
AROUSAL_COLOUR = (0, 170, 255)
MARGIN = 6  # px between the bars and the frame's edge
LABEL_WIDTH = 14  # px left of each track for its letter (V, A)
BAR_HEIGHT = 8  # px
BAR_GAP = 4  # px between the two bars
BAR_HALF_SHARE = 0.2  # half a track (0 to 10) as a share of the frame's width


@dataclass(frozen=True)
class Bar:
    """Where a bar is drawn: its track spans centre +- half on rows y0 .. y1 - 1 (px)."""

    centre: int
    half: int
    y0: int
    y1: int

    def length(self, value: float) -> int:
        """Pixels the bar reaches from the centre for `value` (negative: to the left)."""
        v = max(LABEL_MIN, min(LABEL_MAX, value))
        return round(v / LABEL_MAX * self.half)


def bar_layout(width: int, height: int) -> dict[str, Bar]:
    """The valence and arousal bars' places in a frame of width x height px (bottom left)."""
    half = max(1, round(width * BAR_HALF_SHARE))
    centre = MARGIN + LABEL_WIDTH + half
    a0 = height - MARGIN - BAR_HEIGHT
    v0 = a0 - BAR_GAP - BAR_HEIGHT
    return {"valence": Bar(centre, half, v0, v0 + BAR_HEIGHT), "arousal": Bar(centre, half, a0, a0 + BAR_HEIGHT)}


@dataclass
class RenderResult:
    out: Path
    video: str  # the table's `video` value whose rows were drawn
    frames: int  # frames written (the source's count)


def render(
    video: str | Path,
    table: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    frames_fps: float = FRAMES_FPS,
) -> RenderResult:
    """Write `out` (.mp4, .m4v, .mov or .mkv): `video` with `table`'s rows for it drawn on.

    name: the table's `video` value to draw, when it differs from the file's (default: the row
    whose `video` is the path as given, or the path's tail: `sub/a.mp4` matches `/x/sub/a.mp4`).
    frames_fps: the rate of a folder of frames, as `fer annotate --frames-fps` read it.
    An existing `out` is refused unless `overwrite`; it is replaced atomically. Raises FerError
    (one line) for a missing video or table, a table without rows for the clip, or an
    undecodable video.
    """
    from ..core.files import atomic_write
    from ..tables.boxes import boxes_path, read_boxes
    from ..tables.writers import read_table

    video, table, out = Path(video), Path(table), Path(out)
    if not video.exists():
        raise FerError(f"{video}: no such video")
    if not table.exists():
        raise FerError(f"{table}: no such table")
    container = CONTAINERS.get(out.suffix.lower())
    if container is None:
        raise FerError(f"{out}: the overlay must end in {', '.join(CONTAINERS)}")
    if out.exists() and not overwrite:
        raise FerError(f"{out} already exists: --overwrite replaces it")
    # per-second rows span [start, end); per-frame rows start at `time`
    df = read_table(table, require=("video", ("time", "start"), ("time", "end")))
    picked = _pick_video(df, video, name, table)
    timeline = Timeline(df[df["video"] == picked])
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    sidecar = boxes_path(table)
    if sidecar.is_file() and "frame" not in df.columns:
        samples = read_boxes(sidecar)
        placer = PersonBoxes(samples[samples["video"] == picked])
    else:
        placer = FrameBoxes(detect="frame" not in df.columns)
    with placer as boxes:
        paint = lambda image, t: draw(image, boxes.place(image, timeline.at(t), t))  # noqa: E731
        write = lambda tmp: written.append(_encode(_frames(video, frames_fps), tmp, container, ENCODER_OPTIONS, paint))  # noqa: E731
        atomic_write(out, write)
    return RenderResult(out, picked, written[0])


def _pick_video(df, video: Path, name: str | None, table: Path) -> str:
    names = sorted(set(df["video"].dropna()))
    if name is not None:
        if name not in names:
            raise FerError(f"{table}: no rows for video {name!r} ({_some(names)})")
        return name
    if str(video) in names:
        return str(video)
    parts = video.resolve().parts
    tails = [n for n in names if Path(n).parts == parts[len(parts) - len(Path(n).parts) :]]
    if len(tails) == 1:
        return tails[0]
    if len(tails) > 1:  # a.mp4 and sub/a.mp4: the longest tail is the most specific match
        longest = max(tails, key=lambda n: len(Path(n).parts))
        if sum(len(Path(n).parts) == len(Path(longest).parts) for n in tails) == 1:
            return longest
        raise FerError(f"{table}: several videos match {video} ({', '.join(tails)}); pick one with --name")
    raise FerError(f"{table}: no rows for {video.name} ({_some(names)}); --name picks the table's name for it")


def _some(names: list[str], shown: int = 5) -> str:
    if not names:
        return "the table is empty"
    more = f", ... ({len(names)} videos)" if len(names) > shown else ""
    return "the table has " + ", ".join(names[:shown]) + more


class Timeline:
    """The rows on screen at a time: per-second rows over [start, end), per-frame rows until the next."""

    def __init__(self, rows):
        key = "time" if "time" in rows.columns else "start"
        rows = rows.sort_values([key] + (["person"] if "person" in rows.columns else []), kind="stable")
        self.records = rows.to_dict("records")
        self.starts = np.array([r[key] for r in self.records], dtype=float)
        self.ends = np.array([r["end"] for r in self.records], dtype=float) if key == "start" else None
        self.keys = np.unique(self.starts)

    def at(self, t: float) -> list[dict]:
        """The rows (one per face with --all-faces) whose span holds time t (s)."""
        i = np.searchsorted(self.keys, t + TIME_EPS, side="right") - 1
        if i < 0:
            return []
        start = self.keys[i]
        rows = [r for r, s in zip(self.records, self.starts) if s == start]
        if self.ends is not None:  # a second's end bounds it (the last row ends at the clip's end)
            rows = [r for r in rows if t < r["end"] + TIME_EPS]
        return rows


def browser_plays(video: Path) -> bool:
    """Whether browsers play `video` as it is (suffix and codec; see BROWSER_CODECS)."""
    import av

    if video.suffix.lower() not in BROWSER_CONTAINERS:
        return False
    try:
        with av.open(str(video)) as container:
            return bool(container.streams.video) and container.streams.video[0].codec_context.name in BROWSER_CODECS
    except (av.FFmpegError, OSError):
        return False


def preview(video: str | Path, out: str | Path, height: int = PREVIEW_HEIGHT) -> int:
    """Write `out` (.mp4): `video` as H.264 a browser plays, at most `height` px high, its frames
    at their own times (as `render` keeps them). Returns the frames written."""
    from ..core.files import atomic_write

    video, out = Path(video), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    frames = ((_scaled(image, height), *rest) for image, *rest in _frames(video, FRAMES_FPS))
    atomic_write(out, lambda tmp: written.append(_encode(frames, tmp, "mp4", PREVIEW_OPTIONS)))
    return written[0]


def _scaled(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if h <= height:
        return image
    size = (max(2, round(w * height / h / 2) * 2), height)
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


class FrameBoxes:
    """Each row's face box in one frame: the frame's own detection nearest the row's box (within
    MAX_BOX_SHIFT of its side), else the row's box. `detect=False`: the rows' boxes as they are."""

    def __init__(self, detect: bool = True):
        self.detector = None
        if detect:
            from ..media.faces import FaceDetector

            self.detector = FaceDetector()

    def place(self, image: np.ndarray, rows: list[dict], t: float | None = None) -> list[dict]:
        faced = [r for r in rows if r.get("face") and not any(_missing(r.get(c)) for c in BOX_COLUMNS)]
        if self.detector is None or not faced:
            return rows
        found = [d.box for d in self.detector.detect(image)]
        pairs = sorted(
            (_shift([float(r[c]) for c in BOX_COLUMNS], box), i, j)
            for i, r in enumerate(faced)
            for j, box in enumerate(found)
        )
        placed: dict[int, int] = {}
        for shift, i, j in pairs:  # the nearest first, each detection to one row
            if shift <= MAX_BOX_SHIFT and i not in placed and j not in placed.values():
                placed[i] = j
        moved = {id(faced[i]): dict(zip(BOX_COLUMNS, found[j])) for i, j in placed.items()}
        return [{**r, **moved[id(r)]} if id(r) in moved else r for r in rows]

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()

    def __enter__(self) -> FrameBoxes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PersonBoxes:
    """Each row's face box in one frame from its own person's samples (the boxes sidecar of one
    video: `tables.boxes` rows); frames come in time order. A row whose person is not on screen
    in the frame loses its box (its bars stay)."""

    def __init__(self, samples):
        from ..media.faces import FaceDetector
        from ..media.people import ShotCuts

        samples = samples.sort_values(["time", "person"], kind="stable")
        self.times = np.unique(samples["time"].to_numpy(float))
        steps = np.diff(self.times)
        self.step = float(np.median(steps)) if len(steps) else 0.2  # s between samples
        self.by_person = {int(p): g for p, g in samples.groupby("person")}
        self.detector, self.shots = FaceDetector(), ShotCuts()
        self.last_cut: float | None = None  # time of the latest frame that began a shot

    def place(self, image: np.ndarray, rows: list[dict], t: float) -> list[dict]:
        if self.shots(image):
            self.last_cut = t
        people = {id(r): self._person(r) for r in rows}
        wanted = {id(r): self._candidates(p, t) for r in rows if (p := people[id(r)]) is not None and r.get("face")}
        if not wanted:
            return [self._boxed(r, None) for r in rows]
        found = [d.box for d in self.detector.detect(image)]
        pairs = sorted(
            (min(_shift(c, box) for c in cands), key, j)
            for key, (cands, _) in wanted.items()
            if cands
            for j, box in enumerate(found)
        )
        placed: dict[int, tuple] = {}
        for shift, key, j in pairs:  # the nearest first, each detection to one person
            if shift <= PERSON_BOX_SHIFT and key not in placed and found[j] not in placed.values():
                placed[key] = found[j]
        for key, (_, between) in wanted.items():
            if key not in placed and between is not None:  # one track on both sides: a missed detection
                placed[key] = between
        return [self._boxed(r, placed.get(id(r))) for r in rows]

    def _person(self, row: dict) -> int | None:
        person = row.get("person")
        if not _missing(person):
            return int(person)
        return next(iter(self.by_person)) if len(self.by_person) == 1 else None  # a default table: its one person

    def _candidates(self, person: int, t: float) -> tuple[list, tuple | None]:
        """The person's boxes at the samples around t that may be theirs in this frame, and the
        box between two samples of one track (None unless both)."""
        got = self.by_person.get(person)
        if got is None:
            return [], None
        times = got["time"].to_numpy(float)
        i = int(np.searchsorted(times, t + TIME_EPS, side="right"))
        before = got.iloc[i - 1] if i > 0 and t - times[i - 1] <= self.step + TIME_EPS else None
        after = got.iloc[i] if i < len(times) and times[i] - t <= self.step + TIME_EPS else None
        k = int(np.searchsorted(self.times, t + TIME_EPS, side="right"))
        last_sample = self.times[k - 1] if k > 0 else -np.inf
        cut_since = self.last_cut is not None and self.last_cut > last_sample + TIME_EPS
        if before is not None and self.last_cut is not None and self.last_cut > before["time"] + TIME_EPS:
            before = None  # a cut came after that sample: its shot is over
        if after is not None and not (cut_since or (before is not None and before["track"] == after["track"])):
            after = None  # it may lie beyond a cut still to come
        cands = [_row_box(x) for x in (before, after) if x is not None]
        between = None
        if before is not None and after is not None and after["time"] > before["time"]:
            w = (t - before["time"]) / (after["time"] - before["time"])
            between = tuple((1 - w) * a + w * b for a, b in zip(_row_box(before), _row_box(after)))
        return cands, between

    @staticmethod
    def _boxed(row: dict, box) -> dict:
        return {**row, **dict(zip(BOX_COLUMNS, box if box is not None else (None,) * 4))}

    def close(self) -> None:
        self.detector.close()

    def __enter__(self) -> PersonBoxes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _row_box(sample) -> tuple:
    return tuple(float(sample[c]) for c in ("x0", "y0", "x1", "y1"))


def _shift(row_box, box) -> float:
    """Distance between two boxes' centres, in the first box's larger side."""
    side = max(row_box[2] - row_box[0], row_box[3] - row_box[1], 1.0)
    dx = (box[0] + box[2] - row_box[0] - row_box[2]) / 2
    dy = (box[1] + box[3] - row_box[1] - row_box[3]) / 2
    return float(np.hypot(dx, dy)) / side


def _frames(video: Path, frames_fps: float):
    """(upright RGB image, pts, duration, time base, time from the first frame in s, frame rate) per frame.

    pts and duration in the time base; duration None when the source gives none.
    """
    if video.is_dir():
        from ..media.decode import open_video

        with open_video(video, frames_fps=frames_fps) as source:
            rate = Fraction(frames_fps).limit_denominator(1001)
            for f in source.sample(frames_fps):
                yield f.image, f.index, 1, 1 / rate, f.time, rate
        return
    import av

    from ..media.decode import open_video

    # decode's rule for a file's time: its timestamps where usable, else frame i at i / fps
    # (an AVI of MPEG-4 part 2 with B-frames: its pts go backwards, and the muxer refused them).
    with open_video(video) as source:
        by_index, fps, starts = source.info.by_index, source.info.fps, source.starts
    try:
        container = av.open(str(video))
    except av.FFmpegError as e:
        raise FerError(f"{video}: cannot be read as a video ({e})") from None
    with container:
        if not container.streams.video:
            raise FerError(f"{video}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = (
            Fraction(fps).limit_denominator(1001)
            if by_index
            else stream.average_rate or stream.guessed_rate or Fraction(25)
        )
        first = None
        try:
            for n, frame in enumerate(container.decode(stream)):
                if by_index:
                    pts, duration, time_base = n, 1, 1 / rate
                elif n < len(starts):
                    # Frame n starts at starts[n]: the packets' pts in display order (the frame's
                    # own pts is the decode order's in an AVI with B-frames, and went backwards).
                    first = (frame.pts or 0) if first is None else first
                    pts, duration, time_base = (
                        first + round(starts[n] / stream.time_base),
                        frame.duration or None,
                        stream.time_base,
                    )
                else:
                    break  # frames the index does not list (decode's reader stops there too)
                first = pts if first is None else first
                # Stored pixels turned as the display matrix says: annotation's boxes are upright.
                image = np.rot90(frame.to_ndarray(format="rgb24"), (frame.rotation or 0) // 90)
                yield image, pts, duration, time_base, float((pts - first) * time_base), rate
        except av.FFmpegError as e:
            raise FerError(f"{video}: decoding failed ({e})") from None
    if first is None:
        raise FerError(f"{video}: no frames")


def _encode(frames, path: str, container: str, options: dict, paint=None) -> int:
    """Frames as `_frames` yields them, encoded to `path` at their own timestamps, each first
    made even-sided and passed through `paint(image, t)` when given; the number of frames."""
    import av

    n, durations = 0, {}  # presentation time -> duration, both in s (Fractions)
    with av.open(path, "w", format=container) as out:
        stream = None
        for image, pts, duration, time_base, t, rate in frames:
            image = _even(image)
            if stream is None:
                stream = out.add_stream(ENCODER, rate=rate)
                stream.pix_fmt = PIXEL_FORMAT
                stream.height, stream.width = image.shape[:2]
                stream.codec_context.time_base = time_base
                stream.options = dict(options)
            frame = av.VideoFrame.from_ndarray(paint(image, t) if paint else image, format="rgb24")
            frame.pts, frame.time_base = pts, time_base  # the source's timestamps, kept
            if duration:
                durations[pts * time_base] = duration * time_base
            for packet in stream.encode(frame):
                _mux(out, packet, durations)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                _mux(out, packet, durations)
    return n


def _mux(out, packet, durations: dict) -> None:
    # libx264's packets last 1 / frame rate; the source's own durations (a variable rate, a
    # millisecond time base) put the overlay's end where the source's is.
    d = durations.pop(packet.pts * packet.time_base, None) if packet.pts is not None else None
    if d is not None:
        packet.duration = round(d / packet.time_base)
    out.mux(packet)


def _even(image: np.ndarray) -> np.ndarray:
    # yuv420p halves the chroma planes: odd sides get their last row/column repeated once.
    h, w = image.shape[:2]
    return (
        np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else np.ascontiguousarray(image)
    )


def draw(image: np.ndarray, rows: list[dict]) -> np.ndarray:
    """`image` (RGB uint8) with the rows' face boxes, expressions and the first face's bars drawn."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(image)
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    faces = [r for r in rows if r.get("face")]
    for r in faces:
        box = [r.get(c) for c in BOX_COLUMNS]
        if any(_missing(v) for v in box):
            continue
        pen.rectangle(
            [round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1], outline=BOX_COLOUR, width=BOX_WIDTH
        )
        caption = _caption(r, len(rows) > 1)
        if caption:
            pen.text((round(box[0]), max(0, round(box[1]) - 12)), caption, fill=TEXT_COLOUR, font=font)
    h, w = image.shape[:2]
    main = faces[0] if faces else None
    for dim, colour in (("valence", VALENCE_COLOUR), ("arousal", AROUSAL_COLOUR)):
        bar = bar_layout(w, h)[dim]
        pen.rectangle([bar.centre - bar.half, bar.y0, bar.centre + bar.half, bar.y1 - 1], fill=TRACK_COLOUR)
        pen.text((MARGIN, bar.y0 - 2), dim[0].upper(), fill=TEXT_COLOUR, font=font)
        value = _value(main, dim) if main is not None else None
        shown = f"{value:+.1f}" if value is not None else "no face"
        pen.text((bar.centre + bar.half + MARGIN, bar.y0 - 2), shown, fill=TEXT_COLOUR, font=font)
        if value is not None:
            reach = bar.length(value)
            if reach:
                x0, x1 = sorted((bar.centre, bar.centre + reach))
                pen.rectangle([x0, bar.y0, x1 - 1, bar.y1 - 1], fill=colour)
        pen.line([bar.centre, bar.y0 - BAR_GAP + 1, bar.centre, bar.y0 - 1], fill=TEXT_COLOUR)  # zero, above the bar
    return np.asarray(canvas)


def _value(row: dict, dim: str) -> float | None:
    # The score (expected label, or the frame model's mean) is drawn: finer than the label.
    for col in (f"{dim}_score", dim):
        v = row.get(col)
        if not _missing(v):
            return float(v)
    return None


def _caption(row: dict, numbered: bool) -> str:
    parts = [f"#{row['person']}"] if numbered and not _missing(row.get("person")) else []
    expression = row.get("expression")
    if not _missing(expression):
        p = row.get(expression)
        parts.append(f"{expression} {p:.2f}" if not _missing(p) else str(expression))
    return " ".join(parts)


def _missing(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))
