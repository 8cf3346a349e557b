"""`fer export`: ELAN tab-delimited text and NOVA continuous annotations, checked against the
formats' published layouts (parsed with csv and xml.etree) and against the table as pandas reads it."""

import csv
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import av
import media
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.errors import FerError
from fercli.tables.writers import TableWriter, write_errors
from fercli.views.export import ExportOptions, export, export_table

META = {"model": "m.pt", "weights_sha256": None, "fps": 5.0, "window": 5, "per_frame": False, "all_faces": False}
ELAN_HEADER = ["Tier", "Begin Time", "End Time", "Annotation"]
runner = CliRunner()


def label(score):
    return int(np.clip(np.round(score), -10, 10))


def labelled(face, rng, conf):
    """One row's labels; scores may leave -10..10 as frame models' do."""
    if not face:
        return {"face": False}
    v, a = rng.uniform(-10.8, 10.8, 2)
    row = {"face": True, "valence": label(v), "arousal": label(a), "valence_score": v, "arousal_score": a}
    if conf:
        row["valence_conf"], row["arousal_conf"] = rng.uniform(0.05, 1, 2)
    return row


def seconds(n, faceless=(), last_end=None, conf=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n):
        end = last_end if (last_end is not None and s == n - 1) else s + 1.0
        rows.append({"second": s, "start": float(s), "end": float(end), **labelled(s not in faceless, rng, conf)})
    return rows


def write(path, clips, meta=META, **kw):
    w = TableWriter(
        path,
        {**meta, **kw},
        rows="sample" if kw.get("per_frame") else "second",
        all_faces=kw.get("all_faces", False),
        resume=False,
    )
    for video, rows in clips.items():
        w.add(video, rows)
    w.finish(list(clips))
    return path


@pytest.fixture
def batch(tmp_path):
    """Two clips whose names meet once made safe, a clip without any face, and one that failed."""
    clips = {
        "sub/a.mp4": seconds(4, faceless={1}, last_end=3.4),
        "sub_a.mp4": seconds(3, conf=False, seed=1),  # a frame model: no class probabilities
        "dark.mkv": seconds(2, faceless={0, 1}),
    }
    out = write(tmp_path / "r.parquet", clips)
    write_errors(out, [("broken.mp4", "no video stream this FFmpeg can decode")])
    return out


@pytest.fixture
def two_faces(tmp_path):
    """--all-faces: face 0 in every second, face 1 missing in second 1; a clip with no face."""
    rng = np.random.default_rng(2)
    rows = []
    for s in range(3):
        for person in (0, 1) if s != 1 else (0,):
            rows.append({"second": s, "start": float(s), "end": s + 1.0, "person": person, **labelled(True, rng, True)})
    clips = {"two.mkv": rows, "empty.mkv": [{"second": 0, "start": 0.0, "end": 0.8, "face": False}]}
    return write(tmp_path / "faces.parquet", clips, all_faces=True)


@pytest.fixture
def frames(tmp_path):
    rng = np.random.default_rng(3)
    rows = [{"sample_index": k, "time": k / 5.0, **labelled(k != 3, rng, True)} for k in range(7)]
    return write(tmp_path / "frames.parquet", {"c.mp4": rows}, per_frame=True)


def reference(table):
    """The table as pandas reads it, independent of fer's reader."""
    return pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table)


