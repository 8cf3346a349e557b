import numpy as np
import torch

from fercli.core.labels import (
    LABEL_MAX,
    LABEL_MIN,
    NUM_CLASSES,
    decode_logits,
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
