"""Synthetic AFEW-VA data made from a real photograph (skimage's astronaut), for training tests.

The layout is AFEW-VA's: <root>/<id>/00000.png ... and <root>/<id>/<id>.json with per-frame
valence, arousal (integers -10..10) and 68 landmarks, plus the actor's name.

What the labels look like, and why:
- Valence is visible in every frame: the face's brightness (darker = negative).
- Arousal is visible only in the order of frames. The head rolls back and forth between
  -MAX_ROLL and +MAX_ROLL in steps of ROLL_STEP degrees, and a frame's arousal is +AROUSAL while
  the roll increases, -AROUSAL while it decreases. A window played backwards therefore holds the
  very same frames with the opposite label, so a model that sees a window as a set (the mean of
  its frame features) cannot tell the sign; one that sees the order (an LSTM) can.
Two traps this avoids, both found while checking the task: motion of the whole face (sliding,
zooming) is invisible after the crop, because the crop follows the face, while a roll inside the
crop stays visible; and encoding arousal in anything that changes a window's set of frames (how
many distinct poses, how wide a swing) leaks it to an order-free head, so every window's
backward twin has the same set: the step size and range never change.

Actors differ in where the face sits, its size, a slight colour cast and the background, so
held-out actors are new faces-in-scenes, not copies of training ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import media
import numpy as np
from PIL import Image

ROLL_STEP = 5.0  # degrees per frame
MAX_ROLL = 15.0  # degrees either side
AROUSAL = 6  # |arousal| of a frame; the sign is the roll's direction
BRIGHTNESS_PER_VALENCE = 0.035  # face brightness = 1 + this x valence
TURN_PROBABILITY = 0.15  # chance per frame that the roll turns before reaching its limit
FRAME_SIZE = (256, 192)  # width, height


@dataclass
class ClipTruth:
    actor: str
    valence: list[int]  # per frame
    arousal: list[int]
    roll: list[float]  # degrees, counter-clockwise
    placement: tuple[int, int, int]  # portrait x, y, side in the frame


def make_dataset(
    root: str | Path,
    clips: int = 24,
    frames: int = 40,
    actors: int = 8,
    seed: int = 0,
    missing: dict[str, list[int]] | None = None,
    corrupt: dict[str, list[int]] | None = None,
) -> dict[str, ClipTruth]:
    """Write `clips` clips of `frames` frames (ids 001, 002, ...) under `root`; returns the truth.

    `missing` and `corrupt` name frames (per clip id) to leave out or to write truncated, as in
    the public AFEW-VA release.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    looks = [_actor_look(rng, a) for a in range(actors)]
    truth = {}
    for c in range(clips):
        cid = f"{c + 1:03d}"
        a = c % actors
        t = _clip_truth(rng, f"actor{a:02d}", frames, looks[a]["placement"])
        write_clip(root / cid, t, looks[a], (missing or {}).get(cid, ()), (corrupt or {}).get(cid, ()))
        truth[cid] = t
    return truth


def _actor_look(rng, a: int) -> dict:
    w, h = FRAME_SIZE
    side = int(rng.integers(130, 170))
    x = int(rng.integers(10, w - side - 10))
    y = int(rng.integers(0, h - side))
    cast = 1 + rng.uniform(-0.06, 0.06, 3)
    return {
        "placement": (x, y, side),
        "portrait": media.portrait(side).astype(np.float32) * cast,
        "background": media.background(w, h, seed=100 + a),
    }


def _clip_truth(rng, actor: str, n: int, placement) -> ClipTruth:
    base = int(rng.integers(-7, 8))
    period, phase = rng.uniform(12, 30), rng.uniform(0, 2 * np.pi)
    valence = [int(np.clip(round(base + 3 * np.sin(2 * np.pi * t / period + phase)), -10, 10)) for t in range(n)]
    steps = int(MAX_ROLL / ROLL_STEP)
    pos, direction = int(rng.integers(-steps, steps + 1)), int(rng.choice([-1, 1]))
    positions, directions = [pos], []
    for _ in range(n - 1):
        if abs(pos + direction) > steps or rng.random() < TURN_PROBABILITY:
            direction = -direction
        pos += direction
        positions.append(pos)
        directions.append(direction)
    # A frame's arousal is the direction of the step that brought the head there (the first
    # frame takes the direction of the step after it).
    arousal = [AROUSAL * d for d in [directions[0], *directions]] if directions else [AROUSAL]
    return ClipTruth(actor, valence, arousal, [p * ROLL_STEP for p in positions], placement)


def write_clip(folder: Path, truth: ClipTruth, look: dict, missing=(), corrupt=()) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, (v, a, roll) in enumerate(zip(truth.valence, truth.arousal, truth.roll)):
        labels[f"{i:05d}"] = {"valence": v, "arousal": a, "landmarks": landmarks(truth.placement, roll)}
        if i in missing:
            continue
        path = folder / f"{i:05d}.png"
        Image.fromarray(frame(v, roll, look)).save(path, compress_level=1)
        if i in corrupt:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
    doc = {"video_id": folder.name, "actor": truth.actor, "frames": labels}
    (folder / f"{folder.name}.json").write_text(json.dumps(doc))
    return folder


