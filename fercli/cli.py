"""`fer`: the command line, a thin Typer shell over the fercli library.

Heavy imports (torch, PyAV, LiteRT) happen inside commands so `fer --help` is instant.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from . import __version__
from .core.errors import printable

# Options several commands share, declared once (Typer reads the metadata of Annotated).
ModelOption = Annotated[str, typer.Option(help="Registered model name or checkpoint path.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
CropBatchOption = Annotated[int, typer.Option(min=1, help="Face crops per backbone batch.")]
WorkersOption = Annotated[
    Optional[int], typer.Option(
        min=0,
        help="Decode/face worker processes (default: by cores; 0: a thread in this process).",
    )
]
PrecisionOption = Annotated[str, typer.Option(help="fp32, bf16 or fp16 (CUDA); auto: bf16 on CUDA, fp32 on a CPU.")]
EngineOption = Annotated[
    str,
    typer.Option(
        help="The backbone's engine: torch, or openvino on the CPU (pip install 'fercli\\[openvino]'; converted once "
        "per model, then cached).",
    ),
]
ReuseBoxesOption = Annotated[
    int, typer.Option(
        min=0,
        help="Samples in a row that may reuse face boxes between two detections that agree (0: detect every sample).",
    )
]
RayOption = Annotated[
    Optional[str],
    typer.Option(
        "--ray", metavar="ADDRESS",
        help="Run on Ray (pip install 'fercli\\[ray]'): local starts one here, auto joins the running cluster, "
        "or HOST:PORT.",
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
DecoderOption = Annotated[
    str,
    typer.Option(
        help="Where clips are decoded: cpu (PyAV), gpu (NVDEC on the model's GPU: pip install 'fercli\\[gpu]'), "
        "or auto (the GPU where the model runs on one and the decoder starts).",
    ),
]

EXIT_FAILED = 1  # some videos failed; the rest were written
EXIT_ERROR = 2  # nothing could run: bad options, weights, output path
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BUG = 3  # an unexpected error inside fer: one line (the traceback with -v), never mistaken for 1
RAY_ADDRESS = re.compile(r"local|auto|(ray://)?[\w.\-]+:\d+")  # what --ray takes as its value

app = typer.Typer(
    help="Per-second facial valence and arousal for folders of video clips.\n\n"
    "Example:  fer annotate videos/ --out results.parquet",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List and download model weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
benchmark_app = typer.Typer(help="Score predictions against ground truth, and measure speed.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")

ANNOTATE_EPILOG = """
Examples:

  fer annotate videos/ --out results.parquet

  fer annotate a.mp4 b.mkv afew-va/001 --out results.csv --model runs/exp1/best.pt

  fer annotate videos/ --out results.parquet --resume   # finish an interrupted run

  fer annotate videos/ --out frames.parquet --per-frame --all-faces

  fer annotate videos/ --out results.parquet --ray auto   # on the Ray cluster this machine belongs to
