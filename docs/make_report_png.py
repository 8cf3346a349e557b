"""Make docs/report.png, the picture of `fer report` in the README and docs/views.md: a report of synthetic clips, shot
in headless Chromium.

    python docs/make_report_png.py [OUT.png]

Needs the test extra (PyAV, Playwright) and /usr/bin/chromium. The clips are the tests' astronaut
portrait moving over a gradient (tests/media.py); the labels are made up, smooth curves with a
stretch without a face, so the picture shows every part of the page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import media  # noqa: E402  (tests/media.py)
from conftest import CHROMIUM_ARGS  # noqa: E402  (the flags the suite's browser runs with)

from fercli.tables.writers import TableWriter, write_errors  # noqa: E402
from fercli.views.report import write_report  # noqa: E402


def labels(seconds: int, phase: float, gap: range, conf: bool) -> list[dict]:
    rng = np.random.default_rng(int(phase * 10))
    rows = []
    for s in range(seconds):
        face = s not in gap
        v = 6 * np.sin(0.5 * s + phase) + rng.normal(0, 0.8)
        a = 5 * np.cos(0.35 * s + 2 * phase) + rng.normal(0, 0.8)
        vl, al = (int(np.clip(round(x), -10, 10)) for x in (v, a))
        c = (float(rng.uniform(0.25, 0.95)), float(rng.uniform(0.25, 0.95))) if conf else (None, None)
        rows.append(
            {
                "second": s,
                "start": float(s),
                "end": float(s + 1),
                "face": face,
                "valence": vl if face else None,
                "arousal": al if face else None,
                "valence_score": float(v) if face else None,
                "arousal_score": float(a) if face else None,
                "valence_conf": c[0] if face else None,
                "arousal_conf": c[1] if face else None,
            }
        )
    return rows


def main(out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="fer-report-png-"))
    videos = work / "videos"
    clips = {"interview_01.webm": (12, 0.0, range(5, 8)), "session2/take3.webm": (9, 1.3, range(0, 0))}
    for name, (seconds, _, gap) in clips.items():
        path = videos / name
        path.parent.mkdir(parents=True, exist_ok=True)
        placements = lambda t, gap=gap: [] if int(t) in gap else [(40 + int(12 * t), 20, 200)]  # noqa: E731
        frames = (media.scene(320, 240, placements(i / 10), seed=i) for i in range(seconds * 10))
        media.write_coded(path, frames, 10, "libvpx-vp9", "yuv420p")
    table = videos / "results.parquet"
    meta = {"model": "runs/exp1/best.pt", "fps": 5.0, "window": 5, "fer_version": "0.1.0"}
    writer = TableWriter(table, meta, per_frame=False, all_faces=False, resume=False)
    for name, (seconds, phase, gap) in clips.items():
        writer.add(name, labels(seconds, phase, gap, conf=True))
    writer.finish(list(clips))
    write_errors(table, [("broken/cam4.mp4", "broken/cam4.mp4: cannot read video (moov atom not found)")])
    page_path = write_report(table, work / "report")

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(work / "profile"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1240, "height": 900},
        )
        page = context.new_page()
        page.goto(page_path.as_uri())
        # Seek the players so they show a frame (headless Chromium paints none before) and the
        # cursors sit mid-timeline.
        for i, t in enumerate((3.4, 6.2)):
            video = f"document.querySelectorAll('video')[{i}]"
            page.wait_for_function(f"{video}.readyState >= 1")
            page.evaluate(f"{video}.currentTime = {t}")
            page.wait_for_function(f"{video}.readyState >= 2 && !{video}.seeking")
        page.wait_for_timeout(300)
        shot = work / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        context.close()
    # A palette keeps the file small (the page is mostly flat colour).
    image = Image.open(shot).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} kB, {image.width}x{image.height})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "report.png")
