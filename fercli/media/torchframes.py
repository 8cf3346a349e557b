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

import numpy as np
import torch

from .people import HIST_BINS, HIST_STEP

# PIL's fixed point for 8-bit resampling (Resample.c: 32 bits less 8 for the value and 2 of headroom).
PRECISION_BITS = 22


def crop_batch(frames: torch.Tensor, frame_index, regions, size: int) -> torch.Tensor:
    """(M, size, size, 3) uint8 crops: crop m is `regions[m]` (x0, y0, x1, y1 whole pixels, from
    `faces.crop_region`) of `frames[frame_index[m]]`, resized as `faces.crop` resizes it."""
    device = frames.device
    regions = torch.as_tensor(np.asarray(regions, dtype=np.int64).reshape(-1, 4), device=device)
    index = torch.as_tensor(np.asarray(frame_index, dtype=np.int64).reshape(-1), device=device)
    out = torch.zeros((len(regions), size, size, 3), dtype=torch.uint8, device=device)
    if len(regions) == 0:
        return out
    x0, y0, x1, y1 = regions.unbind(1)
    rows_first = _rows_first(x1 - x0, y1 - y0, size)
    for group in (rows_first, ~rows_first):
        if bool(group.any()):
            g = group.nonzero().squeeze(1)
            out[g] = _crop_group(
                frames, index[g], x0[g], x1[g] - x0[g], y0[g], y1[g] - y0[g], size, bool(rows_first[g[0]])
            )
    return out


def _rows_first(width: torch.Tensor, height: torch.Tensor, size: int) -> torch.Tensor:
    """Which crops PIL resizes rows first: Pillow 13 does when the height shrinks by more than
    twice what the width does (Resample.c, to make the second pass cheaper); earlier Pillows never."""
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:
        return torch.zeros_like(width, dtype=torch.bool)
    return (height - size > 0) & (height - size > (width - size) * 2)


def _crop_group(frames, index, x0, width, y0, height, size: int, rows_first: bool):
    """Crops that PIL resizes in the same order: the first pass reads the frames (black outside
    them), the second the first's uint8 result."""
    if rows_first:
        first = _frame_pass(frames, index, y0, height, x0, width, size, along_rows=True)  # (M, size, W, 3)
        return _tensor_pass(first, width, size, dim=2)
    first = _frame_pass(frames, index, x0, width, y0, height, size, along_rows=False)  # (M, H, size, 3)
    return _tensor_pass(first, height, size, dim=1)


def _frame_pass(frames, index, start, length, other_start, other_length, size: int, along_rows: bool):
    """One resampling pass over the frames: along rows (rows resized, every column of the region
    kept) or along columns; pixels outside the frame count as black."""
    _, frame_h, frame_w, _ = frames.shape
    limit, other_limit = (frame_h, frame_w) if along_rows else (frame_w, frame_h)
    first, weights = resize_coefficients(length, size)  # (M, size), (M, size, taps)
    other = other_start[:, None] + torch.arange(int(other_length.max()), device=frames.device)  # (M, O)
    other_inside = (other >= 0) & (other < other_limit)
    other = other.clamp(0, other_limit - 1)
    total = None
    for tap in range(weights.shape[-1]):
        at = start[:, None] + first + tap  # (M, size) frame rows or columns
        weight = weights[..., tap] * ((at >= 0) & (at < limit))  # black outside the frame
        at = at.clamp(0, limit - 1)
        if along_rows:
            term = frames[index[:, None, None], at[:, :, None], other[:, None, :]].int() * weight[:, :, None, None]
        else:
            term = frames[index[:, None, None], other[:, :, None], at[:, None, :]].int() * weight[:, None, :, None]
        total = term if total is None else total + term
    out = _to_uint8(total)
    mask = other_inside[:, None, :, None] if along_rows else other_inside[:, :, None, None]
    return out * mask  # a row or column outside the frame is black after the pass too


def _tensor_pass(first: torch.Tensor, length: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """The second pass, along `dim` of the first's (M, A, B, 3) result, over `length` pixels of each."""
    start, weights = resize_coefficients(length, size)
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


def resize_coefficients(in_size: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear resampling of (M,) source lengths to `out_size`: each output's first source
    pixel (M, out) and its taps' weights (M, out, taps) in PIL's fixed point (zero past its last)."""
    in_size = in_size.double()
    scale = in_size / out_size  # (M,)
    filterscale = scale.clamp_min(1.0)
    support = filterscale  # the bilinear filter's support is 1, stretched when shrinking
    taps = int(torch.ceil(support).max()) * 2 + 1
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
    device = frames.device
    regions = torch.as_tensor(np.asarray(regions, dtype=np.int64).reshape(-1, 4), device=device)
    index = torch.as_tensor(np.asarray(frame_index, dtype=np.int64).reshape(-1), device=device)
    if len(regions) == 0:
        return torch.zeros((0, 3 * HIST_BINS), dtype=torch.float64, device=device)
    x0, y0, x1, y1 = regions.unbind(1)
    rows = torch.arange(int((y1 - y0).max()), device=device)
    cols = torch.arange(int((x1 - x0).max()), device=device)
    y, x = y0[:, None] + rows, x0[:, None] + cols
    inside = ((y < y1[:, None])[:, :, None] & (x < x1[:, None])[:, None, :]).reshape(len(index), -1)
    h, w = frames.shape[1:3]
    pixels = frames[index[:, None, None], y.clamp(max=h - 1)[:, :, None], x.clamp(max=w - 1)[:, None, :]]
    return _histograms(pixels.reshape(len(index), -1, 3), inside.double())


def _histograms(pixels: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """(M, P, 3) uint8 pixels, each counted with weight `counted` (M, P) -> per-channel bins, summing to 1."""
    bins = (pixels // (256 // HIST_BINS)).long() + torch.arange(3, device=pixels.device) * HIST_BINS
    hist = torch.zeros((pixels.shape[0], 3 * HIST_BINS), dtype=torch.float64, device=pixels.device)
    hist.scatter_add_(1, bins.reshape(len(bins), -1), counted[:, :, None].expand(-1, -1, 3).reshape(len(bins), -1))
    return hist / hist.sum(1, keepdim=True).clamp_min(1.0)
