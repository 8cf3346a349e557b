"""A torch port of fer's face detector network, built from the same file, to measure against LiteRT.

    python bench/blazeface_torch.py [--device cpu|cuda] [--batches 1,8,32]

Reads the graph of fercli/data/face_detection_full_range_sparse.tflite (ops and their options,
with the `tflite` package's flatbuffer schema) and its weights (as LiteRT densifies and
dequantises them), runs the same ops in torch (NCHW), checks its raw outputs and fer's decoded
boxes against LiteRT's on tests/real_faces.py's frames, and times the network alone per frame at
each batch size (median of REPEAT calls after WARMUP). Not part of fer: docs/performance.md
("The face detector") says why LiteRT stays and what this measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WARMUP, REPEAT = 5, 30
CONSTANT_OPS = ("DENSIFY", "DEQUANTIZE")  # weight unpacking: their outputs are taken as constants


def read_graph(data: bytes) -> list[dict]:
    """The operators in execution order: name, input and output tensor indices, options."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ops.append({"name": name, "inputs": list(op.InputsAsNumpy()), "outputs": list(op.OutputsAsNumpy()), **_options(name, op)})
    return ops


def _options(name: str, op) -> dict:
    import tflite

    kinds = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions, "ADD": tflite.AddOptions,
             "DEPTH_TO_SPACE": tflite.DepthToSpaceOptions, "RESIZE_BILINEAR": tflite.ResizeBilinearOptions}
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
    return {"act": o.FusedActivationFunction(), "same": o.Padding() == tflite.Padding.SAME,
            "stride": (o.StrideH(), o.StrideW()), "dilation": (o.DilationHFactor(), o.DilationWFactor())}


