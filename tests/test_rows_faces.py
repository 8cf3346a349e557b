"""The rows' face and expression columns, against where the faces were pasted and hand recomputations."""

from __future__ import annotations

import av
import media
import numpy as np
import pytest
import torch
from conftest import BIG

import fercli
from fercli.job.contract import AnnotateOptions
from fercli.tables.writers import read_table

EXPRESSIONS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
BOX = ["face_x0", "face_y0", "face_x1", "face_y1"]
PASTE_TOLERANCE = 20  # px: BlazeFace's box against the hand-marked face (brow to chin, cheek to cheek)
SAMPLE_FPS = 5  # both test models sample at 5 frames/s


def pyav_samples(path, seconds: float, fps: float) -> list[np.ndarray]:
    """Frames at k / SAMPLE_FPS, decoded by PyAV (the clips here have a constant rate)."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    step = round(fps / SAMPLE_FPS)
    return frames[: round(seconds * fps) : step]


def hand_detections(frames):
    from fercli.media.faces import FaceDetector

    with FaceDetector() as det:
        return [det.detect(f)[0] for f in frames]


@pytest.fixture(scope="module")
def hsemotion_net(tmp_path_factory):
    """An HSEmotion-form network whose expression logits are spread out, so they differ by crop."""
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import HSEMOTION_CONFIG, HSEmotionNet

    torch.manual_seed(4)
    net = HSEmotionNet(HSEMOTION_CONFIG).eval()
    with torch.no_grad():
        net.backbone.classifier.weight[:8] *= 30
    path = save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "hse.pt")
    return net, fercli.load_model(path, "cpu")


@pytest.fixture(scope="module")
def hse_frames(tmp_path_factory, clips_dir, hsemotion_net):
    _, model = hsemotion_net
    out = tmp_path_factory.mktemp("rows") / "frames.parquet"
    options = AnnotateOptions(per_sample=True, reuse_boxes=0)
    fercli.annotate([clips_dir / "big_only.mkv"], out, model=model, options=options)
    return read_table(out)


def test_face_box_is_where_the_face_was_pasted_and_what_the_detector_says(tmp_path, clips_dir, lstm_checkpoint):
    out = tmp_path / "s.parquet"
    options = AnnotateOptions(reuse_boxes=0)
    fercli.annotate([clips_dir / "big_only.mkv"], out, model=fercli.load_model(lstm_checkpoint, "cpu"), options=options)
    df = read_table(out)
    assert len(df) == 3 and df.face.all()
    np.testing.assert_allclose(df[BOX].to_numpy(float), [media.face_box(BIG)] * 3, atol=PASTE_TOLERANCE)
    # exactly the mean of the detector's boxes on PyAV's frames, second by second
    dets = hand_detections(pyav_samples(clips_dir / "big_only.mkv", 3.0, 25))
    boxes = np.array([d.box for d in dets]).reshape(3, 5, 4).mean(axis=1)
    scores = np.array([d.score for d in dets]).reshape(3, 5).mean(axis=1)
    np.testing.assert_allclose(df[BOX].to_numpy(float), boxes, atol=0.01)
    np.testing.assert_allclose(df.face_score.to_numpy(float), scores, atol=1e-4)
    assert (df.face_share == 1.0).all()
    assert not set(EXPRESSIONS + ["expression"]) & set(df.columns)  # an LSTM without the head


def test_a_moving_face_is_followed_and_a_faceless_second_has_no_box(tmp_path, clips_dir, lstm_checkpoint):
    from conftest import gap_faces

    out = tmp_path / "g.parquet"
    fercli.annotate([clips_dir / "sub" / "gap.mkv"], out, model=fercli.load_model(lstm_checkpoint, "cpu"))
    df = read_table(out)
    assert df.face.tolist() == [True, True, False, False, True]
    for s in (0, 1, 4):  # the portrait moves 20 px/s: compare with its mean place in the second
        want = np.mean([media.face_box(gap_faces(s + k / 5)[0]) for k in range(5)], axis=0)
        np.testing.assert_allclose(df.loc[df.second == s, BOX].to_numpy(float)[0], want, atol=PASTE_TOLERANCE)
    faceless = df[~df.face]
    assert faceless[BOX + ["face_score"]].isna().all().all() and (faceless.face_share == 0).all()


def test_face_share_counts_the_samples_that_found_the_face(tmp_path, lstm_checkpoint):
    # present for t < 0.4 (samples 0 and 0.2 of second 0's five), gone until 1.0, then steady
    clip = media.make_clip(
        tmp_path / "leaves.mp4", 2.0, 25, (320, 240), lambda t: [] if 0.4 <= t < 1.0 else [(60, 40, 160)]
    )
    out = tmp_path / "r.parquet"
    model = fercli.load_model(lstm_checkpoint, "cpu")
    fercli.annotate([clip], out, model=model)
    df = read_table(out)
    assert df.face.tolist() == [True, True]
    assert df.face_share.tolist() == pytest.approx([2 / 5, 1.0])
    # the second's box is the mean of the two samples that found it, not diluted by the misses
    dets = hand_detections(pyav_samples(clip, 0.4, 25))
    np.testing.assert_allclose(df[BOX].to_numpy(float)[0], np.mean([d.box for d in dets], axis=0), atol=0.01)
    out_f = tmp_path / "f.parquet"
    fercli.annotate([clip], out_f, model=model, options=AnnotateOptions(per_sample=True))
    frames = read_table(out_f)
    assert frames.face_share.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] + [1.0] * 5
    assert frames[~frames.face][BOX].isna().all().all()


def test_per_frame_rows_carry_their_samples_box_and_score(hse_frames, clips_dir):
    df = hse_frames
    dets = hand_detections(pyav_samples(clips_dir / "big_only.mkv", 3.0, 25))
    np.testing.assert_allclose(df[BOX].to_numpy(float), [d.box for d in dets], atol=0.01)
    np.testing.assert_allclose(df.face_score.to_numpy(float), [d.score for d in dets], atol=1e-4)
    assert (df.face_share == 1.0).all()
    assert df.face_x0.nunique() > 1  # the detector's own box each sample, not one copied along


def hand_expressions(net, clips_dir) -> np.ndarray:
    """Softmax of the network's outputs 0-7 on HSEmotion's tight crops of PyAV's frames (numpy)."""
    from PIL import Image
    from torchvision import transforms

    frames = pyav_samples(clips_dir / "big_only.mkv", 3.0, 25)
    boxes = [[round(v) for v in d.box] for d in hand_detections(frames)]
    hsemotion = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    x = torch.stack([hsemotion(Image.fromarray(f[y0:y1, x0:x1])) for f, (x0, y0, x1, y1) in zip(frames, boxes)])
    with torch.inference_mode():
        logits = net.backbone(x)[:, :8].double().numpy()
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_expression_probabilities_are_the_softmax_of_outputs_0_to_7(hse_frames, hsemotion_net, clips_dir, tmp_path):
    net, model = hsemotion_net
    want = hand_expressions(net, clips_dir)
    got = hse_frames[EXPRESSIONS].to_numpy(float)
    np.testing.assert_allclose(got, want, atol=0.02)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert hse_frames.expression.tolist() == [EXPRESSIONS[i] for i in got.argmax(axis=1)]
    assert len(set(hse_frames.expression)) > 1 or got.max() < 0.99  # the probabilities vary by crop
    # per second: the mean over the second's samples, still summing to 1, argmax named
    out = tmp_path / "s.parquet"
    fercli.annotate([clips_dir / "big_only.mkv"], out, model=model, options=AnnotateOptions(reuse_boxes=0))
    sec = read_table(out)
    np.testing.assert_allclose(sec[EXPRESSIONS].to_numpy(float), want.reshape(3, 5, 8).mean(axis=1), atol=0.02)
    np.testing.assert_allclose(sec[EXPRESSIONS].sum(axis=1), 1.0, atol=1e-5)
    assert sec.expression.tolist() == [EXPRESSIONS[i] for i in sec[EXPRESSIONS].to_numpy().argmax(axis=1)]


def test_an_lstm_with_the_expression_head_gives_them_too(tmp_path, clips_dir, hsemotion_net):
    """HSEmotion's classifier rows 0-7 kept on an LSTM's backbone: the same probabilities as HSEmotion's."""
    from fercli.nets.checkpoints import save_checkpoint
    from fercli.nets.model import EfficientNetLSTM, ModelConfig, Preprocess

    net, _ = hsemotion_net
    config = ModelConfig(window=5, hidden=16, expressions=True, preprocess=Preprocess(crop="box", margin=0.0))
    lstm = EfficientNetLSTM(config)
    lstm.load_backbone(net.backbone.state_dict())
    model = fercli.load_model(save_checkpoint(lstm.eval(), tmp_path / "lstm_expr.pt"), "cpu")
    out = tmp_path / "f.parquet"
    fercli.annotate(
        [clips_dir / "big_only.mkv"], out, model=model, options=AnnotateOptions(per_sample=True, reuse_boxes=0)
    )
    df = read_table(out)
    np.testing.assert_allclose(df[EXPRESSIONS].to_numpy(float), hand_expressions(net, clips_dir), atol=0.02)
