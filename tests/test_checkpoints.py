"""Reading weights files into checkpoint dicts: HSEmotion's whole pickle through the safe loader
(allowlist, old timm paths, refusals), fer checkpoints, and `resolve` by name end to end."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import pickletools
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from conftest import git_hash_object as _git_hash_object

from fercli.core.errors import WeightsError
from fercli.nets import checkpoints, weights

# ---------------------------------------------------------------- safe loading of HSEmotion's form


def _hsemotion_like() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", num_classes=10)
    with torch.no_grad():  # non-default BN stats, so a loader that drops buffers shows up
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, path of torch.save(model)) in the current timm's module layout."""
    model = _hsemotion_like()
    path = tmp_path_factory.mktemp("hse") / "enet_b0_8_va_mtl.pt"
    torch.save(model, path)
    return model, path


def _outputs_match(state: dict, reference: torch.nn.Module) -> None:
    fresh = timm.create_model("tf_efficientnet_b0", num_classes=10)
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), reference(x), rtol=0, atol=0)


def _rewrite_pickle(src: Path, dst: Path, renames: dict[bytes, bytes]) -> None:
    # torch.save writes protocol 2, whose GLOBAL opcode spells "module\nname\n" as plain
    # newline-terminated text, so swapping names in data.pkl keeps the pickle valid.
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                for old, new in renames.items():
                    assert old in data, old
                    data = data.replace(old, new)
            zout.writestr(item, data)


def test_whole_pickled_model_loads_to_same_outputs(saved):
    model, path = saved
    state = checkpoints.load_timm_pickle(path)
    assert state["classifier.weight"].shape == (10, 1280)
    assert all(t.device.type == "cpu" for t in state.values())
    _outputs_match(state, model)


def test_plain_state_dict_is_accepted(saved, tmp_path):
    model, _ = saved
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    _outputs_match(checkpoints.load_timm_pickle(tmp_path / "sd.pt"), model)


def test_timm_0_6_module_paths_load(saved, tmp_path):
    model, path = saved
    old = tmp_path / "old.pt"
    _rewrite_pickle(
        path,
        old,
        {
            b"ctimm.models._efficientnet_blocks\n": b"ctimm.models.efficientnet_blocks\n",
            b"ctimm.layers.conv2d_same\n": b"ctimm.models.layers.conv2d_same\n",
            b"ctimm.layers.norm_act\n": b"ctimm.models.layers.norm_act\n",
            b"ctimm.layers.adaptive_avgmax_pool\n": b"ctimm.models.layers.adaptive_avgmax_pool\n",
        },
    )
    _outputs_match(checkpoints.load_timm_pickle(old), model)


def test_timm_0_4_layout_loads(tmp_path):
    # timm 0.4 kept SqueezeExcite's gate as a plain function attribute and HSEmotion's
    # notebooks wrap the head as Sequential(Linear), saved under classifier.0.*.
    from timm.layers.activations import sigmoid
    from timm.layers.linear import Linear

    reference = _hsemotion_like()
    model = copy.deepcopy(reference)
    head = Linear(1280, 10)
    head.load_state_dict(model.classifier.state_dict())
    model.classifier = torch.nn.Sequential(head)
    for m in model.modules():
        if type(m).__name__ == "SqueezeExcite":
            del m.gate
            m.gate_fn = sigmoid
    new, old = tmp_path / "new.pt", tmp_path / "old.pt"
    torch.save(model, new)
    _rewrite_pickle(
        new,
        old,
        {
            b"ctimm.models._efficientnet_blocks\n": b"ctimm.models.efficientnet_blocks\n",
            b"ctimm.layers.activations\nsigmoid\n": b"ctimm.models.layers.activations\nsigmoid\n",
            b"ctimm.layers.linear\n": b"ctimm.models.layers.linear\n",
            b"ctimm.layers.conv2d_same\n": b"ctimm.models.layers.conv2d_same\n",
        },
    )
    state = checkpoints.load_timm_pickle(old)
    assert "classifier.weight" in state and "classifier.0.weight" not in state
    _outputs_match(state, reference)


