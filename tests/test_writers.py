import pandas as pd
import pyarrow.parquet as pq
import pytest

from fercli.core.errors import DataError, FerError
from fercli.tables.writers import (
    TableWriter,
    check_output,
    errors_path,
    read_errors,
    read_metadata,
    read_table,
    schema,
    write_errors,
)

META = {"model": "m.pt", "weights_sha256": "ab" * 32, "fps": 5.0, "window": 5, "per_frame": False, "all_faces": False}


EXPRESSIONS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]


def second_rows(n, face_every=1, expressions=False):
    out = []
    for s in range(n):
        face = s % face_every == 0
        row = {
            "second": s,
            "start": float(s),
            "end": float(s + 1),
            "face": face,
            "valence": (s % 21) - 10 if face else None,
            "arousal": -((s % 21) - 10) if face else None,
            "valence_score": 0.5 * s if face else None,
            "arousal_score": -0.25 * s if face else None,
            "valence_conf": 0.5 if face else None,
            "arousal_conf": 0.25 if face else None,
            "face_share": 0.6 if face else 0.0,
        }
        if face:
            row.update(face_x0=10.5 + s, face_y0=20.25, face_x1=110.5 + s, face_y1=140.0, face_score=0.875)
            if expressions:
                row.update(dict(zip(EXPRESSIONS, [0.125] * 8)), expression="anger")
        out.append(row)
    return out


def finished(out, video, rows):
    """A table of one video, written to the end by a run of META."""
    w = writer(out)
    w.add(video, rows)
    w.finish([video])
    return out


def writer(out, resume=False, meta=META, overwrite=False, **kw):
    return TableWriter(
        out,
        meta,
        rows="sample" if kw.get("per_frame") else "second",
        all_faces=kw.get("all_faces", False),
        resume=resume,
        overwrite=overwrite,
        expressions=kw.get("expressions", False),
    )


def test_parquet_schema_types_and_metadata(tmp_path):
    out = tmp_path / "r.parquet"
    w = writer(out)
    w.add("a.mp4", second_rows(3, face_every=2))
    assert w.finish(["a.mp4"]) == 3
    table = pq.read_table(out)
    assert table.schema.names == [
        "video",
        "second",
        "start",
        "end",
        "face",
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
        "people",
    ]
    assert str(table.schema.field("samples").type) == "int16"
    assert str(table.schema.field("valence").type) == "int8"
    assert table.column("valence").to_pylist() == [-10, None, -8]
    for name in ("face_x0", "face_y0", "face_x1", "face_y1", "face_score", "face_share"):
        assert str(table.schema.field(name).type) == "float"  # float32
    assert table.column("face_x0").to_pylist() == [10.5, None, 12.5]  # null without a face
    assert table.column("face_share").to_pylist() == [0.6000000238418579, 0.0, 0.6000000238418579]
    assert read_metadata(out) == META
    assert not (tmp_path / "r.parquet.parts").exists()


def test_all_faces_and_per_frame_schemas():
    assert schema(all_faces=True).names[4:6] == ["person", "face"]
    assert schema("sample").names[:3] == ["video", "sample_index", "time"]
    assert schema("frame").names[:3] == ["video", "frame", "time"]


def test_interval_columns_only_with_a_calibration():
    names = schema(intervals=True).names
    assert not {"valence_lo", "arousal_hi"} & set(schema().names)
    assert names[names.index("samples") + 1 :][:4] == ["valence_lo", "valence_hi", "arousal_lo", "arousal_hi"]


