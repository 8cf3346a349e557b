"""`fer benchmark accuracy --data`: a checkpoint scored on its own run's split, per window and per second.

Small runs on synthetic AFEW-VA (tests/synthetic_afew.py) with the seeded random backbone, as in
test_loop.py; learning is not the point here, which part is scored and against what truth is.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_afew
import torch

from fercli.core.errors import FerError
from fercli.datasets.truth import load_truth
from fercli.scoring import metrics
from fercli.training.evaluate import evaluate
from fercli.training.loop import train
from fercli.training.options import TrainOptions

FPS = 5.0  # the synthetic clips' frame rate, which is also the model's: sample k is frame k
FAST = dict(init="random", frames_fps=FPS, image_size=64, hidden=32, batch_size=16, lr=2e-3, patience=6, epochs=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny backbone batches: with two OpenMP threads on a busy machine they spin-wait (loop._threads).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """6 clips x 12 frames, 3 actors: every part of a clip split is one actor's 2 clips."""
    root = tmp_path_factory.mktemp("afew-tiny")
    synthetic_afew.make_dataset(root, clips=6, frames=12, actors=3, seed=1)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def runs(tiny, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {s: train(TrainOptions(tiny, out / s, split=s, cache_dir=cache, **FAST)) for s in ("clip", "window")}


@pytest.fixture(scope="module")
def by_clip(runs, tiny, cache):
    return evaluate(tiny, runs["clip"].best, device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def by_window(runs, tiny, cache):
    return evaluate(tiny, runs["window"].best, device="cpu", cache_dir=cache)


def split_json(run) -> dict:
    return json.loads((run.out / "split.json").read_text())


# --- which part ----------------------------------------------------------------------------------


def test_clip_split_scores_exactly_the_runs_test_clips(by_clip, runs):
    test = split_json(runs["clip"])["test"]
    assert by_clip.split.kind == "clip" and by_clip.split.part == "test" and by_clip.split.seed == 0
    assert by_clip.split.scored_clips == test
    assert by_clip.split.source == str(runs["clip"].out / "split.json")
    assert sorted(set(by_clip.window_table["video"])) == test
    assert sorted(set(by_clip.second_pred["video"])) == test
    assert by_clip.split.windows == runs["clip"].windows  # stride 1, as the run was trained
    assert by_clip.frames_fps == FPS  # from the run's config.json


def test_window_level_is_what_training_scored_on_its_test_part(by_clip, runs):
    # test.json: the trainer's own pass over its test windows with the best checkpoint.
    trained = json.loads((runs["clip"].out / "test.json").read_text())
    w = by_clip.windows
    assert w.matched == trained["windows"] and w.truth_only == 0 and w.pred_only == 0
    for dim in metrics.DIMENSIONS:
        assert w.metrics[dim]["ccc"] == pytest.approx(trained[f"ccc_{dim}"], abs=1e-6)
        assert w.metrics[dim]["accuracy"] == pytest.approx(trained[f"acc_{dim}"])


def test_window_truth_is_the_mean_of_its_frame_labels(by_clip, tiny):
    row = by_clip.window_table.iloc[3]
    video, end = row["video"], int(row["window"])
    frames = json.loads((tiny / video / f"{video}.json").read_text())["frames"]
    # At 5 fps on 5 fps frames, sample k is frame k: the window is frames end-4 .. end.
    span = [frames[f"{i:05d}"] for i in range(end - 4, end + 1)]
    assert row["valence"] == pytest.approx(np.mean([f["valence"] for f in span]))
    assert row["arousal"] == pytest.approx(np.mean([f["arousal"] for f in span]))


def test_per_second_truth_is_load_truth_of_the_part(by_clip, tiny):
    truth = load_truth(tiny, FPS)
    truth = truth[truth["video"].isin(by_clip.split.scored_clips)].reset_index(drop=True)
    pd.testing.assert_frame_equal(by_clip.second_truth, truth)
    s = by_clip.seconds
    assert s.matched == len(truth) == 2 * 3  # 12 frames at 5 fps: 3 seconds per clip
    assert s.truth_only == 0 and s.pred_only == 0 and s.pred_without_face == 0
    assert by_clip.split.seconds_left_out == 0


def test_window_split_scores_the_runs_test_windows_and_only_their_seconds(by_window, runs):
    test = split_json(runs["window"])["test"]
    t = by_window.window_table
    assert sorted(f"{v}:{w}" for v, w in zip(t["video"], t["window"])) == sorted(test)
    assert by_window.split.kind == "window" and by_window.split.windows["test"] == len(test)
    clips = sorted({n.split(":")[0] for n in test})
    assert by_window.split.scored_clips == clips
    # A second is scored only when its own window (ending with its last sample, k = 5 s + 4) is a
    # test window (12 samples: the last second ends at 11); the rest of those clips was trained on.
    scored = by_window.second_truth
    assert len(scored) == by_window.seconds.matched > 0
    assert all(f"{v}:{min(5 * s + 4, 11)}" in test for v, s in zip(scored["video"], scored["second"]))
    assert len(scored) + by_window.split.seconds_left_out == 3 * len(clips)


@pytest.mark.parametrize("part", ["val", "train", "all"])
def test_other_parts(runs, tiny, cache, part):
    ev = evaluate(tiny, runs["clip"].best, split=part, device="cpu", cache_dir=cache)
    expected = sorted(p.name for p in tiny.iterdir()) if part == "all" else split_json(runs["clip"])[part]
    assert ev.split.scored_clips == expected and ev.seconds.matched == 3 * len(expected)


# --- perfect agreement ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def constant(tmp_path_factory) -> Path:
    """3 clips whose every frame is labelled valence 5, arousal -5."""
    root = tmp_path_factory.mktemp("afew-constant")
    synthetic_afew.make_dataset(root, clips=3, frames=10, actors=3, seed=2)
    for f in root.glob("*/*.json"):
        doc = json.loads(f.read_text())
        for label in doc["frames"].values():
            label.update(valence=5, arousal=-5)
        f.write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def frame_model(tmp_path_factory) -> Path:
    """An HSEmotion-style frame model that always says valence 0.5, arousal -0.5 (5 and -5 on the
    label scale, both exact in binary), hand-made: no training metadata."""
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEmotionNet, ModelConfig, Preprocess

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="hsemotion", window=1, temporal="none", hidden=0, layers=0, dropout=0.0, preprocess=Preprocess(size=64)
    )
    net = HSEmotionNet(cfg)
    with torch.no_grad():
        net.backbone.classifier.weight.zero_()
        net.backbone.classifier.bias.copy_(torch.tensor([0.0] * 8 + [0.5, -0.5]))
    return save_checkpoint(net.eval(), tmp_path_factory.mktemp("frame") / "frame.pt")


def test_perfect_agreement_scores_perfectly_at_both_levels(constant, frame_model, cache):
    ev = evaluate(constant, frame_model, split="all", frames_fps=FPS, device="cpu", cache_dir=cache)
    assert ev.split.kind == "none" and ev.split.scored_clips == ["001", "002", "003"]
    assert "mean of the frame scores" in ev.window_prediction
    for report, n in ((ev.windows, 3 * (10 - 4)), (ev.seconds, 3 * 2)):
        assert report.matched == n and report.truth_only == report.pred_only == report.pred_without_face == 0
        for dim in metrics.DIMENSIONS:
            m = report.metrics[dim]
            assert (m["ccc"], m["accuracy"], m["f1_macro"], m["rmse"], m["sagr"]) == (1.0, 1.0, 1.0, 0.0, 1.0)


def test_all_needs_no_split_so_any_data_set_will_do(runs, constant, cache):
    ev = evaluate(constant, runs["clip"].best, split="all", device="cpu", cache_dir=cache)  # clips it never saw
    assert ev.split.kind == "clip" and ev.split.scored_clips == ["001", "002", "003"]
    assert ev.windows.matched == 3 * (10 - 4) and ev.seconds.matched == 3 * 2


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["test", "val", "train"])
def test_a_part_needs_training_metadata(constant, frame_model, cache, part):
    with pytest.raises(FerError, match=rf"{frame_model.name}: no training metadata.*use --split all"):
        evaluate(constant, frame_model, split=part, frames_fps=FPS, device="cpu", cache_dir=cache)


