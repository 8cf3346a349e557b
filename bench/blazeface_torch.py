"""fer's face detector network in torch (fercli.media.blazeface_torch) against LiteRT, and timed.

    python bench/blazeface_torch.py [--device cpu|cuda] [--batches 1,8,32]

Checks the torch network's raw outputs and the decoded boxes against LiteRT's on
tests/real_faces.py's frames, and times the network alone per frame at each batch size (median of
REPEAT calls after WARMUP). docs/performance.md ("The face detector") says what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WARMUP, REPEAT = 5, 30


def parity(port, device: str) -> list[str]:
    import real_faces
    import torch

    from fercli.media import blazeface
    from fercli.media.faces import iou

    net = blazeface.BlazeFace()
    lines = []
    for name, frame in real_faces.frames().items():
        x, square = blazeface.to_input(frame)
        with torch.inference_mode():
            boxes_t, scores_t = (t[0].float().cpu().numpy() for t in port(torch.from_numpy(x[None]).to(device)))
        raw = net._net
        raw.set_tensor(net._input, x[None])
        raw.invoke()
        boxes_l, scores_l = raw.get_tensor(net._boxes)[0], raw.get_tensor(net._scores)[0, :, 0]
        a = blazeface.to_frame(blazeface.weighted_nms(*blazeface.decode(boxes_l, scores_l))[0], square)
        b = blazeface.to_frame(blazeface.weighted_nms(*blazeface.decode(boxes_t, scores_t))[0], square)
        low = (
            min((max(iou(tuple(p), tuple(q)) for q in b) for p in a), default=1.0)
            if len(b)
            else (0.0 if len(a) else 1.0)
        )
        lines.append(
            f"{name}: raw boxes max |diff| {np.abs(boxes_l - boxes_t).max():.2e}, "
            f"logits {np.abs(scores_l - scores_t).max():.2e}; "
            f"faces {len(a)} / {len(b)}, lowest IoU {low:.5f}"
        )
    return lines


def timing(port, device: str, batch: int) -> float:
    import torch

    x = torch.rand(batch, 192, 192, 3, device=device) * 2 - 1
    times = []
    with torch.inference_mode():
        for k in range(WARMUP + REPEAT):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            port(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if k >= WARMUP:
                times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def main() -> None:
    global WARMUP, REPEAT  # bench/gpu.py's CPU form asks for a few calls: it proves the plumbing only
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="timed calls (fewer warm-up calls too)")
    args = parser.parse_args()
    WARMUP, REPEAT = min(WARMUP, args.repeat), args.repeat
    from fercli.media.blazeface import verify_model
    from fercli.media.blazeface_torch import BlazeFaceNet

    port = BlazeFaceNet(verify_model()).to(args.device).eval()
    for line in parity(port, args.device):
        print(line)
    for batch in map(int, args.batches.split(",")):
        print(f"torch port on {args.device}, batch {batch}: {timing(port, args.device, batch):.3f} ms per frame")


if __name__ == "__main__":
    main()
