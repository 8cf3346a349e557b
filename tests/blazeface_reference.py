"""mediapipe 0.10.21's face boxes on tests/real_faces.py's frames: the detector's reference.

    python tests/blazeface_reference.py record    # in an environment with mediapipe==0.10.21
    python tests/blazeface_reference.py compare   # in fer's: the parity table (docs/models.md)

`record` writes tests/data/blazeface_mediapipe.json: per frame, every face mediapipe's legacy
FaceDetection(model_selection=1) finds, its box in frame pixels as mediapipe gives it (relative
box times the frame's size, not clipped) and its score. tests/test_blazeface.py holds fer's
detector to those boxes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import real_faces  # noqa: E402

REFERENCE = Path(__file__).with_name("data") / "blazeface_mediapipe.json"


def record() -> None:
    import mediapipe as mp

    found = {}
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        for name, frame in real_faces.frames().items():
            h, w = frame.shape[:2]
            faces = []
            for d in det.process(np.ascontiguousarray(frame)).detections or ():
                b = d.location_data.relative_bounding_box
                box = [b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]
                faces.append({"box": [round(v, 3) for v in box], "score": round(float(d.score[0]), 5)})
            found[name] = {"size": [w, h], "faces": faces}
    doc = {"detector": f"mediapipe {mp.__version__} FaceDetection(model_selection=1)", "frames": found}
    REFERENCE.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{REFERENCE}: {len(found)} frames")


def compare() -> None:
    from fercli.media.blazeface import BlazeFace
    from fercli.media.faces import iou

    reference = json.loads(REFERENCE.read_text())["frames"]
    net = BlazeFace()
    print("| frame | size | faces (mediapipe / fer) | lowest IoU | largest score difference |")
    print("|---|---|---|---|---|")
    for name, frame in real_faces.frames().items():
        want = reference.get(name)
        if want is None:
            continue
        boxes, scores = net(frame)
        got = sorted(zip(boxes.tolist(), scores.tolist()), key=lambda f: -f[1])
        exp = sorted(((f["box"], f["score"]) for f in want["faces"]), key=lambda f: -f[1])
        ious = [max((iou(tuple(b), tuple(g)) for g, _ in got), default=0.0) for b, _ in exp]
        diffs = [min(abs(s - t) for _, t in got) for _, s in exp] if got else []
        low = f"{min(ious):.4f}" if ious else "-"
        diff = f"{max(diffs):.1e}" if diffs else "-"
        print(f"| {name} | {want['size'][0]}x{want['size'][1]} | {len(exp)} / {len(got)} | {low} | {diff} |")


if __name__ == "__main__":
    {"record": record, "compare": compare}[sys.argv[1]]()
