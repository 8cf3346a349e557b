"""What `fer train` takes (`TrainOptions`), the values each option may hold, and their check.

`checked` runs before any work: a bad value is one line naming the option, and a run folder that
would land inside the data set is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.errors import FerError
from ..datasets import features
from ..nets.backbones import BACKBONES, INITS
from ..scoring.calibration import COVERAGE

SPLITS = ("clip", "window")
TEMPORAL = ("lstm", "mean", "none")
# What keeps best.pt and counts patience: "ccc", the mean validation CCC of valence and arousal
# (what users are scored on), or "loss", the paper's Algorithm 1 (validation cross-entropy).
MONITORS = ("ccc", "loss")
LOSSES = ("ce", "soft")  # plain cross-entropy (the paper's), or against Gaussian soft labels
SOFT_LABEL_SIGMA = 1.0  # classes: the soft label's spread around the true class
# How config.json and the log describe a --loss and a --monitor.
LOSS_TEXT = {
    "ce": "cross-entropy(valence) + cross-entropy(arousal)",
    "soft": f"the same against Gaussian soft labels (sigma {SOFT_LABEL_SIGMA} classes)",
}
MONITOR_TEXT = {"ccc": "mean validation CCC of valence and arousal", "loss": "validation loss"}


@dataclass
class TrainOptions:
    """The options of one `fer train` run; `fercli.training.train` takes them."""

    data: Path  # AFEW-VA root (<id>/<id>.json beside its frames) or Aff-Wild2 root (<video>.txt, cropped_aligned/)
    out: Path  # run folder
    split: str = "clip"  # "clip": disjoint clips and actors; "window": paper-like, inflated
    backbone: str = "efficientnet_b0"  # a BACKBONES name
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
    coverage: float = COVERAGE  # nominal coverage of calibration.json's intervals, from the validation part


def checked(options: TrainOptions) -> TrainOptions:
    """A copy of `options` with paths as Paths; FerError (one line, naming the option) for a bad value."""
    o = TrainOptions(**{f.name: getattr(options, f.name) for f in fields(TrainOptions)})
    o.data, o.out = Path(o.data), Path(o.out)
    o.split_file = Path(o.split_file) if o.split_file is not None else None
    o.cache_dir = Path(o.cache_dir) if o.cache_dir is not None else None
    _check_choices(o)
    _check_numbers(o)
    if o.split == "window" and o.split_file is not None:
        raise FerError("--split window shuffles windows; a split file only applies to --split clip")
    data, out = (Path(os.path.realpath(p)) for p in (o.data, o.out))
    if out == data or data in out.parents:  # the next run would read the run folder as a clip
        raise FerError(f"--out {o.out} is inside --data {o.data}: put the run folder outside the data set")
    return o


def _check_choices(o: TrainOptions) -> None:
    choices = (
        ("split", o.split, SPLITS),
        ("backbone", o.backbone, tuple(BACKBONES)),
        ("init", o.init, INITS),
        ("temporal", o.temporal, TEMPORAL),
        ("crops", o.crops, features.CROP_SOURCES),
        ("monitor", o.monitor, MONITORS),
        ("loss", o.loss, LOSSES),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            raise FerError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
    if o.init == "hsemotion" and o.backbone != "efficientnet_b0":
        raise FerError(
            f"--init hsemotion is an efficientnet_b0 network; --backbone {o.backbone} takes imagenet or random"
        )


def _check_numbers(o: TrainOptions) -> None:
    for name in ("epochs", "patience", "batch_size", "window", "stride", "image_size", "hidden"):
        if getattr(o, name) < 1:
            raise FerError(f"--{name.replace('_', '-')} must be at least 1")
    if not (o.lr > 0 and o.fps > 0 and o.frames_fps > 0):
        raise FerError("--lr, --fps and --frames-fps must be positive")
    if not 0 < o.coverage < 1:
        raise FerError(f"--coverage must lie between 0 and 1, not {o.coverage}")
