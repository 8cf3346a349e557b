"""`fer benchmark accuracy --data`: a model scored directly on a part of an AFEW-VA data set.

Two levels, both scored by `metrics.score`, so every metric means what it means elsewhere:

- Window level, what the paper reports and what `fer train` validates on: every window of T
  samples in the part (stride 1), built from the cached backbone features by `examples.training_windows`
  exactly as in training. Truth: the mean of the window's frame labels. Prediction of a window
  model: the heads' argmax class (the labels) and the expected value under the softmax (the
  scores). A frame model (arch "hsemotion") has no head: its window prediction is the mean of
  the frame scores of the window's face samples, over windows of the default T (5) so it is
  scored on the very windows an LSTM is; its class is that mean rounded.
- Per second, what users get: the real `fer annotate` on the part's clip folders, read as image
  sequences at `frames_fps`, against `truth.load_truth` of the same clips.

Which part: the split the checkpoint was trained with. `best.pt` records the split's kind and
seed but not its ratios, a split file's lists, nor the stride, so the run folder's `split.json`
beside the checkpoint is read first (the exact clip or window lists the run used); without one
the split is re-derived from the recorded seed and the default ratios (said in a warning). "all"
needs no split: the whole data set, also one the model never saw. A checkpoint without training
metadata (HSEmotion, a hand-made one) has no parts: only "all".

A window split shares clips between parts, so "per second" is honest only over the seconds
whose own window (the T samples `fer annotate` labels the second from) is in the part; the
other seconds of those clips were trained on, and are left out (and counted).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError, WeightsError
from ..core.labels import to_class
from ..datasets import examples, features, splits
from ..datasets.truth import load_truth
from ..job.stages import HEAD_BATCH
from ..scoring import metrics
from ..tables.rows import SECOND_KEYS
from .options import SPLITS

log = logging.getLogger("fercli")

PARTS = ("test", "val", "train", "all")
FRAME_MODEL_WINDOW = 5  # T for frame models' windows: the window model's default, the paper's


@dataclass
class SplitInfo:
    """Which part of the data was scored, and where that part came from."""

    kind: str  # "clip", "window", or "none" (no training metadata: the whole data set)
    seed: int | None  # the split's seed (None for "none")
    part: str  # the part scored: test, val, train or all
    source: str  # the split.json read, or how the split was re-derived
    clips: dict[str, int]  # part -> clips in it (window split: clips holding any of its windows)
    windows: dict[str, int]  # part -> windows in it, on the data as read now
    scored_clips: list[str]  # ids of the clips the per-second level annotated
    seconds_scope: str  # which seconds the per-second level scores
    seconds_left_out: int = 0  # seconds of the scored clips outside the part (window split)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Evaluation:
    """The outcome of `evaluate()`: both levels, and what was scored."""

    windows: metrics.Report  # window level (see the module doc)
    seconds: metrics.Report  # per second, from `fer annotate`
    split: SplitInfo
    model: str  # what was asked for (path or registry name)
    arch: str  # "efficientnet_lstm" or "hsemotion"
    window_prediction: str  # how a window's prediction was made
    frames_fps: float  # frame rate the clip folders were read at
    failed: dict[str, str] = field(default_factory=dict)  # clip -> error, from the annotate run
    window_table: pd.DataFrame | None = field(default=None, repr=False)  # video, window (last sample), truth, pred
    second_truth: pd.DataFrame | None = field(default=None, repr=False)  # the per-second truth that was scored
    second_pred: pd.DataFrame | None = field(default=None, repr=False)  # the annotate rows that were scored

    def to_dict(self) -> dict:
        """evaluation.json: the setup and the split, beside the two metric reports."""
        return {
            "model": self.model,
            "arch": self.arch,
            "window_prediction": self.window_prediction,
            "frames_fps": self.frames_fps,
            "split": self.split.to_dict(),
            "failed": dict(self.failed),
        }


@dataclass
class EvaluateEvent:
    stage: str  # "prepare" (clips done/total) or "annotate" (clips done/total)
    done: int = 0
    total: int = 0


def evaluate(
    data: str | Path,
    model_path: str | Path,
    *,
    split: str = "test",
    frames_fps: float | None = None,
    device: str = "auto",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    progress: Callable[[EvaluateEvent], None] | None = None,
) -> Evaluation:
    """Score `model_path` on part `split` of the AFEW-VA data at `data`, per window and per second.

    `frames_fps` is the frame rate of the clip folders; None takes the training run's (its
    config.json or checkpoint), else 25. Features come from the same cache as `fer train`
    (`cache_dir`, default the fer cache), keyed by the backbone's weights, so each frame is
    encoded once. Raises FerError for a part the checkpoint cannot name.
    """
    from ..core.devices import resolve_device
    from ..nets.model import load_model

    emit = progress or (lambda event: None)
    if split not in PARTS:
        raise FerError(f"--split must be one of {', '.join(PARTS)}, not {split!r}")
    root = Path(data)
    run = _training_record(model_path)
    if run.meta is None and split != "all":
        raise FerError(
            f"{model_path}: no training metadata (not a best.pt from `fer train`), so its {split} part "
            "is unknown; use --split all"
        )
    frames_fps = _frames_fps(frames_fps, run)
    dev = resolve_device(device)
    clips = features.labelled_clips(root)
    model = load_model(model_path, dev)
    cfg = model.config
    samples, _ = features.prepare(
        clips,
        fps=cfg.fps,
        frames_fps=frames_fps,
        preprocess=cfg.preprocess,
        crops=run.crops,
        cache=features.FeatureCache(cache_dir or features.default_cache_root()),
        model=model,
        weights_sha256=_feature_weights_key(model, run),
        device=dev,
        on_clip=lambda i, n: emit(EvaluateEvent("prepare", i, n)),
    )
    if not samples:
        raise DataError(f"{root}: no clip has a usable frame")
    window = cfg.window if cfg.is_window_model else FRAME_MODEL_WINDOW
    windows = examples.training_windows(samples, window)  # stride 1: every window, a superset of any run's
    part = _part(run, split, clips, samples, windows, cfg)

    table = _window_table(model, samples, windows.subset(part.rows), window, dev)
    window_report = _score_windows(table)
    truth, pred, failed, left_out = _seconds(root, clips, part, model, frames_fps, device, batch_size, emit)
    second_report = metrics.score(truth, pred)

    info = SplitInfo(
        kind=part.kind,
        seed=part.seed,
        part=split,
        source=part.source,
        clips=part.clip_counts,
        windows=part.window_counts,
        scored_clips=list(part.clips),
        seconds_scope=part.scope,
        seconds_left_out=left_out,
    )
    how = (
        "argmax of each head (labels), expected value under its softmax (scores)"
        if cfg.is_window_model
        else f"mean of the frame scores over the window's face samples (T = {window}), rounded for labels"
    )
    return Evaluation(
        window_report, second_report, info, str(model_path), cfg.arch, how, frames_fps, failed, table, truth, pred
    )


# --- what the checkpoint says about its training ---------------------------------------------------


@dataclass
class _Run:
    path: Path | None  # the checkpoint file (None: a registry name)
    meta: dict | None  # best.pt's "training", None when it has none
    config: dict | None  # the run folder's config.json, when beside the checkpoint
    crops: str = "detector"


def write_evaluation(ev, out: str | Path) -> list[Path]:
    """Write an evaluation's files under `out`: window/ and second/ (metrics.json, metrics.md and
    pictures, as `fer benchmark accuracy` writes them) and evaluation.json; returns the paths."""
    from ..core.files import atomic_write
    from ..views.plots import write_scores

    out = Path(out)
    written = []
    for level, report in (("window", ev.windows), ("second", ev.seconds)):
        written += write_scores(report, out / level)
    text = json.dumps(ev.to_dict(), indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "evaluation.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return written + [out / "evaluation.json"]


def _training_record(model_path) -> _Run:
    from ..nets.checkpoints import read_checkpoint

    path = Path(model_path)
    if not path.is_file():  # a registry name, e.g. "hsemotion" (load_model says if it is neither)
        return _Run(None, None, None)
    try:
        meta = read_checkpoint(path).get("training")
    except WeightsError:  # a whole-pickled timm model: HSEmotion's own file
        meta = None
    if meta is not None and not isinstance(meta, dict):
        raise FerError(f"{path}: malformed training metadata")
    config = _read_json(path.parent / "config.json") if meta is not None else None
    options = (config or {}).get("options", {})
    crops = options.get("crops") or (meta or {}).get("crops") or "detector"
    return _Run(path, meta, config, crops)


def _frames_fps(given: float | None, run: _Run) -> float:
    recorded = (run.config or {}).get("options", {}).get("frames_fps") or (run.meta or {}).get("frames_fps")
    if given is None:
        return float(recorded) if recorded else 25.0
    if not given > 0:
        raise FerError(f"frames fps must be positive, not {given}")
    if recorded and not math.isclose(given, recorded):
        log.warning("--frames-fps %g differs from the %g the model was trained with", given, recorded)
    return float(given)


def _feature_weights_key(model, run: _Run) -> str:
    """What names the cached features: the training's key when the backbone stayed frozen (so
    the run's own cache is reused), else a hash of the encoder's weights as they are now."""
    from ..nets.backbones import state_sha256

    meta = run.meta or {}
    if model.config.is_window_model and meta.get("backbone_sha256") and not meta.get("finetune", False):
        return meta["backbone_sha256"]
    # Frame models' encoders include their 10-way head, so their key never meets a backbone's.
    return state_sha256(model.backbone.state_dict())


# --- the part ------------------------------------------------------------------------------------


@dataclass
class _Part:
    kind: str
    seed: int | None
    source: str
    rows: np.ndarray  # rows of the stride-1 windows in the part
    clips: list[str]  # clip ids to annotate
    seconds: pd.MultiIndex | None  # (video, second) keys to score, None: all seconds of `clips`
    scope: str
    clip_counts: dict[str, int]
    window_counts: dict[str, int]


def _part(run: _Run, name: str, clips, samples, windows, cfg) -> _Part:
    if name == "all":  # no split needed: any data set, also one the model never saw
        meta = run.meta or {}
        source = "the whole data set" + ("" if run.meta else " (no training metadata)")
        return _Part(
            meta.get("split", "none"),
            meta.get("split_seed"),
            source,
            np.arange(len(windows)),
            [c.id for c in clips],
            None,
            "every second of every clip",
            {"all": len(clips)},
            {"all": len(windows)},
        )
    split = _run_split(run, clips, samples, cfg.window)
    if split.kind == "clip":
        return _clip_part(split, name, clips, samples, windows)
    return _window_part(split, name, clips, samples, windows, cfg.fps)


def _run_split(run: _Run, clips, samples, window: int) -> splits.Split:
    """The split the checkpoint was trained with: its run's split.json, else re-derived."""
    meta, path = run.meta, run.path
    kind, seed = meta.get("split"), meta.get("split_seed")
    if kind not in SPLITS or not isinstance(seed, int):
        raise FerError(f"{path}: training metadata names no split (kind {kind!r}, seed {seed!r})")
    file = path.parent / "split.json"
    if file.is_file():
        doc = _read_json(file)
        if doc is None or any(not isinstance(doc.get(p), list) for p in splits.PARTS):
            raise FerError(f"{file}: malformed split file (needs lists {', '.join(splits.PARTS)})")
        if (doc.get("kind"), doc.get("seed")) != (kind, seed):
            raise FerError(
                f"{file}: a {doc.get('kind')} split with seed {doc.get('seed')}, but {path.name} was trained "
                f"on a {kind} split with seed {seed}; is it the checkpoint's own run folder?"
            )
        parts = {p: [str(x) for x in doc[p]] for p in splits.PARTS}
        return splits.Split(kind, seed, doc.get("ratios") or splits.DEFAULT_RATIOS, parts, str(file))
    # Not recorded in best.pt: a split file's ratios or lists, and the stride. Defaults assumed.
    ratios = meta.get("split_ratios") or splits.DEFAULT_RATIOS
    source = f"re-derived from {path.name}'s training metadata (seed {seed}, ratios {ratios})"
    log.warning(
        "%s: no split.json beside it; the split is %s, which is the run's only if it used no split file", path, source
    )
    if kind == "clip":
        return splits.split_clips(clips, seed, ratios, source=source)
    trained = examples.training_windows(samples, window, int(meta.get("stride", 1)))
    split, _ = splits.split_windows(trained, samples, seed, ratios)
    split.source = source
    return split


