import json
import math

import pandas as pd
import pytest
from conftest import DURATIONS
from typer.testing import CliRunner

from fercli.cli import app
from fercli.job.benchmark import PRODUCER_STAGES, speed
from fercli.job.contract import AnnotateOptions


@pytest.fixture(scope="module")
def report(clips_dir, lstm_checkpoint):
    return speed(
        [clips_dir / "moving.mp4", clips_dir / "odd.avi"], model=str(lstm_checkpoint), device="cpu", naive_seconds=1.0
    )


def test_stage_counts_follow_the_videos(report):
    samples = math.ceil(DURATIONS["moving.mp4"] * 5) + math.ceil(DURATIONS["odd.avi"] * 5)
    assert report.sampled_frames == samples == report.stages["decode"].items
    assert report.stages["faces"].items == samples
    assert report.stages["backbone"].items == samples  # one face in every sample of these clips
    assert report.stages["head"].items == math.ceil(DURATIONS["moving.mp4"]) + math.ceil(DURATIONS["odd.avi"])
    assert report.decoded_frames == 100 + 40  # 4 s at 25 fps, 3.2 s at 12.5 fps
    assert report.video_seconds == pytest.approx(7.2, abs=1e-3)


def test_timings_add_up(report):
    # Decoding and detection run in a thread beside the model: each thread's stages fit in the run.
    produced = sum(s.seconds for name, s in report.stages.items() if name in PRODUCER_STAGES)
    consumed = sum(s.seconds for name, s in report.stages.items() if name not in PRODUCER_STAGES)
    assert 0 < produced <= report.end_to_end_s * 1.01
    assert 0 < consumed <= report.end_to_end_s * 1.01
    assert 0 < report.cpu_s <= report.end_to_end_s * report.setup["cores"] * 1.01
    assert report.derived["cores_busy"] == pytest.approx(report.cpu_s / report.end_to_end_s)
    b, p = report.backbone_only_fps, report.producer_only_fps
    assert b > 0 and p > 0 and report.derived["in_series_fps"] == pytest.approx(1 / (1 / b + 1 / p))
    assert report.derived["realtime_factor"] == pytest.approx(report.video_seconds / report.end_to_end_s)
    assert report.naive_frames == 25 + 12  # one second of each clip, every frame
    assert report.peak_rss_mb > 0
    assert report.end_to_end_runs_s == [report.end_to_end_s]


def test_cli_writes_json(tmp_path, clips_dir, lstm_checkpoint):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "speed",
            str(clips_dir / "odd.avi"),
            "--model",
            str(lstm_checkpoint),
            "--device",
            "cpu",
            "--no-naive",
            "--repeat",
            "2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["stages"]) >= {"decode", "faces", "backbone", "head"}
    # Two runs, reported as the faster of the two (the lower median), stages from that run alone.
    runs = data["end_to_end_runs_s"]
    assert len(runs) == 2 and data["end_to_end_s"] == min(runs)
    assert data["sampled_frames"] == data["stages"]["decode"]["items"] == data["stages"]["backbone"]["items"] == 16
    assert data["stages"]["decode"]["seconds"] < data["end_to_end_s"] * 1.01
    assert "runs: " in result.output


def test_accuracy_cli_on_perfect_predictions_and_plot(tmp_path):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 40
    labels = rng.integers(-10, 11, size=(n, 2))
    pred = pd.DataFrame(
        {
            "video": ["a.mp4"] * 20 + ["b.mp4"] * 20,
            "second": list(range(20)) * 2,
            "start": 0.0,
            "end": 1.0,
            "face": True,
            "valence": labels[:, 0],
            "arousal": labels[:, 1],
            "valence_score": labels[:, 0].astype(float),
            "arousal_score": labels[:, 1].astype(float),
            "valence_conf": 0.9,
            "arousal_conf": 0.9,
        }
    )
    pred.to_csv(tmp_path / "pred.csv", index=False)
    pred[["video", "second", "valence", "arousal"]].iloc[:-3].to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "accuracy",
            "--truth",
            str(tmp_path / "truth.csv"),
            "--pred",
            str(tmp_path / "pred.csv"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valence"]["ccc"] == pytest.approx(1.0) and metrics["arousal"]["accuracy"] == pytest.approx(1.0)
    assert "prediction only 3" in result.output  # unmatched rows are reported, not dropped silently
    assert {"metrics.md", "histograms.png", "confusion.png", "scatter.png"} <= {p.name for p in out.iterdir()}
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "pred.csv"), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "circumplex.png").stat().st_size > 1000


def test_accuracy_cli_names_a_missing_file(tmp_path):
    result = CliRunner().invoke(
        app, ["benchmark", "accuracy", "--truth", str(tmp_path / "no.csv"), "--pred", str(tmp_path / "p.csv")]
    )
    assert result.exit_code == 2 and "no.csv" in result.output


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_accuracy_cli_names_a_missing_prediction_table(tmp_path, suffix):
    # The truth exists, the predictions do not: the message said "None: no such file" for Parquet.
    pd.DataFrame({"video": ["a"], "second": [0], "valence": [1], "arousal": [2]}).to_csv(
        tmp_path / "truth.csv", index=False
    )
    missing = tmp_path / f"missing.{suffix}"
    result = CliRunner().invoke(
        app, ["benchmark", "accuracy", "--truth", str(tmp_path / "truth.csv"), "--pred", str(missing)]
    )
    assert result.exit_code == 2 and f"{missing}: no such file" in " ".join(result.output.split())
    assert "None" not in result.output


