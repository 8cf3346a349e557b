"""Clips decoded on the GPU with NVDEC (NVIDIA's PyNvVideoCodec, the `gpu` extra): the samples come
out as RGB frames on the device, for the GPU path's detector and crops (`blazeface_torch`,
`torchframes`), and no frame crosses to the host.

The samples are the CPU path's. `decode.open_video` indexes the clip (PyAV reads the container's
packets: each frame's time, the duration, the sampling rule `decode.sample_sources` and every
refusal are decode's), and NVDEC decodes the frames in display order, each handed to torch through
DLPack in NVDEC's own NV12 and numbered by its pts against PyAV's index (by order where a pts is
unknown), as decode's reader numbers PyAV's frames. A sample shows the last frame decoded at or
before its source, as on the CPU. Only the frames a sample shows are converted to RGB, by
`yuv420_to_rgb`: PyAV's own converter (FFmpeg's unscaled YUV 4:2:0 -> RGB24, its x86 SIMD form)
in integer arithmetic, so that a frame NVDEC decodes is the frame PyAV gives, bit for bit, where
the two decoders agree on the YUV (H.264, HEVC, VP9 and AV1 decoding is exact by their standards).

Clips NVDEC does not take here are decoded by PyAV and their samples uploaded, so every clip comes
out as the same batches (`DeviceVideo.fallback` says why): a folder of frames, a codec NVDEC does
not decode, a pixel format other than 8-bit 4:2:0 (PyAV converts 10-bit frames to 8 bits its own
way), an odd width or height (FFmpeg converts those with its general scaler, not the unscaled
path above), a colour matrix outside `YUV_TO_RGB`, or a decoder that does not open.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..core.errors import VideoError, first_line
from .decode import VideoInfo, VideoSource, open_video, sample_sources

log = logging.getLogger("fercli")

# Codecs NVDEC decodes on every GPU fer meets (FFmpeg's names); MJPEG and ProRes stay on the CPU.
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "vc1"})
PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})  # 8-bit 4:2:0: NVDEC's NV12
# FFmpeg's YUV -> RGB coefficients (libswscale yuv2rgb.c, ff_yuv2rgb_coeffs: crv, cbu, cgu, cgv in
# 1/65536) by the frame's colour matrix (AVColorSpace), as PyAV picks them: measured against
# PyAV's rgb24 on clips tagged with each (unknown and RGB take BT.601's, as FFmpeg does).
BT601 = (104597, 132201, 25675, 53279)
YUV_TO_RGB = {
    0: BT601,  # RGB tag on a YUV stream: FFmpeg's default
    1: (117489, 138438, 13975, 34925),  # BT.709
    2: BT601,  # unspecified
    4: (104448, 132798, 24759, 53109),  # FCC
    5: BT601,  # BT.470 B/G
    6: BT601,  # SMPTE 170M
    7: (117579, 136230, 16907, 35559),  # SMPTE 240M
    9: (110013, 140363, 12277, 42626),  # BT.2020 non-constant luminance
}
NVDEC_BATCH = 32  # frames asked of the decoder per call
SAMPLE_BATCH = 64  # samples per DeviceBatch: 64 RGB 1080p frames are 398 MB of device memory


@dataclass(frozen=True)
class DeviceBatch:
    """Consecutive samples of one clip, their frames on the device."""

    index: list[int]  # sample index k at the requested rate
    time: list[float]  # k / fps, seconds
    source: list[int]  # index of the decoded frame shown at that time
    images: torch.Tensor  # (N, H, W, 3) uint8 RGB, upright


@dataclass(frozen=True)
class Probe:
    """What NVDEC's path needs to know of a clip's video stream, from PyAV."""

    codec: str  # FFmpeg's codec name
    pixel_format: str
    width: int  # px, as stored
    height: int
    colorspace: int  # the first frame's AVColorSpace
    full_range: bool  # JPEG range (0..255) rather than video range (16..235)
    turns: int  # quarter turns counter-clockwise that make the stored frames upright


def probe(path: Path) -> Probe:
    """The stream's codec and format and its first frame's colour matrix, range and rotation."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream))
            context = stream.codec_context
            return Probe(
                context.name,
                frame.format.name,
                frame.width,
                frame.height,
                int(frame.colorspace),
                int(frame.color_range) == 2,
                (frame.rotation // 90) % 4,
            )
    except (av.error.FFmpegError, IndexError, StopIteration) as error:
        raise VideoError(f"{path}: cannot read as a video ({first_line(error)})") from error


def nvdec_problem(found: Probe) -> str | None:
    """Why NVDEC's path does not decode a stream (see the module's notes), or None."""
    if found.codec not in NVDEC_CODECS:
        return f"NVDEC does not decode {found.codec}"
    if found.pixel_format not in PIXEL_FORMATS:
        return f"{found.pixel_format} frames are converted to RGB by PyAV only"
    if found.width % 2 or found.height % 2:
        return f"odd frame size {found.width}x{found.height} (PyAV converts it with FFmpeg's general scaler)"
    if found.colorspace not in YUV_TO_RGB:
        return f"colour matrix {found.colorspace} is converted to RGB by PyAV only"
    return None


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, colorspace: int, full_range: bool) -> torch.Tensor:
    """(N, H, W) luma and (N, H/2, W/2) chroma planes, uint8 -> (N, H, W, 3) uint8 RGB, as PyAV's
    `to_ndarray(format="rgb24")` converts them (FFmpeg's fixed point: coefficients in 1/8192, each
    product's high 16 bits, saturated; each chroma sample shared by a 2 x 2 block)."""
    crv, cbu, cgu, cgv = YUV_TO_RGB[colorspace]
    cgu, cgv = -cgu, -cgv
    if full_range:
        cy, oy = 1 << 16, 0
        crv, cbu, cgu, cgv = (c * 224 // 255 if c >= 0 else -(-c * 224 // 255) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = (1 << 16) * 255 // 219, 16 << 16

    def fixed(c):  # a coefficient rounded to the 16-bit form the SIMD code multiplies with
        return (c + (1 << 15)) >> 16

    h, w = y.shape[-2:]
    luma = ((y.int() * 8 - fixed(oy << 3)) * fixed(cy << 13)) >> 16
    u8 = (u.int() - 128) * 8
    v8 = (v.int() - 128) * 8
    red, blue = (v8 * fixed(crv << 13)) >> 16, (u8 * fixed(cbu << 13)) >> 16
    green = ((u8 * fixed(cgu << 13)) >> 16) + ((v8 * fixed(cgv << 13)) >> 16)
    chroma = torch.stack([red, green, blue], -1)  # (N, H/2, W/2, 3)
    chroma = chroma.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
    return (luma[..., None] + chroma).clamp(0, 255).to(torch.uint8)


def nv12_to_rgb(nv12: torch.Tensor, height: int, width: int, colorspace: int, full_range: bool) -> torch.Tensor:
    """(N, rows, W') NV12 frames (the luma rows, then half as many rows of interleaved U, V; a
    decoder may pad both to its surface's size) -> (N, height, width, 3) RGB as `yuv420_to_rgb`."""
    luma_rows = nv12.shape[1] * 2 // 3
    uv = nv12[:, luma_rows : luma_rows + height // 2, :width]
    return yuv420_to_rgb(nv12[:, :height, :width], uv[..., 0::2], uv[..., 1::2], colorspace, full_range)


def numbered(frames: Iterable[tuple[float | None, object]], pts: np.ndarray | None) -> Iterator[tuple[int, object]]:
    """(frame index, frame) for decoded (pts, frame) pairs in display order: the index whose pts it
    has in PyAV's index, else its place in the order (decode's rule for PyAV's own frames)."""
    by_pts = {} if pts is None else {int(p): i for i, p in enumerate(pts)}
    for n, (stamp, frame) in enumerate(frames):
        yield (by_pts.get(int(stamp), n) if stamp is not None else n), frame


def shown(frames: Iterable[tuple[int, object]], needed: Sequence[int], path) -> Iterator[tuple[int, object]]:
    """(index, the frame on screen there) for each of `needed` (increasing, repeats allowed), from
    numbered decoded frames: the last frame decoded at or before it (a frame the decoder never gave
    leaves the one before on screen), as decode's reader picks them. VideoError where the decoder
    ends before a needed frame."""
    frames = iter(frames)
    last = ahead = None
    for index in needed:
        while last is None or last[0] < index:
            found, ahead = ahead or next(frames, None), None
            if found is None:
                got = "no frame" if last is None else f"frames up to {last[0]}"
                raise VideoError(f"{path}: decoding failed near frame {index} (the decoder gave {got})")
            if found[0] > index and last is not None:
                ahead = found
                break
            last = found
        yield index, last[1]


def _open_nvdec(path: Path, device: torch.device):
    """PyNvVideoCodec's decoder for a clip, its NV12 frames in `device`'s memory on torch's stream."""
    import PyNvVideoCodec as nvc

    stream = torch.cuda.current_stream(device).cuda_stream
    return nvc.SimpleDecoder(
        str(path),
        gpu_id=device.index or 0,
        cuda_stream=stream,
        use_device_memory=True,
        output_color_type=nvc.OutputColorType.NATIVE,
    )


def _decoded(decoder) -> Iterator[tuple[float | None, torch.Tensor]]:
    """(pts, NV12 tensor) for every frame, in display order; a batch's last frame is copied, since
    the decoder may reuse its memory for the next batch while that frame is still on screen."""
    while batch := decoder.get_batch_frames(NVDEC_BATCH):
        for k, frame in enumerate(batch):
            get_pts = getattr(frame, "getPTS", None)
            tensor = torch.from_dlpack(frame)
            tensor = tensor[..., 0] if tensor.ndim == 3 else tensor
            yield (get_pts() if get_pts else None), (tensor.clone() if k == len(batch) - 1 else tensor)


class DeviceVideo:
    """A clip whose samples come out as RGB frames on a torch device: decoded by NVDEC where it
    can be (`info.decoder` "gpu"), else by PyAV and uploaded (`fallback` says why)."""

    def __init__(self, path, device, *, decoder: str = "gpu", frames_fps: float = 25.0, open_decoder=_open_nvdec):
        self.path = Path(path)
        self.device = torch.device(device)
        self._cpu: VideoSource = open_video(self.path, frames_fps=frames_fps)  # the index, times and refusals
        self.info: VideoInfo = self._cpu.info
        self.fallback: str | None = None
        self._nvdec = self._probe = None
        if decoder != "gpu":
            self.fallback = f"--decoder {decoder}"
        elif self.path.is_dir():
            self.fallback = "a folder of frames"
        else:
            self._open(open_decoder)

    def _open(self, open_decoder) -> None:
        found = probe(self.path)
        self.fallback = nvdec_problem(found)
        if self.fallback is None:
            try:
                self._nvdec = open_decoder(self.path, self.device)
            except Exception as error:  # an NVDEC that cannot take this clip: PyAV can
                self.fallback = f"NVDEC did not open it ({first_line(error)})"
        if self.fallback is None:
            self._probe = found
            self.info = replace(self.info, decoder="gpu")
        else:
            log.debug("%s: decoded by PyAV: %s", self.path, self.fallback)

    @property
    def starts(self) -> np.ndarray:
        """Each frame's start (s), decode's rule (`VideoSource.starts`)."""
        return self._cpu.starts

    def sample(self, fps: float, batch: int = SAMPLE_BATCH) -> Iterator[DeviceBatch]:
        """The frames on screen at t = k / fps, k = 0, 1, ... (decode's `sample_sources`), `batch` at a time."""
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"sampling rate must be a positive number, got {fps}")
        if self._nvdec is None:
            return self._uploaded(fps, batch)
        return self._on_device(fps, batch)

    def _uploaded(self, fps: float, batch: int) -> Iterator[DeviceBatch]:
        frames = []
        for frame in self._cpu.sample(fps):
            frames.append(frame)
            if len(frames) == batch:
                yield self._upload(frames)
                frames = []
        if frames:
            yield self._upload(frames)

    def _upload(self, frames) -> DeviceBatch:
        images = torch.from_numpy(np.stack([f.image for f in frames])).to(self.device)
        return DeviceBatch([f.index for f in frames], [f.time for f in frames], [f.source for f in frames], images)

    def _on_device(self, fps: float, batch: int) -> Iterator[DeviceBatch]:
        sources = sample_sources(self._cpu.starts, self.info.duration, fps).tolist()
        picked = shown(numbered(_decoded(self._nvdec), self._cpu.pts), sources, self.path)
        pending: list[tuple[int, int, torch.Tensor]] = []  # (sample, source, NV12)
        for k, (source, nv12) in enumerate(picked):
            pending.append((k, source, nv12 if not pending or pending[-1][1] != source else pending[-1][2]))
            if len(pending) == batch:
                yield self._convert(pending, fps)
                pending = []
        if pending:
            yield self._convert(pending, fps)

    def _convert(self, pending, fps: float) -> DeviceBatch:
        p = self._probe
        # each distinct frame once, then shared by the samples that show it
        distinct, rows = {}, []
        for _, source, nv12 in pending:
            rows.append(distinct.setdefault(source, (len(distinct), nv12))[0])
        stack = torch.stack([nv12 for _, nv12 in distinct.values()])
        rgb = nv12_to_rgb(stack, p.height, p.width, p.colorspace, p.full_range)
        if p.turns:
            rgb = torch.rot90(rgb, p.turns, dims=(1, 2))  # np.rot90's direction, as decode turns PyAV's frames
        images = rgb[torch.tensor(rows, device=rgb.device)]
        return DeviceBatch(
            [k for k, _, _ in pending], [k / fps for k, _, _ in pending], [s for _, s, _ in pending], images
        )

    def close(self) -> None:
        """Release both decoders."""
        self._cpu.close()
        self._nvdec = None

    def __enter__(self) -> DeviceVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
