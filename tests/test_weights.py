"""Weights registry, download cache and the safe HSEmotion loader (all offline)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pickletools
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch

from fercli import weights
from fercli.errors import WeightsError
from fercli.weights import WeightsEntry

SERVED_BYTES = 2_500_000  # > 2 chunks of 1 MiB, so progress is reported several times


# ---------------------------------------------------------------- local HTTP server


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/nolength/"):
            # No Content-Length: an HTTP/1.0 body that ends when the server closes.
            body = (Path(self.directory) / self.path.removeprefix("/nolength/")).read_bytes()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/'www' on 127.0.0.1; yields (base_url, www_dir, request_log)."""
    www = tmp_path / "www"
    www.mkdir()
    log: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, log
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FER_CACHE_DIR", str(root))
    return root


def _serve(www: Path, name: str = "w.bin", size: int = SERVED_BYTES) -> bytes:
    data = os.urandom(size)
    (www / name).write_bytes(data)
    return data


def _entry(url: str, sha: str | None, filename: str = "w.bin",
           git_blob: str | None = None) -> WeightsEntry:
    return WeightsEntry("test", filename, url, sha, "timm-pickle", "test weights",
                        git_blob=git_blob)


def _git_hash_object(path: Path) -> str:
    # git itself is the independent reference for blob ids; --no-filters so no
    # .gitattributes conversion can change the bytes it hashes.
    out = subprocess.run(["git", "hash-object", "--no-filters", str(path)],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


# ---------------------------------------------------------------- registry and cache dir


def test_shipped_registry_has_hsemotion():
    entry = weights.registry()["hsemotion"]
    assert entry.filename == "enet_b0_8_va_mtl.pt"
    assert entry.url == ("https://github.com/sb-ai-lab/EmotiEffLib/raw/main/"
                         "models/affectnet_emotions/enet_b0_8_va_mtl.pt")
    # The blob both EmotiEffLib and HSEmotion serve at models/affectnet_emotions/.
    assert entry.git_blob == "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"
    assert entry.format == "timm-pickle"
    assert entry.sha256 is None or (len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0)


def test_package_registry_is_the_weights_registry():
    pkg = Path(weights.__file__).with_name("registry.json")
    top = Path(__file__).resolve().parents[1] / "weights" / "registry.json"
    assert pkg.resolve() == top.resolve()
    for fields in json.loads(top.read_text()).values():
        assert fields["format"] in weights.FORMATS


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == Path.home() / ".cache" / "fer"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "fer"
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"


def test_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 7)  # crosses chunk boundaries
    (tmp_path / "f").write_bytes(data)
    assert weights.sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 3 * (1 << 20) + 7])
def test_git_blob_id_matches_git_hash_object(tmp_path, size):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))  # sizes at and across the 1 MiB chunk boundary
    assert weights.git_blob_id(path) == _git_hash_object(path)


def test_importing_weights_does_not_import_torch():
    code = "import sys, fercli.weights; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    assert result.returncode == 0


# ---------------------------------------------------------------- fetch


