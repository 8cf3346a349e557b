"""What `annotate` takes and gives back: options, per-video results, progress events."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import FerError
from ..media.inputs import FRAMES_FPS

DEFAULT_BATCH = 16  # face crops per backbone call; small batches run best on a 2-core CPU


@dataclass
class AnnotateOptions:
    batch_size: int = DEFAULT_BATCH  # face crops per backbone batch
    per_frame: bool = False  # a row per decoded video frame (the model on every frame): `frame`, `time`
    per_sample: bool = False  # a row per sample at the model's rate (5/s): `sample_index`, `time`
    all_faces: bool = False  # a row per person per second (a `person` column) instead of the person on screen longest
    resume: bool = False  # keep videos already in the output and annotate only the rest
    overwrite: bool = False  # replace an existing output with this run alone (else it is refused)
    frames_fps: float = FRAMES_FPS  # frame rate of image-sequence clips (frames/s)
    workers: int | None = None  # decode/face worker processes; None = by cores and device, 0 = a thread
    precision: str = "auto"  # "fp32", "bf16", "fp16" (CUDA only); "auto" = bf16 on CUDA, fp32 on a CPU
    reuse_boxes: int = 1  # samples in a row that may reuse steady face boxes; 0 = detect on every sample
    ray: str | None = None  # run on Ray: "local" starts an instance, "auto" or an address joins a cluster
    identity: str = (
        "auto"  # who is who across cuts: "faceid" (embedding), "texture", "auto" (faceid where its weights are)
    )
    decoder: str = "auto"  # where clips are decoded: "cpu", "gpu" (NVDEC) or "auto" (core.devices.resolve_decoder)
    calibration: Path | None = None  # a `fer calibrate` file: the table gets each second's interval
    # the backbone's: "torch" or "openvino" (CPU; fercli.nets.engines); None or "auto": a loaded network's own,
    # else $FER_ENGINE, else the fastest exact one here (engines.default_engine)
    engine: str | None = None

    @property
    def rows(self) -> str:
        """What a row is: "second", "sample" or "frame" (rows.ROW_KINDS)."""
        if self.per_frame and self.per_sample:
            raise FerError("--per-frame and --per-sample: choose one (a row per video frame, or per model sample)")
        return "frame" if self.per_frame else "sample" if self.per_sample else "second"


@dataclass
class VideoResult:
    video: str  # the `video` column
    rows: int = 0
    face_rows: int = 0  # rows with a face
    duration: float = 0.0  # seconds of video
    elapsed: float = 0.0  # wall-clock seconds spent on it
    error: str | None = None  # one line, naming the file, when it failed
    resumed: bool = False  # already in the output; not annotated again


@dataclass
class AnnotateResult:
    out: Path
    videos: list[VideoResult] = field(default_factory=list)
    skipped_files: int = 0  # files under the inputs that are not clips
    rows: int = 0  # rows in the output file
    errors_file: Path | None = None
    engine: str = ""  # the engine the backbone ran on: "torch" or "openvino"

    @property
    def failed(self) -> list[VideoResult]:
        return [v for v in self.videos if v.error]


@dataclass
class ProgressEvent:
    kind: str  # "model" (loading), "download" (weights: bytes), "start", "frames", "done"
    video: str = ""
    done: int = 0  # samples done (kind "frames"); bytes downloaded (kind "download")
    total: int = 0  # samples expected; the file's bytes (0: not known)
    result: VideoResult | None = None
