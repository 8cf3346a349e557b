"""fer: per-second facial valence and arousal for folders of video clips.

    import fercli
    model = fercli.load_model("hsemotion")            # or a checkpoint from `fer train`
    result = fercli.annotate(["videos/"], "results.parquet", model=model)

Heavy modules (torch, PyAV, LiteRT) load on first use, so importing fercli is cheap.
"""

from __future__ import annotations

import importlib


__version__ = "0.1.0"


_LAZY = {
    "annotate": "fercli.pipeline",
    "AnnotateOptions": "fercli.options",
    "AnnotateResult": "fercli.options",
    "VideoResult": "fercli.options",
    "ProgressEvent": "fercli.options",
    "FerError": "fercli.errors",
    "load_model": "fercli.model",
    "ModelConfig": "fercli.model",
    "Preprocess": "fercli.model",
    "EfficientNetLSTM": "fercli.model",
    "HSEmotionNet": "fercli.model",
    "build_model": "fercli.model",
    "save_checkpoint": "fercli.checkpoints",
    "read_table": "fercli.writers",
    "read_metadata": "fercli.writers",
    "train": "fercli.training",
    "TrainOptions": "fercli.training",
    "evaluate": "fercli.evaluate",
    "find_clips": "fercli.inputs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")
