"""Faces aligned for dlib's face-recognition network: the 150 x 150 chip its 5-point landmarks cut.

dlib's network (`nets.faceid`) was trained on chips cut by its 5-point landmarks (eye corners,
base of the nose): the least-squares similarity transform (rotation, one scale, shift) that puts
them on fixed places (`FIVE_POINTS`) of a 150 x 150 chip, a quarter of the face's size as padding
on each side. fer finds the same landmarks with dlib's own predictor (`landmarks`), started from
BlazeFace's box turned into the box dlib's detector would draw, on the face stood upright by
BlazeFace's eyes where it is rolled 15 degrees or more.

BlazeFace's own key points are too coarse to cut the chip themselves: on 118 real faces both
detectors find, their eyes sit 0.13 of the eye distance (sd) from dlib's, and chips cut from them
lie a median 0.24 (embedding distance) from dlib's own chips, against 0.089 through the predictor;
dlib's own chips move 0.078 when its detector's box moves 3% (`bench/identity.py alignment`).

The chip is sampled bilinearly with pixel centres on whole coordinates and truncated to bytes,
as dlib does (the same landmarks give dlib's chip to the pixel); a face more than twice the
chip's size is first halved (2 x 2 means) until it is not, as dlib's image pyramid does, so
large faces are not aliased. Outside the frame is black.
"""

from __future__ import annotations

import math

import numpy as np

CHIP_SIDE = 150  # px; dlib's chip
CHIP_PADDING = 0.25  # of the face's size on each side; dlib's default for its descriptor
# dlib's 5-point template (its get_face_chip_details): the outer and inner corner of the person's
# left eye, then of the right eye, then the base of the nose, on the face's unpadded unit square
# (chip px = (p + padding) / (1 + 2 padding) * side).
FIVE_POINTS = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
# dlib's detector box from BlazeFace's (upright) box of width w: side DLIB_BOX_SIDE * w, centre
# moved by DLIB_BOX_SHIFT * w. Medians over 118 faces both detectors found (bench/identity.py).
DLIB_BOX_SIDE = 0.9415
DLIB_BOX_SHIFT = (-0.0239, -0.0014)
# A face rolled less is left as it is: the predictor copes, and turning it costs a resampling
# (tests/test_align.py holds faces rolled 25 and 45 degrees to dlib's chip of the upright one).
UPRIGHT_FROM_DEG = 15.0
UPRIGHT_MARGIN = 1.0  # box sides of context around the face when it is stood upright
MAX_HALVINGS = 8  # a face up to 256 times the chip's side
RIGHT_EYE, LEFT_EYE = 0, 1  # in BlazeFace's key points (blazeface.KEYPOINTS)


