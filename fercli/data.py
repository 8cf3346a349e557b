"""AFEW-VA for training: labels (checked), face boxes, cached backbone features, windows, splits.

Data flows one way: `read_dataset` (one folder per clip, `<id>/<id>.json`, every label checked)
-> `prepare` (sample frames at the model's rate; find the face with the same MediaPipe detector
and the same square crop as `fer annotate`, falling back to the box of the 68 landmarks; encode
each crop once with the frozen backbone; boxes and features cached on disk) -> `make_windows`
(T samples, a stride, the mean of the frame labels) -> `split_clips` / `split_windows`.

Frames that are missing, unreadable or without a face are skipped (said once per clip). A window
holds T feature slots like `fer annotate`'s windows: a skipped sample repeats the last good
feature before it (windows.fill_window's rule), and its label is left out of the window's mean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError
from .inputs import IMAGE_EXTENSIONS
from .labels import LABEL_MAX, LABEL_MIN, to_class

log = logging.getLogger("fercli")

N_LANDMARKS = 68
CROP_SOURCES = ("detector", "landmarks")  # how boxes are found: MediaPipe + landmark fallback, or landmarks only
LANDMARK_MATCH_IOU = 0.2  # a detection must overlap the landmark box this much to be the labelled face
ENCODE_BATCH = 32  # crops per backbone call
DEFAULT_RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
DEFAULT_SPLIT_SEED = 0
PARTS = ("train", "val", "test")
BOXES_VERSION = 1  # bump when the box rule changes, so cached boxes are recomputed

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


# --- reading and checking the labels -----------------------------------------------------------


@dataclass(frozen=True)
class FrameLabel:
    valence: int  # -10..10
    arousal: int  # -10..10
    landmarks: np.ndarray | None = field(default=None, compare=False)  # (68, 2) x, y pixels


@dataclass
class AfewClip:
    id: str  # folder name, e.g. "001"
    folder: Path
    actor: str | None  # from the JSON; splits keep an actor's clips together
    labels: dict[int, FrameLabel]  # frame index -> labels
    images: dict[int, Path]  # frame index -> image file, for the frames that have one
    json_path: Path

    @property
    def n_frames(self) -> int:
        return max(self.labels) + 1

    def where(self) -> str:
        return f"clip {self.id} ({self.folder})"


def read_dataset(root: str | Path) -> list[AfewClip]:
    """Every clip under an AFEW-VA root, sorted by id. DataError names the first bad clip."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    beside = {p.stem: p for p in root.glob("*.json")}  # also accepted: <root>/<id>.json
    orphans = sorted(set(beside) - set(folders))
    if orphans:
        cid = orphans[0]
        raise DataError(f"clip {cid}: {beside[cid].name} has labels but the frames folder {root / cid} is missing")
    clips = []
    for cid in sorted(folders):
        json_path = folders[cid] / f"{cid}.json"
        if not json_path.is_file():
            json_path = beside.get(cid)
        if json_path is None:
            if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folders[cid].iterdir()):
                raise DataError(f"clip {cid} ({folders[cid]}): no label file {cid}.json")
            continue  # not a clip (e.g. a cache or notes folder)
        clips.append(read_clip(folders[cid], json_path))
    if not clips:
        raise DataError(f"{root}: no AFEW-VA clips (<id>/<id>.json with frames beside it)")
    return clips


