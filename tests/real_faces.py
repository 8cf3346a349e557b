"""Frames made from real face photographs, for the face detector's parity with mediapipe 0.10.21.

The photographs: scikit-image's astronaut (Eileen Collins, in the scikit-image wheel) and
OpenCV's sample `messi5.jpg` (Debian's opencv-doc). Each frame places a face as the tests need
it: moving, half off-screen, small, large, rolled, two at once, or none. Only numpy, PIL and
scikit-image are used, so mediapipe's environment (numpy 1) and fer's (numpy 2) make the same
frames (`tools/detector_parity.py` records mediapipe's boxes on them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MESSI = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")
ASTRONAUT_HEAD = (120, 0, 340, 250)  # x0, y0, x1, y1: the astronaut's head and shoulders
MESSI_HEAD = (200, 70, 285, 160)  # the player's head in messi5.jpg (548 x 342)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def messi() -> np.ndarray | None:
    """OpenCV's messi5.jpg as RGB, or None where Debian's opencv-doc is not installed."""
    if not MESSI.exists():
        return None
    return np.asarray(Image.open(MESSI).convert("RGB"))


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gx = np.linspace(60, 170, width)[None, :, None]
    gy = np.linspace(0, 50, height)[:, None, None]
    base = np.broadcast_to(gx + gy + np.array([10, 0, 20]), (height, width, 3))
    return np.clip(base + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)


def head(photo: np.ndarray, box: tuple[int, int, int, int], side: int, roll: float = 0.0) -> np.ndarray:
    """The head cut from `photo`, resized so its width is `side` px, rolled `roll` degrees."""
    x0, y0, x1, y1 = box
    img = Image.fromarray(photo[y0:y1, x0:x1])
    img = img.resize((side, round(side * (y1 - y0) / (x1 - x0))), Image.BICUBIC)
    if roll:
        img = img.rotate(roll, resample=Image.BICUBIC, expand=False, fillcolor=(128, 128, 128))
    return np.asarray(img)


def paste(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    """`patch` pasted with its top-left corner at (x, y), clipped at the frame's edges."""
    h, w = frame.shape[:2]
    ph, pw = patch.shape[:2]
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + pw, w), min(y + ph, h)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = patch[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
    return frame


def frames() -> dict[str, np.ndarray]:
    """name -> RGB uint8 frame; the messi frames only where opencv-doc is installed."""
    astro = astronaut()
    a = lambda side, roll=0.0: head(astro, ASTRONAUT_HEAD, side, roll)  # noqa: E731
    out = {"astronaut_photo": astro, "no_face": background(640, 360, seed=7)}
    for k in range(5):  # a face moving across a 640 x 360 frame
        out[f"moving_{k}"] = paste(background(640, 360, seed=k), a(180), 20 + 100 * k, 40 + 15 * k)
    out["half_off_left"] = paste(background(640, 360), a(220), -110, 60)
    out["half_off_top"] = paste(background(640, 360), a(220), 300, -80)
    out["small_720p"] = paste(background(1280, 720), a(120), 600, 300)
    out["large_720p"] = paste(background(1280, 720), a(760), 260, -80)
    out["odd_size"] = paste(background(321, 241), a(150), 90, 20)
    out["portrait_frame"] = paste(background(360, 640), a(260), 50, 150)
    for roll in (-25, 25):
        out[f"rolled_{roll:+d}"] = paste(background(640, 360), a(220, roll), 200, 40)
    m = messi()
    if m is not None:
        out["messi_photo"] = m
        two = paste(background(1280, 720), a(300), 80, 120)
        out["two_faces"] = paste(two, head(m, MESSI_HEAD, 300), 800, 160)
    return out


# -- two people across shot cuts -----------------------------------------------------------------

CUTS_SIZE = (480, 270)  # px
# (start s, end s, tint, [(person, x, y, head width px, (absent from s, back at s) or None)]);
# person 0 is the astronaut, 1 the player. Cuts at 4, 6, 9 and 11 s. The astronaut leaves the
# third shot for 1.4 s, longer than a track lives (faces.TRACK_TTL), and comes back; she is on
# screen 7.6 s in all, the player 6 s.
CUTS_SHOTS = (
    (0.0, 4.0, (1.00, 0.95, 0.90), [(0, 60, 30, 150, None)]),
    (4.0, 6.0, (0.80, 0.95, 1.15), [(1, 280, 60, 130, None)]),
    (6.0, 9.0, (1.10, 1.00, 0.80), [(0, 170, 20, 180, (7.0, 8.4))]),
    (9.0, 11.0, (0.90, 1.10, 0.95), [(1, 40, 80, 110, None)]),
    (11.0, 13.0, (1.00, 1.00, 1.00), [(1, 30, 70, 120, None), (0, 270, 40, 150, None)]),
)
CUTS = (4.0, 6.0, 9.0, 11.0)


def people_at(t: float) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(person, head box) of each head on screen at time t in `cuts_frames`."""
    shot = next(s for s in CUTS_SHOTS if s[0] <= t < s[1])
    return [(p, (x, y, x + side, y + side)) for p, x, y, side, gone in shot[3] if not (gone and gone[0] <= t < gone[1])]


def cuts_frames(fps: float) -> list[np.ndarray]:
    """The frames of a clip with two real people alternating across shot cuts (see CUTS_SHOTS).

    Needs `messi5.jpg` (opencv-doc). Each shot has its own colour cast, as cuts between camera
    set-ups do; within a shot the background's noise changes from frame to frame.
    """
    photos = {0: (astronaut(), ASTRONAUT_HEAD), 1: (messi(), MESSI_HEAD)}
    n = round(CUTS_SHOTS[-1][1] * fps)
    frames = []
    for i in range(n):
        t = i / fps
        shot = next(s for s in CUTS_SHOTS if s[0] <= t < s[1])
        frame = background(*CUTS_SIZE, seed=i)
        for person, (x0, y0, x1, _) in people_at(t):
            photo, box = photos[person]
            paste(frame, head(photo, box, x1 - x0), x0, y0)
        frames.append(np.clip(frame * np.array(shot[2]), 0, 255).astype(np.uint8))
    return frames
