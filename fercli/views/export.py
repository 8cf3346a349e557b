"""Export an annotation table to the files annotation tools read: ELAN and NOVA.

`fer export T --to elan|elan-txt|nova --out DIR [--videos ROOT]` is a thin shell over `export()` /
`export_table()`.

- ELAN (`elan`): one ELAN document per clip (`<clip>.eaf`, EAF 3.0, times in milliseconds), which
  ELAN and pympi-ling open as they are: the clip's video linked (`MEDIA_DESCRIPTOR`, absolute and
  relative URL, and `TIME_ORIGIN`, where the first frame sits in the file) when it is found under
  `videos` (the folder fer annotate was given; default the table's folder); tiers `valence`,
  `arousal` and, where the table has it, `expression`, one annotation per second (or sample) with
  a face, its value the integer label (the expression's name); in an `--all-faces` table each
  face's tiers (`valence (person 1)`, participant `person 1`) in the clip's one document.
- ELAN text (`elan-txt`): one tab-delimited text file per clip (`<clip>.txt`) with the columns `Tier`, `Begin Time`,
  `End Time`, `Annotation` and a header row, the layout ELAN's "Import CSV/Tab-delimited Text File"
  dialog maps column by column. Times are seconds with millisecond precision (`12.345`, ELAN's
  "ss.msec" format). One annotation per second (or sample) that has a face, its text the integer
  label; a second without a face has no annotation, so it shows as a gap on the tier. Tiers:
  `valence`, `arousal` and, where the table has an `expression` column, `expression`; in an
  `--all-faces` table every face gets its own tiers in the clip's one file (`valence (person 1)`,
  the number is the table's `person`), because ELAN makes one document per imported file and the
  faces of a clip belong on one timeline.
- NOVA (hcmlab/nova): per clip, face and dimension, a continuous annotation, the XML header
  `<name>.annotation` and its ASCII data file `<name>.annotation~`: one line `score;confidence` per
  sample at the scheme's rate `sr` (1 Hz per second; the model's fps for a `--per-sample` table,
  each clip's own for a `--per-frame` one), line *i* being the sample at *i* / `sr` seconds; a
  clip of variable frame rate has no `sr` and is refused (ExportResult.refused), the others
  written. The score is the table's continuous `valence_score` / `arousal_score` (unclipped, as
  in the table); the confidence is
  `valence_conf` / `arousal_conf` (the probability of the chosen class) where the model gives one,
  else 1. A second without a face is `NaN;0`: no value, and confidence 0 so that NOVA's
  low-confidence marking flags it. In an `--all-faces` table each face is its own role
  (`face1`) and its own file set (`<clip>.face1.valence.annotation`).
- Intervals (a table from `fer calibrate apply`, with `valence_lo`, `valence_hi`, `arousal_lo`,
  `arousal_hi`): ELAN gets a tier per bound after the others (`valence_lo`, ...; values with two
  decimals, on the -10..10 scale), NOVA a continuous annotation per bound
  (`<clip>.valence_lo.annotation`, `bound;1`, `NaN;0` without a face).

Clips that failed in `fer annotate` are not in the table; `<table name>.errors.csv` lists them,
and `export()` reports them instead of failing. Existing files are never replaced unless
`overwrite` is set; every file is written by write-then-rename.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError
from ..core.files import atomic_write
from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN
from ..tables.rows import ROW_INDEX

FORMATS = ("elan", "elan-txt", "nova")
ELAN_COLUMNS = ("Tier", "Begin Time", "End Time", "Annotation")
EAF_LINGUISTIC_TYPE = "fer-label"  # the one tier type: time-aligned, free text
MIME_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
}
NOVA_ANNOTATOR = "fer"


@dataclass(frozen=True)
class ExportOptions:
    """What `export()` writes: `to` one of FORMATS, into `out_dir`; `overwrite` replaces files."""

    to: str
    out_dir: Path
    overwrite: bool = False
    videos: Path | None = None  # where the table's videos are (ELAN links them); default the table's folder


@dataclass
class ExportResult:
    """What an export wrote, and what it could not export.

    files: every file written. clips: the clips exported. no_files: clips of an `--all-faces`
    table in which no face was ever found, so NOVA (one file set per face) has nothing to name.
    failed: (video, error) for the clips the errors sidecar lists (they are not in the table).
    refused: (video, error) for clips the format cannot hold (NOVA: a variable frame rate); the
    other clips are exported.
    """

    files: list[Path] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)
    no_files: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (video, one-line why) the format cannot hold
    failed: list[tuple[str, str]] = field(default_factory=list)
    errors_file: Path | None = None


def export_table(
    table_path: str | Path, to: str, out_dir: str | Path, *, overwrite: bool = False, videos: str | Path | None = None
) -> list[Path]:
    """Export a `fer annotate` table to ELAN (`to="elan"`: .eaf; "elan-txt": tab-delimited text)
    or NOVA (`to="nova"`) files in `out_dir`; `videos`: where the clips are, for ELAN's media link.

    Returns the files written. Raises FerError (a one-line message) for a missing or unreadable
    table, an unknown format, or files in `out_dir` that would be overwritten without `overwrite`.
    """
    return export(
        table_path,
        ExportOptions(
            to=to, out_dir=Path(out_dir), overwrite=overwrite, videos=Path(videos) if videos is not None else None
        ),
    ).files


def export(table_path: str | Path, options: ExportOptions) -> ExportResult:
    """`export_table` with the full account: files, clips, and the clips that failed upstream."""
    to = options.to.lower() if isinstance(options.to, str) else options.to
    if to not in FORMATS:
        raise FerError(f"--to must be one of {', '.join(FORMATS)}, not {options.to!r}")
    table_path = Path(table_path)
    df = _read(table_path)
    table = _Table.of(df, table_path)
    out_dir = Path(options.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FerError(f"{out_dir}: exists and is not a folder")

    result = ExportResult()
    result.failed, result.errors_file = _failed(table_path)
    videos = Path(options.videos) if options.videos is not None else table_path.parent
    planned = _plan(table, to, result, videos, out_dir)
    if result.refused and not result.clips:
        raise DataError(f"{table_path}: {result.refused[0][1]}")
    clashes = [p for p in planned if (out_dir / p).exists()]
    if clashes and not options.overwrite:
        more = f" and {len(clashes) - 1} more files" if len(clashes) > 1 else ""
        verb = "exist" if len(clashes) > 1 else "exists"
        raise FerError(f"{out_dir / clashes[0]}{more} already {verb}: --overwrite replaces them")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in planned.items():
        path = out_dir / name
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))
        result.files.append(path)
    return result


# --- reading the table -------------------------------------------------------------------------


def _read(path: Path) -> pd.DataFrame:
    from ..tables.writers import read_table

    return read_table(path)


def _failed(table_path: Path) -> tuple[list[tuple[str, str]], Path | None]:
    from ..tables.writers import find_errors, read_errors

    return read_errors(table_path), find_errors(table_path)


@dataclass
class _Table:
    """The table in the terms both formats need: per clip, a sample index and a span per row."""

    df: pd.DataFrame
    per_frame: bool
    rates: dict[str, float | None]  # per clip, rows per second: 1 per second, else the clip's own (None: no one rate)
    faces: bool  # an --all-faces table (a person column)

    @classmethod
    def of(cls, df: pd.DataFrame, path: Path) -> _Table:
        missing = [c for c in ("video", *DIMENSIONS) if c not in df]
        key = next((k for k in ROW_INDEX if k in df), None)
        per_frame = key in ("sample_index", "frame")
        if key is None or (per_frame and "time" not in df):
            missing.append("second (or sample_index or frame, and time)")
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        from ..tables.writers import check_keys

        df = df.copy()
        df["_index"] = check_keys(df, path, key)
        df["video"] = df["video"].astype(str)
        faces = "person" in df
        rates = _clip_rates(df, path, key) if per_frame else dict.fromkeys(pd.unique(df["video"]), 1.0)
        if per_frame:  # a row from its own time until the next row's (a video frame's, or a sample's)
            df["_begin"], df["_end"] = _frame_spans(df, rates)
            rate = df["video"].map(rates).astype(float)
            exact = rate.notna() & (key == "sample_index")  # sample k of a known rate: [k / fps, (k + 1) / fps)
            df.loc[exact, "_begin"] = df["_index"][exact] / rate[exact]
            df.loc[exact, "_end"] = (df["_index"][exact] + 1) / rate[exact]
        else:
            df["_begin"] = pd.to_numeric(df["start"], errors="coerce") if "start" in df else df["_index"].astype(float)
            df["_end"] = pd.to_numeric(df["end"], errors="coerce") if "end" in df else df["_index"] + 1.0
        has_face = pd.Series(True, index=df.index)
        if "face" in df:
            has_face &= df["face"].fillna(False).astype(bool)
        if faces:
            has_face &= df["person"].notna()
        df["_face"] = has_face
        return cls(df, per_frame, rates, faces)

    def clips(self):
        """(video, its rows) in table order."""
        for video in pd.unique(self.df["video"]):
            yield video, self.df[self.df["video"] == video]

    def persons(self, rows: pd.DataFrame) -> list[int | None]:
        """The faces of a clip: [None] for a one-face table, else the face ids found in it."""
        if not self.faces:
            return [None]
        return sorted(int(f) for f in pd.unique(rows.loc[rows["person"].notna(), "person"]))

    @staticmethod
    def of_face(rows: pd.DataFrame, person: int | None) -> pd.DataFrame:
        if person is None:
            return rows
        return rows[rows["person"].notna() & (rows["person"] == person)]


def _clip_rates(df: pd.DataFrame, path: Path, key: str) -> dict[str, float | None]:
    """Rows per second of each clip of a per-sample or per-frame table. Per sample: the metadata's
    fps (the model's, one for every clip), else `sample_index / time` (the sampler places sample k
    at k / fps exactly). Per video frame: `frame / time`, each clip's own rate (clips of 25 and
    30 fps share a batch); None for a clip whose times follow no one rate (a variable frame rate)."""
    from ..tables.writers import read_metadata

    try:
        meta = read_metadata(path) or {}
    except (OSError, ValueError):  # damaged metadata: fall back on the times themselves
        meta = {}
    fps = meta.get("fps") if key == "sample_index" else None  # the model's rate, not the video's
    if isinstance(fps, (int, float)) and fps > 0:
        return dict.fromkeys(pd.unique(df["video"]), float(fps))
    # Video timestamps are rounded to the file's time base (often 1 ms): a tenth of a frame.
    tolerance = 1e-3 if key == "sample_index" else 0.1
    rates = {}
    for video, rows in df.groupby("video", sort=False):
        rows = rows.drop_duplicates("_index")  # an --all-faces table has a row per face
        time = pd.to_numeric(rows["time"], errors="coerce").to_numpy(dtype=float)
        index = rows["_index"].to_numpy(dtype=float)
        usable = time > 0
        rate = float(np.median(index[usable] / time[usable])) if usable.any() else None
        rates[video] = rate if rate and np.allclose(index, time * rate, atol=tolerance) else None
    return rates


def _frame_spans(df: pd.DataFrame, rates: dict[str, float | None]) -> tuple[pd.Series, pd.Series]:
    """[begin, end) of each row of a per-frame table: a frame's time to the next frame's (of the
    same clip), the last one frame period long (the clip's rate, else its median frame gap)."""
    time = pd.to_numeric(df["time"], errors="coerce")
    end = pd.Series(np.nan, index=df.index)
    for video, rows in df.groupby("video", sort=False):
        frames = time[rows.index].groupby(rows["_index"]).first().sort_index()
        gaps = np.diff(frames.to_numpy())
        period = 1 / rates[video] if rates.get(video) else (float(np.median(gaps)) if len(gaps) else 1.0)
        following = pd.Series(np.append(frames.to_numpy()[1:], frames.iloc[-1] + period), index=frames.index)
        end[rows.index] = rows["_index"].map(following).to_numpy()
    return time, end


# --- planning the files ------------------------------------------------------------------------


def _plan(table: _Table, to: str, result: ExportResult, videos: Path, out_dir: Path) -> dict[str, str]:
    """File name -> text for every file of the export, names unique (case-insensitively)."""
    from .plots import safe_names

    # The stems are unique (case-insensitively) and every clip of a table gets suffixes of one
    # pattern (`.txt`; `.valence.annotation` or, in an --all-faces table, `.person<id>.valence...`),
    # so file names cannot clash either.
    stems = safe_names([video for video, _ in table.clips()])
    planned: dict[str, str] = {}
    for video, rows in table.clips():
        try:
            if to == "elan":
                files = _eaf_files(table, rows, video, videos, out_dir)
            else:
                files = _elan_files(table, rows) if to == "elan-txt" else _nova_files(table, rows)
        except DataError as e:  # this clip alone; the batch goes on
            result.refused.append((video, str(e)))
            continue
        if not files:
            result.no_files.append(video)
        planned.update({f"{stems[video]}{suffix}": text for suffix, text in files.items()})
        result.clips.append(video)
    return planned


def _tiers(rows: pd.DataFrame) -> list[str]:
    """The columns that become ELAN tiers: labels, the expression, the intervals' bounds."""
    return list(DIMENSIONS) + (["expression"] if "expression" in rows else []) + _bounds(rows)


def _bounds(rows: pd.DataFrame) -> list[str]:
    from ..tables.writers import INTERVAL_COLUMNS

    return list(INTERVAL_COLUMNS) if all(c in rows for c in INTERVAL_COLUMNS) else []


def _elan_files(table: _Table, rows: pd.DataFrame) -> dict[str, str]:
    lines = ["\t".join(ELAN_COLUMNS)]
    tiers = _tiers(rows)
    for person in table.persons(rows):
        face = table.of_face(rows, person).sort_values("_index")
        for tier in tiers:
            name = tier if person is None else f"{tier} (person {person})"
            shown = face[face["_face"] & face[tier].notna()]
            for begin, end, value in zip(shown["_begin"], shown["_end"], shown[tier]):
                lines.append("\t".join((name, _ms(begin), _ms(end), _elan_text(value, tier))))
    return {".txt": "\n".join(lines) + "\n"}


def _eaf_files(table: _Table, rows: pd.DataFrame, video: str, videos: Path, out_dir: Path) -> dict[str, str]:
    """The clip's ELAN document: one tier per face and dimension, time slots shared by all."""
    import xml.etree.ElementTree as ET

    tiers = []  # (tier id, participant, [(begin ms, end ms, text)])
    names = _tiers(rows)
    for person in table.persons(rows):
        face = table.of_face(rows, person).sort_values("_index")
        for name in names:
            shown = face[face["_face"] & face[name].notna()]
            spans = [
                (_to_ms(b), _to_ms(e), _elan_text(v, name))
                for b, e, v in zip(shown["_begin"], shown["_end"], shown[name])
            ]
            tier = name if person is None else f"{name} (person {person})"
            tiers.append((tier, "" if person is None else f"person {person}", spans))
    slots = {
        ms: f"ts{i + 1}" for i, ms in enumerate(sorted({t for *_, spans in tiers for b, e, _ in spans for t in (b, e)}))
    }

    doc = ET.Element(
        "ANNOTATION_DOCUMENT",
        {
            "AUTHOR": "fer",
            "DATE": _now(),
            "FORMAT": "3.0",
            "VERSION": "3.0",
            "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xsi:noNamespaceSchemaLocation": "http://www.mpi.nl/tools/elan/EAFv3.0.xsd",
        },
    )
    header = ET.SubElement(doc, "HEADER", {"MEDIA_FILE": "", "TIME_UNITS": "milliseconds"})
    media = _media(video, videos, out_dir)
    if media is not None:
        ET.SubElement(header, "MEDIA_DESCRIPTOR", media)
    count = sum(len(spans) for *_, spans in tiers)
    ET.SubElement(header, "PROPERTY", {"NAME": "lastUsedAnnotationId"}).text = str(count)
    order = ET.SubElement(doc, "TIME_ORDER")
    for ms, slot in slots.items():
        ET.SubElement(order, "TIME_SLOT", {"TIME_SLOT_ID": slot, "TIME_VALUE": str(ms)})
    n = 0
    for tier_id, participant, spans in tiers:
        attrs = {"LINGUISTIC_TYPE_REF": EAF_LINGUISTIC_TYPE, "TIER_ID": tier_id}
        if participant:
            attrs["PARTICIPANT"] = participant
        tier = ET.SubElement(doc, "TIER", attrs)
        for begin, end, text in spans:
            n += 1
            a = ET.SubElement(
                ET.SubElement(tier, "ANNOTATION"),
                "ALIGNABLE_ANNOTATION",
                {"ANNOTATION_ID": f"a{n}", "TIME_SLOT_REF1": slots[begin], "TIME_SLOT_REF2": slots[end]},
            )
            ET.SubElement(a, "ANNOTATION_VALUE").text = text
    ET.SubElement(
        doc,
        "LINGUISTIC_TYPE",
        {"GRAPHIC_REFERENCES": "false", "LINGUISTIC_TYPE_ID": EAF_LINGUISTIC_TYPE, "TIME_ALIGNABLE": "true"},
    )
    ET.indent(doc)
    return {".eaf": '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(doc, encoding="unicode") + "\n"}


def _media(video: str, videos: Path, out_dir: Path) -> dict[str, str] | None:
    """ELAN's link to the clip: absolute and relative URL, type and where t = 0 sits in it."""
    import os
    import urllib.parse

    from ..core.errors import VideoError
    from ..media.decode import player_origin
    from ..media.inputs import clip_under

    path = clip_under(videos, video)
    if path is None or path.is_dir():
        return None  # not found (or a folder of frames, which ELAN cannot play): no link
    try:
        origin = player_origin(path)
    except VideoError:
        origin = 0.0
    relative = os.path.relpath(path.resolve(), out_dir.resolve())
    return {
        "MEDIA_URL": path.resolve().as_uri(),
        "MIME_TYPE": MIME_TYPES.get(path.suffix.lower(), "video/*"),
        "RELATIVE_MEDIA_URL": urllib.parse.quote(Path(relative).as_posix()),
        "TIME_ORIGIN": str(_to_ms(origin)),
    }


def _to_ms(seconds: float) -> int:
    return int(round(float(seconds) * 1000))


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _ms(seconds: float) -> str:
    return f"{float(seconds):.3f}"


def _elan_text(value, tier: str = "") -> str:
    if tier.endswith(("_lo", "_hi")):  # an interval's bound: a hundredth of a label is plenty
        return f"{float(value):.2f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # a CSV may give labels as floats
    # Free text (expression): a tab or line break would split the row.
    return " ".join(str(value).split())


def _nova_files(table: _Table, rows: pd.DataFrame) -> dict[str, str]:
    video = rows["video"].iloc[0]
    rate = table.rates[video]
    if rate is None:  # NOVA's line i is the sample at i / sr: one rate per file
        raise DataError(
            f"{video}: its times follow no one sample rate (a variable frame rate?), "
            "which NOVA needs: export it to ELAN"
        )
    length = int(rows["_index"].max()) + 1  # every face's file covers the whole clip
    files: dict[str, str] = {}
    for person in table.persons(rows):
        face = table.of_face(rows, person).set_index("_index").reindex(range(length))
        role = "face" if person is None else f"person{person}"
        prefix = "" if person is None else f".{role}"
        for dim in DIMENSIONS:
            data = _nova_data(face, dim)
            files[f"{prefix}.{dim}.annotation"] = _nova_header(dim, role, rate, len(data))
            files[f"{prefix}.{dim}.annotation~"] = "".join(line + "\n" for line in data)
        for bound in _bounds(rows):
            data = _nova_data(face.assign(_bound_conf=1.0), bound, "_bound_conf")
            files[f"{prefix}.{bound}.annotation"] = _nova_header(bound, role, rate, len(data))
            files[f"{prefix}.{bound}.annotation~"] = "".join(line + "\n" for line in data)
    return files


def _nova_header(dim: str, role: str, rate: float, size: int) -> str:
    return (
        '<?xml version="1.0" ?>\n'
        '<annotation ssi-v="3">\n'
        f'    <info ftype="ASCII" size="{size}" />\n'
        f'    <meta annotator="{NOVA_ANNOTATOR}" role="{role}" />\n'
        f'    <scheme name="{dim}" type="CONTINUOUS" sr="{_num(rate)}" min="{LABEL_MIN}" max="{LABEL_MAX}" />\n'
        "</annotation>\n"
    )


def _nova_data(face: pd.DataFrame, dim: str, conf_col: str | None = None) -> list[str]:
    """One `score;confidence` line per sample; rows missing from the table (reindexed to NaN) and
    faceless rows are `NaN;0`. `dim`: a dimension (its score), or a column of its own (a bound)."""
    score_col = f"{dim}_score" if f"{dim}_score" in face else dim
    scores = face[score_col]
    conf_col = conf_col or f"{dim}_conf"
    conf = face[conf_col] if conf_col in face else pd.Series(np.nan, index=face.index)
    score_type, conf_type = _float_type(scores), _float_type(conf)
    present = face["_face"].fillna(False).astype(bool)
    lines = []
    for ok, score, c in zip(present, scores, conf):
        if not ok or pd.isna(score):
            lines.append("NaN;0")
            continue
        # A model with no class distribution (frame models: conf null) states no doubt: 1.
        c = 1.0 if pd.isna(c) else float(c)
        lines.append(f"{_num(score, score_type)};{_num(c, conf_type)}")
    return lines


def _float_type(column: pd.Series) -> np.dtype:
    """float32 for Parquet's float32 columns (so 0.3 is written `0.3`, not `0.30000001192092896`),
    else float64 (CSV, nullable or integer columns)."""
    kind = column.dtype
    return kind if isinstance(kind, np.dtype) and kind.kind == "f" else np.dtype(np.float64)


def _num(value: float, dtype: np.dtype | None = None) -> str:
    """The shortest decimal that reads back as the same `dtype` value (default float64)."""
    value = (dtype or np.dtype(np.float64)).type(value)
    if not math.isfinite(float(value)):
        return "NaN"
    return np.format_float_positional(value, unique=True, trim="-")
