"""Training data prepared once and cached on disk: each clip sampled at the model's rate, its face
found (the same BlazeFace detector and crop as `fer annotate`, falling back to the box of the 68
landmarks) and encoded with the frozen backbone.

Frames that are missing, unreadable or without a face are skipped (said once per clip); a
skipped sample repeats the last good feature before it (`rows.fill_index`, annotation's rule).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import DataError
from .afew import AfewClip

log = logging.getLogger("fercli")

CROP_SOURCES = ("detector", "landmarks")  # how boxes are found: BlazeFace + landmark fallback, or landmarks only
ALIGNED = "aligned"  # the box source of a clip whose frames are aligned face crops (AfewClip.aligned)
LANDMARK_MATCH_IOU = 0.2  # a detection must overlap the landmark box this much to be the labelled face
ENCODE_BATCH = 32  # crops per backbone call
BOXES_VERSION = 1  # bump when the box rule changes, so cached boxes are recomputed

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def sample_frames(n_frames: int, frames_fps: float, fps: float) -> list[int]:
    """Frame indices of a clip's samples at the model's rate: the frames `fer annotate --frames-fps`
    would read from the same folder (`decode.sample_sources`), each frame once."""
    from ..media.decode import sample_sources

    if not (frames_fps > 0 and fps > 0):
        raise DataError(f"frame rates must be positive (clip {frames_fps}, model {fps})")
    sources = sample_sources(np.arange(n_frames) / frames_fps, n_frames / frames_fps, fps)
    return [int(f) for f in np.unique(sources)]  # a model faster than the clip would repeat frames


def landmark_box(points: np.ndarray) -> Box | None:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1)) if x1 > x0 and y1 > y0 else None


def choose_box(detections, landmarks: np.ndarray | None) -> tuple[Box, str] | None:
    """The labelled face: the detection that overlaps the landmarks (the largest when there are
    none), else the landmarks' own box. None when there is neither."""
    from ..media.faces import iou

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


def labelled_clips(root: str | Path) -> list[AfewClip]:
    """The training clips of a data root in either layout: Aff-Wild2 (`affwild.training_clips`,
    recognised by its annotation files) or AFEW-VA (`afew.read_dataset`)."""
    from . import affwild
    from .afew import read_dataset

    return affwild.training_clips(root) if affwild.is_affwild(root) else read_dataset(root)


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
    from ..nets.weights import cache_dir

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
    from ..media.blazeface import detector_id

    if crops not in CROP_SOURCES:
        raise DataError(f"crops must be one of {', '.join(CROP_SOURCES)}, not {crops!r}")
    if crops == "landmarks":
        return f"landmarks-v{BOXES_VERSION}"
    return f"{detector_id()}-iou{LANDMARK_MATCH_IOU}-v{BOXES_VERSION}"


def clip_crop_key(clip: AfewClip, crops_key: str) -> str:
    """The crop key a clip's boxes come under: aligned-crop clips need no detector, whatever --crops says."""
    return f"{ALIGNED}-v{BOXES_VERSION}" if clip.aligned else crops_key


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
    detector = _LazyDetector() if crops == "detector" else None
    boxes_key = crop_key(crops)  # once, not per clip
    out = []
    try:
        for i, clip in enumerate(clips):
            ckey = clip_crop_key(clip, boxes_key)
            fkey = feature_key(weights_sha256, preprocess, ckey) if model is not None else None
            samples = _prepare_clip(
                clip, fps, frames_fps, preprocess, cache, ckey, fkey, detector, model, device, stats
            )
            if samples.usable:
                out.append(samples)
            else:
                log.warning(
                    "%s: no usable frame (all missing, unreadable or without a face); clip left out", clip.where()
                )
            if on_clip:
                on_clip(i + 1, len(clips))
    finally:
        if detector is not None:
            detector.close()
    stats.clips = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


class _LazyDetector:
    """The detector is started only when a box is not in the cache."""

    def __init__(self):
        self._det = None

    def detect(self, image):
        if self._det is None:
            from ..media.faces import FaceDetector

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
        elif clip.aligned:  # the crop is the face: its whole image is the box
            images[f] = image
            boxes[f] = {"box": [0.0, 0.0, float(image.shape[1]), float(image.shape[0])], "source": ALIGNED}
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
    """(S, F) float32 features; rows of skipped samples are zero (never read: see rows.fill_index)."""
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
    """The network's input crop of one frame, cut as `fer annotate` cuts it (`pre.cut`); an aligned
    clip's frame is the crop already, resized whole."""

    image = images.pop(frame, None) if images is not None else None
    if image is None:
        image = _read_image(clip.images[frame])
        if image is None:
            raise DataError(f"{clip.where()}: frame {frame:05d} became unreadable")
    return pre.cut(image, None if clip.aligned else tuple(box))


def encode(model, crops: np.ndarray, pre, device) -> np.ndarray:
    """Backbone features of (N, H, W, 3) uint8 crops as float32 (N, F)."""
    import torch

    from ..nets.model import to_input

    with torch.inference_mode():
        return model.encode(to_input(crops, pre, device)).float().cpu().numpy()


def clip_crops(samples: ClipSamples, cache: FeatureCache, pre, crops_key: str) -> np.ndarray:
    """(S, size, size, 3) uint8 crops of a clip's samples (zeros where skipped), cached on disk;
    for end-to-end training, where the backbone sees pixels every epoch."""
    key = f"{clip_crop_key(samples.clip, crops_key)}-{pre.size}-{pre.margin}" + (
        "" if pre.crop == "square" else f"-{pre.crop}"
    )
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


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):  # absent or damaged cache entry: recompute
        return {}


def _write_json(path: Path, doc: dict) -> None:
    from ..core.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc), encoding="utf-8"))


def _read_npz(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError):  # absent or damaged cache entry: recompute
        return None


def _write_npz(path: Path, **arrays) -> None:
    from ..core.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append .npz to the name
            np.savez(f, **arrays)

    atomic_write(path, write)
