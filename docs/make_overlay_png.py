"""Regenerate docs/overlay.png: one frame of `fer render` over a synthetic clip and a hand-made table.

    python docs/make_overlay_png.py

The clip is the tests' astronaut portrait (tests/media.py); the table's values are made up to
show every element (box, expression, both bars), not a model's output.
"""

import sys
import tempfile
from pathlib import Path

import av
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's fercli and test media
import media  # noqa: E402

from fercli.core.labels import EXPRESSIONS  # noqa: E402
from fercli.views.render import render  # noqa: E402

PLACEMENT = (90, 30, 180)  # portrait x, y, side (px)
PROBS = [0.02, 0.01, 0.01, 0.02, 0.81, 0.09, 0.02, 0.02]  # in EXPRESSIONS order; happiness most probable

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    clip = media.make_clip(tmp / "doc.mp4", 2.0, 25, (400, 260), lambda t: [PLACEMENT])
    box = media.face_box(PLACEMENT)
    rows = [
        dict(
            video="doc.mp4",
            second=s,
            start=float(s),
            end=float(s + 1),
            face=True,
            valence=6,
            arousal=-3,
            valence_score=6.2,
            arousal_score=-2.8,
            face_x0=box[0],
            face_y0=box[1],
            face_x1=box[2],
            face_y1=box[3],
            face_score=0.93,
            face_share=1.0,
            **dict(zip(EXPRESSIONS, PROBS)),
            expression="happiness",
        )
        for s in range(2)
    ]
    pd.DataFrame(rows).to_csv(tmp / "doc.csv", index=False)
    out = render(clip, tmp / "doc.csv", tmp / "overlay.mp4").out
    with av.open(str(out)) as c:
        frame = next(iter(c.decode(video=0)))
    Image.fromarray(frame.to_ndarray(format="rgb24")).save(ROOT / "docs" / "overlay.png", optimize=True)
