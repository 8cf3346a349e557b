"""`fer train --resume`: the run a folder holds, the refusal to continue it under other settings,
and what last.pt holds to continue from.

Without --resume a folder holding a run is never written over; with it, the options (but those in
`RESUMABLE`), the backbone weights and the data's split must be the run's own. Beside the weights,
last.pt keeps the optimizer's (and the loss scaler's) state, the epoch loop's counters and the RNG
(`last_state`), so a resumed run goes on as an unbroken one would (`restore_state`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import FerError
from ..datasets import splits
from .options import TrainOptions
from .records import PATH_OPTIONS, RUN_FILES

# Options that may differ when a run is resumed; `out` is the folder being resumed, wherever it now is.
RESUMABLE = ("epochs", "patience", "resume", "device", "cache_dir", "out", "coverage")


def previous_run(opts: TrainOptions, out: Path) -> dict | None:
    """The run to continue (--resume: its last.pt, config and split), after refusing to overwrite one."""
    from ..nets.checkpoints import read_checkpoint

    last = out / "last.pt"
    if out.exists() and not out.is_dir():
        raise FerError(f"--out {out} is a file: the run needs a folder of its own")
    if not opts.resume:
        if last.exists():
            raise FerError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held:
            files = ", ".join(held)
            raise FerError(
                f"{out} already holds a run ({files}) without its last.pt to resume from: choose another --out"
            )
        return None
    if not last.exists():
        raise FerError(f"{out}: nothing to resume (no last.pt)")
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FerError(f"{out}: cannot resume, config.json or split.json unreadable ({e})") from None
    return {"last": read_checkpoint(last), "config": config, "split": split}


def check_same_run(previous: dict, config: dict, split: splits.Split, out: Path) -> None:
    """FerError unless `config` and `split` (this run's) continue `previous` (`previous_run`'s)."""
    before = {k: v for k, v in previous["config"]["options"].items() if k not in RESUMABLE}
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


def last_state(loop: dict, optimizer, scaler=None) -> dict:
    """What last.pt holds beside the weights: the optimizer's state, the loop's counters (`loop`),
    the RNG of torch and of every CUDA device, and the loss scaler's state (None without one)."""
    import torch

    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    rng = {"torch": torch.get_rng_state(), "cuda": cuda_rng}
    scaler_state = scaler.state_dict() if scaler is not None else None
    return {"optimizer": optimizer.state_dict(), "loop": loop, "rng": rng, "scaler": scaler_state}


def restore_state(ckpt: dict, model, optimizer, scaler=None) -> dict:
    """Load last.pt's weights, optimizer and scaler state and RNG (`last_state`'s) into this run;
    returns the loop's counters."""
    import torch

    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return ckpt["loop"]
