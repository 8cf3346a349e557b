"""A sample's pixel work on frames already on a torch device (a GPU's, or the CPU's): face crops
and colour histograms, each equal to the CPU path's, so that no frame has to cross to the host.

- `crop_batch` is `faces.crop`: the region `faces.crop_region` names, black outside the frame,
  resized by PIL's bilinear filter. PIL resizes in two passes (columns, then rows), each with
  coefficients in 22-bit fixed point and the result rounded to uint8; done here with the same
  coefficients in integer arithmetic, the crops are PIL's bit for bit. Every crop of a batch has
  its own size and scale; the taps are padded to the batch's widest with zero weights.
- `colour_histograms` is `people.colour_histogram` for a batch of frames, `region_histograms` the
  same of face regions (`people.face_pixels`) at every pixel.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .people import HIST_BINS, HIST_STEP, LBP_GRID, LBP_NEIGHBOURS, LBP_SIDE

# PIL's fixed point for 8-bit resampling (Resample.c: 32 bits less 8 for the value and 2 of headroom).
PRECISION_BITS = 22


def crop_batch(frames: torch.Tensor, frame_index, regions, size: int) -> torch.Tensor:
    """(M, size, size, C) uint8 crops: crop m is `regions[m]` (x0, y0, x1, y1 whole pixels, from
    `faces.crop_region`) of `frames[frame_index[m]]`, resized as `faces.crop` resizes it. The
    regions' sizes are read on the host, so cutting them never waits for the device."""
    device = frames.device
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    index = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    out = torch.zeros((len(regions), size, size, frames.shape[-1]), dtype=torch.uint8, device=device)
    widths, heights = regions[:, 2] - regions[:, 0], regions[:, 3] - regions[:, 1]
    rows_first = _rows_first(widths, heights, size)
    for first in (True, False):
        g = np.flatnonzero(rows_first == first)
        if len(g):
            out[torch.as_tensor(g, device=device)] = _crop_group(frames, index[g], regions[g], size, first)
    return out


def _rows_first(width: np.ndarray, height: np.ndarray, size: int) -> np.ndarray:
    """Which crops PIL resizes rows first: Pillow 13 does when the height shrinks by more than
    twice what the width does (Resample.c, to make the second pass cheaper); earlier Pillows never."""
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:
        return np.zeros(len(width), dtype=bool)
    return (height - size > 0) & (height - size > (width - size) * 2)


def _crop_group(frames, index: np.ndarray, regions: np.ndarray, size: int, rows_first: bool):
    """Crops that PIL resizes in the same order: the first pass reads the frames (black outside
    them), the second the first's uint8 result."""
    x0, y0, x1, y1 = regions.T
    xs, ys = _Span(x0, x1 - x0, frames.device), _Span(y0, y1 - y0, frames.device)
    index = torch.as_tensor(index, device=frames.device)
    if rows_first:
        first = _frame_pass(frames, index, ys, xs, size, along_rows=True)  # (M, size, W, C)
        return _tensor_pass(first, xs, size, dim=2)
    first = _frame_pass(frames, index, xs, ys, size, along_rows=False)  # (M, H, size, C)
    return _tensor_pass(first, ys, size, dim=1)


class _Span:
    """The crops' extent along one axis: starts and lengths on the device, the longest and the
    resampling taps it needs known on the host."""

    def __init__(self, start: np.ndarray, length: np.ndarray, device):
        self.start = torch.as_tensor(start, device=device)
        self.length = torch.as_tensor(length, device=device)
        self.longest = int(length.max())
        self.lengths = length

    def coefficients(self, size: int):
        return resize_coefficients(self.length, size, tap_count(self.lengths, size))


def tap_count(lengths: np.ndarray, out_size: int) -> int:
    """Taps per output pixel of PIL's bilinear resampling from the longest of `lengths` to `out_size`."""
    return math.ceil(max(float(np.max(lengths)) / out_size, 1.0)) * 2 + 1


