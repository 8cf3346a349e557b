"""fercli.tables.boxes: the boxes sidecar, each person's face box per sample."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fercli.core.errors import DataError
from fercli.tables.boxes import COLUMNS, box_rows, boxes_path, read_boxes, write_boxes


def test_the_sidecar_is_named_after_the_whole_output_name():
    assert boxes_path(Path("out/results.parquet")) == Path("out/results.parquet.boxes.csv")


def test_rows_carry_each_tracks_person_and_only_the_tables_people(tmp_path):
    samples = [(0.4, {3: ((1, 2, 3, 4), 0.9), 1: ((5, 6, 7, 8), 0.8)}), (0.0, {1: ((0, 0, 2, 2), 0.7)})]
    people = {1: 0, 3: 1}
    rows = box_rows("a.mp4", samples, people)
    assert [(r["time"], r["track"], r["person"]) for r in rows] == [(0.4, 1, 0), (0.4, 3, 1), (0.0, 1, 0)]
    assert [r["person"] for r in box_rows("a.mp4", samples, people, shown={1})] == [1]
    back = read_boxes(write_boxes(tmp_path / "t.csv.boxes.csv", rows))
    assert list(back.columns) == list(COLUMNS)
    assert list(back["time"]) == [0.0, 0.4, 0.4]  # sorted by time, then person
    assert back.iloc[2][["x0", "y0", "x1", "y1", "score"]].tolist() == [1.0, 2.0, 3.0, 4.0, 0.9]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("video,time\na,1\n", "no column person"),
        ("video,time,person,track,x0,y0,x1,y1,score\na,1,p,0,0,0,1,1,1\n", "column person must hold numbers"),
    ],
)
def test_a_bad_sidecar_is_one_line_naming_it(tmp_path, content, problem):
    path = tmp_path / "t.csv.boxes.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        read_boxes(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert pd.read_csv(path) is not None
