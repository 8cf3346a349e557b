"""The GPU measurements in one prepared run (bench/gpu.sh calls this); its CPU form runs in CI.

    python bench/gpu.py DIR [--cpu] [--steps a,b,...] [--clips N] [--tests-k EXPR]

--steps runs those steps alone, in that order (a second run on a machine lent for minutes);
--clips N uses N 720p clips and no 1080p ones; --tests-k selects requires_cuda tests (pytest -k).

Makes its own media and model, then runs, each step in a process of its own with a time limit,
a failed step recorded and the next one run:

- env: torch, CUDA, the GPU, `fer doctor`;
- gpu_path, gpu_path_pyav: the GPU path end to end (bench/gpu_path.py: NVDEC, the torch detector,
  device crops, the backbone in bf16; then the same with PyAV decoding and uploads), first, as it is
  what the run is for (--cpu: PyAV and the CPU, once);
- speed_gpu_decoder: `fer benchmark speed --decoder gpu`, fer's own GPU path (job.devicepath)
  through the pipeline (skipped with --cpu);
- sweep_producer_threads, sweep_max_workers: the defaults still to be set by measurement, each
  value in turn on the same shorter clips (`SWEEPS`, set through bench/knobs.py): the GPU path's
  NVDEC threads (`devicepath.PRODUCER_THREADS`; skipped with --cpu) and the CPU path's worker cap
  (`schedules.MAX_WORKERS`), decoded frames/s and the GPU's utilisation of each;
- tests: the `requires_cuda` tests;
- speed_fp32, speed_bf16, speed_threads, speed_ray: `fer benchmark speed` on the clips (fp32 and
  bf16 with fer's default worker processes, bf16 with --workers 0, bf16 on `--ray local`);
- nvdec: decoding alone, fer's PyAV reader in worker processes against NVIDIA's PyNvVideoCodec
  (bench/nvdec.py; PyAV only where PyNvVideoCodec is not installed);
- detector: the face detector alone on this machine's cores (bench/detector.py);
- detector_torch: the torch port of the same network (bench/blazeface_torch.py) on the device,
  batched: parity with LiteRT and time per frame (skipped without the `tflite` package);
- train: `fer train` for two epochs, backbone fine-tuned (AMP on CUDA), on synthetic AFEW-VA.

Writes DIR/gpu.json (every step's exit status, seconds and figures; the GPU's mean utilisation
during each step, from nvidia-smi) and DIR/<step>.log. The GPU form (16 clips of 60 s 720p
H.264 and two of 60 s 1080p, 16 of 10 s 720p for the sweeps) is sized for at most DEADLINE_S on
one H200, the steps that do not fit left for a second run (--steps); --cpu uses two 1 s 320x240
clips and the CPU, the smallest that still run every step, to prove the plumbing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

GPU_MEDIA = {"720p": ((1280, 720), 60.0, 16), "1080p": ((1920, 1080), 60.0, 2)}  # size, seconds, copies
CPU_MEDIA = {"240p": ((320, 240), 1.0, 2)}  # two clips: fer starts worker processes for two or more
# The sweeps' clips: as many as the largest value swept takes at once, short enough that each value
# costs ~20 s on the GPU (4,000 frames at the 746 decoded frames/s measured so far, and fer's start-up).
SWEEP_MEDIA = {"gpu": {"sweep": ((1280, 720), 10.0, 16)}, "cpu": {}}
# step -> (the constant, the values tried on the GPU and on the CPU, the speed run's options)
SWEEPS = {
    "sweep_producer_threads": ("job.devicepath.PRODUCER_THREADS", {"gpu": [2, 4, 8], "cpu": []}, ["--decoder", "gpu"]),
    "sweep_max_workers": ("job.schedules.MAX_WORKERS", {"gpu": [8, 12, 15], "cpu": [2]}, []),
}
FPS = 25  # frames/s of every clip
STEP_TIMEOUT_S = {"gpu": 240, "cpu": 300}  # one step's limit
# The whole run's limit, media included: the GPU machine is lent for minutes, so a slow step
# shortens the ones after it rather than losing the run (steps run in order of importance). With
# gpu.sh's wheels installed first (~15 s) the run ends inside 400 s. Estimated from the H200 run
# (docs/performance.md: the CPU path's 18 clips in 36 s end to end): media ~50 s, env 6 s, each
# GPU-path step ~50 s, the sweeps ~20 s a value (120 s), leaving the requires_cuda tests ~90 s.
DEADLINE_S = {"gpu": 370, "cpu": 1200}
CPU_REPEAT = 3  # the CPU form's timed calls per detector bench: enough to run it, not to measure
TEST_TIMEOUT_S = 75  # one requires_cuda test's limit, where pytest-timeout is installed
UTILISATION_PERIOD_MS = 200
GPU_PATH_STREAMS = 4  # decoding threads of the GPU path: NVDEC's throughput stopped growing at 4 decoders


def make_media(out: Path, plan: dict) -> dict[str, list[Path]]:
    """One clip per size, then copies of it: throughput does not depend on the pixels, and
    encoding 16 minutes of 720p would take longer than the measurements."""
    from bench_media import long_clip

    clips = {}
    for name, (size, seconds, copies) in plan.items():
        first = out / f"{name}_00.mp4"
        long_clip(first, seconds / 60, size)
        clips[name] = [first]
        for k in range(1, copies):
            copy = out / f"{name}_{k:02d}.mp4"
            if not copy.exists():
                shutil.copyfile(first, copy)
            clips[name].append(copy)
    return clips


def make_model(path: Path) -> Path:
    """A random network of HSEmotion's form (EfficientNet-B0, 8 expressions + valence/arousal)."""
    if not path.exists():
        import torch

        from fercli.nets.checkpoints import save_checkpoint
        from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

        torch.manual_seed(0)
        save_checkpoint(HSEmotionNet(HSEMOTION_CONFIG).eval(), path)
    return path


