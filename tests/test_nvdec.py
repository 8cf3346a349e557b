"""fercli.media.nvdec against PyAV: its RGB conversion, its frames and times (NVDEC played by PyAV
on the CPU, so that everything but NVDEC itself is checked without a GPU), its fallbacks; and,
on a GPU, NVDEC itself against PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media import scene, write_coded, write_frames

from fercli.core.errors import VideoError
from fercli.media import nvdec
from fercli.media.decode import open_video

SIZE = (96, 64)  # px; even, as NVDEC's path needs
FRAMES = 14


def tagged_clip(path: Path, colorspace: int = 2, full_range: bool = False, codec: str = "libx264", size=SIZE) -> Path:
    """A short clip whose frames carry a colour matrix and range, as cameras tag them."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if full_range and codec == "libx264" else "yuv420p"
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = 2 if full_range else 1
        stream.options = {"x265-params": "log-level=error"} if codec == "libx265" else {}
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(scene(w, h, [(4 + 3 * i, 2, h - 8)], seed=i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class _Frame:
    """A decoded frame as PyNvVideoCodec hands it over: its pts, its NV12 pixels through DLPack."""

    def __init__(self, pixels: torch.Tensor, pts):
        self.pixels, self.pts = pixels, pts

    def getPTS(self):  # PyNvVideoCodec names it so
        return self.pts

    def __dlpack__(self, **kwargs):
        return self.pixels.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.pixels.__dlpack_device__()


class PyAVAsNvdec:
    """PyNvVideoCodec's SimpleDecoder played by PyAV: NV12 frames in display order with their pts
    (`drop`: frame numbers it never gives, as a decoder skips a damaged frame; `stop`: where it ends)."""

    def __init__(self, path, device, drop=(), stop=None):
        self.container = av.open(str(path))
        self.frames = self.container.decode(video=0)
        self.drop, self.stop, self.given = set(drop), stop, 0
        self.calls = []

    def get_batch_frames(self, n):
        self.calls.append(n)
        out = []
        for frame in self.frames:
            k, self.given = self.given, self.given + 1
            if self.stop is not None and k >= self.stop:
                break
            if k not in self.drop:
                out.append(_Frame(torch.from_numpy(frame.reformat(format="nv12").to_ndarray().copy()), frame.pts))
            if len(out) == n:
                break
        return out


def device_samples(path, fps, **kwargs):
    with nvdec.DeviceVideo(path, "cpu", **kwargs) as video:
        batches = list(video.sample(fps, batch=5))
        decoder = video.info.decoder
    index = [k for b in batches for k in b.index]
    times = [t for b in batches for t in b.time]
    sources = [s for b in batches for s in b.source]
    images = torch.cat([b.images for b in batches]).numpy() if batches else np.zeros((0,))
    return decoder, index, times, sources, images


def cpu_samples(path, fps):
    with open_video(path) as video:
        frames = list(video.sample(fps))
    return (
        [f.index for f in frames],
        [f.time for f in frames],
        [f.source for f in frames],
        np.stack([f.image for f in frames]),
    )


@pytest.mark.parametrize(
    "colorspace, full_range, codec",
    [
        (2, False, "libx264"),
        (1, False, "libx264"),
        (6, False, "libx264"),
        (9, False, "libx264"),
        (4, False, "libx264"),
        (2, True, "libx264"),
        (1, False, "libx265"),
    ],
    ids=["unspecified", "bt709", "smpte170m", "bt2020", "fcc", "full-range", "hevc-bt709"],
)
def test_the_rgb_is_pyavs_bit_for_bit(tmp_path, colorspace, full_range, codec):
    path = tagged_clip(tmp_path / "clip.mkv", colorspace, full_range, codec)
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            want = frame.to_ndarray(format="rgb24", interpolation="BICUBIC")
            y, u, v = (
                torch.from_numpy(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].copy())
                for p in frame.planes
            )
            got = nvdec.yuv420_to_rgb(y[None], u[None], v[None], int(frame.colorspace), full_range)[0]
            np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("fps", [5.0, 7.3, 60.0])
def test_samples_are_the_cpu_paths_frames_and_times(tmp_path, fps):
    path = tagged_clip(tmp_path / "clip.mp4", colorspace=1)
    decoder, index, times, sources, images = device_samples(path, fps, open_decoder=PyAVAsNvdec)
    want_index, want_times, want_sources, want_images = cpu_samples(path, fps)
    assert decoder == "gpu"
    assert (index, times, sources) == (want_index, want_times, want_sources)
    np.testing.assert_array_equal(images, want_images)


def test_frames_are_numbered_by_pts_on_a_variable_rate_clip(tmp_path):
    # Frames held 40 to 200 ms: a sample's frame follows the timestamps, not the frame count.
    times = np.cumsum([0.0, 0.04, 0.2, 0.04, 0.12, 0.04, 0.2, 0.08, 0.04, 0.04])
    frames = [scene(*SIZE, [(4 + 4 * i, 2, 56)], seed=i) for i in range(len(times))]
    path = write_coded(tmp_path / "vfr.mkv", frames, 25, "libx264", "yuv420p", times=list(times))
    _, index, _, sources, images = device_samples(path, 10.0, open_decoder=PyAVAsNvdec)
    want_index, _, want_sources, want_images = cpu_samples(path, 10.0)
    assert (index, sources) == (want_index, want_sources) and len(set(sources)) < len(sources)
    np.testing.assert_array_equal(images, want_images)


def test_a_rotated_clip_comes_out_upright_as_on_the_cpu(tmp_path):
    frames = [scene(*SIZE, [(4, 2, 56)], seed=i) for i in range(6)]
    path = write_coded(tmp_path / "phone.mp4", frames, 25, "libx264", "yuv420p", rotation=-90)
    _, _, _, _, images = device_samples(path, 25.0, open_decoder=PyAVAsNvdec)
    want = cpu_samples(path, 25.0)[3]
    assert images.shape[1:3] == (SIZE[0], SIZE[1])  # turned: taller than wide
    np.testing.assert_array_equal(images, want)


def test_a_frame_the_decoder_never_gives_leaves_the_one_before_on_screen(tmp_path):
    path = tagged_clip(tmp_path / "clip.mp4")
    _, _, _, sources, images = device_samples(path, 25.0, open_decoder=lambda p, d: PyAVAsNvdec(p, d, drop={4}))
    want = cpu_samples(path, 25.0)[3]
    assert sources[4] == 4
    np.testing.assert_array_equal(images[4], want[3])  # frame 3 stays on screen at frame 4's time
    np.testing.assert_array_equal(np.delete(images, 4, 0), np.delete(want, 4, 0))


def test_a_decoder_that_ends_early_is_a_video_error_naming_the_file(tmp_path):
    path = tagged_clip(tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match=r"cut\.mp4: decoding failed near frame 9 \(the decoder gave frames up to 8\)"):
        device_samples(path, 25.0, open_decoder=lambda p, d: PyAVAsNvdec(p, d, stop=9))


def test_decoding_stops_at_the_last_frame_a_sample_needs(tmp_path):
    path = tagged_clip(tmp_path / "clip.mp4")
    decoders = []

    def opened(p, d):
        decoders.append(PyAVAsNvdec(p, d))
        return decoders[0]

    with nvdec.DeviceVideo(path, "cpu", open_decoder=opened) as video:
        for batch in video.sample(1.0):  # one sample: frame 0 (the clip lasts 0.56 s)
            assert batch.source == [0]
    assert decoders[0].given <= nvdec.NVDEC_BATCH  # one call, not the whole clip


def test_numbering_by_pts_falls_back_to_order():
    pts = np.array([0.0, 512.0, 1024.0, 1536.0])
    pairs = [(0, "a"), (1024, "c"), (None, "x"), (999, "y")]
    assert list(nvdec.numbered(pairs, pts)) == [(0, "a"), (2, "c"), (2, "x"), (3, "y")]
    assert [n for n, _ in nvdec.numbered(pairs, None)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "codec, pix_fmt, size, reason",
    [
        ("mjpeg", "yuvj420p", SIZE, "NVDEC does not decode mjpeg"),
        ("libx264", "yuv422p", SIZE, "yuv422p frames are converted to RGB by PyAV only"),
        ("mpeg4", "yuv420p", (97, 63), "odd frame size 97x63"),
    ],
)
def test_clips_nvdec_does_not_take_are_pyavs_frames_uploaded(tmp_path, codec, pix_fmt, size, reason):
    frames = [scene(*size, [(4, 2, 50)], seed=i) for i in range(5)]
    path = write_coded(
        tmp_path / "clip.avi" if codec != "libx264" else tmp_path / "clip.mp4", frames, 25, codec, pix_fmt
    )

    def never(p, d):
        pytest.fail("NVDEC was asked to open a clip it does not take")

    with nvdec.DeviceVideo(path, "cpu", open_decoder=never) as video:
        assert reason in video.fallback and video.info.decoder == "cpu"
    _, index, times, sources, images = device_samples(path, 25.0, open_decoder=never)
    want_index, want_times, want_sources, want_images = cpu_samples(path, 25.0)
    assert (index, times, sources) == (want_index, want_times, want_sources)
    np.testing.assert_array_equal(images, want_images)


def test_an_untaken_colour_matrix_a_folder_a_cpu_choice_and_a_failed_open_fall_back(tmp_path):
    found = nvdec.Probe("h264", "yuv420p", 96, 64, colorspace=8, full_range=False, turns=0)
    assert "colour matrix 8" in nvdec.nvdec_problem(found)
    folder = write_frames(tmp_path / "frames", [scene(*SIZE, [(4, 2, 50)], seed=i) for i in range(3)])
    with nvdec.DeviceVideo(folder, "cpu") as video:
        assert video.fallback == "a folder of frames" and video.info.decoder == "images"
    clip = tagged_clip(tmp_path / "clip.mp4")
    with nvdec.DeviceVideo(clip, "cpu", decoder="cpu") as video:
        assert video.fallback == "--decoder cpu"

    def broken(p, d):
        raise RuntimeError("cuvidCreateDecoder failed\nsecond line")

    with nvdec.DeviceVideo(clip, "cpu", open_decoder=broken) as video:
        assert video.fallback == "NVDEC did not open it (cuvidCreateDecoder failed)"
        assert torch.cat([b.images for b in video.sample(25.0)]).shape[0] == FRAMES


# -- on a GPU: NVDEC itself --------------------------------------------------------------------


@pytest.mark.requires_cuda
@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_nvdec_gives_pyavs_frames_and_times(tmp_path, codec):
    pytest.importorskip("PyNvVideoCodec")
    path = tagged_clip(tmp_path / "clip.mp4", colorspace=1, codec=codec, size=(320, 240))
    for fps in (5.0, 25.0):
        with nvdec.DeviceVideo(path, "cuda") as video:
            assert video.info.decoder == "gpu", video.fallback
            batches = list(video.sample(fps, batch=4))
        images = torch.cat([b.images for b in batches])
        assert images.device.type == "cuda"
        want_index, want_times, want_sources, want_images = cpu_samples(path, fps)
        assert [k for b in batches for k in b.index] == want_index
        assert [t for b in batches for t in b.time] == want_times
        assert [s for b in batches for s in b.source] == want_sources
        np.testing.assert_array_equal(images.cpu().numpy(), want_images)  # the same YUV, PyAV's conversion


def test_nv12_padded_to_a_decoders_surface_converts_the_picture_only(tmp_path):
    # 1080p decodes into 1088-row surfaces: the chroma rows start after the padding.
    path = tagged_clip(tmp_path / "clip.mp4", size=(96, 60))
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    nv12 = frame.reformat(format="nv12").to_ndarray()  # (90, 96)
    padded = np.zeros((96, 128), np.uint8)  # luma 64 rows (60 + 4), chroma 32 rows (30 + 2), 128 wide
    padded[:60, :96], padded[64:94, :96] = nv12[:60], nv12[60:]
    got = nvdec.nv12_to_rgb(torch.from_numpy(padded[None]), 60, 96, int(frame.colorspace), False)[0]
    np.testing.assert_array_equal(got.numpy(), frame.to_ndarray(format="rgb24", interpolation="BICUBIC"))
