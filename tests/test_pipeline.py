import contextlib
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BROKEN, DURATIONS

import fercli
from fercli.core.errors import FerError
from fercli.job.contract import AnnotateOptions
from fercli.nets.engines import place
from fercli.tables.writers import read_metadata, read_table

GOOD = sorted(DURATIONS)


@pytest.fixture(scope="module")
def lstm(lstm_checkpoint):
    return fercli.load_model(lstm_checkpoint)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, clips_dir, broken_dir, lstm):
    """One full run over good and broken clips, shared by the checks below."""
    out = tmp_path_factory.mktemp("out") / "results.parquet"
    result = fercli.annotate([clips_dir, broken_dir], out, options=AnnotateOptions(), model=lstm)
    return result, read_table(out)


def test_one_row_per_second_including_the_partial_last(clean):
    result, df = clean
    counts = df.groupby("video").size().to_dict()
    assert counts == {name: math.ceil(d) for name, d in DURATIONS.items()}
    odd = df[df.video == "odd.avi"]
    assert odd.second.tolist() == [0, 1, 2, 3]
    assert odd.end.tolist() == pytest.approx([1.0, 2.0, 3.0, 3.2])


def test_faceless_seconds_are_marked_not_dropped(clean):
    _, df = clean
    gap = df[df.video == "sub/gap.mkv"]
    assert gap.face.tolist() == [True, True, False, False, True]
    assert gap.valence.isna().tolist() == [False, False, True, True, False]
    assert gap.valence_conf.isna().tolist() == [False, False, True, True, False]


def test_labels_are_consistent_with_their_distribution(clean):
    _, df = clean
    faces = df[df.face]
    assert faces.valence.between(-10, 10).all() and faces.arousal.between(-10, 10).all()
    assert faces.valence_score.between(-10, 10).all()
    assert (faces.valence_conf > 1 / 21).all() and (faces.valence_conf <= 1).all()
    assert faces.valence_score.nunique() > 5  # the scores follow the input, not a constant


def test_broken_inputs_are_reported_and_the_batch_goes_on(clean):
    result, df = clean
    failed = {v.video: v.error for v in result.videos if v.error}
    assert set(failed) == {b.split("/", 1)[1] for b in BROKEN}
    for name, error in failed.items():
        assert name in error and "\n" not in error
    errors = pd.read_csv(result.errors_file)
    assert set(errors.video) == set(failed)
    assert set(df.video) == set(GOOD)
    assert result.skipped_files == 2  # notes.txt and AFEW-VA's 001.json


def test_main_subject_is_the_big_face(clean, tmp_path, clips_dir, lstm):
    _, df = clean
    cols = ["valence_score", "arousal_score"]
    main = df[df.video == "two.mkv"][cols].to_numpy()
    out = tmp_path / "faces.parquet"
    fercli.annotate([clips_dir / "two.mkv"], out, options=AnnotateOptions(all_faces=True), model=lstm)
    tracks = read_table(out)
    big = tracks[tracks.person == 0][cols].to_numpy()  # ids follow size: largest first
    small = tracks[tracks.person == 1][cols].to_numpy()
    np.testing.assert_allclose(main, big, atol=1e-4)
    assert np.abs(main - small).min() > 10 * np.abs(main - big).max()
    # and the big face alone in the frame gives nearly the same labels (its box moves slightly)
    alone = df[df.video == "big_only.mkv"][cols].to_numpy()
    np.testing.assert_allclose(main, alone, atol=0.05)


def test_worker_processes_give_the_same_table(clean, tmp_path, clips_dir, broken_dir, lstm):
    result, df = clean
    out = tmp_path / "workers.parquet"
    two = fercli.annotate([clips_dir, broken_dir], out, options=AnnotateOptions(workers=2), model=lstm)
    pd.testing.assert_frame_equal(read_table(out), df, atol=1e-5, check_exact=False)
    assert sorted((v.video, v.error) for v in two.failed) == sorted((v.video, v.error) for v in result.failed)


def test_parquet_metadata_describes_the_run(clean, lstm):
    result, _ = clean
    meta = read_metadata(result.out)
    assert meta["fps"] == 5.0 and meta["window"] == 5 and meta["arch"] == "efficientnet_lstm"
    assert meta["weights_sha256"] == lstm.weights_sha256
    assert meta["fer_version"] == fercli.__version__