@pytest.mark.parametrize("args", [["{missing}"], ["{empty}"]])
def test_speed_without_clips_is_a_one_line_error(tmp_path, lstm_checkpoint, args):
    (tmp_path / "empty").mkdir()
    paths = [a.format(missing=tmp_path / "nope.mp4", empty=tmp_path / "empty") for a in args]
    result = CliRunner().invoke(app, ["benchmark", "speed", *paths, "--model", str(lstm_checkpoint), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert paths[0] in " ".join(result.output.split()) and "Traceback" not in result.output


def test_startup_is_measured_in_a_new_process(report):
    up = report.startup
    parts = [up.import_s, up.model_load_s, up.detector_init_s, up.first_frame_s, up.first_batch_s]
    assert all(p > 0 for p in parts) and up.second_batch_s > 0
    assert up.total_s == pytest.approx(sum(parts))
    # This process imported torch long ago; the probe paid it again, so it ran in a fresh one.
    assert up.import_s > 0.3
    assert report.to_dict()["startup"]["total_s"] == pytest.approx(up.total_s)


def test_startup_line_and_json(tmp_path, clips_dir, lstm_checkpoint):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "speed",
            str(clips_dir / "odd.avi"),
            "--model",
            str(lstm_checkpoint),
            "--device",
            "cpu",
            "--no-naive",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    up = json.loads(out.read_text())["startup"]
    assert f"start-up (new process): {up['total_s']:.2f} s = imports {up['import_s']:.2f}" in result.output


def test_startup_probe_failure_is_one_line(clips_dir, tmp_path):
    from fercli.core.errors import FerError
    from fercli.job.benchmark import measure_startup

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FerError, match="start-up probe failed: ") as err:
        measure_startup(clips_dir / "odd.avi", str(bad), "cpu", 16)
    assert "\n" not in str(err.value)


def test_cold_run_times_both_commands_and_the_naive_loop_reads_every_frame(clips_dir, lstm_checkpoint):
    import av

    from fercli.job.benchmark import measure_cold

    clip = clips_dir / "odd.avi"
    with av.open(str(clip)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    cold = measure_cold([clip], str(lstm_checkpoint), "cpu", 16)
    assert cold.naive_frames == frames == 40
    assert cold.fer_s > 0 and cold.naive_s > 0 and cold.clips == 1
    assert cold.speedup == pytest.approx(cold.naive_s / cold.fer_s)


def test_speed_with_openvino_times_it_and_keeps_the_naive_loop_on_torch(clips_dir, frame_checkpoint, monkeypatch):
    # The OpenVINO network has no parameters of its own (its weights are compiled), which the
    # start-up probe must cope with; the naive loop stays the hand-written torch one.
    pytest.importorskip("openvino")
    from fercli.job import benchmark
    from fercli.nets.engines import engine_of

    naive_engines = []

    def naive_loop(clips, model, device, max_seconds=None):
        naive_engines.append(engine_of(model))
        return real_naive(clips, model, device, max_seconds)

    real_naive = benchmark.naive_loop
    monkeypatch.setattr(benchmark, "naive_loop", naive_loop)
    report = benchmark.speed(
        [clips_dir / "odd.avi"],
        model=str(frame_checkpoint),
        device="cpu",
        options=AnnotateOptions(engine="openvino"),
        naive_seconds=1,
    )
    assert report.setup["engine"] == "openvino"
    assert report.stages["backbone"].items > 0 and report.naive_frames > 0 and naive_engines == ["torch"]
    up = report.startup
    assert all(p > 0 for p in (up.import_s, up.model_load_s, up.first_batch_s, up.second_batch_s))


def test_producer_only_rate_reads_the_first_clips_up_to_two_minutes():
    from types import SimpleNamespace

    from fercli.job.benchmark import PRODUCER_ONLY_VIDEO_S, _first_minutes

    info = [SimpleNamespace(duration=d) for d in (50.0, 50.0, 50.0, 50.0)]
    assert PRODUCER_ONLY_VIDEO_S == 120.0
    assert _first_minutes(list("abcd"), info, PRODUCER_ONLY_VIDEO_S) == list("abc")  # 150 s >= 120 s
    assert _first_minutes(list("ab"), [SimpleNamespace(duration=600.0)] * 2, 120.0) == ["a"]  # one long clip
    assert _first_minutes(list("ab"), [SimpleNamespace(duration=3.0)] * 2, 120.0) == list("ab")  # all, if short


def test_the_setup_names_the_gpu_the_model_runs_on(monkeypatch, lstm_checkpoint):
    import torch

    import fercli
    from fercli.job.benchmark import _setup

    names = {torch.device("cuda", 0): "first GPU", torch.device("cuda", 1): "second GPU"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[torch.device(device or "cuda:0")])
    model = fercli.load_model(lstm_checkpoint, device="cpu")  # nothing is moved onto a GPU here
    setup = _setup(model, torch.device("cuda", 1), AnnotateOptions(), [], [])
    assert setup["device"] == "cuda:1 (second GPU)"
