"""`fer train`: the paper's EfficientNet-B0 + LSTM on AFEW-VA, evaluated on clips it never saw.

Stages: check the data (features.labelled_clips: AFEW-VA or Aff-Wild2) -> build the model `fer annotate` runs, with its
backbone weights -> face boxes, and with a frozen backbone one feature per frame (features.prepare,
cached on disk, so every epoch after the first costs only the LSTM) -> windows and the split ->
epochs of `train_one_epoch` and `validate`, early stopping on validation loss -> the best
checkpoint scored once on the test part.

The run folder records itself (after timm's train.py): config.json (resolved options),
split.json (the clip or window lists), summary.csv (one row per epoch), best.pt (a fer
checkpoint that `fer annotate --model` takes), last.pt (also optimizer and RNG state, for
--resume), curves.png (loss and accuracy, the paper's Figure 2) and test.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import DataError, FerError
from ..datasets import examples, features, splits

log = logging.getLogger("fercli")

# --backbone: the paper's Table 2 names -> timm models. efficientnet_b0 is HSEmotion's architecture
# (TF-ported, "same" padding), so its HSEmotion and ImageNet inits share one network.
BACKBONES = {"efficientnet_b0": "tf_efficientnet_b0", "resnet50": "resnet50"}
INITS = ("hsemotion", "imagenet", "random")  # HSEmotion's AffectNet net (efficientnet_b0 only), timm's ImageNet-1k, seeded
# The old --backbone values, still accepted: what they now spell as --backbone and --init.
OLD_BACKBONES = {"hsemotion": ("efficientnet_b0", "hsemotion"), "random": ("efficientnet_b0", "random")}
SPLITS = ("clip", "window")
TEMPORAL = ("lstm", "mean", "none")
# What keeps best.pt and counts patience: "ccc", the mean of valence and arousal CCC over the
# validation windows (what users are scored on); "loss", the paper's Algorithm 1 (validation
# cross-entropy). On synthetic AFEW-VA the validation loss rose from epoch 1 while the validation
# CCC climbed for tens of epochs, so stopping on loss kept a near-useless epoch-1 model.
MONITORS = ("ccc", "loss")
LOSSES = ("ce", "soft")  # plain cross-entropy (the paper's), or against Gaussian soft labels
SOFT_LABEL_SIGMA = 1.0  # classes: the soft label's spread around the true class
# The unpretrained backbone is a fixture, like a pretrained one: the same seed whatever --seed
# says, so its cached features serve every training seed.
RANDOM_BACKBONE_SEED = 0
# Options that may differ when a run is resumed; any other difference is refused. `out` is the
# folder being resumed, wherever it now is; `data` and `split_file` are compared as real paths.
RESUMABLE = ("epochs", "patience", "resume", "device", "cache_dir", "out")
PATH_OPTIONS = ("data", "split_file")
# What a run writes into its folder: any of them there means the folder holds a run (not only
# last.pt, which a user may delete to save space once the run is done).
RUN_FILES = ("last.pt", "best.pt", "config.json", "split.json", "summary.csv", "test.json", "curves.png")
OPTIONS_BEFORE_THEY_EXISTED = {"monitor": "loss", "fraction": 1.0, "loss": "ce", "init": "hsemotion"}
CURVES_EVERY_S = 30.0  # redraw curves.png during a run at most this often; always at its end
METRIC_KEYS = ("loss", "acc_valence", "acc_arousal", "f1_valence", "f1_arousal", "ccc_valence", "ccc_arousal")


@dataclass
class TrainOptions:
    data: Path  # AFEW-VA root (<id>/<id>.json beside its frames) or Aff-Wild2 root (<video>.txt, cropped_aligned/)
    out: Path  # run folder
    split: str = "clip"  # "clip": disjoint clips and actors; "window": paper-like, inflated
    backbone: str = "efficientnet_b0"  # a BACKBONES name ("hsemotion"/"random": the old spelling, see OLD_BACKBONES)
    init: str = "hsemotion"  # where its weights come from: an INITS name
    temporal: str = "lstm"  # "lstm"; "mean" of the frame features; "none": per-frame predictions, averaged
    finetune: bool = False  # train the backbone too (no feature cache; AMP on CUDA)
    epochs: int = 50  # at most
    patience: int = 5  # epochs without a better monitored value before stopping
    monitor: str = "ccc"  # "ccc" (mean validation CCC, higher is better) or "loss" (the paper's rule)
    fraction: float = 1.0  # share of the training clips kept, whole actors at a time (the paper: 0.5)
    loss: str = "ce"  # "ce": the paper's summed cross-entropy; "soft": against soft labels (ordinal-aware)
    batch_size: int = 8  # windows per step (paper)
    lr: float = 1e-4  # Adam (paper)
    window: int = 5  # samples per window, T
    fps: float = 5.0  # model frame rate: samples per second of video
    frames_fps: float = 25.0  # frame rate of the AFEW-VA frame folders
    stride: int = 1  # samples between the ends of consecutive windows
    image_size: int = 224  # face crop side fed to the backbone (px)
    hidden: int = 256  # LSTM hidden size
    seed: int = 0  # model init, batch order, dropout
    split_seed: int | None = None  # None: the split file's seed (splits.DEFAULT_SPLIT_SEED)
    split_file: Path | None = None  # seed/ratios and/or clip lists; None: the default clip split
    crops: str = "detector"  # "detector" (BlazeFace, landmark fallback) or "landmarks"
    resume: bool = False  # continue the run in `out` from last.pt
    device: str = "auto"  # "auto", "cpu" or "cuda"
    cache_dir: Path | None = None  # boxes and features; None: <fer cache>/features

    def __post_init__(self):
        if self.backbone in OLD_BACKBONES:  # the old spelling: --backbone hsemotion|random
            new = OLD_BACKBONES[self.backbone]
            log.warning("--backbone %s is now spelled --backbone %s --init %s", self.backbone, *new)
            self.backbone, self.init = new


@dataclass
class TrainEvent:
    kind: str  # "download" (bytes of the initial weights), "prepare" (clips done/total), "epoch" (started),
    # "batch" (done/total), "epoch_end", "test"
    done: int = 0
    total: int = 0
    epoch: int = 0
    metrics: dict | None = None  # the summary row ("epoch_end") or test metrics ("test")


@dataclass
class TrainResult:
    out: Path
    best: Path  # best.pt: the checkpoint to annotate with
    last: Path
    epochs: int  # epochs completed in this run folder, resumed ones included
    best_epoch: int
    stopped_early: bool
    history: list[dict]  # summary.csv rows
    test: dict  # best checkpoint's metrics on the test part
    windows: dict[str, int]  # windows per part
    prep: features.PrepStats = field(default_factory=features.PrepStats)  # detection/encoding work done now


# --- the run -----------------------------------------------------------------------------------


def train(options: TrainOptions, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train per `options` into the run folder `options.out`; see the module doc."""
    from ..core.devices import resolve_device

    emit = progress or (lambda event: None)
    opts = _checked(options)
    out = Path(opts.out)
    previous = _previous_run(opts, out)
    device = resolve_device(opts.device)
    _seed(opts.seed)

    clips = features.labelled_clips(opts.data)
    model, backbone_sha = initial_model(opts, lambda done, total: emit(TrainEvent("download", done, total or 0)))
    cache = features.FeatureCache(opts.cache_dir or features.default_cache_root())
    samples, prep = features.prepare(
        clips, fps=opts.fps, frames_fps=opts.frames_fps, preprocess=model.config.preprocess, crops=opts.crops,
        cache=cache, model=None if opts.finetune else model.to(device).eval(), weights_sha256=backbone_sha,
        device=device, on_clip=lambda i, n: emit(TrainEvent("prepare", i, n)),
    )
    windows = examples.training_windows(samples, opts.window, opts.stride)
    split, rows = _split(opts, clips, samples, windows)
    config = {**_run_config(opts, model, backbone_sha, split, rows, cache, prep), "device": str(device)}
    if previous is not None:
        _check_same_run(previous, config, split, out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config)
    _write_json(out / "split.json", split.to_dict())

    inputs = _inputs(samples, opts, model, cache, device)
    parts = {p: windows.subset(r) for p, r in rows.items()}
    trainer = _Trainer(opts, model, inputs, parts, device, emit, training_meta(opts, backbone_sha, split))
    if previous is not None:
        trainer.restore(previous["last"])
    trainer.run()
    test = trainer.test()
    return TrainResult(
        out, out / "best.pt", out / "last.pt", len(trainer.history), trainer.best_epoch, trainer.stopped,
        trainer.history, test, {p: len(w) for p, w in parts.items()}, prep,
    )


