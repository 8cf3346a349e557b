"""The backbone's engine on a CPU: time per crop and the table each engine gives, against torch fp32.

    python bench/engines.py WORK CLIP [CLIP ...] [--repeat 5] [--batch 16]

Makes, once, WORK/hsemotion_form.pt: a network of HSEmotion's form (EfficientNet-B0, 224 px,
10 outputs; random weights, seed 3, the classifier scaled by 2000 as tests/test_engines.py does,
so valence and arousal spread over the scale instead of sitting at 0). Candidates: torch fp32,
OpenVINO f32, and bf16 in each where this CPU has bf16 instructions (avx512_bf16 or amx_bf16).

1. Backbone alone: the first clip's face crops (fer's own producer: decode, detect, crop), in batches
   of BATCH as annotate sends them (to_input, inference mode, autocast), each engine in turn,
   REPEAT rounds; median wall ms per crop with torch's thread count (all cores), and core-ms
   (this process's CPU time: what the crop costs the machine, spinning threads included).
2. The table: `fercli.annotate` on all the clips with each engine (wall s, OpenVINO's converted
   model already cached), and against torch fp32's table: the share of seconds whose valence,
   arousal and expression labels are equal, and the largest and 99th-percentile |difference|
   of the scores.
3. OpenVINO's one-off conversion (a cache without the IR): load_model's wall s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fercli
CLASSIFIER_SCALE = 2000  # spreads random outputs over the label scale (tests/test_engines.py)
WARMUP_BATCHES = 3


def checkpoint(path: Path) -> Path:
    import torch

    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

    if not path.exists():
        torch.manual_seed(3)
        net = HSEmotionNet(HSEMOTION_CONFIG).eval()
        with torch.no_grad():
            net.backbone.classifier.weight.mul_(CLASSIFIER_SCALE)
        save_checkpoint(net, path)
    return path


def has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def candidates() -> list[tuple[str, str]]:
    import importlib.util

    found = [("torch", "fp32")]
    if importlib.util.find_spec("openvino"):
        found.append(("openvino", "fp32"))
    if has_bf16():
        found += [(engine, "bf16") for engine, _ in list(found)]
    return found


def crops_of(clips: list[Path], ckpt: Path) -> list[np.ndarray]:
    """Every face crop fer's producer cuts from the clips."""
    from fercli.job.contract import AnnotateOptions
    from fercli.job.stages import clip_samples
    from fercli.media.faces import FaceDetector
    from fercli.media.inputs import find_clips
    from fercli.nets.checkpoints import read_checkpoint
    from fercli.nets.model import checkpoint_config

    cfg = checkpoint_config(read_checkpoint(ckpt))
    crops = []
    with FaceDetector() as detector:
        for clip in find_clips(clips).clips:
            stream = clip_samples(clip, cfg, AnnotateOptions(), detector)
            next(stream)  # the clip's VideoInfo
            crops += [crop for sample in stream for crop in sample.crops.values()]
    return crops


def backbone_ms(crops: list[np.ndarray], ckpt: Path, engines: list, batch: int, repeat: int) -> dict:
    import torch

    from fercli.core.devices import autocast
    from fercli.nets.model import load_model, to_input

    models = {key: load_model(ckpt, "cpu", engine=key[0], precision=key[1]) for key in engines}
    batches = [np.stack(crops[i : i + batch]) for i in range(0, len(crops), batch)]
    times, cpu = {key: [] for key in engines}, {key: [] for key in engines}

    def run(key, some):
        model = models[key]
        with torch.inference_mode(), autocast(key[1], torch.device("cpu")):
            for images in some:
                model.encode(to_input(images, model.config.preprocess))

    for key in engines:
        run(key, batches[:WARMUP_BATCHES])
    for _ in range(repeat):
        for key in engines:
            start, core = time.perf_counter(), time.process_time()
            run(key, batches)
            times[key].append(1000 * (time.perf_counter() - start) / len(crops))
            cpu[key].append(1000 * (time.process_time() - core) / len(crops))
    return {
        f"{e} {p}": {
            "ms_per_crop": round(statistics.median(times[(e, p)]), 2),
            "core_ms_per_crop": round(statistics.median(cpu[(e, p)]), 2),
            "runs": [round(x, 2) for x in times[(e, p)]],
        }
        for e, p in engines
    }


