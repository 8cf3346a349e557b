"""`fer benchmark compare`: training runs side by side, as the paper's Table 2 sets them out.

Everything comes from what a run folder records about itself (config.json, test.json,
summary.csv): nothing is recomputed, so the table says what each run measured on its own test part.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import DataError, first_line
from ..core.files import atomic_write, read_json_object

COLUMNS = [  # (key, header, format)
    ("backbone", "backbone", "{}"),
    ("init", "init", "{}"),
    ("temporal", "temporal", "{}"),
    ("split", "split", "{}"),
    ("fraction", "fraction", "{:g}"),
    ("ccc_valence", "CCC V", "{:.3f}"),
    ("ccc_arousal", "CCC A", "{:.3f}"),
    ("ccc_mean", "CCC mean", "{:.3f}"),
    ("acc_valence", "acc V", "{:.3f}"),
    ("acc_arousal", "acc A", "{:.3f}"),
    ("f1_valence", "F1 V", "{:.3f}"),
    ("f1_arousal", "F1 A", "{:.3f}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("epochs", "epochs (best)", "{}"),
    ("lr", "lr", "{:g}"),
    ("batch_size", "batch", "{}"),
    ("device", "device", "{}"),
]


@dataclass
class RunRow:
    """One run's line of the table (test-part figures of its best checkpoint)."""

    name: str  # the run folder's name
    backbone: str  # timm model
    init: str  # where the backbone's weights came from
    temporal: str
    split: str
    fraction: float
    ccc_valence: float | None
    ccc_arousal: float | None
    ccc_mean: float | None
    acc_valence: float | None
    acc_arousal: float | None
    f1_valence: float | None  # None for runs made before F1 was recorded
    f1_arousal: float | None
    train_seconds: float  # sum of the epochs' seconds
    epochs: str  # "ran (best)"
    lr: float
    batch_size: int
    device: str


def read_run(folder: str | Path) -> RunRow:
    """The table row of a finished `fer train` run folder; DataError (one line) naming the file
    that is missing or holds something other than what `fer train` writes."""
    folder = Path(folder)
    config_path, test_path = folder / "config.json", folder / "test.json"
    config, test = _json(config_path), _json(test_path)
    opts, model = _object(config, "options", config_path), _object(config, "model", config_path)
    seconds = _epoch_seconds(folder / "summary.csv")
    ccc = [_number(test, "ccc_valence", test_path), _number(test, "ccc_arousal", test_path)]
    lr, batch = _number(opts, "lr", config_path), _number(opts, "batch_size", config_path)
    return RunRow(
        name=folder.name,
        backbone=str(model.get("backbone", "?")),
        init=str(opts.get("init", opts.get("backbone", "?"))),
        temporal=str(opts.get("temporal", model.get("temporal", "?"))),
        split=str(opts.get("split", "?")),
        fraction=_number(opts, "fraction", config_path, default=1.0),
        ccc_valence=ccc[0],
        ccc_arousal=ccc[1],
        ccc_mean=(ccc[0] + ccc[1]) / 2 if None not in ccc else None,
        acc_valence=_number(test, "acc_valence", test_path),
        acc_arousal=_number(test, "acc_arousal", test_path),
        f1_valence=_number(test, "f1_valence", test_path),
        f1_arousal=_number(test, "f1_arousal", test_path),
        train_seconds=sum(seconds),
        epochs=f"{len(seconds)} ({test.get('best_epoch', '?')})",
        lr=float("nan") if lr is None else lr,
        batch_size=0 if batch is None else int(batch),
        device=str(config.get("device", opts.get("device", "?"))),
    )


def compare(runs: list[str | Path], out: str | Path | None = None, on_error=None) -> list[RunRow]:
    """Rows for `runs`, in the order given; with `out`, also compare.md and compare.json there.

    on_error(run, message): a run that cannot be read is left out and said there, and the others
    are compared (DataError if none can be); without it the first such run raises DataError.
    """
    rows = []
    for run in runs:
        try:
            rows.append(read_run(run))
        except DataError as e:
            if on_error is None:
                raise
            on_error(Path(run), str(e))
    if not rows:
        raise DataError("none of the run folders could be read")
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise DataError(
            f"two runs share a folder name ({', '.join(n for n in names if names.count(n) > 1)}); "
            "compare.json is keyed by it"
        )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(rows)
        atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        doc = json.dumps(
            {"runs": {r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in rows}}, indent=2
        )
        atomic_write(out / "compare.json", lambda tmp: Path(tmp).write_text(doc + "\n", encoding="utf-8"))
    return rows


def cell(row: RunRow, key: str, fmt: str) -> str:
    value = getattr(row, key)
    return "-" if value is None else fmt.format(value)


def markdown(rows: list[RunRow]) -> str:
    """The table as Markdown: one line per run, test-part figures of each run's best checkpoint."""
    head = ["run", *(h for _, h, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.name, *(cell(r, k, f) for k, _, f in COLUMNS)]) + " |")
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict:
    return read_json_object(path, "missing (not a finished `fer train` run folder)", "unreadable", "not a JSON object")


def _object(doc: dict, key: str, path: Path) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise DataError(f"{path}: '{key}' is not a JSON object")
    return value


def _number(doc: dict, key: str, path: Path, default: float | None = None) -> float | None:
    """doc[key] as a float (None or `default` where absent); DataError for anything else."""
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}: {key} {str(value)[:40]!r} is not a number")
    return float(value)


def _epoch_seconds(path: Path) -> list[float]:
    """Each epoch's seconds from summary.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: missing (not a finished `fer train` run folder)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: unreadable ({first_line(e)})") from None
    try:
        return [float(r["seconds"]) for r in rows]
    except KeyError:
        raise DataError(f"{path}: no 'seconds' column (not a `fer train` summary)") from None
    except (TypeError, ValueError):
        raise DataError(f"{path}: a 'seconds' value is not a number") from None
