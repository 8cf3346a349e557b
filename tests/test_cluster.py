"""`--ray`: the Ray Data schedule gives the same table, errors and resume as the local run.

Runs on a local Ray instance (2 CPUs) started once for the session. The model is a small-input
EfficientNet + LSTM (64 px crops) so both runs stay quick; what is checked is the schedule, and
the schedule does not care about the crop size.

The faults (worker processes that die, a node that goes) are made by `ray_faults`, installed in
every worker of that instance and idle until a test asks for a death.
"""

import logging
import re
import shutil
import sys
from contextlib import contextmanager

import pandas as pd
import pytest
import ray_faults
import torch
from conftest import BROKEN, DURATIONS, within
from typer.testing import CliRunner

import fercli
from fercli.core.errors import FerError
from fercli.job import cluster
from fercli.job.contract import AnnotateOptions
from fercli.tables.writers import read_metadata, read_table

RUN_LIMIT_S = 180  # a faulted run that has not ended by then is hung (they take 10-30 s)
POISON = "moving.mp4"  # the clip whose workers die
COPIES = 24  # clips in the node test: enough that some are still to do when the first comes back
FAULT_BATCH = [POISON, "odd.avi", "two.mkv"]  # with the broken files: 6 records, so POISON shares a model batch


@pytest.fixture(scope="session")
def faults(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def ray_local(faults):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is missing: pip install -e '.[ray]'")
    _start_local(ray, faults)
    yield ray
    ray.shutdown()


def _start_local(ray, faults) -> None:
    # address="local": a new instance even when another Ray on this machine is the latest started
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=ray_faults.runtime_env(faults),
    )


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import EfficientNetLSTM, ModelConfig, Preprocess

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
    fercli.annotate(
        [clips_dir / "moving.mp4", clips_dir / "odd.avi"], out, options=AnnotateOptions(workers=0), model=small_model
    )
    result = fercli.annotate(
        [clips_dir, broken_dir], out, options=AnnotateOptions(ray="local", resume=True), model=small_model
    )
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


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_asked_of_a_cluster_without_one_is_refused_not_replaced_by_cpus(device):
    with pytest.raises(FerError, match=f"--device {device}: the Ray cluster has no GPUs"):
        cluster._model_pool({"CPU": 8.0}, device)
    assert cluster._model_pool({"CPU": 8.0, "GPU": 2.0}, device) == (2, {"num_gpus": 1, "num_cpus": 1}, "cuda")


