"""fercli.nets.faceid: dlib's face-recognition network in torch against dlib-bin, on real faces.

The weights come from the installed face-recognition-models package (the `test` extra); dlib-bin
is the reference implementation: the same aligned chip must give the same 128-d embedding.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import real_faces
import torch

from fercli.core.errors import WeightsError
from fercli.nets import faceid, weights

MAX_DISTANCE = 1e-3  # embedding distance to dlib's for one chip (dlib: same person below 0.6)


@pytest.fixture(scope="module")
def chips(dlib_reference):
    """dlib's own chips (its detector, 5-point landmarks and alignment) of every face it finds in
    the astronaut photograph and messi5.jpg."""
    dlib = dlib_reference["dlib"]
    photos = [real_faces.astronaut()] + ([real_faces.messi()] if real_faces.messi() is not None else [])
    out = []
    for photo in photos:
        for rect in dlib_reference["detector"](photo, 1):
            out.append(dlib.get_face_chip(photo, dlib_reference["five"](photo, rect), size=150, padding=0.25))
    return np.stack(out)


def test_embeddings_equal_dlibs_on_the_same_chips(faceid_net, dlib_reference, chips):
    want = np.array([np.array(dlib_reference["net"].compute_face_descriptor(c)) for c in chips])
    got = faceid.embed(faceid_net, chips)
    assert got.shape == (len(chips), 128) and len(chips) >= 2
    assert np.linalg.norm(got - want, axis=1).max() <= MAX_DISTANCE
    assert np.linalg.norm(want[0] - want[1]) > 0.6  # the chips are different faces: the check can fail


def test_batches_change_nothing(faceid_net, chips):
    np.testing.assert_allclose(faceid.embed(faceid_net, chips, batch=1), faceid.embed(faceid_net, chips), atol=1e-5)
    unit = faceid.unit_embeddings(faceid_net, chips)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_branches_of_unequal_size_add_zero_extended():
    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 3, 4, 4), 2.0)
    out = faceid._add_extended(a, b)
    want = np.full((1, 3, 4, 4), 2.0)
    want[:, :2, :3, :3] += 1  # a's channels, rows and columns first; the rest of a is 0
    np.testing.assert_array_equal(out.numpy(), want)


def test_the_parsed_network_is_dlibs_architecture(dlib_files):
    net = faceid.read_dlib_net(dlib_files["net"])
    kinds = [layer["kind"] for layer in net["layers"]]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    np.testing.assert_allclose(net["mean"], [122.782, 117.001, 104.298], atol=1e-4)  # dlib's input_rgb_image means
    assert net["layers"][0]["weight"].shape == (32, 3, 7, 7)


def test_a_damaged_file_is_one_line_naming_it(dlib_files, tmp_path):
    data = bytearray(dlib_files["net"].read_bytes())
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.dat: not dlib's face-recognition network") as err:
        faceid.read_dlib_net(cut)
    assert "\n" not in str(err.value)
    landmarks = tmp_path / "landmarks.dat"
    shutil.copy(dlib_files["five"], landmarks)
    with pytest.raises(WeightsError, match="landmarks.dat: not dlib's face-recognition network"):
        faceid.read_dlib_net(landmarks)


def test_the_registry_pins_the_packaged_files(dlib_files):
    from conftest import git_hash_object

    reg = weights.registry()
    for name, path in ((faceid.NETWORK_WEIGHTS, dlib_files["net"]), (faceid.LANDMARK_WEIGHTS, dlib_files["five"])):
        entry = reg[name]
        assert entry.filename == path.name and entry.format in weights.FORMATS
        assert entry.git_blob == git_hash_object(path)
        assert entry.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        assert entry.url.startswith("https://github.com/") and "/raw/e67de71" in entry.url  # a commit: immutable


def _served_from(monkeypatch, base: str):
    """The registry's identity entries, their files served from `base` instead of GitHub."""
    entries = weights.registry()
    for name in (faceid.NETWORK_WEIGHTS, faceid.LANDMARK_WEIGHTS):
        entries[name] = weights.WeightsEntry(**{**entries[name].__dict__, "url": f"{base}/{entries[name].filename}"})
    monkeypatch.setattr(weights, "registry", lambda: entries)


def _unreachable(monkeypatch):
    _served_from(monkeypatch, "http://127.0.0.1:9")


def test_identity_falls_back_to_texture_offline_and_records_which(monkeypatch, tmp_path, caplog):
    _unreachable(monkeypatch)
    assert faceid.resolve_identity("texture").kind == "texture"
    with caplog.at_level("WARNING", logger="fercli"):
        auto = faceid.resolve_identity("auto", root=tmp_path)
    assert auto.kind == "texture" and auto.describe().startswith("texture")
    assert "fer weights download dlib-faceid dlib-landmarks5" in caplog.text
    with pytest.raises(WeightsError, match="cannot download"):
        faceid.resolve_identity("faceid", root=tmp_path)
    with pytest.raises(WeightsError, match="--identity must be one of"):
        faceid.resolve_identity("lbp")


def test_identity_weights_are_fetched_on_first_use_then_verified_from_the_cache(
    monkeypatch, tmp_path, dlib_files, server
):
    base, www, requests = server
    for path in dlib_files.values():
        shutil.copy(path, www / path.name)
    _served_from(monkeypatch, base)
    ident = faceid.resolve_identity("auto", root=tmp_path)
    assert ident.kind == "faceid" and ident.network == tmp_path / dlib_files["net"].name
    assert len(requests) == 2
    _unreachable(monkeypatch)  # the second run needs no network
    assert faceid.resolve_identity("faceid", root=tmp_path) == ident
    assert ident.describe() == "faceid: dlib_face_recognition_resnet_model_v1 (SHA-256 55533b28a95800a5)"
    first = faceid.load_landmarks(ident.landmarks)
    kept = list(tmp_path.glob("*.npz"))
    assert len(kept) == 1
    faceid.load_landmarks.cache_clear()
    again = faceid.load_landmarks(ident.landmarks)  # read back from the kept arrays
    grey = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    np.testing.assert_array_equal(first(grey, (40, 40, 160, 160)), again(grey, (40, 40, 160, 160)))
