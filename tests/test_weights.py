"""Weights registry, download cache and verification against a local server (all offline)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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


def _entry(
    url: str, sha: str | None, filename: str = "w.bin", git_blob: str | None = None, mirrors: tuple[str, ...] = ()
) -> WeightsEntry:
    return WeightsEntry("test", filename, url, sha, "timm-pickle", "test weights", git_blob=git_blob, mirrors=mirrors)


def _closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- registry and cache dir


PINNED_COMMIT = "9f62dbb76f933a55fcebdb5fab9e76492c435187"  # where blob b7223bd... last changed, in both repositories


def test_shipped_registry_has_hsemotion_pinned_to_a_commit_with_a_mirror():
    entry = weights.registry()["hsemotion"]
    assert entry.filename == "enet_b0_8_va_mtl.pt"
    # EmotiEffLib first, HSEmotion's own repository (whose history EmotiEffLib continues) after it,
    # both at the commit that made the file what it is: a branch may move, a commit does not.
    path = "models/affectnet_emotions/enet_b0_8_va_mtl.pt"
    assert entry.urls == (
        f"https://github.com/sb-ai-lab/EmotiEffLib/raw/{PINNED_COMMIT}/{path}",
        f"https://github.com/av-savchenko/face-emotion-recognition/raw/{PINNED_COMMIT}/{path}",
    )
    # The blob both EmotiEffLib and HSEmotion serve at models/affectnet_emotions/.
    assert entry.git_blob == "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"
    assert entry.format == "timm-pickle"
    assert entry.sha256 is None or (len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0)


@pytest.mark.parametrize("name", sorted(weights.registry()))
def test_every_shipped_url_is_immutable(name):
    # A raw file at a full commit id, or a release asset: never a branch such as main.
    for url in weights.registry()[name].urls:
        assert re.fullmatch(
            r"https://github\.com/[\w.-]+/[\w.-]+/(raw/[0-9a-f]{40}|releases/download/[\w.-]+)/\S+", url
        ), url


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
    path = weights.fetch(
        _entry(f"{url}/w.bin", hashlib.sha256(data).hexdigest()),
        progress=lambda done, total: seen.append((done, total)),
    )
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
    path = weights.fetch(
        _entry(f"{url}/nolength/w.bin", None, git_blob=_git_hash_object(www / "w.bin")),
        progress=lambda done, total: seen.append(total),
    )
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


def test_server_down_names_url_and_target_and_the_ways_round_it(cache):
    url = f"http://127.0.0.1:{_closed_port()}/enet.pt"
    with pytest.raises(WeightsError) as err:
        weights.fetch(_entry(url, None, filename="enet.pt"))
    message = str(err.value)
    assert url in message and f"place the file at {cache / 'enet.pt'}" in message
    assert "on a machine with internet run `fer weights download test`" in message
    assert message.endswith("or pass a weights file you have with --model PATH") and "\n" not in message
    assert not (cache / "enet.pt").exists()
    assert [p for p in cache.iterdir()] == []


def test_a_users_own_wrong_copy_offline_is_named_set_aside_and_not_reported_cached(cache, tmp_path):
    # Offline, fer asks for the file at the cache path; a user puts their own copy there. It is
    # not the registry's file: the message names both ids, and the copy is kept, out of the way.
    port = _closed_port()
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
    assert f"place the file at {cache / 'enet.pt'}" in message and "\n" not in message
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


# ---------------------------------------------------------------- mirrors, tried in order


def test_a_url_that_answers_404_falls_back_to_the_mirror_and_is_verified(server, cache, caplog):
    url, www, requests = server
    data = _serve(www)
    blob = _git_hash_object(www / "w.bin")
    entry = _entry(f"{url}/gone/w.bin", None, git_blob=blob, mirrors=(f"{url}/w.bin",))
    with caplog.at_level(logging.WARNING, logger="fercli"):
        path = weights.fetch(entry)
    assert path.read_bytes() == data and weights.cache_state(entry) == "verified"
    assert requests == ["/gone/w.bin", "/w.bin"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{url}/gone/w.bin: HTTP Error 404: File not found; trying the next URL"
    ]
    assert sorted(p.name for p in cache.iterdir()) == ["w.bin", "w.bin.sha256"]


def test_a_mirror_serving_another_file_is_rejected_and_the_next_tried(server, cache):
    url, www, requests = server
    data = _serve(www)
    (www / "stale").mkdir()
    (www / "stale" / "w.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit off
    blob = _git_hash_object(www / "w.bin")
    entry = _entry(f"{url}/gone/w.bin", None, git_blob=blob, mirrors=(f"{url}/stale/w.bin", f"{url}/w.bin"))
    assert weights.fetch(entry).read_bytes() == data
    assert requests == ["/gone/w.bin", "/stale/w.bin", "/w.bin"]
    assert sorted(p.name for p in cache.iterdir()) == ["w.bin", "w.bin.sha256"]  # no temp file left behind


def test_when_every_url_fails_the_message_names_each_and_the_ways_round_it(server, cache):
    url, www, requests = server
    (www / "stale").mkdir()
    (www / "stale" / "w.bin").write_bytes(b"another file")
    down = f"http://127.0.0.1:{_closed_port()}/w.bin"
    expected = hashlib.sha256(b"the published file").hexdigest()
    entry = _entry(f"{url}/gone/w.bin", expected, mirrors=(f"{url}/stale/w.bin", down))
    with pytest.raises(WeightsError) as err:
        weights.fetch(entry)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot download test (")
    assert f"{url}/gone/w.bin: HTTP Error 404" in message
    got = hashlib.sha256(b"another file").hexdigest()
    assert f"{url}/stale/w.bin: downloaded file has SHA-256 {got}, registry expects {expected}" in message
    assert f"{down}: <urlopen error" in message
    assert f"`fer weights download test` (or fetch {url}/gone/w.bin) and place the file at {cache / 'w.bin'}" in message
    assert message.endswith("--model PATH")
    assert requests == ["/gone/w.bin", "/stale/w.bin"] and list(cache.iterdir()) == []


def test_backbone_weights_offline_do_not_suggest_model(cache):
    entry = WeightsEntry("bb", "w.pth", f"http://127.0.0.1:{_closed_port()}/w.pth", None, "timm-state-dict", "backbone")
    with pytest.raises(WeightsError) as err:
        weights.fetch(entry)
    message = str(err.value)
    assert "`fer weights download bb`" in message and "--model" not in message  # --model refuses backbones


def test_a_registry_file_of_ones_own_adds_and_replaces_entries(tmp_path, monkeypatch):
    own = tmp_path / "registry.json"
    shipped = json.loads(weights.REGISTRY_FILE.read_text())
    mirror = {**shipped["hsemotion"], "url": "http://mirror.lab.example/enet_b0_8_va_mtl.pt", "mirrors": []}
    lab = {
        "filename": "lab.pt",
        "url": "http://mirror.lab.example/lab.pt",
        "sha256": None,
        "format": "fer-checkpoint",
        "description": "the lab's own model",
    }
    own.write_text(json.dumps({"hsemotion": mirror, "lab": lab}))
    monkeypatch.setenv(weights.REGISTRY_ENV, str(own))
    entries = weights.registry()
    assert entries["hsemotion"].urls == ("http://mirror.lab.example/enet_b0_8_va_mtl.pt",)
    assert entries["hsemotion"].git_blob == shipped["hsemotion"]["git_blob"]  # the same file, checked the same way
    assert entries["lab"].urls == ("http://mirror.lab.example/lab.pt",) and entries["lab"].mirrors == ()
    assert set(entries) == set(shipped) | {"lab"}


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "no such registry file"),
        ("{not json", "not a registry file ("),
        (
            '{"x": {"filename": "x.pt", "url": "http://h/x.pt", "sha256": null, "format": "onnx", "description": "x"}}',
            "entry 'x' needs a url, a list of mirrors",
        ),
        (
            (
                '{"x": {"filename": "x.pt", "url": "http://h/x.pt", "mirrors": "http://m/x.pt", "sha256": null, '
                '"format": "fer-checkpoint", "description": "x"}}'
            ),
            "entry 'x' needs a url, a list of mirrors",
        ),
        ('{"x": {"filename": "x.pt", "link": "http://h/x.pt"}}', "entry 'x': "),
    ],
)
def test_a_bad_registry_file_of_ones_own_is_one_line_naming_it(tmp_path, monkeypatch, content, says):
    from fercli.core.errors import FerError

    own = tmp_path / "mine.json"
    if content is not None:
        own.write_text(content)
    monkeypatch.setenv(weights.REGISTRY_ENV, str(own))
    with pytest.raises(FerError) as err:
        weights.registry()
    assert str(err.value).startswith(f"{own}: {says}") and "\n" not in str(err.value)


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
