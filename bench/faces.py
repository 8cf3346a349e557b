"""What the producer spends per sample besides decoding: each step of the faces stage, timed alone.

    python bench/faces.py CLIP [--samples 60] [--rate 5] [--repeat 3]

Decodes SAMPLES samples of CLIP at RATE (fer's own sampling), detects the faces once, then times
each step the producer runs per sample (`stages.clip_samples`), on those same frames, REPEAT
rounds, and prints the median CPU ms per sample (this process's CPU time: steady on a shared
machine; every step is single-threaded):

- rgb_*: the decoded frame to RGB by swscale, at BICUBIC (fer's), BILINEAR, FAST_BILINEAR, POINT;
  copy: the copy `VideoSource.sample` hands out;
- detect_input / detect_network / detect_post: BlazeFace's input (the 192 px square), LiteRT,
  and decoding + NMS + back to frame pixels;
- shot_histogram: `people.ShotCuts`' colour histogram of the frame (shot_histogram_step4: of
  every 4th pixel, as before `people.shot_step`);
- face_histogram / appearance / crop: per sample, for all its faces: the face box's colour
  histogram (`people.Tracks`), its LBP descriptor, and the model's crop (`Preprocess.cut`);
- producer: the whole producer (`stages.clip_samples`: decode, detect, track, crop) over every
  sample of the clip at RATE, CPU ms per sample, one decoding thread as annotate on a CPU.

Run from another checkout (PYTHONPATH=OTHER python bench/faces.py ...) to time its code.
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
sys.path.insert(0, str(ROOT))  # this checkout's fercli


def decoded_frames(path: Path, rate: float, samples: int) -> list:
    """The av.VideoFrames of the first SAMPLES samples (chosen by fer's own sampling)."""
    import av

    from fercli.media.decode import open_video

    with open_video(path) as video:
        wanted = [f.source for f in video.sample(rate)][:samples]
    kept = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):  # display order: every frame of a sound file
            if i in wanted:
                kept[i] = frame
            if i >= wanted[-1]:
                break
    return [kept[i] for i in wanted]


def timed(step, items, repeat: int) -> float:
    """Median over REPEAT rounds of CPU ms per item of step(item)."""
    rounds = []
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            step(item)
        rounds.append(1000 * (time.process_time() - start) / len(items))
    return round(statistics.median(rounds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from fercli.core.runtime import tune_process

    tune_process()  # as `fer` runs: before torch loads libgomp

    from fercli.media import blazeface, people
    from fercli.media.faces import FaceDetector
    from fercli.media.people import _crop, appearance, colour_histogram
    from fercli.nets.model import HSEMOTION_CONFIG

    frames = decoded_frames(args.clip, args.rate, args.samples)
    images = [f.to_ndarray(format="rgb24", interpolation="BICUBIC") for f in frames]
    detector = FaceDetector()
    net = detector._net._net
    faces = [[d.box for d in detector.detect(image)] for image in images]
    pre = HSEMOTION_CONFIG.preprocess
    n = args.repeat
    figures = {
        "clip": args.clip.name,
        "size": list(images[0].shape[1::-1]),
        "samples": len(images),
        "faces_per_sample": round(sum(map(len, faces)) / len(images), 2),
    }
    for interpolation in ("BICUBIC", "BILINEAR", "FAST_BILINEAR", "POINT"):
        figures[f"rgb_{interpolation.lower()}"] = timed(
            lambda f, i=interpolation: f.to_ndarray(format="rgb24", interpolation=i), frames, n
        )
    figures["copy"] = timed(lambda image: np.array(image, copy=True), images, n)
    inputs = [blazeface.to_input(image)[0][None] for image in images]
    figures["detect_input"] = timed(blazeface.to_input, images, n)

    def network(tensor):
        net.set_tensor(detector._net._input, tensor)
        net.invoke()

    figures["detect_network"] = timed(network, inputs, n)
    figures["detect_all"] = timed(detector.detect, images, n)
    figures["detect_post"] = round(figures["detect_all"] - figures["detect_input"] - figures["detect_network"], 3)
    figures["shot_histogram_step4"] = timed(colour_histogram, images, n)
    step = people.shot_step(*images[0].shape[:2]) if hasattr(people, "shot_step") else people.HIST_STEP
    figures["shot_histogram"] = timed(lambda image: colour_histogram(image, step), images, n)
    pairs = list(zip(images, faces))
    figures["face_histogram"] = timed(lambda p: [colour_histogram(_crop(p[0], b), step=1) for b in p[1]], pairs, n)
    figures["appearance"] = timed(lambda p: [appearance(p[0], b) for b in p[1]], pairs, n)
    figures["crop"] = timed(lambda p: [pre.cut(p[0], b) for b in p[1]], pairs, n)
    figures["producer"] = producer_ms(args.clip, detector, n)
    print(json.dumps(figures))


def producer_ms(clip: Path, detector, repeat: int) -> float:
    """CPU ms per sample of the whole producer over the clip (median of REPEAT passes)."""
    from fercli.job.contract import AnnotateOptions
    from fercli.job.stages import clip_samples
    from fercli.media.inputs import find_clips
    from fercli.nets.model import HSEMOTION_CONFIG

    (found,) = find_clips([clip]).clips
    rounds = []
    for _ in range(repeat):
        start = time.process_time()
        stream = clip_samples(found, HSEMOTION_CONFIG, AnnotateOptions(), detector)
        next(stream)  # the clip's VideoInfo
        samples = sum(1 for _ in stream)
        rounds.append(1000 * (time.process_time() - start) / samples)
    return round(statistics.median(rounds), 3)


if __name__ == "__main__":
    main()
