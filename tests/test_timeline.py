"""The report's timeline (`fercli.views.timeline`): the interval band on the line's scale, its
geometry checked by hand from the stated track layout, and painted where the bounds are in a real
browser (headless Chromium through Playwright, as tests/test_report.py drives it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import QUIET, TALK, Page, click_point, open_page, row, vp9_clip, write_batch

from fercli.views import timeline as timeline_module
from fercli.views.report import write_report

# A calibrated table: (value, lo, hi) per dimension and second; second 2 has no face, second 3
# a face without bounds (a table's bounds are null where its spread was).
BOUNDS = {
    0: ((3, 0.5, 6.0), (-2, -6.0, 1.5)),
    1: ((5, 1.0, 9.25), (-1, -4.0, 2.0)),
    3: ((-4, None, None), (6, None, None)),
}
CALIBRATION = {"coverage": 0.9, "quantiles": {"valence": 1.6, "arousal": 1.8}, "clips": {"valence": 12, "arousal": 11}}


def banded_row(s):
    if s not in BOUNDS:
        return row(s)
    (v, vlo, vhi), (a, alo, ahi) = BOUNDS[s]
    return row(s, v, a, valence_lo=vlo, valence_hi=vhi, arousal_lo=alo, arousal_hi=ahi)


@pytest.fixture(scope="module")
def banded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("banded")
    vp9_clip(root / "talk.webm")
    return write_batch(root, {"talk.webm": [banded_row(s) for s in range(4)]}, calibration=CALIBRATION)


def by_hand(dim: str, v: float) -> float:
    """y of label v on a timeline track, from the page's stated geometry: valence's track first,
    78 units high from y = 6, arousal's 10 below it; the 21 classes share the height, 10 at the top."""
    top = 6 + (0 if dim == "valence" else 78 + 10)
    return top + 78 * (10.5 - v) / 21


def test_the_band_spans_each_seconds_interval_on_the_lines_scale(banded, tmp_path):
    page = Page(write_report(banded, tmp_path / "r").read_text())
    (sid,) = (s["id"] for s in page.sections())
    svg = page.find("svg", "timeline", sid)[0]
    x0, x1, duration = float(svg["data-x0"]), float(svg["data-x1"]), float(svg["data-duration"])
    assert (x0, x1, duration) == (58, 748, 4)
    for k, dim in enumerate(("valence", "arousal")):
        bands = [b for b in page.find("rect", "band", sid) if dim in b["class"].split()]
        assert [b["data-second"] for b in bands] == ["0", "1"]  # none without a face, none without bounds
        segs = {s["data-second"]: s for s in page.find("line", dim, sid)}
        for b in bands:
            s = int(b["data-second"])
            value, lo, hi = BOUNDS[s][k]
            assert (float(b["data-lo"]), float(b["data-hi"])) == (lo, hi)
            assert float(b["x"]) == pytest.approx(x0 + (x1 - x0) * s / 4, abs=0.01)
            assert float(b["width"]) == pytest.approx((x1 - x0) / 4, abs=0.02)
            assert float(b["y"]) == pytest.approx(by_hand(dim, hi), abs=0.01)
            assert float(b["height"]) == pytest.approx(by_hand(dim, lo) - by_hand(dim, hi), abs=0.02)
            # The same scale and span as the line drawn for that second.
            seg = segs[str(s)]
            assert float(seg["y1"]) == pytest.approx(by_hand(dim, value), abs=0.01)
            assert (float(seg["x1"]), float(seg["x2"])) == pytest.approx(
                (float(b["x"]), float(b["x"]) + float(b["width"])), abs=0.02
            )
    text = write_report(banded, tmp_path / "r", overwrite=True).read_text()
    assert "90% interval, calibrated on 12 clips" in text and "90% interval, calibrated on 11 clips" in text
    assert "second 1: valence 1 to 9.25 (90% interval, calibrated on 12 clips)" in text


def test_a_table_without_bounds_has_no_band(tmp_path):
    batch = write_batch(tmp_path, {"talk.webm": TALK, "sub/quiet.mp4": QUIET})
    text = write_report(batch, tmp_path / "r").read_text()
    assert 'class="band' not in text and "interval" not in text


def test_the_band_is_painted_where_the_bounds_are(browser, banded, tmp_path):
    # Chromium's pixels: the band's colour (the line's, at BAND_OPACITY over white) fills the
    # rects computed by hand from the table, and appears nowhere else but the legend's key.
    page, problems, _ = open_page(browser, write_report(banded, tmp_path / "r"))
    svg = page.locator("svg.timeline").nth(0)
    svg.scroll_into_view_if_needed()
    shot = tmp_path / "timeline.png"
    svg.screenshot(path=str(shot))
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    scale = image.shape[1] / 760  # screenshot pixels per SVG unit (viewBox width 760)
    alpha = timeline_module.BAND_OPACITY
    for k, dim in enumerate(("valence", "arousal")):
        line = np.array([int(timeline_module.COLORS[dim][i : i + 2], 16) for i in (1, 3, 5)])
        band = np.abs(image - (alpha * line + (1 - alpha) * 255)).max(axis=2) <= 6
        inside = np.zeros(band.shape, bool)
        for s in (0, 1):
            _, lo, hi = BOUNDS[s][k]
            cols = slice(round((58 + 690 * s / 4) * scale) + 2, round((58 + 690 * (s + 1) / 4) * scale) - 2)
            rows = slice(round(by_hand(dim, hi) * scale) + 2, round(by_hand(dim, lo) * scale) - 2)
            inside[rows, cols] = True
        near = np.zeros(band.shape, bool)  # inside grown by 4 px, and the legend's key in the track's corner
        rr, cc = np.nonzero(inside)
        near[max(rr.min() - 6, 0) : rr.max() + 7, max(cc.min() - 6, 0) : cc.max() + 7] = True
        key_top = by_hand(dim, 10.5) + 3
        near[round(key_top * scale) - 2 : round((key_top + 10) * scale) + 3, : round(140 * scale)] = True
        assert band[inside].mean() > 0.6, dim  # the rest: the grid, the line and the segment
        assert band[~near].sum() == 0, dim
    # The pointer over a band is on the band, so the browser shows its title.
    hovered = page.evaluate(
        """(() => { const r = document.querySelector('rect.band.valence[data-second="1"]').getBoundingClientRect();
            const e = document.elementFromPoint(r.left + r.width / 2, r.top + 2);
            return [e.getAttribute('class'), e.querySelector('title').textContent]; })()"""
    )
    assert hovered == ["band valence", "second 1: valence 1 to 9.25 (90% interval, calibrated on 12 clips)"]
    # A click reads the second's interval out beside its value; a second without bounds has none.
    sid = page.locator("section.clip").nth(0).get_attribute("id")
    for t, said in ((1.5, "valence 5 [1 to 9.25], arousal -1 [-4 to 2]"), (3.5, "valence -4, arousal 6")):
        x, y = click_point(page, sid, t)
        page.mouse.click(x, y)
        assert page.locator(f"#{sid} output.readout").inner_text().endswith(f"second {int(t)}: {said}")
    assert problems == []
    page.close()
