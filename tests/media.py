"""Synthetic test media made from a real photograph (skimage's astronaut portrait).

Every clip the tests use is built here, so the tests know exactly where each face is.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av
import numpy as np
from PIL import Image
from skimage import data

# The portrait: a square cut of skimage.data.astronaut() around the face, in its pixels.
PORTRAIT_BOX = (120, 20, 340, 240)  # x0, y0, x1, y1
# The face inside that photograph, marked by hand (brow line to chin, cheek to cheek).
ASTRONAUT_FACE = (177, 78, 270, 170)  # x0, y0, x1, y1

Box = tuple[float, float, float, float]
Placement = tuple[int, int, int]  # x, y of the portrait's top-left corner, portrait side (px)


def portrait(side: int) -> np.ndarray:
    """The astronaut portrait resized to side x side, RGB uint8."""
    x0, y0, x1, y1 = PORTRAIT_BOX
    img = Image.fromarray(data.astronaut()[y0:y1, x0:x1])
    return np.asarray(img.resize((side, side), Image.BILINEAR))


def face_box(placement: Placement) -> Box:
    """Where the hand-marked face lands once the portrait is pasted at `placement`."""
    x, y, side = placement
    px0, py0, px1, _ = PORTRAIT_BOX
    s = side / (px1 - px0)
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    return (x + (fx0 - px0) * s, y + (fy0 - py0) * s, x + (fx1 - px0) * s, y + (fy1 - py0) * s)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth grey-blue gradient with mild noise: no face-like structure."""
    rng = np.random.default_rng(seed)
    gx = np.linspace(90, 160, width)[None, :, None]
    gy = np.linspace(0, 40, height)[:, None, None]
    base = np.broadcast_to(gx + gy + np.array([0, 10, 25]), (height, width, 3))
    noise = rng.normal(0, 3, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def scene(width: int, height: int, placements: Sequence[Placement], seed: int = 0) -> np.ndarray:
    """A frame with one portrait pasted at each placement (clipped at the frame's edges)."""
    frame = background(width, height, seed).copy()
    for x, y, side in placements:
        face = portrait(side)
        fx0, fy0 = max(x, 0), max(y, 0)
        fx1, fy1 = min(x + side, width), min(y + side, height)
        if fx1 > fx0 and fy1 > fy0:
            frame[fy0:fy1, fx0:fx1] = face[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
    return frame


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times: Sequence[float] | None = None,
) -> Path:
    """Encode RGB frames with PyAV. `times` (seconds) gives each frame's timestamp (variable rate).

    Only x264 gets encoder options (FAST_OPTIONS'); other codecs their defaults, as the session's
    clips (and the golden tables made from them) were written.
    """
    options = FAST_OPTIONS["libx264"] if codec == "libx264" else {}
    return write_coded(path, frames, fps, codec, pix_fmt, options=options, times=times)


def make_clip(
    path: Path,
    seconds: float,
    fps: float,
    size: tuple[int, int],
    placements: Callable[[float], Sequence[Placement]],
    **write_kwargs,
) -> Path:
    """A clip of `seconds` at `fps` whose faces at time t are placements(t)."""
    width, height = size
    n = round(seconds * fps)
    frames = (scene(width, height, placements(i / fps), seed=i) for i in range(n))
    return write_video(path, frames, fps, **write_kwargs)


def still_face(x: int = 60, y: int = 40, side: int = 160) -> Callable[[float], list[Placement]]:
    return lambda t: [(x, y, side)]


def write_frames(folder: Path, frames: Iterable[np.ndarray]) -> Path:
    """An AFEW-VA style image sequence: 00000.png, 00001.png, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames):
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder


def write_sliver_clip(
    path: Path, seconds: int, fps: int = 30, sliver: float = 0.0003, codec: str = "libx265", size=(160, 120)
) -> Path:
    """A clip of exactly `seconds` * `fps` frames whose last frame ends `sliver` s past the second.

    As some muxers write it: the container's timestamps (90 kHz) give the last packet a longer
    duration, so the clip 'lasts' 3.0003 s although no frame starts after 2.967 s.
    """
    tick = Fraction(1, 90000)
    step = 90000 // fps
    n = seconds * fps
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.pix_fmt, stream.width, stream.height = "yuv420p", width, height
        stream.codec_context.time_base = tick
        # No B-frames, so packets come out in presentation order and the last one is the last frame.
        stream.options = {"bframes": "0"} if codec == "libx264" else {"x265-params": "bframes=0:log-level=none"}
        packets = []
        for i in range(n):
            img = scene(width, height, [(10, 10, min(width, height) - 20)], seed=i)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i * step, tick
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if packet.pts == (n - 1) * step:
                packet.duration = step + round(sliver * 90000)
            out.mux(packet)
    return Path(path)


# Encoder options that keep the clips small and fast to write; quality high enough that the
# moving portrait stays far from its neighbours after compression.
FAST_OPTIONS = {
    "libx264": {"crf": "18", "preset": "ultrafast"},
    "libx265": {"crf": "18", "preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libsvtav1": {"crf": "25", "preset": "11"},
    "prores_ks": {"profile": "2"},  # 422 (standard)
}


def write_coded(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str,
    pix_fmt: str,
    options: dict[str, str] | None = None,
    rotation: int | None = None,
    times: Sequence[float] | None = None,
) -> Path:
    """Encode RGB frames with PyAV's `codec` into the container `path`'s suffix names.

    options: encoder options (default FAST_OPTIONS[codec]). rotation: a display matrix that
    turns the stored frames `rotation` degrees counter-clockwise for display (what FFmpeg reads
    back as the frame's rotation; a phone held upright stores landscape frames and -90).
    times: each frame's timestamp in seconds (variable rate; millisecond time base).
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    time_base = Fraction(1, 1000) if times is not None else 1 / rate
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = time_base
        stream.options = dict(FAST_OPTIONS.get(codec, {}) if options is None else options)
        for i, img in enumerate(frames):
            if i == 0:
                stream.height, stream.width = img.shape[:2]
                if rotation is not None:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = round(times[i] * 1000) if times is not None else i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def late_video(path: Path, lead_s: float = 0.48, frames: int = 30, fps: int = 25) -> Path:
    """An MP4 whose video starts `lead_s` after its sound (as with a camera that records sound
    first): frame i is grey level 8 * i, so the frame on screen tells which one it is."""
    with av.open(str(path), "w") as out:
        audio = out.add_stream("aac", rate=48000)
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        samples = 0
        while samples < (lead_s + frames / fps) * 48000:
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = 48000, samples, Fraction(1, 48000)
            samples += 1024
            out.mux(audio.encode(sound))
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            picture.pts, picture.time_base = i + round(lead_s * fps), Fraction(1, fps)
            out.mux(video.encode(picture))
        out.mux(audio.encode())
        out.mux(video.encode())
    return path


def remux(source: Path, target: Path, change: Callable[[int, bytes], bytes | None]) -> Path:
    """A copy of `source`'s video stream whose packet i (decoding order) carries `change(i, its bytes)`:
    new bytes (a damaged packet), the same, or None (the packet left out). Timestamps are kept."""
    with av.open(str(source)) as given, av.open(str(target), "w") as out:
        stream = given.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for i, packet in enumerate(p for p in given.demux(stream) if p.size):
            data = change(i, bytes(packet))
            if data is None:
                continue
            new = av.Packet(data)
            new.pts, new.dts, new.time_base = packet.pts, packet.dts, packet.time_base
            new.is_keyframe = packet.is_keyframe
            new.stream = copy
            out.mux(new)
    return Path(target)


def write_trimmed(path: Path, frames: Sequence[np.ndarray], cut: int, fps: int = 25, options=None) -> Path:
    """An MP4 of `frames` whose edit list cuts the first `cut` (as `ffmpeg -ss ... -c copy` leaves a
    clip cut inside a GOP): they are stored, stamped before 0, and no player shows them."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = dict(options or {})
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = i - cut, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)
