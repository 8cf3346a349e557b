"""fercli.media.decode against hand-computed sampling, PyAV's own timestamps and frames, and the ffmpeg
command (the system's own FFmpeg build, Debian's where .ci/run installs it) as a second decoder."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from bisect import bisect_right
from pathlib import Path

import av
import media
import numpy as np
import pytest
from media import (
    background,
    portrait,
    write_coded,
    write_frames,
    write_sliver_clip,
    write_video,
)
from PIL import Image

from fercli.core.errors import VideoError
from fercli.media import decode
from fercli.media.decode import CHUNK_FRAMES, open_video

# Two FFmpeg builds may convert YUV to RGB with different code. Measured (decord vs PyAV, and
# Debian's ffmpeg 5.1 vs PyAV) on these clips: identical at even sizes; at 321x241 mean 0.1-0.2
# levels, 99.9th percentile 6, a few pixels up to 42.
# Neighbouring frames differ by a mean of 9 levels or more.
MEAN_TOLERANCE = 1.0  # mean |difference| per channel value, 0..255
MAX_TOLERANCE = 64  # largest |difference| of any one channel value
# s: a frame starting this soon after t is on screen at t (Matroska rounds starts to 1 ms).
ON_SCREEN_SLACK = 0.75e-3
CLIP_FRAMES = 40

# name, codec, native fps, (width, height), pix_fmt
CLIPS = {
    "h264.mp4": ("libx264", 25, (160, 120), "yuv420p"),
    "mpeg4.avi": ("mpeg4", 25, (160, 120), "yuv420p"),
    "mjpeg.avi": ("mjpeg", 30, (160, 120), "yuvj420p"),
    "h264.mkv": ("libx264", 29.97, (160, 120), "yuv420p"),
    "h264.mov": ("libx264", 12.5, (160, 120), "yuv420p"),
    "odd_mpeg4.avi": ("mpeg4", 29.97, (321, 241), "yuv420p"),
    "odd_mjpeg.avi": ("mjpeg", 12.5, (321, 241), "yuvj420p"),
}
# Codecs met in the wild, each in a container it travels in, written by media.write_coded.
CODEC_CLIPS = {
    "hevc.mov": ("libx265", 29.97, (160, 120), "yuv420p"),
    "hevc10.mov": ("libx265", 25, (160, 120), "yuv420p10le"),
    "hevc.mp4": ("libx265", 25, (160, 120), "yuv420p"),
    "vp9.webm": ("libvpx-vp9", 25, (160, 120), "yuv420p"),
    "av1.webm": ("libsvtav1", 29.97, (160, 120), "yuv420p"),
    "av1_10.mp4": ("libsvtav1", 25, (160, 120), "yuv420p10le"),
    "prores.mov": ("prores_ks", 23.976, (160, 120), "yuv422p10le"),
    "mjpeg.mov": ("mjpeg", 25, (160, 120), "yuvj420p"),
}
ALL_CLIPS = CLIPS | CODEC_CLIPS
# Both decoders read the same bitstream with FFmpeg's decoders, so at even sizes 8-bit clips
# come out identical (measured: 0 everywhere). 10-bit clips differ in the conversion to 8-bit
# RGB only (measured, decord 0.6 and decord2 vs PyAV: mean 0.1-0.3, largest 9-25 levels).
FFMPEG = shutil.which("ffmpeg")
TEN_BIT_MEAN, TEN_BIT_MAX = 0.5, 40


def moving_frames(n: int, width: int, height: int):
    """Frames far from their neighbours: the portrait jumps 9 px right, 5 px down each frame."""
    side = min(width, height) // 2
    base, face = background(width, height), portrait(side)
    for i in range(n):
        frame = base.copy()
        x, y = (i * 9) % (width - side), (i * 5) % (height - side)
        frame[y : y + side, x : x + side] = face
        yield frame


def pyav_decode(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """The reference: every frame PyAV decodes, with its start time from the first frame."""
    with av.open(str(path)) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return [t - frames[0][0] for t, _ in frames], [image for _, image in frames]


def ffmpeg_decode(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame the ffmpeg command decodes, in order, none dropped or repeated, as RGB."""
    command = [
        FFMPEG,
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def on_screen(times: list[float], t: float) -> int:
    """Index of the last frame starting at or before t."""
    return max(bisect_right(times, t + ON_SCREEN_SLACK) - 1, 0)


def assert_close(
    image: np.ndarray,
    reference: np.ndarray,
    what: str,
    mean: float = MEAN_TOLERANCE,
    largest: int = MAX_TOLERANCE,
) -> None:
    assert image.shape == reference.shape and image.dtype == np.uint8, what
    diff = np.abs(image.astype(np.int16) - reference.astype(np.int16))
    assert diff.mean() <= mean and diff.max() <= largest, f"{what}: mean {diff.mean():.2f}, max {diff.max()}"


def tolerance(name: str) -> tuple[float, int]:
    """(mean, largest) |difference| allowed against PyAV for clip `name`."""
    if name not in CODEC_CLIPS:
        return MEAN_TOLERANCE, MAX_TOLERANCE
    return (TEN_BIT_MEAN, TEN_BIT_MAX) if "10" in CODEC_CLIPS[name][3] else (0.0, 0)


def write_mpeg4_bframes(path: Path, frames, fps: int) -> Path:
    """MPEG-4 part 2 with B-frames in AVI, the case where decord 0.6 gets timestamps wrong."""
    frames = list(frames)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "2", "g": "30"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("decode")
    for name, (codec, fps, (width, height), pix_fmt) in CLIPS.items():
        frames = moving_frames(CLIP_FRAMES, width, height)
        write_video(folder / name, frames, fps, codec=codec, pix_fmt=pix_fmt)
    for name, (codec, fps, (width, height), pix_fmt) in CODEC_CLIPS.items():
        write_coded(folder / name, moving_frames(CLIP_FRAMES, width, height), fps, codec, pix_fmt)
    return folder


@pytest.fixture(scope="module")
def reference(media_dir):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = pyav_decode(media_dir / name)
        return cache[name]

    return get


def sample(path, fps: float, **open_kwargs) -> list[decode.Frame]:
    with open_video(path, **open_kwargs) as video:
        return list(video.sample(fps))


# --- agreement with PyAV ------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_CLIPS)
def test_native_rate_gives_every_frame_as_pyav_decodes_it(media_dir, reference, name):
    codec, fps, (width, height), _ = ALL_CLIPS[name]
    times, images = reference(name)
    # The clip must make a wrong frame visible: neighbours differ well beyond the tolerance.
    gaps = [np.abs(a.astype(int) - b).mean() for a, b in zip(images, images[1:])]
    assert min(gaps) > 5 * MEAN_TOLERANCE
    with open_video(media_dir / name) as video:
        info = video.info
        frames = list(video.sample(info.fps))
    assert (info.frames, info.width, info.height, info.decoder) == (CLIP_FRAMES, width, height, "cpu")
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert info.duration == pytest.approx(CLIP_FRAMES / fps, abs=2e-3)
    assert [f.source for f in frames] == list(range(CLIP_FRAMES))
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"{name} frame {frame.source}", *tolerance(name))


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg command (Debian: apt-get install ffmpeg)")
@pytest.mark.parametrize("name", ALL_CLIPS)
def test_native_rate_gives_every_frame_as_the_ffmpeg_command_decodes_it(media_dir, name):
    # A second decoder: the system's FFmpeg build, its own scaler and filter graph.
    _, _, (width, height), _ = ALL_CLIPS[name]
    second = ffmpeg_decode(media_dir / name, width, height)
    assert len(second) == CLIP_FRAMES
    frames = sample(media_dir / name, open_video(media_dir / name).info.fps)
    assert [f.source for f in frames] == list(range(CLIP_FRAMES))
    for frame in frames:
        assert_close(frame.image, second[frame.source], f"{name} frame {frame.source} (ffmpeg)", *tolerance(name))