def _checked(options: TrainOptions) -> TrainOptions:
    o = TrainOptions(**{f.name: getattr(options, f.name) for f in fields(TrainOptions)})
    o.data, o.out = Path(o.data), Path(o.out)
    o.split_file = Path(o.split_file) if o.split_file is not None else None
    o.cache_dir = Path(o.cache_dir) if o.cache_dir is not None else None
    if o.init == "hsemotion" and o.backbone != "efficientnet_b0":
        raise FerError(f"--init hsemotion is an efficientnet_b0 network; --backbone {o.backbone} takes imagenet or random")
    for name, value, allowed in (("split", o.split, SPLITS), ("backbone", o.backbone, tuple(BACKBONES)),
                                 ("init", o.init, INITS),
                                 ("temporal", o.temporal, TEMPORAL), ("crops", o.crops, features.CROP_SOURCES),
                                 ("monitor", o.monitor, MONITORS), ("loss", o.loss, LOSSES)):
        if value not in allowed:
            raise FerError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
    for name in ("epochs", "batch_size", "window", "stride", "image_size", "hidden"):
        if getattr(o, name) < 1:
            raise FerError(f"--{name.replace('_', '-')} must be at least 1")
    if o.patience < 1:
        raise FerError("--patience must be at least 1")
    if not (o.lr > 0 and o.fps > 0 and o.frames_fps > 0):
        raise FerError("--lr, --fps and --frames-fps must be positive")
    if o.split == "window" and o.split_file is not None:
        raise FerError("--split window shuffles windows; a split file only applies to --split clip")
    data, out = (Path(os.path.realpath(p)) for p in (o.data, o.out))
    if out == data or data in out.parents:
        # A run folder inside the data set is read as a clip next time (and breaks the data set).
        raise FerError(f"--out {o.out} is inside --data {o.data}: put the run folder outside the data set")
    return o