def _clip_part(split: splits.Split, name: str, clips, samples, windows) -> _Part:
    ids = {c.id for c in clips}
    for p in splits.PARTS:
        missing = [c for c in split.parts[p] if c not in ids]
        if missing:
            raise DataError(f"clip {missing[0]}: in the run's {p} part ({split.source}) but not in the data")
    rows = splits.rows_of_clips(windows, samples, split)
    return _Part(
        "clip",
        split.seed,
        split.source,
        rows[name],
        list(split.parts[name]),
        None,
        f"every second of the {name} clips",
        {p: len(split.parts[p]) for p in splits.PARTS},
        {p: int(len(r)) for p, r in rows.items()},
    )


def _window_part(split: splits.Split, name: str, clips, samples, windows, fps: float) -> _Part:
    index = {n: i for i, n in enumerate(windows.names(samples))}
    rows = {}
    for p in splits.PARTS:
        missing = [n for n in split.parts[p] if n not in index]
        if missing:
            raise DataError(
                f"window {missing[0]}: in the run's {p} part ({split.source}) but not among the data's windows "
                f"({len(missing)} missing); were the data or --frames-fps changed since training?"
            )
        rows[p] = np.sort(np.asarray([index[n] for n in split.parts[p]], np.int64))
    clip_ids = {p: sorted({n.rsplit(":", 1)[0] for n in split.parts[p]}) for p in splits.PARTS}
    seconds = _seconds_of_windows(set(split.parts[name]), samples, fps)
    scope = (
        f"the seconds whose own window (the T samples ending with the second's last sample) is a {name} "
        f"window, in the {len(clip_ids[name])} clips holding {name} windows"
    )
    return _Part(
        "window",
        split.seed,
        split.source,
        rows[name],
        clip_ids[name],
        seconds,
        scope,
        {p: len(v) for p, v in clip_ids.items()},
        {p: int(len(r)) for p, r in rows.items()},
    )