def _frame_pass(frames, index, span: _Span, other: _Span, size: int, along_rows: bool):
    """One resampling pass over the frames: along rows (rows resized, every column of the region
    kept) or along columns; pixels outside the frame count as black."""
    _, frame_h, frame_w, _ = frames.shape
    limit, other_limit = (frame_h, frame_w) if along_rows else (frame_w, frame_h)
    first, weights = span.coefficients(size)  # (M, size), (M, size, taps)
    kept = other.start[:, None] + torch.arange(other.longest, device=frames.device)  # (M, O)
    kept_inside = (kept >= 0) & (kept < other_limit)
    kept = kept.clamp(0, other_limit - 1)
    total = None
    for tap in range(weights.shape[-1]):
        at = span.start[:, None] + first + tap  # (M, size) frame rows or columns
        weight = weights[..., tap] * ((at >= 0) & (at < limit))  # black outside the frame
        at = at.clamp(0, limit - 1)
        if along_rows:
            term = frames[index[:, None, None], at[:, :, None], kept[:, None, :]].int() * weight[:, :, None, None]
        else:
            term = frames[index[:, None, None], kept[:, :, None], at[:, None, :]].int() * weight[:, None, :, None]
        total = term if total is None else total + term
    out = _to_uint8(total)
    mask = kept_inside[:, None, :, None] if along_rows else kept_inside[:, :, None, None]
    return out * mask  # a row or column outside the frame is black after the pass too


def _tensor_pass(first: torch.Tensor, span: _Span, size: int, dim: int) -> torch.Tensor:
    """The second pass, along `dim` of the first's (M, A, B, C) result, over `span.length` pixels of each."""
    start, weights = span.coefficients(size)
    crops = torch.arange(len(first), device=first.device)[:, None]
    last = first.shape[dim] - 1
    total = None
    for tap in range(weights.shape[-1]):
        at = (start + tap).clamp(max=last)  # a tap past the region weighs 0
        if dim == 1:
            term = first[crops, at].int() * weights[:, :, tap, None, None]
        else:
            term = first[crops, :, at].permute(0, 2, 1, 3).int() * weights[:, None, :, tap, None]
        total = term if total is None else total + term
    return _to_uint8(total)