def tables(clips: list[Path], ckpt: Path, engines: list, work: Path) -> dict:
    import fercli
    from fercli.job.contract import AnnotateOptions

    found, wall = {}, {}
    for engine, precision in engines:
        out = work / f"table-{engine}-{precision}.parquet"
        start = time.perf_counter()
        fercli.annotate(
            clips,
            out,
            model=str(ckpt),
            device="cpu",
            options=AnnotateOptions(engine=engine, precision=precision, overwrite=True),
        )
        wall[(engine, precision)] = round(time.perf_counter() - start, 2)
        found[(engine, precision)] = fercli.read_table(out)
    reference = found[("torch", "fp32")]
    report = {}
    for key, table in found.items():
        report[f"{key[0]} {key[1]}"] = {"annotate_s": wall[key], **parity(table, reference)}
    return report


def parity(table, reference) -> dict:
    """How far `table` is from `reference` (same clips, same rows)."""
    assert list(table["video"]) == list(reference["video"]) and list(table["second"]) == list(reference["second"])
    out = {"seconds": len(table)}
    for label in ("valence", "arousal", "expression"):
        if label in reference:
            both = reference[label].notna()
            out[f"{label}_labels_equal"] = round(float((table[label][both] == reference[label][both]).mean()), 4)
    for score in ("valence_score", "arousal_score"):
        diff = (table[score] - reference[score]).abs().dropna().to_numpy()
        out[f"{score}_max_diff"] = float(f"{diff.max():.3g}")
        out[f"{score}_p99_diff"] = float(f"{np.quantile(diff, 0.99):.3g}")
        out[f"{score}_range"] = [round(float(reference[score].min()), 2), round(float(reference[score].max()), 2)]
    return out


def conversion_s(ckpt: Path) -> float:
    """load_model with OpenVINO into an empty cache: the one-off conversion a first run pays."""
    from fercli.nets.model import load_model

    with tempfile.TemporaryDirectory() as cache:
        saved, os.environ["FER_CACHE_DIR"] = os.environ.get("FER_CACHE_DIR"), cache
        try:
            start = time.perf_counter()
            load_model(ckpt, "cpu", engine="openvino")
            return round(time.perf_counter() - start, 2)
        finally:
            if saved is None:
                os.environ.pop("FER_CACHE_DIR")
            else:
                os.environ["FER_CACHE_DIR"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="folder for the checkpoint and the tables")
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="crops per backbone call (annotate's default)")
    parser.add_argument("--backbone-only", action="store_true", help="skip the tables and the conversion")
    args = parser.parse_args()
    from fercli.core.runtime import tune_process

    tune_process()  # as `fer` runs: before torch loads libgomp
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(args.work / "hsemotion_form.pt")
    engines = candidates()
    setup = {"threads": torch.get_num_threads(), "cpu_bf16": has_bf16(), "engines": [" ".join(e) for e in engines]}
    print(json.dumps(setup), flush=True)
    crops = crops_of(args.clips[:1], ckpt)
    print(json.dumps({"crops": len(crops), "backbone": backbone_ms(crops, ckpt, engines, args.batch, args.repeat)}))
    if args.backbone_only:
        return
    print(json.dumps({"tables": tables(args.clips, ckpt, engines, args.work)}), flush=True)
    if any(engine == "openvino" for engine, _ in engines):
        print(json.dumps({"openvino_conversion_s": conversion_s(ckpt)}))


if __name__ == "__main__":
    main()
