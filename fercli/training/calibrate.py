"""A run's calibration.json: `fer calibrate`'s file for the final best.pt, made after training from
`fer annotate` on the validation clips (docs/intervals.md).

Only a clip split holds clips out of training; a window split's validation seconds lie in clips
trained on, so such a run gets no calibration.json, and one log line says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..core.errors import FerError
from ..datasets import splits
from .options import TrainOptions
from .records import CALIBRATION_FILE

log = logging.getLogger("fercli")


def calibrate_run(
    opts: TrainOptions, clips, split: splits.Split, device, on_clip: Callable[[int, int], None] | None = None
) -> Path | None:
    """calibration.json beside the final best.pt from `fer annotate` on the validation clips, or
    None and one log line saying why not; `on_clip(done, total)` follows the clips annotated."""
    from ..tables.intervals import write_calibration
    from .evaluate import calibrate_clips

    path = Path(opts.out) / CALIBRATION_FILE
    path.unlink(missing_ok=True)  # a resumed run's was for the best.pt it replaced
    if split.kind != "clip":
        log.warning("no %s: a window split's validation seconds are in clips trained on, not held out", path)
        return None

    def emit(event) -> None:
        if on_clip is not None:
            on_clip(event.done, event.total)

    ids, what, best = split.parts["val"], "validation clips", path.parent / "best.pt"
    try:
        cal = calibrate_clips(opts.data, clips, ids, best, opts.coverage, opts.frames_fps, str(device), what, emit)
    except FerError as e:
        log.warning("no %s: %s", path, e)
        return None
    return write_calibration(cal, path)