def test_expression_columns_only_for_models_with_the_head(tmp_path):
    assert not set(EXPRESSIONS + ["expression"]) & set(schema().names)
    with_head = schema(expressions=True)
    assert with_head.names[-9:] == EXPRESSIONS + ["expression"]
    assert {str(with_head.field(n).type) for n in EXPRESSIONS} == {"float"}
    assert str(with_head.field("expression").type) == "string"
    for name in ("e.parquet", "e.csv"):  # CSV too: a column that is null in every row stays text
        w = writer(tmp_path / name, expressions=True)
        w.add("a.mp4", second_rows(3, face_every=2, expressions=True))
        w.add("b.mp4", second_rows(2, face_every=9, expressions=True)[1:])  # no face at all
        w.finish(["a.mp4", "b.mp4"])
    pq_df, csv_df = read_table(tmp_path / "e.parquet"), read_table(tmp_path / "e.csv")
    assert pq_df.expression.fillna("-").tolist() == ["anger", "-", "anger", "-"]
    pd.testing.assert_frame_equal(pq_df, csv_df, check_dtype=False, atol=1e-6)
    # resuming the CSV reads the all-null rows back and writes them again
    w = writer(tmp_path / "e.csv", resume=True, expressions=True)
    w.add("c.mp4", second_rows(1, expressions=True))
    w.finish(["a.mp4", "b.mp4", "c.mp4"])
    assert read_table(tmp_path / "e.csv").expression.fillna("-").tolist() == ["anger", "-", "anger", "-", "anger"]


@pytest.mark.parametrize("name", ["r.parquet", "r.csv"])
def test_resume_into_a_table_with_other_columns_is_refused(tmp_path, name):
    out = tmp_path / name
    finished(out, "a", second_rows(1))
    with pytest.raises(FerError, match=r"cannot resume.*lacks anger, .*expression.*--overwrite"):
        writer(out, resume=True, expressions=True)
    # and a table from before the face columns (an older fer) is refused the same way
    old = read_table(out).drop(columns=["face_x0", "face_y0", "face_x1", "face_y1", "face_score", "face_share"])
    old.to_csv(out, index=False) if name.endswith(".csv") else old.to_parquet(out)
    with pytest.raises(FerError, match="lacks face_x0"):
        writer(out, resume=True)
    writer(tmp_path / "fresh.parquet", resume=True)  # a new table resumes from nothing


