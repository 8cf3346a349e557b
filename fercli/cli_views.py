"""`fer plot`, `fer export`, `fer render` and `fer report`: an annotation table shown and handed on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import EXIT_FAILED, VerboseOption, command_console, error_line, exits


@exits()
def plot(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the pictures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the pictures in a non-empty --out folder."),
    verbose: VerboseOption = False,
) -> None:
    """Per-video valence/arousal timelines and a circumplex scatter of an annotation table."""
    from .views.plots import plot_table

    console = command_console(verbose)
    written = plot_table(table, out, overwrite=overwrite)
    console.print(f"wrote {len(written)} pictures to {out}")


EXPORT_EPILOG = """
Examples:

  fer export results.parquet --to elan --out elan/    # one ELAN document (.eaf) per clip

  fer export results.parquet --to elan-txt --out elan/    # one tab-delimited .txt per clip

  fer export results.parquet --to nova --out nova/    # .annotation + .annotation~ per clip and dimension
"""


@exits()
def export(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    to: str = typer.Option(
        ...,
        "--to",
        help="elan (an ELAN .eaf per clip, its video linked), elan-txt (tab-delimited text for ELAN's import) or nova "
        "(continuous annotations).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the files (created if missing)."),
    videos: Optional[Path] = typer.Option(
        None,
        "--videos",
        metavar="ROOT",
        help="Folder the table's video paths are relative to (ELAN links the clips); default: the table's folder.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files of an earlier export in --out."),
    verbose: VerboseOption = False,
) -> None:
    """Export an annotation table to ELAN or NOVA annotation files."""
    from .views.export import ExportOptions
    from .views.export import export as run_export

    console = command_console(verbose)
    result = run_export(table, ExportOptions(to=to, out_dir=out, overwrite=overwrite, videos=videos))

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)  # video names and paths are not markup

    say(f"wrote {len(result.files)} files for {len(result.clips)} clips to {out}")
    if result.no_files:
        say(f"no face in {len(result.no_files)} clips, so no files for them: {', '.join(result.no_files)}")
    if result.failed:
        names = ", ".join(video for video, _ in result.failed)
        failed = f"{len(result.failed)} clips failed in annotation and are not in the table"
        say(f"{failed}: {names} (see {result.errors_file})")
    for _, message in result.refused:  # the other clips were exported
        error_line(console, message)
    if result.refused:
        raise typer.Exit(EXIT_FAILED)


RENDER_EPILOG = """
Examples:

  fer render videos/a.mp4 --table results.parquet --out a_overlay.mp4

  fer render /data/a.mp4 --table results.parquet --name interviews/a.mp4 --out a_overlay.mp4
"""


@exits()
def render(
    video: Path = typer.Argument(..., help="The clip to draw on (a video file or a folder of frames)."),
    table: Path = typer.Option(
        ...,
        "--table",
        "-t",
        help="A `fer annotate` output (.parquet or .csv) with rows for the clip.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The overlay video (.mp4, .m4v, .mov or .mkv; H.264)."),
    name: Optional[str] = typer.Option(
        None,
        "--name",
        help="The clip's `video` value in the table (default: matched by file name / relative path).",
    ),
    frames_fps: float = typer.Option(
        25.0,
        "--frames-fps",
        help="Frame rate of a folder of frames (frames/s), as annotated.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    verbose: VerboseOption = False,
) -> None:
    """The clip re-encoded with the face box, valence/arousal bars and expression drawn on every frame."""
    from .views.render import render as run_render

    console = command_console(verbose)
    result = run_render(video, table, out, name=name, overwrite=overwrite, frames_fps=frames_fps)
    console.print(f"wrote {result.out} ({result.frames} frames of {result.video})", markup=False, highlight=False)


@exits()
def report(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the report (index.html)."),
    videos: Optional[Path] = typer.Option(
        None,
        "--videos",
        metavar="ROOT",
        help="Folder the table's video paths are relative to (what you gave fer annotate); "
        "default: the table's folder.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the report in a non-empty --out folder."),
    previews: bool = typer.Option(
        True,
        help="Make small H.264 copies of clips browsers cannot play (AVI, MJPEG, HEVC, MKV).",
    ),
    verbose: VerboseOption = False,
) -> None:
    """One self-contained HTML page for the batch: summary, timelines with the videos, circumplex."""
    from .views.report import write_report

    console = command_console(verbose)
    page = write_report(table, out, videos=videos, overwrite=overwrite, previews=previews)
    console.print(f"wrote {page}")