@pytest.mark.parametrize("threads", [0, 1])  # FFmpeg's choice, and what annotate uses on a CPU
@pytest.mark.parametrize("rate", [5, 1, 29.97])
@pytest.mark.parametrize("name", ALL_CLIPS)
def test_other_rates_pick_the_frame_on_screen(media_dir, reference, name, rate, threads):
    native = ALL_CLIPS[name][1]
    times, images = reference(name)
    frames = sample(media_dir / name, rate, threads=threads)
    count = math.ceil(CLIP_FRAMES / native * rate)  # samples k / rate < duration
    assert [f.index for f in frames] == list(range(count))
    assert [f.time for f in frames] == pytest.approx([k / rate for k in range(count)])
    assert [f.source for f in frames] == [on_screen(times, k / rate) for k in range(count)]
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"{name} at {frame.time:.3f} s", *tolerance(name))


@pytest.mark.parametrize("name", CODEC_CLIPS)
def test_duration_and_last_start_are_where_pyav_puts_the_last_frame(media_dir, name):
    with av.open(str(media_dir / name)) as container:
        frames = [(f.time, f.duration * f.time_base) for f in container.decode(video=0)]
    last_start = frames[-1][0] - frames[0][0]
    with open_video(media_dir / name) as video:
        assert video.info.last_start == pytest.approx(last_start, abs=1e-6)
        assert video.info.duration == pytest.approx(last_start + float(frames[-1][1]), abs=1e-3)


def test_sources_at_5_fps_from_25_by_hand(media_dir):
    frames = sample(media_dir / "h264.mp4", 5)  # 40 frames at 25 fps = 1.6 s
    assert [f.source for f in frames] == [0, 5, 10, 15, 20, 25, 30, 35]


def test_sources_at_7_fps_from_2997_by_hand(media_dir):
    # 40 frames at 29.97 fps last 1.3347 s: 10 samples at 7 fps. t = k / 7 shows frame
    # floor(t * 29.97) (AVI timestamps are frame indices, so exact); for these t the next
    # frame starts at least 1 ms later, beyond the on-screen slack.
    frames = sample(media_dir / "odd_mpeg4.avi", 7)
    assert [f.source for f in frames] == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38]


def test_sources_follow_millisecond_timestamps_in_matroska(media_dir):
    # Matroska rounds frame k's start k / 29.97 s to the millisecond: frame 6 starts at
    # 0.200 s (not 0.2002), so it is on screen at t = 0.2; frame 18 at 0.601, not at 0.6.
    frames = sample(media_dir / "h264.mkv", 5)
    assert [f.source for f in frames] == [0, 6, 12, 17, 23, 29, 35]


# 10 frames with these start times (s); the clip lasts 1.29 s (see below).
VFR_TIMES = [0.0, 0.04, 0.1, 0.3, 0.31, 0.5, 0.9, 1.0, 1.2, 1.25]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
@pytest.mark.parametrize(
    "rate, expected",
    [
        # t = 0, .1, .2, ... 1.2: the frame that started last at or before each t.
        (10, [0, 2, 2, 3, 4, 5, 5, 5, 5, 6, 7, 7, 8]),
        # t = 0, .25, .5, .75, 1, 1.25: 1.25 is exactly where the last frame starts.
        (4, [0, 2, 5, 5, 7, 9]),
    ],
)
def test_variable_frame_rate_follows_timestamps(tmp_path, suffix, rate, expected):
    frames_in = list(moving_frames(len(VFR_TIMES), 160, 120))
    path = write_video(tmp_path / f"vfr{suffix}", frames_in, 25, times=VFR_TIMES)
    _, images = pyav_decode(path)
    with open_video(path) as video:
        # decord gives the last frame 1/25 s, FFmpeg's guess of the stream's frame rate.
        assert video.info.duration == pytest.approx(1.29, abs=1e-3)
        frames = list(video.sample(rate))
    assert [f.source for f in frames] == expected
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"vfr frame {frame.source}")


