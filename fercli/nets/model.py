"""The networks, built from the checkpoint dicts `checkpoints` reads.

`EfficientNetLSTM` is the paper's model: a timm EfficientNet-B0 encodes each face crop into a
1280-d feature, an LSTM runs over a window of T frames, and the last step feeds two 21-way heads
(valence and arousal, integers -10..10). `HSEmotionNet` is the frame baseline: HSEmotion's own
network, whose outputs 8 and 9 are valence and arousal: raw linear outputs (trained with a CCC
loss, no tanh), about [-1, 1] but free to leave it.

Both expose the same two stages so the pipeline can share backbone work between windows:
`encode(images) -> features` per frame, then `head(windows)` (window models) or
`frame_scores(features)` (frame models). A model with HSEmotion's expression classifier
(`has_expressions`: HSEmotionNet always, EfficientNetLSTM when its config says `expressions`)
also gives `expression_logits(features)`: the 8 AffectNet logits per frame, in `EXPRESSIONS` order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..core.errors import FerError, WeightsError, first_line
from ..core.labels import EXPRESSIONS, LABEL_OFFSET, NUM_CLASSES
from .checkpoints import hsemotion_config

log = logging.getLogger("fercli")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HSEMOTION_OUTPUTS = 10  # 8 emotion logits, valence, arousal
HSEMOTION_VA = slice(8, 10)  # valence, arousal columns of the HSEmotion head
HSEMOTION_EXPRESSIONS = slice(0, len(EXPRESSIONS))  # its 8 expression logits, in EXPRESSIONS order


CROPS = ("square", "box")
# What a checkpoint's config may say: a config is data from a file, so each number is checked
# before it sizes anything (memory, samples planned, a division).
INPUT_SIDE_PX = (16, 1024)  # crop side; EfficientNet-B0 is trained at 224, ResNet-50 at 224
MAX_MARGIN = 2.0  # of the box's larger side, on each side
STD_RANGE = (1e-3, 10.0)  # per channel, after scaling pixels to [0, 1]
FPS_RANGE = (1e-3, 120.0)  # samples per second of video: no camera fer meets films faster
MAX_WINDOW = 600  # samples per window: two minutes at 5 samples/s
MAX_HIDDEN, MAX_LAYERS = 8192, 16  # LSTM


@dataclass(frozen=True)
class Preprocess:
    """How a face becomes a network input; stored in every checkpoint and in the table's metadata."""

    size: int = 224  # side of the network's input (px); crops are resized to it (PIL bilinear)
    margin: float = 0.1  # "square" only: added on each side of the face box, times its larger side
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, after scaling to [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD
    # "square": a square around the box's centre (margin added, outside the frame black);
    # "box": the detector's box cut tight and stretched to size x size, as HSEmotion feeds its nets.
    crop: str = "square"

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"preprocess crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        _in_range("preprocess size", self.size, *INPUT_SIDE_PX, integer=True)
        _in_range("preprocess margin", self.margin, 0.0, MAX_MARGIN)
        for name, values, low, high in (("mean", self.mean, 0.0, 1.0), ("std", self.std, *STD_RANGE)):
            if len(values) != 3:
                raise ValueError(f"preprocess {name} must have 3 values (RGB), not {len(values)}")
            for value in values:
                _in_range(f"preprocess {name}", value, low, high)

    def cut(self, image, box=None):
        """The network's size x size uint8 RGB crop of the face at `box` (pixels) in `image`.

        box None: `image` is already an aligned face crop (Aff-Wild2's cropped_aligned), resized
        whole: no margin around it, since the aligner has already framed the face.
        """
        from ..media.faces import crop

        if box is None:
            h, w = image.shape[:2]
            return crop(image, (0.0, 0.0, float(w), float(h)), self.size, 0.0, square=False)
        return crop(image, box, self.size, self.margin if self.crop == "square" else 0.0, square=self.crop == "square")

    def cut_batch(self, frames: torch.Tensor, frame_index, boxes) -> torch.Tensor:
        """`cut` for many faces of (N, H, W, 3) uint8 frames on a torch device, without leaving it:
        (M, size, size, 3) uint8, crop m of `frames[frame_index[m]]` at `boxes[m]` (pixels), equal to `cut`'s."""
        from ..media.faces import crop_region
        from ..media.torchframes import crop_batch

        h, w = frames.shape[1:3]
        square = self.crop == "square"
        margin = self.margin if square else 0.0
        regions = [crop_region(tuple(box), w, h, margin, square) for box in boxes]
        return crop_batch(frames, frame_index, regions, self.size)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved as plain data in its checkpoint."""

    arch: str = "efficientnet_lstm"  # "efficientnet_lstm" (window model) or "hsemotion" (frame model)
    backbone: str = "tf_efficientnet_b0"  # timm model name
    fps: float = 5.0  # frames sampled per second of video
    window: int = 5  # frames per window (T); the window for second s ends at the end of s
    # "lstm"; "mean" (mean of the frame features, no recurrence); "none" (a per-frame head, the
    # window's prediction the mean of its frames' predicted distributions: ABAW's frame baseline)
    temporal: str = "lstm"
    hidden: int = 256  # LSTM hidden size
    layers: int = 1  # LSTM layers
    dropout: float = 0.2  # before the heads
    preprocess: Preprocess = field(default_factory=Preprocess)
    # efficientnet_lstm: keep HSEmotion's expression classifier (its outputs 0-7) on the backbone's
    # features. Off by default, so checkpoints saved before this field load unchanged.
    expressions: bool = False

    def __post_init__(self):
        _in_range("fps", self.fps, *FPS_RANGE)
        _in_range("window", self.window, 1, MAX_WINDOW, integer=True)
        _in_range("hidden", self.hidden, 0, MAX_HIDDEN, integer=True)  # 0: no LSTM (frame models)
        _in_range("layers", self.layers, 0, MAX_LAYERS, integer=True)
        _in_range("dropout", self.dropout, 0.0, 1.0)

    @property
    def is_window_model(self) -> bool:
        return self.arch == "efficientnet_lstm"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = {**d["preprocess"], "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        pre = dict(d.get("preprocess", {}))
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(pre[key])
        return cls(**{**d, "preprocess": Preprocess(**pre)})


def _in_range(name: str, value, low, high, integer: bool = False) -> None:
    """ValueError unless `value` is a number (an int where `integer`) within [low, high]."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (low <= value <= high):  # NaN fails too
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} from {low} to {high}, not {value!r}")


