"""Decode a clip (video file or folder of frames) and sample it at a fixed rate, streaming.

Video files are decoded on the CPU with PyAV (its wheel's FFmpeg has dav1d, so it opens AV1 as
well as H.264, HEVC (8 and 10 bit), VP9, ProRes and MJPEG), forward and on the caller's thread,
and rotated (phone) clips are turned upright by their display matrix, whatever device the model
runs on (docs/inputs.md; decord, fer's decoder before, buffered frames without bound in its
decoding thread, and its PyPI wheel decodes on the CPU only).

Sampling sends the decoder only the packets the samples need: a frame that no sample shows and
no other frame references is never decoded (`bitstream` reads which from the packets' headers),
and wherever the decoder then gives anything but what a full decode would show there (a damaged
file), the clip is decoded again in full.

PyAV and PIL are imported inside the functions that need them, so importing this module
(and `fer --help`) stays cheap.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..core.errors import VideoError, first_line
from .inputs import FRAMES_FPS, IMAGE_EXTENSIONS

CHUNK_FRAMES = 16  # frames decoded per read at most; bounds memory whatever the video length
CHUNK_BYTES = 16 << 20  # RGB bytes per read at most: 720p reads 5 frames at a time, 1080p 2
AUTO_THREADS = 0  # FFmpeg decoder threads: 0 lets FFmpeg choose (frame threads per core)
# A frame counts as on screen at t when it starts no later than t + TIME_TOLERANCE.
# Matroska stores milliseconds, so a 29.97 fps frame starts up to 0.5 ms after k / fps
# (ties round up). More than half a tick, less than a whole
# one, so a start on the millisecond grid never sits on the edge for t on that grid.
TIME_TOLERANCE = 0.75e-3  # s
MAX_TIMESTAMP = 1e6  # s; later than this (11 days) is garbage, not a clip
# Samples follow the frames the stream really has, not what its timestamps declare: a 1.4 KB
# Matroska file whose last frame starts at 999,000 s (or lasts that long) planned 4,995,001
# samples, 11 hours of work. A frame on screen longer than this is refused (a one-line
# VideoError naming the file); an hour is far past any pause a recorder leaves.
MAX_HOLD_S = 3600.0  # s
# Frames each on screen over this long are a slideshow at most; where they add up to more than
# MAX_HOLD_S, the clip is refused the same way: 270 frames each held 3,599 s (each under
# MAX_HOLD_S, 11 days in all) planned 4.8 million samples for 270 pictures.
LONG_HOLD_S = 60.0  # s
# The last frame's declared duration is kept unless it is both over a second and over this
# many times the clip's usual frame: then it lasts a usual frame (its end is a declaration).
LAST_FRAME_SLACK = 10
MESSAGE_CHARS = 160  # longest decoder reason quoted in an error message

log = logging.getLogger("fercli")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip, plus how it is being decoded."""

    path: Path
    fps: float  # native frame rate (frames/s) as the container reports it, or frames_fps
    frames: int  # frame count, as the container's index lists them
    duration: float  # s: end of the last frame (timestamps), or frames / fps
    last_start: float  # s: when the last frame starts, from the first frame (decides the rows)
    width: int  # px
    height: int  # px
    decoder: str  # "cpu", "images", or "gpu" (media.nvdec)
    by_index: bool = False  # True: the file's timestamps are unusable, frame i starts at i / fps


@dataclass(frozen=True)
class PacketCounts:
    """What a video file's decoder was given so far."""

    sent: int  # packets decoded
    skipped: int  # packets of frames no sample shows and no other frame references, never decoded


@dataclass(frozen=True)
class Frame:
    """One sample: the frame on screen at time k / fps (or, from `frames`, the file's frame k)."""

    index: int  # sample index k at the requested rate (`frames`: the frame's index in the file)
    time: float  # k / fps, seconds (`frames`: the frame's start)
    source: int  # index of the decoded frame shown at that time
    image: np.ndarray  # H x W x 3 uint8 RGB


