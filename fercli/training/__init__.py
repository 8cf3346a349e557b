"""`fer train` and scoring a trained model on its own test part.

The top layer of the library: may import every other folder but `media`. `train` and
`TrainOptions` (from `loop` and `options`) load on first use, so `fercli.training.train(TrainOptions(...))`,
the path train/README.md documents, works without importing torch with the package.
"""

from __future__ import annotations

import importlib

_LAZY = {"train": "loop", "TrainOptions": "options"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