def read_elan(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ELAN_HEADER
    for row in rows[1:]:
        assert len(row) == 4
        assert re.fullmatch(r"\d+\.\d{3}", row[1]) and re.fullmatch(r"\d+\.\d{3}", row[2])  # seconds, ms precision
    return [(tier, float(begin), float(end), text) for tier, begin, end, text in rows[1:]]


def elan_expected(rows, tiers, name=lambda tier: tier):
    out = []
    for tier in tiers:
        shown = rows[rows["face"].fillna(False).astype(bool) & rows[tier].notna()]
        out += [
            (name(tier), round(b, 3), round(e, 3), str(int(v)))
            for b, e, v in zip(shown["start"], shown["end"], shown[tier])
        ]
    return out


def read_nova(header):
    """(scheme attributes, meta attributes, [(score, confidence)]) of a NOVA continuous annotation."""
    text = header.read_text()
    assert text.startswith('<?xml version="1.0" ?>')
    root = ET.fromstring(text)
    assert root.tag == "annotation" and root.get("ssi-v") == "3"
    info, meta, scheme = root.find("info"), root.find("meta"), root.find("scheme")
    assert info.get("ftype") == "ASCII"
    lines = Path(f"{header}~").read_text().splitlines()
    assert int(info.get("size")) == len(lines)
    pairs = []
    for line in lines:
        score, conf = line.split(";")  # exactly two fields
        pairs.append((float(score), float(conf)))
    return scheme.attrib, meta.attrib, pairs


def assert_nova_data(pairs, rows, dim, index="second"):
    """Line i is sample i: the table's score and confidence (1 without one), or NaN;0 without a face."""
    by_index = rows.set_index(index)
    for i, (score, conf) in enumerate(pairs):
        row = by_index.loc[i] if i in by_index.index else None
        if row is None or not bool(row["face"]):
            assert math.isnan(score) and conf == 0, (i, score, conf)
            continue
        assert np.float32(score) == np.float32(row[f"{dim}_score"])  # the value itself, to float32 precision
        expected = row.get(f"{dim}_conf")
        expected = 1.0 if expected is None or pd.isna(expected) else expected
        assert np.float32(conf) == np.float32(expected)


# --- ELAN --------------------------------------------------------------------------------------


def test_elan_one_file_per_clip_faceless_seconds_are_gaps(batch, tmp_path):
    result = export(batch, ExportOptions("elan-txt", tmp_path / "elan"))
    assert sorted(p.name for p in result.files) == ["dark.mkv.txt", "sub_a.mp4-2.txt", "sub_a.mp4.txt"]
    assert result.failed == [("broken.mp4", "no video stream this FFmpeg can decode")]
    ref = reference(batch)
    for video, name in [("sub/a.mp4", "sub_a.mp4.txt"), ("sub_a.mp4", "sub_a.mp4-2.txt"), ("dark.mkv", "dark.mkv.txt")]:
        got = read_elan(tmp_path / "elan" / name)
        assert got == elan_expected(ref[ref["video"] == video], ("valence", "arousal")), video
    a = read_elan(tmp_path / "elan" / "sub_a.mp4.txt")
    assert [(b, e) for tier, b, e, _ in a if tier == "valence"] == [
        (0.0, 1.0),
        (2.0, 3.0),
        (3.0, 3.4),
    ]  # second 1: no face
    assert read_elan(tmp_path / "elan" / "dark.mkv.txt") == []


def eaf_annotations(path) -> list[tuple[str, float, float, str]]:
    """An .eaf as pympi-ling (what labs read ELAN files with) reads it: (tier, begin s, end s, value)."""
    from pympi import Elan

    eaf = Elan.Eaf(str(path))
    out = []
    for tier in eaf.get_tier_names():
        out += [(tier, b / 1000, e / 1000, v) for b, e, v in sorted(eaf.get_annotation_data_for_tier(tier))]
    return out


def test_eaf_round_trips_through_pympi_ling(batch, tmp_path):
    result = export(batch, ExportOptions("elan", tmp_path / "elan"))
    assert sorted(p.name for p in result.files) == ["dark.mkv.eaf", "sub_a.mp4-2.eaf", "sub_a.mp4.eaf"]
    ref = reference(batch)
    for video, name in [("sub/a.mp4", "sub_a.mp4.eaf"), ("sub_a.mp4", "sub_a.mp4-2.eaf"), ("dark.mkv", "dark.mkv.eaf")]:
        got = [a for a in eaf_annotations(tmp_path / "elan" / name)]
        assert got == elan_expected(ref[ref["video"] == video], ("valence", "arousal")), video
    from pympi import Elan

    eaf = Elan.Eaf(str(tmp_path / "elan" / "dark.mkv.eaf"))  # no face at all: the tiers are there, empty
    assert (
        sorted(eaf.get_tier_names()) == ["arousal", "valence"] and eaf.media_descriptors == []
    )  # no such clip beside the table


def test_eaf_gives_each_face_its_tiers_and_participant(two_faces, tmp_path):
    from pympi import Elan

    path = next(p for p in export_table(two_faces, "elan", tmp_path / "e") if p.name == "two.mkv.eaf")
    eaf = Elan.Eaf(str(path))
    ref = reference(two_faces)
    for person in (0, 1):
        rows = ref[(ref["video"] == "two.mkv") & (ref["person"] == person)]
        tiers = [f"{t} (person {person})" for t in ("valence", "arousal", "expression") if t in rows]
        for tier in tiers:
            assert eaf.tiers[tier][2]["PARTICIPANT"] == f"person {person}"
        got = [a for a in eaf_annotations(path) if a[0] in tiers and a[0] != f"expression (person {person})"]
        assert got == elan_expected(rows, ("valence", "arousal"), name=lambda t, f=person: f"{t} (person {f})")


def test_eaf_links_the_clip_under_videos_with_its_time_origin(tmp_path):
    from pympi import Elan

    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    clip = media.make_clip(root / "sub" / "talk.mp4", 2.0, 10, (160, 120), media.still_face(30, 20, 80))
    table = write(tmp_path / "r.parquet", {"sub/talk.mp4": seconds(2), "../outside.mp4": seconds(2)})
    (tmp_path / "outside.mp4").write_bytes(clip.read_bytes())  # exists, but outside --videos
    out = tmp_path / "exports" / "elan"
    result = export(table, ExportOptions("elan", out, videos=root))
    by_name = {p.name: p for p in result.files}
    (link,) = Elan.Eaf(str(by_name["sub_talk.mp4.eaf"])).media_descriptors
    assert link["MEDIA_URL"] == clip.resolve().as_uri() and link["MIME_TYPE"] == "video/mp4"
    assert (out / link["RELATIVE_MEDIA_URL"]).resolve() == clip.resolve()
    with av.open(str(clip)) as c:  # PyAV: where the first frame sits after the stream's start
        stream = c.streams.video[0]
        first = min(p.pts for p in c.demux(stream) if p.size)
        origin = (first - (stream.start_time or 0)) * stream.time_base
    assert int(link["TIME_ORIGIN"]) == round(float(origin) * 1000)
    assert Elan.Eaf(str(by_name["outside.mp4.eaf"])).media_descriptors == []  # never linked outside --videos


def test_eaf_time_origin_is_where_the_first_frame_plays_in_a_video_that_starts_after_its_sound(tmp_path):
    from pympi import Elan

    clip = media.late_video(tmp_path / "late.mp4", lead_s=0.48)
    with av.open(str(clip)) as c:  # PyAV: the first frame's time on the file's clock, which starts with the sound
        first = float(next(c.decode(video=0)).time) - (c.start_time or 0) / av.time_base
    table = write(tmp_path / "r.parquet", {"late.mp4": seconds(1)})
    (path,) = export_table(table, "elan", tmp_path / "e")
    (link,) = Elan.Eaf(str(path)).media_descriptors
    assert first == pytest.approx(0.48) and int(link["TIME_ORIGIN"]) == round(first * 1000)


def test_elan_faces_are_tiers_of_one_file(two_faces, tmp_path):
    paths = export_table(two_faces, "elan-txt", tmp_path / "e")
    assert [p.name for p in paths] == ["two.mkv.txt", "empty.mkv.txt"]
    got = read_elan(paths[0])
    ref = reference(two_faces)
    expected = []
    for person in (0, 1):
        rows = ref[(ref["video"] == "two.mkv") & (ref["person"] == person)]
        expected += elan_expected(rows, ("valence", "arousal"), lambda tier, f=person: f"{tier} (person {f})")
    assert got == expected
    assert [b for tier, b, _, _ in got if tier == "valence (person 1)"] == [0.0, 2.0]
    assert read_elan(paths[1]) == []


def test_elan_expression_tier_from_csv(tmp_path):
    df = pd.DataFrame(seconds(3, faceless={2}))
    df.insert(0, "video", "x.mp4")
    df["expression"] = ["happy", "sad\tvery", None]  # a tab in free text must not split the row
    df.to_csv(tmp_path / "r.csv", index=False)
    (path,) = export_table(tmp_path / "r.csv", "elan-txt", tmp_path / "e")
    got = read_elan(path)
    assert [row for row in got if row[0] == "expression"] == [
        ("expression", 0.0, 1.0, "happy"),
        ("expression", 1.0, 2.0, "sad very"),
    ]
    assert [row[0] for row in got].count("valence") == 2


def test_elan_per_frame_samples_span_one_period(frames, tmp_path):
    (path,) = export_table(frames, "elan-txt", tmp_path / "e")
    got = [row for row in read_elan(path) if row[0] == "valence"]
    ref = reference(frames)
    shown = ref[ref["face"]]
    assert got == [
        ("valence", round(k / 5, 3), round((k + 1) / 5, 3), str(int(v)))
        for k, v in zip(shown["sample_index"], shown["valence"])
    ]
    assert 3 not in [round(b * 5) for _, b, _, _ in got]


# --- NOVA --------------------------------------------------------------------------------------


def test_nova_layout_and_values(batch, tmp_path):
    out = tmp_path / "nova"
    result = export(batch, ExportOptions("nova", out))
    names = sorted(p.name for p in result.files)
    assert names == sorted(
        f"{stem}.{dim}.annotation{tilde}"
        for stem in ("sub_a.mp4", "sub_a.mp4-2", "dark.mkv")
        for dim in ("valence", "arousal")
        for tilde in ("", "~")
    )
    ref = reference(batch)
    for video, stem, n in [("sub/a.mp4", "sub_a.mp4", 4), ("sub_a.mp4", "sub_a.mp4-2", 3), ("dark.mkv", "dark.mkv", 2)]:
        for dim in ("valence", "arousal"):
            scheme, meta, pairs = read_nova(out / f"{stem}.{dim}.annotation")
            assert scheme == {"name": dim, "type": "CONTINUOUS", "sr": "1", "min": "-10", "max": "10"}
            assert meta["annotator"] == "fer"
            assert len(pairs) == n
            assert_nova_data(pairs, ref[ref["video"] == video], dim)
    _, _, pairs = read_nova(out / "sub_a.mp4.valence.annotation")
    assert math.isnan(pairs[1][0]) and pairs[1][1] == 0  # the faceless second
    _, _, pairs = read_nova(out / "sub_a.mp4-2.valence.annotation")
    assert [c for _, c in pairs] == [1.0, 1.0, 1.0]  # frame model: no probability, full confidence


def test_nova_one_file_set_per_face(two_faces, tmp_path):
    out = tmp_path / "nova"
    result = export(two_faces, ExportOptions("nova", out))
    assert sorted(p.name for p in result.files) == sorted(
        f"two.mkv.person{f}.{dim}.annotation{t}" for f in (0, 1) for dim in ("valence", "arousal") for t in ("", "~")
    )
    assert result.no_files == ["empty.mkv"]
    ref = reference(two_faces)
    for person in (0, 1):
        rows = ref[(ref["video"] == "two.mkv") & (ref["person"] == person)]
        for dim in ("valence", "arousal"):
            scheme, meta, pairs = read_nova(out / f"two.mkv.person{person}.{dim}.annotation")
            assert meta["role"] == f"person{person}" and scheme["name"] == dim
            assert len(pairs) == 3  # the whole clip, also for the face that leaves
            assert_nova_data(pairs, rows, dim)
    _, _, pairs = read_nova(out / "two.mkv.person1.arousal.annotation")
    assert math.isnan(pairs[1][0]) and pairs[1][1] == 0


def test_nova_per_frame_at_the_sample_rate(frames, tmp_path):
    export_table(frames, "nova", tmp_path / "n")
    scheme, _, pairs = read_nova(tmp_path / "n" / "c.mp4.valence.annotation")
    assert scheme["sr"] == "5" and len(pairs) == 7
    assert_nova_data(pairs, reference(frames), "valence", index="sample_index")
    # Without metadata (CSV) the rate comes from the times: sample k is at k / fps.
    df = reference(frames).assign(time=lambda d: d["sample_index"] / 12.5)
    df.to_csv(tmp_path / "f.csv", index=False)
    export_table(tmp_path / "f.csv", "nova", tmp_path / "csv")
    scheme, _, pairs = read_nova(tmp_path / "csv" / "c.mp4.arousal.annotation")
    assert scheme["sr"] == "12.5"
    assert_nova_data(pairs, df, "arousal", index="sample_index")


def test_per_frame_csv_with_irregular_times_is_refused(frames, tmp_path):
    df = reference(frames)
    df.loc[2, "time"] += 0.05
    df.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(FerError, match="sample rate"):
        export_table(tmp_path / "f.csv", "nova", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- refusing and overwriting ------------------------------------------------------------------


def test_existing_files_are_not_overwritten_without_overwrite(batch, tmp_path):
    out = tmp_path / "nova"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # an unrelated file in the folder is fine
    first = export_table(batch, "nova", out)
    first[0].write_text("edited")
    with pytest.raises(FerError, match="already exist.*--overwrite"):
        export_table(batch, "nova", out)
    assert first[0].read_text() == "edited"
    again = export_table(batch, "nova", out, overwrite=True)
    assert again == first and first[0].read_text().startswith("<?xml")
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


@pytest.mark.parametrize(
    "case, message",
    [("missing", "no such file"), ("garbage", "cannot read"), ("suffix", "must end in"), ("columns", "missing column")],
)
def test_bad_tables(tmp_path, case, message):
    table = {
        "missing": tmp_path / "nope.parquet",
        "garbage": tmp_path / "g.parquet",
        "suffix": tmp_path / "t.txt",
        "columns": tmp_path / "c.csv",
    }[case]
    if case == "garbage":
        table.write_bytes(b"not parquet at all")
    elif case == "suffix":
        table.write_text("video,second\n")
    elif case == "columns":
        pd.DataFrame({"video": ["a"], "second": [0]}).to_csv(table, index=False)
    with pytest.raises(FerError, match=message):
        export_table(table, "elan", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_format(batch, tmp_path):
    with pytest.raises(FerError, match="elan, elan-txt, nova"):
        export_table(batch, "eaf", tmp_path / "out")


# --- the command -------------------------------------------------------------------------------


def fer(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "2000"})


def test_cli_exports_and_names_the_failed_clip(batch, tmp_path):
    result = fer("export", batch, "--to", "nova", "--out", tmp_path / "n")
    assert result.exit_code == 0, result.output
    assert "wrote 12 files for 3 clips" in result.output
    assert "broken.mp4" in result.output and "r.parquet.errors.csv" in result.output
    assert len(list((tmp_path / "n").iterdir())) == 12


@pytest.mark.parametrize("problem", ["missing", "to", "existing"])
def test_cli_errors_are_one_line_exit_2(batch, tmp_path, problem):
    table, to = (tmp_path / "none.parquet" if problem == "missing" else batch), ("tier" if problem == "to" else "elan")
    if problem == "existing":
        assert fer("export", table, "--to", to, "--out", tmp_path / "e").exit_code == 0
        before = {p.name: p.read_text() for p in (tmp_path / "e").iterdir()}
    result = fer("export", table, "--to", to, "--out", tmp_path / "e")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    if problem == "existing":
        assert {p.name: p.read_text() for p in (tmp_path / "e").iterdir()} == before
        assert fer("export", table, "--to", to, "--out", tmp_path / "e", "--overwrite").exit_code == 0


# --- per-frame tables of a real batch ----------------------------------------------------------


def pyav_times(path):
    """Each frame's time from the first frame's, as PyAV (a second decoder) reads the file."""
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    return [t - times[0] for t in times]


@pytest.fixture(scope="module")
def mixed_rates(tmp_path_factory, lstm_checkpoint):
    """One --per-frame table of a batch: clips at 25, 30 and 29.97 fps, and one of variable rate."""
    import fercli
    from fercli.job.contract import AnnotateOptions

    root = tmp_path_factory.mktemp("rates")
    face = media.still_face(30, 10, 90)
    for name, fps in (("pal.mp4", 25), ("ntsc30.mp4", 30), ("ntsc.mp4", 30000 / 1001)):
        media.make_clip(root / name, 1.6, fps, (160, 120), face)
    vfr = [0.0, 0.04, 0.08, 0.2, 0.24, 0.4, 0.5, 0.52, 0.7, 0.9]
    media.write_video(
        root / "vfr.mp4", (media.scene(160, 120, face(t), seed=i) for i, t in enumerate(vfr)), 25, times=vfr
    )
    out = root / "frames.parquet"
    fercli.annotate([root], out, model=str(lstm_checkpoint), options=AnnotateOptions(per_frame=True))
    return root, out


def test_elan_spans_of_each_video_frame_are_its_own_times(mixed_rates, tmp_path):
    root, table = mixed_rates
    export_table(table, "elan-txt", tmp_path / "e")
    for name in ("pal.mp4", "ntsc30.mp4", "ntsc.mp4", "vfr.mp4"):
        times = pyav_times(root / name)
        got = [(b, e) for tier, b, e, _ in read_elan(tmp_path / "e" / f"{name}.txt") if tier == "valence"]
        ends = times[1:] + [times[-1] + np.median(np.diff(times))]  # the last one frame period long
        assert len(got) == len(times), name
        assert np.abs(np.subtract(got, np.stack([times, ends], axis=1))).max() <= 0.0005 + 1e-9, name  # ms precision


def test_nova_gives_each_clip_its_own_rate_and_refuses_a_variable_one_alone(mixed_rates, tmp_path):
    _, table = mixed_rates
    result = runner.invoke(app, ["export", str(table), "--to", "nova", "--out", str(tmp_path / "n")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: vfr.mp4: ") and "ELAN" in errors[0]
    rates = {
        name: float(read_nova(tmp_path / "n" / f"{name}.valence.annotation")[0]["sr"])
        for name in ("pal.mp4", "ntsc30.mp4", "ntsc.mp4")
    }
    assert rates["pal.mp4"] == 25 and rates["ntsc30.mp4"] == 30
    assert rates["ntsc.mp4"] == pytest.approx(30000 / 1001, rel=1e-4)
    assert not list((tmp_path / "n").glob("vfr*"))


@pytest.fixture
def bounded(tmp_path):
    """A table with intervals (as `fer calibrate apply` writes it): second 1 has no face."""
    rows = seconds(3, faceless={1}, seed=4)
    for row in rows:
        if row["face"]:
            row.update(
                valence_lo=row["valence_score"] - 1.25,
                valence_hi=min(row["valence_score"] + 2.5, 10.0),
                arousal_lo=max(row["arousal_score"] - 0.75, -10.0),
                arousal_hi=row["arousal_score"] + 0.333,
            )
    w = TableWriter(tmp_path / "b.parquet", META, rows="second", all_faces=False, resume=False, intervals=True)
    w.add("a.mp4", rows)
    w.finish(["a.mp4"])
    return tmp_path / "b.parquet"


BOUNDS = ("valence_lo", "valence_hi", "arousal_lo", "arousal_hi")


def bound_expected(rows):
    shown = rows[rows["face"]]
    return [
        (t, round(b, 3), round(e, 3), f"{v:.2f}")
        for t in BOUNDS
        for b, e, v in zip(shown["start"], shown["end"], shown[t])
    ]


def test_elan_carries_the_intervals_bounds_as_tiers(bounded, tmp_path):
    ref = reference(bounded)
    export_table(bounded, "elan-txt", tmp_path / "txt")
    got = read_elan(tmp_path / "txt" / "a.mp4.txt")
    assert [a for a in got if a[0] in BOUNDS] == bound_expected(ref)
    assert [a for a in got if a[0] not in BOUNDS] == elan_expected(ref, ("valence", "arousal"))
    export_table(bounded, "elan", tmp_path / "eaf")
    assert [a for a in eaf_annotations(tmp_path / "eaf" / "a.mp4.eaf") if a[0] in BOUNDS] == bound_expected(ref)


def test_nova_carries_each_bound_as_a_continuous_annotation(bounded, tmp_path):
    ref = reference(bounded)
    export_table(bounded, "nova", tmp_path / "nova")
    for bound in BOUNDS:
        scheme, _, pairs = read_nova(tmp_path / "nova" / f"a.mp4.{bound}.annotation")
        assert scheme["name"] == bound and scheme["min"] == "-10" and scheme["max"] == "10"
        assert math.isnan(pairs[1][0]) and pairs[1][1] == 0  # no face, no interval
        for i in (0, 2):
            assert np.float32(pairs[i][0]) == np.float32(ref[bound][i]) and pairs[i][1] == 1.0
