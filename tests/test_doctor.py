"""fer doctor: what it reports against what the environment really has."""

from __future__ import annotations

import platform
from importlib.metadata import version

import numpy as np

from fercli import doctor
from fercli.media import blazeface


def findings() -> dict[str, str]:
    return dict(doctor.checks())


def test_python_numpy_and_the_detector_runtime_are_named():
    found = findings()
    assert found["python"] == platform.python_version()
    assert found["numpy"] == np.__version__
    assert found["ai-edge-litert"] == version("ai-edge-litert")
    assert "mediapipe" not in found and "decord2" not in found


def test_the_face_detector_row_names_its_model_file_verified_and_its_runtime():
    row = findings()["face detector"]
    assert str(blazeface.MODEL_FILE) in row and "SHA-256 verified" in row
    assert f"LiteRT {version('ai-edge-litert')}" in row and row.endswith("ok")


def test_a_damaged_model_file_is_reported_not_verified(tmp_path, monkeypatch):
    bad = tmp_path / "face_detection_full_range_sparse.tflite"
    bad.write_bytes(blazeface.MODEL_FILE.read_bytes()[:-1])
    monkeypatch.setattr(blazeface, "MODEL_FILE", bad)
    row = findings()["face detector"]
    assert row.startswith("error:") and "damaged" in row and str(bad) in row


def test_the_gpu_decoder_row_says_why_it_is_not_used(monkeypatch):
    import importlib.util

    import torch

    assert findings()["GPU video decoder"] == (
        "not used: torch sees no CUDA GPU" if not torch.cuda.is_available() else doctor._gpu_decoder()
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hidden = lambda name, *a: None if name == "PyNvVideoCodec" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert doctor._gpu_decoder() == "not used: PyNvVideoCodec is not installed (pip install 'fercli[gpu]')"
