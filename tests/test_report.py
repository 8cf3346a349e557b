"""`fer report`: the HTML page's numbers against pandas, its content, bad input, and the page in a
real browser (headless Chromium through Playwright): no console errors, a section per clip,
clicks on a timeline seek the video and move the cursor, playback moves the cursor, and a
screenshot that is not blank.
"""

from __future__ import annotations

import re
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import av
import media
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.errors import DataError, FerError
from fercli.tables.writers import TableWriter, read_errors, read_table, write_errors
from fercli.views import report as report_module
from fercli.views.report import summarize, write_report

CLIP_SECONDS = 4.0
META = {"model": "lstm.pt", "fps": 5.0, "window": 5, "per_frame": False, "all_faces": False, "fer_version": "test"}


def row(s, v=None, a=None, conf=(None, None), end=None, **extra):
    """One per-second row; no labels means no face."""
    face = v is not None
    return {
        "second": s,
        "start": float(s),
        "end": float(s + 1 if end is None else end),
        "face": face,
        "valence": v,
        "arousal": a,
        "valence_score": None if v is None else v + 0.2,
        "arousal_score": None if a is None else a - 0.2,
        "valence_conf": conf[0],
        "arousal_conf": conf[1],
        **extra,
    }


def write_batch(
    folder: Path, clips: dict[str, list[dict]], errors=(), all_faces=False, name="results.parquet", **meta
) -> Path:
    out = folder / name
    intervals = "calibration" in meta
    w = TableWriter(
        out, {**META, "all_faces": all_faces, **meta}, all_faces=all_faces, resume=False, intervals=intervals
    )
    for video, rows in clips.items():
        w.add(video, rows)
    w.finish(list(clips))
    write_errors(out, list(errors))
    return out


