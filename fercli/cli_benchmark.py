"""`fer benchmark`: accuracy against ground truth, training runs compared, and speed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import (
    EXIT_FAILED,
    CropBatchOption,
    DecoderOption,
    DeviceOption,
    EngineOption,
    ModelOption,
    PrecisionOption,
    RayOption,
    ReuseBoxesOption,
    VerboseOption,
    WorkersOption,
    command_console,
    error_line,
    exits,
    fail,
    shown,
    stdout_console,
)
from .cli_display import print_metrics, print_speed

benchmark_app = typer.Typer(help="Score predictions against ground truth, and measure speed.", no_args_is_help=True)

BENCHMARK_ACCURACY_EPILOG = """
Examples:

  fer benchmark accuracy --truth afew-va/ --pred results.parquet --out bench/

  fer benchmark accuracy --truth labels.csv --pred results.csv

  fer benchmark accuracy --data afew-va/ --model runs/exp1/best.pt --out bench/   # the run's test clips

  fer benchmark accuracy --data afew-va/ --model hsemotion --split all
"""


@benchmark_app.command("accuracy", epilog=BENCHMARK_ACCURACY_EPILOG)
@exits()
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
    console = command_console(verbose)
    pairs = {"--truth/--pred": (truth, pred), "--data/--model": (data, model)}
    given = {name for name, pair in pairs.items() if any(v is not None for v in pair)}
    if len(given) != 1:
        both = "two ways to benchmark; give one, not both" if given else "needed"
        raise fail(console, f"--truth and --pred, or --data and --model: {both}")
    (mode,) = given
    if any(v is None for v in pairs[mode]):
        raise fail(console, f"{mode}: give both options")
    if data is not None:
        return _benchmark_data(console, data, model, split, out, frames_fps, device, batch_size, cache_dir)
    from .scoring.metrics import score_tables
    from .views.plots import write_scores

    report = score_tables(truth, pred, frames_fps or 25.0)
    print_metrics(report)
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
            data,
            model,
            split=split,
            frames_fps=frames_fps,
            device=device,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=on_event,
        )
    s = ev.split
    clips = ", ".join(f"{p} {n}" for p, n in s.clips.items())
    console.print(f"{ev.model}: {s.kind} split (seed {s.seed}; clips {clips}); scoring {s.part}, from {s.source}")
    print_metrics(ev.windows, title=f"window level ({ev.windows.matched} windows)", unit="windows")
    print_metrics(ev.seconds, title=f"per second ({s.seconds_scope})", unit="seconds")
    if s.seconds_left_out:
        console.print(f"per second: {s.seconds_left_out} seconds of those clips left out (not {s.part} windows)")
    for video, error in ev.failed.items():
        console.print(f"[yellow]not annotated:[/yellow] {shown(video)}: {shown(error)}", markup=True, highlight=False)
    if out is not None:
        from .training.evaluate import write_evaluation

        write_evaluation(ev, out)
        console.print(f"wrote window/ and second/ (metrics.json, metrics.md, pictures) and evaluation.json to {out}")


@benchmark_app.command("compare")
@exits()
def benchmark_compare(
    runs: List[Path] = typer.Argument(..., help="Run folders from `fer train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for compare.md and compare.json."),
    verbose: VerboseOption = False,
) -> None:
    """Training runs side by side (the paper's Table 2): test CCC, accuracy, F1, time, settings."""
    from rich.table import Table

    from .scoring.compare import COLUMNS, cell, compare

    console = command_console(verbose)
    skipped = []

    def left_out(run: Path, message: str) -> None:  # the other runs are still compared
        skipped.append(run)
        error_line(console, message)

    rows = compare(runs, out, on_error=left_out)
    table = Table(title="test part of each run (best checkpoint)")
    for header in ["run", *(h for _, h, _ in COLUMNS)]:
        table.add_column(header)
    for r in rows:
        table.add_row(r.name, *(cell(r, k, f) for k, _, f in COLUMNS))

    stdout_console().print(table)
    if out is not None:
        console.print(f"wrote compare.md and compare.json to {out}")
    if skipped:
        names = ", ".join(map(str, skipped))
        console.print(f"{len(skipped)} run folder(s) left out: {names}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


@benchmark_app.command("speed")
@exits()
def benchmark_speed(
    paths: List[Path] = typer.Argument(..., help="Videos or folders to time fer on."),
    model: ModelOption = "hsemotion",
    device: DeviceOption = "auto",
    batch_size: CropBatchOption = 16,
    workers: WorkersOption = None,
    precision: PrecisionOption = "auto",
    engine: EngineOption = "auto",
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

    command_console(verbose)
    options = AnnotateOptions(
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        ray=ray,
        reuse_boxes=reuse_boxes,
        engine=engine,
        decoder=decoder,
    )
    report = speed(
        paths,
        model=model,
        device=device,
        options=options,
        naive=naive,
        naive_seconds=naive_seconds,
        repeat=repeat,
        startup=startup,
        cold=cold,
    )
    print_speed(report)
    if json_out is not None:
        report.write_json(json_out)
