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
    "annotate": "fercli.job.pipeline",
    "AnnotateOptions": "fercli.job.contract",
    "AnnotateResult": "fercli.job.contract",
    "VideoResult": "fercli.job.contract",
    "ProgressEvent": "fercli.job.contract",
    "FerError": "fercli.core.errors",
    "load_model": "fercli.nets.model",
    "ModelConfig": "fercli.nets.model",
    "Preprocess": "fercli.nets.model",
    "EfficientNetLSTM": "fercli.nets.model",
    "HSEmotionNet": "fercli.nets.model",
    "build_model": "fercli.nets.model",
    "save_checkpoint": "fercli.nets.checkpoints",
    "read_table": "fercli.tables.writers",
    "read_metadata": "fercli.tables.writers",
    "train": "fercli.training.loop",
    "TrainOptions": "fercli.training.options",
    "evaluate": "fercli.training.evaluate",
    "find_clips": "fercli.media.inputs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")
