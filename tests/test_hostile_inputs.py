"""One batch holding the hostile and careless inputs of the issues, run as a user runs fer.

`fer annotate` over a folder where good clips sit beside a Matroska file declaring 999,000 s,
names that look like markup or terminal codes, a symlink loop, an empty file and a clip whose
last frame claims 999,000 s: every good clip is annotated, each bad one is one line in the
errors file naming it, nothing reaches the terminal raw, and the run stays bounded in memory
(peak RSS of the process, from the kernel's rusage).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from media import write_coded, write_sliver_clip

from fercli.tables.writers import read_table

REPO = Path(__file__).resolve().parents[1]
GOOD = ("moving.mp4", "[bold]ok.mp4", "\x1b[31mred.mp4", "[/x]/inside.mp4")
PEAK_RSS_MB = 3500  # the run's ceiling: imports and model take about 1.5 GB; 11 h of planned samples took more


@pytest.fixture(scope="module")
def batch(tmp_path_factory, clips_dir, lstm_checkpoint):
    root = tmp_path_factory.mktemp("hostile") / "videos"
    root.mkdir()
    for name in GOOD:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clips_dir / "moving.mp4", root / name)
    frames = [np.zeros((48, 64, 3), np.uint8)] * 10
    write_coded(root / "bomb.mkv", frames, 25, "libx264", "yuv420p", times=[k / 25 for k in range(9)] + [999_000.0])
    write_sliver_clip(root / "long_last.mkv", 1, fps=30, sliver=999_000.0, codec="libx264")
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes").symlink_to("notes")  # a loop
    out = root.parent / "results.csv"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fercli.cli",
            "annotate",
            str(root),
            "--out",
            str(out),
            "--model",
            str(lstm_checkpoint),
            "--workers",
            "0",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=os.environ | {"COLUMNS": "200"},
    )
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return done, out, peak_mb if peak_mb > before / 1024 else None


def test_every_good_clip_is_annotated(batch, clips_dir):
    done, out, _ = batch
    assert done.returncode == 1, done.stdout + done.stderr  # some clips failed, the rest written
    table = read_table(out)
    assert sorted(set(table.video)) == sorted([*GOOD, "long_last.mkv"])
    with av.open(str(clips_dir / "moving.mp4")) as c:  # PyAV, the second reader: the clip's length
        frames = [f.time for f in c.decode(video=0)]
    last_second = math.ceil(frames[-1] + (frames[1] - frames[0])) - 1
    # the long last frame lasts one usual frame: 30 frames of 1/30 s are second 0 alone
    assert table.groupby("video").second.max().to_dict() == {**dict.fromkeys(GOOD, last_second), "long_last.mkv": 0}


def test_each_bad_input_is_one_line_naming_it(batch):
    _, out, _ = batch
    errors = pd.read_csv(out.with_name("results.csv.errors.csv"))
    assert sorted(errors.video) == ["bomb.mkv", "empty.mp4"]
    for video, error in zip(errors.video, errors.error):
        assert video in error and "\n" not in error
    assert "999000 s after the frame before it" in errors.set_index("video").error["bomb.mkv"]


def test_names_reach_the_terminal_as_text(batch):
    done, _, _ = batch
    assert "\x1b" not in done.stdout + done.stderr


def test_the_run_stays_bounded_in_memory(batch):
    _, _, peak_mb = batch
    if peak_mb is None:
        pytest.skip("an earlier child process of this test session set a higher peak RSS")
    assert peak_mb < PEAK_RSS_MB
