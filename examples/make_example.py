"""Make examples/astronaut.mp4, the clip the README's first command annotates.

    python examples/make_example.py

A virtual camera moving over scikit-image's astronaut photograph (Eileen Collins, from NASA's
Great Images database, public domain; `skimage.data.astronaut()`, so scikit-image must be
installed, as the test extra installs it): it pushes in on her face, tilts down to her suit and helmet until her
face has left the frame, holds there, and comes back. So the table shows seconds with a
face, a second without one, and seconds with a face for part of the time (`face_share`).
Written with PyAV's H.264 encoder: 480 x 270, 25 frames/s, 6 s.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "astronaut.mp4"
SIZE = (480, 270)  # px, width x height: 16:9, about the photo's own scale
FPS = 25  # frames/s
CRF = 26  # x264 quality: the clip stays well under 1 MB
# Camera keyframes (time s, centre x, centre y, crop width), in photo pixels (the photo is 512 x 512).
# Her face lies in y 60-200; below y = 230 there are only the suit, the flag and the helmet.
KEYS = [
    (0.0, 256, 144, 512),  # the upper part of the photo
    (2.0, 235, 130, 320),  # pushed in on the face
    (2.8, 256, 372, 500),  # tilted down to the suit: the face has left the frame
    (4.0, 256, 372, 500),  # held there
    (5.0, 235, 130, 320),  # back on the face
    (6.0, 235, 130, 320),
]


def camera(t: float) -> tuple[float, float, float]:
    """Centre x, centre y and width of the crop at time t, eased between keyframes."""
    for (t0, *a), (t1, *b) in pairwise(KEYS):
        if t0 <= t <= t1:
            u = (t - t0) / (t1 - t0)
            u = u * u * (3 - 2 * u)  # smoothstep: the camera starts and stops gently
            return tuple(p + (q - p) * u for p, q in zip(a, b))
    return tuple(KEYS[-1][1:])


def frame(photo: Image.Image, t: float) -> np.ndarray:
    cx, cy, width = camera(t)
    height = width * SIZE[1] / SIZE[0]
    x0 = min(max(cx - width / 2, 0), photo.width - width)
    y0 = min(max(cy - height / 2, 0), photo.height - height)
    return np.asarray(photo.resize(SIZE, Image.BICUBIC, box=(x0, y0, x0 + width, y0 + height)))


def main() -> None:
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    n = round(KEYS[-1][0] * FPS)
    with av.open(str(OUT), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"crf": str(CRF), "preset": "slow"}
        for i in range(n):
            picture = av.VideoFrame.from_ndarray(frame(photo, i / FPS), format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    print(f"{OUT}: {n} frames, {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