def _seconds_of_windows(names: set[str], samples, fps: float) -> pd.MultiIndex:
    """(video, second) of every second whose own window, in `fer annotate`'s rule (the window
    ends with the second's last sample, sample k at k / fps), is one of `names`."""
    from ..tables.rows import second_of

    keys = []
    for s in samples:
        last: dict[int, int] = {}
        for k in range(len(s.frames)):
            last[second_of(k / fps)] = k
        keys += [(s.clip.id, sec) for sec, k in last.items() if f"{s.clip.id}:{k}" in names]
    return pd.MultiIndex.from_tuples(keys, names=list(SECOND_KEYS))


def _keys(df: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([df["video"].astype(str), df["second"].astype(np.int64)])


# --- window level --------------------------------------------------------------------------------


def _window_table(model, samples, windows: examples.Examples, window: int, device) -> pd.DataFrame:
    """One row per window: video, window (its last sample), truth, predicted labels and scores."""
    if model.config.is_window_model:
        v_lab, a_lab, v_score, a_score = _head_predictions(model, samples, windows, device)
    else:
        v_score, a_score = _frame_means(model, samples, windows, window)
        v_lab, a_lab = to_class(v_score), to_class(a_score)
    return pd.DataFrame(
        {
            "video": [samples[c].clip.id for c in windows.clip],
            "window": windows.end,
            "valence": windows.valence,
            "arousal": windows.arousal,
            "pred_valence": v_lab,
            "pred_arousal": a_lab,
            "valence_score": v_score,
            "arousal_score": a_score,
        }
    )


def _score_windows(table: pd.DataFrame) -> metrics.Report:
    truth = table[["video", "window", *metrics.DIMENSIONS]]
    pred = table.drop(columns=list(metrics.DIMENSIONS)).rename(columns={f"pred_{d}": d for d in metrics.DIMENSIONS})
    return metrics.score(truth, pred, on=("video", "window"))


def _head_predictions(model, samples, windows: examples.Examples, device):
    import torch

    from ..core.labels import decode_logits

    feats = torch.from_numpy(np.concatenate([s.features for s in samples])).to(device)
    out = {(dim, kind): [] for kind in ("label", "score") for dim in metrics.DIMENSIONS}
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(windows), HEAD_BATCH):
            idx = torch.from_numpy(windows.index[i : i + HEAD_BATCH]).to(device)
            for dim, logits in zip(metrics.DIMENSIONS, model.head(feats[idx])):
                labels, scores, _ = decode_logits(logits)  # as annotation and training decode them
                out[dim, "label"].append(labels.cpu())
                out[dim, "score"].append(scores.cpu())
    cat = {key: torch.cat(v).numpy() if v else np.zeros(0) for key, v in out.items()}
    labels = [cat[dim, "label"].astype(np.int64) for dim in metrics.DIMENSIONS]
    scores = [cat[dim, "score"].astype(float) for dim in metrics.DIMENSIONS]
    return (*labels, *scores)


