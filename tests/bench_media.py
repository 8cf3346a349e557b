"""The media behind the performance figures of docs/performance.md (not a test).

    python tests/bench_media.py OUT        # v0-v2.mp4, s0-s2.mp4 (10 s 720p), m1.mp4 and m60.mp4 (320x240), lstm.pt

v0-v2: a portrait moving across a 1280x720 gradient with mild noise, 25 fps, x264 ultrafast.
s0-s2: the same, but the portrait sways a few pixels about one place, as a seated interviewee does.
m1/m60: 1 and 60 minutes at 320x240, 25 fps, a portrait swaying side to side. lstm.pt: a random
EfficientNet + LSTM checkpoint with the default config (224 px, 5 frames/s, T = 5).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import media

FPS = 25  # frames/s of every clip


def moving_clips(out: Path) -> None:
    for i in range(3):
        path = out / f"v{i}.mp4"
        if not path.exists():
            media.make_clip(
                path, 10.0, FPS, (1280, 720), lambda t, i=i: [(200 + int(60 * t) + 100 * i, 120 + int(20 * t), 360)]
            )


def still_clips(out: Path) -> None:
    for i in range(3):
        path = out / f"s{i}.mp4"
        if not path.exists():
            sway = lambda t, i=i: [(300 + 200 * i + int(4 * math.sin(2 * t)), 150 + int(2 * math.sin(3 * t)), 360)]  # noqa: E731
            media.make_clip(path, 10.0, FPS, (1280, 720), sway)


def long_clip(path: Path, minutes: float, size: tuple[int, int] = (320, 240)) -> None:
    """A long clip made from a few precomputed backgrounds, so writing it stays fast."""
    if path.exists():
        return
    w, h = size
    side = h // 2
    face = media.portrait(side)
    backgrounds = [media.background(w, h, seed=s) for s in range(8)]

    def frames():
        for i in range(int(minutes * 60 * FPS)):
            frame = backgrounds[i % len(backgrounds)].copy()
            x = int((w - side) / 2 + (w - side) / 3 * math.sin(i / FPS / 3))
            frame[h // 4 : h // 4 + side, x : x + side] = face
            yield frame

    media.write_video(path, frames(), FPS)


def checkpoint(path: Path) -> None:
    import torch

    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import EfficientNetLSTM, ModelConfig

    torch.manual_seed(0)
    save_checkpoint(EfficientNetLSTM(ModelConfig()).eval(), path)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    moving_clips(out)
    still_clips(out)
    long_clip(out / "m1.mp4", 1)
    long_clip(out / "m60.mp4", 60)
    checkpoint(out / "lstm.pt")