# What torch.save(timm.create_model("tf_efficientnet_b0", num_classes=10)) names under
# timm 0.9.7, the version HSEmotion's current file was saved with: recorded by running
# exactly that with timm 0.9.7 installed on its own (not installed here; the tests
# never download). 0.9.7 is the layout after timm's 0.8/0.9 module moves.
TIMM_0_9_7_GLOBALS = {
    "timm.models.efficientnet.EfficientNet",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
    "timm.models._efficientnet_blocks.InvertedResidual",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.norm_act.BatchNormAct2d",
    "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.flatten.Flatten",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    # what torch.save itself always writes for a module tree
    "collections.OrderedDict",
    "__builtin__.set",  # Module._non_persistent_buffers_set
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.LongStorage",  # BatchNorm's num_batches_tracked
}


def _pickle_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        data = z.read(name)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    # Protocol 2 names every global with GLOBAL "module name"; a STACK_GLOBAL (protocol 4)
    # would take its names from the stack and escape this count.
    assert "STACK_GLOBAL" not in {name for name, _ in ops}
    return {arg.replace(" ", ".") for name, arg in ops if name == "GLOBAL"}


def test_timm_0_9_7_pickle_loads_safely(saved):
    # The installed timm writes exactly 0.9.7's module paths (checked here, so a timm
    # that moves a class fails this test rather than quietly testing another layout;
    # then rename to the 0.9.7 paths with _rewrite_pickle).
    model, path = saved
    assert _pickle_globals(path) == TIMM_0_9_7_GLOBALS
    state = checkpoints.load_timm_pickle(path)
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_allowlist_is_classes_only():
    allowed = checkpoints._safe_globals()
    assert all(isinstance(g if not isinstance(g, tuple) else g[0], type) for g in allowed)
    # every current class is named exactly as a pickle would name it
    for g in allowed:
        if not isinstance(g, tuple):
            assert f"{g.__module__}.{g.__qualname__}" in checkpoints.SAFE_CLASSES


class _Payload:
    """Pickles to a call of os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CustomNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="not on the safe allowlist") as err:
        checkpoints.load_timm_pickle(tmp_path / "evil.pt")
    assert str(tmp_path / "evil.pt") in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_unlisted_module_class_is_refused(tmp_path):
    torch.save(_CustomNet(), tmp_path / "custom.pt")
    with pytest.raises(WeightsError, match="_CustomNet"):
        checkpoints.load_timm_pickle(tmp_path / "custom.pt")


@pytest.mark.parametrize("kind", ["random", "text", "zip", "resnet", "head8", "missing"])
def test_wrong_files_are_weights_errors(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif kind == "resnet":
        resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
        torch.save(resnet, path)
    elif kind == "head8":
        torch.save(timm.create_model("tf_efficientnet_b0", num_classes=8).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        checkpoints.load_timm_pickle(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("evil", r"refused to load: it needs .*system.*not on the safe allowlist"),
        ("custom", r"refused to load: it needs .*_CustomNet"),
        (
            "resnet",
            r"not a fer checkpoint, nor HSEmotion's tf_efficientnet_b0 with a 10-output head "
            r"\(\d+ of its \d+ tensors are not tf_efficientnet_b0's, e.g. conv1.weight",
        ),
        ("head8", r"classifier.bias has shape \(8,\), expected \(10,\)"),
    ],
)
def test_a_file_given_as_model_says_what_is_wrong_with_it(tmp_path, kind, message):
    # Through the path `--model FILE` takes: fer's own refusal, not torch's paragraph (with its
    # colour codes and its advice to turn weights_only off) or "no 'fer-checkpoint' header".
    path = tmp_path / f"{kind}.pt"
    if kind == "evil":
        torch.save({"model": _Payload(tmp_path / "pwned")}, path)
    elif kind == "custom":
        torch.save(_CustomNet(), path)
    elif kind == "resnet":
        torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    else:
        torch.save(timm.create_model("tf_efficientnet_b0", num_classes=8), path)
    with pytest.raises(WeightsError, match=message) as err:
        checkpoints.resolve(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text and "\x1b" not in text and "weights_only=False" not in text
    assert not (tmp_path / "pwned").exists()


def test_an_archive_that_unpacks_past_the_bound_is_refused_before_loading(tmp_path, monkeypatch, lstm_checkpoint):
    # A zip bomb in torch.save's format: one deflated entry of zeros. The bound is lowered so the
    # test stays small; the check reads only the archive's directory.
    monkeypatch.setattr(checkpoints, "MAX_UNPACKED_BYTES", 64 << 20)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("bomb/data/0", bytes(200 << 20))
    assert bomb.stat().st_size < 1 << 20
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or {})
    with pytest.raises(WeightsError, match=r"bomb.pt: unpacks to 0.2 GiB, more than any model fer reads"):
        checkpoints.resolve(bomb)
    assert not calls  # refused before torch read a byte of it
    monkeypatch.undo()
    assert checkpoints.resolve(lstm_checkpoint)["format"] == "fer-checkpoint"  # real checkpoints pass


def test_load_model_by_name_downloads_verifies_and_feeds_hsemotion_preprocessing(server, cache, saved, monkeypatch):
    """`load_model("hsemotion")` end to end against a local server serving HSEmotion's file form."""
    from fercli.nets import model as model_module

    reference, path = saved
    url, www, requests = server
    (www / path.name).write_bytes(path.read_bytes())
    shipped = weights.registry()["hsemotion"]
    entry = dataclasses.replace(shipped, url=f"{url}/{path.name}", git_blob=_git_hash_object(path))
    monkeypatch.setattr(weights, "registry", lambda: {"hsemotion": entry})
    net = model_module.load_model("hsemotion")
    assert net.config.preprocess.crop == "box" and net.config.preprocess.margin == 0.0
    assert net.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(net.encode(x), reference(x), atol=1e-5, rtol=1e-5)
    converted = sorted(p.name for p in cache.glob("*.fer.pt"))
    assert len(converted) == 1
    model_module.load_model("hsemotion")  # from the cache: no second download, same conversion
    assert requests == [f"/{path.name}"] and sorted(p.name for p in cache.glob("*.fer.pt")) == converted