AFEW = {"gpu": dict(clips=24, frames=40, actors=8), "cpu": dict(clips=3, frames=6, actors=3)}  # cpu: a split's least


def make_afew(root: Path, mode: str) -> Path:
    import synthetic_afew

    if not root.exists():
        synthetic_afew.make_dataset(root, seed=3, **AFEW[mode])
    return root


class Utilisation:
    """nvidia-smi's GPU utilisation sampled in the background while a step runs (none on a CPU)."""

    def __init__(self):
        self.samples: list[float] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            cmd = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                f"-lms={UTILISATION_PERIOD_MS}",
            ]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                pass

    def stop(self) -> dict:
        if self._proc is None:
            return {}
        self._proc.terminate()
        s = self.samples
        return {"gpu_util_mean": sum(s) / len(s), "gpu_util_max": max(s), "samples": len(s)} if s else {}


def run_step(name: str, command: list[str], out: Path, timeout: float, figures=None) -> dict:
    """Run one step, its output in out/<name>.log; figures(out) reads what it measured."""
    log = out / f"{name}.log"
    util = Utilisation()
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            code = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"command": " ".join(map(str, command)), "exit": code, "seconds": round(time.perf_counter() - start, 2)}
    result |= util.stop()
    if code == 0 and figures is not None:
        try:
            result["figures"] = figures()
        except Exception as error:  # a step whose output cannot be read is a finding, not a crash
            result["figures_error"] = f"{type(error).__name__}: {error}"
    print(f"{name}: exit {code}, {result['seconds']} s", flush=True)
    return result


def speed_figures(path: Path):
    def read() -> dict:
        report = json.loads(path.read_text())
        keep = (
            "end_to_end_s",
            "cpu_s",
            "video_seconds",
            "decoded_frames",
            "sampled_frames",
            "backbone_only_fps",
            "producer_only_fps",
            "peak_rss_mb",
            "peak_cuda_mb",
        )
        figures = {k: report[k] for k in keep if k in report}
        figures |= {k: v for k, v in report["derived"].items() if v is not None}
        figures["stages"] = report["stages"]
        figures["setup"] = report["setup"]
        return figures

    return read


def train_figures(run: Path):
    def read() -> dict:
        import csv

        rows = list(csv.DictReader((run / "summary.csv").open()))
        return {"epochs": len(rows), "epoch_s": [float(r["seconds"]) for r in rows], "summary": rows}

    return read