def _previous_run(opts: TrainOptions, out: Path) -> dict | None:
    """The run to continue (--resume), after refusing to overwrite one by accident."""
    from ..nets.checkpoints import read_checkpoint

    last = out / "last.pt"
    if out.exists() and not out.is_dir():
        raise FerError(f"--out {out} is a file: the run needs a folder of its own")
    if not opts.resume:
        if last.exists():
            raise FerError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held:
            raise FerError(f"{out} already holds a run ({', '.join(held)}) without its last.pt to resume from: choose another --out")
        return None
    if not last.exists():
        raise FerError(f"{out}: nothing to resume (no last.pt)")
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FerError(f"{out}: cannot resume, config.json or split.json unreadable ({e})") from None
    return {"last": read_checkpoint(last), "config": config, "split": split}


def _check_same_run(previous: dict, config: dict, split: splits.Split, out: Path) -> None:
    # Runs made before these options existed behaved as these values.
    before = {**OPTIONS_BEFORE_THEY_EXISTED, **previous["config"]["options"]}
    if before.get("backbone") in OLD_BACKBONES:
        before["backbone"], before["init"] = OLD_BACKBONES[before["backbone"]]
    before = {k: v for k, v in before.items() if k not in RESUMABLE}
    now = {k: v for k, v in config["options"].items() if k not in RESUMABLE}
    for key in PATH_OPTIONS:  # the same folder spelled another way (from another directory) is the same
        if before.get(key) is not None and now.get(key) is not None and os.path.realpath(before[key]) == now[key]:
            before[key] = now[key]
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        raise FerError(f"{out}: cannot resume with different options ({', '.join(changed)}); use another --out")
    if previous["config"].get("backbone_sha256") != config["backbone_sha256"]:
        raise FerError(f"{out}: cannot resume, the backbone weights changed")
    if {p: previous["split"].get(p) for p in splits.PARTS} != split.parts:
        raise FerError(f"{out}: cannot resume, the data's split differs from the run's split.json (data changed?)")


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _split(opts, clips, samples, windows) -> tuple[splits.Split, dict[str, np.ndarray]]:
    if len(windows) == 0:
        raise DataError(f"{opts.data}: no training windows (clips too short or without faces)")
    doc = splits.read_split_file(opts.split_file) if opts.split_file is not None else {}
    seed = opts.split_seed if opts.split_seed is not None else int(doc.get("seed", splits.DEFAULT_SPLIT_SEED))
    ratios = doc.get("ratios", splits.DEFAULT_RATIOS)
    if opts.split == "window":
        if opts.fraction != 1:
            raise DataError("--fraction keeps whole actors of a clip split; --split window has none")
        return splits.split_windows(windows, samples, seed, ratios)
    lists = {p: doc[p] for p in splits.PARTS} if all(p in doc for p in splits.PARTS) else None
    if lists is None and any(c.part for c in clips):  # the data set's own split (Aff-Wild2)
        split = splits.split_predefined(clips, seed, ratios)
    else:
        split = splits.split_clips(clips, seed, ratios, lists, str(opts.split_file) if opts.split_file else "seeded")
    split = splits.keep_fraction(split, clips, opts.fraction, seed)
    rows = splits.rows_of_clips(windows, samples, split)
    for p, r in rows.items():
        if len(r) == 0:
            raise DataError(f"the {p} part of the clip split has no usable windows ({len(split.parts[p])} clips)")
    return split, rows


