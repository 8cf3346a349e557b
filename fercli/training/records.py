"""What a training run records in its folder (after timm's train.py): config.json, summary.csv, test.json.

`run_config` is the resolved options, model, split and data of a run (config.json); `training_meta`
is what each checkpoint says about how it was trained; `write_summary` rewrites summary.csv, one
row per epoch. `RUN_FILES` names every file a run writes, so a folder holding any of them is a run.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path

from ..core.files import atomic_write
from .options import LOSS_TEXT, MONITOR_TEXT, TrainOptions

# Any of these in a folder means it holds a run (not only last.pt, which a user may delete to save
# space once the run is done).
CALIBRATION_FILE = "calibration.json"  # best.pt's intervals, from the validation part (`fer calibrate`'s file)
RUN_FILES = (
    "last.pt",
    "best.pt",
    "config.json",
    "split.json",
    "summary.csv",
    "test.json",
    "curves.png",
    CALIBRATION_FILE,
)
# Options recorded as real paths, so a resume from another directory finds them the same.
PATH_OPTIONS = ("data", "split_file")
# An epoch's metrics on one part, as train_one_epoch and validate return them.
METRIC_KEYS = ("loss", "acc_valence", "acc_arousal", "f1_valence", "f1_arousal", "ccc_valence", "ccc_arousal")
SUMMARY_COLUMNS = ["epoch", *(f"{p}_{k}" for p in ("train", "val") for k in METRIC_KEYS), "seconds"]


def run_config(opts: TrainOptions, model, backbone_sha: str, split, rows: dict, cache, prep) -> dict:
    """config.json: the resolved options, the model's config, the split and the data's numbers."""
    import torch

    from .. import __version__

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    for key in PATH_OPTIONS:
        if options[key] is not None:
            options[key] = os.path.realpath(options[key])
    return {
        "options": options,
        "model": model.config.to_dict(),
        "backbone_sha256": backbone_sha,
        "split": {
            "kind": split.kind,
            "seed": split.seed,
            "ratios": split.ratios,
            "source": split.source,
            "clips": {p: len(v) for p, v in split.parts.items()} if split.kind == "clip" else None,
            "windows": {p: int(len(r)) for p, r in rows.items()},
        },
        "optimizer": {
            "name": "Adam",
            "lr": opts.lr,
            "loss": LOSS_TEXT[opts.loss],
            "early_stopping": f"{MONITOR_TEXT[opts.monitor]}, patience {opts.patience}",
            "monitor": opts.monitor,
        },
        "cache": str(cache.root),
        "data_stats": {
            "clips": prep.clips,
            "samples": prep.samples,
            "skipped": prep.skipped,
            "from_landmarks": prep.from_landmarks,
        },
        "versions": {"fer": __version__, "torch": torch.__version__},
    }


def training_meta(opts: TrainOptions, backbone_sha: str, split) -> dict:
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


def write_summary(path: Path, history: list[dict]) -> None:
    """summary.csv, rewritten whole each epoch (so a resumed run never repeats a row)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, SUMMARY_COLUMNS)
            w.writeheader()
            for row in history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    atomic_write(Path(path), write)


def write_json(path: Path, doc: dict) -> None:
    """`doc` as indented JSON at `path`, written atomically (paths and other objects as text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
