"""`fer annotate`: per-second valence and arousal for videos."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

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
    exits,
)
from .cli_display import AnnotateProgress, annotate_summary

ANNOTATE_EPILOG = """
Examples:

  fer annotate videos/ --out results.parquet

  fer annotate a.mp4 b.mkv afew-va/001 --out results.csv --model runs/exp1/best.pt

  fer annotate videos/ --out results.parquet --resume   # finish an interrupted run

  fer annotate videos/ --out frames.parquet --per-frame --all-faces

  fer annotate videos/ --out results.parquet --ray auto   # on the Ray cluster this machine belongs to
"""


def _annotate_interrupted(out: Path, overwrite: bool, **_) -> Callable[[], str]:
    existed = out.exists()

    def message() -> str:
        if overwrite and existed:
            return (
                f"interrupted: {out} is left as it was; this run's finished videos wait beside it "
                "(--resume adds them, --overwrite starts again)"
            )
        if out.exists():
            return f"interrupted: finished videos are in {out}; run again with --resume to complete it"
        # stopped before any video finished (or before any work): nothing was written
        return f"interrupted before any video finished: {out} was not written"

    return message


@exits(on_interrupt=_annotate_interrupted)
def annotate(
    paths: List[Path] = typer.Argument(..., help="Video files and folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output table: .parquet or .csv."),
    model: ModelOption = "hsemotion",
    device: DeviceOption = "auto",
    batch_size: CropBatchOption = 16,
    per_frame: bool = typer.Option(
        False,
        "--per-frame",
        help="One row per video frame (the model on every frame; frame = the video's index).",
    ),
    per_sample: bool = typer.Option(
        False,
        "--per-sample",
        help="One row per model sample (5/s: sample_index, time) instead of per second.",
    ),
    all_faces: bool = typer.Option(
        False,
        "--all-faces",
        help="A row per person per second (adds person); default: the person on screen longest.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing --out: annotate only the videos it lacks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out with this run alone."),
    frames_fps: float = typer.Option(25.0, min=0.001, help="Frame rate of image-sequence folders (frames/s)."),
    workers: WorkersOption = None,
    precision: PrecisionOption = "auto",
    engine: EngineOption = "auto",
    reuse_boxes: ReuseBoxesOption = 1,
    ray: RayOption = None,
    decoder: DecoderOption = "auto",
    identity: str = typer.Option(
        "auto",
        help="Who is who across cuts: faceid (a face-recognition embedding, dlib's CC0 network, fetched on first "
        "use), texture (the face box's texture), or auto (faceid where its weights can be had).",
    ),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="A fer calibrate file: add each second's interval (valence_lo/hi, arousal_lo/hi)."
    ),
    verbose: VerboseOption = False,
) -> None:
    """Annotate videos with per-second valence and arousal."""
    from .job.contract import AnnotateOptions
    from .job.pipeline import annotate as run_annotate

    console = command_console(verbose, device)
    options = AnnotateOptions(
        batch_size=batch_size,
        per_frame=per_frame,
        per_sample=per_sample,
        all_faces=all_faces,
        resume=resume,
        overwrite=overwrite,
        frames_fps=frames_fps,
        workers=workers,
        precision=precision,
        reuse_boxes=reuse_boxes,
        ray=ray,
        engine=engine,
        decoder=decoder,
        identity=identity,
        calibration=calibration,
    )
    # The library checks everything before any work, and says when weights are downloading.
    with AnnotateProgress(console) as bar:
        result = run_annotate(paths, out, model=model, device=device, options=options, progress=bar.update)
    annotate_summary(console, result)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)
