"""fercli.job.schedules: worker processes that die (OOM killer, a decoder crashing) do not stop the batch."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from conftest import within

import fercli
from fercli.job import schedules
from fercli.job.contract import AnnotateOptions
from fercli.tables.writers import read_table

RUN_LIMIT_S = 240  # a run that has not ended by then is hung


@pytest.fixture(scope="module")
def batch(tmp_path_factory, clips_dir):
    folder = tmp_path_factory.mktemp("batch")
    for k in range(4):
        shutil.copy(clips_dir / "moving.mp4", folder / f"c{k}.mp4")
    shutil.copy(clips_dir / "odd.avi", folder / "c4.avi")
    return folder


def run(folder, out, checkpoint, on_event=None, workers=1):
    """annotate in a thread, so that a hang is a failed assertion rather than a stuck suite."""

    def annotate():
        model = fercli.load_model(checkpoint, "cpu")
        options = AnnotateOptions(workers=workers, precision="fp32")
        return fercli.annotate([folder], out, model=model, device="cpu", options=options, progress=on_event)

    return within(RUN_LIMIT_S, annotate)


def killer(video: str, times: int):
    """A progress callback that SIGKILLs the worker processes when `video` starts, `times` times."""
    kills = []

    def on_event(event):
        if event.kind == "start" and event.video == video and len(kills) < times:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
            kills.append(event.video)

    return on_event, kills


@pytest.fixture(scope="module")
def clean(batch, lstm_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "t.parquet"
    run(batch, out, lstm_checkpoint)
    return read_table(out)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    keys = ["video", "second"]
    a, b = (t.sort_values(keys).reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)


def test_a_clip_whose_worker_is_killed_is_retried_on_a_fresh_one(batch, lstm_checkpoint, clean, tmp_path):
    on_event, kills = killer("c2.mp4", times=1)
    out = tmp_path / "t.parquet"
    result = run(batch, out, lstm_checkpoint, on_event)
    assert kills == ["c2.mp4"]
    assert not result.failed
    same_rows(read_table(out), clean)  # the retried clip's rows once, as a clean run gives them


def test_a_clip_that_kills_its_worker_twice_fails_alone(batch, lstm_checkpoint, clean, tmp_path):
    on_event, kills = killer("c2.mp4", times=2)
    out = tmp_path / "t.parquet"
    result = run(batch, out, lstm_checkpoint, on_event)
    assert kills == ["c2.mp4", "c2.mp4"]
    assert [v.video for v in result.failed] == ["c2.mp4"]
    assert "the decoding process died" in result.failed[0].error and "signal 9" in result.failed[0].error
    errors = pd.read_csv(result.errors_file)
    assert list(errors.video) == ["c2.mp4"]
    same_rows(read_table(out), clean[clean.video != "c2.mp4"])


def test_two_workers_one_killed_the_batch_still_ends(batch, lstm_checkpoint, clean, tmp_path):
    # The other worker finishes its clips and waits; the run must notice the dead one, not wait.
    on_event, kills = killer("c1.mp4", times=1)
    out = tmp_path / "t.parquet"
    result = run(batch, out, lstm_checkpoint, on_event, workers=2)
    assert kills and not result.failed
    same_rows(read_table(out), clean)


def kill_at_next(n: int):
    """A stand-in for `schedules._hand_out` that kills the worker once it has asked for its n-th
    clip, before the answer goes down its pipe: the send meets a closed pipe."""
    hand_out, asked = schedules._hand_out, []

    def wrapped(worker, *args):
        asked.append(worker.process.pid)
        if len(asked) == n:
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.join()
        return hand_out(worker, *args)

    return wrapped, asked


def test_a_worker_killed_after_asking_for_a_clip_is_replaced(batch, lstm_checkpoint, clean, tmp_path, monkeypatch):
    # Before: the BrokenPipeError left annotate, and the CLI ended with status 1 and no word, the
    # clips after it neither in the table nor in the errors file.
    wrapped, asked = kill_at_next(3)
    monkeypatch.setattr(schedules, "_hand_out", wrapped)
    out = tmp_path / "t.parquet"
    result = run(batch, out, lstm_checkpoint)
    assert len(set(asked)) == 2  # the killed worker, then its replacement
    assert not result.failed
    same_rows(read_table(out), clean)


def test_a_fresh_worker_that_dies_before_its_retried_clip_passes_the_clip_on(
    batch, lstm_checkpoint, clean, tmp_path, monkeypatch
):
    # c2's worker is killed on c2; the fresh worker that c2 is kept for dies as it starts. Before:
    # c2 was dropped without a word (in neither the table nor the errors file).
    spawn, fresh = schedules._Pool.spawn, []

    def spawn_and_kill_the_first_fresh(pool, reserved=None):
        spawn(pool, reserved)
        if reserved is not None:
            fresh.append(pool.workers[-1].process.pid)
            if len(fresh) == 1:
                os.kill(fresh[0], signal.SIGKILL)

    monkeypatch.setattr(schedules._Pool, "spawn", spawn_and_kill_the_first_fresh)
    on_event, kills = killer("c2.mp4", times=1)
    out = tmp_path / "t.parquet"
    result = run(batch, out, lstm_checkpoint, on_event)
    assert kills == ["c2.mp4"] and len(fresh) == 2  # c2 kept for a second fresh worker
    assert not result.failed
    same_rows(read_table(out), clean)


@pytest.mark.parametrize("workers", [0, 1], ids=["thread", "worker-process"])
def test_a_producer_that_hangs_is_given_up_on_and_the_batch_ends(
    batch, lstm_checkpoint, clean, tmp_path, monkeypatch, workers
):
    # Before: the decoding thread (or worker) that stopped without dying stalled the batch for ever.
    import stalls

    from fercli.job import pipeline, stages

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("c0.mp4", "c1.mp4"):
        shutil.copy(batch / name, folder / name)
    shutil.copy(batch / "c2.mp4", folder / stalls.STUCK)
    monkeypatch.setattr(pipeline, "Producer", stalls.StallingProducer)
    monkeypatch.setattr(stages, "STALL_QUIET_S", 3.0)
    out = tmp_path / "t.parquet"
    result = run(folder, out, lstm_checkpoint, workers=workers)
    assert [v.video for v in result.failed] == [stalls.STUCK]
    assert "stopped making progress (nothing for 3 s)" in result.failed[0].error and "twice" in result.failed[0].error
    assert list(pd.read_csv(result.errors_file).video) == [stalls.STUCK]
    same_rows(read_table(out), clean[clean.video.isin(["c0.mp4", "c1.mp4"])])


def test_several_producer_threads_give_the_rows_of_one(batch, lstm_checkpoint, clean, tmp_path):
    # The device path runs a producer thread per decoder; the rows must not depend on how many.
    from fercli.job import schedules
    from fercli.job.pipeline import make_producer
    from fercli.job.stages import Labeler
    from fercli.media.inputs import find_clips
    from fercli.nets.engines import place

    model = fercli.load_model(lstm_checkpoint, "cpu")
    placement = place("torch", "cpu", "fp32")
    options = AnnotateOptions(workers=0, precision="fp32")
    clips = find_clips([batch]).clips
    done = []
    labeler = Labeler(model, options, placement, clips, done.append, lambda event: None)
    schedules.run_in_thread(clips, labeler, make_producer(model.config, options, placement), threads=3)
    assert sorted(d.result.video for d in done) == sorted(c.name for c in clips) and not any(
        d.result.error for d in done
    )
    rows = pd.DataFrame([{"video": d.result.video, **row} for d in done for row in d.rows])
    for column in ("valence", "arousal", "valence_score", "arousal_score", "face"):
        merged = rows.merge(clean, on=["video", "second"], suffixes=("", "_clean"))
        assert len(merged) == len(clean)
        np.testing.assert_allclose(merged[column].astype(float), merged[f"{column}_clean"].astype(float), atol=1e-5)