# --- the model and its backbone ------------------------------------------------------------------


def model_config(opts: TrainOptions):
    from ..nets.model import ModelConfig, Preprocess

    # HSEmotion's expression classifier is kept on its frozen backbone; fine-tuning moves the
    # features under it and no loss keeps it right, so then it is left out.
    return ModelConfig(backbone=BACKBONES[opts.backbone], fps=opts.fps, window=opts.window,
                       temporal=opts.temporal, hidden=opts.hidden, preprocess=Preprocess(size=opts.image_size),
                       expressions=opts.init == "hsemotion" and not opts.finetune)


def initial_model(opts: TrainOptions, on_bytes: Callable[[int, int | None], None] | None = None):
    """The model `fer annotate` runs, with backbone weights per --backbone/--init; and their SHA-256.

    `on_bytes(done, total)` follows a download of those weights, if one is needed.
    """
    import torch

    from ..nets.model import EfficientNetLSTM

    config = model_config(opts)
    model = EfficientNetLSTM(config)  # heads initialised from --seed
    state, sha = backbone_weights(opts.init, config, on_bytes)
    model.load_backbone(state)
    if not opts.finetune:
        model.backbone.requires_grad_(False)
    return model.to(memory_format=torch.channels_last), sha


def init_weights_name(init: str, arch: str) -> str | None:
    """The registry entry an --init downloads for the timm model `arch`; None when it needs none."""
    return {"hsemotion": "hsemotion", "imagenet": f"imagenet-{arch}"}.get(init)


def backbone_weights(name: str, config, on_bytes=None) -> tuple[dict, str]:
    """(state_dict for EfficientNetLSTM.backbone, SHA-256 naming those weights) for an --init;
    `on_bytes(done, total)` follows their download."""
    if name == "imagenet":
        import torch

        from ..nets import weights

        path = weights.fetch(init_weights_name(name, config.backbone), progress=on_bytes)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file that passed its hash but is no state dict
            raise FerError(f"{path}: not a timm state dict ({e})") from e
        # ImageNet's 1000-way classifier (`fc.` on ResNet, `classifier.` on EfficientNet) is not used.
        return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}, weights.sha256(path)
    if name == "hsemotion":
        from ..nets import checkpoints, weights

        path = weights.fetch(init_weights_name(name, config.backbone), progress=on_bytes)
        state = checkpoints.load_timm_pickle(path)
        # With its 10-way classifier: EfficientNetLSTM.load_backbone keeps rows 0-7 (expressions).
        return state, weights.sha256(path)
    if name == "random":
        state = random_backbone(config)
        return state, state_sha256(state)
    raise FerError(f"--init must be one of {', '.join(INITS)}, not {name!r}")


