"""bench/gpu.sh's CPU form: every step of the GPU run works, on small media, before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), str(out), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "gpu.json").read_text())


def test_every_step_ran_and_says_so(report):
    out, result = report
    assert result["mode"] == "cpu"
    failed = {
        name: (out / f"{name}.log").read_text()[-1500:]
        for name, step in result["steps"].items()
        if step["exit"] not in (0, "skipped")
    }
    assert not failed, failed
    assert set(result["steps"]) == {
        "env",
        "doctor",
        "tests",
        "speed_fp32",
        "speed_bf16",
        "speed_threads",
        "speed_ray",
        "speed_all_cores",
        "nvdec",
        "detector",
        "detector_torch",
        "train",
        "gpu_path",
        "gpu_path_pyav",
        "speed_gpu_decoder",
        "sweep_producer_threads",
        "sweep_max_workers",
    }


def frame_counts(out: Path) -> list[int]:
    """Each bench clip's frames, as PyAV decodes them itself: the independent count."""
    counts = []
    for clip in sorted((out / "work").glob("240p_*.mp4")):
        with av.open(str(clip)) as container:
            counts.append(sum(1 for _ in container.decode(video=0)))
    return counts


def test_speed_figures_count_the_frames_the_clips_hold(report):
    out, result = report
    frames = sum(frame_counts(out))
    for name in ("speed_fp32", "speed_bf16", "speed_threads", "speed_ray", "speed_all_cores"):
        figures = result["steps"][name]["figures"]
        assert figures["decoded_frames"] == frames
        assert figures["decoded_fps"] == pytest.approx(frames / figures["end_to_end_s"])
        assert figures["setup"]["device"] == "cpu"
    assert result["steps"]["speed_bf16"]["figures"]["setup"]["precision"] == "bf16"
    assert result["steps"]["speed_gpu_decoder"]["exit"] == "skipped"  # --decoder gpu needs CUDA


def test_the_sweep_sets_the_worker_cap_and_measures_each_value(report):
    out, result = report
    frames = sum(frame_counts(out))
    sweep = result["steps"]["sweep_max_workers"]
    assert sweep["constant"] == "job.schedules.MAX_WORKERS"
    (run,) = sweep["figures"]["runs"]  # one value on the CPU: the knob's plumbing, not a measurement
    assert run["exit"] == 0 and run["decoded_frames"] == frames
    assert "knobs: {'job.schedules.MAX_WORKERS': 2}" in (out / f"sweep_max_workers_{run['value']}.log").read_text()
    assert result["steps"]["sweep_producer_threads"]["exit"] == "skipped"  # the GPU path's threads need CUDA


def test_decoding_alone_counts_the_frames_the_clips_hold(report):
    out, result = report
    frames = sum(frame_counts(out))
    (pyav,) = result["steps"]["nvdec"]["figures"]["results"]  # no PyNvVideoCodec on the CPU form
    assert pyav["kind"] == "pyav" and not pyav["errors"]
    assert pyav["decoded_frames"] == frames
    assert pyav["decoded_fps"] == pytest.approx(frames / pyav["seconds"], rel=1e-3)


def test_the_gpu_path_counts_the_frames_and_samples_the_clips_hold(report):
    out, result = report
    counts = frame_counts(out)
    figures = result["steps"]["gpu_path"]["figures"]
    assert figures["decoded_frames"] == sum(counts)
    assert figures["sampled_frames"] == sum(n // 5 for n in counts)  # 25 frames/s clips, 5 samples/s
    assert figures["decoded_fps"] == pytest.approx(sum(counts) / figures["end_to_end_s"], rel=1e-2)
    assert figures["crops_encoded"] == figures["faces"] > 0
    assert {c["decoder"] for c in figures["clips"]} == {"cpu"} and result["steps"]["gpu_path_pyav"]["exit"] == "skipped"


def test_training_ran_two_timed_epochs(report):
    _, result = report
    figures = result["steps"]["train"]["figures"]
    assert figures["epochs"] == 2 and all(s > 0 for s in figures["epoch_s"])


def test_knobs_set_the_constant_a_run_reads(monkeypatch):
    import importlib.util

    import torch

    from fercli.job import schedules
    from fercli.job.contract import AnnotateOptions

    spec = importlib.util.spec_from_file_location("knobs", ROOT / "bench" / "knobs.py")
    knobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(knobs)
    monkeypatch.setattr(schedules, "MAX_WORKERS", schedules.MAX_WORKERS)  # restored after the test
    monkeypatch.setattr(schedules.os, "cpu_count", lambda: 16)
    assert knobs.apply(["job.schedules.MAX_WORKERS=3"]) == {"job.schedules.MAX_WORKERS": 3}
    assert schedules.workers(AnnotateOptions(), torch.device("cuda"), 10) == 3  # 15 spare cores, capped at 3
    with pytest.raises(SystemExit, match="no constant"):
        knobs.apply(["job.schedules.max_workers=3"])