def _frame_means(model, samples, windows: examples.Examples, window: int):
    """Mean frame scores over each window's own face samples (no padding, no filled slots)."""
    import torch

    with torch.inference_mode():
        scores = model.frame_scores(torch.from_numpy(np.concatenate([s.features for s in samples]))).double().numpy()
    present = np.concatenate([s.present for s in samples])
    offsets = np.cumsum([0] + [len(s.frames) for s in samples])[:-1]
    pos = windows.end[:, None] - window + 1 + np.arange(window)[None, :]  # samples within the clip
    inside = pos >= 0
    flat = offsets[windows.clip][:, None] + np.clip(pos, 0, None)
    use = inside & present[flat]
    n = use.sum(axis=1)  # >= 1: training_windows drops windows without a present sample
    means = [(scores[flat, d] * use).sum(axis=1) / n for d in range(2)]
    return means[0], means[1]


# --- per second ----------------------------------------------------------------------------------


@dataclass
class ClipSeconds:
    """`fer annotate` on some labelled clips, beside their truth per second."""

    truth: pd.DataFrame  # video, second, valence, arousal (`truth.load_truth`)
    pred: pd.DataFrame  # the annotate table's rows
    metadata: dict | None  # the annotate table's metadata (`writers.read_metadata`): the model it ran
    failed: dict[str, str]  # clip -> error


