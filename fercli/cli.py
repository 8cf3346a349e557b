"""`fer`: the command line, a thin Typer shell over the fercli library.

Heavy imports (torch, decord, mediapipe) happen inside commands so `fer --help` is instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__

EXIT_FAILED = 1  # some videos failed; the rest were written
EXIT_ERROR = 2  # nothing could run: bad options, weights, output path
EXIT_INTERRUPTED = 130  # Ctrl-C

app = typer.Typer(
    help="Per-second facial valence and arousal for folders of video clips.\n\n"
    "Example:  fer annotate videos/ --out results.parquet",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List and download model weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

ANNOTATE_EPILOG = """
Examples:

  fer annotate videos/ --out results.parquet

  fer annotate a.mp4 b.mkv afew-va/001 --out results.csv --model runs/exp1/best.pt

  fer annotate videos/ --out results.parquet --resume   # finish an interrupted run

  fer annotate videos/ --out frames.parquet --per-frame --all-faces
"""


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _setup_logging(console, verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logger = logging.getLogger("fercli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _fail(console, message: str, code: int = EXIT_ERROR) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    pass


@app.command(epilog=ANNOTATE_EPILOG)
def annotate(
    paths: List[Path] = typer.Argument(..., help="Video files and folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output table: .parquet or .csv."),
    model: str = typer.Option("hsemotion", help="Registered model name or checkpoint path."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(16, min=1, help="Face crops per backbone batch."),
    per_frame: bool = typer.Option(False, "--per-frame", help="One row per sampled frame instead of per second."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Annotate every tracked face (adds face_id)."),
    resume: bool = typer.Option(False, "--resume", help="Skip videos already in --out."),
    frames_fps: float = typer.Option(25.0, min=0.001, help="Frame rate of image-sequence folders (frames/s)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Annotate videos with per-second valence and arousal."""
    from .errors import FerError
    from .pipeline import AnnotateOptions, annotate as run_annotate
    from .model import load_model
    from .pipeline import resolve_device

    console = _console()
    _setup_logging(console, verbose)
    if device not in ("auto", "cpu", "cuda"):
        raise _fail(console, f"--device must be auto, cpu or cuda, not {device!r}")
    options = AnnotateOptions(model, device, batch_size, per_frame, all_faces, resume, frames_fps)
    try:
        with _download_bar(console) as on_bytes:
            net = load_model(model, resolve_device(device), progress=on_bytes)
        with _AnnotateProgress(console) as bar:
            result = run_annotate(paths, out, options, model=net, progress=bar.update)
    except FerError as e:
        raise _fail(console, str(e)) from None
    except KeyboardInterrupt:
        console.print(f"interrupted: finished videos are in {out}; run again with --resume to complete it")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _summary(console, result)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


class _AnnotateProgress:
    """Overall and per-video bars driven by the library's ProgressEvents."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.overall = None
        self.current = None

    def __enter__(self):
        self.progress.__enter__()
        self.overall = self.progress.add_task("videos", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, event) -> None:
        p = self.progress
        if event.kind == "start":
            self.current = p.add_task(event.video[-40:], total=None)
        elif event.kind == "frames" and self.current is not None:
            p.update(self.current, completed=event.done, total=event.total)
        elif event.kind == "done":
            if self.current is not None:
                p.remove_task(self.current)
                self.current = None
            p.advance(self.overall)


class _download_bar:
    """A byte progress bar shown only while weights are being downloaded."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None

    def __enter__(self):
        return self.on_bytes

    def on_bytes(self, done: int, total: int | None) -> None:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn, BarColumn

        if self.progress is None:
            self.progress = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("weights", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


def _summary(console, result) -> None:
    from rich.table import Table

    table = Table(title=f"{result.out} ({result.rows} rows)", show_lines=False)
    for col in ("video", "seconds", "rows", "with face", "time (s)", "status"):
        table.add_column(col)
    for v in result.videos:
        status = "[red]failed[/red]" if v.error else ("resumed" if v.resumed else "ok")
        table.add_row(v.video, f"{v.duration:.1f}", str(v.rows), str(v.face_rows), f"{v.elapsed:.1f}", status)
    console.print(table)
    if result.skipped_files:
        console.print(f"skipped {result.skipped_files} files that are not videos")
    if result.errors_file:
        console.print(f"[red]{len(result.failed)} failed[/red]: see {result.errors_file}")


@weights_app.command("list")
def weights_list() -> None:
    """Show the registered weights and whether they are cached."""
    from rich.console import Console
    from rich.table import Table

    from . import weights

    table = Table()
    for col in ("name", "format", "cached", "sha256", "url"):
        table.add_column(col, overflow="fold")
    for name, entry in weights.registry().items():
        cached = (weights.cache_dir() / entry.filename).exists()
        table.add_row(name, entry.format, "yes" if cached else "no", entry.sha256 or "(unpublished)", entry.url)
    Console().print(table)
    Console().print(f"cache: {weights.cache_dir()}")


@weights_app.command("download")
def weights_download(names: List[str] = typer.Argument(None, help="Registry names (default: all).")) -> None:
    """Download weights into the cache and verify them."""
    from .errors import FerError
    from . import weights

    console = _console()
    _setup_logging(console, False)
    try:
        for name in names or list(weights.registry()):
            with _download_bar(console) as on_bytes:
                path = weights.fetch(name, progress=on_bytes)
            console.print(f"{name}: {path} (sha256 {weights.sha256(path)})")
    except FerError as e:
        raise _fail(console, str(e)) from None


@app.command()
def doctor() -> None:
    """Versions, decoders, CUDA, face detector and cached weights."""
    from .doctor import report

    from rich.console import Console

    Console().print(report())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
