"""A training run's first backbone (`fercli.nets.backbones`): its seeded random weights and their hash.

The downloads (HSEmotion, ImageNet) are tested through `initial_model` in test_loop.py.
"""

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fercli.core.errors import FerError
from fercli.nets.backbones import backbone_weights, random_backbone, state_sha256

SMALL = SimpleNamespace(backbone="tf_efficientnet_b0", preprocess=SimpleNamespace(size=32))


def test_state_sha256_is_the_hash_of_names_and_bytes_in_name_order():
    state = {"b.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "a.bias": torch.tensor([1.5, -2.0])}
    by_hand = hashlib.sha256()
    for name, values in (("a.bias", np.array([1.5, -2.0], np.float32)), ("b.weight", np.arange(6, dtype=np.float32))):
        by_hand.update(name.encode())
        by_hand.update(values.tobytes())
    assert state_sha256(state) == by_hand.hexdigest()
    assert state_sha256(dict(reversed(state.items()))) == by_hand.hexdigest()  # insertion order is no part of it
    changed = {**state, "a.bias": torch.tensor([1.5, -2.5])}
    assert state_sha256(changed) != by_hand.hexdigest()


def test_random_backbone_is_the_same_whatever_the_callers_seed_and_leaves_its_rng_alone():
    torch.manual_seed(1)
    first = random_backbone(SMALL)
    after = torch.rand(1)
    torch.manual_seed(2)
    second = random_backbone(SMALL)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream went on as if it had not run


def test_random_backbone_features_have_unit_scale():
    import timm

    net = timm.create_model(SMALL.backbone, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        plain = net(torch.randn(8, 3, 32, 32)).std().item()
        net.load_state_dict(random_backbone(SMALL))
        scaled = net(torch.randn(8, 3, 32, 32)).std().item()
    assert plain < 1e-3  # timm's init: far below the head's LayerNorm epsilon once squared
    assert 0.3 < scaled < 3


def test_random_init_is_named_by_its_hash_and_an_unknown_init_is_refused():
    state, sha = backbone_weights("random", SMALL)
    assert sha == state_sha256(state)
    with pytest.raises(FerError, match="--init must be one of hsemotion, imagenet, random, not 'scratch'"):
        backbone_weights("scratch", SMALL)
