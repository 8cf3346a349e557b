"""`fer train` on synthetic AFEW-VA (tests/synthetic_afew.py) with the seeded random backbone, on the CPU.

The two headline runs (LSTM and mean-of-features heads on the same held-out clips) share one
feature cache, so the backbone sees each frame once for the whole module.
"""

import csv
import json
import logging
import math
import os
from pathlib import Path

import pytest
import synthetic_afew
import torch

from fercli.core.errors import DataError, FerError, WeightsError
from fercli.datasets import afew, splits
from fercli.nets.backbones import backbone_weights
from fercli.training.loop import initial_model, model_config, train
from fercli.training.options import TrainOptions

REPO = Path(__file__).resolve().parents[1]
# Small and fast for CI: 96 px crops, a 64-unit LSTM, bigger batches and steps than the paper's
# (8, 1e-4), which would need hundreds of epochs on this little data.
FAST = dict(init="random", frames_fps=5.0, image_size=96, hidden=64, batch_size=16, lr=2e-3, patience=6, epochs=30)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """24 clips x 40 frames (at 5 fps: 8 s each), 8 actors."""
    root = tmp_path_factory.mktemp("afew-va")
    synthetic_afew.make_dataset(root, clips=24, frames=40, actors=8)
    return root


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    # Module fixtures are built before the autouse FER_CACHE_DIR fixture applies: name the cache.
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def runs(synthetic, features, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {
        t: train(TrainOptions(synthetic, out / t, temporal=t, cache_dir=features, **FAST)) for t in ("lstm", "mean")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """6 clips x 12 frames, 3 actors: for tests of the machinery, not of learning."""
    root = tmp_path_factory.mktemp("afew-tiny")
    synthetic_afew.make_dataset(root, clips=6, frames=12, actors=3, seed=1)
    return root


# --- what the model learns -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("temporal", ["lstm", "mean"])
def test_valence_is_learnt_by_either_head_on_held_out_clips(runs, temporal):
    assert runs[temporal].test["ccc_valence"] > 0.8


@pytest.mark.slow
def test_arousal_needs_the_order_of_frames(runs):
    lstm, mean = runs["lstm"].test["ccc_arousal"], runs["mean"].test["ccc_arousal"]
    assert lstm > 0.6
    assert mean < 0.35  # a window's set of frames says nothing about the direction of the roll
    assert lstm - mean > 0.4


@pytest.mark.slow
def test_test_clips_and_actors_were_never_trained_on(runs, synthetic):
    split = json.loads((runs["lstm"].out / "split.json").read_text())
    assert split["kind"] == "clip"
    actor = {c.id: c.actor for c in afew.read_dataset(synthetic)}
    groups = [{actor[c] for c in split[p]} for p in splits.PARTS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert runs["lstm"].windows["test"] > 0 and runs["mean"].windows == runs["lstm"].windows


# --- the run folder and the checkpoint -------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_records_itself(runs):
    r = runs["lstm"]
    config = json.loads((r.out / "config.json").read_text())
    assert config["options"]["temporal"] == "lstm" and config["split"]["kind"] == "clip"
    assert config["model"]["preprocess"]["size"] == 96 and len(config["backbone_sha256"]) == 64
    with open(r.out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == list(range(1, r.epochs + 1))
    assert {"train_loss", "val_loss", "val_acc_valence", "val_ccc_arousal", "seconds"} <= set(rows[0])
    assert (r.out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stopped_early or r.epochs == FAST["epochs"]
    best = torch.load(r.best, weights_only=True)
    meta = best["training"]
    assert (
        meta["split"] == "clip"
        and (meta["backbone"], meta["init"]) == ("efficientnet_b0", "random")
        and meta["epoch"] == r.best_epoch
    )
    assert meta["backbone_sha256"] == config["backbone_sha256"]
    assert meta["test"]["ccc_valence"] == pytest.approx(r.test["ccc_valence"])
    assert json.loads((r.out / "test.json").read_text())["best_epoch"] == r.best_epoch
    assert (r.out / "last.pt").exists()


@pytest.mark.slow
def test_checkpoint_runs_in_fer_annotate_and_agrees_with_the_truth(runs, synthetic, tmp_path):
    import pandas as pd

    from fercli import AnnotateOptions, annotate
    from fercli.nets.model import load_model

    model = load_model(runs["lstm"].best)
    assert model.config.temporal == "lstm" and model.config.window == 5 and model.config.preprocess.size == 96
    test_clips = json.loads((runs["lstm"].out / "split.json").read_text())["test"]
    out = tmp_path / "pred.csv"
    result = annotate(
        [synthetic / c for c in test_clips], out, options=AnnotateOptions(frames_fps=5.0), model=model, device="cpu"
    )
    assert not result.failed
    pred = pd.read_csv(out, dtype={"video": str})
    assert pred["face"].all()
    truth = []
    for c in test_clips:
        doc = json.loads((synthetic / c / f"{c}.json").read_text())
        for key, f in doc["frames"].items():
            truth.append((c, int(key) // 5, f["valence"]))
    truth = pd.DataFrame(truth, columns=["video", "second", "true"]).groupby(["video", "second"], as_index=False).mean()
    both = pred.merge(truth, on=["video", "second"])
    assert len(both) == len(pred)
    from fercli.scoring.metrics import ccc

    # The same crops, windows and model as in training: held-out valence comes out as trained.
    assert ccc(both["true"], both["valence_score"]) > 0.8


# --- resume, caches, splits ----------------------------------------------------------------------


@pytest.mark.slow
def test_resume_continues_where_it_stopped(synthetic, features, tmp_path):
    opts = dict(temporal="lstm", cache_dir=features, **{**FAST, "patience": 100})
    straight = train(TrainOptions(synthetic, tmp_path / "straight", **{**opts, "epochs": 4}))
    first = train(TrainOptions(synthetic, tmp_path / "cut", **{**opts, "epochs": 2}))
    assert first.epochs == 2
    resumed = train(TrainOptions(synthetic, tmp_path / "cut", resume=True, **{**opts, "epochs": 4}))
    assert resumed.epochs == 4 and resumed.prep.encoded == 0

    def without_time(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_time(resumed.history[:2]) == without_time(first.history)
    assert without_time(resumed.history) == without_time(straight.history)
    a = torch.load(straight.last, weights_only=True)["state_dict"]
    b = torch.load(resumed.last, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "cut" / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_an_existing_run_is_never_overwritten(tiny, tmp_path):
    opts = dict(cache_dir=tmp_path / "c", **{**FAST, "epochs": 1, "image_size": 64})
    train(TrainOptions(tiny, tmp_path / "run", **opts))
    with pytest.raises(FerError, match="already holds a run; pass --resume"):
        train(TrainOptions(tiny, tmp_path / "run", **opts))
    with pytest.raises(FerError, match=r"cannot resume with different options \(lr\)"):
        train(TrainOptions(tiny, tmp_path / "run", resume=True, **{**opts, "lr": 1e-2}))
    with pytest.raises(FerError, match="nothing to resume"):
        train(TrainOptions(tiny, tmp_path / "other", resume=True, **opts))


def digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_finished_run_whose_last_pt_was_deleted_is_not_overwritten(tiny, tmp_path):
    opts = dict(cache_dir=tmp_path / "c", **{**FAST, "epochs": 1, "image_size": 64})
    run = train(TrainOptions(tiny, tmp_path / "run", **opts)).out
    (run / "last.pt").unlink()  # to save space once the run is done: best.pt is the model
    kept = digests(run)
    with pytest.raises(FerError, match=r"already holds a run \(best.pt, config.json"):
        train(TrainOptions(tiny, run, **opts))
    assert digests(run) == kept


def test_an_out_that_is_a_file_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    from fercli.datasets import features as feature_module

    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(feature_module, "prepare", lambda *a, **k: pytest.fail("features were prepared"))
    with pytest.raises(FerError, match=r"--out .*notes.txt is a file"):
        train(
            TrainOptions(
                tiny, tmp_path / "notes.txt", cache_dir=tmp_path / "c", **{**FAST, "epochs": 1, "image_size": 64}
            )
        )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_resumes_from_another_directory(tiny, tmp_path, monkeypatch):
    opts = dict(cache_dir=tmp_path / "c", **{**FAST, "epochs": 1, "image_size": 64})
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    data = Path(os.path.relpath(tiny, tmp_path / "a"))
    train(TrainOptions(data, Path("run"), **opts))
    monkeypatch.chdir(tmp_path)  # the same data and run folder, spelled from elsewhere
    resumed = train(TrainOptions(tiny, Path("a/run"), resume=True, **{**opts, "epochs": 2}))
    assert resumed.epochs == 2


def test_a_larger_patience_lets_an_early_stopped_run_go_on(tiny, tmp_path):
    # lr 1e-30 moves no float32 weight, so no epoch has a better validation loss than the first
    opts = dict(cache_dir=tmp_path / "c", **{**FAST, "image_size": 64, "lr": 1e-30, "monitor": "loss"})
    first = train(TrainOptions(tiny, tmp_path / "run", **{**opts, "epochs": 5, "patience": 1}))
    assert first.stopped_early and first.epochs == 2
    again = train(TrainOptions(tiny, tmp_path / "run", resume=True, **{**opts, "epochs": 5, "patience": 1}))
    assert again.epochs == 2  # the same patience: still stopped
    more = train(TrainOptions(tiny, tmp_path / "run", resume=True, **{**opts, "epochs": 5, "patience": 3}))
    assert more.epochs == 4 and more.stopped_early  # epochs 2, 3 and 4 without a better one


def test_second_run_does_no_backbone_work(tiny, tmp_path, monkeypatch):
    opts = dict(cache_dir=tmp_path / "cache", **{**FAST, "epochs": 1, "image_size": 64})
    first = train(TrainOptions(tiny, tmp_path / "a", **opts))
    assert first.prep.detected == 72 and first.prep.encoded == 72

    from fercli.media.faces import FaceDetector
    from fercli.nets.model import EfficientNetLSTM

    def forbidden(*args, **kwargs):
        raise AssertionError("backbone or detector ran although the cache has everything")

    monkeypatch.setattr(EfficientNetLSTM, "encode", forbidden)
    monkeypatch.setattr(FaceDetector, "detect", forbidden)
    for out, temporal in (("b", "lstm"), ("c", "mean")):  # features do not depend on the head
        again = train(TrainOptions(tiny, tmp_path / out, temporal=temporal, **opts))
        assert again.prep.detected == 0 and again.prep.encoded == 0
        assert again.prep.features_cached == 72 and again.prep.boxes_cached == 72


def test_window_split_is_recorded_as_such(tiny, tmp_path):
    r = train(
        TrainOptions(
            tiny, tmp_path / "w", split="window", cache_dir=tmp_path / "c", **{**FAST, "epochs": 1, "image_size": 64}
        )
    )
    split = json.loads((r.out / "split.json").read_text())
    assert split["kind"] == "window" and split["test"][0].count(":") == 1
    assert json.loads((r.out / "config.json").read_text())["split"]["kind"] == "window"
    assert torch.load(r.best, weights_only=True)["training"]["split"] == "window"
    assert sum(r.windows.values()) == 6 * 8


def test_finetune_trains_the_backbone_end_to_end(tiny, tmp_path):
    opts = TrainOptions(
        tiny,
        tmp_path / "ft",
        finetune=True,
        cache_dir=tmp_path / "c",
        **{**FAST, "epochs": 1, "image_size": 64, "hidden": 16, "window": 3},
    )
    r = train(opts)
    assert r.prep.encoded == 0  # no feature cache when the backbone changes every step
    trained = torch.load(r.best, weights_only=True)["state_dict"]
    init, _ = backbone_weights("random", model_config(opts))
    assert not torch.equal(trained["backbone.conv_stem.weight"], init["conv_stem.weight"])
    assert list((tmp_path / "c" / "crops").rglob("*.npz"))  # crops computed once, cached


def test_finetuning_under_bf16_autocast_keeps_a_random_backbone_finite(tiny, tmp_path, monkeypatch):
    # fp16 autocast can turn a random EfficientNet's features into inf and every prediction into
    # NaN; the same loop under CPU autocast shows bf16, the GPU's choice, keeps fp32's range.
    from fercli.training import loop as training

    assert training.amp_dtype(torch.device("cpu")) is None  # CPU runs stay fp32
    monkeypatch.setattr(training, "amp_dtype", lambda device: torch.bfloat16)
    opts = TrainOptions(
        tiny,
        tmp_path / "bf16",
        finetune=True,
        cache_dir=tmp_path / "c",
        **{**FAST, "epochs": 1, "hidden": 16, "window": 3},
    )
    r = train(opts)
    row = next(csv.DictReader((r.out / "summary.csv").open()))
    assert all(math.isfinite(float(row[k])) for k in ("train_loss", "train_ccc_valence", "val_loss", "val_ccc_arousal"))


def test_hsemotion_backbone_comes_from_its_weights_file(tmp_path, monkeypatch):
    import timm

    from fercli.nets import weights

    torch.manual_seed(3)
    net = timm.create_model("tf_efficientnet_b0", num_classes=10)
    path = tmp_path / "enet_b0_8_va_mtl.pt"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(weights, "fetch", lambda name, **kw: path)
    state, sha = backbone_weights("hsemotion", model_config(TrainOptions("d", "o")))
    assert sha == weights.sha256(path)
    assert torch.equal(state["conv_stem.weight"], net.state_dict()["conv_stem.weight"])
    # The model keeps HSEmotion's expression logits (classifier rows 0-7), frozen; valence and
    # arousal (rows 8-9) are the LSTM's job.
    model, _ = initial_model(TrainOptions("d", "o"))
    assert model.config.expressions and not model.expression_head.weight.requires_grad
    assert torch.equal(model.expression_head.weight, net.state_dict()["classifier.weight"][:8])
    assert torch.equal(model.expression_head.bias, net.state_dict()["classifier.bias"][:8])
    assert torch.equal(model.backbone.conv_stem.weight, net.state_dict()["conv_stem.weight"])
    # fine-tuning moves the features under the classifier: no expression head then
    assert not model_config(TrainOptions("d", "o", finetune=True)).expressions
    assert not model_config(TrainOptions("d", "o", init="random")).expressions


def test_missing_hsemotion_weights_stop_the_run(tiny, tmp_path, monkeypatch):
    from fercli.nets import weights

    def offline(name, **kw):
        raise WeightsError("cannot download hsemotion (offline)")

    monkeypatch.setattr(weights, "fetch", offline)
    with pytest.raises(WeightsError, match="offline"):
        train(TrainOptions(tiny, tmp_path / "run", init="hsemotion"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_initial_weights_download_is_reported_as_train_events(tiny, tmp_path, monkeypatch):
    """`fer train` shows its weights bar from these events, as annotate does: the CLI fetches nothing itself."""
    from fercli.nets import weights
    from fercli.training.loop import TrainEvent

    asked = []

    def halfway(name, progress=None, **kw):
        asked.append(name)
        progress(5_000_000, 10_000_000)
        raise WeightsError(f"cannot download {name} (offline)")

    monkeypatch.setattr(weights, "fetch", halfway)
    events = []
    for backbone, init, name in [
        ("efficientnet_b0", "hsemotion", "hsemotion"),
        ("resnet50", "imagenet", "imagenet-resnet50"),
    ]:
        with pytest.raises(WeightsError, match="offline"):
            train(TrainOptions(tiny, tmp_path / init, backbone=backbone, init=init), progress=events.append)
        assert asked[-1] == name and events[-1] == TrainEvent("download", 5_000_000, 10_000_000)
    assert len(asked) == 2


def test_bad_data_stops_the_run_naming_the_clip(tiny, tmp_path):
    import shutil

    shutil.copytree(tiny, tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "004" / "004.json").read_text())
    doc["frames"]["00007"]["arousal"] = 14
    (tmp_path / "d" / "004" / "004.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="clip 004 .*frame 00007: arousal 14 is outside -10..10"):
        train(TrainOptions(tmp_path / "d", tmp_path / "run", **FAST))


def test_paper_configuration_is_the_default_but_for_what_stops_it():
    paper = json.loads((REPO / "train" / "paper.json").read_text())
    defaults = TrainOptions("d", "o")
    assert paper.pop("monitor") == "loss" and defaults.monitor == "ccc"  # Algorithm 1 stops on loss
    assert {k: getattr(defaults, k) for k in paper} == paper
    assert (defaults.lr, defaults.batch_size, defaults.split) == (1e-4, 8, "clip")


def _summary(run) -> list[dict]:
    with open(run.out / "summary.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize("temporal", ["lstm", "mean"])
def test_best_checkpoint_is_the_epoch_with_the_best_mean_validation_ccc(runs, temporal):
    run = runs[temporal]
    rows = _summary(run)
    ccc = [(r["val_ccc_valence"] + r["val_ccc_arousal"]) / 2 for r in rows]
    assert run.best_epoch == int(rows[max(range(len(rows)), key=ccc.__getitem__)]["epoch"])
    config = json.loads((run.out / "config.json").read_text())
    assert config["options"]["monitor"] == "ccc" and config["optimizer"]["monitor"] == "ccc"
    from fercli.nets.checkpoints import read_checkpoint

    assert read_checkpoint(run.best)["training"]["monitor"] == "ccc"
    # Patience counts epochs after the best: a run that stopped early stopped `patience` after it.
    if run.stopped_early:
        assert len(rows) - run.best_epoch == FAST["patience"]


def test_monitor_loss_keeps_the_epoch_with_the_lowest_validation_loss(tiny, tmp_path):
    run = train(TrainOptions(tiny, tmp_path / "run", monitor="loss", **{**FAST, "epochs": 6}))
    rows = _summary(run)
    assert run.best_epoch == int(min(rows, key=lambda r: r["val_loss"])["epoch"])
    assert json.loads((run.out / "config.json").read_text())["options"]["monitor"] == "loss"


def test_unknown_monitor_is_refused(tiny, tmp_path):
    with pytest.raises(FerError, match="--monitor must be one of ccc, loss"):
        train(TrainOptions(tiny, tmp_path / "run", monitor="f1", **FAST))


def test_fer_train_command(tiny, tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    if not any((c.name or c.callback.__name__) == "train" for c in app.registered_commands):
        pytest.skip("`fer train` is not registered in fercli/cli.py yet")
    args = [
        "train",
        "--data",
        tiny,
        "--out",
        tmp_path / "run",
        "--init",
        "random",
        "--epochs",
        "1",
        "--frames-fps",
        "5",
        "--device",
        "cpu",
    ]
    env = {"FER_CACHE_DIR": str(tmp_path / "cache")}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").exists()
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 2 and "--resume" in result.output


def test_temporal_none_trains_and_annotates(tiny, tmp_path):
    """The ABAW frame baseline: a per-frame head, trained on windows, usable by fer annotate."""
    import fercli

    run = train(TrainOptions(tiny, tmp_path / "run", temporal="none", **{**FAST, "epochs": 2}))
    model = fercli.load_model(run.best, "cpu")
    assert model.config.temporal == "none" and model.config.is_window_model
    clip = sorted(p for p in tiny.iterdir() if p.is_dir())[0]
    out = tmp_path / "r.csv"
    fercli.annotate([clip], out, model=model, options=fercli.AnnotateOptions(frames_fps=5.0))
    df = fercli.read_table(out)
    assert len(df) > 0 and df[df.face].valence_conf.between(0, 1).all()


def test_fraction_trains_on_fewer_clips_with_the_same_validation_and_test(synthetic, features, tmp_path):
    full = train(TrainOptions(synthetic, tmp_path / "full", cache_dir=features, **{**FAST, "epochs": 1}))
    half = train(TrainOptions(synthetic, tmp_path / "half", fraction=0.5, cache_dir=features, **{**FAST, "epochs": 1}))
    a, b = (json.loads((r.out / "split.json").read_text()) for r in (full, half))
    assert (a["val"], a["test"]) == (b["val"], b["test"])
    assert set(b["train"]) < set(a["train"])
    assert json.loads((half.out / "config.json").read_text())["options"]["fraction"] == 0.5


def test_benchmark_compare_puts_runs_side_by_side(runs, tmp_path):
    """compare.json and compare.md hold what each run recorded (test.json, summary.csv, config.json)."""
    from typer.testing import CliRunner

    from fercli.cli import app

    folders = [runs["lstm"].out, runs["mean"].out]
    result = CliRunner().invoke(app, ["benchmark", "compare", *map(str, folders), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(doc["runs"]) == [f.name for f in folders]
    for folder in folders:
        row, test = doc["runs"][folder.name], json.loads((folder / "test.json").read_text())
        summary = _summary(type("R", (), {"out": folder}))
        assert row["ccc_valence"] == test["ccc_valence"] and row["ccc_arousal"] == test["ccc_arousal"]
        assert row["ccc_mean"] == pytest.approx((test["ccc_valence"] + test["ccc_arousal"]) / 2)
        assert row["f1_valence"] == test["f1_valence"] and row["acc_arousal"] == test["acc_arousal"]
        assert row["train_seconds"] == pytest.approx(sum(r["seconds"] for r in summary))
        assert (row["lr"], row["batch_size"], row["split"], row["fraction"]) == (
            FAST["lr"],
            FAST["batch_size"],
            "clip",
            1.0,
        )
        assert row["temporal"] == folder.name and row["init"] == "random" and row["device"] == "cpu"
    md = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert md[0].startswith("| run | backbone | init | temporal |") and len(md) == 2 + len(folders)
    assert f"{doc['runs']['lstm']['ccc_arousal']:.3f}" in md[2]


def test_benchmark_compare_names_a_folder_that_is_not_a_run(tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    (tmp_path / "notarun").mkdir()
    result = CliRunner().invoke(app, ["benchmark", "compare", str(tmp_path / "notarun")])
    assert result.exit_code == 2 and "config.json" in result.output


def fake_run(folder: Path) -> Path:
    """A run folder as `fer train` leaves one, written by hand: config.json, test.json, summary.csv."""
    folder.mkdir(parents=True)
    config = {
        "options": {
            "init": "random",
            "temporal": "lstm",
            "split": "clip",
            "fraction": 1.0,
            "lr": 1e-4,
            "batch_size": 8,
        },
        "model": {"backbone": "efficientnet_b0"},
        "device": "cpu",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "test.json").write_text(
        json.dumps({"ccc_valence": 0.5, "ccc_arousal": 0.25, "acc_valence": 0.4, "best_epoch": 2})
    )
    (folder / "summary.csv").write_text("epoch,seconds\n1,1.5\n2,2.25\n")
    return folder


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("summary.csv", "epoch,time\n1,1.5\n", "no 'seconds' column"),
        ("summary.csv", "epoch,seconds\n1,fast\n", "'seconds' value is not a number"),
        ("summary.csv", b"epoch,seconds\n1,\xff\n", "unreadable"),
        ("test.json", '{"ccc_valence": "0.5", "ccc_arousal": 0.2}', "ccc_valence '0.5' is not a number"),
        ("config.json", '{"options": "lr=1e-4"}', "'options' is not a JSON object"),
        ("config.json", '{"options": {"batch_size": [8]}}', "batch_size '[8]' is not a number"),
    ],
)
def test_compare_leaves_out_a_damaged_run_naming_its_file_and_compares_the_rest(tmp_path, name, content, message):
    from typer.testing import CliRunner

    from fercli.cli import app

    good, bad = fake_run(tmp_path / "good"), fake_run(tmp_path / "bad")
    (bad / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(app, ["benchmark", "compare", str(bad), str(good), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad / name}: " + errors[0].split(f"{bad / name}: ", 1)[1]] and message in errors[0]
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(doc["runs"]) == ["good"]
    assert doc["runs"]["good"]["train_seconds"] == 3.75 and doc["runs"]["good"]["ccc_mean"] == 0.375  # by hand


def test_compare_with_no_readable_run_is_an_error(tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    bad = fake_run(tmp_path / "bad")
    (bad / "test.json").unlink()
    result = CliRunner().invoke(app, ["benchmark", "compare", str(bad), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "test.json: missing" in result.output and not (tmp_path / "cmp").exists()


def test_soft_labels_are_gaussians_around_the_true_class():
    import numpy as np

    from fercli.training.loop import soft_labels

    cls = torch.tensor([0, 10, 13, 20])
    got = soft_labels(cls, sigma=1.0).numpy()
    grid = np.arange(21)
    for row, c in zip(got, cls.tolist()):
        want = np.exp(-0.5 * (grid - c) ** 2)
        np.testing.assert_allclose(row, want / want.sum(), rtol=1e-5, atol=1e-7)
    assert np.allclose(got.sum(1), 1) and (got.argmax(1) == cls.numpy()).all()


def test_soft_loss_costs_a_near_miss_less_than_a_far_one():
    from fercli.training.loop import _loss

    truth = torch.tensor([10])
    near, far = torch.full((1, 21), -5.0), torch.full((1, 21), -5.0)
    near[0, 11], far[0, 20] = 5.0, 5.0  # one class off against ten classes off
    ce = [float(_loss(x, x, truth, truth, "ce")) for x in (near, far)]
    soft = [float(_loss(x, x, truth, truth, "soft")) for x in (near, far)]
    assert ce[0] == pytest.approx(ce[1])  # plain cross-entropy cannot tell them apart
    assert soft[0] < soft[1] - 1.0


def test_soft_loss_trains_and_is_recorded(tiny, tmp_path):
    run = train(TrainOptions(tiny, tmp_path / "run", loss="soft", **{**FAST, "epochs": 2}))
    config = json.loads((run.out / "config.json").read_text())
    assert config["options"]["loss"] == "soft" and "soft labels" in config["optimizer"]["loss"]


# --- --backbone efficientnet_b0|resnet50 with --init hsemotion|imagenet|random ------------------


def test_backbone_names_are_timm_models():
    assert model_config(TrainOptions("d", "o", backbone="resnet50", init="random")).backbone == "resnet50"
    assert model_config(TrainOptions("d", "o")).backbone == "tf_efficientnet_b0"


@pytest.mark.parametrize(
    "backbone, init, message",
    [
        ("resnet50", "hsemotion", "--init hsemotion is an efficientnet_b0 network"),
        ("vit", "random", "--backbone must be one of efficientnet_b0, resnet50"),
        ("resnet50", "scratch", "--init must be one of hsemotion, imagenet, random"),
        ("random", "random", "--backbone must be one of efficientnet_b0, resnet50, not 'random'"),
    ],
)
def test_bad_backbone_or_init_is_refused(tiny, tmp_path, backbone, init, message):
    with pytest.raises(FerError, match=message):
        train(TrainOptions(tiny, tmp_path / "run", backbone=backbone, init=init))
    assert not (tmp_path / "run").exists()


def test_random_resnet50_features_clear_the_layernorm_epsilon():
    cfg = model_config(TrainOptions("d", "o", backbone="resnet50", init="random", image_size=64))
    state, _ = backbone_weights("random", cfg)
    model = initial_model(TrainOptions("d", "o", backbone="resnet50", init="random", image_size=64))[0].eval()
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    with torch.no_grad():
        f = model.encode(torch.randn(4, 3, 64, 64))
    assert f.shape == (4, 2048)
    # The head's LayerNorm adds 1e-5 to the variance: features must spread far above that.
    assert f.var(dim=1).min() > 1e-5 * 100


@pytest.mark.parametrize("arch, drop", [("resnet50", "fc."), ("tf_efficientnet_b0", "classifier.")])
def test_imagenet_init_loads_timm_state_dict_without_its_classifier(tmp_path, monkeypatch, arch, drop):
    import timm

    from fercli.nets import weights

    torch.manual_seed(4)
    net = timm.create_model(arch, num_classes=1000)
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    asked = []
    monkeypatch.setattr(weights, "fetch", lambda name, **kw: asked.append(name) or path)
    backbone = "resnet50" if arch == "resnet50" else "efficientnet_b0"
    model, sha = initial_model(TrainOptions("d", "o", backbone=backbone, init="imagenet", image_size=64))
    assert asked == [f"imagenet-{arch}"] and sha == weights.sha256(path)
    theirs = {k: v for k, v in net.state_dict().items() if not k.startswith(drop)}
    ours = model.backbone.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not model.config.expressions  # no HSEmotion classifier on an ImageNet start


def test_resnet50_run_is_a_model_for_annotate(tiny, tmp_path):
    from fercli import annotate
    from fercli.tables.writers import read_table

    opts = dict(FAST, backbone="resnet50", init="random", image_size=64, epochs=1)
    r = train(TrainOptions(tiny, tmp_path / "run", cache_dir=tmp_path / "c", **opts))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["backbone"] == "resnet50" and config["options"]["init"] == "random"
    clip = next(p for p in sorted(Path(tiny).iterdir()) if p.is_dir())
    annotate([clip], tmp_path / "t.parquet", model=str(r.best), device="cpu")
    table = read_table(tmp_path / "t.parquet")
    assert len(table) > 0 and table["valence"].notna().any()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_run_folder_inside_the_data_is_refused(tmp_path, where):
    # `--out D` with `--data D` wrote the run into the data set, which then no longer read.
    from fercli.core.errors import FerError

    data = tmp_path / "afew"
    data.mkdir()
    out = {"same": data, "inside": data / "runs" / "x"}[where]
    with pytest.raises(FerError, match="is inside --data .*: put the run folder outside the data set"):
        train(TrainOptions(data, out, init="random"))
    assert not any(data.iterdir())


# --- calibration.json from the validation part -----------------------------------------------------


def test_train_writes_fer_calibrates_file_for_best_pt_from_its_validation_clips(tiny, tmp_path, caplog, monkeypatch):
    import hashlib

    from typer.testing import CliRunner

    from fercli.cli import app
    from fercli.tables.writers import read_table

    # tiny's validation part holds 2 clips: enough for 0.6 coverage (K / (K + 1) = 2/3).
    SMALL = {**FAST, "epochs": 1, "image_size": 64}
    events = []
    run = train(TrainOptions(tiny, tmp_path / "run", coverage=0.6, cache_dir=tmp_path / "c", **SMALL), events.append)
    path = run.out / "calibration.json"
    assert run.calibration == path
    assert [(e.done, e.total) for e in events if e.kind == "calibrate"] == [(0, 2), (1, 2), (2, 2)]
    ours = json.loads(path.read_text())
    val = json.loads((run.out / "split.json").read_text())["val"]
    assert len(val) == 2 and ours["coverage"] == 0.6 and ours["clips"] == {"valence": 2, "arousal": 2}
    assert ours["model"]["weights_sha256"] == hashlib.sha256(run.best.read_bytes()).hexdigest()

    # The other path: `fer annotate` on the validation clips with best.pt, `fer calibrate` on its table.
    runner, table, theirs = CliRunner(), tmp_path / "val.parquet", tmp_path / "theirs.json"
    clips = [str(tiny / c) for c in val]
    res = runner.invoke(app, ["annotate", *clips, "--out", str(table), "--model", str(run.best), "--frames-fps", "5"])
    assert res.exit_code == 0, res.output
    args = ["--truth", str(tiny), "--pred", str(table), "--out", str(theirs), "--coverage", "0.6", "--frames-fps", "5"]
    res = runner.invoke(app, ["calibrate", *args])
    assert res.exit_code == 0, res.output
    theirs = json.loads(theirs.read_text())
    assert ours["quantiles"] == pytest.approx(theirs["quantiles"], abs=1e-6) and ours["quantiles"]["valence"] > 0
    assert (ours["clips"], ours["seconds"], ours["model"]) == (theirs["clips"], theirs["seconds"], theirs["model"])

    # `fer annotate` takes it with best.pt, and refuses it on one line with another checkpoint.
    def annotate(model, out):
        args = [clips[0], "--out", str(out), "--model", str(model), "--frames-fps", "5", "--identity", "texture"]
        return runner.invoke(app, ["annotate", *args, "--calibration", str(path)])

    res = annotate(run.best, tmp_path / "with.parquet")
    assert res.exit_code == 0, res.output
    faced = read_table(tmp_path / "with.parquet").query("face")
    assert len(faced) > 0 and (faced["valence_lo"] <= faced["valence_score"]).all()
    assert (faced["valence_hi"] > faced["valence_lo"]).all()
    res = annotate(run.last, tmp_path / "other.parquet")
    assert res.exit_code == 2 and str(path) in res.output and "weights_sha256" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output

    # Resumed at fer calibrate's 0.9, which 2 clips cannot give: the file for the old best.pt goes, one line says why.
    logger = logging.getLogger("fercli")  # the CLI's own handler (on its closed console) out of the way
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="fercli"):
        again = train(TrainOptions(tiny, run.out, resume=True, cache_dir=tmp_path / "c", **SMALL))
    assert again.calibration is None and not path.exists()
    said = [r.getMessage() for r in caplog.records if "calibration.json" in r.getMessage()]
    assert said == [f"no {path}: 2 validation clips cannot give 0.9 coverage: at least 9 are needed"]
    with pytest.raises(FerError, match="--coverage must lie between 0 and 1"):
        train(TrainOptions(tiny, tmp_path / "bad", coverage=1.0, **FAST))
