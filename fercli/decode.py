"""Decode a clip (video file or folder of frames) and sample it at a fixed rate, streaming.

Video files are read with decord2 (imported as `decord`): decord's API over FFmpeg 8 with
dav1d, so it opens AV1 as well as H.264, HEVC (8 and 10 bit), VP9, ProRes and MJPEG, and turns
rotated (phone) clips upright. decord 0.6's FFmpeg had no AV1 decoder; README "Inputs and
decoding" has the comparison that chose decord2 over keeping it beside a second decoder.

decord and PIL are imported inside the functions that need them, so importing this module
(and `fer --help`) stays cheap.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fercli.errors import VideoError
from fercli.inputs import IMAGE_EXTENSIONS

CHUNK_FRAMES = 16  # frames decoded per read; bounds memory whatever the video length
AUTO_THREADS = 0  # decord/FFmpeg decoder threads: 0 lets FFmpeg choose (frame threads per core)
# A frame counts as on screen at t when it starts no later than t + TIME_TOLERANCE.
# Matroska stores milliseconds, so a 29.97 fps frame starts up to 0.5 ms after k / fps
# (ties round up); decord also returns float32. More than half a tick, less than a whole
# one, so a start on the millisecond grid never sits on the edge for t on that grid.
TIME_TOLERANCE = 0.75e-3  # s
MAX_TIMESTAMP = 1e6  # s; later than this (11 days) is garbage, not a clip
MESSAGE_CHARS = 160  # longest decoder reason quoted in an error message

log = logging.getLogger("fercli")
_warned_cpu_fallback = False  # the CUDA fallback warning is shown once per process


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
    decoder: str  # "cpu", "cuda" or "images"


@dataclass(frozen=True)
class Frame:
    """One sample: the frame on screen at time k / fps."""

    index: int  # sample index k at the requested rate
    time: float  # k / fps, seconds
    source: int  # index of the decoded frame shown at that time
    image: np.ndarray  # H x W x 3 uint8 RGB


def open_video(path, *, frames_fps: float = 25.0, device: str = "cpu", threads: int = AUTO_THREADS) -> VideoSource:
    """Open a video file, or a folder of frames read as a clip at `frames_fps`.

    device "cuda" (or "cuda:N") decodes on the GPU when decord was built with CUDA and
    falls back to the CPU otherwise. `threads`: FFmpeg decoder threads (0: FFmpeg chooses).
    Raises VideoError when the clip cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        return VideoSource(_ImageReader(path, frames_fps))
    _check_file(path)
    return VideoSource(_DecordReader(path, device, threads))


class VideoSource:
    """An open clip. Use as a context manager; `sample` streams frames at any rate."""

    def __init__(self, reader: _ImageReader | _DecordReader):
        self._reader = reader
        self.info: VideoInfo = reader.info

    def sample(self, fps: float) -> Iterator[Frame]:
        """Yield the frame on screen at t = k / fps for k = 0, 1, ... while t < duration.

        Decodes CHUNK_FRAMES frames per read and keeps none of them once yielded, so memory
        does not grow with the clip's length.
        """
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"sampling rate must be a positive number, got {fps}")
        if self._reader is None:
            raise ValueError(f"{self.info.path} is closed")
        sources = sample_sources(self._reader.starts, self.info.duration, fps)
        return _stream(self._reader, sources, fps)

    def close(self) -> None:
        """Release the decoder."""
        self._reader = None

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


def _stream(reader, sources: np.ndarray, fps: float) -> Iterator[Frame]:
    k = 0
    for indices in _plan_reads(sources, reader.sparse):
        batch = dict(zip(indices, reader.read(indices)))
        while k < len(sources) and sources[k] in batch:
            # A copy, so a frame the caller keeps does not pin the whole batch.
            image = np.array(batch[sources[k]], copy=True)
            yield Frame(index=k, time=k / fps, source=int(sources[k]), image=image)
            k += 1
        del batch  # before the next read, so two batches are never alive at once


def _plan_reads(sources: np.ndarray, sparse: bool) -> Iterator[list[int]]:
    """Index lists of at most CHUNK_FRAMES, in order, that cover every needed frame.

    sparse: only the needed frames (decord skips the rest without converting them to RGB);
    otherwise every frame up to the last needed one, read forward without any seek.
    """
    if len(sources) == 0:
        return
    needed = np.unique(sources) if sparse else np.arange(sources[-1] + 1)
    for i in range(0, len(needed), CHUNK_FRAMES):
        yield needed[i : i + CHUNK_FRAMES].tolist()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")