def test_rows_match_a_hand_run_of_the_model(clean, lstm, clips_dir):
    """Second 0 of a clip, recomputed by hand: decode with PyAV, crop with the detector's box."""
    import av

    from fercli.media.faces import FaceDetector, crop
    from fercli.nets.model import to_input

    _, df = clean
    with av.open(str(clips_dir / "big_only.mkv")) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(25), c.decode(video=0))]
    samples = frames[0:25:5]  # 5 frames/s from 25: t = 0, .2, .4, .6, .8
    with FaceDetector() as det:
        boxes = [det.detect(f)[0].box for f in samples]
    crops = np.stack([crop(f, b, 224, lstm.config.preprocess.margin) for f, b in zip(samples, boxes)])
    with torch.inference_mode():
        v, a = lstm(to_input(crops, lstm.config.preprocess)[None])
    p = v.softmax(-1)[0]
    row = df[(df.video == "big_only.mkv") & (df.second == 0)].iloc[0]
    assert row.valence == int(p.argmax()) - 10
    assert row.valence_score == pytest.approx(float((p * torch.arange(-10, 11)).sum()), abs=0.05)


def test_all_faces_gives_a_track_per_face(tmp_path, clips_dir, lstm):
    out = tmp_path / "faces.parquet"
    fercli.annotate([clips_dir / "two.mkv"], out, options=AnnotateOptions(all_faces=True), model=lstm)
    df = read_table(out)
    assert sorted(df.person.unique().tolist()) == [0, 1]
    assert df.groupby("person").size().tolist() == [3, 3]
    assert df.face.all()


def test_per_frame_rows(tmp_path, clips_dir, lstm):
    out = tmp_path / "frames.csv"
    fercli.annotate([clips_dir / "sub" / "gap.mkv"], out, options=AnnotateOptions(per_sample=True), model=lstm)
    df = read_table(out)
    assert df.sample_index.tolist() == list(range(25))  # 5 s at 5 samples/s
    assert df.time.tolist() == pytest.approx([k / 5 for k in range(25)])
    assert df.face.tolist() == [not (2.0 <= k / 5 < 4.0) for k in range(25)]


def test_frame_model_averages_frame_scores(tmp_path, clips_dir, frame_checkpoint):
    model = fercli.load_model(frame_checkpoint)
    out = tmp_path / "h.parquet"
    fercli.annotate([clips_dir / "odd.avi"], out, model=model)
    sec = read_table(out)
    out_f = tmp_path / "hf.parquet"
    fercli.annotate([clips_dir / "odd.avi"], out_f, options=AnnotateOptions(per_sample=True), model=model)
    frames = read_table(out_f)
    frames["second"] = np.floor(frames.time + 1e-6).astype(int)
    means = frames.groupby("second").valence_score.mean()
    np.testing.assert_allclose(sec.valence_score, means.values, rtol=1e-5)
    assert sec.valence_conf.isna().all()


def test_frame_model_sees_the_tight_box_and_scores_are_unclipped(tmp_path, clips_dir):
    """Per-frame scores of an HSEmotion-form model, recomputed by hand with torchvision's transforms."""
    import av
    from PIL import Image
    from torchvision import transforms

    from fercli.media.faces import FaceDetector
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

    torch.manual_seed(2)
    net = HSEmotionNet(HSEMOTION_CONFIG).eval()
    with torch.no_grad():  # valence outputs well past 1 for some crops: no clipping per frame
        net.backbone.classifier.weight[8] *= 40
        net.backbone.classifier.bias[8] = 1.2
    model = fercli.load_model(save_checkpoint(net, tmp_path / "hse.pt"))
    out = tmp_path / "f.parquet"
    fercli.annotate(
        [clips_dir / "big_only.mkv"], out, options=AnnotateOptions(per_sample=True, reuse_boxes=0), model=model
    )
    df = read_table(out)
    with av.open(str(clips_dir / "big_only.mkv")) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(25), c.decode(video=0))][::5]
    hsemotion = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with FaceDetector() as det:
        boxes = [[round(v) for v in det.detect(f)[0].box] for f in frames]
    x = torch.stack([hsemotion(Image.fromarray(f[y0:y1, x0:x1])) for f, (x0, y0, x1, y1) in zip(frames, boxes)])
    with torch.inference_mode():
        expected = net.backbone(x)[:, 8:10] * 10
    got = df[df.sample_index < 5][["valence_score", "arousal_score"]].to_numpy()
    np.testing.assert_allclose(got, expected.numpy(), atol=0.05)
    assert np.abs(got[:, 0]).max() > 10  # beyond the label range, and kept
    assert set(df.valence[df.valence_score.abs() > 10]) <= {-10, 10}  # the label is clipped
    assert read_metadata(out)["preprocess"]["crop"] == "box"


