"""Regenerate docs/people.png and print the table docs/people.md shows: two people across shot cuts.

    python docs/make_people_png.py

The clip is the tests' (tests/real_faces.py `cuts_frames`: scikit-image's astronaut and OpenCV's
messi5.jpg, from Debian's opencv-doc, over four cuts); the network is a random EfficientNet +
LSTM, so its labels show the table's layout, not a trained model's judgement. The picture is one
frame of `fer render` over the `--all-faces` table, at 11.5 s, where both are on screen.
"""

import sys
import tempfile
from pathlib import Path

import av
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's fercli and test media
import media  # noqa: E402
import real_faces  # noqa: E402

import fercli  # noqa: E402
from fercli.job.contract import AnnotateOptions  # noqa: E402
from fercli.nets.checkpoints import save_checkpoint  # noqa: E402
from fercli.nets.model import EfficientNetLSTM, ModelConfig  # noqa: E402
from fercli.views.render import render  # noqa: E402

AT = 11.5  # s: both people on screen
COLUMNS = ["second", "person", "face", "valence", "arousal", "face_x0", "face_share", "people"]

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    clip = media.write_video(tmp / "cuts.mp4", real_faces.cuts_frames(10), 10)
    torch.manual_seed(0)
    net = EfficientNetLSTM(ModelConfig(hidden=32))
    with torch.no_grad():  # labels that vary with the face, as the tests' checkpoints do
        net.valence_head.weight.mul_(20)
        net.arousal_head.weight.mul_(20)
    model = fercli.load_model(save_checkpoint(net.eval(), tmp / "lstm.pt"), "cpu")
    for name, options in (("default", AnnotateOptions()), ("all", AnnotateOptions(all_faces=True))):
        fercli.annotate([clip], tmp / f"{name}.csv", model=model, device="cpu", options=options)
        table = fercli.read_table(tmp / f"{name}.csv")
        shown = table[[c for c in COLUMNS if c in table]]
        print(f"\n{name}:\n| " + " | ".join(shown.columns) + " |\n" + "|---" * len(shown.columns) + "|")
        for row in shown.itertuples(index=False):
            print(
                "| "
                + " | ".join("" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else str(v) for v in row)
                + " |"
            )
    out = render(clip, tmp / "all.csv", tmp / "overlay.mp4").out
    with av.open(str(out)) as c:
        frame = next(f for f in c.decode(video=0) if f.time >= AT)
    Image.fromarray(frame.to_ndarray(format="rgb24")).save(ROOT / "docs" / "people.png", optimize=True)
