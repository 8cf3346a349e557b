"""What the `fer` commands share: option types, exit codes, consoles, and errors mapped to exit codes."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Annotated, Callable, Optional

import typer

from .core.errors import printable

# Options several commands share, declared once (Typer reads the metadata of Annotated).
ModelOption = Annotated[str, typer.Option(help="Registered model name or checkpoint path.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
CropBatchOption = Annotated[int, typer.Option(min=1, help="Face crops per backbone batch.")]
WorkersOption = Annotated[
    Optional[int],
    typer.Option(
        min=0,
        help="Decode/face worker processes (default: by cores; 0: a thread in this process).",
    ),
]
PrecisionOption = Annotated[str, typer.Option(help="fp32, bf16 or fp16 (CUDA); auto: bf16 on CUDA, fp32 on a CPU.")]
EngineOption = Annotated[
    str,
    typer.Option(
        envvar="FER_ENGINE",
        help="The backbone's engine: auto (openvino on a CPU where it is installed, else torch), torch, or openvino "
        "(the CPU only; converted once per model, then cached).",
    ),
]
ReuseBoxesOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Samples in a row that may reuse face boxes between two detections that agree (0: detect every sample).",
    ),
]
RayOption = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        metavar="ADDRESS",
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


def stderr_console():
    """The console commands print their messages, bars and errors on (stderr)."""
    from rich.console import Console

    # Literal by default: what fer prints holds file names, which may contain "[...]" (rich
    # markup) or escape sequences; the few styled words pass markup=True with the names escaped.
    return Console(stderr=True, markup=False, highlight=False)


def shown(text) -> str:
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


def stdout_console():
    """The console for what a command outputs (stdout)."""
    from rich.console import Console

    return Console(markup=False, highlight=False)  # tables of runs, weights and paths: literal


def command_console(verbose: bool, device: str | None = None):
    """The stderr console and logging a command runs with; exit 2 at once for an unknown --device."""
    from .core.devices import check_device

    console = stderr_console()
    _setup_logging(console, verbose)
    if device is not None:
        check_device(device)
    return console


def exits(on_interrupt: Callable[..., Callable[[], str]] | None = None):
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
                raise fail(stderr_console(), str(e)) from None
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                stderr_console().print(interrupted(), soft_wrap=True)  # one line, whatever the path's length
                raise typer.Exit(EXIT_INTERRUPTED) from None

        return run

    return decorate


def fail(console, message: str, code: int = EXIT_ERROR) -> typer.Exit:
    error_line(console, message)
    return typer.Exit(code)


def error_line(console, message: str) -> None:
    # escaped: messages hold paths and hints such as "fercli[ray]" that rich would read as markup
    # soft_wrap: the message stays one line (a long path is not broken) however narrow the terminal
    console.print(f"[red]error:[/red] {shown(message)}", markup=True, highlight=False, soft_wrap=True)