"""


def _console():
    from rich.console import Console

    # Literal by default: what fer prints holds file names, which may contain "[...]" (rich
    # markup) or escape sequences; the few styled words pass markup=True with the names escaped.
    return Console(stderr=True, markup=False, highlight=False)


def _shown(text) -> str:
    """A name or message as printed inside markup: control characters escaped, markup escaped."""
    from rich.markup import escape

    return escape(printable(str(text)))


def _setup_logging(console, verbose: bool) -> None:
    from rich.logging import RichHandler

    if console.is_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:  # a log file or a pipe: rich would wrap at 80 columns; each record stays one line
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler.addFilter(_literal_record)
    logger = logging.getLogger("fercli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _literal_record(record: logging.LogRecord) -> bool:
    """Log messages name files: shown with their control characters escaped (never raw codes)."""
    record.msg, record.args = printable(record.getMessage()), ()
    return True


def _stdout():
    from rich.console import Console

    return Console(markup=False, highlight=False)  # tables of runs, weights and paths: literal


def _command_console(verbose: bool, device: str | None = None):
    """The stderr console and logging a command runs with; exit 2 at once for an unknown --device."""
    from .core.devices import check_device

    console = _console()
    _setup_logging(console, verbose)
    if device is not None:
        check_device(device)
    return console


def _exits(on_interrupt: Callable[..., Callable[[], str]] | None = None):
    """A command with fer's exit codes: a FerError is its one error line and EXIT_ERROR; Ctrl-C,
    where `on_interrupt` is given, is the line it words and EXIT_INTERRUPTED.

    `on_interrupt(**arguments)` runs before the command, so it can note what exists then; it
    returns the function that words the interruption.
    """

    def decorate(command):
        signature = inspect.signature(command)

        @functools.wraps(command)
        def run(*args, **kwargs):
            from .core.errors import FerError

            arguments = signature.bind(*args, **kwargs).arguments
            interrupted = on_interrupt(**arguments) if on_interrupt is not None else None
            try:
                return command(*args, **kwargs)
            except FerError as e:
                raise _fail(_console(), str(e)) from None
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                _console().print(interrupted(), soft_wrap=True)  # one line, whatever the path's length
                raise typer.Exit(EXIT_INTERRUPTED) from None

        return run

    return decorate


def _annotate_interrupted(out: Path, overwrite: bool, **_) -> Callable[[], str]:
    existed = out.exists()

    def message() -> str:
        if overwrite and existed:
            return (f"interrupted: {out} is left as it was; this run's finished videos wait beside it "
                    "(--resume adds them, --overwrite starts again)")
        if out.exists():
            return f"interrupted: finished videos are in {out}; run again with --resume to complete it"
        # stopped before any video finished (or before any work): nothing was written
        return f"interrupted before any video finished: {out} was not written"

    return message


def _train_interrupted(out: Path, **_) -> Callable[[], str]:
    return lambda: f"interrupted: finished epochs are in {out}; run again with --resume to continue"


def _fail(console, message: str, code: int = EXIT_ERROR) -> typer.Exit:
    _error_line(console, message)
    return typer.Exit(code)


def _error_line(console, message: str) -> None:
    # escaped: messages hold paths and hints such as "fercli[ray]" that rich would read as markup
    # soft_wrap: the message stays one line (a long path is not broken) however narrow the terminal
    console.print(f"[red]error:[/red] {_shown(message)}", markup=True, highlight=False, soft_wrap=True)


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
@_exits(on_interrupt=_annotate_interrupted)
def annotate(
    paths: List[Path] = typer.Argument(..., help="Video files and folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output table: .parquet or .csv."),
    model: ModelOption = "hsemotion",
    device: DeviceOption = "auto",
    batch_size: CropBatchOption = 16,
    per_frame: bool = typer.Option(
        False, "--per-frame",
        help="One row per video frame (the model on every frame; frame = the video's index).",
    ),
    per_sample: bool = typer.Option(
        False, "--per-sample",
        help="One row per model sample (5/s: sample_index, time) instead of per second.",
    ),
    all_faces: bool = typer.Option(
        False, "--all-faces",
        help="A row per person per second (adds person); default: the person on screen longest.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing --out: annotate only the videos it lacks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out with this run alone."),
    frames_fps: float = typer.Option(25.0, min=0.001, help="Frame rate of image-sequence folders (frames/s)."),
    workers: WorkersOption = None,
    precision: PrecisionOption = "auto",
    engine: EngineOption = "torch",
    reuse_boxes: ReuseBoxesOption = 1,
    ray: RayOption = None,
    decoder: DecoderOption = "auto",
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="A fer calibrate file: add each second's interval (valence_lo/hi, arousal_lo/hi)."
    ),
    verbose: VerboseOption = False,
) -> None:
    """Annotate videos with per-second valence and arousal."""
    from .job.contract import AnnotateOptions
    from .job.pipeline import annotate as run_annotate

    console = _command_console(verbose, device)
    options = AnnotateOptions(
        batch_size=batch_size, per_frame=per_frame, per_sample=per_sample, all_faces=all_faces, resume=resume,
        overwrite=overwrite, frames_fps=frames_fps, workers=workers, precision=precision, reuse_boxes=reuse_boxes,
        ray=ray, engine=engine, decoder=decoder, calibration=calibration,
    )
    # The library checks everything before any work, and says when weights are downloading.
    with _AnnotateProgress(console) as bar:
        result = run_annotate(paths, out, model=model, device=device, options=options, progress=bar.update)
    _summary(console, result)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


class _AnnotateProgress:
    """Overall and per-video bars driven by the library's ProgressEvents."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),  # video names are not markup
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.overall = None
        self.current = None
        self.download = None

    def __enter__(self):
        self.progress.__enter__()
        self.overall = self.progress.add_task("videos", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, event) -> None:
        p = self.progress
        if event.kind == "start":
            self.current = p.add_task(printable(event.video)[-40:], total=None)
        elif event.kind == "frames" and self.current is not None:
            p.update(self.current, completed=event.done, total=event.total)
        elif event.kind == "done":
            if self.current is not None:
                p.remove_task(self.current)
                self.current = None
            p.advance(self.overall)
        elif event.kind == "download":
            self.download = _weights_bar(p, self.download, event)


