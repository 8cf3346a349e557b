import numpy as np
import torch

from fercli.core.labels import (
    LABEL_MAX,
    LABEL_MIN,
    NUM_CLASSES,
    decode_logits,
    logits_spread,
    to_class,
)


def test_to_class_rounds_half_away_from_zero_and_clips():
    assert to_class([-0.5, 0.5, 1.5, -1.5, 2.49, -2.51, 11, -12.7]).tolist() == [-1, 1, 2, -2, 2, -3, 10, -10]
    assert int(to_class(3.5)) == 4 and int(to_class(-3.5)) == -4


def test_decode_logits_against_a_numpy_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, NUM_CLASSES))
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    labels, scores, confs = decode_logits(torch.tensor(logits, dtype=torch.float32))
    values = np.arange(LABEL_MIN, LABEL_MAX + 1)
    assert labels.tolist() == (p.argmax(1) + LABEL_MIN).tolist()
    np.testing.assert_allclose(scores.numpy(), p @ values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(confs.numpy(), p.max(1), rtol=1e-5)


def test_logits_spread_is_the_distributions_sd_in_labels():
    logits = torch.stack([torch.zeros(NUM_CLASSES), torch.full((NUM_CLASSES,), -50.0), torch.randn(NUM_CLASSES) * 3])
    logits[1, 4] = 50.0  # all on one class
    values = np.arange(LABEL_MIN, LABEL_MAX + 1)
    p = torch.softmax(logits.double(), dim=-1).numpy()
    want = np.sqrt((p * (values - (p * values).sum(axis=1, keepdims=True)) ** 2).sum(axis=1))
    got = logits_spread(logits).numpy()
    assert want[0] == np.sqrt((NUM_CLASSES**2 - 1) / 12)  # uniform over 21 labels
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[1] < 1e-5