def open_video(
    path, *, frames_fps: float = FRAMES_FPS, threads: int = AUTO_THREADS, skip_unseen: bool = True
) -> VideoSource:
    """Open a video file, or a folder of frames read as a clip at `frames_fps`.

    `threads`: FFmpeg decoder threads (0: FFmpeg chooses).
    skip_unseen: `sample` leaves undecoded the frames no sample shows and no other frame
    references (`bitstream`); False decodes every packet (a benchmark's baseline).
    Raises VideoError when the clip cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        return VideoSource(_ImageReader(path, frames_fps))
    _check_file(path)
    return VideoSource(_open_file(path, threads, skip_unseen))


class VideoSource:
    """An open clip. Use as a context manager; `sample` streams frames at any rate."""

    def __init__(self, reader: _ImageReader | _PyAVReader):
        self._reader = reader
        self.info: VideoInfo = reader.info

    @property
    def starts(self) -> np.ndarray:
        """Each frame's start (s from the first frame), in display order: decode's rule for a file's time."""
        return self._reader.starts

    @property
    def pts(self) -> np.ndarray | None:
        """Each frame's pts in the stream's ticks, in display order; None for a folder of frames or
        a file whose timestamps are unusable (its frames are numbered by order)."""
        return getattr(self._reader, "pts", None)

    def sample(self, fps: float) -> Iterator[Frame]:
        """Yield the frame on screen at t = k / fps for k = 0, 1, ... while t < duration.

        Decodes up to CHUNK_FRAMES frames (CHUNK_BYTES of RGB) per read and keeps none of them
        once yielded, so memory does not grow with the clip's length. A frame no sample shows and
        no other frame references (H.264, HEVC, MPEG-4 Part 2: `bitstream`) is not decoded at
        all; the samples are bit for bit those of a full decode.
        """
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"sampling rate must be a positive number, got {fps}")
        if self._reader is None:
            raise ValueError(f"{self.info.path} is closed")
        sources = sample_sources(self._reader.starts, self.info.duration, fps)
        chunk = max(1, min(CHUNK_FRAMES, CHUNK_BYTES // (3 * self.info.width * self.info.height)))
        return _stream(self._reader, sources, fps, chunk)

    def frames(self) -> Iterator[Frame]:
        """Yield every decoded frame in display order: `index` is the frame's own index in the
        file and `time` its start (`starts`, s from the first frame), streamed as `sample` does."""
        if self._reader is None:
            raise ValueError(f"{self.info.path} is closed")
        starts = self._reader.starts
        chunk = max(1, min(CHUNK_FRAMES, CHUNK_BYTES // (3 * self.info.width * self.info.height)))
        for frame in _stream(self._reader, np.arange(len(starts)), 1.0, chunk):
            yield Frame(index=frame.source, time=float(starts[frame.source]), source=frame.source, image=frame.image)

    def close(self) -> None:
        """Release the decoder."""
        if self._reader is not None and hasattr(self._reader, "close"):
            self._reader.close()
        self._reader = None

    @property
    def packets(self) -> PacketCounts:
        """Packets handed to the decoder and packets left unsent so far (a folder of frames has none)."""
        return PacketCounts(getattr(self._reader, "sent", 0), getattr(self._reader, "skipped", 0))

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_count(duration: float, fps: float) -> int:
    """Samples k / fps that fall inside a clip of `duration` seconds (the rule `sample` follows)."""
    return max(math.ceil((duration - TIME_TOLERANCE) * fps), 0)


def sample_sources(starts: np.ndarray, duration: float, fps: float) -> np.ndarray:
    """For each sample k (t = k / fps < duration), the index of the last frame starting at or before t.

    The one sampling rule: annotation (`VideoSource.sample`) and training (`features.sample_frames`) use it.
    """
    times = np.arange(sample_count(duration, fps)) / fps
    return np.maximum(np.searchsorted(starts, times + TIME_TOLERANCE, side="right") - 1, 0)


def _stream(reader, sources: np.ndarray, fps: float, chunk: int) -> Iterator[Frame]:
    reader.want(sources)
    k = 0
    for indices in _plan_reads(sources, reader.sparse, chunk):
        batch = dict(zip(indices, reader.read(indices)))
        while k < len(sources) and sources[k] in batch:
            # Each frame is an array of its own: handed out as it is at its last sample, copied
            # for a sample before that (upsampling shows it twice; each sample owns its pixels).
            last = k + 1 == len(sources) or sources[k + 1] != sources[k]
            image = np.ascontiguousarray(batch.pop(sources[k])) if last else np.array(batch[sources[k]], copy=True)
            yield Frame(index=k, time=k / fps, source=int(sources[k]), image=image)
            k += 1
        del batch  # before the next read, so two batches are never alive at once


def _plan_reads(sources: np.ndarray, sparse: bool, chunk: int = CHUNK_FRAMES) -> Iterator[list[int]]:
    """Index lists of at most `chunk` frames, in order, that cover every needed frame.

    sparse: only the needed frames (the readers skip the rest without converting them to RGB);
    otherwise every frame up to the last needed one, read forward without any seek (decord
    without usable timestamps).
    """
    if len(sources) == 0:
        return
    needed = np.unique(sources) if sparse else np.arange(sources[-1] + 1)
    for i in range(0, len(needed), chunk):
        yield needed[i : i + chunk].tolist()


ORIGIN_PACKETS = 64  # packets read to find the first frame's pts (B-frames reorder only a few)


def player_origin(path: str | Path) -> float:
    """Where a video file's first frame sits on a player's clock, in seconds (0 for a folder of
    frames). A table's t = 0 is the first video frame, but browsers and ELAN count from the start
    of the file, the earliest of its streams: a video track that starts after its sound (an edit
    list, a camera that records sound first) shows its first frame later than 0.
    """
    import av

    path = Path(path)
    if path.is_dir():
        return 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: cannot read as a video (no video stream this FFmpeg can decode)")
            stream = container.streams.video[0]
            pts = []
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None and not packet.is_discard:
                    pts.append(packet.pts)
                if len(pts) >= ORIGIN_PACKETS:
                    break
            if not pts or stream.time_base is None:
                return 0.0
            start = (container.start_time or 0) / av.time_base  # the file's start, microseconds
            return max(0.0, round(float(min(pts) * stream.time_base) - start, 6))
    except av.error.FFmpegError as error:
        raise VideoError(f"{path}: cannot read as a video ({_av_reason(error)})") from error


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")


class _PyAVReader:
    """A video file decoded on the CPU with PyAV, forward and on the calling thread.

    Frames come out of FFmpeg's decoder one at a time as `read` asks for them; only the needed
    ones are converted to RGB, and nothing is decoded ahead of the caller. decord, which fer used
    before, decodes in a thread of its own with unbounded queues: when its caller waits (here,
    for the model), that thread turns every packet it was handed ahead into an RGB frame, and
    its frame pool keeps the high-water mark. Measured on 2 cores with an HSEmotion-form model:
    peak RSS 2.19 GB on a 10-minute 320x240 clip (0.8 GB of it decord's frames) against 1.43
    with this reader, and 2.29 against 1.43 on a 2-minute 720p clip; identical tables.
    """

    sparse = True  # read() decodes forward and skips the conversion of frames nobody asked for

    def __init__(self, path: Path, threads: int, skip_unseen: bool = True):
        self.path = path
        self._threads = threads
        self._container = None
        self._frames: Iterator | None = None  # (frame index, av.VideoFrame) in display order
        self._last = None  # the latest (index, frame) decoded, kept while it may be asked again
        fps, pts, stamps, unreferenced = self._index()
        frames = len(stamps)
        self.starts, duration, valid = _timestamps(stamps, path, frames, fps)
        # Valid timestamps place each decoded frame by its pts (a frame the decoder drops does
        # not shift the rest); without them (AVI, MPEG-4 part 2 with B-frames) the count does.
        self._by_pts = {int(p): i for i, p in enumerate(pts)} if valid else {}
        self.pts = pts if valid else None
        self._ahead = None  # a frame decoded past the one asked for, kept for the next ask
        # Frames that may be left undecoded when no sample shows them: only where timestamps
        # place every frame, since a skipped packet would shift a count.
        self._unreferenced = unreferenced if valid and skip_unseen and unreferenced is not None else None
        self._wanted: np.ndarray | None = None  # frames the caller will ask for; None: every frame
        self._skipped = np.zeros(frames, dtype=bool)  # frames left undecoded since the last restart
        self._skips = 0  # how many
        self.sent = self.skipped = 0  # packets decoded and left undecoded, over the reader's life
        height, width = self._first_shape()
        last_start = round(float(self.starts[-1]), 6)
        self.info = VideoInfo(path, fps, frames, duration, last_start, width, height, "cpu", by_index=not valid)

    def _index(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """The frame rate; each shown frame's pts (stream ticks), (start, end) in seconds, and
        whether it may go undecoded when no sample shows it (None: the codec cannot tell), in pts order.

        Reads the container's packets without decoding them, as decord indexed a clip.
        """
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{self.path}: cannot read as a video (no video stream this FFmpeg can decode)")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                tick, first = float(stream.time_base or 0), stream.start_time or 0
                packets, unreferenced = _packet_table(container, stream)
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: cannot read as a video ({_av_reason(error)})") from error
        if not packets:
            raise VideoError(f"{self.path}: video has no frames")
        fps = float(rate) if rate else math.nan
        if not (math.isfinite(fps) and fps > 0):
            raise VideoError(f"{self.path}: video reports no frame rate")
        # A packet without pts (AVI) or duration gives NaN, which _timestamps turns down.
        pts = np.array([np.nan if p is None else p for p, _ in packets], dtype=np.float64)
        ticks = np.array([np.nan if d is None else d for _, d in packets], dtype=np.float64)
        order = np.argsort(pts, kind="stable")
        pts, ticks = pts[order], ticks[order]
        stamps = np.stack([(pts - first) * tick, (pts + ticks - first) * tick], axis=1)
        return fps, pts, stamps, None if unreferenced is None else unreferenced[order]

    def _first_shape(self) -> tuple[int, int]:
        # Decoding frame 0 gives the size as the caller sees it (after the rotation tag).
        return self.read([0])[0].shape[:2]

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        """RGB frames at `indices` (increasing); an index behind the last read starts over."""
        import av

        try:
            return [self._rgb(self._frame_at(i)) for i in indices]
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: decoding failed near frame {indices[0]} ({_av_reason(error)})") from error

    def want(self, indices: np.ndarray) -> None:
        """The frames the next reads ask for (increasing); frames no other frame references and
        not among them are left undecoded."""
        wanted = np.zeros(len(self.starts), dtype=bool)
        wanted[indices] = True
        if (wanted & self._skipped).any():
            self._frames = None  # a frame now wanted was left undecoded: start over
        self._wanted = None if wanted.all() else wanted

    def _frame_at(self, index: int):
        if self._frames is None or (self._last is not None and self._last[0] > index):
            self._restart()
        while self._last is None or self._last[0] < index:
            found, self._ahead = self._ahead or next(self._frames, None), None
            if self._skips and self._unlike_full_decode(index, found):
                return self._decode_all_from_start(index)
            if found is None:
                # The index lists frames the decoder never gave: the file is damaged (an AVI
                # cut inside a frame). Raise rather than return part of the clip as the whole.
                got = "no frame" if self._last is None else f"frames up to {self._last[0]}"
                raise VideoError(f"{self.path}: decoding failed near frame {index} (the decoder gave {got})")
            if found[0] > index and self._last is not None:
                self._ahead = found  # frame `index` was never decoded: the one before stays on screen
                break
            self._last = found
        return self._last[1]

    def _unlike_full_decode(self, index: int, found) -> bool:
        """Whether the frame shown for `index` might be another than a full decode shows: the decoder
        gave nothing, a frame it cannot place, or one out of order, or frame `index` never came
        and a frame skipped since the one before might have been shown instead (a damaged file)."""
        if found is None or found[0] is None:
            return True
        last = -1 if self._last is None else self._last[0]
        return found[0] <= last or (found[0] > index and bool(self._skipped[last + 1 : found[0]].any()))

    def _decode_all_from_start(self, index: int):
        log.debug("%s: frame %d not as a full decode gives it; decoding every frame", self.path, index)
        self._unreferenced = None
        self._restart()
        return self._frame_at(index)

    def _restart(self) -> None:
        import av

        self.close()
        self._container = av.open(str(self.path))
        stream = self._container.streams.video[0]
        if self._threads != 1:
            stream.thread_type = "AUTO"  # frame and slice threads, as FFmpeg's own tools decode
        stream.codec_context.thread_count = self._threads
        self._frames = self._numbered(self._decoded(stream))
        self._last = self._ahead = None
        self._skipped[:] = False
        self._skips = 0

    def _decoded(self, stream) -> Iterator:
        """The stream's frames as FFmpeg decodes them, the packets of unwanted unreferenced frames unsent."""
        for packet in self._container.demux(stream):
            skip = self._skippable(packet)
            if skip is not None:
                self._skipped[skip] = True
                self._skips += 1
                self.skipped += 1
                continue
            self.sent += packet.size > 0
            yield from packet.decode()

    def _skippable(self, packet) -> int | None:
        """The frame index of a packet that need not be decoded, else None."""
        if self._unreferenced is None or self._wanted is None or not packet.size or packet.pts is None:
            return None
        index = self._by_pts.get(packet.pts)
        return index if index is not None and self._unreferenced[index] and not self._wanted[index] else None

    def _numbered(self, frames) -> Iterator[tuple[int | None, object]]:
        for n, frame in enumerate(frames):
            index = self._by_pts.get(frame.pts) if frame.pts is not None else None
            # Counting places a frame only when no packet was skipped; None: unplaced.
            yield index if index is not None else None if self._skips else n, frame

    @staticmethod
    def _rgb(frame) -> np.ndarray:
        # Bicubic, FFmpeg's own default (its CLI and filter graphs; decord's too): at odd sizes the
        # converters differ at the odd row and column, and this one gives decord's pixels exactly.
        image = frame.to_ndarray(format="rgb24", interpolation="BICUBIC")
        turns = (frame.rotation // 90) % 4  # the display matrix: quarter turns counter-clockwise
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = None


def _packet_table(container, stream) -> tuple[list[tuple], np.ndarray | None]:
    """(pts, duration) of each packet a player shows, in decoding order, and whether each may go
    undecoded when no sample shows it (None: the codec cannot tell, `bitstream`).

    A packet its edit list cuts (stored before the clip's start for later frames to refer to) is
    decoded but never shown: no frame of the clip. No frame up to the first keyframe goes
    undecoded: before it the decoder shows frames, or not, by what it could decode.
    """
    from .bitstream import scanner

    scan = scanner(stream.codec_context.name, stream.codec_context.extradata)
    packets, shown, key = [], [], None  # key: the first keyframe's pts
    for p in container.demux(stream):
        if p.size:
            key = p.pts if key is None and p.is_keyframe else key
            shown.append(not p.is_discard)
            if shown[-1]:
                packets.append((p.pts, p.duration))
            if scan is not None:
                scan.add(bytes(p))
    if scan is None:
        return packets, None
    after_key = np.array([None not in (pts, key) and pts > key for pts, _ in packets], dtype=bool)
    return packets, scan.unreferenced()[np.array(shown, dtype=bool)] & after_key


def _av_reason(error: Exception) -> str:
    """PyAV's error on one line, without its errno prefix or the file name it repeats."""
    reason = getattr(error, "strerror", None) or str(error)
    return first_line(str(reason))[:MESSAGE_CHARS] or type(error).__name__


def _open_file(path: Path, threads: int, skip_unseen: bool) -> _PyAVReader:
    """PyAV on the CPU, whatever the model's device (GPU decoding: `media.nvdec`)."""
    return _PyAVReader(path, threads, skip_unseen)


def _timestamps(stamps: np.ndarray, path: Path, frames: int, fps: float) -> tuple[np.ndarray, float, bool]:
    """Frame start times (s, from the first frame), duration (s), and whether they are real.

    stamps: each frame's (start, end) in seconds in display order, NaN where unknown.
    """
    if _plausible(stamps):
        starts = stamps[:, 0] - stamps[0, 0]
        gaps = np.diff(starts)
        if len(gaps) and gaps.max() > MAX_HOLD_S:
            k = int(gaps.argmax()) + 1
            raise VideoError(
                f"{path}: frame {k} starts {gaps[k - 1]:.0f} s after the frame before it "
                f"(timestamps, not video: fer samples no frame held over {MAX_HOLD_S:.0f} s)"
            )
        long = float(gaps[gaps > LONG_HOLD_S].sum())
        if long > MAX_HOLD_S:
            raise VideoError(
                f"{path}: frames held over {LONG_HOLD_S:.0f} s each add up to {long:.0f} s "
                f"(timestamps, not video: fer samples no clip whose frames are held over {MAX_HOLD_S:.0f} s)"
            )
        usual = float(np.median(gaps)) if len(gaps) else 1 / fps
        last = float(stamps[-1, 1] - stamps[-1, 0])
        if last > max(1.0, LAST_FRAME_SLACK * usual):
            log.debug("%s: last frame declared %.3f s long, taken as %.3f s", path, last, usual)
            last = usual
        # Rounded to the microsecond to drop float32 noise (2.4000000953674316).
        return starts, round(float(starts[-1] + last), 6), True
    if 1 / fps > LONG_HOLD_S and frames / fps > MAX_HOLD_S:  # an AVI declaring 1e-6 frames/s
        raise VideoError(
            f"{path}: declares {fps:.3g} frames/s, {frames / fps:.0f} s for {frames} frames "
            f"(fer samples no clip whose frames are held over {MAX_HOLD_S:.0f} s)"
        )
    log.debug("%s: frame timestamps unusable, using frame index / %.3f fps", path, fps)
    return np.arange(frames) / fps, frames / fps, False


def _plausible(stamps: np.ndarray) -> bool:
    # Garbage seen on AVI (decord 0.6 and decord2 3.4 read -3.7e17 for most frames) and
    # repeated starts.
    starts, ends = stamps[:, 0], stamps[:, 1]
    return bool(
        np.isfinite(stamps).all()
        and np.all(np.diff(starts) > 0)
        and np.all(ends >= starts)
        and abs(starts[0]) < MAX_TIMESTAMP
        and ends[-1] - starts[0] < MAX_TIMESTAMP
    )


class _ImageReader:
    """A folder of frames (AFEW-VA: 00000.png, 00001.png, ...) played at frames_fps, frame N at
    N / fps (`frame_numbers`): a number skipped is a frame missing, the one before held over it."""

    sparse = True  # every image is read on its own; nothing to read in between

    def __init__(self, folder: Path, frames_fps: float):
        if not (math.isfinite(frames_fps) and frames_fps > 0):
            raise ValueError(f"frames_fps must be a positive number, got {frames_fps}")
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise VideoError(f"{folder}: no image frames ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder")
        self.files, numbers = frame_numbers(files)
        width, height = _common_size(self.files, folder)
        # Frame N at N / fps, as AFEW-VA's labels and training place it; a folder that starts at
        # 00005 shows its first frame from 0 s (a sample is the last frame started, else the first).
        self.starts = np.asarray(numbers, dtype=np.float64) / frames_fps
        held = np.diff(self.starts, prepend=0.0)
        if held.max() > MAX_HOLD_S:  # cam1_1699999999.png: a number that is no frame index
            name = self.files[int(held.argmax())].name
            raise VideoError(
                f"{folder}: frame {name} would start {held.max():.0f} s after the one before it at "
                f"{frames_fps:g} frames/s (its number is no frame index; fer holds no frame over {MAX_HOLD_S:.0f} s)"
            )
        duration = (numbers[-1] + 1) / frames_fps
        self.info = VideoInfo(
            folder, frames_fps, len(self.files), duration, float(self.starts[-1]), width, height, "images"
        )

    def want(self, indices: np.ndarray) -> None:
        """Nothing to plan: each image is read on its own."""

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [_load_image(self.files[i]) for i in indices]


_FRAME_NUMBER = re.compile(r"(\d+)\D*$", re.ASCII)  # the last run of digits in a name: frame_0012 -> 12


def frame_numbers(files: Sequence[Path]) -> tuple[list[Path], list[int]]:
    """An image sequence's frames in order, and each one's number: the last run of digits in its
    name (00012.png, frame12.jpg, unpadded 2.png before 10.png). Where a name has none, or two
    share one, names are ordered as a person reads them (natural order) and numbered one by one."""
    found = [_FRAME_NUMBER.search(f.stem) for f in files]
    numbers = [int(m.group(1)) if m else None for m in found]
    if None not in numbers and len(set(numbers)) == len(numbers):
        pairs = sorted(zip(numbers, files))
        return [f for _, f in pairs], [n for n, _ in pairs]
    ordered = sorted(files, key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)])
    return ordered, list(range(len(ordered)))


def _common_size(files: list[Path], folder: Path) -> tuple[int, int]:
    """The one (width, height) that every frame has; reads headers only."""
    sizes = {file: _image_size(file) for file in files}
    first = sizes[files[0]]
    odd = next((file for file, size in sizes.items() if size != first), None)
    if odd is not None:
        raise VideoError(
            f"{folder}: frames differ in size ({files[0].name} is {first[0]}x{first[1]}, "
            f"{odd.name} is {sizes[odd][0]}x{sizes[odd][1]})"
        )
    return first


def _image_size(file: Path) -> tuple[int, int]:
    return _with_pil(file, lambda image: image.size)


def _load_image(file: Path) -> np.ndarray:
    return _with_pil(file, lambda image: np.asarray(image.convert("RGB")))


def _with_pil(file: Path, use: Callable):
    from PIL import Image

    try:
        with Image.open(file) as image:
            return use(image)
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, ...
        raise VideoError(f"{file}: cannot read image ({error})") from error
