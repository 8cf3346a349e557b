"""Face detector latency per frame: fer's BlazeFace on LiteRT, or mediapipe 0.10.21's.

    python bench/detector.py fer [--threads N] [--batch B]
    python bench/detector.py mediapipe        # in an environment with mediapipe==0.10.21

Times `detect` on frames from tests/real_faces.py (one face, 640x360 and 1280x720, and the two-face
1280x720 frame where opencv-doc is installed): WARMUP calls, then REPEAT timed calls per frame;
prints the median and the 10th-90th percentile in ms. With --batch B (fer only) the network alone
runs B inputs per call, the time divided by B: what batching the detector would give.
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
import real_faces  # noqa: E402

WARMUP, REPEAT = 20, 200


def frames() -> dict[str, np.ndarray]:
    made = real_faces.frames()
    picked = {"640x360 one face": made["moving_2"], "1280x720 one face": made["small_720p"]}
    if "two_faces" in made:
        picked["1280x720 two faces"] = made["two_faces"]
    return picked


def fer_detector(threads: int):
    from fercli.media import blazeface

    net = blazeface.BlazeFace(threads=threads)
    return lambda image: net(image)


def mediapipe_detector():
    import mediapipe as mp

    det = mp.solutions.face_detection.FaceDetection(model_selection=1)
    return lambda image: det.process(image)


def time_calls(call, image) -> list[float]:
    for _ in range(WARMUP):
        call(image)
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        call(image)
        times.append((time.perf_counter() - start) * 1000)
    return times


def batched(threads: int, batch: int) -> list[float]:
    from ai_edge_litert.interpreter import Interpreter

    from fercli.media import blazeface

    net = Interpreter(model_content=blazeface.verify_model(), num_threads=threads)
    index = net.get_input_details()[0]["index"]
    net.resize_tensor_input(index, [batch, 192, 192, 3])
    net.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 192, 192, 3)).astype(np.float32)
    net.set_tensor(index, x)
    return [t / batch for t in time_calls(lambda _: net.invoke(), None)]


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return f"{statistics.median(times):.2f} ms ({q[0]:.2f}-{q[-1]:.2f})"


def main() -> None:
    global WARMUP, REPEAT  # bench/gpu.py's CPU form asks for a few calls: it proves the plumbing only
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["fer", "mediapipe"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=REPEAT, help="timed calls (fewer warm-up calls too)")
    args = parser.parse_args()
    WARMUP, REPEAT = min(WARMUP, args.repeat), args.repeat
    if args.batch:
        print(
            f"network alone, batch {args.batch}, {args.threads} thread(s): "
            f"{summary(batched(args.threads, args.batch))} per frame"
        )
        return
    call = fer_detector(args.threads) if args.impl == "fer" else mediapipe_detector()
    for name, image in frames().items():
        print(f"{args.impl} {name}: {summary(time_calls(call, np.ascontiguousarray(image)))}")


if __name__ == "__main__":
    main()
