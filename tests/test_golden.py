"""The tables fer made before its restructuring (issue 12), kept as the reference it must still give.

`tests/data/golden_*.csv` were written by `python tests/test_golden.py` at the commit before the
restructuring, from the session's synthetic clips (conftest.CLIPS: lossless FFV1, MJPEG and x264,
all decoded exactly) and its seeded random checkpoints. Scores may move by float rounding across
CPUs; labels, faces and keys may not move at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).with_name("data")
RUNS = {  # name: (checkpoint fixture, annotate options)
    "lstm_seconds": ("lstm_checkpoint", {}),
    "lstm_frames": ("lstm_checkpoint", {"per_frame": True}),
    "lstm_all_faces": ("lstm_checkpoint", {"all_faces": True}),
    "frame_seconds": ("frame_checkpoint", {}),
}
# Float kernels differ slightly between CPUs; the frame model's random scores are tiny, hence rtol.
RTOL, ATOL = 1e-3, 1e-5
FLOAT_COLUMNS = ("valence_score", "arousal_score", "valence_conf", "arousal_conf")


def annotate_table(clips_dir: Path, checkpoint: Path, options: dict, out: Path) -> pd.DataFrame:
    import fercli
    from fercli.options import AnnotateOptions

    inputs = [clips_dir / name for name in ("moving.mp4", "sub/gap.mkv", "two.mkv", "odd.avi")]
    fercli.annotate(inputs, out, options=AnnotateOptions(**options), model=fercli.load_model(checkpoint, "cpu"), device="cpu")
    return fercli.read_table(out)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_table_as_before_the_restructuring(request, tmp_path, clips_dir, name):
    fixture, options = RUNS[name]
    got = annotate_table(clips_dir, request.getfixturevalue(fixture), options, tmp_path / "t.csv")
    from fercli.writers import read_table

    want = read_table(DATA / f"golden_{name}.csv")
    # The golden tables predate the face columns: compare theirs, and the new ones must be there.
    new = ["face_x0", "face_y0", "face_x1", "face_y1", "face_score", "face_share"]
    if fixture == "frame_checkpoint":  # the HSEmotion-form network has the expression head
        new += ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "expression"]
    assert list(got.columns) == list(want.columns) + new
    assert got.loc[got.face, new].notna().all().all() and got.loc[~got.face, new[:5]].isna().all().all()
    got = got[list(want.columns)]
    exact = [c for c in want.columns if c not in FLOAT_COLUMNS]
    pd.testing.assert_frame_equal(got[exact].astype(str), want[exact].astype(str))
    for col in FLOAT_COLUMNS:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=RTOL, atol=ATOL, equal_nan=True)


if __name__ == "__main__":  # regenerate the reference (only at a commit whose tables are the reference)
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    import conftest
    import media

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = root / "videos"
        for clip, (seconds, fps, size, placements, opts) in conftest.CLIPS.items():
            (clips / clip).parent.mkdir(parents=True, exist_ok=True)
            media.make_clip(clips / clip, seconds, fps, size, placements, **opts)

        class Factory:
            def mktemp(self, name):
                path = Path(tempfile.mkdtemp(dir=root))
                return path

        checkpoints = {
            "lstm_checkpoint": conftest.lstm_checkpoint.__wrapped__(Factory()),
            "frame_checkpoint": conftest.frame_checkpoint.__wrapped__(Factory()),
        }
        DATA.mkdir(exist_ok=True)
        for name, (fixture, options) in sorted(RUNS.items()):
            table = annotate_table(clips, checkpoints[fixture], options, root / f"{name}.csv")
            table.to_csv(DATA / f"golden_{name}.csv", index=False)
            print(name, len(table), "rows")
