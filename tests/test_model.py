import pytest
import torch

from fercli.errors import WeightsError
from fercli.model import (
    HSEMOTION_CONFIG,
    EfficientNetLSTM,
    HSEmotionNet,
    ModelConfig,
    Preprocess,
    load_model,
    read_checkpoint,
    save_checkpoint,
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


def test_hsemotion_scores_clip_to_unit_range_times_ten():
    out = torch.zeros(3, 10)
    out[:, 8] = torch.tensor([0.25, 3.0, -7.0])
    out[:, 9] = torch.tensor([-0.5, 0.0, 1.0])
    torch.testing.assert_close(HSEmotionNet.frame_scores(out), torch.tensor([[2.5, -5.0], [10.0, 0.0], [-10.0, 10.0]]))


def test_to_input_normalises_with_imagenet_stats():
    crops = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = to_input(crops.numpy(), Preprocess())
    expected = (crops.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
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
