"""Decoding at the model's rate: every packet decoded against the unreferenced unseen ones left unsent.

    python bench/decode.py WORK [--seconds 30] [--repeat 5] [--rate 5] [--threads 1]

Makes, once, under WORK: a clip of SECONDS at 1280x720, 25 frames/s, per codec (tests/media.py's
portrait moving over a noisy gradient), each with its encoder's own default settings unless
named: H.264 (x264 defaults, B-frames), H.264 without B-frames (`bf=0`, as phones and
ultrafast write), HEVC (x265 defaults), MPEG-4 Part 2 with 2 B-frames, VP9 and AV1 (where
nothing can be skipped: the same work both ways). Then, for each clip, opens it and reads every
sample at RATE (`VideoSource.sample`: decoding and the RGB conversion of each sample), once with
`skip_unseen=False` (every packet decoded, as before) and once as annotate does, REPEAT times
each, alternating; prints the median wall and CPU seconds of each (open included: the index and
its header scan), the packets sent and skipped, and checks the samples are bit for bit the same.
The machine may be shared: CPU seconds (this process's) are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's fercli, and the tests' media maker
FPS = 25  # frames/s of every clip
SIZE = (1280, 720)
BACKGROUNDS = 8  # noisy backgrounds cycled through, so writing a clip stays fast
# name: (encoder, pixel format, encoder options)
CODECS = {
    "h264.mp4": ("libx264", "yuv420p", {}),
    "h264_nob.mp4": ("libx264", "yuv420p", {"bf": "0"}),
    "hevc.mp4": ("libx265", "yuv420p", {"x265-params": "log-level=error"}),
    "mpeg4.mp4": ("mpeg4", "yuv420p", {"bf": "2", "q:v": "4"}),
    "vp9.webm": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}),
    "av1.mp4": ("libsvtav1", "yuv420p", {"preset": "10"}),
}


def frames(seconds: float):
    """The portrait (200 px) moving across the frame over backgrounds with fresh noise."""
    import media

    width, height = SIZE
    face = media.portrait(200)
    backgrounds = [media.background(width, height, seed=s) for s in range(BACKGROUNDS)]
    for i in range(round(seconds * FPS)):
        t = i / FPS
        frame = backgrounds[i % BACKGROUNDS].copy()
        x, y = int(540 + 400 * np.sin(t / 2)), int(260 + 150 * np.sin(t / 3))
        frame[y : y + 200, x : x + 200] = face
        yield frame


def make_clips(work: Path, seconds: float) -> list[Path]:
    import media

    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (codec, pix_fmt, options) in CODECS.items():
        path = work / f"{Path(name).stem}_{seconds:g}s{Path(name).suffix}"
        if not path.exists():
            partial = path.with_name(f"partial-{path.name}")
            media.write_coded(partial, frames(seconds), FPS, codec, pix_fmt, options=options)
            partial.rename(path)
        paths.append(path)
    return paths


def read_samples(path: Path, rate: float, threads: int, skip: bool):
    """(wall s, CPU s of this process, the samples' (source, time, image digest), packet counts)
    to open the clip and read every sample."""
    from fercli.media.decode import open_video

    start, cpu = time.perf_counter(), time.process_time()
    seen = []
    with open_video(path, threads=threads, skip_unseen=skip) as video:
        for frame in video.sample(rate):
            seen.append((frame.source, frame.time, hash(frame.image.tobytes())))
        counts = video.packets
    return time.perf_counter() - start, time.process_time() - cpu, seen, counts


def measure(path: Path, rate: float, threads: int, repeat: int) -> dict:
    wall, cpu = {False: [], True: []}, {False: [], True: []}
    seen = {}
    for _ in range(repeat):
        for skip in (False, True):
            seconds, cpu_s, seen[skip], counts = read_samples(path, rate, threads, skip)
            wall[skip].append(seconds)
            cpu[skip].append(cpu_s)
    figures = {
        "clip": path.name,
        "packets_sent": counts.sent,
        "packets_skipped": counts.skipped,
        "samples": len(seen[True]),
        "identical": seen[True] == seen[False],
    }
    for name, runs in (("wall", wall), ("cpu", cpu)):
        full, skipping = statistics.median(runs[False]), statistics.median(runs[True])
        figures |= {
            f"{name}_full_s": round(full, 3),
            f"{name}_skipping_s": round(skipping, 3),
            f"{name}_saving": round(1 - skipping / full, 3),
        }
    figures |= {
        "wall_full_runs": [round(t, 3) for t in wall[False]],
        "wall_skipping_runs": [round(t, 3) for t in wall[True]],
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="folder for the clips (kept between runs)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rate", type=float, default=5.0, help="samples/s (the model's rate)")
    parser.add_argument("--threads", type=int, default=1, help="FFmpeg decoder threads (annotate on a CPU: 1)")
    parser.add_argument("--only", nargs="*", default=None, help="clip name stems to measure (default all)")
    args = parser.parse_args()
    clips = make_clips(args.work, args.seconds)
    print(json.dumps({"rate": args.rate, "threads": args.threads, "repeat": args.repeat, "size": SIZE, "fps": FPS}))
    for path in clips:
        if args.only and not any(path.name.startswith(stem) for stem in args.only):
            continue
        print(json.dumps(measure(path, args.rate, args.threads, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