def _weights_bar(progress, task, event):
    """The weights download's bar in `progress` (bytes shown in MB), added on its first event: its task."""
    if task is None:
        task = progress.add_task("weights (MB)", total=None)
    progress.update(task, completed=event.done // 1_000_000, total=event.total // 1_000_000 or None)
    return task


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
    from rich.text import Text

    table = Table(title=Text(f"{printable(str(result.out))} ({result.rows} rows)"), show_lines=False)
    for col in ("video", "seconds", "rows", "with face", "time (s)", "status"):
        table.add_column(col)
    for v in result.videos:
        status = Text("failed", style="red") if v.error else Text("resumed" if v.resumed else "ok")
        numbers = (f"{v.duration:.1f}", str(v.rows), str(v.face_rows), f"{v.elapsed:.1f}")
        table.add_row(Text(printable(v.video)), *numbers, status)
    console.print(table)
    if result.skipped_files:
        console.print(f"skipped {result.skipped_files} files that are not videos")
    if result.errors_file:
        console.print(f"[red]{len(result.failed)} failed[/red]: see {_shown(result.errors_file)}", markup=True)


@weights_app.command("list")
@_exits()
def weights_list(verbose: VerboseOption = False) -> None:
    """Show the registered weights and whether they are cached."""
    from rich.table import Table

    from .nets import weights

    _command_console(verbose)
    table = Table()
    for col in ("name", "format", "cached", "pinned by", "url"):
        table.add_column(col, overflow="fold")
    for name, entry in weights.registry().items():
        state = weights.cache_state(entry)
        said = {"missing": "no", "verified": "yes", "unpinned": "yes (unverified)"}
        cached = said.get(state, "no: the file there fails its hash")
        pin = entry.sha256 or (f"{entry.sha256_prefix}... (prefix)" if entry.sha256_prefix else None)
        pin = pin or (f"git blob {entry.git_blob}" if entry.git_blob else "(unpublished)")
        table.add_row(name, entry.format, cached, pin, entry.url)
    _stdout().print(table)
    _stdout().print(f"cache: {weights.cache_dir()}")


@weights_app.command("download")
@_exits()
def weights_download(
    names: List[str] = typer.Argument(None, help="Registry names (default: all)."),
    verbose: VerboseOption = False,
) -> None:
    """Download weights into the cache and verify them."""
    from .nets import weights

    console = _command_console(verbose)
    for name in names or list(weights.registry()):
        with _download_bar(console) as on_bytes:
            path = weights.fetch(name, progress=on_bytes)
        console.print(f"{name}: {path} (sha256 {weights.sha256(path)})")


TRAIN_EPILOG = """
Examples:

  fer train --data afew-va/ --out runs/paper

  fer train --data afew-va/ --out runs/mean --temporal mean     # does the LSTM matter?

  fer train --data afew-va/ --out runs/leaky --split window     # how much a window split inflates scores

  fer train --data afew-va/ --out runs/paper --resume --epochs 80

  fer annotate videos/ --out results.parquet --model runs/paper/best.pt
"""


@app.command(epilog=TRAIN_EPILOG)
@_exits(on_interrupt=_train_interrupted)
def train(
    data: Path = typer.Option(
        ..., "--data",
        help="AFEW-VA folder (one folder per clip, frames and <id>.json) or Aff-Wild2 root (<video>.txt files, "
        "cropped_aligned/).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o",
        help="Run folder: config, split, summary.csv, best.pt, last.pt, curves.png.",
    ),
    split: str = typer.Option(
        "clip",
        help="clip: train/val/test disjoint by clip and actor; window: paper-like random windows (inflated).",
    ),
    backbone: str = typer.Option(
        "efficientnet_b0",
        help="efficientnet_b0 (HSEmotion's architecture) or resnet50 (timm models).",
    ),
    init: str = typer.Option(
        "hsemotion",
        help="hsemotion (AffectNet, efficientnet_b0 only), imagenet (timm's ImageNet-1k; both downloaded once, "
        "verified) or random (seeded, offline).",
    ),
    temporal: str = typer.Option(
        "lstm",
        help="lstm; mean of the frame features; none: per-frame predictions averaged (ABAW baseline).",
    ),
    finetune: bool = typer.Option(False, "--finetune", help="Train the backbone too (no feature cache; AMP on CUDA)."),
    epochs: int = typer.Option(50, min=1, help="Maximum epochs."),
    patience: int = typer.Option(5, min=1, help="Stop after this many epochs without a better --monitor value."),
    fraction: float = typer.Option(
        1.0, min=0.0, max=1.0,
        help="Share of the training clips kept, whole actors at a time (the paper: 0.5).",
    ),
    loss: str = typer.Option(
        "ce",
        help="ce: the paper's summed cross-entropy; soft: against Gaussian soft labels (ordinal-aware).",
    ),
    monitor: str = typer.Option(
        "ccc",
        help="ccc: keep and stop by mean validation CCC; loss: by validation loss (the paper's).",
    ),
    batch_size: int = typer.Option(8, min=1, help="Windows per step."),
    lr: float = typer.Option(1e-4, min=0.0, help="Adam learning rate."),
    window: int = typer.Option(5, min=1, help="Frames per window (T)."),
    fps: float = typer.Option(5.0, min=0.001, help="Frames sampled per second of video."),
    frames_fps: float = typer.Option(
        25.0, min=0.001,
        help="Frame rate of the frame folders (frames/s): AFEW-VA 25; Aff-Wild2 the video's, mostly 30.",
    ),
    seed: int = typer.Option(0, help="Seed for initialisation, batch order and dropout (the split has its own)."),
    split_file: Optional[Path] = typer.Option(
        None,
        help="Split definition: {seed, ratios} or train/val/test clip lists.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    device: DeviceOption = "auto",
    verbose: VerboseOption = False,
) -> None:
    """Train the EfficientNet-B0 + LSTM model on AFEW-VA or Aff-Wild2; its best.pt is a --model for annotate."""
    from .training.loop import train as run_train
    from .training.options import TrainOptions

    console = _command_console(verbose, device)
    options = TrainOptions(
        data, out, split=split, backbone=backbone, init=init, temporal=temporal, finetune=finetune, epochs=epochs,
        patience=patience, monitor=monitor, fraction=fraction, loss=loss, batch_size=batch_size, lr=lr, window=window,
        fps=fps, frames_fps=frames_fps, seed=seed, split_file=split_file, resume=resume, device=device,
    )
    with _TrainProgress(console) as bar:
        result = run_train(options, progress=bar.update)
    _train_summary(console, result)


class _TrainProgress:
    """A bar for data preparation, one per epoch, and a line of metrics after each epoch."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.task = None
        self.download = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, event) -> None:
        p = self.progress
        if event.kind == "download":
            self.download = _weights_bar(p, self.download, event)
        elif event.kind in ("prepare", "epoch"):
            if self.task is not None and (event.kind == "epoch" or event.done <= 1):
                p.remove_task(self.task)
                self.task = None
            if self.task is None:
                label = "faces and features (clips)" if event.kind == "prepare" else f"epoch {event.epoch}"
                self.task = p.add_task(label, total=event.total)
            p.update(self.task, completed=event.done)
        elif event.kind == "batch" and self.task is not None:
            p.update(self.task, completed=event.done, total=event.total)
        elif event.kind == "epoch_end":
            m = event.metrics
            p.console.print(
                f"epoch {m['epoch']:>3}  loss {m['train_loss']:.3f} / val {m['val_loss']:.3f}  "
                f"val acc V {m['val_acc_valence']:.2f} A {m['val_acc_arousal']:.2f}  "
                f"val CCC V {m['val_ccc_valence']:.3f} A {m['val_ccc_arousal']:.3f}  ({m['seconds']:.1f} s)",
                highlight=False,
            )


def _train_summary(console, result) -> None:
    from rich.table import Table

    stop = "early stop" if result.stopped_early else "epoch limit"
    table = Table(title=f"{result.out}: best epoch {result.best_epoch} of {result.epochs} ({stop})")
    for col in ("test", "loss", "accuracy V", "accuracy A", "CCC V", "CCC A", "windows"):
        table.add_column(col)
    t = result.test
    table.add_row(
        "best.pt", f"{t['loss']:.3f}", f"{t['acc_valence']:.3f}", f"{t['acc_arousal']:.3f}",
        f"{t['ccc_valence']:.3f}", f"{t['ccc_arousal']:.3f}", str(result.windows["test"]),
    )
    console.print(table)
    p = result.prep
    console.print(
        f"data: {p.clips} clips, {p.samples} samples ({p.skipped} skipped, {p.from_landmarks} boxes from landmarks); "
        f"this run detected {p.detected} and encoded {p.encoded} frames, {p.features_cached} features from the cache"
    )
    console.print(f"annotate with: fer annotate VIDEOS --out results.parquet --model {result.best}")


BENCHMARK_ACCURACY_EPILOG = """
Examples:

  fer benchmark accuracy --truth afew-va/ --pred results.parquet --out bench/

  fer benchmark accuracy --truth labels.csv --pred results.csv

  fer benchmark accuracy --data afew-va/ --model runs/exp1/best.pt --out bench/   # the run's test clips

  fer benchmark accuracy --data afew-va/ --model hsemotion --split all
"""


@benchmark_app.command("accuracy", epilog=BENCHMARK_ACCURACY_EPILOG)
@_exits()
def benchmark_accuracy(
    truth: Optional[Path] = typer.Option(
        None, help="AFEW-VA folder, or CSV/Parquet with video, second|frame, valence, arousal."
    ),
    pred: Optional[Path] = typer.Option(None, help="A `fer annotate` output (.parquet or .csv)."),
    data: Optional[Path] = typer.Option(None, help="AFEW-VA folder to run --model on (instead of --truth/--pred)."),
    model: Optional[str] = typer.Option(None, help="With --data: a best.pt from `fer train`, or a registered name."),
    split: str = typer.Option(
        "test", help="With --data: the part of the model's training split to score: test, val, train or all."
    ),
    out: Optional[Path] = typer.Option(
        None, help="Folder for metrics.json, metrics.md and pictures (with --data: in window/ and second/)."
    ),
    frames_fps: Optional[float] = typer.Option(
        None, min=0.001, help="Frame rate of per-frame truth and frame folders (default 25; with --data the run's)."
    ),
    device: str = typer.Option("auto", help="With --data: auto, cpu or cuda."),
    batch_size: int = typer.Option(16, min=1, help="With --data: face crops per backbone batch."),
    cache_dir: Optional[Path] = typer.Option(None, help="With --data: cached boxes and features (default: fer's)."),
    verbose: VerboseOption = False,
) -> None:
    """Score a model: predictions against truth (--truth/--pred), or a checkpoint run directly on a
    split of a data set (--data/--model), per window and per second. CCC, r, RMSE, MAE, SAGR, accuracy, F1."""
    console = _command_console(verbose)
    pairs = {"--truth/--pred": (truth, pred), "--data/--model": (data, model)}
    given = {name for name, pair in pairs.items() if any(v is not None for v in pair)}
    if len(given) != 1:
        both = "two ways to benchmark; give one, not both" if given else "needed"
        raise _fail(console, f"--truth and --pred, or --data and --model: {both}")
    (mode,) = given
    if any(v is None for v in pairs[mode]):
        raise _fail(console, f"{mode}: give both options")
    if data is not None:
        return _benchmark_data(console, data, model, split, out, frames_fps, device, batch_size, cache_dir)
    from .scoring.metrics import score_tables
    from .views.plots import write_scores

    report = score_tables(truth, pred, frames_fps or 25.0)
    _print_metrics(report)
    if out is not None:
        written = write_scores(report, out)
        console.print(f"wrote {', '.join(p.name for p in written)} to {out}")


def _benchmark_data(console, data, model, split, out, frames_fps, device, batch_size, cache_dir) -> None:
    from rich.progress import Progress

    from .training.evaluate import evaluate

    with Progress(console=console, transient=True) as bar:
        tasks = {}

        def on_event(event):
            if event.stage not in tasks:
                label = {"prepare": "features", "annotate": "per second"}.get(event.stage, event.stage)
                tasks[event.stage] = bar.add_task(label, total=event.total)
            bar.update(tasks[event.stage], completed=event.done, total=event.total)

        ev = evaluate(
            data, model, split=split, frames_fps=frames_fps, device=device, batch_size=batch_size,
            cache_dir=cache_dir, progress=on_event,
        )
    s = ev.split
    clips = ", ".join(f"{p} {n}" for p, n in s.clips.items())
    console.print(f"{ev.model}: {s.kind} split (seed {s.seed}; clips {clips}); scoring {s.part}, from {s.source}")
    _print_metrics(ev.windows, title=f"window level ({ev.windows.matched} windows)", unit="windows")
    _print_metrics(ev.seconds, title=f"per second ({s.seconds_scope})", unit="seconds")
    if s.seconds_left_out:
        console.print(f"per second: {s.seconds_left_out} seconds of those clips left out (not {s.part} windows)")
    for video, error in ev.failed.items():
        console.print(f"[yellow]not annotated:[/yellow] {_shown(video)}: {_shown(error)}", markup=True, highlight=False)
    if out is not None:
        from .training.evaluate import write_evaluation

        write_evaluation(ev, out)
        console.print(f"wrote window/ and second/ (metrics.json, metrics.md, pictures) and evaluation.json to {out}")


def _print_metrics(report, title: str = "accuracy", unit: str = "rows") -> None:
    from rich.table import Table

    from .scoring.metrics import METRICS

    table = Table(title=title)
    for col in ("metric", "valence", "arousal", "mean"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key, label in METRICS.items():
        values = [report.metrics["valence"][key], report.metrics["arousal"][key], report.mean[key]]
        table.add_row(label, *(f"{v:.3f}" for v in values))
    console = _stdout()
    console.print(table)
    console.print(
        f"matched {report.matched} {unit}; truth only {report.truth_only}, prediction only {report.pred_only}, "
        f"prediction without a face {report.pred_without_face}"
    )
    from .scoring.metrics import intervals_line  # issue 39: where the table has bounds

    if (line := intervals_line(report)) is not None:
        console.print(line, markup=False, highlight=False)


@benchmark_app.command("compare")
@_exits()
def benchmark_compare(
    runs: List[Path] = typer.Argument(..., help="Run folders from `fer train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for compare.md and compare.json."),
    verbose: VerboseOption = False,
) -> None:
    """Training runs side by side (the paper's Table 2): test CCC, accuracy, F1, time, settings."""
    from rich.table import Table

    from .scoring.compare import COLUMNS, cell, compare

    console = _command_console(verbose)
    skipped = []

    def left_out(run: Path, message: str) -> None:  # the other runs are still compared
        skipped.append(run)
        _error_line(console, message)

    rows = compare(runs, out, on_error=left_out)
    table = Table(title="test part of each run (best checkpoint)")
    for header in ["run", *(h for _, h, _ in COLUMNS)]:
        table.add_column(header)
    for r in rows:
        table.add_row(r.name, *(cell(r, k, f) for k, _, f in COLUMNS))

    _stdout().print(table)
    if out is not None:
        console.print(f"wrote compare.md and compare.json to {out}")
    if skipped:
        names = ", ".join(map(str, skipped))
        console.print(f"{len(skipped)} run folder(s) left out: {names}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


@benchmark_app.command("speed")
@_exits()
def benchmark_speed(
    paths: List[Path] = typer.Argument(..., help="Videos or folders to time fer on."),
    model: ModelOption = "hsemotion",
    device: DeviceOption = "auto",
    batch_size: CropBatchOption = 16,
    workers: WorkersOption = None,
    precision: PrecisionOption = "auto",
    engine: EngineOption = "torch",
    ray: RayOption = None,
    reuse_boxes: ReuseBoxesOption = 1,
    decoder: DecoderOption = "auto",
    naive: bool = typer.Option(True, help="Also time the hand-written per-frame loop."),
    naive_seconds: Optional[float] = typer.Option(None, help="Read at most this much of each clip in the naive loop."),
    repeat: int = typer.Option(1, min=1, help="Time the run this many times and report the median run."),
    startup: bool = typer.Option(
        True,
        help="Also time a new process's start-up (imports, model, detector, first frame and batch).",
    ),
    cold: bool = typer.Option(
        False,
        help="Also run fer annotate and the naive loop on every clip in new processes, start-up included.",
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    verbose: VerboseOption = False,
) -> None:
    """Time start-up, each stage (decode, faces, backbone, head, write) and the whole run."""
    from .job.benchmark import speed
    from .job.contract import AnnotateOptions

    _command_console(verbose)
    options = AnnotateOptions(
        batch_size=batch_size, workers=workers, precision=precision, ray=ray, reuse_boxes=reuse_boxes, engine=engine,
        decoder=decoder,
    )
    report = speed(
        paths, model=model, device=device, options=options, naive=naive, naive_seconds=naive_seconds,
        repeat=repeat, startup=startup, cold=cold,
    )
    _print_speed(report)
    if json_out is not None:
        report.write_json(json_out)


def _print_speed(report) -> None:
    from rich.table import Table

    console = _stdout()
    console.print(" ".join(f"{k}={v}" for k, v in report.setup.items()))
    if (up := report.startup) is not None:
        console.print(
            f"start-up (new process): {up.total_s:.2f} s = imports {up.import_s:.2f} + model {up.model_load_s:.2f} "
            f"+ detector {up.detector_init_s:.2f} + first frame {up.first_frame_s:.2f} + first batch "
            f"{up.first_batch_s:.2f} (the next batch: {up.second_batch_s:.2f})"
        )
    table = Table(title="stages")
    table.caption = "decode and faces run beside the model (a thread or worker processes): busy shares overlap"
    for col in ("stage", "seconds", "items", "items/s", "busy"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, fig in report.stages.items():
        busy = fig.seconds / report.end_to_end_s
        table.add_row(name, f"{fig.seconds:.2f}", str(fig.items), f"{fig.per_second:.1f}", f"{busy:.0%}")
    console.print(table)
    d = report.derived
    console.print(
        f"end to end: {report.end_to_end_s:.2f} s for {report.video_seconds:.1f} s of video "
        f"({d['realtime_factor']:.1f}x real time), {d['decoded_fps']:.0f} decoded frames/s, "
        f"{d['sampled_fps']:.1f} sampled frames/s = {d['vs_backbone_only']:.0%} of backbone-only "
        f"({report.backbone_only_fps:.1f} crops/s)"
    )
    if len(report.end_to_end_runs_s) > 1:
        runs = ", ".join(f"{s:.2f}" for s in report.end_to_end_runs_s)
        console.print(f"runs: {runs} s; the figures above are the median run's")
    if d["in_series_fps"]:
        console.print(
            f"decode + faces alone: {report.producer_only_fps:.1f} samples/s; with the model one after the other: "
            f"{d['in_series_fps']:.1f} samples/s; fer overlapped: {d['sampled_fps']:.1f}"
        )
    if report.naive_s:
        console.print(
            f"naive loop: {d['naive_fps']:.1f} frames/s; fer is {d['speedup_vs_naive']:.1f}x faster on the same videos"
        )
    if (c := report.cold) is not None:
        console.print(
            f"cold, new processes, start-up included: fer annotate {c.fer_s:.2f} s, naive loop {c.naive_s:.2f} s "
            f"for the {c.clips} clip(s): fer is {c.speedup:.1f}x faster"
        )
    console.print(
        f"CPU: {report.cpu_s:.2f} core-seconds in {report.end_to_end_s:.2f} s = {d['cores_busy']:.2f} of "
        f"{report.setup['cores']} cores busy"
    )
    cuda = f", peak CUDA {report.peak_cuda_mb:.0f} MB" if report.peak_cuda_mb is not None else ""
    console.print(f"peak RSS {report.peak_rss_mb:.0f} MB{cuda}")


@app.command()
@_exits()
def plot(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the pictures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the pictures in a non-empty --out folder."),
    verbose: VerboseOption = False,
) -> None:
    """Per-video valence/arousal timelines and a circumplex scatter of an annotation table."""
    from .views.plots import plot_table

    console = _command_console(verbose)
    written = plot_table(table, out, overwrite=overwrite)
    console.print(f"wrote {len(written)} pictures to {out}")


EXPORT_EPILOG = """
Examples:

  fer export results.parquet --to elan --out elan/    # one ELAN document (.eaf) per clip

  fer export results.parquet --to elan-txt --out elan/    # one tab-delimited .txt per clip

  fer export results.parquet --to nova --out nova/    # .annotation + .annotation~ per clip and dimension
"""


@app.command(epilog=EXPORT_EPILOG)
@_exits()
def export(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    to: str = typer.Option(
        ..., "--to",
        help="elan (an ELAN .eaf per clip, its video linked), elan-txt (tab-delimited text for ELAN's import) or nova "
        "(continuous annotations).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the files (created if missing)."),
    videos: Optional[Path] = typer.Option(
        None, "--videos", metavar="ROOT",
        help="Folder the table's video paths are relative to (ELAN links the clips); default: the table's folder.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files of an earlier export in --out."),
    verbose: VerboseOption = False,
) -> None:
    """Export an annotation table to ELAN or NOVA annotation files."""
    from .views.export import ExportOptions, export as run_export

    console = _command_console(verbose)
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
        _error_line(console, message)
    if result.refused:
        raise typer.Exit(EXIT_FAILED)


RENDER_EPILOG = """
Examples:

  fer render videos/a.mp4 --table results.parquet --out a_overlay.mp4

  fer render /data/a.mp4 --table results.parquet --name interviews/a.mp4 --out a_overlay.mp4
"""


@app.command(epilog=RENDER_EPILOG)
@_exits()
def render(
    video: Path = typer.Argument(..., help="The clip to draw on (a video file or a folder of frames)."),
    table: Path = typer.Option(
        ..., "--table", "-t",
        help="A `fer annotate` output (.parquet or .csv) with rows for the clip.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The overlay video (.mp4, .m4v, .mov or .mkv; H.264)."),
    name: Optional[str] = typer.Option(
        None, "--name",
        help="The clip's `video` value in the table (default: matched by file name / relative path).",
    ),
    frames_fps: float = typer.Option(
        25.0, "--frames-fps",
        help="Frame rate of a folder of frames (frames/s), as annotated.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    verbose: VerboseOption = False,
) -> None:
    """The clip re-encoded with the face box, valence/arousal bars and expression drawn on every frame."""
    from .views.render import render as run_render

    console = _command_console(verbose)
    result = run_render(video, table, out, name=name, overwrite=overwrite, frames_fps=frames_fps)
    console.print(f"wrote {result.out} ({result.frames} frames of {result.video})", markup=False, highlight=False)


@app.command()
@_exits()
def report(
    table: Path = typer.Argument(..., help="A `fer annotate` output (.parquet or .csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the report (index.html)."),
    videos: Optional[Path] = typer.Option(
        None, "--videos", metavar="ROOT",
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

    console = _command_console(verbose)
    page = write_report(table, out, videos=videos, overwrite=overwrite, previews=previews)
    console.print(f"wrote {page}")


@app.command()
@_exits()
def doctor(verbose: VerboseOption = False) -> None:
    """Versions, decoders, CUDA, face detector and cached weights."""
    from .doctor import report

    _command_console(verbose)
    _stdout().print(report())


# --- fer calibrate (issue 39): intervals per second with a stated coverage ----------------------

calibrate_app = typer.Typer(help="Intervals per second with a stated coverage, from labelled clips.")
app.add_typer(calibrate_app, name="calibrate")

CALIBRATE_EPILOG = """
Examples:

  fer calibrate --truth afew-va/ --pred results.parquet --out calibration.json --coverage 0.9

  fer calibrate apply new.parquet --calibration calibration.json --out new-with-intervals.parquet
"""


@calibrate_app.callback(invoke_without_command=True, epilog=CALIBRATE_EPILOG)
def calibrate(
    ctx: typer.Context,
    truth: Optional[Path] = typer.Option(None, help="Labels: AFEW-VA or Aff-Wild2 folder, or CSV/Parquet with video, second|frame, valence, arousal."),
    pred: Optional[Path] = typer.Option(None, help="The `fer annotate` table of the same clips (.parquet, or .csv with its .fer.json)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The calibration to write (calibration.json)."),
    coverage: float = typer.Option(0.9, help="Share of seconds, 0..1 exclusive, the intervals are to hold over clips like these."),
    frames_fps: float = typer.Option(25.0, min=0.001, help="Frame rate of per-frame truth (frames/s)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    verbose: VerboseOption = False,
) -> None:
    """Measure how far the model's seconds fall from the truth on labelled clips (split conformal,
    over clips), for intervals with the stated coverage: `fer calibrate apply`, `fer annotate --calibration`."""
    if ctx.invoked_subcommand is not None:
        return
    from .core.errors import FerError
    from .scoring.calibration import calibrate_tables
    from .tables.intervals import write_calibration

    console = _command_console(verbose)
    if truth is None or pred is None or out is None:
        raise _fail(console, "--truth, --pred and --out are needed (or: fer calibrate apply TABLE ...)")
    if out.exists() and not overwrite:
        raise _fail(console, f"{out} already exists: --overwrite replaces it")
    try:
        cal = calibrate_tables(truth, pred, coverage, frames_fps)
        write_calibration(cal, out)
    except (FerError, OSError) as e:
        raise _fail(console, str(e)) from None
    for dim, q in cal.quantiles.items():
        console.print(f"{dim}: q = {q:.3f} x difficulty, from {cal.seconds[dim]} seconds of {cal.clips[dim]} clips",
                      markup=False, highlight=False)
    console.print(f"wrote {printable(str(out))} ({cal.coverage:g} coverage)", markup=False, highlight=False)


@calibrate_app.command("apply")
def calibrate_apply(
    table: Path = typer.Argument(..., help="A per-second `fer annotate` table of the calibrated model."),
    calibration: Path = typer.Option(..., "--calibration", help="A calibration.json from `fer calibrate`."),
    out: Path = typer.Option(..., "--out", "-o", help="The table with valence_lo/hi and arousal_lo/hi (.parquet or .csv)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    verbose: VerboseOption = False,
) -> None:
    """Add each second's interval to a table already written."""
    from .core.errors import FerError
    from .scoring.calibration import apply_calibration

    console = _command_console(verbose)
    try:
        rows = apply_calibration(table, calibration, out, overwrite=overwrite)
    except (FerError, OSError) as e:
        raise _fail(console, str(e)) from None
    console.print(f"wrote {printable(str(out))} ({rows} rows with intervals)", markup=False, highlight=False)


def main() -> None:
    """The `fer` command: `run` with the process's arguments, then out without torch's teardown."""
    from .core.runtime import exit_now

    exit_now(run(sys.argv[1:]))  # the outputs are closed: torch's teardown only costs time (core.runtime)


def run(argv: list[str]) -> int | str | None:
    """The Typer app, with a bare --ray filled in and unexpected errors reported; the exit code."""
    from .core.runtime import tune_process

    tune_process()  # the program's settings, before any command imports torch (fercli/core/runtime.py)
    args = bare_ray_means_local(argv)
    try:
        app(args=args)  # Typer ends by raising SystemExit with the command's exit code
    except SystemExit as e:
        return e.code
    except Exception as e:  # a bug in fer or below it; FerErrors were handled by the commands
        if "-v" in args or "--verbose" in args:
            traceback.print_exc()
        from .core.errors import typed_line

        print(f"error: unexpected {typed_line(e)} (a bug in fer: run with -v for the traceback)", file=sys.stderr)
        return EXIT_BUG
    return 0


def bare_ray_means_local(args: list[str]) -> list[str]:
    """`--ray` with no address starts a local Ray instance.

    Typer has no options with an optional value, so the bare flag is given its value here: when
    it comes last, or the next argument is not an address (local, auto, HOST:PORT, ray://HOST:PORT)
    but another option or a path such as `videos/`.
    """
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(args) or not RAY_ADDRESS.fullmatch(args[i + 1])):
            out.append("local")
    return out


if __name__ == "__main__":
    main()
