"""Face identity: dlib's ResNet face-recognition network in torch, read from dlib's own file.

The network is the one dlib's `dnn_face_recognition_ex` defines (Davis King, 2017; LFW 99.38%):
a 150 x 150 RGB chip, aligned as `media.align` cuts it, becomes a 128-d embedding in which two
chips of one person lie close (dlib's own threshold: Euclidean distance 0.6). Its weights are
`dlib_face_recognition_resnet_model_v1.dat` (CC0), the registry's `dlib-faceid` entry, in dlib's
serialization format (`core.dlibfile`), which `read_dlib_net` parses here (no dlib needed) into
plain arrays. dlib writes a network as its loss layer, then each layer wrapping the one below
it: the descent writes one version number per layer (outermost first), the ascent each layer's
details (innermost first).

The network: a 7 x 7 convolution (stride 2) and 3 x 3 max pooling, then residual blocks of two
3 x 3 convolutions at 32, 64, 128 and 256 channels, the first of each later level with stride 2
(its shortcut a 2 x 2 average), a mean over the positions and a 128 x 256 projection without bias.
dlib's affine layers (frozen batch norm) are folded into the convolutions before them. Where a
block's two branches differ in size, dlib adds them zero-extended (the smaller one's missing
channels, rows and columns count as 0): at 8 x 8 the strided branch is 3 x 3, the shortcut 4 x 4.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.dlibfile import DlibReader
from ..core.errors import FerError, WeightsError, first_line
from ..media.align import CHIP_SIDE  # the network's input side (dlib's input_rgb_image_sized<150>)
from . import weights

log = logging.getLogger("fercli")

NETWORK_WEIGHTS = "dlib-faceid"  # the registry entry of dlib_face_recognition_resnet_model_v1.dat
LANDMARK_WEIGHTS = "dlib-landmarks5"  # and of shape_predictor_5_face_landmarks.dat, which aligns its chips
IDENTITY_CHOICES = ("auto", "faceid", "texture")  # --identity: auto = faceid where its weights can be had
EMBED_BATCH = 64  # chips per network call
EMBEDDING_DIM = 128
# Residual levels from the input up: (channels, blocks, the first block's stride).
LEVELS = ((32, 3, 1), (64, 4, 2), (128, 3, 2), (256, 3, 2), (256, 1, 2))
STEM = dict(channels=32, kernel=7, stride=2, pool=3, pool_stride=2)


@dataclass(frozen=True)
class _Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    stride: int = 1
    window: int = 0  # kernel or pooling side
    channels: int = 0


def _layers() -> list[_Layer]:
    """The network's dlib layers from the input up (tags and skips mark the residual branches)."""
    out = [_Layer("con", STEM["stride"], STEM["kernel"], STEM["channels"]), _Layer("affine"), _Layer("relu")]
    out.append(_Layer("max_pool", STEM["pool_stride"], STEM["pool"]))
    for channels, blocks, stride in LEVELS:
        for b in range(blocks):
            s = stride if b == 0 else 1
            out += [_Layer("tag"), _Layer("con", s, 3, channels), _Layer("affine"), _Layer("relu")]
            out += [_Layer("con", 1, 3, channels), _Layer("affine")]
            if s != 1:  # residual_down: the block's output tagged, the input skipped to and pooled
                out += [_Layer("tag"), _Layer("skip"), _Layer("avg_pool", s, 2)]
            out += [_Layer("add_prev"), _Layer("relu")]
    return out + [_Layer("avg_pool", 1, 0), _Layer("fc", channels=EMBEDDING_DIM)]


