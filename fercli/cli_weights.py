"""`fer weights`: the registered model weights listed and downloaded."""

from __future__ import annotations

from typing import List

import typer

from .cli_common import VerboseOption, command_console, exits, stdout_console
from .cli_display import DownloadBar

weights_app = typer.Typer(help="List and download model weights.", no_args_is_help=True)


@weights_app.command("list")
@exits()
def weights_list(verbose: VerboseOption = False) -> None:
    """Show the registered weights and whether they are cached."""
    from rich.table import Table

    from .nets import weights

    command_console(verbose)
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
    stdout_console().print(table)
    stdout_console().print(f"cache: {weights.cache_dir()}")


@weights_app.command("download")
@exits()
def weights_download(
    names: List[str] = typer.Argument(None, help="Registry names (default: all)."),
    verbose: VerboseOption = False,
) -> None:
    """Download weights into the cache and verify them."""
    from .nets import weights

    console = command_console(verbose)
    for name in names or list(weights.registry()):
        with DownloadBar(console) as on_bytes:
            path = weights.fetch(name, progress=on_bytes)
        console.print(f"{name}: {path} (sha256 {weights.sha256(path)})")