def vp9_clip(path: Path, seconds: float = CLIP_SECONDS) -> Path:
    # VP9 in WebM: a codec every Chromium build plays (H.264 depends on how it was built).
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (media.scene(160, 120, [(20 + 8 * i // 10, 10, 100)], seed=i) for i in range(int(seconds * 10)))
    return media.write_coded(path, frames, 10, "libvpx-vp9", "yuv420p")


TALK = [
    row(0, 3, -2, (0.9, 0.8)),
    row(1, 5, -1, (0.4, 0.3)),
    row(2),  # faceless
    row(3, -4, 6, (0.7, 0.95)),
]
QUIET = [row(0, 1, 1), row(1, 2, 0), row(2), row(3), row(4, -1, 2, end=4.5)]  # frame model: no confidence
ERRORS = [("broken/truncated.mp4", "broken/truncated.mp4: cannot read video (moov atom not found)\nmore detail")]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """videos/results.parquet: talk.webm (its file beside), sub/quiet.mp4 (no file), one failed clip."""
    root = tmp_path_factory.mktemp("batch") / "videos"
    vp9_clip(root / "talk.webm")
    return write_batch(root, {"talk.webm": TALK, "sub/quiet.mp4": QUIET}, errors=ERRORS)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """An --all-faces table: two faces, face 1 missing in second 1, nobody in second 2."""
    root = tmp_path_factory.mktemp("faces")
    vp9_clip(root / "clips" / "two.webm", 3.0)
    rows = [
        row(0, 2, 2, (0.8, 0.8), person=0),
        row(0, -6, 4, (0.5, 0.6), person=1),
        row(1, 3, 1, (0.8, 0.7), person=0),
        row(2, person=None),
    ]
    return write_batch(root, {"two.webm": rows}, all_faces=True, name="faces.csv")


# --- the page's content, without a browser -------------------------------------------------------


class Page(HTMLParser):
    """Start tags with their attributes and the id of the clip section they are in, plus text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict, str | None]] = []
        self.section: str | None = None
        self.text: dict[str, str] = {}
        self._text_of: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs.get("id")
        self.tags.append((tag, attrs, self.section))
        if "data-key" in attrs:
            self._text_of = attrs["data-key"]

    def handle_data(self, data):
        if self._text_of:
            self.text[self._text_of] = data
            self._text_of = None

    def find(self, tag, cls=None, section=None):
        return [
            a
            for t, a, s in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split()) and (section is None or s == section)
        ]

    def sections(self):
        return [a for a in self.find("section", "clip")]


def test_summary_numbers_match_pandas(batch):
    df = read_table(batch)
    summary = summarize(df, read_errors(batch))
    # The reference, computed another way: pandas on the table as read.
    seconds = df.groupby("video", sort=False)["second"].nunique()
    faced = df[df["face"] & df["valence"].notna()].groupby("video")["second"].nunique()
    assert [c.video for c in summary.clips] == list(seconds.index) == ["talk.webm", "sub/quiet.mp4"]
    for c in summary.clips:
        assert c.seconds == seconds[c.video]
        assert c.face_seconds == faced.get(c.video, 0)
        assert c.duration == df.loc[df["video"] == c.video, "end"].max()
        sub = df[(df["video"] == c.video) & df["face"]]
        assert c.mean_valence == pytest.approx(sub["valence"].astype(float).mean())
        assert c.mean_arousal == pytest.approx(sub["arousal"].astype(float).mean())
    assert summary.seconds == len(df) == 9
    assert summary.face_share == pytest.approx(faced.sum() / len(df)) == pytest.approx(6 / 9)
    assert summary.errors == [("broken/truncated.mp4", "broken/truncated.mp4: cannot read video (moov atom not found)")]

    page = Page(write_report(batch, batch.parent.parent / "rep").read_text())
    assert page.text["clips"] == "3 (2 annotated, 1 failed)"
    assert page.text["seconds"] == "9"
    assert page.text["seconds with a face"] == f"6 ({100 * 6 / 9:.1f}%)"
    assert page.text["errors"] == "1"


def test_page_content(batch, tmp_path):
    out = tmp_path / "report"
    path = write_report(batch, out)
    assert path == out / "index.html"
    text = path.read_text()
    page = Page(text)
    sections = page.sections()
    assert [s["data-video"] for s in sections] == ["talk.webm", "sub/quiet.mp4"]
    talk, quiet = (s["id"] for s in sections)
    # Faceless seconds are shaded, exactly those; labelled ones drawn once per dimension.
    assert [r["data-second"] for r in page.find("rect", "noface", talk)] == ["2"]
    assert [r["data-second"] for r in page.find("rect", "noface", quiet)] == ["2", "3"]
    segs = page.find("line", "valence", talk)
    assert [(s["data-second"], s["data-value"]) for s in segs] == [("0", "3"), ("1", "5"), ("3", "-4")]
    # Confidence shows as opacity: more confident, more opaque; no confidence (frame model): opaque.
    opacity = {s["data-second"]: float(s["stroke-opacity"]) for s in segs}
    assert opacity["0"] > opacity["3"] > opacity["1"] > 0
    assert {float(s["stroke-opacity"]) for s in page.find("line", "arousal", quiet)} == {1.0}
    # Second s spans [start, end): the quiet clip's last second ends at 4.5 s, its axis too.
    last = page.find("line", "valence", quiet)[-1]
    svg = page.find("svg", "timeline", quiet)[0]
    x0, x1 = float(svg["data-x0"]), float(svg["data-x1"])
    assert float(svg["data-duration"]) == 4.5
    assert float(last["x2"]) == pytest.approx(x1) and float(last["x1"]) == pytest.approx(
        x0 + (x1 - x0) * 4 / 4.5, abs=0.01
    )
    # The player only where the file exists, linked relative to the report.
    (video,) = page.find("video", section=talk)
    assert not video["src"].startswith(("/", "file:"))
    assert (out / urllib.parse.unquote(video["src"])).resolve() == (batch.parent / "talk.webm").resolve()
    assert page.find("video", section=quiet) == []
    assert "video not found under" in text
    # The failed clip, with its first line only.
    assert "broken/truncated.mp4: cannot read video (moov atom not found)" in text and "more detail" not in text
    # Circumplex: one dot per (clip, valence, arousal) pair, counts adding up to the faced seconds.
    points = page.find("circle", "point")
    assert sum(int(p["data-count"]) for p in points) == 6
    # Self-contained: nothing loaded from elsewhere but the video.
    assert not page.find("link") and not [s for s in page.find("script") if "src" in s]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    # The styles and the script are the package's asset files, inlined whole.
    assets = Path(report_module.__file__).parent / "assets"
    assert f"<style>{(assets / 'report.css').read_text()}</style>" in text
    assert f"<script>{(assets / 'report.js').read_text()}</script>" in text


def test_two_faces_one_timeline_each(two_faces, tmp_path):
    page = Page(write_report(two_faces, tmp_path / "r", videos=two_faces.parent / "clips").read_text())
    (section,) = page.sections()
    sid = section["id"]
    assert len(page.find("svg", "timeline", sid)) == 2
    shaded = [r["data-second"] for r in page.find("rect", "noface", sid)]
    assert shaded == ["2", "1", "2"]  # face 0: nobody in 2; face 1: missing in 1, nobody in 2
    assert [s["data-value"] for s in page.find("line", "valence", sid)] == ["2", "3", "-6"]
    summary = summarize(read_table(two_faces))
    assert (summary.clips[0].seconds, summary.clips[0].face_seconds, summary.clips[0].faces) == (3, 2, 2)
    assert len(page.find("video", section=sid)) == 1


def test_names_are_escaped(tmp_path):
    table = write_batch(tmp_path, {'<b>&"x".mp4': [row(0, 1, 1)]}, errors=[("<i>.mp4", "<i>.mp4: bad & worse")])
    text = write_report(table, tmp_path / "r").read_text()
    assert "<b>" not in text and "<i>" not in text
    assert "&lt;b&gt;&amp;&quot;x&quot;.mp4" in text and "&lt;i&gt;.mp4: bad &amp; worse" in text


def test_all_clips_failed(tmp_path):
    table = write_batch(tmp_path, {}, errors=[("a.mp4", "a.mp4: no frames")])
    page = Page(write_report(table, tmp_path / "r").read_text())
    assert page.sections() == [] and page.text["clips"] == "1 (0 annotated, 1 failed)"


def test_bad_input(batch, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        write_report(tmp_path / "missing.parquet", tmp_path / "r")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(DataError, match="cannot read table") as e:
        write_report(junk, tmp_path / "r")
    assert "\n" not in str(e.value)
    per_frame = tmp_path / "frames.csv"
    pd.DataFrame({"video": ["a"], "frame": [0], "time": [0.0], "valence": [1], "arousal": [1]}).to_csv(
        per_frame, index=False
    )
    with pytest.raises(DataError, match="per-frame"):
        write_report(per_frame, tmp_path / "r")
    with pytest.raises(FerError, match="--videos must be a folder"):
        write_report(batch, tmp_path / "r", videos=tmp_path / "nowhere")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda d: d.assign(second=d["second"].astype(float).where(d.index != 1)),
            "column second must hold whole numbers from 0",
        ),
        (lambda d: d.assign(second=d["second"] + 0.5), "column second must hold whole numbers from 0"),
        (lambda d: d.assign(video=d["video"].where(d.index != 2)), "column video is empty in row 3"),
        (lambda d: pd.concat([d, d.iloc[[0]]]), "has second 0 twice"),
    ],
)
def test_a_damaged_table_is_one_line_naming_it_exit_2(batch, tmp_path, edit, message):
    table = tmp_path / "t.parquet"
    edit(pd.read_parquet(batch)).to_parquet(table)
    res = CliRunner().invoke(app, ["report", str(table), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and message in res.output and str(table) in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_existing_report_folder(batch, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FerError, match="not empty: --overwrite"):
        write_report(batch, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    write_report(batch, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FerError, match="not a folder"):
        write_report(batch, tmp_path / "file", overwrite=True)


def test_cli(batch, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", str(batch), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "index.html").is_file()
    res = runner.invoke(app, ["report", str(batch), "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(app, ["report", str(batch), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert len(res.output.strip().splitlines()) == 1


# --- in a real browser ---------------------------------------------------------------------------


def open_page(browser, path: Path):
    page = browser.new_page()
    problems, requests = [], []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems, requests


def click_point(page, section_id: str, t: float, which: int = 0) -> tuple[float, float]:
    """Where time t is on a timeline, in the page's CSS pixels, from the SVG's box and viewBox alone."""
    svg = page.locator(f"#{section_id} svg.timeline").nth(which)
    svg.scroll_into_view_if_needed()
    box = page.evaluate(
        """([id, which, t]) => {
            const svg = document.querySelectorAll(`#${id} svg.timeline`)[which];
            const r = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
            const x = +svg.dataset.x0 + (+svg.dataset.x1 - +svg.dataset.x0) * t / +svg.dataset.duration;
            return [r.left + x * r.width / vb.width, r.top + r.height * 0.3];
        }""",
        [section_id, which, t],
    )
    return box[0], box[1]


def cursor_x(page, section_id: str, which: int = 0) -> float:
    r = page.locator(f"#{section_id} svg.timeline line.cursor").nth(which).bounding_box()
    return r["x"] + r["width"] / 2


def test_report_in_browser(browser, batch, tmp_path):
    from PIL import Image

    path = write_report(batch, tmp_path / "report")
    page, problems, requests = open_page(browser, path)
    sections = page.locator("section.clip")
    assert sections.count() == 2
    assert page.locator("section.clip h2").all_inner_texts() == ["talk.webm", "sub/quiet.mp4"]
    assert page.locator("table.errors tbody tr").count() == 1

    talk = sections.nth(0).get_attribute("id")
    page.wait_for_function(f"document.querySelector('#{talk} video').readyState >= 1", timeout=10_000)
    duration = page.evaluate(f"document.querySelector('#{talk} video').duration")
    assert duration == pytest.approx(CLIP_SECONDS, abs=0.15)

    # A click at 2.5 s on the timeline seeks the video there and puts the cursor under the click.
    x, y = click_point(page, talk, 2.5)
    page.mouse.click(x, y)
    page.wait_for_function(f"Math.abs(document.querySelector('#{talk} video').currentTime - 2.5) < 0.05", timeout=5000)
    assert cursor_x(page, talk) == pytest.approx(x, abs=1.5)
    assert page.locator(f"#{talk} output.readout").inner_text().startswith("2.50 s, second 2: no face")

    # Playback (muted, so headless Chromium's autoplay rules allow it) drags the cursor along.
    page.evaluate(f"(() => {{ const v = document.querySelector('#{talk} video'); v.currentTime = 0; }})()")
    page.wait_for_function(
        f"document.querySelector('#{talk} video').currentTime === 0 && !document.querySelector('#{talk} video').seeking"
    )
    start = cursor_x(page, talk)
    assert start == pytest.approx(click_point(page, talk, 0)[0], abs=1.5)
    page.evaluate(
        f"(() => {{ const v = document.querySelector('#{talk} video'); v.muted = true; return v.play(); }})()"
    )
    # Moved while still playing: the timeupdate events, not the pause, move it.
    page.wait_for_function(
        f"""(() => {{ const s = document.querySelector('#{talk}'), v = s.querySelector('video');
            return !v.paused && v.currentTime > 0.5 && +s.dataset.cursor > 0.3; }})()""",
        timeout=10_000,
    )
    page.evaluate(f"document.querySelector('#{talk} video').pause()")
    page.wait_for_function(
        f"""(() => {{ const s = document.querySelector('#{talk}'), v = s.querySelector('video');
            return v.paused && Math.abs(+s.dataset.cursor - v.currentTime) < 0.002; }})()"""
    )
    now = page.evaluate(f"document.querySelector('#{talk} video').currentTime")
    assert cursor_x(page, talk) > start + 5
    assert cursor_x(page, talk) == pytest.approx(click_point(page, talk, now)[0], abs=1.5)

    # The clip without a file: a click still moves the cursor and reads the second out.
    quiet = sections.nth(1).get_attribute("id")
    x, y = click_point(page, quiet, 1.5)
    page.mouse.click(x, y)
    assert cursor_x(page, quiet) == pytest.approx(x, abs=1.5)
    at, rest = page.locator(f"#{quiet} output.readout").inner_text().split(" s, ", 1)
    assert float(at) == pytest.approx(1.5, abs=0.02)  # the mouse lands on a whole pixel
    assert rest == "second 1: valence 2, arousal 0"

    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "shot.png"
    page.screenshot(path=str(shot), full_page=True)
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 24)
    assert image.width >= 1000 and len(colors) > 200  # text, both line colours, shading, the video frame
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    blue = np.abs(pixels - [0x3B, 0x6F, 0xB6]).sum(axis=1) < 30  # the valence colour, drawn opaque somewhere
    assert blue.sum() > 100

    assert problems == []
    assert all(u.startswith("file://") for u in requests), requests
    page.close()


def test_two_faces_in_browser(browser, two_faces, tmp_path):
    path = write_report(two_faces, tmp_path / "r", videos=two_faces.parent / "clips")
    page, problems, requests = open_page(browser, path)
    sid = page.locator("section.clip").nth(0).get_attribute("id")
    assert page.locator(f"#{sid} figure.face figcaption").all_inner_texts() == ["person 0", "person 1"]
    page.wait_for_function(f"document.querySelector('#{sid} video').readyState >= 1", timeout=10_000)
    # A click on the second face's timeline seeks the shared video and moves both cursors.
    x, y = click_point(page, sid, 1.25, which=1)
    page.mouse.click(x, y)
    page.wait_for_function(f"Math.abs(document.querySelector('#{sid} video').currentTime - 1.25) < 0.05", timeout=5000)
    assert cursor_x(page, sid, 1) == pytest.approx(x, abs=1.5)
    assert cursor_x(page, sid, 0) == pytest.approx(click_point(page, sid, 1.25, which=0)[0], abs=1.5)
    readout = page.locator(f"#{sid} output.readout").inner_text()
    assert readout.endswith(" s, second 1: person 0: valence 3 (0.80), arousal 1 (0.70); person 1: no face")
    assert problems == [] and all(u.startswith("file://") for u in requests)
    page.close()


def test_unplayable_video_plays_from_a_preview(browser, tmp_path):
    # MJPEG in AVI decodes in fer but not in Chromium: the page plays a small H.264 copy, says
    # so, and links the original; the copy holds the source's frames at their times.
    frames = [media.scene(640, 480, [(120, 60, 300)], seed=i) for i in range(10)]
    media.write_coded(tmp_path / "cam.avi", frames, 10, "mjpeg", "yuvj420p")
    table = write_batch(tmp_path, {"cam.avi": [row(0, 1, 2)]})
    page, problems, _ = open_page(browser, write_report(table, tmp_path / "r"))
    copy = tmp_path / "r" / "previews" / "cam.avi.mp4"
    with av.open(str(copy)) as c:
        got = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        assert c.streams.video[0].codec_context.name == "h264"
    assert [t for t, _ in got] == pytest.approx([i / 10 for i in range(10)], abs=1e-3)
    assert got[0][1].shape == (360, 480, 3)  # scaled to 360 px high, the same shape
    small = np.asarray(Image.fromarray(frames[3]).resize((480, 360), Image.BILINEAR)).astype(int)
    assert np.abs(got[3][1].astype(int) - small).mean() < 6  # the source's frame 3, as H.264 keeps it
    page.wait_for_function("document.querySelector('video').readyState >= 1", timeout=10_000)
    assert page.evaluate("document.querySelector('video').error") is None
    assert page.locator(".video-note").is_hidden()
    note = page.locator(".preview-note")
    assert note.is_visible() and "browsers do not play" in note.inner_text()
    assert note.locator("a").get_attribute("href") == "../cam.avi"
    assert problems == []
    page.close()


def test_previews_get_safe_names_in_the_previews_folder(tmp_path):
    # A clip in a subfolder, and one whose name is as long as a file name may be: their previews
    # lie in previews/ itself under the names plot and export give (".mp4" added to the long one
    # as it was would make 256 bytes, more than a file name may have).
    from urllib.parse import quote

    from fercli.views.plots import safe_names

    videos = ["sub/cam.avi", "c" * 248 + ".avi"]
    for video in videos:
        (tmp_path / video).parent.mkdir(exist_ok=True)
        media.write_coded(
            tmp_path / video,
            (media.scene(160, 120, [(20, 10, 100)], seed=i) for i in range(10)),
            10,
            "mjpeg",
            "yuvj420p",
        )
    table = write_batch(tmp_path, {video: [row(0, 1, 2)] for video in videos})
    page = write_report(table, tmp_path / "r").read_text()
    stems = safe_names(videos)
    made = sorted((tmp_path / "r" / "previews").iterdir())
    assert [p.name for p in made] == sorted(f"{stems[v]}.mp4" for v in videos) and all(p.is_file() for p in made)
    assert all(len(p.name.encode()) <= 255 for p in made)
    for video in videos:
        assert f'src="{quote(f"previews/{stems[video]}.mp4")}"' in page


def test_without_previews_an_unplayable_video_says_so(browser, tmp_path):
    frames = (media.scene(160, 120, [(20, 10, 100)], seed=i) for i in range(10))
    media.write_coded(tmp_path / "cam.avi", frames, 10, "mjpeg", "yuvj420p")
    table = write_batch(tmp_path, {"cam.avi": [row(0, 1, 2)]})
    page, problems, _ = open_page(browser, write_report(table, tmp_path / "r", previews=False))
    page.wait_for_function("document.querySelector('video').error !== null", timeout=10_000)
    assert page.locator(".video-note").is_visible()
    assert page.locator(".video-note").inner_text() == "the browser cannot play this file"
    assert not (tmp_path / "r" / "previews").exists()
    assert problems == []
    page.close()


def test_a_table_naming_paths_outside_videos_links_none_of_them(tmp_path):
    # A table edited or made elsewhere names ../ and absolute paths: the page links only clips
    # inside --videos (a link the user put there stays theirs to follow).
    root = tmp_path / "study" / "videos"
    vp9_clip(root / "inside.webm")
    vp9_clip(tmp_path / "secret.webm")  # exists, outside the folder given
    elsewhere = tmp_path / "elsewhere"
    vp9_clip(elsewhere / "linked.webm")
    (root / "linked.webm").symlink_to(elsewhere / "linked.webm")
    names = [
        "inside.webm",
        "../../secret.webm",
        str(tmp_path / "secret.webm"),
        "sub/../../../secret.webm",
        "linked.webm",
    ]
    table = write_batch(tmp_path, {name: TALK for name in names})
    html = write_report(table, tmp_path / "report", videos=root).read_text()
    sources = {
        urllib.parse.unquote(attrs["src"])
        for tag, attrs, _ in Page(html).tags
        if tag == "source" or (tag == "video" and "src" in attrs)
    }
    resolved = {(tmp_path / "report" / s).resolve() for s in sources}
    assert resolved == {(root / "inside.webm").resolve(), (elsewhere / "linked.webm").resolve()}
    assert "secret" not in " ".join(sources)


def test_the_circumplex_counts_seconds_as_the_summary_does(two_faces, tmp_path):
    # An --all-faces table: the circumplex said "3 seconds with a face" (its dots: a face per
    # second) where the summary said 2 seconds. One count of seconds everywhere, by hand: faces
    # 0 and 1 in second 0, face 0 in second 1, nobody in second 2.
    text = write_report(two_faces, tmp_path / "r", videos=two_faces.parent / "clips").read_text()
    note = re.search(r'<p class="note">(\d+) seconds with a face( \((\d+) face-seconds)?', text)
    summary_cell = re.search(r"seconds with a face</t[dh]><t[dh][^>]*>(\d+)", text)
    assert note and summary_cell, text[:2000]
    assert (int(note.group(1)), int(summary_cell.group(1)), note.group(3)) == (2, 2, "3")


def test_a_click_shows_the_frame_of_that_time_when_the_video_starts_after_its_sound(browser, tmp_path):
    clip = media.late_video(tmp_path / "late.mp4")
    with av.open(str(clip)) as c:  # PyAV: the first frame is 0.48 s into the file
        first = next(c.decode(video=0))
        assert float(first.time) == pytest.approx(0.48) and (c.start_time or 0) == 0
    table = write_batch(tmp_path, {"late.mp4": [row(0, 1, 2, end=1.2)]})
    page, problems, _ = open_page(browser, write_report(table, tmp_path / "r"))
    sid = page.locator("section.clip").nth(0).get_attribute("id")
    page.wait_for_function(f"document.querySelector('#{sid} video').readyState >= 1", timeout=10_000)
    x, y = click_point(page, sid, 0.62)  # the table's 0.62 s: frame 15 (0.62 * 25 = 15.5)
    page.mouse.click(x, y)
    page.wait_for_function(
        f"(() => {{ const v = document.querySelector('#{sid} video'); "
        "return Math.abs(v.currentTime - 1.1) < 0.01 && !v.seeking && v.readyState >= 2; })()",
        timeout=10_000,
    )
    shot = tmp_path / "shown.png"  # the page as Chromium painted it (a file:// video taints a canvas)
    page.locator(f"#{sid} video").screenshot(path=str(shot))
    image = np.asarray(Image.open(shot).convert("L"))
    level = float(
        np.median(image[image.shape[0] // 3 : image.shape[0] // 2, image.shape[1] // 3 : 2 * image.shape[1] // 3])
    )
    assert round(level / 8) == 15, level
    assert cursor_x(page, sid) == pytest.approx(x, abs=1.5)  # the cursor stays where the click was
    assert problems == []
    page.close()