def read_clip(folder: str | Path, json_path: str | Path | None = None) -> AfewClip:
    """One clip folder and its labels, every field checked."""
    folder = Path(folder)
    cid = folder.name
    json_path = Path(json_path) if json_path is not None else folder / f"{cid}.json"
    where = f"clip {cid} ({json_path})"
    if not folder.is_dir():
        raise DataError(f"clip {cid}: frames folder {folder} is missing")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{where}: label file missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: malformed JSON ({_first_line(e)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), dict) or not doc["frames"]:
        raise DataError(f"{where}: malformed JSON (no 'frames' object with per-frame labels)")
    video_id = doc.get("video_id")
    if video_id is not None and str(video_id) != cid:
        raise DataError(f"{where}: video_id {video_id!r} does not match the folder name {cid!r}")
    labels = {}
    for key, entry in doc["frames"].items():
        index = _frame_index(key, where)
        if index in labels:
            raise DataError(f"{where}: frame {key} appears twice")
        labels[index] = _frame_label(entry, f"{where}: frame {key}")
    actor = doc.get("actor")
    return AfewClip(cid, folder, str(actor) if actor not in (None, "") else None, labels, _images(folder), json_path)


def _frame_index(key: str, where: str) -> int:
    if not (isinstance(key, str) and key.isdigit()):
        raise DataError(f"{where}: malformed JSON (frame key {key!r} is not a frame number)")
    return int(key)


def _frame_label(entry, where: str) -> FrameLabel:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: malformed JSON (expected an object with valence, arousal, landmarks)")
    values = []
    for dim in ("valence", "arousal"):
        v = entry.get(dim)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
            raise DataError(f"{where}: {dim} {v!r} is not an integer label")
        if not LABEL_MIN <= v <= LABEL_MAX:
            raise DataError(f"{where}: {dim} {int(v)} is outside {LABEL_MIN}..{LABEL_MAX}")
        values.append(int(v))
    return FrameLabel(*values, landmarks=_landmarks(entry.get("landmarks"), where))


def _landmarks(raw, where: str) -> np.ndarray | None:
    if raw is None or (isinstance(raw, list) and not raw):
        return None  # the crop then relies on the detector alone
    try:
        points = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or points.shape != (N_LANDMARKS, 2) or not np.isfinite(points).all():
        raise DataError(f"{where}: malformed JSON (landmarks must be {N_LANDMARKS} [x, y] pairs)")
    return points


def _images(folder: Path) -> dict[int, Path]:
    found = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem.isdigit():
            found.setdefault(int(p.stem), p)
    return found


# --- sampling ----------------------------------------------------------------------------------


def sample_frames(n_frames: int, frames_fps: float, fps: float) -> list[int]:
    """Frame indices of samples k = 0, 1, ...: frame round(k * frames_fps / fps), inside the clip."""
    if not (frames_fps > 0 and fps > 0):
        raise DataError(f"frame rates must be positive (clip {frames_fps}, model {fps})")
    step = frames_fps / fps
    out, k = [], 0
    while (f := math.floor(k * step + 0.5)) < n_frames:
        if not out or f != out[-1]:  # a model faster than the clip would repeat frames
            out.append(f)
        k += 1
    return out


def landmark_box(points: np.ndarray) -> Box | None:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1)) if x1 > x0 and y1 > y0 else None


def choose_box(detections, landmarks: np.ndarray | None) -> tuple[Box, str] | None:
    """The labelled face: the detection that overlaps the landmarks (the largest when there are
    none), else the landmarks' own box. None when there is neither."""
    from .faces import iou

    lm = landmark_box(landmarks) if landmarks is not None else None
    if detections:
        if lm is None:
            return tuple(detections[0].box), "detector"
        best = max(detections, key=lambda d: iou(d.box, lm))
        if iou(best.box, lm) >= LANDMARK_MATCH_IOU:
            return tuple(best.box), "detector"
    if lm is not None:
        return lm, "landmarks"
    return None


# --- per-clip preparation: boxes and features, cached --------------------------------------------


@dataclass
class ClipSamples:
    """One clip at the model's frame rate: which samples are usable, their labels and features."""

    clip: AfewClip
    frames: np.ndarray  # (S,) frame index of each sample
    present: np.ndarray  # (S,) bool: labelled, readable and with a face
    valence: np.ndarray  # (S,) float labels, NaN where not present
    arousal: np.ndarray
    boxes: np.ndarray  # (S, 4) face boxes (NaN where not present)
    sources: list  # (S,) "detector", "landmarks", or why it was skipped
    features: np.ndarray | None = None  # (S, F) float32 backbone features (frozen backbone)

    @property
    def usable(self) -> bool:
        return bool(self.present.any())