def frame(valence: int, roll: float, look: dict) -> np.ndarray:
    """One frame: the actor's background with the portrait pasted, rolled about the face's centre
    and brightened by valence."""
    x, y, side = look["placement"]
    face = look["portrait"] * (1 + BRIGHTNESS_PER_VALENCE * valence)
    rgba = np.dstack([np.clip(face, 0, 255).astype(np.uint8), np.full((side, side), 255, np.uint8)])
    cx, cy = _face_centre((0, 0, side))
    rolled = np.asarray(Image.fromarray(rgba, "RGBA").rotate(roll, resample=Image.BILINEAR, center=(cx, cy)))
    out = look["background"].astype(np.float32)
    region = out[y : y + side, x : x + side]
    alpha = rolled[..., 3:4] / 255.0
    out[y : y + side, x : x + side] = region * (1 - alpha) + rolled[..., :3] * alpha
    return out.astype(np.uint8)


# 68 points on the face box in its own units (0..1): jaw, brows, nose, eyes, mouth; the layout of
# the iBUG 68-point scheme, coarsely.
def _template() -> np.ndarray:
    jaw = [(0.5 - 0.5 * np.cos(t), 0.25 + 0.75 * np.sin(t)) for t in np.linspace(0, np.pi, 17)]
    brows = [(u, 0.05 + 0.04 * np.sin(np.pi * (u - 0.1) / 0.3)) for u in np.linspace(0.1, 0.4, 5)]
    brows += [(u, 0.05 + 0.04 * np.sin(np.pi * (u - 0.6) / 0.3)) for u in np.linspace(0.6, 0.9, 5)]
    nose = [(0.5, v) for v in np.linspace(0.25, 0.5, 4)] + [(u, 0.58) for u in np.linspace(0.4, 0.6, 5)]
    eyes = []
    for cx in (0.3, 0.7):
        eyes += [(cx + 0.1 * np.cos(t), 0.25 + 0.04 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    mouth = [(0.5 + 0.2 * np.cos(t), 0.78 + 0.08 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    mouth += [(0.5 + 0.12 * np.cos(t), 0.78 + 0.03 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    pts = np.array(jaw + brows + nose + eyes + mouth, dtype=np.float64)
    assert pts.shape == (68, 2)
    return pts


TEMPLATE = _template()


def _face_centre(placement) -> tuple[float, float]:
    x0, y0, x1, y1 = media.face_box(placement)
    return (x0 + x1) / 2 - placement[0], (y0 + y1) / 2 - placement[1]


def landmarks(placement, roll: float) -> list[list[float]]:
    """The 68 landmarks of the pasted face, rolled like the image (PIL: counter-clockwise)."""
    x0, y0, x1, y1 = media.face_box(placement)
    pts = TEMPLATE * [x1 - x0, y1 - y0] + [x0, y0]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    t = np.deg2rad(roll)
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    # Image y points down, so a counter-clockwise turn on screen is this matrix.
    rx = cx + dx * np.cos(t) + dy * np.sin(t)
    ry = cy - dx * np.sin(t) + dy * np.cos(t)
    return np.round(np.c_[rx, ry], 2).tolist()


ALIGNED_SIZE = 112  # px: Aff-Wild2's cropped_aligned frames are 112 x 112


def make_affwild(
    root: str | Path, videos: dict[str, str], frames: int = 30, seed: int = 0, unlabelled: int = 9
) -> dict[str, ClipTruth]:
    """The same faces in Aff-Wild2's layout: <root>/annotations/<Train_Set|Validation_Set>/<video>.txt
    (values / 10, every `unlabelled`-th frame -5) and <root>/cropped_aligned/<video>/00001.jpg ...,
    each frame cut to its face box and resized to 112 x 112, as an aligner would.

    `videos` maps a video name to its set ("Train_Set" or "Validation_Set"); names ending in
    _left/_right share an actor (two people of one source video, here the same face).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    actors = sorted({v.removesuffix("_left").removesuffix("_right") for v in videos})
    looks = {a: _actor_look(rng, i) for i, a in enumerate(actors)}
    truth = {}
    for name, part in sorted(videos.items()):
        actor = name.removesuffix("_left").removesuffix("_right")
        look = looks[actor]
        t = _clip_truth(rng, actor, frames, look["placement"])
        box = tuple(round(v) for v in media.face_box(look["placement"]))
        folder = root / "cropped_aligned" / name
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["valence,arousal"]
        for i, (v, a, roll) in enumerate(zip(t.valence, t.arousal, t.roll)):
            face = Image.fromarray(frame(v, roll, look)).crop(box).resize((ALIGNED_SIZE, ALIGNED_SIZE), Image.BILINEAR)
            face.save(folder / f"{i + 1:05d}.jpg", quality=95)
            lines.append("-5,-5" if unlabelled and i % unlabelled == unlabelled - 1 else f"{v / 10:g},{a / 10:g}")
        txt = root / "annotations" / part / f"{name}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("\n".join(lines) + "\n")
        truth[name] = t
    return truth
