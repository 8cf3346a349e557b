"""`fer train`: the paper's EfficientNet-B0 + LSTM on AFEW-VA, evaluated on clips it never saw.

Stages: check the options (`options.checked`) and any run to resume (`resume`) -> the data
(features.labelled_clips: AFEW-VA or Aff-Wild2) -> the model `fer annotate` runs, with its backbone
weights (`nets.backbones`) -> face boxes, and with a frozen backbone one feature per frame
(features.prepare, cached on disk, so every epoch after the first costs only the head) -> windows
and the split -> epochs of `train_one_epoch` and `validate`, early stopping on the monitored value
-> the best checkpoint scored once on the test part -> its calibration from the validation clips
(`calibrate`).

The run folder records itself (`records`): config.json (resolved options), split.json (the clip or
window lists), summary.csv (one row per epoch), best.pt (a fer checkpoint that `fer annotate
--model` takes), last.pt (also optimizer and RNG state, for --resume: `resume.last_state`),
curves.png (loss and accuracy, the paper's Figure 2), test.json and calibration.json (`fer
calibrate`'s file for best.pt, from `fer annotate` on the validation clips: docs/intervals.md).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import DataError
from ..core.labels import DIMENSIONS
from ..datasets import examples, features, splits
from ..nets.backbones import BACKBONES, backbone_weights
from .calibrate import calibrate_run
from .options import MONITOR_TEXT, SOFT_LABEL_SIGMA, TrainOptions, checked
from .records import METRIC_KEYS, run_config, training_meta, write_json, write_summary
from .resume import check_same_run, last_state, previous_run, restore_state

log = logging.getLogger("fercli")

CURVES_EVERY_S = 30.0  # redraw curves.png during a run at most this often (a plot outlasts a small epoch)


@dataclass
class TrainEvent:
    """What `train` reports to its `progress` callback."""

    kind: str  # "download" (bytes of the initial weights), "prepare" (clips done/total), "epoch" (started),
    # "batch" (done/total), "epoch_end", "test", "calibrate" (validation clips annotated/total)
    done: int = 0
    total: int = 0
    epoch: int = 0
    metrics: dict | None = None  # the summary row ("epoch_end") or test metrics ("test")


@dataclass
class TrainResult:
    """What a finished `train` gives back; the run folder holds the same."""

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
    calibration: Path | None = None  # calibration.json for best.pt; None when the validation part cannot make one


# --- the run -----------------------------------------------------------------------------------


def train(options: TrainOptions, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train per `options` into the run folder `options.out`; see the module doc."""
    from ..core.devices import resolve_device

    emit = progress or (lambda event: None)
    opts = checked(options)
    out = Path(opts.out)
    previous = previous_run(opts, out)
    device = resolve_device(opts.device)
    _seed(opts.seed)

    clips = features.labelled_clips(opts.data)
    model, backbone_sha = initial_model(opts, lambda done, total: emit(TrainEvent("download", done, total or 0)))
    cache = features.FeatureCache(opts.cache_dir or features.default_cache_root())
    samples, prep = features.prepare(
        clips,
        fps=opts.fps,
        frames_fps=opts.frames_fps,
        preprocess=model.config.preprocess,
        crops=opts.crops,
        cache=cache,
        model=None if opts.finetune else model.to(device).eval(),
        weights_sha256=backbone_sha,
        device=device,
        on_clip=lambda i, n: emit(TrainEvent("prepare", i, n)),
    )
    windows = examples.training_windows(samples, opts.window, opts.stride)
    split, rows = _split(opts, clips, samples, windows)
    config = {**run_config(opts, model, backbone_sha, split, rows, cache, prep), "device": str(device)}
    if previous is not None:
        check_same_run(previous, config, split, out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    write_json(out / "split.json", split.to_dict())

    inputs = _inputs(samples, opts, model, cache, device)
    parts = {p: windows.subset(r) for p, r in rows.items()}
    trainer = _Trainer(opts, model, inputs, parts, device, emit, training_meta(opts, backbone_sha, split))
    if previous is not None:
        trainer.restore(previous["last"])
    trainer.run()
    test = trainer.test()
    calibration = calibrate_run(opts, clips, split, device, lambda i, n: emit(TrainEvent("calibrate", i, n)))
    windows_per_part = {p: len(w) for p, w in parts.items()}
    return TrainResult(
        out,
        out / "best.pt",
        out / "last.pt",
        len(trainer.history),
        trainer.best_epoch,
        trainer.stopped,
        trainer.history,
        test,
        windows_per_part,
        prep,
        calibration,
    )


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
        source = str(opts.split_file) if opts.split_file else "seeded"
        split = splits.split_clips(clips, seed, ratios, lists, source)
    split = splits.keep_fraction(split, clips, opts.fraction, seed)
    rows = splits.rows_of_clips(windows, samples, split)
    for p, r in rows.items():
        if len(r) == 0:
            raise DataError(f"the {p} part of the clip split has no usable windows ({len(split.parts[p])} clips)")
    return split, rows


# --- the model ---------------------------------------------------------------------------------


def model_config(opts: TrainOptions):
    """The `ModelConfig` a run trains: its timm backbone, head, sampling rate and crop."""
    from ..nets.model import ModelConfig, Preprocess

    # HSEmotion's expression classifier is kept on its frozen backbone; fine-tuning moves the
    # features under it and no loss keeps it right, so then it is left out.
    return ModelConfig(
        backbone=BACKBONES[opts.backbone],
        fps=opts.fps,
        window=opts.window,
        temporal=opts.temporal,
        hidden=opts.hidden,
        preprocess=Preprocess(size=opts.image_size),
        expressions=opts.init == "hsemotion" and not opts.finetune,
    )


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


def monitored(val: dict, monitor: str) -> float:
    """The value `monitor` ranks epochs by, higher is better (-inf when it is undefined)."""
    if monitor == "loss":
        value = -val["loss"]
    else:
        value = (val["ccc_valence"] + val["ccc_arousal"]) / 2
    return value if math.isfinite(value) else -math.inf


# --- batches -----------------------------------------------------------------------------------


def _inputs(samples, opts, model, cache, device):
    """What a window's slots index: features (S, F) on the device, or crops (S, H, W, 3) uint8."""
    import torch

    if not opts.finetune:
        return torch.from_numpy(np.concatenate([s.features for s in samples])).to(device)
    key = features.crop_key(opts.crops)
    crops = [features.clip_crops(s, cache, model.config.preprocess, key) for s in samples]
    return torch.from_numpy(np.concatenate(crops))


class Batches:
    """(inputs, valence class, arousal class, valence mean, arousal mean) per batch of windows;
    shuffled with a seed per epoch, so a resumed run sees the batches an unbroken one would."""

    def __init__(
        self, inputs, windows: examples.Examples, batch_size: int, device, seed: int | None = None, preprocess=None
    ):
        import torch

        self.inputs, self.batch_size, self.device, self.seed = inputs, batch_size, device, seed
        self.preprocess = preprocess
        self.index = torch.from_numpy(windows.index)
        targets = (windows.valence_class, windows.arousal_class, windows.valence, windows.arousal)
        self.targets = [torch.from_numpy(a).to(device) for a in targets]

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

        if self.preprocess is None:  # features, already on the device
            return self.inputs[slots.to(self.inputs.device)]
        b, t = slots.shape
        crops = self.inputs[slots.flatten()]
        return to_input(crops, self.preprocess, self.device), (b, t)


def _forward(model, x):
    if isinstance(x, tuple):  # crops: the backbone runs too (end to end)
        crops, (b, t) = x
        return model.head(model.encode(crops).view(b, t, -1))
    return model.head(x)


def _device_type(x) -> str:
    return (x[0] if isinstance(x, tuple) else x).device.type


# --- the loss ----------------------------------------------------------------------------------


def _loss(v_logits, a_logits, v_cls, a_cls, kind: str = "ce"):
    import torch.nn.functional as F

    # The paper's objective: the two heads' cross-entropies, summed. "soft": the same against
    # soft labels, so a prediction one class off costs less than one ten classes off.
    if kind == "soft":
        v_cls, a_cls = soft_labels(v_cls), soft_labels(a_cls)
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

    bf16 where the GPU has it (Ampere on), since it keeps fp32's range: a random backbone's
    features can pass fp16's largest value (65,504) and turn to inf. Other GPUs get fp16 with
    loss scaling.
    """
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_one_epoch(
    model,
    batches,
    optimizer,
    *,
    epoch: int = 1,
    amp=None,
    scaler=None,
    frozen: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    loss_kind: str = "ce",
) -> dict:
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
            loss = _loss(v_logits, a_logits, v_cls, a_cls, loss_kind)
            acc.add(loss, v_logits, a_logits, v_cls, a_cls, v_mean, a_mean)
    return acc.metrics()


class _Accumulator:
    """Per-window losses and predictions of an epoch, turned into the summary's metrics.

    A window's prediction for CCC is the expected label under the softmax (as `fer annotate`'s
    valence_score); accuracy compares the argmax class with the rounded mean label."""

    # Per dimension: predicted score and class index, true class index and true mean label.
    KINDS = ("score", "class", "true_class", "true_mean")

    def __init__(self):
        self.loss_sum, self.n = 0.0, 0
        self.parts: dict[tuple[str, str], list] = {(d, k): [] for d in DIMENSIONS for k in self.KINDS}

    def add(self, loss, v_logits, a_logits, v_cls, a_cls, v_mean, a_mean) -> None:
        from ..core.labels import LABEL_OFFSET, decode_logits

        b = len(v_cls)
        self.loss_sum += float(loss) * b
        self.n += b
        batch = {"valence": (v_logits, v_cls, v_mean), "arousal": (a_logits, a_cls, a_mean)}
        for dim, (logits, true_class, true_mean) in batch.items():
            labels, scores, _ = decode_logits(logits)
            self.parts[dim, "score"].append(scores.cpu())
            self.parts[dim, "class"].append((labels + LABEL_OFFSET).cpu())  # a class index, as the truth's
            self.parts[dim, "true_class"].append(true_class.cpu())
            self.parts[dim, "true_mean"].append(true_mean.cpu())

    def metrics(self) -> dict:
        import torch

        from ..core.labels import LABEL_OFFSET
        from ..scoring.metrics import ccc, f1_macro

        if self.n == 0:
            return {k: math.nan for k in METRIC_KEYS}
        p = {key: torch.cat(v).double().numpy() for key, v in self.parts.items()}
        out = {"loss": self.loss_sum / self.n}
        for dim in DIMENSIONS:
            predicted, true = p[dim, "class"], p[dim, "true_class"]
            out[f"acc_{dim}"] = float(np.mean(predicted == true))
            # macro F1 over the 21 classes present in truth or prediction (class index - 10 = label)
            out[f"f1_{dim}"] = f1_macro(true - LABEL_OFFSET, predicted - LABEL_OFFSET)
            out[f"ccc_{dim}"] = float(ccc(p[dim, "true_mean"], p[dim, "score"]))
        return {k: out[k] for k in METRIC_KEYS}


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
        """Continue from last.pt: weights, optimizer, the loop's counters and the RNG."""
        loop = restore_state(ckpt, self.model, self.optimizer, self.scaler)
        self.history = list(loop["history"])
        self.best_score, self.best_epoch = loop["best_score"], loop["best_epoch"]
        # Stopped by this run's patience, which a resume may raise: a stopped run then goes on.
        self.bad_epochs = loop["bad_epochs"]
        self.stopped = self.bad_epochs >= self.opts.patience
        log.info("resuming %s after epoch %d", self.out, len(self.history))

    def run(self) -> None:
        """Epochs until --epochs or early stopping; curves.png is drawn whatever ends them."""
        from ..views.plots import plot_curves

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
            self.model,
            self.batches["train"],
            self.optimizer,
            epoch=epoch,
            amp=self.amp,
            scaler=self.scaler,
            frozen=frozen,
            on_batch=lambda i, n: self.emit(TrainEvent("batch", i, n, epoch)),
            loss_kind=self.opts.loss,
        )
        val = validate(self.model, self.batches["val"], amp=self.amp, loss_kind=self.opts.loss)
        row = {
            "epoch": epoch,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.perf_counter() - start,
        }
        self.history.append(row)
        self._after_epoch(epoch, row, val)
        self.emit(TrainEvent("epoch_end", epoch, self.opts.epochs, epoch, row))

    def _after_epoch(self, epoch: int, row: dict, val: dict) -> None:
        from ..views.plots import plot_curves

        score = monitored(val, self.opts.monitor)
        if score > self.best_score or self.best_epoch == 0:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self._save(self.out / "best.pt", epoch, val)
        else:
            self.bad_epochs += 1
        # Patience counts epochs without a new best of the monitored value.
        self.stopped = self.bad_epochs >= self.opts.patience
        self._save_last(epoch, val)
        write_summary(self.out / "summary.csv", self.history)
        if time.perf_counter() - self._plotted > CURVES_EVERY_S:
            plot_curves(self.history, self.out / "curves.png")
            self._plotted = time.perf_counter()
        if self.stopped:
            log.info(
                "early stop after epoch %d: no better %s for %d epochs (best: epoch %d)",
                epoch,
                MONITOR_TEXT[self.opts.monitor],
                self.opts.patience,
                self.best_epoch,
            )

    def _save(self, path: Path, epoch: int, val: dict, **more) -> None:
        from ..nets.checkpoints import save_checkpoint

        save_checkpoint(self.model, path, training={**self.meta, "epoch": epoch, "val": val}, **more)

    def _save_last(self, epoch: int, val: dict) -> None:
        loop = {
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }
        self._save(self.out / "last.pt", epoch, val, **last_state(loop, self.optimizer, self.scaler))

    def test(self) -> dict:
        """The best checkpoint on the test part, once; recorded in test.json and best.pt."""
        from ..nets.checkpoints import read_checkpoint, save_checkpoint

        best = read_checkpoint(self.out / "best.pt")
        self.model.load_state_dict(best["state_dict"])
        test = validate(self.model, self.batches["test"], amp=self.amp, loss_kind=self.opts.loss)
        training = {**best["training"], "test": test}
        save_checkpoint(self.model, self.out / "best.pt", training=training)
        windows = len(self.batches["test"].index)
        record = {"best_epoch": self.best_epoch, "split": self.meta["split"], "windows": windows, **test}
        write_json(self.out / "test.json", record)
        self.emit(TrainEvent("test", metrics=test))
        return test


@contextmanager
def _threads(n: int | None):
    """Run with `n` torch CPU threads (None: unchanged), restoring the setting after.

    The frozen-backbone epochs are small matmuls (batch 8, 1280 -> 4 x hidden) that gain nothing
    from threads, and OpenMP's spin-waiting slows them badly when the CPU is shared.
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