# decord's words for two failures whose cause they do not say, and what they mean.
KNOWN_REASONS = {
    # No stream FFmpeg has a decoder for: an audio-only file, or a codec this build lacks.
    "cannot find video stream with wanted index": "no video stream this FFmpeg can decode",
    # decord shapes a frame from FFmpeg's padded row length, which for a few narrow widths
    # (measured, decord2 3.4: 16, 32, 48, 96 and 144 px; decord 0.6: 16 and 48) divides by
    # the width, so it sees 4 or more channels and refuses to copy the frame out.
    "DECORDArrayCopyFromTo": "decord cannot copy out frames of this width, a decord bug",
}


def _reason(error: Exception, path: Path | None = None) -> str:
    """The gist of a decord error, on one line.

    decord's messages carry '[hh:mm:ss] file.cc:123: ' prefixes, the C++ check that failed,
    and a stack trace; keep the words after them. FFmpeg's own reason went to stderr.
    """
    lines = str(error).strip().splitlines() or [""]
    known = next((meaning for words, meaning in KNOWN_REASONS.items() if words in lines[0]), None)
    if known is not None:
        return known
    reason = re.sub(r"(\[[\d:]+\] \S+:\d+: )+", "", lines[0])
    reason = re.sub(r"^Check failed: .*\(\S+ vs\. \S+\) ", "", reason)
    if path is not None:  # "Error reading /the/path..."
        reason = reason.replace(str(path), "").replace("...", "")
    return reason.strip()[:MESSAGE_CHARS] or type(error).__name__


class _DecordReader:
    """A video file read with decord; frame start times in seconds from the first frame."""

    def __init__(self, path: Path, device: str, threads: int):
        self.path = path
        self._vr, decoder = _open_decord(path, device, threads)
        fps, frames = self._header()
        self.starts, duration, valid = _timestamps(self._vr, path, frames, fps)
        # Reading only the needed frames lets decord skip the others without converting
        # them to RGB: on a 60 s 640x360 H.264 mp4, 4100 vs 1800 frames/s sampled at 1 fps,
        # 2500 vs 1200 at 5 fps, even at the native rate. But decord seeks and skips by
        # timestamp: without valid ones (AVI has none; MPEG-4 part 2 with B-frames) sparse
        # reads return wrong frames, while reading forward in contiguous chunks is exact.
        # AVI always reads forward, being the container where this was seen.
        self.sparse = valid and path.suffix.lower() != ".avi"
        height, width = self._first_shape()
        last_start = round(float(self.starts[-1]), 6)
        self.info = VideoInfo(path, fps, frames, duration, last_start, width, height, decoder)

    def _header(self) -> tuple[float, int]:
        try:
            fps, frames = float(self._vr.get_avg_fps()), len(self._vr)
        except Exception as error:
            raise VideoError(f"{self.path}: unreadable header ({_reason(error)})") from error
        if frames == 0:
            raise VideoError(f"{self.path}: video has no frames")
        if not (math.isfinite(fps) and fps > 0):
            raise VideoError(f"{self.path}: video reports no frame rate")
        return fps, frames

    def _first_shape(self) -> tuple[int, int]:
        # decord reports no size, so decode frame 0. sample() then seeks back to frame 0,
        # which was checked exact even on the B-frame AVI whose other seeks go wrong.
        return self.read([0])[0].shape[:2]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        # A damaged file fails here rather than at open when its index still lists frames
        # it cannot decode (an AVI cut inside a frame's JPEG headers): we raise instead of
        # returning part of the clip, so no caller mistakes a fragment for the whole. Damage
        # the decoder does not report (a frame cut in its pixel data, a Matroska file cut
        # anywhere: no index to contradict) decodes as FFmpeg decodes it, i.e. a shorter clip.
        try:
            return self._vr.get_batch(list(indices)).asnumpy()
        except Exception as error:  # decord raises DECORDError, RuntimeError, IndexError
            raise VideoError(
                f"{self.path}: decoding failed near frame {indices[0]} ({_reason(error)})"
            ) from error


