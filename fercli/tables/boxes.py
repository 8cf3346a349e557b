"""Where each person's face was, sample by sample: the boxes sidecar beside a table.

A row of the table is a second (or a sample) of one person; its face box is the mean over the
second, which cannot say where that person was in a given frame, nor whether they were on screen
at all after a cut inside the second. `<out name>.boxes.csv` holds, for every sample in which a
person of the table was found, the box the detector gave: what `fer render` draws each person
from. One row per (video, sample, person):

| column | type | unit | meaning |
|---|---|---|---|
| video | str | | the table's `video` |
| time | float | s | the sample's time, as the table's `time` / `start` count it |
| person | int | | the table's `person` (the person a default table follows) |
| track | int | | the face track (`media.people.Tracks`: ended at every cut) the box belongs to |
| x0, y0, x1, y1 | float | px | the face box in the upright frame |
| score | float | 0..1 | the detector's confidence |
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import DataError

COLUMNS = ("video", "time", "person", "track", "x0", "y0", "x1", "y1", "score")
KINDS = {
    "video": "O",
    "time": "f",
    "person": "i",
    "track": "i",
    "x0": "f",
    "y0": "f",
    "x1": "f",
    "y1": "f",
    "score": "f",
}


def boxes_path(out: str | Path) -> Path:
    """The sidecar of table `out`: `<out name>.boxes.csv` (results.parquet.boxes.csv)."""
    out = Path(out)
    return out.with_name(f"{out.name}.boxes.csv")


def box_rows(video: str, samples, people: dict[int, int], shown=None) -> list[dict]:
    """The sidecar's rows of one clip: `samples` are (time, {track: (box, score)}) in time order,
    `people` {track: person} (`people.group_tracks`); `shown` the people the table holds (a
    default table: its one person; None: all)."""
    rows = []
    for time, faces in samples:
        for track, (box, score) in sorted(faces.items()):
            person = people.get(track, track)
            if shown is None or person in shown:
                x0, y0, x1, y1 = (float(v) for v in box)
                rows.append(
                    dict(
                        video=video,
                        time=float(time),
                        person=int(person),
                        track=int(track),
                        x0=x0,
                        y0=y0,
                        x1=x1,
                        y1=y1,
                        score=float(score),
                    )
                )
    return rows


def write_boxes(path: str | Path, rows: list[dict]) -> Path:
    """Write the sidecar atomically (rows sorted by video, time, person)."""
    import pandas as pd

    from ..core.files import atomic_write

    path = Path(path)
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["video", "time", "person"], kind="stable")
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
    return path


def read_boxes(path: str | Path):
    """The sidecar as a DataFrame; DataError (one line, naming the file) where it is not one."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"video": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot be read as a boxes sidecar ({type(e).__name__})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: not a boxes sidecar (no column {', '.join(missing)})")
    for column, kind in KINDS.items():
        if kind != "O" and (frame[column].dtype.kind not in "iuf" or frame[column].isna().any()):
            raise DataError(f"{path}: column {column} must hold numbers in every row")
    return frame
