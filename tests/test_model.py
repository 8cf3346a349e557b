import numpy as np
import pytest
import torch

from fercli.core.errors import WeightsError
from fercli.nets.checkpoints import read_checkpoint, save_checkpoint
from fercli.nets.model import (
    HSEMOTION_CONFIG,
    EfficientNetLSTM,
    HSEmotionNet,
    ModelConfig,
    Preprocess,
    load_model,
    to_input,
)

SMALL = 64  # px; EfficientNet runs on any size, small keeps CPU tests fast


@pytest.fixture(scope="module")
def lstm():
    torch.manual_seed(0)
    return EfficientNetLSTM(ModelConfig(window=4, hidden=32)).eval()


def test_forward_shapes_and_no_nans(lstm):
    clips = torch.randn(2, 4, 3, SMALL, SMALL)
    v, a = lstm(clips)
    assert v.shape == (2, 21) and a.shape == (2, 21)
    assert torch.isfinite(v).all() and torch.isfinite(a).all()


def test_shared_features_path_equals_end_to_end(lstm):
    clips = torch.randn(2, 4, 3, SMALL, SMALL)
    with torch.inference_mode():
        v, a = lstm(clips)
        feats = lstm.encode(clips.flatten(0, 1)).view(2, 4, -1)
        v2, a2 = lstm.head(feats)
    assert feats.shape[-1] == 1280
    torch.testing.assert_close(v, v2)
    torch.testing.assert_close(a, a2)


def test_backward_reaches_backbone_and_heads():
    torch.manual_seed(0)
    net = EfficientNetLSTM(ModelConfig(window=2, hidden=8))
    v, a = net(torch.randn(2, 2, 3, SMALL, SMALL))
    (v.sum() + a.sum()).backward()
    assert net.backbone.conv_stem.weight.grad.abs().sum() > 0
    assert net.temporal.weight_ih_l0.grad.abs().sum() > 0


def test_mean_temporal_head_ignores_order():
    torch.manual_seed(0)
    net = EfficientNetLSTM(ModelConfig(window=3, temporal="mean")).eval()
    feats = torch.randn(1, 3, 1280)
    torch.testing.assert_close(net.head(feats)[0], net.head(feats.flip(1))[0])


def test_checkpoint_round_trip_is_exact(lstm, tmp_path):
    path = save_checkpoint(lstm, tmp_path / "m.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["config"]["window"] == 4 and ckpt["config"]["preprocess"]["size"] == 224
    loaded = load_model(path)
    assert loaded.config == lstm.config
    clips = torch.randn(1, 4, 3, SMALL, SMALL)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(clips), lstm(clips))  # channels-last reorders sums
    assert len(loaded.weights_sha256) == 64


def test_config_dict_round_trip():
    cfg = ModelConfig(fps=3.0, window=7, preprocess=Preprocess(size=112, margin=0.3))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_hsemotion_scores_are_raw_outputs_times_ten():
    # Trained with a CCC loss and no tanh: outputs may leave [-1, 1] and are not clipped per frame.
    out = torch.zeros(3, 10)
    out[:, 8] = torch.tensor([0.25, 1.3, -1.7])
    out[:, 9] = torch.tensor([-0.5, 0.0, 1.0])
    torch.testing.assert_close(HSEmotionNet.frame_scores(out), torch.tensor([[2.5, -5.0], [13.0, 0.0], [-17.0, 10.0]]))


def test_hsemotion_preprocessing_is_its_authors():
    pre = HSEMOTION_CONFIG.preprocess
    assert (pre.crop, pre.margin, pre.size) == ("box", 0.0, 224)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert Preprocess().crop == "square"  # fer's own checkpoints keep the square crop
    # A checkpoint written before the crop field existed reads as the square crop it used.
    old = {k: v for k, v in ModelConfig().to_dict()["preprocess"].items() if k != "crop"}
    assert ModelConfig.from_dict({**ModelConfig().to_dict(), "preprocess": old}).preprocess.crop == "square"


def test_hsemotion_input_matches_torchvision_transforms_on_the_tight_box():
    """HSEmotion's own code: PIL image of frame[y0:y1, x0:x1], Resize((224, 224)), ToTensor, Normalize."""
    import media
    from PIL import Image
    from torchvision import transforms

    frame = media.scene(640, 360, [(200, 60, 200)])
    box = (251.0, 101.0, 333.0, 197.0)  # 82 x 96: not square, so a square crop would differ
    reference = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(Image.fromarray(frame[101:197, 251:333]))
    pre = HSEMOTION_CONFIG.preprocess
    x = to_input(np.stack([pre.cut(frame, box)]), pre)[0]
    # Same PIL resize; the only difference is uint8 rounding of the resized pixels (<= 0.5/255 / std).
    torch.testing.assert_close(x, reference, atol=0.5 / 255 / 0.225 + 1e-6, rtol=0)
    square = to_input(np.stack([Preprocess(margin=0.0).cut(frame, box)]), pre)[0]
    assert (square - reference).abs().mean() > 0.1