def _to_uint8(total):
    # PIL's rounding: half a unit added before the shift (every sum starts from it)
    return ((total + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255).to(torch.uint8)


def resize_coefficients(in_size: torch.Tensor, out_size: int, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear resampling of (M,) source lengths to `out_size`: each output's first source
    pixel (M, out) and its `taps` weights (M, out, taps) in PIL's fixed point (zero past its last;
    `taps` from `tap_count` of the same lengths)."""
    in_size = in_size.double()
    scale = in_size / out_size  # (M,)
    filterscale = scale.clamp_min(1.0)
    support = filterscale  # the bilinear filter's support is 1, stretched when shrinking
    centre = (torch.arange(out_size, device=in_size.device, dtype=torch.float64)[None] + 0.5) * scale[:, None]
    first = torch.trunc(centre - support[:, None] + 0.5).clamp_min(0)  # C's (int) truncates
    last = torch.minimum(torch.trunc(centre + support[:, None] + 0.5), in_size[:, None])
    count = last - first
    weights = []
    for tap in range(taps):
        x = ((tap + first) - centre + 0.5) * (1.0 / filterscale)[:, None]
        w = (1.0 - x.abs()).clamp_min(0.0)
        weights.append(torch.where(tap < count, w, 0.0))
    total = torch.zeros_like(centre)
    for w in weights:  # summed in PIL's order, so the normalised weights round as PIL's do
        total = total + w
    fixed = [torch.trunc(0.5 + torch.where(total != 0, w / total, w) * (1 << PRECISION_BITS)) for w in weights]
    return first.long(), torch.stack(fixed, -1).int()


def colour_histograms(frames: torch.Tensor, step: int = HIST_STEP) -> torch.Tensor:
    """`people.colour_histogram` of each of (N, H, W, 3) uint8 frames: (N, 3 * HIST_BINS) float64."""
    small = frames[:, ::step, ::step].reshape(frames.shape[0], -1, 3)
    return _histograms(small, torch.ones(small.shape[:2], dtype=torch.float64, device=frames.device))


def region_histograms(frames: torch.Tensor, frame_index, regions) -> torch.Tensor:
    """`people.colour_histogram(region, step=1)` of each region (x0, y0, x1, y1 whole pixels inside
    its frame, `people.face_pixels`) of `frames[frame_index[m]]`: (M, 3 * HIST_BINS) float64."""
    pixels, inside = region_pixels(frames, frame_index, regions)
    return _histograms(pixels.flatten(1, 2), inside.flatten(1).double())


def appearances(frames: torch.Tensor, frame_index, regions) -> torch.Tensor:
    """`people.appearance` of each face region (`people.face_pixels`) of `frames[frame_index[m]]`:
    (M, LBP_GRID**2 * 256) float64, unit length."""
    return _appearances(region_pixels(frames, frame_index, regions)[0], regions)


def describe_regions(frames: torch.Tensor, frame_index, regions) -> tuple[torch.Tensor, torch.Tensor]:
    """`region_histograms` and `appearances` of the same regions, their pixels gathered once."""
    pixels, inside = region_pixels(frames, frame_index, regions)
    colours = _histograms(pixels.flatten(1, 2), inside.flatten(1).double())
    return colours, _appearances(pixels, regions)


def region_pixels(frames: torch.Tensor, frame_index, regions) -> tuple[torch.Tensor, torch.Tensor]:
    """Each region's pixels from its top left corner, padded to the largest region: (M, H, W, 3)
    uint8, and which of them lie inside the region (M, H, W); the sizes read on the host."""
    device = frames.device
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    index = torch.as_tensor(np.asarray(frame_index, dtype=np.int64).reshape(-1), device=device)
    if len(regions) == 0:
        return frames.new_zeros((0, 1, 1, 3)), torch.zeros((0, 1, 1), dtype=torch.bool, device=device)
    rows = torch.arange(int((regions[:, 3] - regions[:, 1]).max()), device=device)
    cols = torch.arange(int((regions[:, 2] - regions[:, 0]).max()), device=device)
    x0, y0, x1, y1 = torch.as_tensor(regions, device=device).unbind(1)
    y, x = y0[:, None] + rows, x0[:, None] + cols
    inside = (y < y1[:, None])[:, :, None] & (x < x1[:, None])[:, None, :]
    h, w = frames.shape[1:3]
    return frames[index[:, None, None], y.clamp(max=h - 1)[:, :, None], x.clamp(max=w - 1)[:, None, :]], inside


def _appearances(pixels: torch.Tensor, regions) -> torch.Tensor:
    """`people.appearance` of each region's pixels (from `region_pixels`): grey as PIL's convert("L"),
    resized as PIL's bilinear resize, LBP codes over a grid, Hellinger-normalised."""
    m = len(pixels)
    if m == 0:
        return torch.zeros((0, LBP_GRID**2 * 256), dtype=torch.float64, device=pixels.device)
    rgb = pixels.int()
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16  # PIL's ITU-R 601-2 luma
    sizes = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    whole = np.zeros_like(sizes)
    whole[:, 2], whole[:, 3] = sizes[:, 2] - sizes[:, 0], sizes[:, 3] - sizes[:, 1]
    side = LBP_SIDE + 2
    gray = crop_batch(grey.to(torch.uint8)[..., None], np.arange(m), whole, side)[..., 0].short()
    centre = gray[:, 1:-1, 1:-1]
    codes = torch.zeros_like(centre, dtype=torch.long)
    for bit, (dy, dx) in enumerate(LBP_NEIGHBOURS):
        codes |= (gray[:, dy : dy + LBP_SIDE, dx : dx + LBP_SIDE] >= centre).long() << bit
    cell = LBP_SIDE // LBP_GRID
    cells = codes.reshape(m, LBP_GRID, cell, LBP_GRID, cell).permute(0, 1, 3, 2, 4).reshape(m, LBP_GRID**2, -1)
    slots = cells + torch.arange(LBP_GRID**2, device=pixels.device)[:, None] * 256
    hist = torch.zeros((m, LBP_GRID**2 * 256), dtype=torch.float64, device=pixels.device)
    hist.scatter_add_(
        1, slots.reshape(m, -1), torch.ones(slots.shape, dtype=torch.float64, device=pixels.device).reshape(m, -1)
    )
    desc = hist.sqrt()  # Hellinger: cosine of square roots compares histograms
    return desc / desc.norm(dim=1, keepdim=True)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Tensors of one device and dtype as numpy arrays, in one transfer (one wait for a GPU, not one each)."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu().numpy()
    ends = np.cumsum([t.numel() for t in tensors])
    return [part.reshape(tuple(t.shape)) for t, part in zip(tensors, np.split(flat, ends[:-1]))]


def _histograms(pixels: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """(M, P, 3) uint8 pixels, each counted with weight `counted` (M, P) -> per-channel bins, summing to 1."""
    bins = (pixels // (256 // HIST_BINS)).long() + torch.arange(3, device=pixels.device) * HIST_BINS
    hist = torch.zeros((pixels.shape[0], 3 * HIST_BINS), dtype=torch.float64, device=pixels.device)
    hist.scatter_add_(1, bins.flatten(1), counted[:, :, None].expand(-1, -1, 3).flatten(1))
    return hist / hist.sum(1, keepdim=True).clamp_min(1.0)