def read_dlib_net(path: str | Path) -> dict:
    """dlib_face_recognition_resnet_model_v1.dat -> {"mean": input mean (3,), "layers": [...]}.

    Each of "layers" (from the input up, tags and skips left out) is a dict with "kind" and, for
    a convolution, "weight" (out, in, k, k), "bias", "stride", "padding"; an affine layer "gamma"
    and "beta"; a pooling layer "window", "stride", "padding"; the projection "weight" (out, in).
    Raises WeightsError naming the file where it is not that network.
    """
    path = Path(path)
    try:
        r = DlibReader(path.read_bytes(), path, "dlib's face-recognition network")
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror or e})") from None
    r.version("the loss layer", (1,))
    loss = r.expect(("loss_metric_",))
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin and distance threshold: training's, not the network's
    layers = _layers()
    # The descent: one version per layer that wraps another, the outermost first.
    versions = [r.version(x.kind, (1,) if x.kind in ("tag", "skip") else (1, 2)) for x in reversed(layers[1:])][::-1]
    first = r.version("the input layer's wrapper", (2, 3))
    mean, side = _input(r)
    if side != (CHIP_SIDE, CHIP_SIDE):
        r.fail(f"input side {side}")
    parsed = [_details(r, layers[0])]
    _trailer(r, tensors=3, expansion=first >= 3)
    for layer, version in zip(layers[1:], versions):  # the ascent: each layer's details, innermost first
        if layer.kind not in ("tag", "skip"):
            parsed.append(_details(r, layer))
            _trailer(r, tensors=3 if version == 2 else 2)
    if r.pos != len(r.data):
        r.fail("bytes after the network")
    return {"mean": mean, "layers": parsed}


def _input(r: DlibReader) -> tuple[np.ndarray, tuple[int, int]]:
    name = r.expect(("input_rgb_image",))
    mean = np.array([r.float() for _ in range(3)], np.float32)
    side = (r.int(), r.int()) if name == "input_rgb_image_sized" else (0, 0)
    return mean, side


def _trailer(r: DlibReader, tensors: int, expansion: bool = False) -> None:
    """What dlib keeps beside a layer's details for training: three flags, gradient tensors."""
    r.bool(), r.bool(), r.bool()
    for _ in range(tensors):
        r.tensor()
    if expansion:
        r.int()  # the sample expansion factor


def _details(r: DlibReader, layer: _Layer) -> dict:
    reader = {"con": _con, "affine": _affine, "relu": _relu, "max_pool": _pool, "avg_pool": _pool}
    reader |= {"add_prev": _add_prev, "fc": _fc}
    out = reader[layer.kind](r, layer)
    out["kind"] = layer.kind
    return out


def _con(r: DlibReader, layer: _Layer) -> dict:
    version = r.expect(("con_",))
    params = r.tensor().ravel()
    filters, rows, cols, stride_y, stride_x = r.int(), r.int(), r.int(), r.int(), r.int()
    pad_y, pad_x = r.int(), r.int()
    fshape, bshape = r.alias(), r.alias()
    for _ in range(4):
        r.float()  # learning-rate and weight-decay multipliers
    if version in ("con_5", "con_6"):
        r.bool()  # use_bias: the bias is in the parameters either way when set
    if version == "con_6":
        r.bool()
    if (filters, rows, cols, stride_y, stride_x) != (
        layer.channels,
        layer.window,
        layer.window,
        layer.stride,
        layer.stride,
    ):
        r.fail(f"a {rows}x{cols} convolution of {filters} filters, stride {stride_y}")
    n = math.prod(fshape)
    if params.size != n + math.prod(bshape):
        r.fail("a convolution's parameter count")
    weight = params[:n].reshape(fshape)
    bias = params[n:] if params.size > n else np.zeros(filters, np.float32)
    return {"weight": weight, "bias": bias, "stride": stride_y, "padding": (pad_y, pad_x)}


def _affine(r: DlibReader, layer: _Layer) -> dict:
    version = r.expect(("affine_",))
    params = r.tensor().ravel()
    gamma, beta = r.alias(), r.alias()
    r.int()  # mode: per channel after a convolution
    if version == "affine_2":
        r.bool()
    k = math.prod(gamma)
    if params.size != k + math.prod(beta):
        r.fail("an affine layer's parameter count")
    return {"gamma": params[:k], "beta": params[k:]}


