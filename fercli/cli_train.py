"""`fer train`: the EfficientNet-B0 + LSTM model trained on labelled clips."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from .cli_common import DeviceOption, VerboseOption, command_console, exits
from .cli_display import TrainProgress, train_summary

TRAIN_EPILOG = """
Examples:

  fer train --data afew-va/ --out runs/paper

  fer train --data afew-va/ --out runs/mean --temporal mean     # does the LSTM matter?

  fer train --data afew-va/ --out runs/leaky --split window     # how much a window split inflates scores

  fer train --data afew-va/ --out runs/paper --resume --epochs 80

  fer annotate videos/ --out results.parquet --model runs/paper/best.pt
"""


def _train_interrupted(out: Path, **_) -> Callable[[], str]:
    return lambda: f"interrupted: finished epochs are in {out}; run again with --resume to continue"


@exits(on_interrupt=_train_interrupted)
def train(
    data: Path = typer.Option(
        ...,
        "--data",
        help="AFEW-VA folder (one folder per clip, frames and <id>.json) or Aff-Wild2 root (<video>.txt files, "
        "cropped_aligned/).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run folder: config, split, summary.csv, best.pt, last.pt, curves.png, calibration.json.",
    ),
    split: str = typer.Option(
        "clip",
        help="clip: train/val/test disjoint by clip and actor; window: paper-like random windows (inflated).",
    ),
    backbone: str = typer.Option(
        "efficientnet_b0",
        help="efficientnet_b0 (HSEmotion's architecture) or resnet50 (timm models).",
    ),
    init: str = typer.Option(
        "hsemotion",
        help="hsemotion (AffectNet, efficientnet_b0 only), imagenet (timm's ImageNet-1k; both downloaded once, "
        "verified) or random (seeded, offline).",
    ),
    temporal: str = typer.Option(
        "lstm",
        help="lstm; mean of the frame features; none: per-frame predictions averaged (ABAW baseline).",
    ),
    finetune: bool = typer.Option(False, "--finetune", help="Train the backbone too (no feature cache; AMP on CUDA)."),
    epochs: int = typer.Option(50, min=1, help="Maximum epochs."),
    patience: int = typer.Option(5, min=1, help="Stop after this many epochs without a better --monitor value."),
    fraction: float = typer.Option(
        1.0,
        min=0.0,
        max=1.0,
        help="Share of the training clips kept, whole actors at a time (the paper: 0.5).",
    ),
    loss: str = typer.Option(
        "ce",
        help="ce: the paper's summed cross-entropy; soft: against Gaussian soft labels (ordinal-aware).",
    ),
    monitor: str = typer.Option(
        "ccc",
        help="ccc: keep and stop by mean validation CCC; loss: by validation loss (the paper's).",
    ),
    batch_size: int = typer.Option(8, min=1, help="Windows per step."),
    lr: float = typer.Option(1e-4, min=0.0, help="Adam learning rate."),
    window: int = typer.Option(5, min=1, help="Frames per window (T)."),
    fps: float = typer.Option(5.0, min=0.001, help="Frames sampled per second of video."),
    frames_fps: float = typer.Option(
        25.0,
        min=0.001,
        help="Frame rate of the frame folders (frames/s): AFEW-VA 25; Aff-Wild2 the video's, mostly 30.",
    ),
    seed: int = typer.Option(0, help="Seed for initialisation, batch order and dropout (the split has its own)."),
    split_file: Optional[Path] = typer.Option(
        None,
        help="Split definition: {seed, ratios} or train/val/test clip lists.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    coverage: float = typer.Option(
        0.9,
        help="Share of seconds calibration.json's intervals hold, 0..1 exclusive (fer calibrate, on the val clips).",
    ),
    device: DeviceOption = "auto",
    verbose: VerboseOption = False,
) -> None:
    """Train the EfficientNet-B0 + LSTM model on AFEW-VA or Aff-Wild2; its best.pt is a --model for annotate."""
    from .training.loop import train as run_train
    from .training.options import TrainOptions

    console = command_console(verbose, device)
    options = TrainOptions(
        data,
        out,
        split=split,
        backbone=backbone,
        init=init,
        temporal=temporal,
        finetune=finetune,
        epochs=epochs,
        patience=patience,
        monitor=monitor,
        fraction=fraction,
        loss=loss,
        batch_size=batch_size,
        lr=lr,
        window=window,
        fps=fps,
        frames_fps=frames_fps,
        seed=seed,
        split_file=split_file,
        resume=resume,
        device=device,
        coverage=coverage,
    )
    with TrainProgress(console) as bar:
        result = run_train(options, progress=bar.update)
    train_summary(console, result)
