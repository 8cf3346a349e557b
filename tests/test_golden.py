"""The tables fer gives on fixed clips and checkpoints, kept as the reference it must still give.

`tests/data/golden_*.csv` are written by `python tests/test_golden.py` from the session's
synthetic clips (conftest.CLIPS: lossless FFV1, MJPEG and x264, all decoded exactly) and its
seeded random checkpoints. Scores and boxes may move by float rounding across CPUs; labels, faces
and keys may not move at all.

History: first written before the restructuring (issue 12). Re-recorded, all columns, when the
face detector moved from mediapipe 0.10.21 to fer's own BlazeFace on LiteRT (issue 23): against
the tables the mediapipe build gives, every face found in the same seconds, boxes IoU >= 0.9973
(mean 0.9993), valence/arousal scores within 0.0104, labels equal except one arousal near-tie
(1.38 -> 1.37, class 4 -> 3 of the random LSTM head) in lstm_seconds, lstm_all_faces (one row
each) and lstm_frames (three samples); the frame model's labels and expressions unchanged.
Re-recorded when faces became people (issue 28): `face_id` is now `person` and every table has
`people`; all other values equal the earlier tables (same tolerances) but one: in
lstm_all_faces the face that comes back to gap.mkv after 2 s away is person 0 again, where it
had been a new track, 1. Then the per-sample table (`--per-sample`, once `--per-frame`) became
lstm_samples, its `frame` column `sample_index`, every value equal.
Re-recorded when every table gained its spread (issue 39): `valence_sd`, `arousal_sd` and
`samples` added after the confidences; every other value equal (floats within 1e-6).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.smoke  # .ci/run repeats these on CPython 3.13
DATA = Path(__file__).with_name("data")
RUNS = {  # name: (checkpoint fixture, annotate options)
    "lstm_seconds": ("lstm_checkpoint", {}),
    "lstm_samples": ("lstm_checkpoint", {"per_sample": True}),
    "lstm_all_faces": ("lstm_checkpoint", {"all_faces": True}),
    "frame_seconds": ("frame_checkpoint", {}),
}
# Float kernels differ slightly between CPUs; the frame model's random scores are tiny, hence rtol.
RTOL, ATOL = 1e-3, 1e-5


def annotate_table(clips_dir: Path, checkpoint: Path, options: dict, out: Path) -> pd.DataFrame:
    import fercli
    from fercli.job.contract import AnnotateOptions

    inputs = [clips_dir / name for name in ("moving.mp4", "sub/gap.mkv", "two.mkv", "odd.avi")]
    fercli.annotate(
        inputs, out, options=AnnotateOptions(**options), model=fercli.load_model(checkpoint, "cpu"), device="cpu"
    )
    return fercli.read_table(out)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_table_as_before_the_restructuring(request, tmp_path, clips_dir, name):
    fixture, options = RUNS[name]
    got = annotate_table(clips_dir, request.getfixturevalue(fixture), options, tmp_path / "t.csv")
    from fercli.tables.writers import read_table

    want = read_table(DATA / f"golden_{name}.csv")
    assert list(got.columns) == list(want.columns)
    floats = [c for c in want.columns if want[c].dtype == np.float32]  # scores, boxes, probabilities
    exact = [c for c in want.columns if c not in floats]
    pd.testing.assert_frame_equal(got[exact].astype(str), want[exact].astype(str))
    for col in floats:
        np.testing.assert_allclose(
            got[col].to_numpy(float), want[col].to_numpy(float), rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=col
        )


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