def test_tiny_and_faceless_videos(tmp_path, lstm):
    import media

    one_frame = media.write_video(tmp_path / "one.mp4", [media.background(64, 64)], fps=25)
    # 16 px wide (decord refused to copy such frames out; PyAV decodes them: no face, one row)
    tiny = media.write_video(tmp_path / "tiny16.mp4", [media.background(16, 16)] * 3, fps=25)
    # a file of the right name that is not a video: a clear error, and the batch goes on
    undecodable = tmp_path / "junk.mp4"
    undecodable.write_bytes(b"not a video\n" * 50)
    out = tmp_path / "t.parquet"
    result = fercli.annotate([one_frame, tiny, undecodable], out, model=lstm)
    df = read_table(out)
    assert len(df) == 2 and not df.face.any()
    assert sorted(df.end) == pytest.approx([0.04, 0.12])
    assert [v.video for v in result.failed] == ["junk.mp4"]
    assert "junk.mp4" in result.failed[0].error and "\n" not in result.failed[0].error


def _decode_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "fer-decode" and t.is_alive()]


def test_a_model_failure_stops_the_decoding_thread(tmp_path, clips_dir, lstm, monkeypatch):
    calls = []

    def failing_encode(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("out of memory (test)")
        return torch.zeros(len(images), 1280)

    monkeypatch.setattr(lstm, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="out of memory"):
        fercli.annotate(
            [clips_dir], tmp_path / "r.parquet", options=AnnotateOptions(workers=0, batch_size=4), model=lstm
        )
    assert len(calls) == 2
    assert not _decode_threads()
    assert len(read_table(tmp_path / "r.parquet")) == 0  # no clip finished before the failure


def test_a_decoding_thread_crash_reaches_the_caller(tmp_path, clips_dir, lstm, monkeypatch):
    import fercli.media.faces

    def no_detector(*args, **kwargs):
        raise OSError("face detector failed to start (test)")

    monkeypatch.setattr(fercli.media.faces, "FaceDetector", no_detector)
    with pytest.raises(OSError, match="face detector failed to start"):
        fercli.annotate([clips_dir], tmp_path / "r.parquet", options=AnnotateOptions(workers=0), model=lstm)
    assert not _decode_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="FFmpeg picks one thread on one core anyway")
def test_a_cpu_model_decodes_with_one_ffmpeg_thread(clips_dir, lstm):
    # Counted as OS threads started by an open clip: FFmpeg's own decoder threads.
    from fercli.job.stages import Producer
    from fercli.media.decode import open_video
    from fercli.media.faces import FaceDetector
    from fercli.media.inputs import find_clips

    def extra_threads(open_samples) -> int:
        """OS threads alive while the clip that `open_samples()` opens is being read."""
        before = len(os.listdir("/proc/self/task"))
        with contextlib.closing(open_samples()) as samples:
            next(samples)  # decoding has started
            return len(os.listdir("/proc/self/task")) - before

    path = clips_dir / "moving.mp4"
    clip = find_clips([path]).clips[0]
    with FaceDetector() as detector:
        detector.detect(np.zeros((240, 320, 3), np.uint8))  # the detector's threads start before counting
        one = extra_threads(lambda: open_video(path, threads=1).sample(5.0))
        auto = extra_threads(lambda: open_video(path, threads=0).sample(5.0))
        producer = Producer(lstm.config, AnnotateOptions(), place("torch", "cpu"))
        pipeline = extra_threads(lambda: producer.samples(clip, detector))
    assert one < auto
    assert pipeline == one