def random_backbone(config) -> dict:
    """A seeded, unpretrained backbone whose features have a usable scale.

    timm's init shrinks activations ~1e5-fold through the network (features around 1e-5), below
    the head's LayerNorm epsilon, which would flatten them. Scaling the last BatchNorm so that
    features of seeded noise have unit spread fixes the scale without looking at any data.
    """
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        net = timm.create_model(config.backbone, pretrained=False, num_classes=0).eval()
        noise = torch.randn(4, 3, config.preprocess.size, config.preprocess.size)
    if hasattr(net, "bn2"):  # EfficientNet's last BatchNorm; ResNet's init keeps features near 0.05
        with torch.no_grad():
            scale = 1.0 / net(noise).std()
            net.bn2.weight.mul_(scale)
            net.bn2.bias.mul_(scale)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def state_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def training_meta(opts: TrainOptions, backbone_sha: str, split: splits.Split) -> dict:
    """What every checkpoint of the run records about how it was trained."""
    return {
        "split": split.kind,
        "split_seed": split.seed,
        "backbone": opts.backbone,
        "init": opts.init,
        "backbone_sha256": backbone_sha,
        "finetune": opts.finetune,
        "monitor": opts.monitor,
        "fraction": opts.fraction,
        "seed": opts.seed,
        "data": str(opts.data),
    }


def _run_config(opts, model, backbone_sha, split, rows, cache, prep) -> dict:
    import torch

    from .. import __version__

    options = _jsonable(asdict(opts))
    for key in PATH_OPTIONS:  # as real paths: a resume from another directory finds them the same
        if options[key] is not None:
            options[key] = os.path.realpath(options[key])
    return {
        "options": options,
        "model": model.config.to_dict(),
        "backbone_sha256": backbone_sha,
        "split": {"kind": split.kind, "seed": split.seed, "ratios": split.ratios, "source": split.source,
                  "clips": {p: len(v) for p, v in split.parts.items()} if split.kind == "clip" else None,
                  "windows": {p: int(len(r)) for p, r in rows.items()}},
        "optimizer": {"name": "Adam", "lr": opts.lr, "loss": _LOSS_TEXT[opts.loss],
                      "early_stopping": f"{_MONITOR_TEXT[opts.monitor]}, patience {opts.patience}",
                      "monitor": opts.monitor},
        "cache": str(cache.root),
        "data_stats": {"clips": prep.clips, "samples": prep.samples, "skipped": prep.skipped,
                       "from_landmarks": prep.from_landmarks},
        "versions": {"fer": __version__, "torch": torch.__version__},
    }


_LOSS_TEXT = {
    "ce": "cross-entropy(valence) + cross-entropy(arousal)",
    "soft": f"the same against Gaussian soft labels (sigma {SOFT_LABEL_SIGMA} classes)",
}
_MONITOR_TEXT = {"ccc": "mean validation CCC of valence and arousal", "loss": "validation loss"}


def monitored(val: dict, monitor: str) -> float:
    """The value `monitor` ranks epochs by, higher is better (-inf when it is undefined)."""
    if monitor == "loss":
        value = -val["loss"]
    else:
        value = (val["ccc_valence"] + val["ccc_arousal"]) / 2
    return value if math.isfinite(value) else -math.inf


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# --- batches -----------------------------------------------------------------------------------


def _inputs(samples, opts, model, cache, device):
    """What a window's slots index: features (S, F) on the device, or crops (S, H, W, 3) uint8."""
    import torch

    if not opts.finetune:
        return torch.from_numpy(np.concatenate([s.features for s in samples])).to(device)
    key = features.crop_key(opts.crops)
    return torch.from_numpy(np.concatenate([features.clip_crops(s, cache, model.config.preprocess, key) for s in samples]))


class Batches:
    """(inputs, valence class, arousal class, valence mean, arousal mean) per batch of windows;
    shuffled with a seed per epoch, so a resumed run sees the batches an unbroken one would."""

    def __init__(self, inputs, windows: examples.Examples, batch_size: int, device, seed: int | None = None, preprocess=None):
        import torch

        self.inputs, self.batch_size, self.device, self.seed, self.pre = inputs, batch_size, device, seed, preprocess
        self.index = torch.from_numpy(windows.index)
        self.targets = [torch.from_numpy(a).to(device) for a in
                        (windows.valence_class, windows.arousal_class, windows.valence, windows.arousal)]

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def epoch(self, epoch: int):
        import torch

        n = len(self.index)
        if self.seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for i in range(0, n, self.batch_size):
            rows = order[i : i + self.batch_size]
            yield (self._x(self.index[rows]), *(t[rows.to(t.device)] for t in self.targets))

    def _x(self, slots):
        from ..nets.model import to_input

        if self.pre is None:  # features, already on the device
            return self.inputs[slots.to(self.inputs.device)]
        b, t = slots.shape
        crops = self.inputs[slots.flatten()]
        return to_input(crops, self.pre, self.device), (b, t)


