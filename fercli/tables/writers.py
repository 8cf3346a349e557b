"""Output tables: Parquet (with the run's metadata) or CSV, written so a crash never corrupts them.

While a run goes on, each finished video is written as its own small Parquet file in a parts
folder beside the output (`results.parquet.parts/`), each by write-then-rename. At the end (or
on Ctrl-C) the parts and any rows already in the output are merged into the output, again by
write-then-rename, and the parts folder is removed. A run killed outright leaves the previous
output untouched and its finished videos in the parts folder, where `--resume` finds them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import DataError, FerError, first_line, printable, valid_text
from ..core.files import atomic_write
from ..core.labels import EXPRESSIONS
from ..media.decode import MAX_TIMESTAMP

log = logging.getLogger("fercli")

METADATA_KEY = b"fer"
PARTS_SUFFIX = ".parts"
# Metadata that must agree for --resume to add rows to an existing table (`calibration`: the
# intervals' quantiles, `intervals.calibration_metadata`; absent on both sides without one).
RESUME_KEYS = (
    "model",
    "weights_sha256",
    "fps",
    "window",
    "per_frame",
    "per_sample",
    "all_faces",
    "precision",
    "calibration",
    "identity",
)

_LABELS = [
    ("face", pa.bool_()),
    ("valence", pa.int8()),
    ("arousal", pa.int8()),
    ("valence_score", pa.float32()),
    ("arousal_score", pa.float32()),
    ("valence_conf", pa.float32()),
    ("arousal_conf", pa.float32()),
]
# How sure (rows' module doc): the spread in labels, and the samples the label was made from.
_SPREAD = [("valence_sd", pa.float32()), ("arousal_sd", pa.float32()), ("samples", pa.int16())]
# With a calibration only (`intervals`): each second's interval, on the label scale.
INTERVAL_COLUMNS = ("valence_lo", "valence_hi", "arousal_lo", "arousal_hi")
_INTERVALS = [(name, pa.float32()) for name in INTERVAL_COLUMNS]
# What the detector saw (windows.face_columns): the face box in pixels of the upright frame,
# the detector's score and the share of the row's samples that found the face.
_FACE = [(name, pa.float32()) for name in ("face_x0", "face_y0", "face_x1", "face_y1", "face_score", "face_share")]
# How many different people (`people.People` ids) the row's samples saw: 2 in a default table's
# row says someone else was on screen beside (or instead of) the person it follows.
_PEOPLE = [("people", pa.int16())]
# Models with HSEmotion's expression head only: mean softmax probabilities and the most probable name.
_EXPRESSIONS = [(name, pa.float32()) for name in EXPRESSIONS] + [("expression", pa.string())]
_SECOND_KEY = [("video", pa.string()), ("second", pa.int32()), ("start", pa.float64()), ("end", pa.float64())]
# A row per model sample: `sample_index` k at `time` k / fps. A row per video frame: `frame`, the
# frame's own index in the file, at `time`, its start. Named apart so neither passes for the other.
_SAMPLE_KEY = [("video", pa.string()), ("sample_index", pa.int32()), ("time", pa.float64())]
_FRAME_KEY = [("video", pa.string()), ("frame", pa.int32()), ("time", pa.float64())]
_KEYS = {"second": _SECOND_KEY, "sample": _SAMPLE_KEY, "frame": _FRAME_KEY}


def schema(
    rows: str = "second", all_faces: bool = False, expressions: bool = False, intervals: bool = False
) -> pa.Schema:
    """The output columns, in order, for rows per "second", "sample" or "frame" (video frame);
    `expressions`: the model has HSEmotion's expression head; `intervals`: a calibration's bounds."""
    key = _KEYS[rows] + ([("person", pa.int32())] if all_faces else [])
    bounds = _INTERVALS if intervals else []
    return pa.schema(key + _LABELS + _SPREAD + bounds + _FACE + _PEOPLE + (_EXPRESSIONS if expressions else []))


PARQUET_SUFFIXES = (".parquet", ".pq")  # what a table file is read as Parquet by, fer's or a user's


def output_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in PARQUET_SUFFIXES:
        return "parquet"
    if ext == ".csv":
        return "csv"
    raise FerError(f"{path}: output must end in .parquet or .csv")


ERRORS_COLUMNS = ["video", "error"]


def errors_path(out: Path) -> Path:
    """The sidecar listing videos that failed: `<out name>.errors.csv` (results.parquet.errors.csv).

    Named after the whole output name, so results.csv and results.parquet each own theirs.
    """
    return out.with_name(f"{out.name}.errors.csv")


def find_errors(out: Path) -> Path | None:
    """The errors sidecar of a table, where readers look: this fer's name, else the one fer
    0.1 wrote (`<out stem>.errors.csv`) when it is an errors file; None when there is none."""
    path = errors_path(out)
    if path.is_file():
        return path
    legacy = out.with_name(f"{out.stem}.errors.csv")
    return legacy if legacy.is_file() and _is_errors_file(legacy) else None


def _is_errors_file(path: Path) -> bool:
    # fer's own: a CSV whose header is exactly `video,error`. Anything else there is the user's.
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == ",".join(ERRORS_COLUMNS)
    except OSError:
        return False


def read_table(path: str | Path, require=()) -> pd.DataFrame:
    """A fer table (Parquet or CSV) as a DataFrame with nullable integer labels: the one reader
    for the tables fer writes and the ones users hand its tools. DataError (one line, naming the
    file) when it is missing, unreadable, lacks a column in `require` (a tuple in it is a choice:
    any one of its names), or a column of fer's holds values of another kind (`check_table`; a
    CSV before its labels become integers, so a bad value is named)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return _read(path, require)
    except FerError:
        raise
    except Exception as e:  # pyarrow/pandas raise many kinds for unreadable files
        raise DataError(f"{path}: cannot read table ({first_line(e)})") from e


