"""fer's face detector (`blazeface`) in torch, batched over frames on any device: the GPU path's detector.

The network is built from the same shipped file (`blazeface.verify_model`): its graph, the ops and
their options read with the `tflite` package's flatbuffer schema, and its weights as LiteRT unpacks
them (densified and dequantised), run as the same ops in torch. The graph around it is
`blazeface`'s (the input's sampling, anchors, decoding, weighted non-max suppression, the way back
to frame pixels), written for a batch of frames that share one size: frames go in as one
(N, H, W, 3) uint8 tensor on the device, and only the merged boxes and key points, a few numbers
per face, come back to the host, in one transfer per batch. The constants and the anchors are `blazeface`'s own.

`TorchFaceDetector.detect_batch` gives each frame's faces as `faces.FaceDetector.detect` does
(`faces.frame_detections`: clipped to the frame, largest first, with their six key points).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import FerError
from . import blazeface
from .faces import Detection, frame_detections

# Weight unpacking in the file: their outputs are the weights, taken as constants.
CONSTANT_OPS = ("DENSIFY", "DEQUANTIZE")
# Frames through the network per call: 256 inputs are 113 MB of float32 and the activations a few
# times that, small beside a GPU's memory and large enough to keep it busy.
DETECT_BATCH = 256
TFLITE_MISSING = "the torch face detector reads its network with the tflite package: pip install 'fercli[gpu]'"


def read_graph(data: bytes) -> list[dict]:
    """The file's operators in execution order: name, input and output tensor indices, options."""
    try:
        import tflite
    except ImportError:
        raise FerError(TFLITE_MISSING) from None
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs, outputs = op.InputsAsNumpy().tolist(), op.OutputsAsNumpy().tolist()
        ops.append({"name": name, "inputs": inputs, "outputs": outputs, **_options(tflite, name, op)})
    return ops


def _options(tflite, name: str, op) -> dict:
    kinds = {
        "CONV_2D": tflite.Conv2DOptions,
        "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
        "ADD": tflite.AddOptions,
        "DEPTH_TO_SPACE": tflite.DepthToSpaceOptions,
        "RESIZE_BILINEAR": tflite.ResizeBilinearOptions,
    }
    if name not in kinds:
        return {}
    table = op.BuiltinOptions()
    o = kinds[name]()
    o.Init(table.Bytes, table.Pos)
    if name == "ADD":
        return {"act": o.FusedActivationFunction()}
    if name == "DEPTH_TO_SPACE":
        return {"block": o.BlockSize()}
    if name == "RESIZE_BILINEAR":
        return {"align": o.AlignCorners(), "half": o.HalfPixelCenters()}
    return {
        "act": o.FusedActivationFunction(),
        "same": o.Padding() == tflite.Padding.SAME,
        "stride": (o.StrideH(), o.StrideW()),
        "dilation": (o.DilationHFactor(), o.DilationWFactor()),
    }