def test_unknown_part_is_refused(tiny, frame_model):
    with pytest.raises(FerError, match="--split must be one of test, val, train, all"):
        evaluate(tiny, frame_model, split="holdout")


def test_split_json_of_another_run_is_refused(runs, tiny, cache, tmp_path):
    shutil.copy(runs["clip"].best, tmp_path / "best.pt")
    shutil.copy(runs["window"].out / "split.json", tmp_path / "split.json")
    with pytest.raises(FerError, match="split.json: a window split .* trained on a clip split"):
        evaluate(tiny, tmp_path / "best.pt", device="cpu", cache_dir=cache)


def test_without_split_json_the_clip_split_is_derived_again(runs, tiny, cache, tmp_path, by_clip):
    shutil.copy(runs["clip"].best, tmp_path / "best.pt")  # alone: no split.json, no config.json
    ev = evaluate(tiny, tmp_path / "best.pt", frames_fps=FPS, device="cpu", cache_dir=cache)
    assert ev.split.scored_clips == by_clip.split.scored_clips and "re-derived" in ev.split.source
    assert ev.windows.metrics == by_clip.windows.metrics


# --- the command ---------------------------------------------------------------------------------


def _has_data_mode() -> bool:
    import typer.main

    from fercli.cli import benchmark_app

    cmd = typer.main.get_command(benchmark_app).commands["accuracy"]
    return any(p.name == "data" for p in cmd.params)


def test_fer_benchmark_accuracy_on_data(runs, tiny, cache, tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    if not _has_data_mode():
        pytest.skip("`fer benchmark accuracy --data` is not in fercli/cli.py yet")
    env = {"FER_CACHE_DIR": str(cache.parent)}
    args = [
        "benchmark",
        "accuracy",
        "--data",
        str(tiny),
        "--model",
        str(runs["clip"].best),
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "bench"),
    ]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "window level" in result.output and "per second" in result.output
    for level in ("window", "second"):
        files = {p.name for p in (tmp_path / "bench" / level).iterdir()}
        assert {"metrics.json", "metrics.md", "histograms.png", "confusion.png", "scatter.png"} <= files
    doc = json.loads((tmp_path / "bench" / "evaluation.json").read_text())
    assert doc["split"]["scored_clips"] == split_json(runs["clip"])["test"]

    for bad in (
        ["--truth", "t.csv", "--data", str(tiny), "--model", "m.pt"],
        [],
        ["--data", str(tiny)],
        ["--truth", "t.csv"],
    ):
        result = CliRunner().invoke(app, ["benchmark", "accuracy", *bad], env=env)
        assert result.exit_code == 2, (bad, result.output)
    result = CliRunner().invoke(
        app,
        ["benchmark", "accuracy", "--data", str(tiny), "--model", str(runs["clip"].best), "--split", "nope"],
        env=env,
    )
    assert result.exit_code == 2 and "--split must be one of" in result.output