def test_a_conversion_made_with_other_preprocessing_is_not_reused(server, cache, saved, monkeypatch):
    from fercli.nets import model as model_module

    _, path = saved
    url, www, _ = server
    (www / path.name).write_bytes(path.read_bytes())
    entry = dataclasses.replace(
        weights.registry()["hsemotion"], url=f"{url}/{path.name}", git_blob=_git_hash_object(path)
    )
    monkeypatch.setattr(weights, "registry", lambda: {"hsemotion": entry})
    model_module.load_model("hsemotion")
    square = {"crop": "square", "size": 224, "margin": 0.1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    monkeypatch.setattr(weights, "registry", lambda: {"hsemotion": dataclasses.replace(entry, preprocess=square)})
    assert model_module.load_model("hsemotion").config.preprocess.crop == "square"
    assert len(list(cache.glob("*.fer.pt"))) == 2


def test_a_registry_name_is_never_a_file_that_shares_it(tmp_path, monkeypatch, lstm_checkpoint):
    # A file called "hsemotion" in the working directory must not stand in for the verified
    # default weights; "./hsemotion" (a path) reads it.
    import shutil

    from fercli.nets import checkpoints

    monkeypatch.chdir(tmp_path)
    shutil.copy(lstm_checkpoint, tmp_path / "hsemotion")
    fetched = []
    monkeypatch.setattr(
        checkpoints, "_from_registry", lambda name, progress=None: fetched.append(name) or {"registry": name}
    )
    assert checkpoints.resolve("hsemotion") == {"registry": "hsemotion", "source": "hsemotion"}
    assert fetched == ["hsemotion"]
    own = checkpoints.resolve("./hsemotion")
    assert own["source"] == "./hsemotion" and "state_dict" in own and fetched == ["hsemotion"]


def test_identity_weights_are_no_model_for_annotate(monkeypatch):
    from fercli.core.errors import WeightsError
    from fercli.nets import checkpoints, weights

    monkeypatch.setattr(weights, "fetch", lambda *a, **k: pytest.fail("downloaded"))
    for name in ("dlib-faceid", "dlib-landmarks5"):
        with pytest.raises(WeightsError, match=f"{name}: a face-identity file .*, not a valence/arousal model"):
            checkpoints.resolve(name)