def _forward(model, x):
    if isinstance(x, tuple):  # crops: the backbone runs too (end to end)
        crops, (b, t) = x
        return model.head(model.encode(crops).view(b, t, -1))
    return model.head(x)


def _device_type(x) -> str:
    return (x[0] if isinstance(x, tuple) else x).device.type


def _loss(v_logits, a_logits, v_cls, a_cls, kind: str = "ce"):
    import torch.nn.functional as F

    # The paper's objective: the two heads' cross-entropies, summed. "soft": the same against
    # soft labels, so a prediction one class off costs less than one ten classes off.
    if kind == "soft":
        return F.cross_entropy(v_logits.float(), soft_labels(v_cls)) + F.cross_entropy(a_logits.float(), soft_labels(a_cls))
    return F.cross_entropy(v_logits.float(), v_cls) + F.cross_entropy(a_logits.float(), a_cls)


def soft_labels(cls, sigma: float = SOFT_LABEL_SIGMA):
    """(B,) class indices -> (B, 21) distributions: a Gaussian of `sigma` classes around each, normalised."""
    import torch

    from ..core.labels import NUM_CLASSES

    grid = torch.arange(NUM_CLASSES, device=cls.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((grid[None, :] - cls[:, None].float()) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


# --- epochs ------------------------------------------------------------------------------------


def amp_dtype(device):
    """The autocast dtype (a torch.dtype) for fine-tuning on `device`: None (fp32) on a CPU.

    bf16 where the GPU has it (Ampere on): it keeps fp32's range. fp16 overflowed on the H200
    run: a randomly initialised EfficientNet-B0's features pass fp16's largest value (65,504),
    turned to inf and made every prediction NaN (tests/test_loop.py). GPUs without bf16 get
    fp16 with loss scaling, as before.
    """
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_one_epoch(model, batches, optimizer, *, epoch: int = 1, amp=None, scaler=None, frozen: bool = True,
                    on_batch: Callable[[int, int], None] | None = None, loss_kind: str = "ce") -> dict:
    """One pass over the training windows; returns loss, accuracy and CCC per dimension.

    amp: the autocast dtype (None: off); scaler: a GradScaler (fp16 only).
    """
    import torch

    model.train()
    if frozen:
        model.backbone.eval()  # BatchNorm statistics stay those the features were cached with
    acc = _Accumulator()
    total = len(batches)
    for i, (x, v_cls, a_cls, v_mean, a_mean) in enumerate(batches.epoch(epoch)):
        with torch.autocast(_device_type(x), dtype=amp, enabled=amp is not None):
            v_logits, a_logits = _forward(model, x)
            loss = _loss(v_logits, a_logits, v_cls, a_cls, loss_kind)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        acc.add(loss.detach(), v_logits.detach(), a_logits.detach(), v_cls, a_cls, v_mean, a_mean)
        if on_batch:
            on_batch(i + 1, total)
    return acc.metrics()


def validate(model, batches, *, amp=None, loss_kind: str = "ce") -> dict:
    """Loss, accuracy and CCC per dimension on held-out windows, in eval mode (amp: autocast dtype)."""
    import torch

    model.eval()
    acc = _Accumulator()
    with torch.inference_mode():
        for x, v_cls, a_cls, v_mean, a_mean in batches.epoch(0):
            with torch.autocast(_device_type(x), dtype=amp, enabled=amp is not None):
                v_logits, a_logits = _forward(model, x)
            acc.add(_loss(v_logits, a_logits, v_cls, a_cls, loss_kind), v_logits, a_logits, v_cls, a_cls, v_mean, a_mean)
    return acc.metrics()


class _Accumulator:
    """Per-window losses and predictions of an epoch, turned into the summary's metrics.

    A window's prediction for CCC is the expected label under the softmax (as `fer annotate`'s
    valence_score); accuracy compares the argmax class with the rounded mean label."""

    def __init__(self):
        self.loss_sum, self.n = 0.0, 0
        self.parts: dict[str, list] = {k: [] for k in ("vp", "ap", "vc", "ac", "vt", "at", "vm", "am")}

    def add(self, loss, v_logits, a_logits, v_cls, a_cls, v_mean, a_mean) -> None:
        from ..core.labels import LABEL_OFFSET, decode_logits

        b = len(v_cls)
        self.loss_sum += float(loss) * b
        self.n += b
        for key, logits in (("v", v_logits), ("a", a_logits)):
            labels, scores, _ = decode_logits(logits)
            self.parts[f"{key}p"].append(scores.cpu())
            self.parts[f"{key}c"].append((labels + LABEL_OFFSET).cpu())  # class index, as v_cls
        for key, t in (("vt", v_cls), ("at", a_cls), ("vm", v_mean), ("am", a_mean)):
            self.parts[key].append(t.cpu())

    def metrics(self) -> dict:
        import torch

        from ..core.labels import LABEL_OFFSET
        from ..scoring.metrics import ccc, f1_macro

        if self.n == 0:
            return {k: math.nan for k in METRIC_KEYS}
        p = {k: torch.cat(v).double().numpy() for k, v in self.parts.items()}
        return {
            "loss": self.loss_sum / self.n,
            "acc_valence": float(np.mean(p["vc"] == p["vt"])),
            "acc_arousal": float(np.mean(p["ac"] == p["at"])),
            # macro F1 over the 21 classes present in truth or prediction (class index - 10 = label)
            "f1_valence": f1_macro(p["vt"] - LABEL_OFFSET, p["vc"] - LABEL_OFFSET),
            "f1_arousal": f1_macro(p["at"] - LABEL_OFFSET, p["ac"] - LABEL_OFFSET),
            "ccc_valence": float(ccc(p["vm"], p["vp"])),
            "ccc_arousal": float(ccc(p["am"], p["ap"])),
        }


class _Trainer:
    """Epoch loop, early stopping, checkpoints and the run folder's files."""

    def __init__(self, opts, model, inputs, parts, device, emit, meta):
        import torch

        self.opts, self.model, self.device, self.emit, self.meta = opts, model.to(device), device, emit, meta
        self.out = Path(opts.out)
        pre = model.config.preprocess if opts.finetune else None
        self.batches = {
            "train": Batches(inputs, parts["train"], opts.batch_size, device, seed=opts.seed, preprocess=pre),
            "val": Batches(inputs, parts["val"], opts.batch_size, device, preprocess=pre),
            "test": Batches(inputs, parts["test"], opts.batch_size, device, preprocess=pre),
        }
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=opts.lr)
        self.amp = amp_dtype(device) if opts.finetune else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.history: list[dict] = []
        self.best_score, self.best_epoch, self.bad_epochs, self.stopped = -math.inf, 0, 0, False
        self._plotted = time.perf_counter()

    def restore(self, ckpt: dict) -> None:
        import torch

        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        loop = ckpt["loop"]
        self.history = list(loop["history"])
        # Runs from before --monitor kept the best validation loss, and stopped on it.
        self.best_score = loop["best_score"] if "best_score" in loop else -loop["best_loss"]
        self.best_epoch = loop["best_epoch"]
        # Stopped by this run's patience, which a resume may raise: a stopped run then goes on.
        self.bad_epochs = loop["bad_epochs"]
        self.stopped = self.bad_epochs >= self.opts.patience
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        log.info("resuming %s after epoch %d", self.out, len(self.history))

    def run(self) -> None:
        frozen = not self.opts.finetune
        try:
            with _threads(1 if frozen and self.device.type == "cpu" else None):
                for epoch in range(len(self.history) + 1, self.opts.epochs + 1):
                    if self.stopped:
                        break
                    self._epoch(epoch, frozen)
        finally:  # also on Ctrl-C: the curves of every finished epoch
            if self.history:
                plot_curves(self.history, self.out / "curves.png")

    def _epoch(self, epoch: int, frozen: bool) -> None:
        start = time.perf_counter()
        self.emit(TrainEvent("epoch", 0, len(self.batches["train"]), epoch))
        train = train_one_epoch(
            self.model, self.batches["train"], self.optimizer, epoch=epoch, amp=self.amp, scaler=self.scaler, frozen=frozen,
            on_batch=lambda i, n: self.emit(TrainEvent("batch", i, n, epoch)), loss_kind=self.opts.loss,
        )
        val = validate(self.model, self.batches["val"], amp=self.amp, loss_kind=self.opts.loss)
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
               **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - start}
        self.history.append(row)
        self._after_epoch(epoch, row, val)
        self.emit(TrainEvent("epoch_end", epoch, self.opts.epochs, epoch, row))

    def _after_epoch(self, epoch: int, row: dict, val: dict) -> None:
        score = monitored(val, self.opts.monitor)
        if score > self.best_score or self.best_epoch == 0:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self._save(self.out / "best.pt", epoch, val)
        else:
            self.bad_epochs += 1
        # Patience counts epochs without a new best of the monitored value (see MONITORS).
        self.stopped = self.bad_epochs >= self.opts.patience
        self._save_last(epoch, val)
        write_summary(self.out / "summary.csv", self.history)
        if time.perf_counter() - self._plotted > CURVES_EVERY_S:  # a plot costs ~0.3 s; epochs can be faster
            plot_curves(self.history, self.out / "curves.png")
            self._plotted = time.perf_counter()
        if self.stopped:
            log.info("early stop after epoch %d: no better %s for %d epochs (best: epoch %d)",
                     epoch, _MONITOR_TEXT[self.opts.monitor], self.opts.patience, self.best_epoch)

    def _save(self, path: Path, epoch: int, val: dict, **more) -> None:
        from ..nets.checkpoints import save_checkpoint

        save_checkpoint(self.model, path, training={**self.meta, "epoch": epoch, "val": val}, **more)

    def _save_last(self, epoch: int, val: dict) -> None:
        import torch

        loop = {"history": self.history, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "stopped": self.stopped}
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        self._save(self.out / "last.pt", epoch, val, optimizer=self.optimizer.state_dict(), loop=loop, rng=rng,
                   scaler=self.scaler.state_dict() if self.scaler is not None else None)

    def test(self) -> dict:
        """The best checkpoint on the test part, once; recorded in test.json and best.pt."""
        from ..nets.checkpoints import read_checkpoint, save_checkpoint

        best = read_checkpoint(self.out / "best.pt")
        self.model.load_state_dict(best["state_dict"])
        test = validate(self.model, self.batches["test"], amp=self.amp, loss_kind=self.opts.loss)
        training = {**best["training"], "test": test}
        save_checkpoint(self.model, self.out / "best.pt", training=training)
        _write_json(self.out / "test.json", {"best_epoch": self.best_epoch, "split": self.meta["split"],
                                             "windows": len(self.batches["test"].index), **test})
        self.emit(TrainEvent("test", metrics=test))
        return test