@dataclass
class PrepStats:
    """What preparing the data cost; a second run with warm caches detects and encodes nothing."""

    clips: int = 0
    samples: int = 0
    skipped: int = 0  # samples without a usable frame (missing, unreadable, unlabelled, no face)
    detected: int = 0  # frames run through the face detector
    boxes_cached: int = 0  # frame boxes read from the cache
    from_landmarks: int = 0  # usable samples whose box came from the landmarks
    encoded: int = 0  # crops run through the backbone
    features_cached: int = 0  # features read from the cache
    seconds: float = 0.0


class FeatureCache:
    """Face boxes per clip, and backbone features per clip, under one root folder.

    Boxes live under boxes/<crop key>/, features under <feature key>/, crops under crops/<key>/;
    every file name carries the clip's fingerprint (its JSON and its frame files' names, sizes and
    modification times), so a changed clip is recomputed, never read stale.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def boxes_file(self, crop_key: str, clip: AfewClip) -> Path:
        return self.root / "boxes" / crop_key / f"{clip.id}-{fingerprint(clip)}.json"

    def features_file(self, feature_key: str, clip: AfewClip) -> Path:
        return self.root / feature_key / f"{clip.id}-{fingerprint(clip)}.npz"

    def crops_file(self, key: str, clip: AfewClip) -> Path:
        return self.root / "crops" / key / f"{clip.id}-{fingerprint(clip)}.npz"


def default_cache_root() -> Path:
    from .weights import cache_dir

    return cache_dir() / "features"


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(clip: AfewClip) -> str:
    """16 hex digits naming this exact clip content: JSON bytes, image names, sizes, mtimes."""
    stats = tuple((p.name, *_stat(p)) for p in clip.images.values())
    key = (str(clip.folder.resolve()), _stat(clip.json_path), stats)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256(clip.id.encode())
        h.update(clip.json_path.read_bytes())
        for entry in stats:
            h.update(repr(entry).encode())
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def crop_key(crops: str) -> str:
    """Names how boxes were found: the source, the detector's settings and version."""
    from importlib.metadata import PackageNotFoundError, version

    from .faces import FULL_RANGE_MODEL, MIN_CONFIDENCE

    if crops not in CROP_SOURCES:
        raise DataError(f"crops must be one of {', '.join(CROP_SOURCES)}, not {crops!r}")
    if crops == "landmarks":
        return f"landmarks-v{BOXES_VERSION}"
    try:
        mp = version("mediapipe")
    except PackageNotFoundError:  # pragma: no cover - mediapipe is a dependency
        mp = "unknown"
    return f"mediapipe{mp}-conf{MIN_CONFIDENCE}-range{FULL_RANGE_MODEL}-iou{LANDMARK_MATCH_IOU}-v{BOXES_VERSION}"


def feature_key(weights_sha256: str, preprocess, crops_key: str) -> str:
    """Names a feature set: backbone weights, crop size/margin/normalisation, and box source."""
    from dataclasses import asdict

    doc = {"weights": weights_sha256, "preprocess": asdict(preprocess), "crops": crops_key}
    return "features-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def prepare(
    clips: list[AfewClip],
    *,
    fps: float,
    frames_fps: float,
    preprocess,
    crops: str = "detector",
    cache: FeatureCache,
    model=None,
    weights_sha256: str | None = None,
    device="cpu",
    on_clip: Callable[[int, int], None] | None = None,
) -> tuple[list[ClipSamples], PrepStats]:
    """Boxes (and, given a frozen `model`, features) for every sample of every clip.

    Boxes and features come from the cache where it has them; anything computed is added to it.
    Clips without a single usable sample are left out with a warning.
    """
    import time

    start = time.perf_counter()
    stats = PrepStats()
    ckey = crop_key(crops)
    fkey = feature_key(weights_sha256, preprocess, ckey) if model is not None else None
    detector = _LazyDetector() if crops == "detector" else None
    out = []
    try:
        for i, clip in enumerate(clips):
            samples = _prepare_clip(clip, fps, frames_fps, preprocess, cache, ckey, fkey, detector, model, device, stats)
            if samples.usable:
                out.append(samples)
            else:
                log.warning("%s: no usable frame (all missing, unreadable or without a face); clip left out", clip.where())
            if on_clip:
                on_clip(i + 1, len(clips))
    finally:
        if detector is not None:
            detector.close()
    stats.clips = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


