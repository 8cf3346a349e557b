"""dlib's 5-point face landmarks (eye corners, base of the nose), in numpy from dlib's own file.

The predictor is a cascade of regression-tree forests (Kazemi and Sullivan, "One millisecond face
alignment with an ensemble of regression trees", 2014), as dlib's `shape_predictor` runs it: the
shape starts as the mean face placed in the face's box; each cascade reads the grey level of a
fixed set of pixels, each placed relative to one landmark of the current shape (through the
similarity that takes the mean shape onto the current one), and each tree of the cascade walks
down by comparing two of those pixels against a threshold and adds its leaf's shift to the shape.
The weights are `shape_predictor_5_face_landmarks.dat` (CC0; the registry's `dlib-landmarks5`),
read by `read_shape_predictor` in dlib's serialization format (`core.dlibfile`).

The box is dlib's face detector's (its HOG detector's convention); `box_from_blazeface` maps a
BlazeFace box onto it (`media.align` does, measured in `bench/identity.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.dlibfile import int_stream
from ..core.errors import WeightsError

MAX_ITEMS = 1 << 20  # no vector in a landmark file is longer (cascades, trees, leaves, pixels)
FLOAT_SPECIAL_EXPONENT = 32000  # dlib's exponents from here on mark inf, -inf and NaN
WHAT = "a dlib shape predictor"


@dataclass(frozen=True)
class _Cascade:
    idx1: np.ndarray  # (trees, splits) pixel indices
    idx2: np.ndarray
    thresh: np.ndarray  # (trees, splits) grey-level differences
    leaves: np.ndarray  # (trees, leaves, points * 2) shifts of the normalised shape
    anchors: np.ndarray  # (pixels,) the landmark each pixel is placed from
    deltas: np.ndarray  # (pixels, 2) its offset from that landmark in the mean shape


@dataclass(frozen=True)
class ShapePredictor:
    """dlib's shape predictor: `predictor(grey, box)` -> (points, 2) landmark pixels."""

    mean: np.ndarray  # (points, 2) the mean shape on the box's unit square
    cascades: tuple[_Cascade, ...]

    def __call__(self, grey: np.ndarray, box) -> np.ndarray:
        """Landmarks (whole pixels, as dlib gives them) of the face in `box` (left, top, right,
        bottom: dlib's inclusive whole-pixel rectangle) of a 2-d uint8 grey image."""
        left, top, right, bottom = box
        origin, size = np.array([left, top], np.float64), np.array([right - left, bottom - top], np.float64)
        shape = self.mean.astype(np.float32).copy()
        h, w = grey.shape
        for c in self.cascades:
            linear = _similarity_linear(self.mean, shape)
            at = (c.deltas @ linear.T.astype(np.float32) + shape[c.anchors]).astype(np.float64) * size + origin
            px = np.floor(at + 0.5).astype(np.intp)
            inside = (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < w) & (px[:, 1] < h)
            values = np.zeros(len(px), np.float32)
            values[inside] = grey[px[inside, 1], px[inside, 0]]
            shape = _walk(c, values, shape.ravel()).reshape(-1, 2)
        return np.floor(shape * size + origin + 0.5)


def to_arrays(predictor: ShapePredictor) -> dict[str, np.ndarray]:
    """The predictor as named arrays (for `np.savez`); `from_arrays` rebuilds it."""
    out = {"mean": predictor.mean}
    for i, c in enumerate(predictor.cascades):
        out |= {f"{name}{i}": getattr(c, name) for name in _Cascade.__dataclass_fields__}
    return out


def from_arrays(arrays) -> ShapePredictor:
    n = sum(1 for k in arrays if k.startswith("idx1"))
    fields = _Cascade.__dataclass_fields__
    return ShapePredictor(
        np.asarray(arrays["mean"]),
        tuple(_Cascade(**{f: np.asarray(arrays[f"{f}{i}"]) for f in fields}) for i in range(n)),
    )


