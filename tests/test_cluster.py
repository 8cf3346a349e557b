"""`--ray`: the Ray Data schedule gives the same table, errors and resume as the local run.

Runs on a local Ray instance (2 CPUs) started once for the session. The model is a small-input
EfficientNet + LSTM (64 px crops) so both runs stay quick; what is checked is the schedule, and
the schedule does not care about the crop size.
"""

import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fercli
from conftest import BROKEN, DURATIONS
from fercli.errors import FerError
from fercli.options import AnnotateOptions
from fercli.writers import read_metadata, read_table


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is missing: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from fercli.checkpoints import save_checkpoint
    from fercli.model import EfficientNetLSTM, ModelConfig, Preprocess

    torch.manual_seed(0)
    net = EfficientNetLSTM(ModelConfig(hidden=16, preprocess=Preprocess(size=64)))
    with torch.no_grad():  # as in conftest: labels that vary with the input
        net.valence_head.weight.mul_(20)
        net.arousal_head.weight.mul_(20)
    path = save_checkpoint(net.eval(), tmp_path_factory.mktemp("ckpt") / "small.pt")
    return fercli.load_model(path)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, clips_dir, broken_dir, small_model):
    out = tmp_path_factory.mktemp("local") / "results.parquet"
    result = fercli.annotate([clips_dir, broken_dir], out, options=AnnotateOptions(workers=0), model=small_model)
    return result, out


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, ray_local, clips_dir, broken_dir, small_model):
    out = tmp_path_factory.mktemp("ray") / "results.parquet"
    events = []
    result = fercli.annotate(
        [clips_dir, broken_dir], out, options=AnnotateOptions(ray="local"), model=small_model, progress=events.append
    )
    return result, out, events


def _failed(result):
    return sorted((v.video, v.error) for v in result.failed)


def test_ray_gives_the_local_table(local_run, ray_run):
    local, local_out = local_run
    result, out, _ = ray_run
    assert set(read_table(out).video) == set(DURATIONS)
    pd.testing.assert_frame_equal(read_table(out), read_table(local_out), atol=1e-5, check_exact=False)
    assert result.rows == local.rows
    local_meta, meta = read_metadata(local_out), read_metadata(out)
    assert {k: v for k, v in meta.items() if k != "created"} == {k: v for k, v in local_meta.items() if k != "created"}


def test_ray_reports_broken_inputs_as_the_local_run_does(local_run, ray_run):
    local, _ = local_run
    result, _, _ = ray_run
    assert _failed(result) == _failed(local)
    assert {name for name, _ in _failed(result)} == {b.split("/", 1)[1] for b in BROKEN}
    pd.testing.assert_frame_equal(
        pd.read_csv(result.errors_file).sort_values("video", ignore_index=True),
        pd.read_csv(local.errors_file).sort_values("video", ignore_index=True),
    )
    assert result.skipped_files == local.skipped_files


def test_ray_shows_progress_per_clip(ray_run):
    result, _, events = ray_run
    done = [e for e in events if e.kind == "done"]
    assert sorted(e.video for e in done) == sorted(v.video for v in result.videos)
    good = {e.result.video: e.result for e in done if not e.result.error}
    assert all(vr.rows > 0 and vr.duration > 0 and vr.elapsed > 0 for vr in good.values())


def test_ray_resume_completes_a_partial_table(tmp_path, ray_local, clips_dir, broken_dir, small_model, local_run):
    _, local_out = local_run
    out = tmp_path / "r.parquet"
    fercli.annotate([clips_dir / "moving.mp4", clips_dir / "odd.avi"], out, options=AnnotateOptions(workers=0), model=small_model)
    result = fercli.annotate([clips_dir, broken_dir], out, options=AnnotateOptions(ray="local", resume=True), model=small_model)
    assert sorted(v.video for v in result.videos if v.resumed) == ["moving.mp4", "odd.avi"]
    pd.testing.assert_frame_equal(read_table(out), read_table(local_out), atol=1e-5, check_exact=False)


def test_ray_per_frame_all_faces(tmp_path, ray_local, clips_dir, small_model):
    options = dict(per_sample=True, all_faces=True)
    local, remote = tmp_path / "l.csv", tmp_path / "r.csv"
    fercli.annotate([clips_dir / "two.mkv"], local, options=AnnotateOptions(workers=0, **options), model=small_model)
    fercli.annotate([clips_dir / "two.mkv"], remote, options=AnnotateOptions(ray="local", **options), model=small_model)
    df = read_table(remote)
    assert sorted(df.person.unique().tolist()) == [0, 1]
    pd.testing.assert_frame_equal(df, read_table(local), atol=1e-5, check_exact=False)


def test_without_ray_it_says_how_to_install(tmp_path, clips_dir, small_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    out = tmp_path / "r.parquet"
    with pytest.raises(FerError, match=r"pip install 'fercli\[ray\]'"):
        fercli.annotate([clips_dir / "odd.avi"], out, options=AnnotateOptions(ray="local"), model=small_model)
    assert not out.exists()


def test_cli_ray_option(tmp_path, ray_local, clips_dir, small_model, local_run, monkeypatch):
    from fercli.cli import app

    _, local_out = local_run
    out = tmp_path / "r.parquet"
    monkeypatch.setattr("fercli.model.load_model", lambda *a, **k: small_model)
    result = CliRunner().invoke(app, ["annotate", str(clips_dir), "--out", str(out), "--ray", "local"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(read_table(out), read_table(local_out), atol=1e-5, check_exact=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["annotate", str(clips_dir), "--out", str(tmp_path / "x.parquet"), "--ray", "auto"])
    assert result.exit_code == 2 and "pip install 'fercli[ray]'" in result.output


def test_benchmark_speed_times_the_ray_schedule(ray_local, clips_dir, small_model):
    from fercli.benchmark import speed

    report = speed([clips_dir / "odd.avi"], device="cpu", options=AnnotateOptions(ray="local"), naive=False, loaded_model=small_model)
    assert report.setup["workers"] == "ray local"
    assert report.sampled_frames == 16  # 3.2 s at 5 frames/s, decoded on the Ray workers
    assert report.stages["backbone"].items == 16
