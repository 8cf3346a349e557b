"""Pictures are written as real, non-blank PNGs under safe names, for accuracy reports and tables."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fercli.core.errors import DataError
from fercli.scoring.metrics import score
from fercli.views import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    import matplotlib.image

    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not blank


def annotations(videos=("a.mp4", "sub/b.mkv"), n=12, scores=True):
    rng = np.random.default_rng(0)
    rows = []
    for video in videos:
        for s in range(n):
            face = not 4 <= s < 6  # a two-second gap without a face
            v, a = (int(rng.integers(-10, 11)), int(rng.integers(-10, 11))) if face else (None, None)
            rows.append(
                {
                    "video": video,
                    "second": s,
                    "start": float(s),
                    "end": s + 1.0,
                    "face": face,
                    "valence": v,
                    "arousal": a,
                }
            )
    df = pd.DataFrame(rows)
    for dim in ("valence", "arousal"):
        df[dim] = df[dim].astype("Int64")
        if scores:
            df[f"{dim}_score"] = df[dim].astype("Float64") * 0.9
    return df


def report(n=200):
    rng = np.random.default_rng(1)
    t = np.clip(np.round(rng.normal(0, 4, (n, 2))), -10, 10)
    p = np.clip(t + rng.integers(-2, 3, (n, 2)), -10, 10)
    truth = pd.DataFrame({"video": "x", "second": range(n), "valence": t[:, 0], "arousal": t[:, 1]})
    pred = pd.DataFrame(
        {"video": "x", "second": range(n), "valence": p[:, 0].astype(int), "arousal": p[:, 1].astype(int)}
    )
    pred["valence_score"], pred["arousal_score"] = p[:, 0] + 0.3, p[:, 1] - 0.3
    return score(truth, pred)


def test_accuracy_pictures(tmp_path):
    paths = plots.accuracy_pictures(report(), tmp_path / "out")
    assert [p.name for p in paths] == ["histograms.png", "confusion.png", "scatter.png"]
    for path in paths:
        assert_png(path)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_accuracy_pictures_without_scored_rows(tmp_path):
    truth = pd.DataFrame({"video": ["x"], "second": [0], "valence": [1.0], "arousal": [1.0]})
    pred = pd.DataFrame(
        {"video": ["x"], "second": [0], "valence": pd.array([None], "Int64"), "arousal": pd.array([None], "Int64")}
    )
    for path in plots.accuracy_pictures(score(truth, pred), tmp_path):
        assert_png(path)


def test_timelines_one_safe_file_per_video(tmp_path):
    df = annotations(videos=("a.mp4", "sub/b.mkv", "sub_b.mkv"))
    paths = plots.timelines(df, tmp_path / "tl")
    assert [p.name for p in paths] == ["a.mp4.png", "sub_b.mkv.png", "sub_b.mkv-2.png"]
    assert all(p.parent == tmp_path / "tl" for p in paths)
    for path in paths:
        assert_png(path)


def test_timelines_per_frame_and_all_faces(tmp_path):
    df = annotations(n=6).rename(columns={"second": "time"})
    df["time"] = df["time"] * 0.2
    assert_png(plots.timelines(df, tmp_path / "frames")[0])
    df = annotations(n=6, scores=False)
    df["person"] = pd.array([0, 1] * (len(df) // 2), "Int64")
    df = df.assign(second=df["second"] // 2)
    assert_png(plots.timelines(df, tmp_path / "faces")[0])


@pytest.mark.parametrize("scores", [True, False])
def test_circumplex(tmp_path, scores):
    df = annotations(scores=scores)
    if scores:
        df = df.drop(columns=["valence", "arousal"])  # a table with scores only still plots
    assert_png(plots.circumplex(df, tmp_path / "c.png"))


def test_plot_table_from_csv_and_parquet(tmp_path):
    df = annotations()
    df.to_csv(tmp_path / "r.csv", index=False)
    paths = plots.plot_table(tmp_path / "r.csv", tmp_path / "csv")
    assert [p.relative_to(tmp_path / "csv").as_posix() for p in paths] == [
        "timelines/a.mp4.png",
        "timelines/sub_b.mkv.png",
        "circumplex.png",
    ]
    for path in paths:
        assert_png(path)
    df.to_parquet(tmp_path / "r.parquet")
    assert len(plots.plot_table(tmp_path / "r.parquet", tmp_path / "pq")) == 3


def test_plot_table_errors(tmp_path):
    with pytest.raises(DataError, match="no such"):
        plots.plot_table(tmp_path / "missing.parquet", tmp_path)
    pd.DataFrame({"video": ["a"], "second": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="valence"):
        plots.plot_table(tmp_path / "bad.csv", tmp_path)


def test_safe_names():
    names = plots.safe_names(["a/b.mp4", "a_b.mp4", "A_B.mp4", "../x y.avi", "///"])
    assert names == {
        "a/b.mp4": "a_b.mp4",
        "a_b.mp4": "a_b.mp4-2",
        "A_B.mp4": "A_B.mp4-3",
        "../x y.avi": "x_y.avi",
        "///": "video",
    }


def test_safe_names_keep_letters_of_every_script(tmp_path):
    import unicodedata

    composed, decomposed = unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")
    videos = [
        "被験者1/笑顔.mp4",
        "被験者1/怒り.mp4",
        f"séance {composed}.mov",
        f"séance {decomposed}.mov",
        "ÉTÉ.mp4",
        "été.mp4",
    ]
    names = plots.safe_names(videos)
    assert names[videos[0]] == "被験者1_笑顔.mp4" and names[videos[1]] == "被験者1_怒り.mp4"
    # macOS's decomposed spelling is the same name, so it clashes with the composed one
    assert names[videos[2]] == f"séance_{composed}.mov" and names[videos[3]] == f"séance_{composed}.mov-2"
    assert names["ÉTÉ.mp4"] == "ÉTÉ.mp4" and names["été.mp4"] == "été.mp4-2"  # one file on a case-insensitive disk
    for stem in names.values():
        (tmp_path / f"{stem}.face12.valence.annotation~").write_text("")  # each a name the disk takes


def test_a_long_name_in_a_wide_script_is_cut_to_whole_characters_the_disk_takes(tmp_path):
    import hashlib

    video = "長" * 120 + ".mp4"  # 364 bytes of UTF-8: over the 255 a file name may have
    (stem,) = plots.safe_names([video]).values()
    assert len(stem.encode()) <= plots.MAX_STEM_BYTES
    assert stem == "長" * ((plots.MAX_STEM_BYTES - 9) // 3) + "-" + hashlib.sha1(video.encode()).hexdigest()[:8]
    (tmp_path / f"{stem}-2.face12.valence.annotation~").write_text("")


def test_import_does_not_load_matplotlib():
    code = "import sys, fercli.views.plots, fercli.scoring.metrics; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def value_lines(fig):
    """The plotted value lines per axis, by gid (axhline's zero line has none)."""
    return [{line.get_gid(): line.get_xydata() for line in ax.get_lines() if line.get_gid()} for ax in fig.axes]


def holds(xy, begin, end, value):
    """Whether the line has a flat piece at `value` from `begin` to `end` (consecutive points)."""
    return any(np.allclose(xy[i], (begin, value)) and np.allclose(xy[i + 1], (end, value)) for i in range(len(xy) - 1))


def test_timeline_draws_each_second_over_its_span():
    df = annotations(videos=("a.mp4",), n=8)
    df.loc[df.index[-1], "end"] = 7.4  # a last, partial second ends at the clip's end
    df = df.drop(index=df.index[2])  # a second missing from the table breaks the line too
    valence, arousal = value_lines(plots.timeline_figure(df, "a.mp4"))
    assert set(valence) == {"valence"} and set(arousal) == {"arousal"}
    for dim, lines in (("valence", valence), ("arousal", arousal)):
        xy = lines[dim]
        for start, end, value in zip(df["start"], df["end"], df[dim]):
            if pd.isna(value):  # seconds 4 and 5: no face, no point of the line in them
                inside = (xy[:, 0] > start) & (xy[:, 0] < end)
                assert not np.isfinite(xy[inside, 1]).any()
            else:
                assert holds(xy, start, end, value), (dim, start)
        finite = xy[np.isfinite(xy[:, 1])]
        assert finite[:, 0].min() == 0.0 and finite[:, 0].max() == 7.4  # the x extent: first start to clip end
        # second 1 ends at 2.0 and the next row (second 3) starts at 3.0: the line breaks in between
        assert not ((xy[:, 0] > 2.0) & (xy[:, 0] < 3.0)).any()
        assert np.isnan(xy[np.flatnonzero(np.isclose(xy[:, 0], 2.0))[-1] + 1]).all()


def test_timeline_per_face_and_per_frame_spans():
    df = annotations(videos=("a.mp4",), n=4, scores=False)
    df["person"] = pd.array([0, 1, 0, None], "Int64")
    valence = value_lines(plots.timeline_figure(df))[0]
    assert set(valence) == {"valence person 0", "valence person 1"}  # the null person row is no face's line
    assert holds(valence["valence person 0"], 2.0, 3.0, df.loc[2, "valence"])
    assert holds(valence["valence person 1"], 1.0, 2.0, df.loc[1, "valence"])
    frames = annotations(videos=("a.mp4",), n=5).drop(columns=["second", "start", "end"])
    frames["time"] = np.arange(5) * 0.2  # 5 samples/s: a sample holds until the next one
    xy = value_lines(plots.timeline_figure(frames))[0]["valence"]
    for t, v in zip(frames["time"], frames["valence"]):
        if not pd.isna(v):
            assert holds(xy, t, t + 0.2, v)


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    # The other commands refuse to write into a non-empty folder; plot replaced files silently.
    table = tmp_path / "r.csv"
    annotations().to_csv(table, index=False)
    out = tmp_path / "pics"
    out.mkdir()
    (out / "mine.txt").write_text("a colleague's notes")
    from fercli.core.errors import FerError

    with pytest.raises(FerError, match=r"pics is not empty: --overwrite replaces the pictures"):
        plots.plot_table(table, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    written = plots.plot_table(table, out, overwrite=True)
    assert written and (out / "mine.txt").read_text() == "a colleague's notes"


JAPANESE = "被験者1/笑顔.mp4"  # five letters DejaVu Sans, matplotlib's own font, does not have
CJK_FONT = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"  # Debian's fonts-droid-fallback (.ci/run)


@pytest.fixture
def fonts(monkeypatch):
    """plots.name_fonts() looked up afresh in the test, and again after it."""
    plots.name_fonts.cache_clear()
    yield monkeypatch
    plots.name_fonts.cache_clear()


def glyph_lines(caplog):
    return [r.getMessage() for r in caplog.records if "show as boxes" in r.getMessage()]


def test_video_names_in_japanese_are_drawn_with_an_installed_font(tmp_path, fonts, caplog, recwarn):
    import logging
    from pathlib import Path

    if not Path(CJK_FONT).is_file():
        pytest.skip("no CJK font installed (Debian's fonts-droid-fallback, which .ci/run installs)")
    assert "Droid Sans Fallback" in plots.name_fonts()
    df = annotations(videos=(JAPANESE, "b.mp4"))
    with caplog.at_level(logging.WARNING, logger="fercli"):
        assert_png(plots.timelines(df, tmp_path / "tl")[0])
        assert_png(plots.circumplex(df, tmp_path / "c.png"))
    # matplotlib says so (a warning per letter) when a letter has no font and is drawn as a box
    assert not glyph_lines(caplog) and not [w for w in recwarn if "missing from font" in str(w.message)]


def test_letters_no_font_draws_are_one_line_naming_the_folder(tmp_path, fonts, caplog, recwarn):
    import logging

    fonts.setattr(plots, "NAME_FONTS", ())  # as on a machine without a CJK font
    df = annotations(videos=(JAPANESE, "被験者2/笑顔.mp4"))
    with caplog.at_level(logging.WARNING, logger="fercli"):
        paths = plots.timelines(df, tmp_path / "tl")
    assert len(paths) == 2
    (line,) = glyph_lines(caplog)  # one for the two pictures
    assert line.startswith(f"{tmp_path / 'tl'}: 5 letters") and plots.NO_GLYPH_HINT in line
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_fer_plot_says_it_once_for_the_timelines_and_the_circumplex(tmp_path, fonts, caplog):
    import logging

    fonts.setattr(plots, "NAME_FONTS", ())
    annotations(videos=(JAPANESE,)).to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="fercli"):
        assert len(plots.plot_table(tmp_path / "t.csv", tmp_path / "out")) == 2
    (line,) = glyph_lines(caplog)
    assert line.startswith(f"{tmp_path / 'out'}: 5 letters")
