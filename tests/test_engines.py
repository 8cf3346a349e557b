"""The OpenVINO backbone engine against torch's, its cache, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fercli.core.errors import FerError
from fercli.job.contract import AnnotateOptions
from fercli.job.pipeline import annotate
from fercli.nets.engines import TOLERANCE  # the README's promise for f32 tables

CLIP = "moving.mp4"
LABEL_COLUMNS = ["valence", "arousal", "expression"]


def _float_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if table[c].dtype.kind == "f"]


@pytest.fixture(scope="module")
def wide_frame_checkpoint(tmp_path_factory):
    # HSEmotion's form with a classifier scaled up: random weights give outputs near 1e-4, which
    # would hide any difference; these spread valence and arousal over the whole scale.
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

    torch.manual_seed(3)
    net = HSEmotionNet(HSEMOTION_CONFIG).eval()
    with torch.no_grad():
        net.backbone.classifier.weight.mul_(2000)
    return save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "wide.pt")


@pytest.mark.parametrize("which", ["lstm", "frame"])
def test_openvino_tables_match_torch_within_the_tolerance(
    which, clips_dir, lstm_checkpoint, wide_frame_checkpoint, tmp_path
):
    pytest.importorskip("openvino")
    ckpt = {"lstm": lstm_checkpoint, "frame": wide_frame_checkpoint}[which]
    tables = {}
    for engine in ("torch", "openvino"):
        out = tmp_path / f"{engine}.parquet"
        options = AnnotateOptions(per_sample=True, engine=engine)
        result = annotate([clips_dir / CLIP], out, model=str(ckpt), device="cpu", options=options)
        assert not result.failed
        tables[engine] = pd.read_parquet(out)
    ref, ov = tables["torch"], tables["openvino"]
    assert len(ref) == len(ov) > 10
    scores = ref["valence_score"].dropna()
    assert scores.max() - scores.min() > 100 * TOLERANCE  # the check below is not on constant output
    for col in _float_columns(ref):
        np.testing.assert_allclose(ov[col], ref[col], atol=TOLERANCE, rtol=0, equal_nan=True, err_msg=col)
    for col in (c for c in LABEL_COLUMNS if c in ref):
        assert ov[col].equals(ref[col]), col


def test_the_backbone_is_converted_once_then_read_from_the_cache(frame_checkpoint, cache):
    pytest.importorskip("openvino")
    from fercli.nets.checkpoints import read_checkpoint
    from fercli.nets.engines import ir_path, openvino_backbone
    from fercli.nets.model import model_from_checkpoint

    ckpt = read_checkpoint(frame_checkpoint)
    built = []

    def torch_backbone():
        built.append(1)
        return model_from_checkpoint(ckpt).backbone

    first = openvino_backbone(ckpt["state_dict"], 224, torch_backbone)
    path = ir_path(ckpt["state_dict"], 224, __import__("openvino").__version__)
    assert path.is_file() and path.with_suffix(".bin").is_file() and built == [1]
    again = openvino_backbone(ckpt["state_dict"], 224, lambda: pytest.fail("converted again"))
    x = torch.randn(3, 3, 224, 224)
    assert torch.equal(first(x), again(x))
    # Other weights, another entry: one changed number is enough.
    other = dict(ckpt["state_dict"])
    key = next(k for k in other if k.endswith("conv_stem.weight"))
    other[key] = other[key].clone()
    other[key].view(-1)[0] += 1
    assert ir_path(other, 224, "x") != ir_path(ckpt["state_dict"], 224, "x")
    assert ir_path(ckpt["state_dict"], 224, "x") != ir_path(ckpt["state_dict"], 224, "y")


def test_outputs_survive_the_next_call(frame_checkpoint):
    # OpenVINO writes each result into the same output buffer; features kept from one batch
    # (windows span batches) must not change when the next batch runs.
    pytest.importorskip("openvino")
    from fercli.nets.model import load_model

    net = load_model(frame_checkpoint, "cpu", engine="openvino")
    a, b = torch.randn(4, 3, 224, 224), torch.randn(4, 3, 224, 224)
    first = net.encode(a)
    kept = first.clone()
    net.encode(b)
    assert torch.equal(first, kept)


_NO_TIMM = """
import sys
from fercli.cli import run
code = run(sys.argv[1:])
print(code, "timm" in sys.modules, "torchvision" in sys.modules)
"""


def test_a_cached_openvino_backbone_needs_neither_timm_nor_torchvision(clips_dir, frame_checkpoint, tmp_path):
    pytest.importorskip("openvino")
    from fercli.nets.model import load_model

    load_model(frame_checkpoint, "cpu", engine="openvino")  # converts into the test's cache
    argv = [
        "annotate",
        str(clips_dir / CLIP),
        "--out",
        str(tmp_path / "t.parquet"),
        "--model",
        str(frame_checkpoint),
        "--engine",
        "openvino",
    ]
    done = subprocess.run([sys.executable, "-c", _NO_TIMM, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-3:] == ["0", "False", "False"]
    assert len(pd.read_parquet(tmp_path / "t.parquet")) > 0


def test_a_damaged_cached_backbone_is_one_line_naming_it(frame_checkpoint, cache):
    pytest.importorskip("openvino")
    from fercli.nets.checkpoints import read_checkpoint
    from fercli.nets.engines import ir_path
    from fercli.nets.model import load_model

    load_model(frame_checkpoint, "cpu", engine="openvino")
    ckpt = read_checkpoint(frame_checkpoint)
    path = ir_path(ckpt["state_dict"], 224, __import__("openvino").__version__)
    path.write_text("<net broken")
    with pytest.raises(FerError) as err:
        load_model(frame_checkpoint, "cpu", engine="openvino")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_engine_errors_are_one_line(frame_checkpoint, monkeypatch):
    from fercli.nets.engines import check_engine

    with pytest.raises(FerError, match="--engine must be one of auto, torch, openvino"):
        check_engine("tensorrt", torch.device("cpu"))
    with pytest.raises(FerError, match="runs on the CPU"):
        check_engine("openvino", torch.device("cuda"))
    with pytest.raises(FerError, match="Ray"):
        check_engine("openvino", torch.device("cpu"), ray="local")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    from fercli.nets.model import load_model

    with pytest.raises(FerError, match=r"pip install .*fercli\[openvino\]"):
        load_model(frame_checkpoint, "cpu", engine="openvino")


def test_a_loaded_network_runs_on_its_own_engine_and_no_other(clips_dir, frame_checkpoint, tmp_path):
    pytest.importorskip("openvino")
    import pyarrow.parquet as pq

    from fercli.nets.model import load_model

    net = load_model(frame_checkpoint, "cpu")
    out = tmp_path / "t.parquet"
    with pytest.raises(FerError, match="engine='openvino'"):
        annotate([clips_dir / CLIP], out, model=net, options=AnnotateOptions(engine="openvino"))
    assert not out.exists()
    # No engine asked for: the network's own, recorded in the table.
    annotate([clips_dir / CLIP], out, model=load_model(frame_checkpoint, "cpu", engine="openvino"))
    meta = json.loads(pq.read_schema(out).metadata[b"fer"])
    assert meta["engine"].split()[0] == "openvino"


def test_the_cli_refuses_an_unknown_engine_before_loading(clips_dir, tmp_path, cache, capsys):
    from fercli.cli import run

    out = tmp_path / "t.parquet"
    assert run(["annotate", str(clips_dir / CLIP), "--out", str(out), "--engine", "tensorrt"]) == 2
    # The refusal itself, not the failed fetch of the default weights that would follow it.
    assert "--engine must be one of auto, torch, openvino, not 'tensorrt'" in capsys.readouterr().err
    assert not out.exists() and not any(cache.rglob("*"))


def test_without_openvino_the_cli_says_how_to_install_it_before_any_download(
    clips_dir, tmp_path, cache, monkeypatch, capsys
):
    from fercli.cli import run

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    out = tmp_path / "t.parquet"
    assert run(["annotate", str(clips_dir / CLIP), "--out", str(out), "--engine", "openvino"]) == 2
    assert "fercli[openvino]" in capsys.readouterr().err
    assert not out.exists() and not any(cache.rglob("*"))  # the default model was not fetched


def test_a_malformed_config_is_a_weights_error_with_openvino_too(frame_checkpoint, tmp_path, cache):
    pytest.importorskip("openvino")
    from fercli.core.errors import WeightsError
    from fercli.nets.checkpoints import read_checkpoint, write_checkpoint
    from fercli.nets.model import load_model

    ckpt = read_checkpoint(frame_checkpoint)
    bad = tmp_path / "bad.pt"
    write_checkpoint({"config": {**ckpt["config"], "colour": "blue"}, "state_dict": ckpt["state_dict"]}, bad)
    for engine in ("torch", "openvino"):
        with pytest.raises(WeightsError, match=rf"{bad}: checkpoint does not match its config \(unknown config keys"):
            load_model(bad, "cpu", engine=engine)


def test_engine_target_is_the_one_rule_from_a_requested_device(lstm_checkpoint):
    import torch

    from fercli.nets.engines import engine_target

    assert engine_target("openvino", "auto") == torch.device("cpu")  # OpenVINO runs on the CPU
    assert engine_target("torch", "cpu") == torch.device("cpu")
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert engine_target("torch", "auto") == want
    from fercli.nets.model import load_model

    model = load_model(lstm_checkpoint, "cpu")
    assert (model.engine, model.precision) == ("torch", "fp32")  # the network says what it runs at


@pytest.mark.parametrize("engine, precision", [("torch", "auto"), ("torch", "bf16"), ("openvino", "fp32")])
def test_fer_annotate_settles_engine_device_and_precision_once(
    clips_dir, lstm_checkpoint, tmp_path, monkeypatch, engine, precision
):
    """Following --engine and --precision from the command line: each rule runs once per run."""
    from typer.testing import CliRunner

    from fercli.cli import app
    from fercli.core import devices
    from fercli.nets import engines

    if engine == "openvino":
        pytest.importorskip("openvino")
    calls = []

    def counted(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: (calls.append(name), real(*a, **k))[1])

    for module, name in [
        (engines, "engine_target"),
        (engines, "check_engine"),
        (devices, "resolve_device"),
        (devices, "resolve_precision"),
    ]:
        counted(module, name)
    out = tmp_path / "r.csv"
    args = [
        "annotate",
        str(clips_dir / "moving.mp4"),
        "--out",
        str(out),
        "--model",
        str(lstm_checkpoint),
        "--device",
        "cpu",
        "--engine",
        engine,
        "--precision",
        precision,
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(calls) == sorted(["engine_target", "check_engine", "resolve_device", "resolve_precision"]), calls


def test_the_default_engine_is_openvino_on_the_cpu_where_installed_and_torch_elsewhere(monkeypatch):
    import importlib.util

    import torch

    from fercli.nets import engines

    installed = importlib.util.find_spec("openvino") is not None
    cpu = torch.device("cpu")
    assert engines.default_engine(cpu) == ("openvino" if installed else "torch")
    assert engines.default_engine(torch.device("cuda", 0)) == "torch"
    assert engines.default_engine(cpu, ray="local") == "torch"  # Ray's model actors run torch
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert engines.default_engine(cpu) == "torch"


def test_no_engine_named_places_the_model_on_the_default_one(monkeypatch):
    import torch

    from fercli.nets import engines

    monkeypatch.delenv("FER_ENGINE")
    monkeypatch.setattr(engines, "default_engine", lambda device, ray=None: f"default for {device}")
    monkeypatch.setattr(engines, "check_engine", lambda engine, device, ray=None: None)
    assert engines.place(None, "cpu").engine == "default for cpu"
    assert engines.place("torch", "cpu").engine == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" is then a GPU, for torch
    assert engines.place(None, "auto").engine == "default for cuda"
    assert engines.place("auto", "cpu").engine == "default for cpu"


def test_fer_engine_pins_the_engine_of_a_run_that_names_none(monkeypatch):
    from fercli.nets import engines

    monkeypatch.setattr(engines, "default_engine", lambda device, ray=None: "torch")
    monkeypatch.setattr(engines, "check_engine", lambda engine, device, ray=None: None)
    monkeypatch.setenv("FER_ENGINE", "openvino")
    placed = engines.place(None, "auto")
    assert (placed.engine, placed.device.type, placed.chosen) == ("openvino", "cpu", False)  # as if named
    assert engines.place("torch", "cpu").engine == "torch"  # a named engine wins
    monkeypatch.setenv("FER_ENGINE", "auto")
    assert engines.place(None, "cpu").chosen
    monkeypatch.setenv("FER_ENGINE", "tensorrt")
    with pytest.raises(FerError, match="^FER_ENGINE must be one of auto, torch, openvino, not 'tensorrt'$"):
        engines.place(None, "cpu")


def test_the_default_cli_run_takes_openvino_on_the_cpu_and_says_so(clips_dir, lstm_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from fercli.cli import app
    from fercli.nets.model import load_model

    monkeypatch.delenv("FER_ENGINE")
    assert load_model(lstm_checkpoint, "cpu").engine == "openvino"  # the library's default too
    out = tmp_path / "r.parquet"
    args = ["annotate", str(clips_dir / CLIP), "--out", str(out), "--model", str(lstm_checkpoint), "--device", "cpu"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "backbone on openvino" in result.output
    assert json.loads(pq.read_schema(out).metadata[b"fer"])["engine"].split()[0] == "openvino"
    # FER_ENGINE pins torch for the CLI as --engine torch would.
    result = CliRunner().invoke(app, [*args, "--overwrite"], env={"FER_ENGINE": "torch"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert json.loads(pq.read_schema(out).metadata[b"fer"])["engine"].split()[0] == "torch"


def test_a_default_openvino_that_cannot_convert_gives_way_to_torch_and_a_named_one_fails(
    clips_dir, frame_checkpoint, tmp_path, cache, monkeypatch, caplog
):
    pytest.importorskip("openvino")
    from fercli.nets import engines
    from fercli.nets.model import load_model

    def unconvertible(*args):
        from openvino.frontend import OpConversionFailure

        raise OpConversionFailure("Model wasn't fully converted.\nSummary: aten::frobnicate")

    monkeypatch.setattr(engines, "_convert", unconvertible)
    monkeypatch.delenv("FER_ENGINE")
    with pytest.raises(FerError, match=rf"^{frame_checkpoint}: OpenVINO could not convert the backbone \(.*\)$"):
        load_model(frame_checkpoint, "cpu", engine="openvino")
    out = tmp_path / "t.parquet"
    result = annotate([clips_dir / CLIP], out, model=str(frame_checkpoint), device="cpu")
    assert not result.failed and result.engine == "torch"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("could not convert" in w and "runs with torch" in w for w in warned), warned
    assert not any(cache.rglob("*.xml"))  # nothing half-converted left in the cache


def test_a_model_on_openvino_is_not_saved_as_a_checkpoint(frame_checkpoint, tmp_path):
    # Its state_dict lacks the backbone: the file would load as "does not match its config".
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import load_model

    pytest.importorskip("openvino")
    model = load_model(frame_checkpoint, "cpu", engine="openvino")
    with pytest.raises(FerError, match="runs its backbone on openvino; load it with engine='torch'$"):
        save_checkpoint(model, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