# HSEmotion's own preprocessing comes with its weights in the registry (hsemotion
# `facial_emotions.py`, EmotiEffLib `facial_analysis.py`): the detector's box cut tight out of the
# RGB frame, `Resize((224, 224))` on a PIL image (bilinear), ImageNet mean/std. Its networks were
# trained on AffectNet's tight face boxes. Also used for HSEmotion files given by path.
HSEMOTION_CONFIG = ModelConfig.from_dict(hsemotion_config())


class EfficientNetLSTM(nn.Module):
    """EfficientNet-B0 per frame, LSTM over a window, two 21-class heads (valence, arousal)."""

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else _timm_backbone(config, num_classes=0)
        dim = self.backbone.num_features
        # Pretrained features have large, uneven scales; normalising them keeps the LSTM's
        # gates out of saturation from the first step.
        self.norm = nn.LayerNorm(dim)
        if config.temporal == "lstm":
            self.temporal = nn.LSTM(dim, config.hidden, num_layers=config.layers, batch_first=True)
            out_dim = config.hidden
        elif config.temporal in ("mean", "none"):
            self.temporal = None
            out_dim = dim
        else:
            raise ValueError(f"unknown temporal head {config.temporal!r}")
        self.drop = nn.Dropout(config.dropout)
        self.valence_head = nn.Linear(out_dim, NUM_CLASSES)
        self.arousal_head = nn.Linear(out_dim, NUM_CLASSES)
        # HSEmotion's classifier rows 0-7 on the raw pooled feature, as in its own network (no
        # LayerNorm, no dropout in eval). Never trained here: no loss reaches it.
        self.expression_head = nn.Linear(dim, len(EXPRESSIONS)) if config.expressions else None
        if self.expression_head is not None:
            self.expression_head.requires_grad_(False)

    @property
    def has_expressions(self) -> bool:
        return self.expression_head is not None

    def load_backbone(self, state: dict) -> None:
        """Load timm backbone weights; an HSEmotion `classifier.*` fills the expression head.

        `state` may hold HSEmotion's 10-way classifier: its rows 0-7 (the expressions) become the
        expression head when the config asks for one, and are dropped otherwise.
        """
        classifier = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        self.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
        if self.expression_head is None:
            return
        if not classifier:
            raise ValueError("the expression head needs HSEmotion's classifier weights (classifier.*)")
        with torch.no_grad():
            self.expression_head.weight.copy_(classifier["weight"][HSEMOTION_EXPRESSIONS])
            self.expression_head.bias.copy_(classifier["bias"][HSEMOTION_EXPRESSIONS])

    def expression_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) backbone features -> (N, 8) expression logits, in EXPRESSIONS order."""
        if self.expression_head is None:
            raise ValueError("this model has no expression head (config.expressions is off)")
        return self.expression_head(features)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised crops -> (N, F) backbone features."""
        return self.backbone(images)

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) window features -> valence and arousal logits, each (B, 21)."""
        x = self.norm(features)
        if self.config.temporal == "none":
            return self._frame_head(self.drop(x))
        if self.temporal is None:
            x = x.mean(dim=1)
        else:
            x = self.temporal(x)[0][:, -1]
        x = self.drop(x)
        return self.valence_head(x), self.arousal_head(x)

    def _frame_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Each frame predicted on its own; the window's distribution is the mean of the frames',
        # returned as its log so softmax, cross-entropy and decode_logits read it as logits.
        return tuple(head(x).log_softmax(-1).exp().mean(dim=1).log() for head in (self.valence_head, self.arousal_head))

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 3, H, W) -> valence and arousal logits, each (B, 21)."""
        b, t = clips.shape[:2]
        features = self.encode(clips.flatten(0, 1)).view(b, t, -1)
        return self.head(features)


