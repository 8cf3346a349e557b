"""`fer calibrate`: intervals per second with a stated coverage, from labelled clips (issue 39)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import VerboseOption, command_console, fail
from .core.errors import printable

calibrate_app = typer.Typer(help="Intervals per second with a stated coverage, from labelled clips.")

CALIBRATE_EPILOG = """
Examples:

  fer calibrate --truth afew-va/ --pred results.parquet --out calibration.json --coverage 0.9

  fer calibrate apply new.parquet --calibration calibration.json --out new-with-intervals.parquet
"""


@calibrate_app.callback(invoke_without_command=True, epilog=CALIBRATE_EPILOG)
def calibrate(
    ctx: typer.Context,
    truth: Optional[Path] = typer.Option(
        None, help="Labels: AFEW-VA or Aff-Wild2 folder, or CSV/Parquet with video, second|frame, valence, arousal."
    ),
    pred: Optional[Path] = typer.Option(
        None, help="The `fer annotate` table of the same clips (.parquet, or .csv with its .fer.json)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The calibration to write (calibration.json)."),
    coverage: float = typer.Option(
        0.9, help="Share of seconds, 0..1 exclusive, the intervals are to hold over clips like these."
    ),
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

    console = command_console(verbose)
    if truth is None or pred is None or out is None:
        raise fail(console, "--truth, --pred and --out are needed (or: fer calibrate apply TABLE ...)")
    if out.exists() and not overwrite:
        raise fail(console, f"{out} already exists: --overwrite replaces it")
    try:
        cal = calibrate_tables(truth, pred, coverage, frames_fps)
        write_calibration(cal, out)
    except (FerError, OSError) as e:
        raise fail(console, str(e)) from None
    for dim, q in cal.quantiles.items():
        console.print(
            f"{dim}: q = {q:.3f} x difficulty, from {cal.seconds[dim]} seconds of {cal.clips[dim]} clips",
            markup=False,
            highlight=False,
        )
    console.print(f"wrote {printable(str(out))} ({cal.coverage:g} coverage)", markup=False, highlight=False)


@calibrate_app.command("apply")
def calibrate_apply(
    table: Path = typer.Argument(..., help="A per-second `fer annotate` table of the calibrated model."),
    calibration: Path = typer.Option(..., "--calibration", help="A calibration.json from `fer calibrate`."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The table with valence_lo/hi and arousal_lo/hi (.parquet or .csv)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    verbose: VerboseOption = False,
) -> None:
    """Add each second's interval to a table already written."""
    from .core.errors import FerError
    from .scoring.calibration import apply_calibration

    console = command_console(verbose)
    try:
        rows = apply_calibration(table, calibration, out, overwrite=overwrite)
    except (FerError, OSError) as e:
        raise fail(console, str(e)) from None
    console.print(f"wrote {printable(str(out))} ({rows} rows with intervals)", markup=False, highlight=False)