def test_cli_ray_option(tmp_path, ray_local, clips_dir, small_model, local_run, monkeypatch):
    from fercli.cli import app

    _, local_out = local_run
    out = tmp_path / "r.parquet"
    monkeypatch.setattr("fercli.nets.model.load_placed", lambda *a, **k: small_model)
    result = CliRunner().invoke(app, ["annotate", str(clips_dir), "--out", str(out), "--ray", "local"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(read_table(out), read_table(local_out), atol=1e-5, check_exact=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(
        app, ["annotate", str(clips_dir), "--out", str(tmp_path / "x.parquet"), "--ray", "auto"]
    )
    assert result.exit_code == 2 and "pip install 'fercli[ray]'" in result.output


def test_benchmark_speed_times_the_ray_schedule(ray_local, clips_dir, small_model):
    from fercli.job.benchmark import speed

    report = speed(
        [clips_dir / "odd.avi"],
        device="cpu",
        options=AnnotateOptions(ray="local"),
        naive=False,
        loaded_model=small_model,
    )
    assert report.setup["workers"] == "ray local"
    assert report.sampled_frames == 16  # 3.2 s at 5 frames/s, decoded on the Ray workers
    assert report.stages["backbone"].items == 16


def test_benchmark_speed_on_ray_takes_torch_when_no_engine_is_named(ray_local, clips_dir, small_model, monkeypatch):
    # The default engine is OpenVINO on a CPU, but not for Ray's model actors: as annotate settles it.
    from fercli.job.benchmark import speed

    monkeypatch.delenv("FER_ENGINE")
    options = AnnotateOptions(ray="local")
    report = speed([clips_dir / "odd.avi"], model=small_model.source, device="cpu", options=options, naive=False)
    assert report.setup["engine"] == "torch" and report.stages["backbone"].items == 16


# -- faults: worker processes that die, a node that goes ---------------------------------------


@pytest.fixture
def poison(ray_local, faults):
    """Plans deaths on POISON for this test (`ray_faults.plan`); the workers stop dying after it."""
    yield lambda stage, deaths: ray_faults.plan(faults, POISON, stage, deaths)
    ray_faults.clear(faults)


def annotate_limited(paths, out, model, progress=None):
    """annotate on Ray in a thread, so that a hang is a failed assertion rather than a stuck suite."""
    return within(
        RUN_LIMIT_S,
        lambda: fercli.annotate(paths, out, options=AnnotateOptions(ray="local"), model=model, progress=progress),
    )


@contextmanager
def fer_warnings():
    """fer's warnings during the block (the CLI's tests turn off propagation to the root logger)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("fercli")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def lost_counts(records) -> list[int]:
    """Clips each retry pass took up, from its warning (the CLI's handler may have formatted it already)."""
    found = (re.match(r"ray: (\d+) clip\(s\) lost", r.getMessage()) for r in records)
    return [int(m[1]) for m in found if m]


def only(table: pd.DataFrame, videos) -> pd.DataFrame:
    return table[table.video.isin(videos)].reset_index(drop=True)


@pytest.fixture
def fault_batch(clips_dir, broken_dir):
    return [clips_dir / name for name in FAULT_BATCH] + [broken_dir]


def test_ray_retries_a_clip_whose_decoding_process_died(poison, faults, tmp_path, fault_batch, small_model, local_run):
    local, local_out = local_run
    poison("decode", 1)
    with fer_warnings() as records:
        result = annotate_limited(fault_batch, tmp_path / "r.parquet", small_model)
    assert ray_faults.deaths(faults) == 1
    assert lost_counts(records) == [1]
    assert _failed(result) == _failed(local)  # the broken files, once each
    pd.testing.assert_frame_equal(
        read_table(result.out), only(read_table(local_out), FAULT_BATCH), atol=1e-5, check_exact=False
    )


@pytest.mark.parametrize("stage", ["decode", "model"])
def test_ray_a_clip_that_kills_its_worker_twice_fails_alone(
    stage, poison, faults, tmp_path, fault_batch, small_model, local_run
):
    local, local_out = local_run
    poison(stage, 99)
    with fer_warnings() as records:
        result = annotate_limited(fault_batch, tmp_path / "r.parquet", small_model)
    assert ray_faults.deaths(faults) == 2  # once with the batch, once alone: then it is given up
    if stage == "model":  # the clips that shared its model actor were lost with it, and came back
        assert lost_counts(records)[0] >= 2
    assert _failed(result) == sorted(_failed(local) + [(POISON, f"{fault_batch[0]}: {cluster.LOST}")])
    errors = pd.read_csv(result.errors_file)
    assert sorted(errors.video) == sorted(name for name, _ in _failed(result))  # each once
    pd.testing.assert_frame_equal(
        read_table(result.out), only(read_table(local_out), FAULT_BATCH[1:]), atol=1e-5, check_exact=False
    )


@pytest.fixture
def two_nodes(ray_local, faults, monkeypatch):
    """A head (2 CPUs) and a second node (1 CPU) on this machine, in place of the session's Ray."""
    from ray.cluster_utils import Cluster

    ray = ray_local
    ray.shutdown()
    # Cluster would also name itself this machine's latest Ray (/tmp/ray/ray_current_cluster), and
    # any `ray.init()` without an address here, another user's included, would join it meanwhile.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)  # nor remove another's
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, node
    finally:
        ray.shutdown()
        cluster.shutdown()
        _start_local(ray, faults)  # back for the tests after this one


@pytest.fixture(scope="module")
def copies(tmp_path_factory, small_model):
    """COPIES copies of a short clip, and the table a local run gives one of them."""
    import media

    folder = tmp_path_factory.mktemp("copies")
    first = media.make_clip(folder / "c00.mp4", 2.0, 25, (160, 120), media.still_face(20, 10, 100))
    for k in range(1, COPIES):
        shutil.copy(first, folder / f"c{k:02d}.mp4")
    one = tmp_path_factory.mktemp("one") / "t.parquet"
    fercli.annotate([first], one, options=AnnotateOptions(workers=0), model=small_model)
    return folder, read_table(one)


def test_ray_a_node_lost_mid_run_costs_only_time(two_nodes, tmp_path, copies, small_model):
    # 2 model actors on 3 CPUs, each holding up to 8 clips: the first clips come back while
    # others are still decoding or in a model batch, some of them on the node that then goes.
    folder, one = copies
    cluster, node = two_nodes
    done = []

    def remove_after_first_clip(event):
        if event.kind == "done":
            done.append(event.video)
            if len(done) == 1:
                cluster.remove_node(node)

    result = annotate_limited([folder], tmp_path / "r.parquet", small_model, remove_after_first_clip)
    assert sorted(done) == sorted(f"c{k:02d}.mp4" for k in range(COPIES))  # each once, after the node went
    assert not result.failed
    table = read_table(result.out)
    for _video, rows in table.groupby("video"):
        pd.testing.assert_frame_equal(
            rows.drop(columns="video").reset_index(drop=True), one.drop(columns="video"), atol=1e-5
        )