def _walk(c: _Cascade, values: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """`shape` plus the cascade's trees' leaves for these pixel values, added one by one in
    float32 as dlib adds them (a sum in another order moves a landmark across a pixel edge)."""
    trees, splits = c.idx1.shape
    node = np.zeros(trees, np.intp)
    rows = np.arange(trees)
    while True:
        inner = node < splits
        if not inner.any():
            break
        n = np.minimum(node, splits - 1)
        left = values[c.idx1[rows, n]] - values[c.idx2[rows, n]] > c.thresh[rows, n]
        node = np.where(inner, np.where(left, 2 * node + 1, 2 * node + 2), node)
    return np.cumsum(np.vstack([shape[None], c.leaves[rows, node - splits]]), axis=0, dtype=np.float32)[-1]


def _similarity_linear(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 2 part (rotation and scale) of the least-squares similarity from src to dst."""
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    s, d = src - src.mean(0), dst - dst.mean(0)
    u, sv, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    scale = np.trace(np.diag(sv) @ flip) / max(float((s**2).sum() / len(src)), 1e-12)
    return scale * (u @ flip @ vt)


def read_shape_predictor(path: str | Path) -> ShapePredictor:
    """A dlib shape predictor file -> ShapePredictor; WeightsError naming the file where it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror or e})") from None
    r = _Ints(int_stream(data, path, WHAT), path)
    if r.int() != 1:
        r.fail("its version")
    mean = r.matrix().reshape(-1, 2)
    cascades = [_trees(r, len(mean)) for _ in range(r.count())]
    anchors = [r.ints(r.count()) for _ in range(r.count())]
    deltas = [r.floats(2 * r.count()).reshape(-1, 2) for _ in range(r.count())]
    if r.pos != len(r.values):
        r.fail("values after the end")
    if not (len(cascades) == len(anchors) == len(deltas)) or any(
        a.size and (a.min() < 0 or a.max() >= len(mean)) for a in anchors
    ):
        r.fail("cascades that do not agree")
    return ShapePredictor(mean, tuple(_cascade(r, *c, a, d) for c, a, d in zip(cascades, anchors, deltas)))


class _Ints:
    """A cursor over the file's integers (`core.dlibfile.int_stream`): a float is two of them."""

    def __init__(self, values: np.ndarray, path: Path):
        self.values, self.pos, self.path = values, 0, path

    def fail(self, problem: str):
        raise WeightsError(f"{self.path}: not {WHAT} ({problem} at value {self.pos})")

    def ints(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.values):
            self.fail("the file ends early")
        out = self.values[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return int(self.ints(1)[0])

    def count(self) -> int:
        n = abs(self.int())
        if n > MAX_ITEMS:
            self.fail(f"a length of {n}")
        return n

    def floats(self, n: int) -> np.ndarray:
        return _floats(self, self.ints(2 * n).reshape(n, 2))

    def matrix(self) -> np.ndarray:
        rows, cols = self.count(), self.count()
        return self.floats(rows * cols).reshape(rows, cols)


def _trees(r: _Ints, points: int) -> tuple[np.ndarray, np.ndarray]:
    """One cascade's forest, read at once: every tree is a vector of splits (idx1, idx2, threshold)
    and a vector of leaves (a column of 2 x points floats each), all trees of one depth.
    Returns (splits (trees, n, 3), leaves (trees, n + 1, 2 x points))."""
    trees = r.count()
    if trees == 0:
        r.fail("an empty forest")
    n = abs(int(r.values[r.pos])) if r.pos < len(r.values) else 0
    leaf = 2 + 2 * (2 * points)  # its rows, its columns, then a mantissa and exponent per value
    block = r.ints(trees * (2 + 4 * n + (n + 1) * leaf)).reshape(trees, -1)
    heads = np.abs(block[:, [0, 1 + 4 * n]])
    if (heads != (n, n + 1)).any():
        r.fail("trees of unequal depth")
    raw = block[:, 1 : 1 + 4 * n].reshape(trees, n, 4)  # idx1, idx2, the threshold's mantissa and exponent
    leaves = block[:, 2 + 4 * n :].reshape(trees, n + 1, leaf)
    if (np.abs(leaves[..., :2]) != (2 * points, 1)).any():
        r.fail("leaves of another shape")
    thresh = _floats(r, raw[..., 2:].reshape(-1, 2)).reshape(trees, n)
    values = _floats(r, leaves[..., 2:].reshape(-1, 2)).reshape(trees, n + 1, 2 * points)
    return np.concatenate([raw[..., :2].astype(np.float64), thresh[..., None].astype(np.float64)], axis=-1), values


def _floats(r: _Ints, pairs: np.ndarray) -> np.ndarray:
    if (np.abs(pairs[:, 1]) >= FLOAT_SPECIAL_EXPONENT).any():
        r.fail("an infinite or undefined number")
    return np.ldexp(pairs[:, 0].astype(np.float64), pairs[:, 1]).astype(np.float32)


def _cascade(r: _Ints, split: np.ndarray, leaves: np.ndarray, anchors: np.ndarray, deltas: np.ndarray) -> _Cascade:
    idx1, idx2 = split[..., 0].astype(np.intp), split[..., 1].astype(np.intp)
    if idx1.size and (min(idx1.min(), idx2.min()) < 0 or max(idx1.max(), idx2.max()) >= len(anchors)):
        r.fail("a split on a pixel the cascade does not read")
    return _Cascade(idx1, idx2, split[..., 2].astype(np.float32), leaves, anchors.astype(np.intp), deltas)
