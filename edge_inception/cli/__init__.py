"""The ``edge-inception`` command line: a root app that registers one thin module per area (convert, engines,
evaluate, deploy, pipeline, model, stream, serve); what they share is ``edge_inception.cli_common``, below them all."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from .. import __version__
from ..cli_common import Output, handle_errors, log_to_stderr, reader_left
from ..cli_format import PlainTyper
from ..onnx_file import ort_spinning
from . import convert, deploy, engines, evaluate, model, pipeline, stream
from .fleet import app as fleet_app
from .serve import app as serve_app

app = PlainTyper(
    name="edge-inception",
    help="GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click output: a usage error ends in one "Error: ..." line, and start-up skips rich
)


F = TypeVar("F", bound=Callable[..., Any])


E = TypeVar("E", bound=Enum)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edge-inception {__version__}")
        raise typer.Exit()


@app.callback()
@handle_errors
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors: no progress bars, notes or warnings.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also the libraries' and each step's debug log.")] = False,
) -> None:
    """GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other", param_hint="'--quiet'")
    Output.quiet = quiet
    logging.getLogger().setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO)  # Pillow's per-chunk PNG debug lines are not ours to show
    ort_spinning()  # read by every engine process (Ray's workers, Triton's backend too): a bad value is refused here, before any work


# each area's commands (an unnamed sub-app merges its commands into the root); serve is a group of its own
app.add_typer(convert.app)
app.add_typer(engines.app)
app.add_typer(evaluate.app)
app.add_typer(deploy.app)
app.add_typer(pipeline.app)
app.add_typer(model.app)
app.add_typer(stream.app)
app.add_typer(serve_app, name="serve")
app.add_typer(fleet_app, name="fleet")


def main() -> None:
    """Run the CLI (``edge_inception.__main__.main`` installs the signal handlers first, then calls this)."""
    log_to_stderr()
    try:
        app()
    except BrokenPipeError:  # outside a command's handler: --help, a usage message, the last flush of a table
        sys.exit(reader_left())
    finally:
        try:
            sys.stdout.flush()  # here, where a closed pipe is heard, not in Python's flush at exit
        except BrokenPipeError:
            sys.exit(reader_left())