def _read(path: Path, require) -> pd.DataFrame:
    if output_format(path) == "parquet":
        df = pq.read_table(path).to_pandas(types_mapper=_nullable)
        check_table(df, path, require)
        return df
    df = pd.read_csv(path, dtype={"video": str, "expression": str})  # an all-null column is no float
    check_table(df, path, require)
    for col in ("valence", "arousal", "person", "people", "samples"):
        if col in df:
            whole = df[col].dropna()
            if not (whole == whole.round()).all():
                row = int((df[col] != df[col].round()).to_numpy().argmax())
                value = df[col].iloc[row]
                raise DataError(f"{path}: column {col} holds {value!r} (row {row + 1}) where a whole number belongs")
            df[col] = df[col].astype("Int64")
    return df


# The time keys' largest values: decode.MAX_TIMESTAMP seconds, and frames of it at 1,000 frames/s.
TIME_BOUNDS = {
    "second": MAX_TIMESTAMP,
    "start": MAX_TIMESTAMP,
    "end": MAX_TIMESTAMP,
    "time": MAX_TIMESTAMP,
    "sample_index": MAX_TIMESTAMP * 1000,
    "frame": MAX_TIMESTAMP * 1000,
}


def check_table(df: pd.DataFrame, path: Path, require=()) -> None:
    """DataError (one line, naming the file) unless `df` has the `require`d columns, each of its kind.

    A table edited by hand, or made by another tool, reaches plot, export, report and render
    through here, which would otherwise fail deep inside with a KeyError or a TypeError.
    """
    choices = [(c,) if isinstance(c, str) else tuple(c) for c in require]
    missing = [c[0] if len(c) == 1 else " or ".join(c) for c in choices if not any(n in df for n in c)]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    kinds = {f.name: f.type for rows in _KEYS for f in schema(rows, all_faces=True, expressions=True, intervals=True)}
    for col in df.columns:
        kind = kinds.get(col)
        if kind is None or pa.types.is_string(kind) or col == "face":
            continue
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()
            row = int(bad.to_numpy().argmax()) if bad.any() else 0
            value = printable(str(df[col].iloc[row]))
            raise DataError(f"{path}: column {col} holds {value!r} (row {row + 1}) where a number belongs")
    for col, top in TIME_BOUNDS.items():  # keys that size what the tools build (a NOVA track per second)
        if col in df and len(df):
            values = df[col].to_numpy(dtype=float, na_value=np.nan)
            bad = ~((values >= 0) & (values <= top)) & ~np.isnan(values)
            if bad.any():
                row = int(bad.argmax())
                value = values[row]
                raise DataError(f"{path}: column {col} holds {value!r} (row {row + 1}); fer's run from 0 to {top:g}")
    if "face" in df and df["face"].notna().any() and not pd.api.types.is_bool_dtype(df["face"]):
        values = set(df["face"].dropna().unique())
        if not values <= {True, False}:
            odd = sorted(map(str, values - {True, False}))[0]
            raise DataError(f"{path}: column face holds {odd!r} where true or false belongs")