@pytest.mark.parametrize(
    "codec, suffix, pix_fmt",
    [("libx265", ".mov", "yuv420p10le"), ("libvpx-vp9", ".webm", "yuv420p"), ("libsvtav1", ".webm", "yuv420p")],
)
def test_variable_frame_rate_follows_timestamps_in_other_codecs(tmp_path, codec, suffix, pix_fmt):
    frames_in = moving_frames(len(VFR_TIMES), 160, 120)
    path = write_coded(tmp_path / f"vfr{suffix}", frames_in, 25, codec, pix_fmt, times=VFR_TIMES)
    times, images = pyav_decode(path)
    assert times == pytest.approx(VFR_TIMES, abs=1e-6)  # the clip is what the test means
    with open_video(path) as video:
        assert video.info.last_start == pytest.approx(VFR_TIMES[-1], abs=1e-6)
        frames = list(video.sample(10))
    assert [f.source for f in frames] == [0, 2, 2, 3, 4, 5, 5, 5, 5, 6, 7, 7, 8]
    mean, largest = (TEN_BIT_MEAN, TEN_BIT_MAX) if "10" in pix_fmt else (0.0, 0)
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"vfr frame {frame.source}", mean, largest)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
@pytest.mark.parametrize("name, codec", [("phone.mp4", "libx264"), ("phone.mov", "libx265")])
def test_rotated_clip_reaches_the_caller_upright(tmp_path, name, codec, rotation):
    # A phone held upright stores landscape frames and a display matrix turning them for display
    # (-90: a quarter turn clockwise). Frames must come out as the camera saw them.
    upright = list(moving_frames(10, 120, 160))  # portrait: 120 wide, 160 high
    stored = [np.rot90(image, -rotation // 90) for image in upright]  # undone by the tag
    path = write_coded(tmp_path / name, stored, 25, codec, "yuv420p", rotation=rotation)
    with av.open(str(path)) as container:
        decoded = [(f.rotation, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    # The tag is in the file, as FFmpeg reads it (180 may read back as -180).
    assert {r % 360 for r, _ in decoded} == {rotation % 360}
    with open_video(path) as video:
        assert (video.info.width, video.info.height) == (120, 160)
        frames = list(video.sample(25))
    assert [f.source for f in frames] == list(range(10))
    for frame in frames:
        turned, stored_image = decoded[frame.source]
        # PyAV hands out stored pixels and the rotation; turned by hand they are the reference.
        assert_close(frame.image, np.rot90(stored_image, turned // 90), f"{name} frame {frame.source}", 0.0, 0)
        # And upright as written, not upside down (180 keeps the shape, so compare pixels).
        source = upright[frame.source].astype(np.int16)
        assert np.abs(frame.image - source).mean() < 5 < np.abs(frame.image - source[::-1, ::-1]).mean()


def test_avi_with_unusable_timestamps_is_read_forward_exactly(tmp_path):
    path = write_mpeg4_bframes(tmp_path / "bframes.avi", moving_frames(60, 160, 120), 25)
    # The trap this guards against: the packets' timestamps come in decoding order, not
    # display order (AVI stores no presentation times), so they cannot place the frames.
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert pts != sorted(pts) or None in pts
    _, images = pyav_decode(path)
    with open_video(path) as video:
        assert video.info.duration == pytest.approx(60 / 25)
        frames = list(video.sample(5))
        frames += list(video.sample(5))  # and again, from the start
    assert [f.source for f in frames] == [5 * k for k in range(12)] * 2
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"bframes.avi frame {frame.source}")


def test_frames_an_edit_list_cuts_are_no_frames_of_the_clip(tmp_path):
    # A clip cut 5 frames into a GOP without re-encoding (ffmpeg -ss ... -c copy) keeps those
    # frames for the frames after them to refer to, and its edit list tells players to start
    # after them: t = 0 is the first frame a player shows, as PyAV decodes the clip.
    frames = list(moving_frames(45, 160, 120))
    path = media.write_trimmed(tmp_path / "trimmed.mp4", frames, cut=5)
    times, images = pyav_decode(path)
    assert len(images) == 40 and times[:2] == pytest.approx([0, 0.04])
    with open_video(path) as video:
        info, every, samples = video.info, list(video.frames()), list(video.sample(5))
    assert info.frames == 40 and info.duration == pytest.approx(40 / 25)
    assert [f.time for f in every] == pytest.approx(times)
    assert [f.source for f in samples] == [5 * k for k in range(8)]
    for frame in every + samples:
        assert np.array_equal(frame.image, images[frame.source]), f"trimmed frame {frame.source}"
    assert decode.player_origin(path) == 0.0


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_time_counts_from_the_first_frame(tmp_path, suffix):
    # The first frame is stamped 0.5 s; sampling starts there.
    times = [0.5, 0.54, 0.58, 0.7, 0.8, 0.9, 1.0, 1.04, 1.2, 1.3]
    path = write_video(tmp_path / f"late{suffix}", moving_frames(10, 160, 120), 25, times=times)
    with open_video(path) as video:
        # The last frame's length is FFmpeg's guess from the stream's timing (0.02-0.04 s).
        assert 0.8 < video.info.duration <= 0.84 + 1e-3
        frames = list(video.sample(10))
    # t = 0, .1, ... .8 after the first frame: 0.5, 0.6, ... 1.3 s in the file.
    assert [f.source for f in frames] == [0, 2, 3, 4, 5, 6, 7, 8, 9]


def test_short_mkv_without_usable_timestamps_plays_at_its_nominal_rate(tmp_path):
    # decord 0.6 returns ~9.2e15 s for every frame of a Matroska file this short; decoding
    # falls back to frame index / fps.
    path = write_video(tmp_path / "short.mkv", moving_frames(5, 160, 120), 25)
    _, images = pyav_decode(path)
    with open_video(path) as video:
        assert video.info.duration == pytest.approx(5 / 25)
        frames = list(video.sample(50))
    assert [f.source for f in frames] == [k // 2 for k in range(10)]
    for frame in frames:
        assert_close(frame.image, images[frame.source], f"short.mkv frame {frame.source}")


def test_a_frame_declared_999000_s_after_the_last_is_refused_by_name(tmp_path):
    # 10 frames, the last stamped at 999,000 s: fer planned 4,995,001 samples (11 hours) of a
    # 2 KB file. PyAV, the second reader, shows what the file declares.
    times = [k / 25 for k in range(9)] + [999_000.0]
    path = write_coded(tmp_path / "bomb.mkv", moving_frames(10, 64, 48), 25, "libx264", "yuv420p", times=times)
    assert path.stat().st_size < 20_000
    stamps, _ = pyav_decode(path)
    assert stamps[-1] == pytest.approx(999_000.0)
    with pytest.raises(VideoError, match=r"bomb.mkv: frame 9 starts 999000 s after the frame before it") as err:
        open_video(path)
    assert "\n" not in str(err.value)


def test_frames_each_held_under_an_hour_but_for_days_in_all_are_refused_by_name(tmp_path):
    # 40 frames each 3,599 s after the one before: each under the hour fer holds a frame, 39 hours
    # in all (700,000 samples of 40 pictures); a slideshow of 10 s slides stays a clip.
    times = [k * 3599.0 for k in range(40)]
    path = write_coded(tmp_path / "slow.mkv", moving_frames(40, 64, 48), 25, "libx264", "yuv420p", times=times)
    stamps, _ = pyav_decode(path)
    assert np.diff(stamps).max() < 3600 and stamps[-1] == pytest.approx(39 * 3599.0)
    with pytest.raises(VideoError, match=r"slow.mkv: frames held over 60 s each add up to 140361 s") as err:
        open_video(path)
    assert "\n" not in str(err.value)
    slides = write_coded(
        tmp_path / "slides.mkv", moving_frames(6, 64, 48), 25, "libx264", "yuv420p", times=[k * 10.0 for k in range(6)]
    )
    with open_video(slides) as video:
        assert video.info.duration == pytest.approx(60.0, abs=10.0) and video.info.frames == 6


def test_a_clip_without_timestamps_declaring_a_microframe_rate_is_refused_by_name():
    # An AVI whose header declares 1e-6 frames/s (dwScale 1,000,000) and whose packets carry no
    # usable times: frame i at i / fps planned 15 million samples of 3 pictures.
    with pytest.raises(VideoError, match=r"x.avi: declares 1e-06 frames/s, 3000000 s for 3 frames"):
        decode._timestamps(np.full((3, 2), np.nan), Path("x.avi"), 3, 1e-6)
    starts, duration, real = decode._timestamps(np.full((3, 2), np.nan), Path("x.avi"), 3, 0.1)  # a slide every 10 s
    assert not real and duration == pytest.approx(30.0) and list(starts) == pytest.approx([0, 10, 20])


def test_a_last_frame_declared_to_last_999000_s_lasts_a_usual_frame(tmp_path):
    path = write_sliver_clip(tmp_path / "long_last.mkv", 1, fps=30, sliver=999_000.0, codec="libx264")
    with av.open(str(path)) as container:  # what the file declares, read by PyAV
        last = [p for p in container.demux(video=0) if p.size][-1]
        assert float(last.duration * last.time_base) == pytest.approx(999_000 + 1 / 30, rel=1e-9)
    with open_video(path) as video:
        assert video.info.duration == pytest.approx(30 / 30, abs=1e-3)  # 30 frames of 1/30 s
        assert len(list(video.sample(5))) == 5


def test_samples_are_fresh_arrays(media_dir):
    # Upsampling shows a frame twice; each sample must own its pixels.
    frames = sample(media_dir / "h264.mov", 25)  # native 12.5
    assert frames[0].source == frames[1].source
    assert not np.shares_memory(frames[0].image, frames[1].image)


def test_rejects_a_bad_rate(media_dir):
    with open_video(media_dir / "h264.mp4") as video, pytest.raises(ValueError):
        video.sample(0)


# --- image sequences ----------------------------------------------------------------------


def test_png_folder_is_a_clip_with_exact_pixels(tmp_path):
    images = list(moving_frames(12, 64, 48))
    folder = write_frames(tmp_path / "001", images)
    (folder / "001.json").write_text("{}")  # AFEW-VA keeps annotations next to the frames
    with open_video(folder, frames_fps=10) as video:
        info = video.info
        frames = list(video.sample(10))
        slow = list(video.sample(4))
    assert (info.frames, info.width, info.height, info.decoder) == (12, 64, 48, "images")
    assert info.duration == pytest.approx(12 / 10)
    assert info.fps == 10
    assert [f.source for f in frames] == list(range(12))
    for frame in frames:
        np.testing.assert_array_equal(frame.image, images[frame.source])
    # t = 0, .25, .5, .75, 1.0 (< 1.2 s) at 10 frames/s.
    assert [f.source for f in slow] == [0, 2, 5, 7, 10]


def test_jpg_folder_is_read_in_name_order(tmp_path):
    images = list(moving_frames(3, 64, 48))
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i:05d}.jpg", quality=95)
    frames = sample(tmp_path, 25)
    for frame in frames:
        expected = np.asarray(Image.open(tmp_path / f"{frame.source:05d}.jpg").convert("RGB"))
        np.testing.assert_array_equal(frame.image, expected)
    assert len(frames) == 3


def test_unpadded_frame_names_play_in_number_order(tmp_path):
    # 0.png ... 14.png: name order would play 0, 1, 10, 11, ..., 14, 2, 3, ...
    images = list(moving_frames(15, 64, 48))
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    frames = sample(tmp_path, 25)
    assert len(frames) == 15
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, images[k])


def test_missing_frame_numbers_are_time_the_last_frame_is_held(tmp_path):
    # 00000-00004 and 00010-00014 at 5 frames/s: frame 10 plays at 2 s, as a label file
    # (AFEW-VA: frame N at N / fps) and the training data place it; 00004 is on screen in between.
    images = list(moving_frames(15, 64, 48))
    kept = [*range(5), *range(10, 15)]
    for i in kept:
        Image.fromarray(images[i]).save(tmp_path / f"{i:05d}.png")
    with open_video(tmp_path, frames_fps=5) as video:
        info, frames, every = video.info, list(video.sample(5)), list(video.frames())
    assert info.duration == pytest.approx(3.0) and info.frames == 10
    held = [min(k, 4) if k < 10 else k for k in range(15)]  # what is on screen at t = k / 5
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, images[held[k]])
    assert [f.time for f in every] == pytest.approx([i / 5 for i in kept])


def test_a_folder_that_starts_past_frame_0_keeps_its_frames_at_their_numbers(tmp_path):
    # 00005 ... 00034 at 10 frames/s: frame N plays at N / 10 s, where a label file (AFEW-VA,
    # and the truth `fer benchmark accuracy` reads) puts it; before 0.5 s the first frame shows.
    images = list(moving_frames(35, 64, 48))
    for i in range(5, 35):
        Image.fromarray(images[i]).save(tmp_path / f"{i:05d}.png")
    with open_video(tmp_path, frames_fps=10) as video:
        info, frames, every = video.info, list(video.sample(10)), list(video.frames())
    assert info.duration == pytest.approx(3.5) and info.frames == 30
    assert [f.time for f in every] == pytest.approx([i / 10 for i in range(5, 35)])
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, images[max(k, 5)])


def test_a_frame_number_that_is_no_index_is_one_line_naming_it(tmp_path):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "cam1_1699999999.png")
    with pytest.raises(VideoError, match=rf"{tmp_path}: frame cam1_1699999999.png would start .* no frame index"):
        open_video(tmp_path, frames_fps=25)


def test_frame_names_with_a_prefix_and_no_numbers(tmp_path):
    images = list(moving_frames(3, 64, 48))
    for name, img in zip(["frame_9.png", "frame_10.png", "frame_11.png"], images):
        Image.fromarray(img).save(tmp_path / name)
    with open_video(tmp_path, frames_fps=25) as video:
        frames = list(video.frames())
    assert [f.time for f in frames] == pytest.approx([9 / 25, 10 / 25, 11 / 25])
    assert all(np.array_equal(f.image, images[k]) for k, f in enumerate(frames))
    other = tmp_path / "named"
    other.mkdir()
    for name, img in zip(["b.png", "a.png", "c.png"], images):  # no numbers: in name order, one after another
        Image.fromarray(img).save(other / name)
    frames = sample(other, 25)
    assert [int(np.argmax([np.array_equal(f.image, img) for img in images])) for f in frames] == [1, 0, 2]


def test_folder_with_mixed_sizes_is_rejected(tmp_path):
    write_frames(tmp_path, [np.zeros((48, 64, 3), np.uint8), np.zeros((48, 66, 3), np.uint8)])
    with pytest.raises(VideoError, match=str(tmp_path)):
        open_video(tmp_path)


def test_empty_folder_is_rejected(tmp_path):
    with pytest.raises(VideoError, match=str(tmp_path)):
        open_video(tmp_path)


# --- bad input ----------------------------------------------------------------------------


def truncate(source: Path, target: Path, at: int | None = None) -> Path:
    """A copy of `source` cut at byte `at` (default: half its bytes)."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2 if at is None else at])
    return target


def write_zero_frame_avi(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # header only, no frame
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_audio_only(path: Path) -> Path:
    """A second of silence in AAC: a container with no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(16):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


BAD_FILES = {
    "missing": lambda clips, tmp: tmp / "missing.mp4",
    "zero-bytes": lambda clips, tmp: write_bytes(tmp / "zero.mp4", b""),
    "text": lambda clips, tmp: write_bytes(tmp / "text.mp4", b"not a video\n" * 50),
    "half-mp4": lambda clips, tmp: truncate(clips / "h264.mp4", tmp / "half.mp4"),
    "0-frames": lambda clips, tmp: write_zero_frame_avi(tmp / "no_frames.avi"),
    "audio-only": lambda clips, tmp: write_audio_only(tmp / "speech.mp4"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_files_raise_video_error_naming_the_file(media_dir, tmp_path, kind):
    path = BAD_FILES[kind](media_dir, tmp_path)
    with pytest.raises(VideoError, match=path.name) as error:
        sample(path, 5)
    assert "\n" not in str(error.value)


def test_audio_only_file_says_it_has_no_video_stream(tmp_path):
    # decord says "cannot find video stream with wanted index: -1", as it did for AV1 when its
    # FFmpeg had no AV1 decoder; the message says what that means.
    path = write_audio_only(tmp_path / "speech.mp4")
    with pytest.raises(VideoError, match=r"speech.mp4: cannot read as a video \(no video stream this FFmpeg"):
        open_video(path)


@pytest.mark.parametrize("width", [16, 48, 96])
def test_narrow_clips_decord_refused_decode(tmp_path, width):
    # decord (0.6 and decord2 3.4, which fer decoded with before) could not copy out frames of a
    # few narrow widths, which widths depending on the CPU; PyAV hands them out like any other.
    source = moving_frames(3, width, 64)
    images = list(source)
    path = write_video(tmp_path / "narrow.mp4", images, 25)
    frames = sample(path, 25)
    assert [f.source for f in frames] == [0, 1, 2]
    for frame in frames:  # against what was written: x264's loss only
        assert_close(frame.image, images[frame.source], f"narrow frame {frame.source}", 4.0, 96)


def packet_offset(path: Path, index: int) -> int:
    """Byte offset in the file of video packet `index`."""
    with av.open(str(path)) as container:
        for i, packet in enumerate(container.demux(video=0)):
            if i == index:
                return packet.pos


def test_avi_cut_inside_a_frame_fails_while_reading(media_dir, tmp_path):
    # Cut 200 bytes into frame 20's JPEG headers (its Huffman tables): decord opens the file
    # and lists frame 20, then cannot decode it. decord's decoding thread reads ahead, so the
    # failure surfaces while reading frame 0 at open or later in the read, by timing (seen under
    # load); either way it is a one-line VideoError and frame 20 is never yielded.
    source = media_dir / "mjpeg.avi"
    path = truncate(source, tmp_path / "cut.avi", at=packet_offset(source, 20) + 200)
    seen = []
    with pytest.raises(VideoError, match="cut.avi") as error:
        with open_video(path) as video:
            assert video.info.frames == 21
            seen.extend(video.sample(video.info.fps))
    assert len(seen) < 20
    assert "\n" not in str(error.value)


def test_truncated_mkv_decodes_its_readable_part(media_dir, reference, tmp_path):
    # Matroska has no index to contradict: decord sees a shorter clip, as PyAV does.
    path = truncate(media_dir / "h264.mkv", tmp_path / "half.mkv")
    _, full = reference("h264.mkv")
    _, readable = pyav_decode(path)
    frames = sample(path, 29.97)
    assert 0 < len(frames) < CLIP_FRAMES
    assert len(frames) <= len(readable)
    for frame in frames:
        assert_close(frame.image, full[frame.source], f"half.mkv frame {frame.source}")


# --- streaming, device, import cost -------------------------------------------------------


def test_long_clip_streams_one_chunk_at_a_time(tmp_path):
    width, height, fps, seconds = 320, 240, 25, 40
    frame_bytes = width * height * 3

    def flat(n):  # cheap to encode: a flat grey level that changes every frame
        for i in range(n):
            yield np.full((height, width, 3), (i * 37) % 256, np.uint8)

    path = write_video(tmp_path / "long.mp4", flat(fps * seconds), fps)
    with open_video(path) as video:
        count, peak = heap_growth(video.sample(fps))
    assert count == fps * seconds
    # The frames live in FFmpeg's buffers, on the C heap: at least the frame handed out was
    # alive, and nowhere near the 1000 frames (230 MB) of the whole clip were alive together.
    assert frame_bytes <= peak < 3 * CHUNK_FRAMES * frame_bytes


def heap_growth(frames) -> tuple[int, int]:
    """How many `frames` there were, and the most the C heap grew while each was held."""
    if _heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2 to see FFmpeg's frame buffers")
    before, count, peak = _heap_in_use(), 0, 0
    for _ in frames:
        count += 1
        peak = max(peak, _heap_in_use() - before)
    return count, peak


def _heap_in_use() -> int | None:
    """Bytes of the C heap in use (glibc mallinfo2), or None where there is no such call."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def test_a_waiting_caller_leaves_no_frames_decoded_ahead(tmp_path):
    # annotate's decoding thread waits whenever the model is behind. decord's decoding thread
    # kept decoding meanwhile, every packet it had been handed ahead, into RGB frames that its
    # pool then kept: on this clip its C heap grew by 343 frames (79 MB) with decord2 3.4.
    # Decoding on the caller's thread decodes nothing while the caller waits.
    if _heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2 to see the decoder's C heap")
    width, height, fps = 320, 240, 25
    frame_bytes = width * height * 3
    path = write_video(tmp_path / "wait.mp4", moving_frames(fps * 20, width, height), fps)
    with open_video(path, threads=1) as video:
        before = _heap_in_use()
        grown = 0
        for _frame in video.sample(5):
            time.sleep(0.005)  # the caller busy elsewhere
            grown = max(grown, _heap_in_use() - before)
    assert grown < 3 * CHUNK_FRAMES * frame_bytes, f"heap grew {grown / frame_bytes:.0f} frames"


def test_import_is_cheap():
    code = (
        "import sys, fercli.media.decode; "
        "heavy = [m for m in ('torch', 'PIL', 'av') if m in sys.modules]; "
        "sys.exit(str(heavy) if heavy else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_large_frames_are_read_a_few_at_a_time(tmp_path, monkeypatch):
    # CHUNK_BYTES caps a read: 16 frames of 720p RGB would be 44 MB alive at once.
    width, height, fps = 320, 240, 25
    frame_bytes = width * height * 3
    path = write_video(tmp_path / "big.mp4", moving_frames(2 * fps, width, height), fps)
    monkeypatch.setattr(decode, "CHUNK_BYTES", 2 * frame_bytes)  # as if each frame were 8x larger
    with open_video(path) as video:
        count, peak = heap_growth(video.sample(fps))
    assert count == 2 * fps
    assert frame_bytes <= peak < 5 * frame_bytes


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_frames_gives_every_frame_with_its_own_index_and_start(tmp_path, suffix):
    # A variable-rate clip: each frame's time must be its own start, as PyAV gives it.
    frames_in = list(moving_frames(len(VFR_TIMES), 160, 120))
    path = write_video(tmp_path / f"vfr{suffix}", frames_in, 25, times=VFR_TIMES)
    times, images = pyav_decode(path)
    with open_video(path) as video:
        frames = list(video.frames())
    assert [f.index for f in frames] == list(range(len(images)))
    assert [f.time for f in frames] == pytest.approx(times, abs=1e-3)
    for frame in frames:
        assert_close(frame.image, images[frame.index], f"frame {frame.index}")


# --- decoding only what the samples show --------------------------------------------------

# 51 frames at 25 fps: at 5 samples/s the last sample (2 s) is the last frame, so a pass reads
# every packet. GOPs of 16 frames; x264 and x265 place B-frames without adapting (b-adapt 0), so
# every clip has them whatever the motion.
SKIP_FRAMES = 51
X264_B = "b-adapt=0:scenecut=0"
X265_B = "log-level=error:keyint=16:min-keyint=16:bframes=3:b-adapt=0:scenecut=0"
SKIP_CLIPS = {
    # name: (encoder, encoder options)
    "h264_b.mp4": ("libx264", {"bf": "3", "g": "16", "x264-params": f"{X264_B}:b-pyramid=none"}),
    "h264_pyramid.mkv": ("libx264", {"bf": "3", "g": "16", "x264-params": f"{X264_B}:b-pyramid=normal"}),
    "h264_open.ts": ("libx264", {"bf": "3", "g": "16", "x264-params": f"{X264_B}:open-gop=1"}),
    "h264_no_b.mp4": ("libx264", {"bf": "0", "g": "16"}),
    "hevc_open.mp4": ("libx265", {"x265-params": f"{X265_B}:open-gop=1"}),
    "hevc_closed.mkv": ("libx265", {"x265-params": f"{X265_B}:open-gop=0"}),
    "mpeg4.mp4": ("mpeg4", {"bf": "2", "g": "16"}),
    "vp9.webm": ("libvpx-vp9", None),
    "av1.webm": ("libsvtav1", None),
}
CANNOT_TELL = {"vp9.webm", "av1.webm"}  # codecs whose packets are all decoded


@pytest.fixture(scope="module")
def skip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("skip")
    for name, (codec, options) in SKIP_CLIPS.items():
        write_coded(folder / name, moving_frames(SKIP_FRAMES, 160, 120), 25, codec, "yuv420p", options=options)
    return folder


def full_and_skipping(path: Path, rate: float, threads: int = 1):
    """Samples of a full decode, samples of a decode that skips, and (sent, skipped) packets of
    the skipping decode's second pass (from the start, planned throughout)."""
    with open_video(path, threads=threads, skip_unseen=False) as video:
        full = list(video.sample(rate))
    with open_video(path, threads=threads) as video:
        first = list(video.sample(rate))
        before = video.packets
        again = list(video.sample(rate))
        after = video.packets
    assert_same_samples(first, again, f"{path.name} again")
    return full, first, (after.sent - before.sent, after.skipped - before.skipped)


def assert_same_samples(got: list[decode.Frame], full: list[decode.Frame], what: str) -> None:
    assert [(f.index, f.time, f.source) for f in got] == [(f.index, f.time, f.source) for f in full], what
    for a, b in zip(got, full):
        assert np.array_equal(a.image, b.image), f"{what}: sample {a.index} (frame {a.source}) differs"


def display_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return sorted(p.pts for p in container.demux(video=0) if p.size)


def ffmpeg_unreferenced(path: Path) -> set[int]:
    """pts of the frames FFmpeg's own decoder leaves out as referenced by no other (skip_frame NONREF)."""
    with av.open(str(path)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        kept = {f.pts for f in container.decode(video=0)}
    return set(display_pts(path)) - kept


@pytest.mark.parametrize("rate, threads", [(5, 1), (3, 0)])
@pytest.mark.parametrize("name", SKIP_CLIPS)
def test_samples_are_bit_for_bit_those_of_a_full_decode(skip_dir, name, rate, threads):
    path = skip_dir / name
    times, images = pyav_decode(path)  # PyAV, every frame
    full, skipping, _ = full_and_skipping(path, rate, threads)
    assert_same_samples(skipping, full, name)
    count = math.ceil(SKIP_FRAMES / 25 * rate)
    assert [f.source for f in skipping] == [on_screen(times, k / rate) for k in range(count)]
    for frame in skipping:
        assert np.array_equal(frame.image, images[frame.source]), f"{name} frame {frame.source}"


@pytest.mark.parametrize("name", SKIP_CLIPS)
def test_packets_of_frames_no_sample_shows_and_none_references_are_never_sent(skip_dir, name):
    path = skip_dir / name
    pts = display_pts(path)
    full, _, (sent, skipped) = full_and_skipping(path, 5)
    assert sent + skipped == SKIP_FRAMES
    if name in CANNOT_TELL:
        assert skipped == 0
        return
    shown = {pts[f.source] for f in full}
    # FFmpeg's decoder is the reference for which frames nothing references.
    assert skipped == len(ffmpeg_unreferenced(path) - shown)
    assert (skipped > 0) == (name != "h264_no_b.mp4")  # all of x264's P-frames are references


@pytest.mark.parametrize("name", ["h264_open.ts", "hevc_open.mp4"])
def test_open_gop_clips_are_open(skip_dir, name):
    # Frames shown before a later keyframe but decoded after it: what an open GOP means.
    with av.open(str(skip_dir / name)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    keys = [i for i, (_, key) in enumerate(packets) if key][1:]
    assert any(packets[j][0] < packets[k][0] for k in keys for j in range(k + 1, min(k + 4, len(packets))))


def test_every_frame_and_the_native_rate_send_every_packet(skip_dir):
    path = skip_dir / "h264_b.mp4"
    with open_video(path) as video:
        assert len(list(video.frames())) == SKIP_FRAMES and video.packets.skipped == 0
        assert len(list(video.sample(25))) == SKIP_FRAMES and video.packets.skipped == 0
        list(video.sample(5))
        assert video.packets.skipped > 0
    with open_video(path, skip_unseen=False) as video:
        list(video.sample(5))
        assert video.packets.skipped == 0


def garbled(data: bytes) -> bytes:
    """The packet's second half with every 7th byte flipped: the decoder conceals what it cannot read."""
    damaged = bytearray(data)
    for i in range(len(data) // 2, len(data), 7):
        damaged[i] ^= 0x5A
    return bytes(damaged)


# h264_b.mp4 in decoding order: I0 P4 B1 B2 B3 P8 B5 B6 B7 ... (frames in display order).
DAMAGE = {
    "reference garbled": lambda i, data: garbled(data) if i == 5 else data,
    "reference lost": lambda i, data: None if i == 9 else data,
    "unreferenced lost": lambda i, data: None if i == 3 else data,
    "starts inside a GOP": lambda i, data: None if i < 6 else data,  # no keyframe until frame 16
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_clips_give_the_samples_of_a_full_decode(skip_dir, tmp_path, damage, caplog):
    path = media.remux(skip_dir / "h264_b.mp4", tmp_path / "damaged.mp4", DAMAGE[damage])
    with caplog.at_level("DEBUG", logger="fercli"):
        full, skipping, (_, skipped) = full_and_skipping(path, 5)
    assert_same_samples(skipping, full, damage)
    assert skipped > 0 and "decoding every frame" not in caplog.text


HEVC_CRA, HEVC_EOS = 21, b"\x00\x00\x00\x02\x48\x01"  # a keyframe's NAL type; an end of sequence NAL unit


def test_a_sample_the_decoder_never_shows_gives_the_frame_of_a_full_decode(skip_dir, tmp_path, caplog):
    # An end of sequence before the last keyframe (an open-GOP CRA): the decoder then drops the
    # frames shown before that keyframe and decoded after it, sample 45 among them. A full
    # decode shows the last frame it gave before; skipping cannot know which, so it starts over.
    source = skip_dir / "hevc_open.mp4"
    with av.open(str(source)) as container:
        kinds = [(bytes(p)[4] >> 1) & 63 for p in container.demux(video=0) if p.size]
    cra = max(i for i, kind in enumerate(kinds) if kind == HEVC_CRA)
    path = media.remux(source, tmp_path / "eos.mp4", lambda i, data: data + HEVC_EOS if i == cra - 1 else data)
    shown = {round(t * 25) for t in pyav_decode(path)[0]}
    assert 45 not in shown and len(shown) < SKIP_FRAMES  # the clip is what it means
    with caplog.at_level("DEBUG", logger="fercli"):
        full, skipping, _ = full_and_skipping(path, 5)
    assert_same_samples(skipping, full, path.name)
    assert "decoding every frame" in caplog.text


def test_a_damaged_sample_fails_as_in_a_full_decode(skip_dir, tmp_path):
    path = media.remux(skip_dir / "h264_b.mp4", tmp_path / "damaged.mp4", lambda i, d: garbled(d) if i == 11 else d)
    messages = []
    for skip in (False, True):
        with pytest.raises(VideoError) as error, open_video(path, threads=1, skip_unseen=skip) as video:
            list(video.sample(5))
        messages.append(str(error.value))
    assert messages[0] == messages[1]


def test_a_clip_cut_by_its_edit_list_gives_the_samples_of_a_full_decode(tmp_path):
    frames = list(moving_frames(45, 160, 120))
    path = media.write_trimmed(tmp_path / "trimmed.mp4", frames, cut=5, options=SKIP_CLIPS["h264_b.mp4"][1])
    with av.open(str(path)) as container:
        assert sum(p.is_discard for p in container.demux(video=0) if p.size) == 5  # the clip is what it means
    full, skipping, (_, skipped) = full_and_skipping(path, 5)
    assert_same_samples(skipping, full, path.name)
    assert skipped > 0


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_rotated_and_variable_rate_clips_give_the_samples_of_a_full_decode(tmp_path, codec):
    # Frames 10 to 60 ms apart and a pause of 0.4 s; a phone's display matrix.
    gaps = np.resize([0.04, 0.01, 0.06, 0.03], 50)
    gaps[20] = 0.4
    times = np.concatenate([[0.0], np.cumsum(gaps)]).round(3).tolist()
    options = SKIP_CLIPS["h264_b.mp4" if codec == "libx264" else "hevc_open.mp4"][1]
    path = write_coded(
        tmp_path / "phone.mp4",
        moving_frames(51, 160, 120),
        25,
        codec,
        "yuv420p",
        options=options,
        rotation=-90,
        times=times,
    )
    stamps, images = pyav_decode(path)
    assert stamps == pytest.approx(times, abs=1e-6)
    full, skipping, (_, skipped) = full_and_skipping(path, 5)
    assert_same_samples(skipping, full, path.name)
    assert skipped > 0 and skipping[0].image.shape == (160, 120, 3)
    assert [f.source for f in skipping] == [on_screen(stamps, k / 5) for k in range(len(skipping))]
