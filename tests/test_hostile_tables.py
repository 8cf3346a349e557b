"""Tables edited by hand or made by other tools, fed to every command that reads a table.

Each column of a complete fer table is dropped in turn, and each numeric column given a word
where a number belongs: `fer report`, `plot`, `export` and `render` either work or stop with a
one-line error naming the table (exit 2), never fer's "unexpected error" (exit 3).
"""

from __future__ import annotations

import math

import media
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.tables.writers import schema

SECONDS = 3
NUMERIC = (
    "second",
    "start",
    "end",
    "valence",
    "arousal",
    "valence_score",
    "arousal_score",
    "valence_conf",
    "arousal_conf",
    "valence_sd",
    "arousal_sd",
    "samples",
    "face_x0",
    "face_y0",
    "face_x1",
    "face_y1",
    "face_score",
    "face_share",
    "person",
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-tables")
    media.make_clip(root / "a.mp4", float(SECONDS), 10, (160, 120), media.still_face(30, 20, 80))
    return root / "a.mp4"


def fer_table(video: str) -> pd.DataFrame:
    """A complete --all-faces per-second table, as `fer annotate` writes it (two faces a second)."""
    rows = []
    for second in range(SECONDS):
        for person in (0, 1):
            v = (second - 1) * 3 + person
            rows.append(
                {
                    "video": video,
                    "second": second,
                    "start": float(second),
                    "end": float(second + 1),
                    "person": person,
                    "face": True,
                    "valence": v,
                    "arousal": -v,
                    "valence_score": v + 0.2,
                    "arousal_score": -v - 0.2,
                    "valence_conf": 0.5,
                    "arousal_conf": 0.4,
                    "valence_sd": 1.5,
                    "arousal_sd": 2.0,
                    "samples": 5,
                    "face_x0": 30.0,
                    "face_y0": 20.0,
                    "face_x1": 110.0,
                    "face_y1": 100.0,
                    "face_score": 0.9,
                    "face_share": 1.0,
                    "people": 2,
                }
            )
    df = pd.DataFrame(rows)
    assert list(df.columns) == schema(all_faces=True).names  # the table is what fer writes
    return df


def commands(table, clip, out):
    return {
        "report": ["report", str(table), "--out", str(out / "report"), "--videos", str(clip.parent)],
        "plot": ["plot", str(table), "--out", str(out / "plots")],
        "export": ["export", str(table), "--to", "nova", "--out", str(out / "nova")],
        "render": ["render", str(clip), "--table", str(table), "--out", str(out / "o.mp4")],
    }


def run_all(table, clip, out) -> dict[str, object]:
    results = {}
    for name, args in commands(table, clip, out).items():
        results[name] = CliRunner().invoke(app, args)
    return results


def check(results: dict, table, what: str) -> None:
    for name, result in results.items():
        assert result.exit_code in (0, 2), (
            f"fer {name} on a table with {what}: exit {result.exit_code}\n{result.output}"
        )
        if result.exit_code:
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1 and str(table.name) in lines[0], f"fer {name}, {what}: {result.output}"


def test_the_complete_table_works_with_every_command(tmp_path, clip):
    table = tmp_path / "t.csv"
    fer_table(clip.name).to_csv(table, index=False)
    results = run_all(table, clip, tmp_path)
    assert {name: r.exit_code for name, r in results.items()} == dict.fromkeys(results, 0), {
        n: r.output for n, r in results.items()
    }


@pytest.mark.parametrize("column", schema(all_faces=True).names)
def test_a_missing_column_is_a_one_line_error_or_no_error(tmp_path, clip, column):
    table = tmp_path / "t.csv"
    fer_table(clip.name).drop(columns=[column]).to_csv(table, index=False)
    check(run_all(table, clip, tmp_path), table, f"no {column} column")


@pytest.mark.parametrize("column", NUMERIC)
def test_a_word_where_a_number_belongs_is_named(tmp_path, clip, column):
    table = tmp_path / "t.csv"
    df = fer_table(clip.name).astype({column: object})
    df.loc[3, column] = "high"
    df.to_csv(table, index=False)
    results = run_all(table, clip, tmp_path)
    check(results, table, f"'high' in {column}")
    for name, result in results.items():
        assert result.exit_code == 2 and f"column {column} holds 'high' (row 4)" in result.output, (name, result.output)


@pytest.mark.parametrize("value", [math.inf, -1e300, 3e6])
def test_numbers_out_of_any_range_are_named(tmp_path, clip, value):
    table = tmp_path / "t.csv"
    df = fer_table(clip.name).astype({"second": float})
    df.loc[2, "second"] = value
    df.to_csv(table, index=False)
    results = run_all(table, clip, tmp_path)
    check(results, table, f"second {value}")
    for name, result in results.items():  # 3e6 s: a NOVA export took 1.1 GB of memory before
        assert result.exit_code == 2 and "column second holds" in result.output and "(row 3)" in result.output, (
            name,
            result.output,
        )


def test_video_names_past_a_file_names_length_still_export_and_plot(tmp_path):
    # Two clips whose flattened names pass 255 bytes and differ only at their ends: each gets
    # its own files, every file name fits, nothing is left half written.
    deep = "/".join(["recordings_of_the_second_session_of_the_study"] * 6)
    videos = [f"{deep}/participant_{k:03d}_interview.mp4" for k in (1, 2)]
    assert all(len(v) > 255 for v in videos)
    table = tmp_path / "t.csv"
    pd.concat([fer_table(v) for v in videos]).to_csv(table, index=False)
    for args in (
        ["export", str(table), "--to", "nova", "--out", str(tmp_path / "nova")],
        ["export", str(table), "--to", "elan", "--out", str(tmp_path / "elan")],
        ["plot", str(table), "--out", str(tmp_path / "plots")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    for folder, per_clip in (("nova", 2 * 2 * 2), ("elan", 1), ("plots/timelines", 1)):
        files = list((tmp_path / folder).iterdir())
        assert len(files) == 2 * per_clip, folder  # 2 clips (x 2 faces x 2 dimensions x 2 files for NOVA)
        assert all(len(f.name.encode()) <= 255 for f in files)
        assert len({f.name.split(".")[0] for f in files}) == 2  # one stem per clip