def test_csv_holds_the_same_content_as_parquet(tmp_path):
    for name in ("r.parquet", "r.csv"):
        w = writer(tmp_path / name)
        w.add("b/x.mp4", second_rows(4, face_every=3))
        w.add("a.mp4", second_rows(2))
        w.finish(["b/x.mp4", "a.mp4"])
    pq_df, csv_df = read_table(tmp_path / "r.parquet"), read_table(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(pq_df, csv_df, check_dtype=False, atol=1e-6)
    assert list(pq_df["video"]) == ["b/x.mp4"] * 4 + ["a.mp4"] * 2


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(FerError, match="r.txt"):
        writer(tmp_path / "r.txt")


def test_killed_run_keeps_old_output_and_parts_for_resume(tmp_path):
    out = tmp_path / "r.parquet"
    finished(out, "a.mp4", second_rows(2))
    before = out.read_bytes()
    w = writer(out, resume=True)
    w.add("b.mp4", second_rows(3))  # ... and then the process dies: no finish()
    assert out.read_bytes() == before
    w2 = writer(out, resume=True)
    assert w2.done() == {"a.mp4", "b.mp4"}
    w2.add("c.mp4", second_rows(1))
    w2.finish(["a.mp4", "b.mp4", "c.mp4"])
    assert list(read_table(out)["video"]) == ["a.mp4"] * 2 + ["b.mp4"] * 3 + ["c.mp4"]


def test_resume_matches_clean_run(tmp_path):
    clean = writer(tmp_path / "clean.parquet")
    for v, n in [("a", 2), ("b", 3), ("c", 1)]:
        clean.add(v, second_rows(n))
    clean.finish(["a", "b", "c"])
    part = writer(tmp_path / "res.parquet")
    part.add("b", second_rows(3))
    part.finish(["a", "b", "c"])
    res = writer(tmp_path / "res.parquet", resume=True)
    assert res.done() == {"b"}
    res.add("a", second_rows(2))
    res.add("c", second_rows(1))
    res.finish(["a", "b", "c"])
    pd.testing.assert_frame_equal(read_table(tmp_path / "clean.parquet"), read_table(tmp_path / "res.parquet"))


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "r.parquet"
    finished(out, "a", second_rows(1))
    with pytest.raises(FerError, match="window"):
        writer(out, resume=True, meta={**META, "window": 9})


def test_a_killed_runs_parts_are_kept_unless_overwritten(tmp_path):
    out = tmp_path / "r.parquet"
    w = writer(out)
    w.add("old", second_rows(1))  # ... and the process dies
    with pytest.raises(FerError, match=r"r\.parquet\.parts.*--resume.*--overwrite"):
        writer(out)
    assert len(list((tmp_path / "r.parquet.parts").glob("*.parquet"))) == 1
    w = writer(out, overwrite=True)
    assert w.done() == set()
    w.add("new", second_rows(1))
    w.finish(["new"])
    assert list(read_table(out)["video"]) == ["new"]


@pytest.mark.parametrize("name", ["r.parquet", "r.csv"])
def test_an_existing_output_is_refused_untouched(tmp_path, name):
    out = tmp_path / name
    finished(out, "a.mp4", second_rows(2))
    before = out.read_bytes()
    with pytest.raises(FerError) as error:
        writer(out, meta={**META, "model": "other"})
    assert str(out) in str(error.value) and "--resume" in str(error.value) and "--overwrite" in str(error.value)
    assert out.read_bytes() == before and not (tmp_path / f"{name}.parts").exists()


def test_overwrite_replaces_the_output_with_the_new_run_alone(tmp_path):
    out = tmp_path / "r.parquet"
    finished(out, "a.mp4", second_rows(2))
    w = writer(out, overwrite=True, meta={**META, "model": "other"})
    assert w.done() == set()
    w.add("b.avi", second_rows(3))
    assert len(read_table(out)) == 2  # the old table stays whole until the new one replaces it
    w.finish(["b.avi"])
    assert list(read_table(out)["video"]) == ["b.avi"] * 3
    assert read_metadata(out)["model"] == "other"


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(FerError, match="exclude"):
        writer(tmp_path / "r.parquet", resume=True, overwrite=True)


def test_errors_sidecar_written_and_cleared(tmp_path):
    out = tmp_path / "results.parquet"
    path = write_errors(out, [("bad.mp4", "bad.mp4: not a video")])
    assert path == errors_path(out) == tmp_path / "results.parquet.errors.csv"
    assert pd.read_csv(path).to_dict("records") == [{"video": "bad.mp4", "error": "bad.mp4: not a video"}]
    assert write_errors(out, []) is None and not path.exists()


def test_an_out_that_cannot_be_a_table_is_refused_before_any_work(tmp_path):
    from fercli.core.errors import FerError
    from fercli.tables.writers import check_output

    (tmp_path / "results.parquet").mkdir()  # a folder where the table should go
    with pytest.raises(FerError, match=r"results.parquet is a folder: --out names the table"):
        check_output(tmp_path / "results.parquet", overwrite=True)
    with pytest.raises(FerError, match=r"the folder .*nowhere does not exist"):
        check_output(tmp_path / "nowhere" / "t.parquet")


def test_a_csv_and_a_parquet_output_own_their_errors_files(tmp_path):
    # results.csv and results.parquet shared results.errors.csv: one run replaced the other's.
    parquet, csv = tmp_path / "results.parquet", tmp_path / "results.csv"
    write_errors(parquet, [("a.mp4", "a.mp4: not a video")])
    write_errors(csv, [("b.mp4", "b.mp4: empty file")])
    assert pd.read_csv(errors_path(parquet)).video.tolist() == ["a.mp4"]
    assert pd.read_csv(errors_path(csv)).video.tolist() == ["b.mp4"]
    write_errors(csv, [])  # a clean CSV run clears its own, not the Parquet run's
    assert not errors_path(csv).exists() and errors_path(parquet).exists()


def test_a_users_file_by_the_errors_name_is_never_removed_or_replaced(tmp_path):
    out = tmp_path / "study.parquet"
    theirs = errors_path(out)
    theirs.write_text("participant,notes\n7,left early\n")
    assert write_errors(out, []) is None  # a clean run
    assert theirs.read_text() == "participant,notes\n7,left early\n"
    with pytest.raises(FerError, match="is not an errors file of fer's"):
        write_errors(out, [("a.mp4", "a.mp4: not a video")])
    with pytest.raises(FerError, match="is not an errors file of fer's"):  # said before any work
        check_output(out)
    assert theirs.read_text() == "participant,notes\n7,left early\n"


def test_readers_find_the_errors_file_an_older_fer_wrote(tmp_path):
    from fercli.tables.writers import find_errors

    out = tmp_path / "study.parquet"
    assert find_errors(out) is None
    legacy = tmp_path / "study.errors.csv"
    legacy.write_text("video,error\na.mp4,a.mp4: not a video\n")
    assert find_errors(out) == legacy
    legacy.write_text("participant,notes\n")  # the user's own file by that name is not one
    assert find_errors(out) is None
    write_errors(out, [("b.mp4", "b.mp4: empty")])
    assert find_errors(out) == errors_path(out)


OTHER_MODEL = {**META, "model": "other.pt", "weights_sha256": "cd" * 32}


def test_resume_refuses_the_parts_a_killed_run_of_another_model_left(tmp_path):
    # A run killed after one video leaves its part; resuming with another model merged the two
    # models' rows (parts recorded nothing), and exited 0.
    out = tmp_path / "r.parquet"
    writer(out).add("a.mp4", second_rows(3))  # killed before finish()
    with pytest.raises(
        FerError,
        match=r"000000.parquet: cannot resume, it was made with other settings "
        r"\(model: 'm.pt' vs 'other.pt', weights_sha256",
    ):
        writer(out, resume=True, meta=OTHER_MODEL)
    same = writer(out, resume=True)  # the same model resumes, and keeps the part
    assert same.done() == {"a.mp4"}


@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_resume_refuses_a_finished_table_of_another_model_csv_included(tmp_path, name):
    out = tmp_path / name
    finished(out, "a.mp4", second_rows(2))
    assert read_metadata(out) == META  # a CSV's record sits beside it (r.csv.fer.json)
    with pytest.raises(FerError, match="made with other settings"):
        writer(out, resume=True, meta=OTHER_MODEL)
    if name.endswith(".csv"):
        (tmp_path / "r.csv.fer.json").unlink()  # a CSV from an older fer, or made by hand
        with pytest.raises(FerError, match="does not record the model and settings"):
            writer(out, resume=True)


def test_the_errors_file_is_read_one_way_for_every_tool(tmp_path):
    """read_errors: [] without one, each error to its first line, DataError naming a damaged one;
    the report and the export take that error as it is (they had two policies)."""
    from fercli.views.export import ExportOptions, export
    from fercli.views.report import write_report

    out = tmp_path / "r.parquet"
    w = writer(out)
    w.add("a.mp4", second_rows(2, face_every=1))
    w.finish(["a.mp4"])
    assert read_errors(out) == []
    write_errors(out, [("b.mp4", "b.mp4: bad\nsecond line")])
    assert read_errors(out) == [("b.mp4", "b.mp4: bad")]
    errors_path(out).write_text("clip;reason\nb.mp4;gone\n")  # damaged: not fer's columns
    for tool in (
        lambda: write_report(out, tmp_path / "rep"),
        lambda: export(out, ExportOptions("elan", tmp_path / "ex")),
    ):
        with pytest.raises(
            DataError, match=r"r\.parquet\.errors\.csv: the errors file needs the columns video and error"
        ):
            tool()