def test_fetch_downloads_verifies_and_reports_progress(server, cache):
    url, www, requests = server
    data = _serve(www)
    seen: list[tuple[int, int | None]] = []
    path = weights.fetch(_entry(f"{url}/w.bin", hashlib.sha256(data).hexdigest()),
                         progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "w.bin"
    assert weights.sha256(path) == hashlib.sha256(data).hexdigest()
    done = [d for d, _ in seen]
    assert all(a < b for a, b in zip(done, done[1:])) and len(done) >= 3
    assert done[-1] == len(data) and {t for _, t in seen} == {len(data)}
    assert sorted(p.name for p in cache.iterdir()) == ["w.bin"]  # no temp file left
    weights.fetch(_entry(f"{url}/w.bin", hashlib.sha256(data).hexdigest()))
    assert requests == ["/w.bin"]  # a good cached copy is not downloaded again


def test_fetch_by_name_uses_registry(server, cache, monkeypatch):
    url, www, _ = server
    data = _serve(www, size=1000)
    entry = _entry(f"{url}/w.bin", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(weights, "registry", lambda: {"test": entry})
    assert weights.fetch("test").read_bytes() == data
    with pytest.raises(WeightsError, match="unknown weights name 'nope'"):
        weights.fetch("nope")


def test_corrupt_cached_file_is_downloaded_again(server, cache):
    url, www, requests = server
    data = _serve(www, size=5000)
    cache.mkdir()
    (cache / "w.bin").write_bytes(b"truncated")
    path = weights.fetch(_entry(f"{url}/w.bin", hashlib.sha256(data).hexdigest()))
    assert path.read_bytes() == data
    assert requests == ["/w.bin"]


def test_download_with_wrong_hash_leaves_nothing(server, cache):
    url, www, _ = server
    _serve(www, size=5000)
    cache.mkdir()
    (cache / "w.bin").write_bytes(b"stale")  # a bad cached copy must go too
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(WeightsError, match=f"registry expects {wrong}") as err:
        weights.fetch(_entry(f"{url}/w.bin", wrong))
    assert url in str(err.value) and "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_fetch_verifies_git_blob_and_records_sha256(server, cache, caplog):
    url, www, requests = server
    data = _serve(www)
    blob = _git_hash_object(www / "w.bin")
    with caplog.at_level(logging.INFO, logger="fercli"):
        path = weights.fetch(_entry(f"{url}/w.bin", None, git_blob=blob))
    assert path.read_bytes() == data
    # SHA-256 still unknown to the registry, so it is recorded; the file is verified
    # by its blob id, so nothing warns that it is unverified.
    digest = hashlib.sha256(data).hexdigest()
    assert Path(f"{path}.sha256").read_text() == f"{digest}  w.bin\n"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(p.name for p in cache.iterdir()) == ["w.bin", "w.bin.sha256"]
    weights.fetch(_entry(f"{url}/w.bin", None, git_blob=blob))
    assert requests == ["/w.bin"]  # the cached copy checks out: not downloaded again


@pytest.mark.parametrize("prefix", ["", "/nolength"])
def test_download_with_wrong_git_blob_is_refused_and_deleted(server, cache, prefix):
    url, www, _ = server
    _serve(www, size=5000)
    served = _git_hash_object(www / "w.bin")
    (www / "other").write_bytes(b"some other file")
    wrong = _git_hash_object(www / "other")
    cache.mkdir()
    (cache / "w.bin").write_bytes(b"stale")  # a bad cached copy must go too
    source = f"{url}{prefix}/w.bin"
    with pytest.raises(WeightsError) as err:
        weights.fetch(_entry(source, None, git_blob=wrong))
    message = str(err.value)
    assert source in message and "\n" not in message
    assert f"git blob id {served}, registry expects {wrong}" in message
    assert list(cache.iterdir()) == []  # no file, temp file or sidecar left


def test_git_blob_verified_without_content_length(server, cache):
    url, www, requests = server
    data = _serve(www)
    seen: list[int | None] = []
    path = weights.fetch(_entry(f"{url}/nolength/w.bin", None,
                                git_blob=_git_hash_object(www / "w.bin")),
                         progress=lambda done, total: seen.append(total))
    assert path.read_bytes() == data
    assert requests == ["/nolength/w.bin"] and set(seen) == {None}  # really had no length


def test_tampered_cached_file_is_downloaded_again(server, cache):
    url, www, requests = server
    data = _serve(www, size=5000)
    entry = _entry(f"{url}/w.bin", None, git_blob=_git_hash_object(www / "w.bin"))
    path = weights.fetch(entry)
    tampered = bytearray(data)
    tampered[1234] ^= 0x01  # same size, one bit off: only a content hash notices
    path.write_bytes(bytes(tampered))
    assert weights.fetch(entry).read_bytes() == data
    assert requests == ["/w.bin", "/w.bin"]


def test_server_down_names_url_and_target(cache):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/enet.pt"
    with pytest.raises(WeightsError) as err:
        weights.fetch(_entry(url, None, filename="enet.pt"))
    message = str(err.value)
    assert url in message and str(cache / "enet.pt") in message
    assert "place it at" in message and "\n" not in message
    assert not (cache / "enet.pt").exists()
    assert [p for p in cache.iterdir()] == []


def test_http_404_is_a_weights_error(server, cache):
    url, _, _ = server
    with pytest.raises(WeightsError, match="404"):
        weights.fetch(_entry(f"{url}/missing.pt", None))
    assert list(cache.iterdir()) == []


def test_no_hash_entry_records_sidecar_and_warns(server, cache, caplog):
    url, www, _ = server
    data = _serve(www, size=4096)
    digest = hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.WARNING, logger="fercli"):
        path = weights.fetch(_entry(f"{url}/w.bin", None))
    assert Path(f"{path}.sha256").read_text() == f"{digest}  w.bin\n"
    assert any(digest in r.getMessage() and "unverified" in r.getMessage() for r in caplog.records)


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
    state = weights.load_timm_pickle(path)
    assert state["classifier.weight"].shape == (10, 1280)
    assert all(t.device.type == "cpu" for t in state.values())
    _outputs_match(state, model)


def test_plain_state_dict_is_accepted(saved, tmp_path):
    model, _ = saved
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    _outputs_match(weights.load_timm_pickle(tmp_path / "sd.pt"), model)


def test_timm_0_6_module_paths_load(saved, tmp_path):
    model, path = saved
    old = tmp_path / "old.pt"
    _rewrite_pickle(path, old, {
        b"ctimm.models._efficientnet_blocks\n": b"ctimm.models.efficientnet_blocks\n",
        b"ctimm.layers.conv2d_same\n": b"ctimm.models.layers.conv2d_same\n",
        b"ctimm.layers.norm_act\n": b"ctimm.models.layers.norm_act\n",
        b"ctimm.layers.adaptive_avgmax_pool\n": b"ctimm.models.layers.adaptive_avgmax_pool\n",
    })
    _outputs_match(weights.load_timm_pickle(old), model)


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
    _rewrite_pickle(new, old, {
        b"ctimm.models._efficientnet_blocks\n": b"ctimm.models.efficientnet_blocks\n",
        b"ctimm.layers.activations\nsigmoid\n": b"ctimm.models.layers.activations\nsigmoid\n",
        b"ctimm.layers.linear\n": b"ctimm.models.layers.linear\n",
        b"ctimm.layers.conv2d_same\n": b"ctimm.models.layers.conv2d_same\n",
    })
    state = weights.load_timm_pickle(old)
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
    state = weights.load_timm_pickle(path)
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_allowlist_is_classes_only():
    allowed = weights._safe_globals()
    assert all(isinstance(g if not isinstance(g, tuple) else g[0], type) for g in allowed)
    # every current class is named exactly as a pickle would name it
    for g in allowed:
        if not isinstance(g, tuple):
            assert f"{g.__module__}.{g.__qualname__}" in weights.SAFE_CLASSES


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
        weights.load_timm_pickle(tmp_path / "evil.pt")
    assert str(tmp_path / "evil.pt") in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_unlisted_module_class_is_refused(tmp_path):
    torch.save(_CustomNet(), tmp_path / "custom.pt")
    with pytest.raises(WeightsError, match="_CustomNet"):
        weights.load_timm_pickle(tmp_path / "custom.pt")


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
        weights.load_timm_pickle(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_model_by_name_downloads_verifies_and_feeds_hsemotion_preprocessing(server, cache, saved, monkeypatch):
    """`load_model("hsemotion")` end to end against a local server serving HSEmotion's file form."""
    from fercli import model as model_module

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
    from fercli import model as model_module

    _, path = saved
    url, www, _ = server
    (www / path.name).write_bytes(path.read_bytes())
    entry = dataclasses.replace(weights.registry()["hsemotion"], url=f"{url}/{path.name}", git_blob=_git_hash_object(path))
    monkeypatch.setattr(weights, "registry", lambda: {"hsemotion": entry})
    model_module.load_model("hsemotion")
    square = {"crop": "square", "size": 224, "margin": 0.1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    monkeypatch.setattr(weights, "registry", lambda: {"hsemotion": dataclasses.replace(entry, preprocess=square)})
    assert model_module.load_model("hsemotion").config.preprocess.crop == "square"
    assert len(list(cache.glob("*.fer.pt"))) == 2