@pytest.mark.parametrize("pre", [Preprocess(size=112, margin=0.3), HSEMOTION_CONFIG.preprocess], ids=["square", "box"])
def test_cut_batch_is_cut_on_a_torch_device(pre):
    import media

    frames = np.stack([media.scene(320, 240, [(100, 40, 150)], seed=s) for s in (0, 1)])
    boxes = [(120.4, 60.2, 210.9, 170.5), (-20.0, 150.0, 60.0, 260.0), (0.0, 0.0, 320.0, 240.0)]
    got = pre.cut_batch(torch.from_numpy(frames), [0, 1, 1], boxes).numpy()
    for crop, i, box in zip(got, [0, 1, 1], boxes):
        np.testing.assert_array_equal(crop, pre.cut(frames[i], box))


def test_to_input_normalises_with_imagenet_stats():
    crops = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = to_input(crops.numpy(), Preprocess())
    expected = (
        crops.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("content", [b"", b"hello, not a model", b"PK\x03\x04garbage"])
def test_wrong_weights_file_is_a_clear_error(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(WeightsError, match="bad.pt"):
        load_model(bad)


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    net = HSEmotionNet(HSEMOTION_CONFIG)
    path = save_checkpoint(net, tmp_path / "h.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["arch"] = "efficientnet_lstm"
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match="wrong.pt"):
        load_model(tmp_path / "wrong.pt")


def test_unknown_model_name_lists_registered_ones():
    with pytest.raises(WeightsError, match="hsemotion"):
        load_model("no-such-model")


def test_temporal_none_averages_the_frames_predicted_distributions():
    """--temporal none: each frame through the heads on its own, the window's distribution their mean."""
    torch.manual_seed(3)
    net = EfficientNetLSTM(ModelConfig(temporal="none", hidden=0)).eval()
    feats = torch.randn(2, 5, net.backbone.num_features)
    with torch.no_grad():
        v, a = net.head(feats)
        x = net.norm(feats)
        frame_v = torch.softmax(net.valence_head(x), -1)  # (2, 5, 21), by hand
        frame_a = torch.softmax(net.arousal_head(x), -1)
    torch.testing.assert_close(v.softmax(-1), frame_v.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.softmax(-1), frame_a.mean(1), rtol=1e-5, atol=1e-6)
    # Order-free, like the mean head: a window played backwards gets the same prediction.
    torch.testing.assert_close(net.head(feats.flip(1))[0], v)


def test_old_configs_load_without_an_expression_head():
    old = ModelConfig(window=4, hidden=32).to_dict()
    del old["expressions"]  # as checkpoints saved before the field hold it
    net = EfficientNetLSTM(ModelConfig.from_dict(old))
    assert not net.has_expressions and not any(k.startswith("expression_head") for k in net.state_dict())


def test_lstm_expression_head_is_hsemotions_classifier_rows_0_to_7():
    torch.manual_seed(5)
    hse = HSEmotionNet(HSEMOTION_CONFIG).eval()
    lstm = EfficientNetLSTM(ModelConfig(window=2, hidden=8, expressions=True)).eval()
    lstm.load_backbone(hse.backbone.state_dict())
    x = torch.randn(3, 3, SMALL, SMALL)
    with torch.inference_mode():
        want = hse.expression_logits(hse.encode(x))
        got = lstm.expression_logits(lstm.encode(x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want.shape == (3, 8) and HSEmotionNet.has_expressions
    with pytest.raises(ValueError, match="classifier"):  # asked for, but no classifier to take
        lstm.load_backbone({k: v for k, v in hse.backbone.state_dict().items() if not k.startswith("classifier")})
    plain = EfficientNetLSTM(ModelConfig(window=2, hidden=8))
    plain.load_backbone(hse.backbone.state_dict())  # without the head, the classifier is dropped
    with pytest.raises(ValueError, match="no expression head"):
        plain.expression_logits(torch.zeros(1, 1280))


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda c: c.update(fps=float("nan")), "fps must be a number"),
        (lambda c: c.update(fps=1e6), "fps must be a number from 0.001 to 120.0"),
        (lambda c: c.update(window=10**9), "window must be an integer"),
        (lambda c: c["preprocess"].update(size=20000), "preprocess size must be an integer from 16 to 1024"),
        (lambda c: c["preprocess"].update(std=[0.0, 0.2, 0.2]), "preprocess std"),
        (lambda c: c["preprocess"].update(mean=[0.5, 0.5]), "3 values"),
        (lambda c: c.update(hidden="many"), "hidden must be an integer"),
    ],
)
def test_a_config_out_of_range_is_refused_before_it_sizes_anything(lstm_checkpoint, tmp_path, edit, words):
    # A config is data from a file: nan or huge values were exit 3, or gigabytes, or hours.
    from fercli.core.errors import WeightsError
    from fercli.nets.checkpoints import read_checkpoint, write_checkpoint
    from fercli.nets.model import load_model

    ckpt = read_checkpoint(lstm_checkpoint)
    config = {**ckpt["config"], "preprocess": dict(ckpt["config"]["preprocess"])}
    edit(config)
    bad = tmp_path / "bad.pt"
    write_checkpoint({"config": config, "state_dict": ckpt["state_dict"]}, bad)
    with pytest.raises(WeightsError, match=rf"{bad}: checkpoint does not match its config \(.*{words}") as error:
        load_model(bad, "cpu")
    assert "\n" not in str(error.value)
