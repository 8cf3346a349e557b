"""The AFEW-VA label scale and the one way every stage turns model outputs into labels and scores.

Annotation (`tables.rows`), training (`training.loop`), scoring (`evaluate`, `metrics`) and the data
reader all use these, so a label means the same everywhere: integers -10..10, class index =
label + LABEL_OFFSET; a 21-class distribution's label is its most probable class, its score the
expected label and its confidence the chosen class's probability, its spread the distribution's
standard deviation in labels; a real-valued score becomes a label by rounding half away from zero
and clipping.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

DIMENSIONS = ("valence", "arousal")  # the two scales, in the order every table and report gives them

LABEL_MIN, LABEL_MAX = -10, 10  # the AFEW-VA scale
NUM_CLASSES = LABEL_MAX - LABEL_MIN + 1  # 21
LABEL_OFFSET = -LABEL_MIN  # class index = label + LABEL_OFFSET
# The eight AffectNet expressions in the order of HSEmotion's outputs 0-7 (its authors' class
# list: Anger, Contempt, Disgust, Fear, Happiness, Neutral, Sadness, Surprise); also the names
# of the tables' probability columns.
EXPRESSIONS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def to_class(values) -> np.ndarray:
    """Labels -10..10 from real scores: round half away from zero (so +-0.5 are symmetric), then clip."""
    v = np.asarray(values, dtype=float)
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), LABEL_MIN, LABEL_MAX).astype(np.int64)


def check_on_scale(values, what: str) -> None:
    """DataError (`what`: the file and column) for the first value outside LABEL_MIN..LABEL_MAX."""
    v = np.asarray(values, dtype=float)
    bad = (v < LABEL_MIN) | (v > LABEL_MAX)
    if bad.any():
        raise DataError(f"{what}: value {v[bad][0]:g} outside {LABEL_MIN}..{LABEL_MAX}")


def decode_logits(logits):
    """(N, 21) logits -> (labels, scores, confidences), each an (N,) tensor on the logits' device.

    labels: the argmax class as a label (int64); scores: the expected label under the softmax
    (float32); confidences: the chosen class's probability (float32).
    """
    import torch

    probs = logits.float().softmax(dim=-1)
    values = torch.arange(NUM_CLASSES, dtype=torch.float32, device=probs.device) - LABEL_OFFSET
    conf, cls = probs.max(dim=-1)
    return cls - LABEL_OFFSET, probs @ values, conf


def logits_spread(logits):
    """(N, 21) logits -> (N,) standard deviation, in labels, of the softmax distribution over the
    21 labels (float32, on the logits' device): 0 when one class holds it all, about 6 when uniform."""
    import torch

    probs = logits.float().softmax(dim=-1)
    values = torch.arange(NUM_CLASSES, dtype=torch.float32, device=probs.device) - LABEL_OFFSET
    mean = probs @ values
    return (probs * (values - mean[:, None]) ** 2).sum(dim=-1).sqrt()