class HSEmotionNet(nn.Module):
    """HSEmotion's frame network: timm EfficientNet-B0 with a 10-output head."""

    def __init__(self, config: ModelConfig = HSEMOTION_CONFIG, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else _timm_backbone(config, num_classes=HSEMOTION_OUTPUTS)

    has_expressions = True  # outputs 0-7 are the expression logits

    @staticmethod
    def expression_logits(outputs: torch.Tensor) -> torch.Tensor:
        """(N, 10) outputs -> (N, 8) expression logits, in EXPRESSIONS order."""
        return outputs[:, HSEMOTION_EXPRESSIONS]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 10) raw outputs."""
        return self.backbone(images)

    @staticmethod
    def frame_scores(outputs: torch.Tensor) -> torch.Tensor:
        """(N, 10) outputs -> (N, 2) valence, arousal times 10 (the -10..10 scale), unclipped.

        Not clipped per frame: clipping before the per-second mean would bias it towards zero
        whenever some frames leave [-1, 1]. The label is clipped once, after the mean.
        """
        return outputs[:, HSEMOTION_VA] * LABEL_OFFSET

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.frame_scores(self.encode(images))


def _timm_backbone(config: ModelConfig, num_classes: int) -> nn.Module:
    import timm  # here, not at the top: an OpenVINO backbone from the cache needs no timm

    return timm.create_model(config.backbone, pretrained=False, num_classes=num_classes)


def build_model(config: ModelConfig, backbone: nn.Module | None = None) -> nn.Module:
    """A fresh, randomly initialised model for `config`; `backbone` replaces the timm network if given."""
    if config.arch == "efficientnet_lstm":
        return EfficientNetLSTM(config, backbone)
    if config.arch == "hsemotion":
        return HSEmotionNet(config, backbone)
    raise ValueError(f"unknown architecture {config.arch!r}")


def to_input(crops, preprocess: Preprocess, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB crops -> normalised float (N, 3, H, W), channels-last in memory."""
    x = torch.as_tensor(crops).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def checkpoint_config(ckpt: dict, source: str | Path = "checkpoint") -> ModelConfig:
    """The ModelConfig a checkpoint describes; WeightsError naming `source` if it is malformed."""
    try:
        return ModelConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: checkpoint does not match its config ({first_line(e)})") from None