def main(
    out: Path, cpu: bool, only: list[str] | None = None, n_clips: int | None = None, tests_k: str | None = None
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    mode = "cpu" if cpu else "gpu"
    device = "cpu" if cpu else "cuda"
    t0 = time.perf_counter()
    deadline = t0 + DEADLINE_S[mode]
    media = CPU_MEDIA if cpu else GPU_MEDIA
    if n_clips:
        name, (size, seconds, _) = next(iter(media.items()))
        media = {name: (size, seconds, n_clips)}
    clips = make_media(work, media)
    swept = [str(p) for group in make_media(work, SWEEP_MEDIA[mode]).values() for p in group]
    swept = swept or [str(p) for group in clips.values() for p in group]
    model = make_model(work / "hse.pt")
    data = make_afew(work / "afew", mode)
    prepared_s = time.perf_counter() - t0
    fer = [sys.executable, "-m", "fercli.cli"]
    every = [p for group in clips.values() for p in group]
    steps: dict[str, dict] = {}

    few = ["--repeat", str(CPU_REPEAT)] if cpu else []  # timed calls of the CPU form's detector benches

    def timeout() -> float:
        return max(1.0, min(STEP_TIMEOUT_S[mode], deadline - time.perf_counter()))

    def save() -> dict:
        # After every step, so a run cut short still leaves its figures.
        report = {
            "mode": mode,
            "prepared_s": round(prepared_s, 2),
            "total_s": round(time.perf_counter() - t0, 2),
            "media": {name: {"clips": len(paths), "size": media[name][0]} for name, paths in clips.items()},
            "steps": steps,
        }
        (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        return report

    speed_options = ["--model", str(model), "--device", device, "--no-startup"]
    speed = [*fer, "benchmark", "speed", *map(str, every), *speed_options, "--naive-seconds", "2"]
    # The CPU form runs bf16 once (speed_bf16, without the naive loop): a CPU without AVX-512 BF16
    # or AMX emulates it, at several times fp32's time; the other steps prove their plumbing in fp32.
    lower = "fp32" if cpu else "bf16"
    variants = {
        # fer annotate's own GPU path: NVDEC, the torch detector and crops on the device (job.devicepath)
        "speed_gpu_decoder": ["--precision", "bf16", "--decoder", "gpu", "--no-naive"],
        "speed_fp32": ["--precision", "fp32"],
        "speed_bf16": ["--precision", "bf16", *(["--no-naive"] if cpu else [])],  # speed_fp32 runs the naive loop
        "speed_threads": ["--precision", lower, "--workers", "0", "--no-naive"],
        "speed_ray": ["--precision", lower, "--ray", "local", "--no-naive"],
        # every core but the model's a worker (fer's default stops at schedules.MAX_WORKERS)
        "speed_all_cores": ["--precision", lower, "--workers", str(max(1, (os.cpu_count() or 2) - 1)), "--no-naive"],
    }

    def speed_step(name: str) -> dict:
        report = out / f"{name}.json"
        if "--decoder" in variants[name] and cpu:
            return {
                "exit": "skipped",
                "reason": "--decoder gpu needs a CUDA GPU (tests/test_devicepath.py is its CPU twin)",
            }
        if "--ray" in variants[name] and importlib.util.find_spec("ray") is None:
            return {"exit": "skipped", "reason": "ray is not installed (its wheel is larger than what can travel)"}
        return run_step(name, [*speed, *variants[name], "--json", str(report)], out, timeout(), speed_figures(report))

    def sweep_step(name: str) -> dict:
        constant, values, options = SWEEPS[name]
        if not values[mode]:
            return {"exit": "skipped", "reason": f"{constant} is the GPU path's: it needs a CUDA GPU"}
        runs = []
        for value in values[mode]:
            if time.perf_counter() > deadline:
                runs.append({"value": value, "exit": "skipped", "reason": "the run's deadline had passed"})
                continue
            report = out / f"{name}_{value}.json"
            command = [
                sys.executable,
                "bench/knobs.py",
                f"{constant}={value}",
                "--",
                "benchmark",
                "speed",
                *swept,
                *speed_options,
                "--precision",
                lower,
                "--no-naive",
                *options,
                "--json",
                str(report),
            ]
            run = run_step(f"{name}_{value}", command, out, timeout(), speed_figures(report))
            figures = run.pop("figures", {})
            keep = ("decoded_fps", "decoded_frames", "end_to_end_s", "cores_busy")
            run |= {k: figures[k] for k in keep if k in figures} | {"workers": figures.get("setup", {}).get("workers")}
            runs.append({"value": value, **run})
            util = f", GPU {run['gpu_util_mean']:.0f}% mean" if "gpu_util_mean" in run else ""
            print(f"  {constant}={value}: {run.get('decoded_fps', 0):.0f} decoded frames/s{util}", flush=True)
        failed = [r["exit"] for r in runs if r["exit"] not in (0, "skipped")]
        return {
            "exit": failed[0] if failed else 0,
            "seconds": round(sum(r.get("seconds", 0) for r in runs), 2),
            "constant": constant,
            "clips": len(swept),
            "figures": {"runs": runs},
        }

    def tests_step() -> dict:
        cuda_tests = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "requires_cuda" in p.read_text())
        extra = ["-k", tests_k] if tests_k else []
        if importlib.util.find_spec("pytest_timeout"):  # a hung test dumps every thread's stack
            extra += ["--timeout", str(TEST_TIMEOUT_S)]
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "--durations=0",
            "-m",
            "requires_cuda",
            "-p",
            "no:cacheprovider",
            *extra,
            *cuda_tests,
        ]
        return run_step("tests", command, out, timeout())

    def train_step() -> dict:
        run = work / "train"
        shutil.rmtree(run, ignore_errors=True)
        train = [
            *fer,
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--init",
            "random",
            "--finetune",
            "--epochs",
            "2",
            "--device",
            device,
            "--frames-fps",
            "5",
            "--batch-size",
            "8",
        ]
        return run_step("train", train, out, timeout(), train_figures(run))

    def nvdec_step() -> dict:
        report = out / "nvdec.json"
        clips_720 = [str(p) for p in clips[next(iter(clips))]]
        streams = "1,2,4,8" if importlib.util.find_spec("PyNvVideoCodec") and not cpu else ""
        command = [
            sys.executable,
            "bench/nvdec.py",
            str(report),
            *clips_720,
            "--workers",
            str(os.cpu_count() if not cpu else 2),
            "--streams",
            streams,
        ]
        return run_step("nvdec", command, out, timeout(), lambda: json.loads(report.read_text()))

    def gpu_path_step(name: str, decoder: str) -> dict:
        report = out / f"{name}.json"
        streams = "1" if cpu else str(GPU_PATH_STREAMS)
        command = [
            sys.executable,
            "bench/gpu_path.py",
            str(report),
            *map(str, every),
            "--model",
            str(model),
            "--device",
            device,
            "--decoder",
            decoder,
            "--streams",
            streams,
            "--precision",
            "fp32" if cpu else "bf16",
        ]
        return run_step(name, command, out, timeout(), lambda: json.loads(report.read_text()))

    def detector_torch_step() -> dict:
        if importlib.util.find_spec("tflite") is None:
            return {"exit": "skipped", "reason": "the tflite package (the port's graph reader) is not installed"}
        batches = "1,2" if cpu else "1,64,256,1024"
        return run_step(
            "detector_torch",
            [sys.executable, "bench/blazeface_torch.py", "--device", device, "--batches", batches, *few],
            out,
            timeout(),
            lambda: [
                line
                for line in (out / "detector_torch.log").read_text().splitlines()
                if "torch port" in line or "IoU" in line
            ],
        )

    plan = {  # in order of importance, as the deadline may cut the last ones short
        "env": lambda: run_step(
            "env",
            [sys.executable, "-c", _ENV],
            out,
            timeout(),
            lambda: json.loads((out / "env.log").read_text().splitlines()[-1]),
        ),
        "speed_gpu_decoder": lambda: speed_step("speed_gpu_decoder"),
        "gpu_path": lambda: gpu_path_step("gpu_path", "cpu" if cpu else "gpu"),
        "sweep_producer_threads": lambda: sweep_step("sweep_producer_threads"),
        "sweep_max_workers": lambda: sweep_step("sweep_max_workers"),
        "tests": tests_step,
        "gpu_path_pyav": lambda: (
            {"exit": "skipped", "reason": "on the CPU, gpu_path already decodes with PyAV"}
            if cpu
            else gpu_path_step("gpu_path_pyav", "cpu")
        ),
        "doctor": lambda: run_step("doctor", [*fer, "doctor"], out, timeout()),
        "speed_all_cores": lambda: speed_step("speed_all_cores"),
        "train": train_step,
        "speed_bf16": lambda: speed_step("speed_bf16"),
        "nvdec": nvdec_step,
        "speed_fp32": lambda: speed_step("speed_fp32"),
        "speed_threads": lambda: speed_step("speed_threads"),
        "detector_torch": detector_torch_step,
        "detector": lambda: run_step(
            "detector",
            [sys.executable, "bench/detector.py", "fer", *few],
            out,
            timeout(),
            lambda: [line for line in (out / "detector.log").read_text().splitlines() if line.startswith("fer ")],
        ),
        "speed_ray": lambda: speed_step("speed_ray"),
    }
    if only is None:
        only = list(plan)
    for name in only:
        step = plan[name]
        if time.perf_counter() > deadline:
            steps[name] = {"exit": "skipped", "reason": "the run's deadline had passed"}
        else:
            steps[name] = step()
        save()
    return save()


_ENV = r"""
import json, os, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
print(json.dumps(info))
"""


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--steps", type=lambda v: v.split(","))
    parser.add_argument("--clips", type=int)
    parser.add_argument("--tests-k")
    a = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = main(a.out, a.cpu, a.steps, a.clips, a.tests_k)
    failed = [name for name, step in result["steps"].items() if step["exit"] not in (0, "skipped")]
    print(f"{a.out}/gpu.json written; failed steps: {', '.join(failed) or 'none'}")