class _LazyDetector:
    """MediaPipe is started only when a box is not in the cache."""

    def __init__(self):
        self._det = None

    def detect(self, image):
        if self._det is None:
            from .faces import FaceDetector

            self._det = FaceDetector()
        return self._det.detect(image)

    def close(self):
        if self._det is not None:
            self._det.close()


def _prepare_clip(clip, fps, frames_fps, pre, cache, ckey, fkey, detector, model, device, stats) -> ClipSamples:
    frames = sample_frames(clip.n_frames, frames_fps, fps)
    images: dict[int, np.ndarray] = {}  # decoded frames, kept for this clip's encode step only
    boxes = _clip_boxes(clip, frames, cache, ckey, detector, images, stats)
    s = len(frames)
    present = np.zeros(s, bool)
    val, aro = np.full(s, np.nan), np.full(s, np.nan)
    box_arr, sources = np.full((s, 4), np.nan), []
    for k, f in enumerate(frames):
        entry = boxes.get(f)
        if isinstance(entry, dict):
            present[k] = True
            label = clip.labels[f]
            val[k], aro[k] = label.valence, label.arousal
            box_arr[k] = entry["box"]
            sources.append(entry["source"])
            stats.from_landmarks += entry["source"] == "landmarks"
        else:
            sources.append(entry)
    stats.samples += s
    stats.skipped += int((~present).sum())
    _say_skipped(clip, frames, sources, present)
    samples = ClipSamples(clip, np.asarray(frames, np.int64), present, val, aro, box_arr, sources)
    if model is not None:
        samples.features = _clip_features(samples, cache, fkey, pre, model, device, images, stats)
    return samples