def unpacked_tensors(data: bytes) -> tuple[int, dict[int, np.ndarray], dict[int, tuple]]:
    """The input's index, every tensor's value after one LiteRT run (weights as LiteRT unpacks
    them), and every tensor's shape."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = Interpreter(
            model_content=data,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    net.allocate_tensors()
    first = net.get_input_details()[0]["index"]
    net.set_tensor(first, np.zeros((1, blazeface.INPUT_SIDE, blazeface.INPUT_SIDE, 3), np.float32))
    net.invoke()
    values, shapes = {}, {}
    for d in net.get_tensor_details():
        shapes[d["index"]] = tuple(d["shape"])
        try:
            values[d["index"]] = net.get_tensor(d["index"]).copy()
        except ValueError:  # a tensor LiteRT freed: never a weight
            pass
    return first, values, shapes


class BlazeFaceNet(nn.Module):
    """The network as torch ops: (N, 192, 192, 3) float inputs in [-1, 1], NHWC as LiteRT takes
    them, -> box outputs (N, 2304, 16) and score logits (N, 2304)."""

    def __init__(self, data: bytes | None = None):
        super().__init__()
        data = blazeface.verify_model() if data is None else data
        self.ops = [op for op in read_graph(data) if op["name"] not in CONSTANT_OPS]
        self.input, values, self.shapes = unpacked_tensors(data)
        produced = {o for op in self.ops for o in op["outputs"]}
        self.host = {}  # integer constants (paddings, sizes, shapes): read on the host, never from the device
        for i in {i for op in self.ops for i in op["inputs"] if i not in produced and i != self.input and i >= 0}:
            if np.issubdtype(values[i].dtype, np.integer):
                self.host[i] = values[i].tolist()
            else:
                self.register_buffer(
                    f"t{i}", torch.from_numpy(np.ascontiguousarray(values[i])).float(), persistent=False
                )
        # boxes (N, 2304, 16), then score logits (N, 2304, 1): told apart by shape, as blazeface does
        reshaped = [op["outputs"][0] for op in self.ops if op["name"] == "RESHAPE"]
        self.outputs = sorted(reshaped, key=lambda i: -self.shapes[i][-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        env = {self.input: x.permute(0, 3, 1, 2)}  # NCHW inside
        for op in self.ops:
            args = [self._value(env, i) for i in op["inputs"] if i >= 0]
            env[op["outputs"][0]] = getattr(self, "_" + op["name"].lower())(op, *args)
        boxes, logits = (env[i] for i in self.outputs)
        return boxes, logits.reshape(logits.shape[0], -1)

    def _value(self, env: dict, i: int):
        if i in env:
            return env[i]
        return self.host[i] if i in self.host else getattr(self, f"t{i}")

    @staticmethod
    def _act(x, act: int):
        if act == 0:  # tflite.ActivationFunctionType: NONE, RELU, RELU_N1_TO_1, RELU6
            return x
        if act == 1:
            return F.relu(x)
        if act == 3:
            return F.relu6(x)
        raise ValueError(f"fused activation {act} is not ported")

    def _conv(self, x, w, b, op, groups: int):
        if op["same"]:
            x = _same_pad(x, w.shape[-2:], op["stride"])
        return self._act(F.conv2d(x, w, b, stride=op["stride"], dilation=op["dilation"], groups=groups), op["act"])

    def _conv_2d(self, op, x, w, b=None):
        return self._conv(x, w.permute(0, 3, 1, 2), b, op, 1)  # OHWI -> OIHW

    def _depthwise_conv_2d(self, op, x, w, b=None):
        return self._conv(x, w.permute(3, 0, 1, 2), b, op, x.shape[1])  # 1HWO -> O1HW

    def _pad(self, op, x, pads):
        (_, _), (top, bottom), (left, right), (c0, c1) = pads  # NHWC paddings
        return F.pad(x, (left, right, top, bottom, c0, c1))

    def _add(self, op, x, y):
        return self._act(x + y, op["act"])

    def _resize_bilinear(self, op, x, size):
        if not op["half"] or op["align"]:
            raise ValueError("only half-pixel centres (torch's align_corners=False) are ported")
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def _depth_to_space(self, op, x, _=None):
        n, c, h, w = x.shape
        s = op["block"]  # TF's order: the depth index is (row offset, column offset, channel)
        return x.view(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (s * s), h * s, w * s)

    def _reshape(self, op, x, _=None):
        shape = self.shapes[op["outputs"][0]]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], *shape[1:])  # NHWC order, as LiteRT's


def _same_pad(x, kernel, stride):
    pads = []
    for size, k, s in zip(x.shape[-2:], kernel, stride):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


def to_input_batch(frames: torch.Tensor) -> tuple[torch.Tensor, blazeface.Square]:
    """`blazeface.to_input` for (N, H, W, 3) uint8 frames of one size, on their device."""
    _, h, w, _ = frames.shape
    square, rows, cols = blazeface.input_taps(w, h)
    (ry0, ry1, wy0, wy1), (cx0, cx1, wx0, wx1) = (
        [torch.from_numpy(a).to(frames.device) for a in t] for t in (rows, cols)
    )
    wy0, wy1, wx0, wx1 = wy0[:, None, None], wy1[:, None, None], wx0[None, :, None], wx1[None, :, None]
    rows0, rows1 = frames[:, ry0], frames[:, ry1]  # (N, 192, W, 3) each: only the rows the input needs
    top = rows0[:, :, cx0] * wx0 + rows0[:, :, cx1] * wx1
    bottom = rows1[:, :, cx0] * wx0 + rows1[:, :, cx1] * wx1
    value = torch.round(top * wy0 + bottom * wy1)  # half to even, as numpy's rint
    return value * (2.0 / 255.0) - 1.0, square


def decode_batch(raw_boxes: torch.Tensor, logits: torch.Tensor, min_score: float = blazeface.MIN_SCORE):
    """`blazeface.decode_faces` for a batch: each frame's anchors scoring >= min_score, best first
    (ties in anchor order), padded to the batch's most: faces (N, K, 16) x0, y0, x1, y1, then x, y
    of each of `blazeface.KEYPOINTS`, in input-normalised units; scores (N, K) float64; and which
    are real (N, K)."""
    scores = torch.sigmoid(logits.double().clamp(-blazeface.SCORE_CLIP, blazeface.SCORE_CLIP))
    keep = scores >= min_score
    k = int(keep.sum(1).max()) if keep.numel() else 0  # the one wait for the device per batch
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    anchors = torch.from_numpy(blazeface.ANCHORS).to(raw_boxes.device)[order]
    raw = torch.gather(raw_boxes, 1, order[..., None].expand(-1, -1, raw_boxes.shape[-1])) / blazeface.BOX_SCALE
    centre = anchors + raw[..., :2]  # x, y (reverse_output_order: x comes first)
    half = raw[..., 2:4] / 2
    points = raw[..., 4:] + anchors.repeat(1, 1, len(blazeface.KEYPOINTS))
    faces = torch.cat([centre - half, centre + half, points], -1)
    return faces, torch.gather(scores, 1, order), torch.gather(keep, 1, order)


def weighted_nms_batch(boxes: torch.Tensor, scores: torch.Tensor, real: torch.Tensor, iou: float = blazeface.NMS_IOU):
    """`blazeface.weighted_nms` for every frame at once, candidates sorted best first: merged boxes
    (N, G, C) float64 (columns after the box's four, such as key points, merged as the box is),
    their scores (N, G), and which are real (N, G). Each round merges one group in every frame
    that has candidates left; G is the most faces any frame keeps."""
    n = boxes.shape[0]
    rows = torch.arange(n, device=boxes.device)
    overlap = _pairwise_iou(boxes[..., :4])
    left = real.clone()
    weighted = boxes.double()
    merged, merged_scores, kept = [], [], []
    while bool(left.any()):  # one wait for the device per face, for the whole batch
        has = left.any(1)
        best = left.to(torch.uint8).argmax(1)  # the first candidate left: the best score
        group = left & (overlap[rows, best] > iou)
        group[rows, best] = has  # the best box itself (a degenerate one overlaps nothing, itself included)
        weights = scores * group
        total = weights.sum(1)
        merged.append((weighted * weights[..., None]).sum(1) / torch.where(has, total, 1.0)[:, None])
        merged_scores.append(scores[rows, best])
        kept.append(has)
        left &= ~group
    if not merged:
        return (
            boxes.new_zeros((n, 0, boxes.shape[-1]), dtype=torch.float64),
            scores.new_zeros((n, 0)),
            real.new_zeros((n, 0)),
        )
    return torch.stack(merged, 1), torch.stack(merged_scores, 1), torch.stack(kept, 1)


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(N, K, K) IoU of every two candidates of a frame, 0 where the union is empty (blazeface's `_iou`)."""
    a, b = boxes[:, :, None], boxes[:, None, :]
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = ix * iy
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1), 0.0)