def model_from_checkpoint(
    ckpt: dict, source: str | Path = "checkpoint", backbone: nn.Module | None = None
) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights.

    With `backbone` (one that holds its own weights, such as an OpenVINO one) it takes the timm
    network's place and the checkpoint's `backbone.*` tensors are not loaded.
    """
    config = checkpoint_config(ckpt, source)
    try:
        model = build_model(config, backbone)
        state = ckpt["state_dict"]
        if backbone is not None:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{source}: checkpoint does not match its config ({first_line(e)})") from None
    return model


def load_model(
    name_or_path: str | Path = "hsemotion",
    device: str | torch.device = "auto",
    progress=None,
    engine: str | None = None,
    precision: str = "auto",
) -> nn.Module:
    """A ready model in eval mode on `device`, from a registry name or a file.

    `device` as `annotate` takes it: "auto" (the default, as there) is the GPU when torch sees
    one, else the CPU; "cpu", "cuda", "cuda:N" or a torch.device. `engine` "openvino" runs the
    backbone with OpenVINO on the CPU ("auto" then means the CPU), compiled for `precision`
    (see `fercli.nets.engines`); None (the default, as in `annotate`) takes $FER_ENGINE, else
    `engines.default_engine`. The model's `.engine` says which one it has.

    Files may be fer checkpoints (from `fer train`) or HSEmotion-style whole-pickled timm models,
    read by `checkpoints` with the restricted unpickler. The returned module carries `.config`,
    `.source` (what was asked for) and `.weights_sha256`.
    """
    from .engines import place

    return load_placed(name_or_path, place(engine, device, precision), progress)


def load_placed(name_or_path: str | Path, placement, progress=None) -> nn.Module:
    """`load_model` for a settled `engines.Placement` (what `annotate` resolved): resolves nothing again,
    except that a default engine OpenVINO cannot run this checkpoint on gives way to torch (warned)."""
    from .checkpoints import resolve

    ckpt = resolve(name_or_path, progress)
    backbone = None
    if placement.engine == "openvino":
        backbone = _openvino_backbone(ckpt, name_or_path, placement)
    model = model_from_checkpoint(ckpt, name_or_path, backbone)
    model.source = ckpt["source"]
    model.weights_sha256 = ckpt["weights_sha256"]
    model.engine = "torch" if backbone is None else placement.engine
    model.precision = placement.precision  # as it records its engine: what it runs at
    return model.eval().to(placement.device, memory_format=torch.channels_last)


def _openvino_backbone(ckpt: dict, name_or_path, placement) -> nn.Module | None:
    """The checkpoint's backbone on OpenVINO; None (torch's) where the default engine cannot run it."""
    from .engines import openvino_backbone

    config = checkpoint_config(ckpt, name_or_path)

    def torch_backbone():  # called only on a cache miss
        return model_from_checkpoint(ckpt, name_or_path).backbone

    try:
        state, size = ckpt["state_dict"], config.preprocess.size
        return openvino_backbone(state, size, torch_backbone, placement.precision, source=str(name_or_path))
    except FerError as e:
        if not placement.chosen or isinstance(e, WeightsError):  # named, or the checkpoint itself is bad
            raise
        log.warning("%s; the backbone runs with torch (--engine torch says so and skips this)", e)
        return None