def _say_skipped(clip, frames, sources, present) -> None:
    skipped = [(f, why) for f, why, ok in zip(frames, sources, present) if not ok]
    if skipped:
        shown = ", ".join(f"{f:05d} {why}" for f, why in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d of %d sampled frames (%s)", clip.where(), len(skipped), len(frames), shown)


def _clip_boxes(clip, frames, cache, ckey, detector, images, stats) -> dict[int, dict | str]:
    """frame -> {"box": [...], "source": ...} or the reason it is skipped."""
    path = cache.boxes_file(ckey, clip)
    cached = _read_json(path)
    boxes: dict[int, dict | str] = {int(k): v for k, v in cached.get("frames", {}).items()}
    changed = False
    for f in frames:
        if f in boxes:
            stats.boxes_cached += 1
            continue
        label = clip.labels.get(f)
        if label is None:
            boxes[f] = "unlabelled"  # not cached: cheap to tell again
            continue
        if f not in clip.images:
            boxes[f] = "missing"
            continue
        image = _read_image(clip.images[f])
        if image is None:
            boxes[f] = "unreadable"
        else:
            images[f] = image
            found = detector.detect(image) if detector is not None else []
            stats.detected += detector is not None
            chosen = choose_box(found, label.landmarks)
            boxes[f] = {"box": list(chosen[0]), "source": chosen[1]} if chosen else "no face"
        changed = True
    if changed:
        keep = {str(f): v for f, v in boxes.items() if v not in ("unlabelled", "missing")}
        _write_json(path, {"clip": clip.id, "crops": ckey, "frames": keep})
    return boxes


def _clip_features(samples: ClipSamples, cache, fkey, pre, model, device, images, stats) -> np.ndarray:
    """(S, F) float32 features; rows of skipped samples are zero (never read: see fill_index)."""
    path = cache.features_file(fkey, samples.clip)
    have = _read_npz(path)
    known = dict(zip(have["frames"].tolist(), have["features"])) if have else {}
    need = [int(f) for f, ok in zip(samples.frames, samples.present) if ok and int(f) not in known]
    stats.features_cached += int(samples.present.sum()) - len(need)
    if need:
        boxes = {int(f): b for f, b in zip(samples.frames, samples.boxes)}
        for i in range(0, len(need), ENCODE_BATCH):
            batch = need[i : i + ENCODE_BATCH]
            crops = np.stack([face_crop(samples.clip, f, boxes[f], pre, images) for f in batch])
            feats = encode(model, crops, pre, device)
            known.update(zip(batch, feats))
            stats.encoded += len(batch)
        order = sorted(known)
        _write_npz(path, frames=np.asarray(order, np.int64), features=np.stack([known[f] for f in order]))
    dim = next(iter(known.values())).shape[0] if known else 0
    out = np.zeros((len(samples.frames), dim), np.float32)
    for k, (f, ok) in enumerate(zip(samples.frames, samples.present)):
        if ok:
            out[k] = known[int(f)]
    return out


def face_crop(clip: AfewClip, frame: int, box, pre, images: dict | None = None) -> np.ndarray:
    """The network's input crop of one frame, cut as `fer annotate` cuts it (`pre.cut`)."""

    image = images.pop(frame, None) if images is not None else None
    if image is None:
        image = _read_image(clip.images[frame])
        if image is None:
            raise DataError(f"{clip.where()}: frame {frame:05d} became unreadable")
    return pre.cut(image, tuple(box))


def encode(model, crops: np.ndarray, pre, device) -> np.ndarray:
    """Backbone features of (N, H, W, 3) uint8 crops as float32 (N, F)."""
    import torch

    from .model import to_input

    with torch.inference_mode():
        return model.encode(to_input(crops, pre, device)).float().cpu().numpy()


def clip_crops(samples: ClipSamples, cache: FeatureCache, pre, crops_key: str) -> np.ndarray:
    """(S, size, size, 3) uint8 crops of a clip's samples (zeros where skipped), cached on disk;
    for end-to-end training, where the backbone sees pixels every epoch."""
    key = f"{crops_key}-{pre.size}-{pre.margin}" + ("" if pre.crop == "square" else f"-{pre.crop}")
    path = cache.crops_file(key, samples.clip)
    have = _read_npz(path)
    if have is not None and np.array_equal(have["frames"], samples.frames):
        return have["crops"]
    out = np.zeros((len(samples.frames), pre.size, pre.size, 3), np.uint8)
    for k, (f, ok) in enumerate(zip(samples.frames, samples.present)):
        if ok:
            out[k] = face_crop(samples.clip, int(f), samples.boxes[k], pre)
    _write_npz(path, frames=samples.frames, crops=out)
    return out


def _read_image(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError):  # PIL's errors for missing, truncated or garbled files
        return None


# --- windows -----------------------------------------------------------------------------------


@dataclass
class Windows:
    """Training windows over the concatenated samples of all clips."""

    clip: np.ndarray  # (W,) index into the clips list
    end: np.ndarray  # (W,) sample index (within its clip) of the window's last sample
    index: np.ndarray  # (W, T) global sample index per slot, skipped/padded slots already filled
    valence: np.ndarray  # (W,) mean label of the window's present samples (continuous, for CCC)
    arousal: np.ndarray

    def __len__(self) -> int:
        return len(self.clip)

    def subset(self, rows) -> Windows:
        rows = np.asarray(rows, dtype=np.int64)
        return Windows(self.clip[rows], self.end[rows], self.index[rows], self.valence[rows], self.arousal[rows])

    @property
    def valence_class(self) -> np.ndarray:
        """Class index 0..20 of the rounded mean label (the cross-entropy target)."""
        return to_class(self.valence) - LABEL_MIN

    @property
    def arousal_class(self) -> np.ndarray:
        return to_class(self.arousal) - LABEL_MIN

    def names(self, clips: list[ClipSamples]) -> list[str]:
        return [f"{clips[c].clip.id}:{e}" for c, e in zip(self.clip, self.end)]


def fill_index(present: np.ndarray) -> np.ndarray:
    """For each sample, the sample whose feature it uses: itself when present, else the last
    present one before it, else the first present one after it (windows.fill_window's rule)."""
    idx = np.where(present, np.arange(len(present)), -1)
    idx = np.maximum.accumulate(idx)
    first = int(np.argmax(present)) if present.any() else 0
    return np.where(idx < 0, first, idx)


def make_windows(clips: list[ClipSamples], window: int, stride: int = 1) -> Windows:
    """Windows of `window` samples ending every `stride` samples. A clip shorter than a window
    gives one window, left-padded with its first sample as `fer annotate` pads a clip's start.
    Windows with no present sample are dropped."""
    if window < 1 or stride < 1:
        raise DataError(f"window and stride must be >= 1 (got {window}, {stride})")
    cl, ends, rows, vals, aros = [], [], [], [], []
    offset = 0
    for c, s in enumerate(clips):
        n = len(s.frames)
        fill = fill_index(s.present)
        last = list(range(window - 1, n, stride)) if n >= window else [n - 1]
        for e in last:
            lo = max(0, e - window + 1)
            if not s.present[lo : e + 1].any():
                continue
            slots = np.clip(np.arange(e - window + 1, e + 1), lo, None)
            cl.append(c)
            ends.append(e)
            rows.append(offset + fill[slots])
            vals.append(np.nanmean(s.valence[lo : e + 1]))
            aros.append(np.nanmean(s.arousal[lo : e + 1]))
        offset += n
    return Windows(
        np.asarray(cl, np.int64),
        np.asarray(ends, np.int64),
        np.asarray(rows, np.int64).reshape(-1, window),
        np.asarray(vals, np.float64),
        np.asarray(aros, np.float64),
    )


# --- splits ------------------------------------------------------------------------------------


@dataclass
class Split:
    """Which clips (split "clip") or windows (split "window") are train, val and test."""

    kind: str  # "clip" or "window"
    seed: int
    ratios: dict[str, float]
    parts: dict[str, list[str]]  # part -> clip ids, or window names "<clip>:<end sample>"
    source: str = "seeded"  # "seeded" or the split file the lists came from

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "ratios": self.ratios, "source": self.source, **self.parts}