@pytest.mark.parametrize("seconds", [3, 4])
def test_no_phantom_row_after_a_whole_second_clip(tmp_path, lstm, seconds):
    import av
    import media

    clip = media.write_sliver_clip(tmp_path / "whole.mov", seconds)
    with av.open(str(clip)) as container:  # the container does put the end past the second
        stream = container.streams.video[0]
        assert float(stream.duration * stream.time_base) == pytest.approx(seconds + 0.0003)
    out = tmp_path / "r.parquet"
    fercli.annotate([clip], out, options=AnnotateOptions(), model=lstm)
    df = read_table(out)
    assert df.second.tolist() == list(range(seconds))
    assert df.face.all()
    assert df.end.iloc[-1] == pytest.approx(seconds + 0.0003, abs=1e-6)


@pytest.mark.parametrize("leaves", [2.0, 2.2])
def test_a_face_that_leaves_is_not_labelled_on_reused_boxes(tmp_path, lstm, leaves):
    # A still face (boxes agree, so they are reused) gone for leaves <= t < 4.0, 30 fps.
    import media

    clip = media.make_clip(
        tmp_path / "gap.mp4", 5.0, 30, (320, 240), lambda t: [] if leaves <= t < 4.0 else [(60, 40, 160)]
    )
    assert AnnotateOptions().reuse_boxes > 0  # the default
    out = tmp_path / "frames.parquet"
    fercli.annotate([clip], out, options=AnnotateOptions(per_sample=True), model=lstm)
    df = read_table(out)
    gone = (df.time >= leaves - 1e-9) & (df.time < 4.0)
    assert not df[gone].face.any()
    assert df[~gone].face.all()
    assert df[gone].valence.isna().all()


def test_a_named_file_that_is_no_video_fails_by_name_and_the_batch_goes_on(tmp_path, clips_dir, lstm):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n")
    renamed = tmp_path / "interview.dat"  # a video with a suffix fer does not know
    renamed.write_bytes((clips_dir / "moving.mp4").read_bytes())
    out = tmp_path / "r.parquet"
    result = fercli.annotate([notes, renamed, clips_dir / "odd.avi"], out, model=lstm)
    (failed,) = result.failed
    assert failed.video == "notes.txt" and str(notes) in failed.error and "\n" not in failed.error
    assert set(read_table(out).video) == {"interview.dat", "odd.avi"}


def test_annotate_takes_a_name_or_path_and_defaults_to_the_networks_device(tmp_path, clips_dir, lstm_checkpoint, lstm):
    import inspect

    params = inspect.signature(fercli.annotate).parameters
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in ("model", "device", "options"))
    assert not hasattr(AnnotateOptions(), "model") and not hasattr(AnnotateOptions(), "device")  # one place each
    by_path = tmp_path / "p.parquet"
    fercli.annotate([clips_dir / "odd.avi"], by_path, model=str(lstm_checkpoint))
    by_net = tmp_path / "n.parquet"
    fercli.annotate([clips_dir / "odd.avi"], by_net, model=lstm)
    assert read_metadata(by_path)["model"] == str(lstm_checkpoint) == read_metadata(by_net)["model"]
    pd.testing.assert_frame_equal(read_table(by_path), read_table(by_net))


def test_an_interrupted_overwrite_leaves_the_old_table_whole(tmp_path, clips_dir, lstm):
    # Ctrl-C during --overwrite replaced a complete table with the one video that had finished.
    out = tmp_path / "r.parquet"
    clips = [clips_dir / "moving.mp4", clips_dir / "odd.avi", clips_dir / "two.mkv"]
    fercli.annotate(clips, out, options=AnnotateOptions(workers=0), model=lstm)
    before, clean = out.read_bytes(), read_table(out)
    started = []

    def interrupt(event):
        if event.kind == "start":
            started.append(event.video)
            if len(started) == 2:  # one clip finished, the second begun
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fercli.annotate(clips, out, options=AnnotateOptions(workers=0, overwrite=True), model=lstm, progress=interrupt)
    assert out.read_bytes() == before
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("*.parquet"))) == 1  # the finished video, kept for --resume
    result = fercli.annotate(clips, out, options=AnnotateOptions(workers=0, resume=True), model=lstm)
    assert not result.failed and not parts.exists()
    pd.testing.assert_frame_equal(read_table(out), clean)  # same model and settings: the same rows


