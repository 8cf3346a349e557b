"""Train/validation/test splits: by clip and actor (honest), or by window (the paper's, inflated)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.files import read_json_object
from .afew import AfewClip
from .examples import Examples
from .features import ClipSamples

DEFAULT_RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
DEFAULT_SPLIT_SEED = 0
PARTS = ("train", "val", "test")

log = logging.getLogger("fercli")


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
    doc = read_json_object(
        path, "split file not found", "malformed split file", "malformed split file (expected a JSON object)"
    )
    lists = [p for p in PARTS if p in doc]
    if lists and len(lists) != len(PARTS):
        raise DataError(f"{path}: a split file with clip lists needs all of {', '.join(PARTS)}")
    if lists:
        _check_lists(doc, path)
    if "ratios" in doc:
        _check_ratios(doc["ratios"], str(path))
    return doc


def _check_lists(doc: dict, path: Path) -> None:
    """Each part a list of clip names, and no clip in two places: a clip named in train and test
    would be trained on and scored, and the run's record would count it twice."""
    part_of: dict[str, str] = {}
    for part in PARTS:
        names = doc[part]
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
            raise DataError(f"{path}: malformed split file ('{part}' must be a list of clip names)")
        for name in map(str, names):
            if name in part_of:
                where = (
                    f"twice in the {part} list"
                    if part_of[name] == part
                    else f"in both the {part_of[name]} and {part} lists"
                )
                raise DataError(f"{path}: clip {name} is {where}; a clip belongs to one part")
            part_of[name] = part


def split_clips(
    clips: list[AfewClip],
    seed: int = DEFAULT_SPLIT_SEED,
    ratios: dict | None = None,
    lists: dict | None = None,
    source: str = "seeded",
) -> Split:
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
        unused = sorted(ids - {cid for p in PARTS for cid in parts[p]})
        if unused:
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            log.warning(
                "%s: %d clip(s) of the data are in none of its lists and are not used: %s", source, len(unused), shown
            )
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


def split_predefined(clips: list[AfewClip], seed: int = DEFAULT_SPLIT_SEED, ratios: dict | None = None) -> Split:
    """The data set's own split (Aff-Wild2's Train_Set/Validation_Set, `AfewClip.part`), honoured:
    its validation set is the test part (the held-out set ABAW papers report), and fer's
    validation part (early stopping, best.pt) is a seeded share of its training set, whole groups
    (source videos: a two-person video's _left and _right together) at a time. Clips without a
    part join the training set. The share is ratios["val"] / (ratios["train"] + ratios["val"]).
    """
    ratios = _check_ratios(ratios or DEFAULT_RATIOS, "split ratios")
    test = sorted(c.id for c in clips if c.part == "val")
    pool = [c for c in clips if c.part != "val"]
    if not test:
        raise DataError("the data set's own split has no validation videos (Validation_Set) to test on")
    groups = _groups(pool, sorted(c.id for c in pool))
    if len(groups) < 2:
        raise DataError(
            f"the data set's training set has {len(groups)} source video(s); fer needs 2 to keep one for validation"
        )
    target = ratios["val"] / (ratios["train"] + ratios["val"]) * len(pool)
    val = _take_groups(groups, seed, target, spare=1)  # the last group always trains
    train = sorted({c.id for c in pool} - set(val))
    lists = {"train": train, "val": sorted(val), "test": test}
    return split_clips(clips, seed, ratios, lists, source="data set (Train_Set/Validation_Set)")


def split_windows(
    windows: Examples, clips: list[ClipSamples], seed: int = DEFAULT_SPLIT_SEED, ratios: dict | None = None
) -> tuple[Split, dict[str, np.ndarray]]:
    """The paper-like split: overlapping windows shuffled and cut by ratio, clips shared across
    parts. Kept to measure how much it inflates scores; never the default."""
    ratios = _check_ratios(ratios or DEFAULT_RATIOS, "split ratios")
    n = len(windows)
    if n < len(PARTS):
        raise DataError(f"a window split needs at least {len(PARTS)} windows; the data has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(max(1, round(ratios["train"] * n)), n - 2)
    n_val = max(1, min(n - n_train - 1, round(ratios["val"] * n)))
    rows = {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }
    names = windows.names(clips)
    parts = {p: [names[i] for i in r] for p, r in rows.items()}
    return Split("window", seed, ratios, parts), rows


def rows_of_clips(windows: Examples, clips: list[ClipSamples], split: Split) -> dict[str, np.ndarray]:
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
                raise DataError(
                    f"clip {cid}: actor {a!r} is in both {seen[a]} and {p}; splits must be disjoint by actor"
                )


def keep_fraction(split: Split, clips: list[AfewClip], fraction: float, seed: int) -> Split:
    """The split with a seeded share of its training clips, whole actors at a time (the paper
    trained on 50% of AFEW-VA); validation and test unchanged.

    Actors (a clip without one is its own group) are shuffled with `seed` and taken in turn until
    the kept clips reach `fraction` of the training clips; at least one actor is kept.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction must be in (0, 1], not {fraction}")
    if split.kind != "clip":
        raise DataError("--fraction keeps whole actors of a clip split; --split window has none")
    if fraction == 1:
        return split
    groups = _groups(clips, split.parts["train"])
    kept = _take_groups(groups, seed, fraction * len(split.parts["train"]))
    parts = {**split.parts, "train": sorted(kept)}
    return Split(split.kind, split.seed, split.ratios, parts, split.source)


def _groups(clips: list[AfewClip], ids: list[str]) -> dict[str, list[str]]:
    """The clips named in `ids`, in that order, by actor (a clip without one is its own group)."""
    actor = {c.id: c.actor or f"clip {c.id}" for c in clips}
    groups: dict[str, list[str]] = {}
    for cid in ids:
        groups.setdefault(actor[cid], []).append(cid)
    return groups


def _take_groups(groups: dict[str, list[str]], seed: int, target: float, spare: int = 0) -> list[str]:
    """Clip ids of whole groups, shuffled with `seed` and taken in turn until they reach `target`
    clips (at least one group; never the last `spare` of the shuffled order)."""
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    taken: list[str] = []
    for name in order[: len(order) - spare]:
        if taken and len(taken) >= target:
            break
        taken += groups[name]
    return taken