def tensors(data: bytes) -> tuple[dict[int, np.ndarray], dict[int, tuple]]:
    """Every tensor's value after one run (weights as LiteRT unpacks them) and every shape."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                          experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    net.allocate_tensors()
    net.set_tensor(net.get_input_details()[0]["index"], np.zeros((1, 192, 192, 3), np.float32))
    net.invoke()
    values, shapes = {"input": net.get_input_details()[0]["index"]}, {}
    for d in net.get_tensor_details():
        shapes[d["index"]] = tuple(d["shape"])
        try:
            values[d["index"]] = net.get_tensor(d["index"]).copy()
        except ValueError:
            pass
    return values, shapes


class Port:
    """The graph as torch ops; `__call__` takes (B, 192, 192, 3) float inputs, NHWC as LiteRT."""

    def __init__(self, data: bytes, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, device
        self.ops = [op for op in read_graph(data) if op["name"] not in CONSTANT_OPS]
        values, self.shapes = tensors(data)
        self.input = values.pop("input")
        produced = {o for op in self.ops for o in op["outputs"]}
        consts = {i for op in self.ops for i in op["inputs"] if i not in produced and i != self.input}
        self.const = {i: self._as_torch(i, values[i]) for i in consts}
        # boxes (B, 2304, 16), then score logits (B, 2304, 1): told apart by shape, as fer does
        self.outputs = sorted((op["outputs"][0] for op in self.ops if op["name"] == "RESHAPE"), key=lambda i: -self.shapes[i][-1])

    def _as_torch(self, index: int, value: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(value))
        return t.to(self.device, self.torch.float32) if t.is_floating_point() else t

    def __call__(self, x):
        F, torch = self.torch.nn.functional, self.torch
        env = {self.input: x.permute(0, 3, 1, 2)}  # NCHW inside
        for op in self.ops:
            a = [env[i] if i in env else self.const[i] for i in op["inputs"] if i >= 0]
            env[op["outputs"][0]] = getattr(self, "_" + op["name"].lower())(F, torch, op, *a)
        return [env[i] for i in self.outputs]

    @staticmethod
    def _act(F, x, act: int):
        if act == 0:  # tflite.ActivationFunctionType: NONE, RELU, RELU_N1_TO_1, RELU6
            return x
        if act == 1:
            return F.relu(x)
        if act == 3:
            return F.relu6(x)
        raise ValueError(f"fused activation {act} is not ported")

    def _conv(self, F, x, w, b, op, groups: int):
        if op["same"]:
            x = _same_pad(F, x, w.shape[-2:], op["stride"])
        y = F.conv2d(x, w, b, stride=op["stride"], dilation=op["dilation"], groups=groups)
        return self._act(F, y, op["act"])

    def _conv_2d(self, F, torch, op, x, w, b=None):
        return self._conv(F, x, w.permute(0, 3, 1, 2), b, op, 1)  # OHWI -> OIHW

    def _depthwise_conv_2d(self, F, torch, op, x, w, b=None):
        return self._conv(F, x, w.permute(3, 0, 1, 2), b, op, x.shape[1])  # 1HWO -> O1HW

    def _pad(self, F, torch, op, x, pads):
        (_, _), (t, bo), (le, r), (c0, c1) = pads.tolist()  # NHWC paddings
        return F.pad(x, (le, r, t, bo, c0, c1))

    def _add(self, F, torch, op, x, y):
        return self._act(F, x + y, op["act"])

    def _resize_bilinear(self, F, torch, op, x, size):
        assert op["half"] and not op["align"], "only half-pixel centres (torch's align_corners=False)"
        return F.interpolate(x, size=tuple(size.tolist()), mode="bilinear", align_corners=False)

    def _depth_to_space(self, F, torch, op, x, _=None):
        n, c, h, w = x.shape
        s = op["block"]  # TF's order: the depth index is (row offset, column offset, channel)
        return x.view(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (s * s), h * s, w * s)

    def _reshape(self, F, torch, op, x, _=None):
        shape = self.shapes[op["outputs"][0]]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], *shape[1:])  # NHWC order, as LiteRT's


def _same_pad(F, x, kernel, stride):
    pads = []
    for size, k, s in zip(x.shape[-2:], kernel, stride):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (t, b), (le, r) = pads
    return F.pad(x, (le, r, t, b))


def parity(port, device: str) -> list[str]:
    import real_faces
    import torch

    from fercli.media import blazeface
    from fercli.media.faces import iou

    net = blazeface.BlazeFace()
    lines = []
    for name, frame in real_faces.frames().items():
        x, square = blazeface.to_input(frame)
        with torch.inference_mode():
            boxes_t, scores_t = (t[0].float().cpu().numpy() for t in port(torch.from_numpy(x[None]).to(device)))
        raw = net._net
        raw.set_tensor(net._input, x[None])
        raw.invoke()
        boxes_l, scores_l = raw.get_tensor(net._boxes)[0], raw.get_tensor(net._scores)[0]
        a = blazeface.to_frame(blazeface.weighted_nms(*blazeface.decode(boxes_l, scores_l))[0], square)
        b = blazeface.to_frame(blazeface.weighted_nms(*blazeface.decode(boxes_t, scores_t))[0], square)
        low = min((max(iou(tuple(p), tuple(q)) for q in b) for p in a), default=1.0) if len(b) else (0.0 if len(a) else 1.0)
        lines.append(f"{name}: raw boxes max |diff| {np.abs(boxes_l - boxes_t).max():.2e}, logits {np.abs(scores_l - scores_t).max():.2e}; "
                     f"faces {len(a)} / {len(b)}, lowest IoU {low:.5f}")
    return lines


def timing(port, device: str, batch: int) -> float:
    import torch

    x = torch.rand(batch, 192, 192, 3, device=device) * 2 - 1
    times = []
    with torch.inference_mode():
        for k in range(WARMUP + REPEAT):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            port(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if k >= WARMUP:
                times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args()
    from fercli.media.blazeface import verify_model

    port = Port(verify_model(), args.device)
    for line in parity(port, args.device):
        print(line)
    for batch in map(int, args.batches.split(",")):
        print(f"torch port on {args.device}, batch {batch}: {timing(port, args.device, batch):.3f} ms per frame")


if __name__ == "__main__":
    main()
