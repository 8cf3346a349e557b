"""Weights registry, download cache and verification against a local server (all offline)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git_hash_object as _git_hash_object

from fercli.core.errors import WeightsError
from fercli.nets import weights
from fercli.nets.weights import WeightsEntry

SERVED_BYTES = 2_500_000  # > 2 chunks of 1 MiB, so progress is reported several times


def _serve(www: Path, name: str = "w.bin", size: int = SERVED_BYTES) -> bytes:
    data = os.urandom(size)
    (www / name).write_bytes(data)
    return data


def _entry(url: str, sha: str | None, filename: str = "w.bin",
           git_blob: str | None = None) -> WeightsEntry:
    return WeightsEntry("test", filename, url, sha, "timm-pickle", "test weights",
                        git_blob=git_blob)


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
    pkg = weights.REGISTRY_FILE
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
    code = "import sys, fercli.nets.weights; sys.exit('torch' in sys.modules)"
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
    (cache / "w.bin").write_bytes(b"stale")  # a bad cached copy leaves the cache's slot too
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(WeightsError, match=f"registry expects {wrong}") as err:
        weights.fetch(_entry(f"{url}/w.bin", wrong))
    assert url in str(err.value) and "\n" not in str(err.value)
    stale = hashlib.sha256(b"stale").hexdigest()
    assert [p.name for p in cache.iterdir()] == [f"w.bin.{stale[:12]}.rejected"]  # kept aside, not deleted


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
    (cache / "w.bin").write_bytes(b"stale")  # a bad cached copy leaves the cache's slot too
    source = f"{url}{prefix}/w.bin"
    with pytest.raises(WeightsError) as err:
        weights.fetch(_entry(source, None, git_blob=wrong))
    message = str(err.value)
    assert source in message and "\n" not in message
    assert f"git blob id {served}, registry expects {wrong}" in message
    # no file, temp file or sidecar left; the stale copy kept aside under its own hash
    assert [p.name for p in cache.iterdir()] == [f"w.bin.{hashlib.sha256(b'stale').hexdigest()[:12]}.rejected"]


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


def test_a_users_own_wrong_copy_offline_is_named_set_aside_and_not_reported_cached(cache, tmp_path):
    # Offline, fer asks for the file at the cache path; a user puts their own copy there. It is
    # not the registry's file: the message names both ids, and the copy is kept, out of the way.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    published = tmp_path / "published.pt"
    published.write_bytes(os.urandom(3000))
    entry = _entry(f"http://127.0.0.1:{port}/enet.pt", None, filename="enet.pt", git_blob=_git_hash_object(published))
    cache.mkdir()
    theirs = cache / "enet.pt"
    theirs.write_bytes(b"a checkpoint of the user's own")
    their_blob = _git_hash_object(theirs)
    assert weights.cache_state(entry) == "wrong file"
    with pytest.raises(WeightsError) as err:
        weights.fetch(entry)
    message = str(err.value)
    assert f"git blob id {their_blob}, registry expects {entry.git_blob}" in message
    digest = hashlib.sha256(b"a checkpoint of the user's own").hexdigest()
    aside = cache / f"enet.pt.{digest[:12]}.rejected"
    assert aside.read_bytes() == b"a checkpoint of the user's own" and aside.name in message
    assert message.endswith(f"pass it with --model {aside}")  # how to use one's own file
    assert "place it at" in message and "\n" not in message
    assert not theirs.exists() and weights.cache_state(entry) == "missing"
    published_copy = cache / "enet.pt"
    published_copy.write_bytes(published.read_bytes())  # the right file, put there by hand, is used
    assert weights.cache_state(entry) == "verified" and weights.fetch(entry) == published_copy


def test_weights_list_and_doctor_do_not_call_a_wrong_file_cached(cache, monkeypatch):
    from typer.testing import CliRunner

    from fercli import doctor
    from fercli.cli import app

    entry = weights.registry()["hsemotion"]
    cache.mkdir()
    (cache / entry.filename).write_bytes(b"not the published file")
    out = CliRunner().invoke(app, ["weights", "list"], env={"COLUMNS": "250"}).output
    row = next(line for line in out.splitlines() if "hsemotion" in line)
    assert "fails its hash" in row and "│ yes" not in row
    assert "hsemotion (wrong file" in doctor._weights()


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


# ---------------------------------------------------------------- ImageNet backbones (timm release files)


def test_shipped_imagenet_backbones_are_pinned_to_their_release_names():
    reg = weights.registry()
    for name, arch in (("imagenet-tf_efficientnet_b0", "tf_efficientnet_b0"), ("imagenet-resnet50", "resnet50")):
        entry = reg[name]
        assert entry.format == "timm-state-dict" and entry.filename.startswith(arch)
        # timm names its release files `<stem>-<first 8 hex digits of the SHA-256>.pth`.
        named = entry.filename.removesuffix(".pth").rsplit("-", 1)[1]
        assert len(named) == weights.SHA256_PREFIX_HEX
        pinned = entry.sha256 if entry.sha256 is not None else entry.sha256_prefix
        assert pinned.startswith(named) and entry.url.endswith("/" + entry.filename)
        assert entry.preprocess["mean"] == [0.485, 0.456, 0.406]


def _prefix_entry(url: str, prefix: str) -> WeightsEntry:
    return WeightsEntry("test", "w.pth", url, None, "timm-state-dict", "test backbone", sha256_prefix=prefix)


def test_sha256_prefix_accepts_the_file_and_records_its_full_digest(server, cache, caplog):
    url, www, requests = server
    data = _serve(www, name="w.pth")
    digest = hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.INFO, logger="fercli"):
        path = weights.fetch(_prefix_entry(f"{url}/w.pth", digest[:8]))
    assert path.read_bytes() == data
    assert (cache / "w.pth.sha256").read_text() == f"{digest}  w.pth\n"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # verified: no warning
    (cache / "w.pth").write_bytes(data[:-1])  # a truncated cached copy is checked and replaced
    assert weights.fetch(_prefix_entry(f"{url}/w.pth", digest[:8])).read_bytes() == data
    assert requests == ["/w.pth", "/w.pth"]


def test_sha256_prefix_mismatch_is_refused_and_deleted(server, cache):
    url, www, _ = server
    data = _serve(www, name="w.pth")
    digest = hashlib.sha256(data).hexdigest()
    wrong = format((int(digest[:8], 16) + 1) % 16**8, "08x")
    with pytest.raises(WeightsError) as err:
        weights.fetch(_prefix_entry(f"{url}/w.pth", wrong))
    message = str(err.value)
    assert f"SHA-256 {digest}, registry expects one starting {wrong}" in message and "\n" not in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_backbone_weights_are_not_an_annotation_model(server, cache, monkeypatch):
    from fercli.nets import checkpoints

    url, _, requests = server
    monkeypatch.setattr(weights, "registry", lambda: {"test": _prefix_entry(f"{url}/w.pth", "00000000")})
    with pytest.raises(WeightsError, match="test: backbone weights for training"):
        checkpoints.resolve("test")
    assert requests == []  # refused before any download
