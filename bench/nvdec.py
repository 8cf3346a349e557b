"""GPU decoding (NVIDIA's PyNvVideoCodec, NVDEC through the driver) against fer's CPU decoding.

    python bench/nvdec.py OUT.json CLIP... [--workers 16] [--streams 1,2,4,8]

Decides whether PyNvVideoCodec earns a place as `fercli[gpu]` (issue: GPU decoding a pip user can
really get). Three measurements on the same clips, each after its processes have started and
imported what they need (a barrier), so only decoding is timed:

- pyav: fer's own reader (`fercli.media.decode.open_video(...).sample(rate)`: every frame decoded,
  the sampled ones converted to RGB) in `--workers` processes, one clip per task, as fer's
  worker processes decode;
- nvdec: PyNvVideoCodec's SimpleDecoder in S processes (one NVDEC session each), every frame
  decoded to interleaved RGB in GPU memory, the sampled ones copied to the host (where fer's
  face detector runs), for each S in --streams;
- parity: the first clip's frames at a few indices from both decoders (mean and largest
  absolute difference in 8-bit RGB).

rate: the default model's sampling rate (frames/s). Writes one JSON; prints a line per result.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

NVDEC_BATCH = 32  # frames asked of the decoder per call
PARITY_INDICES = (0, 1, 37, 250, 1000)  # frames compared between the decoders (those the clip has)


def _rate() -> float:
    from fercli.nets.model import HSEMOTION_CONFIG

    return HSEMOTION_CONFIG.fps


def _pyav_clip(path: str, rate: float) -> tuple[int, int]:
    from fercli.media.decode import open_video

    with open_video(path) as video:
        sampled = sum(1 for _ in video.sample(rate))
        return video.info.frames, sampled


def _nvdec_clip(path: str, rate: float) -> tuple[int, int]:
    import PyNvVideoCodec as nvc
    import torch

    decoder = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    fps = decoder.get_stream_metadata().average_fps or 25.0
    step = max(1, round(fps / rate))
    decoded = sampled = 0
    while frames := decoder.get_batch_frames(NVDEC_BATCH):
        for k, frame in enumerate(frames):
            if (decoded + k) % step == 0:
                torch.from_dlpack(frame).cpu()  # to the host, where the detector runs
                sampled += 1
        decoded += len(frames)
    return decoded, sampled


def _worker(kind: str, rate: float, tasks, results, ready, go) -> None:
    decode = {"pyav": _pyav_clip, "nvdec": _nvdec_clip}[kind]
    if kind == "nvdec":
        import PyNvVideoCodec  # noqa: F401
        import torch

        torch.zeros(1, device="cuda")  # the CUDA context, before the clock starts
    else:
        import av  # noqa: F401
    ready.put(1)
    go.wait()
    while (path := tasks.get()) is not None:
        try:
            results.put(("ok", *decode(path, rate)))
        except Exception as error:  # a clip that fails is reported, not a hung benchmark
            results.put(("error", f"{path}: {type(error).__name__}: {error}", 0))


def measure(kind: str, clips: list[str], processes: int, rate: float) -> dict:
    """Decoded frames/s of `processes` processes sharing the clips (one clip per task)."""
    ctx = mp.get_context("spawn")
    tasks, results, ready, go = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    for clip in clips:
        tasks.put(clip)
    for _ in range(processes):
        tasks.put(None)
    procs = [
        ctx.Process(target=_worker, args=(kind, rate, tasks, results, ready, go), daemon=True) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    start = time.perf_counter()
    go.set()
    done = [results.get(timeout=600) for _ in clips]
    seconds = time.perf_counter() - start
    for p in procs:
        p.join(timeout=30)
    errors = [d[1] for d in done if d[0] == "error"]
    decoded = sum(d[1] for d in done if d[0] == "ok")
    sampled = sum(d[2] for d in done if d[0] == "ok")
    return {
        "kind": kind,
        "processes": processes,
        "clips": len(clips),
        "seconds": round(seconds, 6),
        "decoded_frames": decoded,
        "sampled_frames": sampled,
        "decoded_fps": round(decoded / seconds, 1),
        "errors": errors[:3],
    }


def parity(clip: str) -> dict:
    """The same frames from both decoders, compared pixel by pixel."""
    import numpy as np
    import PyNvVideoCodec as nvc
    import torch

    from fercli.media.decode import open_video

    decoder = nvc.SimpleDecoder(clip, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    indices = [i for i in PARITY_INDICES if i < len(decoder)]
    gpu = [torch.from_dlpack(f).cpu().numpy() for f in decoder.get_batch_frames_by_index(indices)]
    with open_video(clip) as video:
        cpu = video._reader.read(indices)
    out = []
    for i, a, b in zip(indices, gpu, cpu):
        if a.shape != b.shape:
            out.append({"index": i, "shape_nvdec": list(a.shape), "shape_pyav": list(b.shape)})
            continue
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        out.append(
            {
                "index": i,
                "mean_abs": round(float(d.mean()), 3),
                "max_abs": int(d.max()),
                "over_8": round(float((d > 8).mean()), 5),
            }
        )
    return {"clip": clip, "frames": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("clips", nargs="+")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--streams", default="1,2,4,8")
    args = parser.parse_args()
    rate = _rate()
    report: dict = {"rate": rate, "results": []}

    def record(name: str, run) -> None:
        try:
            result = run()
        except Exception as error:  # keep the other measurements
            result = {"kind": name, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)
        report["results"].append(result)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    record("pyav", lambda: measure("pyav", args.clips, args.workers, rate))
    streams = [int(s) for s in args.streams.split(",") if s]
    if streams and importlib.util.find_spec("PyNvVideoCodec") is None:
        record("nvdec", lambda: {"kind": "nvdec", "error": "PyNvVideoCodec is not installed"})
        return
    if streams:
        record("parity", lambda: parity(args.clips[0]))
    for s in streams:
        record("nvdec", lambda s=s: measure("nvdec", args.clips, s, rate))


if __name__ == "__main__":
    main()