def read_split_file(path: str | Path) -> dict:
    """A split definition: {"seed", "ratios"} and/or explicit {"train", "val", "test"} clip lists."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: malformed split file ({_first_line(e)})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: malformed split file (expected a JSON object)")
    lists = [p for p in PARTS if p in doc]
    if lists and len(lists) != len(PARTS):
        raise DataError(f"{path}: a split file with clip lists needs all of {', '.join(PARTS)}")
    if "ratios" in doc:
        _check_ratios(doc["ratios"], str(path))
    return doc


def split_clips(clips: list[AfewClip], seed: int = DEFAULT_SPLIT_SEED, ratios: dict | None = None,
                lists: dict | None = None, source: str = "seeded") -> Split:
    """Train/val/test disjoint by clip and by actor (clips naming the same actor stay together).

    Groups (actors, or lone clips) are shuffled with `seed` and each goes to the part furthest
    below its share of clips, so parts come out near their ratios whatever the group sizes.
    `lists` (from a split file) fixes the parts instead; every clip named must exist.
    """
    ratios = _check_ratios(ratios or DEFAULT_RATIOS, "split ratios")
    ids = {c.id for c in clips}
    if lists is not None:
        parts = {p: [str(c) for c in lists[p]] for p in PARTS}
        for p in PARTS:
            for cid in parts[p]:
                if cid not in ids:
                    raise DataError(f"clip {cid}: named in the split's {p} list but missing from the data")
        _check_actor_overlap(clips, parts)
        return Split("clip", seed, ratios, parts, source)
    groups: dict[str, list[str]] = {}
    for c in sorted(clips, key=lambda c: c.id):
        groups.setdefault(f"actor:{c.actor}" if c.actor else f"clip:{c.id}", []).append(c.id)
    if len(groups) < len(PARTS):
        raise DataError(f"a clip split needs at least {len(PARTS)} actors or clips; the data has {len(groups)}")
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    target = {p: ratios[p] * len(clips) for p in PARTS}
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for i, g in enumerate(order):
        empty = [p for p in PARTS if not parts[p]]
        if len(order) - i <= len(empty):  # keep every part non-empty
            part = empty[0]
        else:
            part = max(PARTS, key=lambda p: target[p] - len(parts[p]))
        parts[part] += groups[g]
    return Split("clip", seed, ratios, {p: sorted(v) for p, v in parts.items()}, source)


def split_windows(windows: Windows, clips: list[ClipSamples], seed: int = DEFAULT_SPLIT_SEED,
                  ratios: dict | None = None) -> tuple[Split, dict[str, np.ndarray]]:
    """The paper-like split: overlapping windows shuffled and cut by ratio, clips shared across
    parts. Kept to measure how much it inflates scores; never the default."""
    ratios = _check_ratios(ratios or DEFAULT_RATIOS, "split ratios")
    n = len(windows)
    if n < len(PARTS):
        raise DataError(f"a window split needs at least {len(PARTS)} windows; the data has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(max(1, round(ratios["train"] * n)), n - 2)
    n_val = max(1, min(n - n_train - 1, round(ratios["val"] * n)))
    rows = {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train : n_train + n_val]),
            "test": np.sort(order[n_train + n_val :])}
    names = windows.names(clips)
    parts = {p: [names[i] for i in r] for p, r in rows.items()}
    return Split("window", seed, ratios, parts), rows


def rows_of_clips(windows: Windows, clips: list[ClipSamples], split: Split) -> dict[str, np.ndarray]:
    """Window rows per part for a clip split."""
    part_of = {cid: p for p in PARTS for cid in split.parts[p]}
    clip_part = np.array([part_of.get(s.clip.id, "") for s in clips])
    return {p: np.flatnonzero(clip_part[windows.clip] == p) for p in PARTS}


def _check_ratios(ratios, what: str) -> dict[str, float]:
    if not isinstance(ratios, dict) or set(ratios) != set(PARTS):
        raise DataError(f"{what}: ratios need exactly {', '.join(PARTS)}")
    r = {p: float(ratios[p]) for p in PARTS}
    if any(v <= 0 for v in r.values()) or abs(sum(r.values()) - 1) > 1e-6:
        raise DataError(f"{what}: ratios must be positive and sum to 1 (got {r})")
    return r


def _check_actor_overlap(clips: list[AfewClip], parts: dict[str, list[str]]) -> None:
    actor = {c.id: c.actor for c in clips}
    seen: dict[str, str] = {}
    for p in PARTS:
        for cid in parts[p]:
            a = actor.get(cid)
            if a and seen.setdefault(a, p) != p:
                raise DataError(f"clip {cid}: actor {a!r} is in both {seen[a]} and {p}; splits must be disjoint by actor")


# --- small file helpers --------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):  # absent or damaged cache entry: recompute
        return {}


def _write_json(path: Path, doc: dict) -> None:
    from .files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc), encoding="utf-8"))


def _read_npz(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError):  # absent or damaged cache entry: recompute
        return None


def _write_npz(path: Path, **arrays) -> None:
    from .files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append .npz to the name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