@contextmanager
def _threads(n: int | None):
    """Run with `n` torch CPU threads (None: unchanged), restoring the setting after.

    The frozen-backbone epochs are small matmuls (batch 8, 1280 -> 4 x hidden) that gain nothing
    from threads, and OpenMP's spin-waiting collapses when the CPU is shared: measured on 2 cores
    under load, 0.09 s per epoch with one thread against 0.1-8 s with two.
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- run folder files ----------------------------------------------------------------------------


SUMMARY_COLUMNS = ["epoch", *(f"{p}_{k}" for p in ("train", "val") for k in METRIC_KEYS), "seconds"]


def write_summary(path: Path, history: list[dict]) -> None:
    """summary.csv, rewritten whole each epoch (so a resumed run never repeats a row)."""
    from ..core.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, SUMMARY_COLUMNS)
            w.writeheader()
            for row in history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    atomic_write(Path(path), write)


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch for train and validation (the paper's Figure 2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..core.files import atomic_write

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for part, style in (("train", "-"), ("val", "--")):
        loss_ax.plot(epochs, [r[f"{part}_loss"] for r in history], style, color="k", label=part)
        for dim, color in (("valence", "#4c72b0"), ("arousal", "#c44e52")):
            acc_ax.plot(epochs, [r[f"{part}_acc_{dim}"] for r in history], style, color=color, label=f"{part} {dim}")
    loss_ax.set(title="Loss (sum of both heads' cross-entropy)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Accuracy (21 classes)", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    loss_ax.legend(frameon=False)
    acc_ax.legend(frameon=False, fontsize="small")
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return Path(path)


def _write_json(path: Path, doc: dict) -> None:
    from ..core.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