def test_a_second_run_on_a_locked_output_stops_before_touching_it(clean, tmp_path, clips_dir, lstm):
    # Two runs on one --out (both --overwrite): one crashed and its cleanup wrote an empty table
    # over the other's. Now the second stops at once, naming the first; the table stays whole.

    from fercli.core.errors import FerError
    from fercli.core.files import OutputLock

    out = tmp_path / "r.parquet"
    shutil.copyfile(clean[0].out, out)  # a complete table from an earlier run
    before = out.read_bytes()
    with OutputLock(out):  # the first run, still writing
        with pytest.raises(FerError, match=f"being written by another fer run \\(process {os.getpid()}"):
            fercli.annotate([clips_dir], out, options=AnnotateOptions(overwrite=True), model=lstm)
    assert out.read_bytes() == before and not (tmp_path / "r.parquet.parts").exists()
    assert not (tmp_path / "r.parquet.lock").exists()  # the first run ended: the output is free again
    OutputLock(out).acquire().release()


@pytest.mark.parametrize("clip, step", [("moving.mp4", 5), ("sub/gap.mkv", 6)])  # 25 and 30 frames/s
def test_rows_per_video_frame_are_the_videos_frames(tmp_path, clips_dir, lstm, clip, step):
    """--per-frame: a row per decoded frame, `frame` its index and `time` its start as PyAV gives
    them; at the frames the 5/s sampler takes (every `step`-th), the same rows as --per-sample."""
    import av

    options = dict(reuse_boxes=0)  # the same detections in both runs
    fercli.annotate(
        [clips_dir / clip], tmp_path / "f.parquet", options=AnnotateOptions(per_frame=True, **options), model=lstm
    )
    fercli.annotate(
        [clips_dir / clip], tmp_path / "s.parquet", options=AnnotateOptions(per_sample=True, **options), model=lstm
    )
    frames, samples = read_table(tmp_path / "f.parquet"), read_table(tmp_path / "s.parquet")
    with av.open(str(clips_dir / clip)) as c:
        starts = [float(f.time) for f in c.decode(video=0)]
    assert frames.frame.tolist() == list(range(len(starts)))
    np.testing.assert_allclose(frames.time, np.array(starts) - starts[0], atol=1e-3)
    assert "sample_index" not in frames and "frame" not in samples
    taken = frames.set_index("frame").loc[samples.sample_index * step].reset_index(drop=True)
    cols = ["face", "valence", "arousal", "people"]
    pd.testing.assert_frame_equal(taken[cols], samples[cols])
    # A window that reaches back over missed faces holds the latest feature before them: the
    # latest sample's per sample, the latest frame's per frame (gap.mkv: 1/30 s apart). Elsewhere
    # the windows hold the same frames, so the same scores.
    missed = ~samples.face.to_numpy(bool)
    held = np.array([missed[max(0, k - lstm.config.window + 1) : k + 1].any() for k in range(len(samples))])
    floats = ["valence_score", "arousal_score"]
    np.testing.assert_allclose(
        taken.loc[~held, floats].to_numpy(float), samples.loc[~held, floats].to_numpy(float), atol=1e-4
    )
    boxes = ["face_x0", "face_y0", "face_x1", "face_y1"]
    np.testing.assert_allclose(taken[boxes].to_numpy(float), samples[boxes].to_numpy(float), atol=1e-4, equal_nan=True)


def test_per_frame_and_per_sample_together_are_refused(tmp_path, clips_dir, lstm):
    with pytest.raises(FerError, match="choose one"):
        fercli.annotate(
            [clips_dir / "moving.mp4"],
            tmp_path / "x.csv",
            options=AnnotateOptions(per_frame=True, per_sample=True),
            model=lstm,
        )
    assert not (tmp_path / "x.csv").exists()