def to_frame_batch(boxes: torch.Tensor, square: blazeface.Square) -> torch.Tensor:
    """Input-normalised boxes (..., 4), or any rows of x, y pairs -> frame pixels (not clipped), as
    `blazeface.to_frame`."""
    pairs = [square.x0, square.y0] * (boxes.shape[-1] // 2)
    offset = torch.tensor(pairs, dtype=boxes.dtype, device=boxes.device)
    return boxes * square.side + offset


class TorchFaceDetector:
    """BlazeFace on a torch device, many frames per call; the same faces as `faces.FaceDetector`."""

    def __init__(self, device="cpu", min_score: float = blazeface.MIN_SCORE, batch: int = DETECT_BATCH):
        self.device = torch.device(device)
        self.min_score = min_score
        self.batch = max(1, batch)
        self.net = BlazeFaceNet().to(self.device).eval()

    @torch.inference_mode()
    def faces_batch(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 RGB frames of one size -> on their device: faces (N, G, 16) x0, y0,
        x1, y1, then x, y of each of `blazeface.KEYPOINTS`, in frame pixels (float64, not
        clipped); scores (N, G); and which are faces (N, G)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, not {tuple(frames.shape)} {frames.dtype}")
        x, square = to_input_batch(frames.to(self.device))
        # fp32 convolutions: TF32 would move score logits near the threshold by more than LiteRT's own rounding
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            outputs = [self.net(part) for part in x.split(self.batch)]
        raw = torch.cat([boxes for boxes, _ in outputs])
        logits = torch.cat([scores for _, scores in outputs])
        faces, scores, real = weighted_nms_batch(*decode_batch(raw, logits, self.min_score))
        return to_frame_batch(faces, square), scores, real

    def detect_batch(self, frames: torch.Tensor) -> list[list[Detection]]:
        """Each frame's faces with their key points, as `faces.FaceDetector.detect` gives them
        (clipped, largest first); the batch's faces cross to the host in one transfer."""
        faces, scores, real = self.faces_batch(frames)
        host = torch.cat([faces, scores[..., None], real[..., None].double()], -1).cpu().numpy()
        h, w = frames.shape[1:3]
        out = []
        for rows in host:
            rows = rows[rows[:, -1] > 0]
            points = rows[:, 4:16].reshape(len(rows), len(blazeface.KEYPOINTS), 2)
            out.append(frame_detections(rows[:, :4], rows[:, 16], w, h, points))
        return out