def _relu(r: DlibReader, layer: _Layer) -> dict:
    if r.expect(("relu_",)) == "relu_2":
        r.bool()
    return {}


def _pool(r: DlibReader, layer: _Layer) -> dict:
    r.expect((f"{layer.kind}_2",))
    rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
    if (rows, cols, stride_y) != (layer.window, layer.window, layer.stride) or stride_x != stride_y:
        r.fail(f"a {rows}x{cols} {layer.kind} of stride {stride_y}")
    return {"window": rows, "stride": stride_y, "padding": (pad_y, pad_x)}


def _add_prev(r: DlibReader, layer: _Layer) -> dict:
    r.expect(("add_prev_",))
    return {}


def _fc(r: DlibReader, layer: _Layer) -> dict:
    version = r.expect(("fc_",))
    outputs, inputs = r.int(), r.int()
    params = r.tensor().ravel()
    shape, _ = r.alias(), r.alias()  # the weights' and biases' shapes
    r.int()  # bias mode
    for _ in range(4):
        r.float()
    if version == "fc_3":
        r.bool()
    if outputs != layer.channels or math.prod(shape) != inputs * outputs:
        r.fail(f"a projection of {inputs} to {outputs}")
    return {"weight": params[: inputs * outputs].reshape(inputs, outputs).T.copy()}


class FaceNet(nn.Module):
    """dlib's face-recognition ResNet: (N, 150, 150, 3) uint8 chips -> (N, 128) embeddings.

    Built from `read_dlib_net`'s arrays; each affine layer is folded into its convolution.
    """

    def __init__(self, net: dict):
        super().__init__()
        layers = [x for x in net["layers"] if x["kind"] not in ("relu", "add_prev")]
        self.register_buffer("mean", torch.tensor(net["mean"]).view(1, 3, 1, 1))
        self.stem = _folded(layers[0], layers[1])
        self.pool = layers[2]["window"], layers[2]["stride"]
        self.blocks = nn.ModuleList()
        i = 3
        for _, blocks, stride in LEVELS:
            for b in range(blocks):
                down = stride != 1 and b == 0
                self.blocks.append(_Block(_folded(*layers[i : i + 2]), _folded(*layers[i + 2 : i + 4]), down))
                i += 5 if down else 4
        self.project = nn.Linear(layers[-1]["weight"].shape[1], EMBEDDING_DIM, bias=False)
        self.project.weight.data = torch.from_numpy(layers[-1]["weight"])

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0  # dlib's input scale
        x = F.max_pool2d(F.relu(self.stem(x)), *self.pool)
        for block in self.blocks:
            x = block(x)
        return self.project(x.mean(dim=(2, 3)))


class _Block(nn.Module):
    """Two 3 x 3 convolutions; the shortcut the input, or its 2 x 2 mean where the block strides."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, down: bool):
        super().__init__()
        self.first, self.second, self.down = first, second, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(F.relu(self.first(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_extended(y, shortcut))


def _add_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, each zero-extended to the larger's channels, rows and columns (dlib's add_prev)."""
    if a.shape == b.shape:
        return a + b
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]
    grow = lambda t: F.pad(t, (0, size[2] - t.shape[3], 0, size[1] - t.shape[2], 0, size[0] - t.shape[1]))  # noqa: E731
    return grow(a) + grow(b)


def _folded(con: dict, affine: dict) -> nn.Conv2d:
    """The convolution with the affine layer after it folded in: gamma * (w * x + b) + beta."""
    weight, gamma = torch.from_numpy(con["weight"]), torch.from_numpy(affine["gamma"])
    out, cin, k, _ = weight.shape
    conv = nn.Conv2d(cin, out, k, stride=con["stride"], padding=con["padding"])
    conv.weight.data = weight * gamma.view(-1, 1, 1, 1)
    conv.bias.data = torch.from_numpy(con["bias"]) * gamma + torch.from_numpy(affine["beta"])
    return conv