def test_a_registry_model_is_downloaded_by_annotate_with_progress(
    tmp_path, clips_dir, lstm_checkpoint, server, cache, monkeypatch
):
    """The run is prepared in one place: annotate fetches a registered model itself (verified),
    reporting the bytes as "download" events, and `fer annotate NAME` does no more than call it."""
    import hashlib

    from fercli.nets import weights
    from fercli.nets.weights import WeightsEntry

    url, www, requests = server
    data = lstm_checkpoint.read_bytes()
    (www / "lstm.pt").write_bytes(data)
    entry = WeightsEntry(
        "served", "lstm.pt", f"{url}/lstm.pt", hashlib.sha256(data).hexdigest(), "fer-checkpoint", "test"
    )
    monkeypatch.setattr(weights, "registry", lambda: {"served": entry})
    events = []
    fercli.annotate(
        [clips_dir / "moving.mp4"], tmp_path / "a.csv", model="served", device="cpu", progress=events.append
    )
    got = [(e.done, e.total) for e in events if e.kind == "download"]
    assert got and got[-1] == (len(data), len(data)) and all(a[0] <= b[0] for a, b in zip(got, got[1:]))
    assert requests == ["/lstm.pt"] and (cache / "lstm.pt").read_bytes() == data
    from typer.testing import CliRunner

    from fercli.cli import app

    res = CliRunner().invoke(
        app,
        [
            "annotate",
            str(clips_dir / "moving.mp4"),
            "--out",
            str(tmp_path / "b.csv"),
            "--model",
            "served",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv"))
    assert requests == ["/lstm.pt"]  # the verified cached copy, not a second download


def test_the_stage_clock_waits_for_the_models_gpu(monkeypatch):
    # Timing a model on cuda:1 by waiting for the current GPU (cuda:0) would read the clock early.
    from fercli.job.stages import StageClock

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    clock = StageClock(torch.device("cuda", 1))
    with clock.stage("backbone", 4):
        pass
    assert waited == [torch.device("cuda", 1)] * 2 and clock.items["backbone"] == 4
    with StageClock(torch.device("cpu")).stage("backbone", 4):
        pass
    assert len(waited) == 2


def test_resume_keeps_the_errors_of_videos_it_does_not_list(tmp_path, clips_dir, broken_dir, lstm):
    # The errors file is the only record of why a video is missing from the table.
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("empty.mp4", "truncated.mp4"):
        shutil.copy(broken_dir / name, videos / name)
    (videos / "fixed.mp4").write_bytes(b"")  # broken now, replaced by a good clip before the resume
    out = tmp_path / "r.parquet"
    first = fercli.annotate([clips_dir / "odd.avi", *sorted(videos.iterdir())], out, model=lstm)
    assert sorted(pd.read_csv(first.errors_file).video) == ["empty.mp4", "fixed.mp4", "truncated.mp4"]
    before = dict(pd.read_csv(first.errors_file).values)
    shutil.copy(clips_dir / "moving.mp4", videos / "fixed.mp4")
    again = fercli.annotate(
        [clips_dir / "moving.mp4", videos / "fixed.mp4", videos / "truncated.mp4"],
        out,
        model=lstm,
        options=AnnotateOptions(resume=True),
    )
    errors = pd.read_csv(again.errors_file)
    assert sorted(errors.video) == ["empty.mp4", "truncated.mp4"]  # fixed.mp4 now in the table; each once
    assert dict(errors.values)["empty.mp4"] == before["empty.mp4"]
    assert sorted(read_table(out).video.unique()) == ["fixed.mp4", "moving.mp4", "odd.avi"]


def test_clips_whose_names_are_not_utf8_are_kept_with_escapes(tmp_path, clips_dir, lstm):
    # The table stored such a name as it came (a lone surrogate): CSV stopped the batch midway.
    videos = tmp_path / "v"
    videos.mkdir()
    shutil.copy(clips_dir / "odd.avi", videos / os.fsdecode(b"good\xff.avi"))
    (videos / os.fsdecode(b"bad\xfe.mp4")).write_bytes(b"")
    shutil.copy(clips_dir / "odd.avi", videos / "z.avi")
    for out in (tmp_path / "r.csv", tmp_path / "r.parquet"):
        result = fercli.annotate([videos], out, model=lstm)
        assert sorted(read_table(out).video.unique()) == ["good\\xff.avi", "z.avi"]
        errors = pd.read_csv(result.errors_file)
        assert list(errors.video) == ["bad\\xfe.mp4"] and "bad\\xfe.mp4" in errors.error[0]
