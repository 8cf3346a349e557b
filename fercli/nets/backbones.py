"""A training run's starting backbone: which timm network, which weights, and the hash that names them.

`fer train --backbone NAME --init INIT` picks a timm model from `BACKBONES` and its first weights
from `INITS`: HSEmotion's AffectNet network, timm's ImageNet-1k weights (both through the weights
registry, verified) or a seeded random network. The SHA-256 that comes with them keys the feature
cache and is recorded in every checkpoint, so features and runs say which backbone made them.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from ..core.errors import FerError

# --backbone: the paper's Table 2 names -> timm models. efficientnet_b0 is HSEmotion's architecture
# (TF-ported, "same" padding), so its HSEmotion and ImageNet inits share one network.
BACKBONES = {"efficientnet_b0": "tf_efficientnet_b0", "resnet50": "resnet50"}
# --init: HSEmotion's AffectNet net (efficientnet_b0 only), timm's ImageNet-1k, or seeded random.
INITS = ("hsemotion", "imagenet", "random")
# One seed whatever --seed says, so a random backbone's cached features serve every training seed.
RANDOM_BACKBONE_SEED = 0

OnBytes = Callable[[int, int | None], None]  # (bytes done, total or None) of a download


def init_weights_name(init: str, arch: str) -> str | None:
    """The registry entry an --init downloads for the timm model `arch`; None when it needs none."""
    return {"hsemotion": "hsemotion", "imagenet": f"imagenet-{arch}"}.get(init)


def backbone_weights(init: str, config, on_bytes: OnBytes | None = None) -> tuple[dict, str]:
    """(state_dict for the model's backbone, SHA-256 naming those weights) for an --init.

    `config` is the run's `ModelConfig` (its timm `backbone` and crop size); `on_bytes(done,
    total)` follows a download of the weights, if one is needed.
    """
    if init == "imagenet":
        return _imagenet(config.backbone, on_bytes)
    if init == "hsemotion":
        from . import checkpoints, weights

        path = weights.fetch(init_weights_name(init, config.backbone), progress=on_bytes)
        # With its 10-way classifier: EfficientNetLSTM.load_backbone keeps rows 0-7 (expressions).
        return checkpoints.load_timm_pickle(path), weights.sha256(path)
    if init == "random":
        state = random_backbone(config)
        return state, state_sha256(state)
    raise FerError(f"--init must be one of {', '.join(INITS)}, not {init!r}")


def _imagenet(arch: str, on_bytes: OnBytes | None) -> tuple[dict, str]:
    import torch

    from . import weights

    path = weights.fetch(init_weights_name("imagenet", arch), progress=on_bytes)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that passed its hash but is no state dict
        raise FerError(f"{path}: not a timm state dict ({e})") from e
    # ImageNet's 1000-way classifier (`fc.` on ResNet, `classifier.` on EfficientNet) is not used.
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}, weights.sha256(path)


def random_backbone(config) -> dict:
    """A seeded, unpretrained backbone whose features have a usable scale.

    timm's init shrinks activations ~1e5-fold through the network (features around 1e-5), below
    the head's LayerNorm epsilon, which would flatten them. Scaling the last BatchNorm so that
    features of seeded noise have unit spread fixes the scale without looking at any data.
    """
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        net = timm.create_model(config.backbone, pretrained=False, num_classes=0).eval()
        noise = torch.randn(4, 3, config.preprocess.size, config.preprocess.size)
    if hasattr(net, "bn2"):  # EfficientNet's last BatchNorm; ResNet's init keeps features near 0.05
        with torch.no_grad():
            scale = 1.0 / net(noise).std()
            net.bn2.weight.mul_(scale)
            net.bn2.bias.mul_(scale)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def state_sha256(state: dict) -> str:
    """SHA-256 over a state dict's names and tensor bytes, in name order: the weights' identity."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