def load_faceid(path: str | Path, device: str | torch.device = "cpu") -> FaceNet:
    """The network from dlib's file at `path`, in eval mode on `device`."""
    return FaceNet(read_dlib_net(path)).eval().to(device)


def embed(net: FaceNet, chips: np.ndarray, batch: int = EMBED_BATCH) -> np.ndarray:
    """(N, 150, 150, 3) uint8 chips -> (N, 128) float32 embeddings, `batch` chips at a time."""
    device = net.mean.device
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(np.ascontiguousarray(chips[i : i + batch])).to(device)
            out.append(net(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)


def unit_embeddings(net: FaceNet, chips: np.ndarray, batch: int = EMBED_BATCH) -> np.ndarray:
    """`embed` made unit length: what `people.group_tracks(kind="faceid")` sums per track."""
    e = embed(net, chips, batch)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Identity:
    """How a run tells people apart across cuts, settled once (`resolve_identity`)."""

    kind: str  # "faceid" (embeddings) or "texture" (people.appearance): group_tracks' kind
    network: Path | None = None  # dlib_face_recognition_resnet_model_v1.dat, for kind "faceid"
    landmarks: Path | None = None  # shape_predictor_5_face_landmarks.dat

    def describe(self) -> str:
        """One line for the table's metadata: which descriptor made the person ids."""
        if self.kind != "faceid":
            return "texture: LBP histograms of the face box (fercli.media.people.appearance)"
        return f"faceid: dlib_face_recognition_resnet_model_v1 (SHA-256 {weights.sha256(self.network)[:16]})"


def resolve_identity(choice: str = "auto", *, progress=None, root: Path | None = None) -> Identity:
    """--identity settled: "texture"; "faceid" (its two weights files fetched and verified, or a
    WeightsError); "auto": faceid where they can be had, else texture with a warning."""
    if choice not in IDENTITY_CHOICES:
        raise WeightsError(f"--identity must be one of {', '.join(IDENTITY_CHOICES)}, not {choice!r}")
    if choice == "texture":
        return Identity("texture")
    try:
        network = weights.fetch(NETWORK_WEIGHTS, progress=progress, root=root)
        landmarks = weights.fetch(LANDMARK_WEIGHTS, progress=progress, root=root)
    except WeightsError as e:
        if choice == "faceid":
            raise
        log.debug("face-recognition weights: %s", first_line(e))
        log.warning(
            "people across cuts are told apart by texture: the face-recognition weights are missing and could "
            "not be downloaded; `fer weights download %s %s` gets them (--identity texture says this is meant)",
            NETWORK_WEIGHTS,
            LANDMARK_WEIGHTS,
        )
        return Identity("texture")
    return Identity("faceid", network, landmarks)


@lru_cache(maxsize=2)
def load_landmarks(path: str | os.PathLike):
    """The 5-point landmark predictor of dlib's file at `path` (`media.landmarks`), once per
    process: parsed on first use and kept beside the file as arrays (`<file>.<sha>.npz`)."""
    from ..core.files import atomic_write
    from ..media.landmarks import from_arrays, read_shape_predictor, to_arrays

    path = Path(path)
    arrays = path.with_name(f"{path.name}.{weights.sha256(path)[:12]}.npz")
    if arrays.is_file():
        try:
            with np.load(arrays) as held:
                return from_arrays(held)
        except (OSError, ValueError, KeyError):
            pass  # damaged: parsed again and replaced
    predictor = read_shape_predictor(path)
    try:
        atomic_write(arrays, lambda tmp: _save(tmp, to_arrays(predictor)))
    except (OSError, FerError) as e:  # a read-only cache: parsed again next time
        log.debug("cannot keep %s (%s)", arrays, first_line(e))
    return predictor


def _save(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