def import_decord(cuda: bool = False):
    """The `decord` module, imported so that decoding on the CPU does not load CUDA.

    On import, decord2 dlopens every shared library of the nvidia-* pip packages it can find
    (for its CUDA builds, whose runtime comes from those packages). Beside a CUDA build of
    torch, that is cuDNN, cuBLAS, NVRTC and the rest: measured on a 2-core CPU machine, 0.3-0.6 s
    of import and about 420 MB of peak memory on a 1-minute clip, for a decoder that then reads
    on the CPU. For CPU decoding the `nvidia` package is hidden while decord loads, so its
    search finds nothing, as on a machine without those packages; `cuda=True` imports it as it
    is. The first import in a process decides (a later CUDA decode then falls back to the CPU,
    with its warning). A decord without that preload imports the same either way.
    """
    if cuda or "decord" in sys.modules:
        import decord

        return decord
    saved = sys.modules.get("nvidia", _ABSENT)
    sys.modules["nvidia"] = None  # importlib.util.find_spec("nvidia") is then None
    try:
        import decord
    finally:
        if saved is _ABSENT:
            sys.modules.pop("nvidia", None)
        else:
            sys.modules["nvidia"] = saved
    return decord


_ABSENT = object()


def _open_decord(path: Path, device: str, threads: int):
    """A decord VideoReader on the requested device, or on the CPU when CUDA is missing."""
    decord = import_decord(cuda=device != "cpu")

    if device == "cpu":
        return _video_reader(decord, path, decord.cpu(0), threads), "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    try:
        # The x86 PyPI wheel has no CUDA: opening raises "GPU acceleration not available on
        # this platform" (decord 0.6: "CUDA not enabled").
        ctx = decord.gpu(int(match.group(1) or 0))
        return decord.VideoReader(str(path), ctx=ctx, num_threads=threads), "cuda"
    except Exception as error:
        reader = _video_reader(decord, path, decord.cpu(0), threads)
        _warn_cpu_fallback(error)
        return reader, "cpu"


def _video_reader(decord, path: Path, ctx, threads: int):
    try:
        return decord.VideoReader(str(path), ctx=ctx, num_threads=threads)
    except Exception as error:
        raise VideoError(f"{path}: cannot read as a video ({_reason(error, path)})") from error


def _warn_cpu_fallback(error: Exception) -> None:
    global _warned_cpu_fallback
    if not _warned_cpu_fallback:
        _warned_cpu_fallback = True
        reason = _reason(error)
        log.warning("CUDA video decoding is unavailable (%s); decoding runs on the CPU", reason)


def _timestamps(vr, path: Path, frames: int, fps: float) -> tuple[np.ndarray, float, bool]:
    """Frame start times (s, from the first frame), duration (s), and whether they are real."""
    try:
        stamps = np.asarray(vr.get_frame_timestamp(list(range(frames))), dtype=np.float64)
    except Exception as error:
        log.debug("%s: no frame timestamps (%s)", path, _reason(error))
        stamps = np.full((frames, 2), np.nan)
    if _plausible(stamps):
        starts = stamps[:, 0] - stamps[0, 0]
        # Rounded to the microsecond to drop float32 noise (2.4000000953674316).
        return starts, round(float(stamps[-1, 1] - stamps[0, 0]), 6), True
    log.debug("%s: frame timestamps unusable, using frame index / %.3f fps", path, fps)
    return np.arange(frames) / fps, frames / fps, False


def _plausible(stamps: np.ndarray) -> bool:
    # Garbage seen from decord 0.6 and decord2 3.4 on AVI: -3.7e17 for most frames, repeated
    # starts.
    starts, ends = stamps[:, 0], stamps[:, 1]
    return bool(
        np.isfinite(stamps).all()
        and np.all(np.diff(starts) > 0)
        and np.all(ends >= starts)
        and abs(starts[0]) < MAX_TIMESTAMP
        and ends[-1] - starts[0] < MAX_TIMESTAMP
    )


class _ImageReader:
    """A folder of frames (AFEW-VA: 00000.png, 00001.png, ...) played at frames_fps."""

    sparse = True  # every image is read on its own; nothing to read in between

    def __init__(self, folder: Path, frames_fps: float):
        if not (math.isfinite(frames_fps) and frames_fps > 0):
            raise ValueError(f"frames_fps must be a positive number, got {frames_fps}")
        self.files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.files:
            raise VideoError(f"{folder}: no image frames ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder")
        width, height = _common_size(self.files, folder)
        n = len(self.files)
        self.starts = np.arange(n) / frames_fps
        self.info = VideoInfo(folder, frames_fps, n, n / frames_fps, (n - 1) / frames_fps, width, height, "images")

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [_load_image(self.files[i]) for i in indices]


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
