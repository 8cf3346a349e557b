"""The GPU path end to end, before it is a producer of `fer annotate`: clips decoded (NVDEC, or PyAV
and uploaded), faces detected, cropped and encoded without a frame crossing to the host.

    python bench/gpu_path.py OUT.json CLIP... [--model M.pt] [--device cuda] [--decoder gpu|cpu]
                             [--streams 4] [--precision bf16] [--backbone-batch 256]

What a GPU producer does, in the shape `fer annotate` will run it: `--streams` threads each take
clips from one queue and, per batch of samples, run `media.nvdec.DeviceVideo.sample` ->
`TorchFaceDetector.detect_batch` (the boxes, a few numbers per face, are all that reaches the
host) -> `Preprocess.cut_batch`, on a CUDA stream of their own; the main thread encodes the crops
with the backbone in batches of `--backbone-batch` under autocast. Tracking, people and rows are
host work on those few numbers and are not timed here.

Writes OUT.json: decoded and sampled frames and their rates over the whole run (end to end, after
start-up: the model, the detector and the CUDA context are made before the clock starts), the
faces and crops, each stage's seconds summed over the threads that ran it and its share of their
sum, the decoder each clip had (and why not NVDEC), peak GPU memory. bench/gpu.py runs it and
samples the GPU's utilisation meanwhile; its CPU form (--device cpu --decoder cpu) runs in CI.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

SAMPLE_BATCH = 64  # samples per decoder batch (media.nvdec.SAMPLE_BATCH)
QUEUE_CROPS = 8  # crop batches waiting for the backbone, at most: bounds device memory


class Clock:
    """Seconds per stage, summed over threads; a stage ends when its stream's work has."""

    def __init__(self, device):
        self.device = device
        self.seconds = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str):
        import torch

        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        with self._lock:
            self.seconds[name] += time.perf_counter() - start


def producer(
    clips: queue.Queue, crops: queue.Queue, detector, preprocess, rate: float, device, decoder: str, clock, found
):
    """One stream's clips: decode, detect, crop, each batch's crops handed to the backbone."""
    import torch

    from fercli.media.nvdec import DeviceVideo

    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        while (path := clips.get()) is not None:
            with clock.stage("open"):
                video = DeviceVideo(path, device, decoder=decoder)
            with video:
                samples = video.sample(rate, SAMPLE_BATCH)
                found["clips"].append(
                    {
                        "clip": str(path),
                        "decoder": video.info.decoder,
                        "fallback": video.fallback,
                        "frames": video.info.frames,
                    }
                )
                while True:
                    with clock.stage("decode"):
                        batch = next(samples, None)
                    if batch is None:
                        break
                    with clock.stage("detect"):
                        faces = detector.detect_batch(batch.images)
                    index = [i for i, frame in enumerate(faces) for _ in frame]
                    boxes = [d.box for frame in faces for d in frame]
                    with clock.stage("crop"):
                        cut = preprocess.cut_batch(batch.images, index, boxes)
                    found["samples"] += len(batch.index)
                    found["faces"] += len(boxes)
                    if len(boxes):
                        crops.put(cut)
    crops.put(None)


def consumer(crops: queue.Queue, model, preprocess, device, precision: str, batch: int, streams: int, clock) -> int:
    """The backbone on every crop, `batch` at a time, until each producer has finished."""
    import torch

    from fercli.core.devices import autocast
    from fercli.nets.model import to_input

    done, pending, encoded = 0, [], 0

    def encode(parts):
        x = to_input(torch.cat(parts), preprocess, device)
        with clock.stage("backbone"), torch.inference_mode(), autocast(precision, device):
            model.encode(x)
        return len(x)

    while done < streams:
        item = crops.get()
        if item is None:
            done += 1
            continue
        pending.append(item)
        if sum(len(p) for p in pending) >= batch:
            encoded += encode(pending)
            pending = []
    if pending:
        encoded += encode(pending)
    return encoded


def run(
    clips: list[str],
    model_path: str | None,
    device_name: str,
    decoder: str,
    streams: int,
    precision: str,
    backbone_batch: int,
) -> dict:
    import torch

    from fercli.core.devices import resolve_device, resolve_precision
    from fercli.media.blazeface_torch import TorchFaceDetector
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet, load_model

    device = resolve_device(device_name)
    precision = resolve_precision(precision, device)
    if model_path:
        model = load_model(model_path, device, precision="fp32")
    else:
        torch.manual_seed(0)
        model = HSEmotionNet(HSEMOTION_CONFIG).eval().to(device)
    preprocess, rate = model.config.preprocess, model.config.fps
    detector = TorchFaceDetector(device)
    if device.type == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock(device)
    found = {"clips": [], "samples": 0, "faces": 0}
    work, crops = queue.Queue(), queue.Queue(QUEUE_CROPS)
    for clip in clips:
        work.put(clip)
    for _ in range(streams):
        work.put(None)
    start = time.perf_counter()
    threads = [
        threading.Thread(
            target=producer, args=(work, crops, detector, preprocess, rate, device, decoder, clock, found), daemon=True
        )
        for _ in range(streams)
    ]
    for t in threads:
        t.start()
    encoded = consumer(crops, model, preprocess, device, precision, backbone_batch, streams, clock)
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    decoded = sum(c["frames"] for c in found["clips"])
    busy = sum(clock.seconds.values())
    return {
        "setup": {
            "device": str(device),
            "decoder": decoder,
            "streams": streams,
            "precision": precision,
            "backbone_batch": backbone_batch,
            "sample_rate": rate,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "end_to_end_s": round(seconds, 3),
        "decoded_frames": decoded,
        "decoded_fps": round(decoded / seconds, 1),
        "sampled_frames": found["samples"],
        "sampled_fps": round(found["samples"] / seconds, 1),
        "faces": found["faces"],
        "crops_encoded": encoded,
        "stage_s": {k: round(v, 3) for k, v in clock.seconds.items()},
        "stage_share": {k: round(v / busy, 3) for k, v in clock.seconds.items()} if busy else {},
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "clips": found["clips"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("clips", nargs="+")
    parser.add_argument("--model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decoder", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backbone-batch", type=int, default=256)
    a = parser.parse_args()
    result = run(a.clips, a.model, a.device, a.decoder, max(1, a.streams), a.precision, a.backbone_batch)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in result["stage_share"].items())
    print(
        f"{result['decoded_frames']} frames decoded in {result['end_to_end_s']} s: {result['decoded_fps']} frames/s; "
        f"{result['sampled_frames']} samples, {result['faces']} faces; stages: {shares}"
    )


if __name__ == "__main__":
    main()