def chip(
    image: np.ndarray, box, keypoints, predictor, side: int = CHIP_SIDE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """The aligned side x side RGB uint8 chip of the face BlazeFace found at `box` (x0, y0, x1,
    y1 px) with `keypoints` (6 x, y px, `blazeface.KEYPOINTS` order); `predictor` is
    `landmarks.ShapePredictor` of dlib's 5-point file."""
    return cut(image, five_points(image, box, keypoints, predictor), side, padding)


def cut(image: np.ndarray, points: np.ndarray, side: int = CHIP_SIDE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The chip dlib cuts for its 5 landmarks `points` (5, 2) px."""
    return warp(image, as_cut(similarity(template_points(side, padding), points), side), side)


def five_points(image: np.ndarray, box, keypoints, predictor) -> np.ndarray:
    """dlib's 5 landmarks (5, 2) px of the face in `box`, found on the face stood upright."""
    x0, y0, x1, y1 = box
    width = x1 - x0
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    eyes = np.asarray(keypoints, np.float64)[[RIGHT_EYE, LEFT_EYE]]
    angle = math.atan2(*(eyes[1] - eyes[0])[::-1])
    side = max(2, math.ceil(max(width, y1 - y0) * (1 + 2 * UPRIGHT_MARGIN)))
    # canvas pixel (u, v) -> image: turned by the eyes' angle about the box's centre, shifted by
    # whole pixels, so an upright face's canvas is the frame's own pixels, cut out unresampled
    rot = np.eye(2)
    if abs(math.degrees(angle)) >= UPRIGHT_FROM_DEG:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    to_image = np.hstack([rot, np.round(centre - rot @ np.full(2, (side - 1) / 2))[:, None]])
    canvas = _grey_cut(image, to_image, side) if rot[0, 1] == 0 else warp(image, to_image, side, grey=True)
    c = np.full(2, (side - 1) / 2) + np.asarray(DLIB_BOX_SHIFT) * width
    half = DLIB_BOX_SIDE * width / 2
    rect = tuple(int(round(v)) for v in (c[0] - half, c[1] - half, c[0] + half, c[1] + half))
    points = predictor(canvas, rect)
    return points @ to_image[:, :2].T + to_image[:, 2]


def _grey_cut(image: np.ndarray, to_image: np.ndarray, side: int) -> np.ndarray:
    """The side x side canvas at whole-pixel offset to_image[:, 2], grey, black outside the frame."""
    x, y = int(to_image[0, 2]), int(to_image[1, 2])
    h, w = image.shape[:2]
    canvas = np.zeros((side, side), np.uint8)
    sx0, sy0, sx1, sy1 = max(x, 0), max(y, 0), min(x + side, w), min(y + side, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = image[sy0:sy1, sx0:sx1].astype(np.uint16).sum(axis=2) // 3
    return canvas


def template_points(
    side: int = CHIP_SIDE, padding: float = CHIP_PADDING, template: np.ndarray = FIVE_POINTS
) -> np.ndarray:
    """The template's points in chip pixels."""
    return (np.asarray(template, np.float64) + padding) / (1 + 2 * padding) * side


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, one scale, shift; no mirror) that maps points
    `src` (N, 2) onto `dst` (N, 2) with the least squared error (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ flip @ vt
    scale = np.trace(np.diag(sv) @ flip) / max(float((s**2).sum() / len(src)), 1e-12)
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def as_cut(to_image: np.ndarray, side: int) -> np.ndarray:
    """The chip-to-image map dlib's chip extraction applies for the similarity `to_image`: the
    chip's centre pixel (side - 1) / 2 goes where `to_image` puts side / 2, and the chip's first
    and last pixels span side * scale - 1 image pixels (dlib's `chip_details`, `centered_drect`)."""
    to_image = np.asarray(to_image, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(to_image[:, :2]))))
    linear = to_image[:, :2] * (side * scale - 1) / ((side - 1) * scale)
    centre = to_image @ np.array([side / 2, side / 2, 1.0])
    return np.hstack([linear, (centre - linear @ np.full(2, (side - 1) / 2))[:, None]])


def warp(image: np.ndarray, to_image: np.ndarray, side: int, grey: bool = False) -> np.ndarray:
    """A side x side RGB uint8 chip whose pixel (x, y) samples `image` at to_image @ (x, y, 1);
    `grey`: the grey levels dlib's landmarks read instead, (r + g + b) // 3 of each pixel."""
    to_image = np.asarray(to_image, np.float64)
    region, to_image = _region(image, to_image, side)
    scale = float(np.sqrt(abs(np.linalg.det(to_image[:, :2]))))
    for _ in range(MAX_HALVINGS):
        if scale <= 2 or min(region.shape[:2]) < 2:
            break
        region = _halved(region)
        to_image = np.vstack([to_image[0], to_image[1]]) / 2
        to_image[:, 2] -= 0.25  # pixel i of the half image is the mean of pixels 2i and 2i + 1
        scale /= 2
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    x = to_image[0, 0] * xs + to_image[0, 1] * ys + to_image[0, 2]
    y = to_image[1, 0] * xs + to_image[1, 1] * ys + to_image[1, 2]
    if grey:
        region = (region.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)[..., None]
    out = _bilinear(region, x, y)
    return out[..., 0] if grey else out


def _region(image: np.ndarray, to_image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of `image` the chip reaches (plus a border for the halvings), and the transform to it."""
    corners = to_image @ np.array([[0, side - 1, 0, side - 1], [0, 0, side - 1, side - 1], [1, 1, 1, 1]], np.float64)
    h, w = image.shape[:2]
    border = 2 + 2 * float(np.sqrt(abs(np.linalg.det(to_image[:, :2]))))
    x0 = int(np.clip(np.floor(corners[0].min() - border), 0, w))
    y0 = int(np.clip(np.floor(corners[1].min() - border), 0, h))
    x1 = int(np.clip(np.ceil(corners[0].max() + border), x0, w))
    y1 = int(np.clip(np.ceil(corners[1].max() + border), y0, h))
    # Even offsets keep the halvings' pixel grid the whole image's.
    x0, y0 = x0 - x0 % 2, y0 - y0 % 2
    shifted = to_image.copy()
    shifted[:, 2] -= (x0, y0)
    return image[y0:y1, x0:x1], shifted


def _halved(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2] // np.array(2)
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).mean(axis=(1, 3))


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    out = np.zeros(x.shape + image.shape[2:], np.float64)
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    if h == 0 or w == 0 or not inside.any():
        return out.astype(np.uint8)
    xi, yi = x[inside], y[inside]
    x0, y0 = np.minimum(np.floor(xi).astype(np.intp), w - 1), np.minimum(np.floor(yi).astype(np.intp), h - 1)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (xi - x0)[:, None], (yi - y0)[:, None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    out[inside] = top * (1 - fy) + bottom * fy
    return np.clip(out, 0, 255).astype(np.uint8)  # truncated, as dlib assigns a float to a byte