def clip_seconds(root, clips, ids, model, frames_fps, device="auto", batch_size=16, emit=None) -> ClipSeconds:
    """`fer annotate` with `model` on the clips of `clips` named in `ids` (their folders, read at
    `frames_fps`), and the truth per second of those clips from the labelled data at `root`."""
    wanted = set(ids)
    folders = [c.folder for c in clips if c.id in wanted]
    pred, metadata, failed = _annotate(folders, model, frames_fps, device, batch_size, emit or (lambda event: None))
    truth = load_truth(root, frames_fps)
    return ClipSeconds(truth[truth["video"].isin(wanted)], pred, metadata, failed)


def calibrate_clips(
    root, clips, ids, model_path, coverage: float, frames_fps: float, device="auto", what="clips", emit=None
):
    """A calibration of the checkpoint at `model_path` (`scoring.calibration.calibrate`, `fer
    calibrate`'s) from its `fer annotate` seconds on the labelled clips `ids`; FerError when they
    are too few for `coverage` (checked before any annotation) or match no prediction. `emit`
    takes an EvaluateEvent per clip annotated."""
    from .. import __version__
    from ..scoring.calibration import calibrate, min_clips

    if len(ids) < min_clips(coverage):
        raise FerError(
            f"{len(ids)} {what} cannot give {coverage:g} coverage: at least {min_clips(coverage)} are needed"
        )
    if emit is not None:
        emit(EvaluateEvent("annotate", 0, len(ids)))
    # The checkpoint's path, as `fer annotate --model` runs it (engine and device its defaults).
    seconds = clip_seconds(root, clips, ids, str(model_path), frames_fps, device, emit=emit)
    if seconds.metadata is None:
        raise FerError(f"none of the {what} could be annotated ({'; '.join(seconds.failed.values())})")
    source = {"truth": str(root), "pred": f"fer annotate of {len(ids)} {what}", "fer_version": __version__}
    return calibrate(seconds.truth, seconds.pred, seconds.metadata, coverage, source)


def _seconds(root, clips, part, model, frames_fps, device, batch_size, emit):
    """`fer annotate` on the part's clip folders, and the truth of the seconds to score."""
    got = clip_seconds(root, clips, part.clips, model, frames_fps, device, batch_size, emit)
    truth, pred, left_out = got.truth, got.pred, 0
    if part.seconds is not None:  # window split: only the seconds whose own window is in the part
        inside = _keys(truth).isin(part.seconds)
        left_out = int((~inside).sum())
        truth, pred = truth[inside], pred[_keys(pred).isin(part.seconds)]
    return truth.reset_index(drop=True), pred.reset_index(drop=True), got.failed, left_out


def _annotate(folders, model, frames_fps, device, batch_size, emit) -> tuple[pd.DataFrame, dict | None, dict[str, str]]:
    from ..job.contract import AnnotateOptions
    from ..job.pipeline import annotate
    from ..tables.writers import read_metadata, read_table

    total, done = len(folders), 0

    def on_event(event):
        nonlocal done
        if event.kind == "done":
            done += 1
            emit(EvaluateEvent("annotate", done, total))

    options = AnnotateOptions(batch_size=batch_size, frames_fps=frames_fps)
    with tempfile.TemporaryDirectory(prefix="fer-evaluate-") as tmp:
        out = Path(tmp) / "seconds.parquet"
        result = annotate(folders, out, model=model, device=device, options=options, progress=on_event)
        table, metadata = (read_table(out), read_metadata(out)) if out.exists() else (_empty_pred(), None)
    failed = {v.video: v.error for v in result.failed}
    for video, error in failed.items():
        log.warning("%s: not annotated (%s); its seconds count as truth only", video, error)
    return table, metadata, failed


def _empty_pred() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "video": pd.Series([], dtype=str),
            "second": pd.Series([], dtype=np.int64),
            "valence": pd.Series([], dtype="Int64"),
            "arousal": pd.Series([], dtype="Int64"),
            "valence_score": pd.Series([], dtype=float),
            "arousal_score": pd.Series([], dtype=float),
        }
    )


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FerError(f"{path}: unreadable ({e})") from None
    return doc if isinstance(doc, dict) else None
