"""`fer`: the command line, a thin Typer shell over the fercli library.

The commands live in the `cli_*` modules beside this one; this module assembles them into one app
in the order `fer --help` lists them. Heavy imports (torch, PyAV, LiteRT) happen inside commands so
`fer --help` is instant.
"""

from __future__ import annotations

import re
import sys
import traceback

import typer

from . import __version__
from .cli_annotate import ANNOTATE_EPILOG, annotate
from .cli_benchmark import benchmark_app
from .cli_calibrate import calibrate_app
from .cli_common import EXIT_BUG, VerboseOption, command_console, exits, stdout_console
from .cli_train import TRAIN_EPILOG, train
from .cli_views import EXPORT_EPILOG, RENDER_EPILOG, export, plot, render, report
from .cli_weights import weights_app

RAY_ADDRESS = re.compile(r"local|auto|(ray://)?[\w.\-]+:\d+")  # what --ray takes as its value

app = typer.Typer(
    help="Per-second facial valence and arousal for folders of video clips.\n\n"
    "Example:  fer annotate videos/ --out results.parquet",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(weights_app, name="weights")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(calibrate_app, name="calibrate")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    pass


@exits()
def doctor(verbose: VerboseOption = False) -> None:
    """Versions, decoders, CUDA, face detector and cached weights."""
    from .doctor import report

    command_console(verbose)
    stdout_console().print(report())


app.command(epilog=ANNOTATE_EPILOG)(annotate)
app.command(epilog=TRAIN_EPILOG)(train)
app.command()(plot)
app.command(epilog=EXPORT_EPILOG)(export)
app.command(epilog=RENDER_EPILOG)(render)
app.command()(report)
app.command()(doctor)


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