def metadata_path(out: Path) -> Path:
    """Where a CSV output's run metadata lives (a CSV has no place for it): `<out name>.fer.json`."""
    return out.with_name(f"{out.name}.fer.json")


def read_metadata(path: str | Path) -> dict | None:
    """The run metadata of an output (Parquet: in its schema; CSV: its `.fer.json`), or None."""
    path = Path(path)
    try:
        if output_format(path) != "parquet":
            side = metadata_path(path)
            return json.loads(side.read_text(encoding="utf-8")) if side.is_file() else None
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def _nullable(t: pa.DataType):
    return {pa.int8(): pd.Int64Dtype(), pa.int16(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get(t)


def check_output(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """FerError unless `out` may be written: a new path, or an existing one with resume or overwrite.

    An existing table (or the parts a killed run left beside it) is never merged into or replaced
    silently: `resume` adds to it, `overwrite` replaces it with the new run alone.
    """
    out = Path(out)
    output_format(out)
    if out.is_dir():
        raise FerError(f"{out} is a folder: --out names the table to write, such as {out / 'results.parquet'}")
    if not out.parent.is_dir():
        raise FerError(f"{out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise FerError(f"{out}: cannot write in {out.parent} (permission denied)")
    if resume and overwrite:
        raise FerError("--resume and --overwrite exclude each other: add to the output, or replace it")
    errors = errors_path(out)
    if errors.exists() and not _is_errors_file(errors):  # before the work, not after it
        raise FerError(f"{errors} exists and is not an errors file of fer's: the run would need its name; move it")
    if resume or overwrite:
        return
    parts = out.with_name(out.name + PARTS_SUFFIX)
    if out.exists():
        raise FerError(f"{out} already exists: --resume adds the missing videos to it, --overwrite replaces it")
    if parts.exists():
        raise FerError(
            f"{parts} holds the finished videos of a run that did not end: "
            "--resume completes it, --overwrite discards it"
        )


class TableWriter:
    """Collects finished videos and merges them into one output file at the end.

    resume: keep the existing output and parts and add to them. overwrite: the output is
    replaced (atomically, at the end) by this run's rows alone. Neither: `out` must be new.
    """

    def __init__(
        self,
        out: Path,
        metadata: dict,
        *,
        rows: str = "second",
        all_faces: bool,
        resume: bool,
        overwrite: bool = False,
        expressions: bool = False,
        intervals: bool = False,
    ):
        self.out = Path(out)
        self.format = output_format(self.out)
        check_output(self.out, resume=resume, overwrite=overwrite)
        self.metadata = metadata
        self.resume = resume
        self.schema = schema(rows, all_faces, expressions, intervals)
        self.parts = self.out.with_name(self.out.name + PARTS_SUFFIX)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            self._check_resumable()
        elif self.parts.exists():
            shutil.rmtree(self.parts)  # --overwrite: an older run's leftovers go with its table
        self.parts.mkdir(exist_ok=True)

    def done(self) -> set[str]:
        """Videos already in the output (when resuming) or in finished parts."""
        names: set[str] = set()
        if self.resume and self.out.exists():
            names |= set(read_table(self.out)["video"])
        for part in self._part_files():
            names |= set(pq.read_table(part, columns=["video"])["video"].to_pylist())
        return names

    def add(self, video: str, rows: Iterable[dict]) -> int:
        """Store one finished video's rows; returns how many."""
        table = self._table([{**r, "video": video} for r in rows])
        # Each part says what made it, so --resume can refuse parts of another model or setting.
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(self.metadata).encode()})
        n = len(list(self.parts.glob("*.parquet")))
        atomic_write(self.parts / f"{n:06d}.parquet", lambda tmp: pq.write_table(table, tmp))
        return table.num_rows

    def finish(self, order: list[str]) -> int:
        """Merge the output and the parts into the output; rows sorted by `order`, then time."""
        frames = [read_table(self.out)] if self.resume and self.out.exists() else []
        frames += [pq.read_table(p).to_pandas(types_mapper=_nullable) for p in self._part_files()]
        df = pd.concat(frames, ignore_index=True) if frames else self.schema.empty_table().to_pandas()
        df = _sorted(df.drop_duplicates(subset=self._key(), keep="last"), order, self._key())
        self._write(df)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(df)

    def _key(self) -> list[str]:
        keys = [n for n in ("video", "second", "sample_index", "frame", "person") if n in self.schema.names]
        return keys

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.parquet")) if self.parts.exists() else []

    def _table(self, rows: list[dict]) -> pa.Table:
        cols = {name: [r.get(name) for r in rows] for name in self.schema.names}
        return pa.Table.from_pydict(cols, schema=self.schema)

    def _write(self, df: pd.DataFrame) -> None:
        write_table(df, self.out, self.metadata, self.schema)

    def _check_resumable(self) -> None:
        """FerError unless the table and every part were made with this run's model and settings.

        Parts and CSV tables carried nothing before: a resume with another model merged two
        models' rows. What records nothing cannot be resumed into.
        """
        self._check_columns()
        for path in ([self.out] if self.out.exists() else []) + self._part_files():
            old = read_metadata(path)
            if old is None:
                raise FerError(
                    f"{path}: cannot resume, it does not record the model and settings it was made with "
                    "(an older fer, or not fer); --overwrite makes the table again"
                )
            clash = [k for k in RESUME_KEYS if old.get(k) != self.metadata.get(k)]
            if clash:
                detail = ", ".join(f"{k}: {old.get(k)!r} vs {self.metadata.get(k)!r}" for k in clash)
                raise FerError(f"{path}: cannot resume, it was made with other settings ({detail})")

    def _check_columns(self) -> None:
        """FerError unless the table being resumed (and its parts) has this run's columns.

        A table from an older fer, or from a model with or without the expression head, would
        otherwise be merged into a table that lies about some of its rows.
        """
        files = ([self.out] if self.out.exists() else []) + self._part_files()
        for path in files:
            names = (
                pq.read_schema(path).names
                if output_format(path) == "parquet"
                else list(pd.read_csv(path, nrows=0).columns)
            )
            if names != self.schema.names:
                missing = [n for n in self.schema.names if n not in names]
                extra = [n for n in names if n not in self.schema.names]
                detail = (
                    "; ".join(
                        part
                        for part in (
                            f"lacks {', '.join(missing)}" if missing else "",
                            f"has {', '.join(extra)} too" if extra else "",
                        )
                        if part
                    )
                    or "its columns are in another order"
                )
                raise FerError(
                    f"{path}: cannot resume, the table has other columns than this run writes ({detail}); "
                    "--overwrite makes it again"
                )


def write_table(df: pd.DataFrame, out: Path, metadata: dict, table_schema: pa.Schema) -> None:
    """Write `df`'s columns of `table_schema` to `out`, whole or not at all: Parquet with `metadata`
    in its schema, or CSV with the metadata in `<out name>.fer.json`."""
    out = Path(out)
    table = pa.Table.from_pandas(df[table_schema.names], schema=table_schema, preserve_index=False)
    if output_format(out) == "parquet":
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    else:
        atomic_write(out, lambda tmp: table.to_pandas(types_mapper=_nullable).to_csv(tmp, index=False))
        atomic_write(
            metadata_path(out), lambda tmp: Path(tmp).write_text(json.dumps(metadata) + "\n", encoding="utf-8")
        )


def check_keys(df: pd.DataFrame, path, key: str) -> pd.Series:
    """A table's row keys checked for the tools that read one (report, export): `video` never
    null, `key` (second, sample_index or frame) whole numbers from 0, no (video, key[, person])
    twice. Returns `key` as int64; DataError (one line, naming the file) where a row breaks it."""
    if df["video"].isna().any():
        row = int(np.flatnonzero(df["video"].isna().to_numpy())[0]) + 1
        raise DataError(f"{path}: column video is empty in row {row}")
    index = pd.to_numeric(df[key], errors="coerce")
    if index.isna().any() or (index < 0).any() or (index != np.floor(index)).any() or (index >= 2**53).any():
        raise DataError(f"{path}: column {key} must hold whole numbers from 0")
    index = index.astype(np.int64)
    keys = ["video", key, "person"] if "person" in df else ["video", key]
    dup = pd.DataFrame({**{k: df[k] for k in keys if k != key}, key: index}).duplicated()
    if dup.any():
        row = df[dup.to_numpy()].iloc[0]
        raise DataError(f"{path}: {row['video']} has {key} {index[dup.to_numpy()].iloc[0]} twice")
    return index


def read_errors(out: str | Path) -> list[tuple[str, str]]:
    """(video, one-line error) for each clip in the errors sidecar of the table `out`
    (`find_errors`); [] when there is none. DataError, naming the file, when it cannot be read
    or lacks the columns video and error: reports and exports read it the same way."""
    path = find_errors(Path(out))
    if path is None:
        return []
    try:
        errs = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many kinds for unreadable files
        raise DataError(f"{path}: cannot read the errors file ({first_line(e)})") from e
    if not set(ERRORS_COLUMNS) <= set(errs.columns):
        raise DataError(f"{path}: the errors file needs the columns video and error")
    return [(v, first_line(e)) for v, e in zip(errs["video"], errs["error"])]


def write_errors(out: Path, errors: list[tuple[str, str]]) -> Path | None:
    """Write `<out name>.errors.csv` (video, error); when nothing failed, remove a stale one that
    fer wrote (a file of another form by that name is the user's, and stays)."""
    path = errors_path(out)
    if not errors:
        if path.is_file() and _is_errors_file(path):
            path.unlink()
        elif path.exists():
            log.warning("%s is not an errors file of fer's; left as it is", printable(str(path)))
        return None
    if path.exists() and not _is_errors_file(path):
        raise FerError(f"{path} exists and is not an errors file of fer's: move it, and run again with --resume")
    df = pd.DataFrame([(valid_text(v), valid_text(e)) for v, e in errors], columns=ERRORS_COLUMNS)
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return path


def _sorted(df: pd.DataFrame, order: list[str], keys: list[str]) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(order)}
    # Videos from an earlier run that this run did not list keep their place ahead of the rest.
    df = df.assign(_rank=df["video"].map(lambda v: rank.get(v, -1)))
    by = ["_rank"] + keys
    return df.sort_values(by, kind="stable", na_position="first").drop(columns="_rank").reset_index(drop=True)
