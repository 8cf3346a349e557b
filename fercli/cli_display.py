"""How `fer` shows the library's work: progress bars, summaries and tables of figures."""

from __future__ import annotations

from .cli_common import shown, stdout_console
from .core.errors import printable


class AnnotateProgress:
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


class DownloadBar:
    """A byte progress bar shown only while weights are being downloaded."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None

    def __enter__(self):
        return self.on_bytes

    def on_bytes(self, done: int, total: int | None) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        if self.progress is None:
            self.progress = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("weights", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


def annotate_summary(console, result) -> None:
    """A table of the annotated videos, then what was skipped and what failed."""
    from rich.table import Table
    from rich.text import Text

    ran = f", backbone on {result.engine}" if result.engine else ""
    table = Table(title=Text(f"{printable(str(result.out))} ({result.rows} rows{ran})"), show_lines=False)
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
        console.print(f"[red]{len(result.failed)} failed[/red]: see {shown(result.errors_file)}", markup=True)


class TrainProgress:
    """A bar for data preparation, one per epoch, and a line of metrics after each epoch."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
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
        elif event.kind in ("prepare", "epoch", "calibrate"):
            if self.task is not None and (event.kind == "epoch" or event.done <= 1):
                p.remove_task(self.task)
                self.task = None
            if self.task is None:
                phases = {"prepare": "faces and features (clips)", "calibrate": "calibration (validation clips)"}
                label = phases.get(event.kind, f"epoch {event.epoch}")
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


def train_summary(console, result) -> None:
    """The best checkpoint's test scores, the data prepared, and the command to annotate with it."""
    from rich.table import Table

    stop = "early stop" if result.stopped_early else "epoch limit"
    table = Table(title=f"{result.out}: best epoch {result.best_epoch} of {result.epochs} ({stop})")
    for col in ("test", "loss", "accuracy V", "accuracy A", "CCC V", "CCC A", "windows"):
        table.add_column(col)
    t = result.test
    table.add_row(
        "best.pt",
        f"{t['loss']:.3f}",
        f"{t['acc_valence']:.3f}",
        f"{t['acc_arousal']:.3f}",
        f"{t['ccc_valence']:.3f}",
        f"{t['ccc_arousal']:.3f}",
        str(result.windows["test"]),
    )
    console.print(table)
    p = result.prep
    console.print(
        f"data: {p.clips} clips, {p.samples} samples ({p.skipped} skipped, {p.from_landmarks} boxes from landmarks); "
        f"this run detected {p.detected} and encoded {p.encoded} frames, {p.features_cached} features from the cache"
    )
    intervals = f" --calibration {result.calibration}" if result.calibration else ""
    console.print(f"annotate with: fer annotate VIDEOS --out results.parquet --model {result.best}{intervals}")


def print_metrics(report, title: str = "accuracy", unit: str = "rows") -> None:
    """A table of the metrics per dimension, and what was matched."""
    from rich.table import Table

    from .scoring.metrics import METRICS

    table = Table(title=title)
    for col in ("metric", "valence", "arousal", "mean"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key, label in METRICS.items():
        values = [report.metrics["valence"][key], report.metrics["arousal"][key], report.mean[key]]
        table.add_row(label, *(f"{v:.3f}" for v in values))
    console = stdout_console()
    console.print(table)
    console.print(
        f"matched {report.matched} {unit}; truth only {report.truth_only}, prediction only {report.pred_only}, "
        f"prediction without a face {report.pred_without_face}"
    )
    from .scoring.metrics import intervals_line  # issue 39: where the table has bounds

    if (line := intervals_line(report)) is not None:
        console.print(line, markup=False, highlight=False)


def print_speed(report) -> None:
    """`fer benchmark speed`'s report: setup, start-up, stages, end to end, CPU and memory."""
    from rich.table import Table

    console = stdout_console()
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
