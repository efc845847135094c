"""What every command module shares: one error handler (one ``error:`` line, exit 1; Ctrl-C 130, SIGTERM 143), notes
that ``--quiet`` silences, plain tables. The floor below every command module: it imports no command module.

Nothing another party controls reaches the terminal raw (issue 38): ``error:`` lines, notes and table cells go
through :func:`shown` (:func:`edge_inception.names.printable`: control characters, ANSI escape sequences, bidirectional
overrides and newlines made visible as ``\\x1b``, ``\\u202e``, ``\\n``), so a label, model name, file name, platform
string or server message can neither forge a line nor send the terminal a command. Commands pass every other
outside field they print (labels, file names) through :func:`shown` too."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

# from .cli_common import SEEDED_NOTE, Output, echo_table, handle_errors, note, note_seeded, shown
from .errors import EXTRAS, EdgeInceptionError, Terminated
from .limits import MAX_BATCH, MAX_IMAGE_SIZE
from .names import printable
from .vocab import (
    MIN_IMAGE_SIZE,
    PreprocessMode,
    parse_list,
)

if TYPE_CHECKING:
    from .evaluate.topk import TopKOnFiles
    from .report import Report

MAX_SHOWN_CHARS = 4000  # an error line or note: long enough for a list of choices, short enough to read

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """User errors become one line on stderr and exit code 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException:
            close_progress()  # the message goes on a line of its own, not after a progress bar
            raise

    @functools.wraps(fn)
    def reporter(*args: Any, **kwargs: Any) -> Any:
        try:
            return wrapper(*args, **kwargs)
        except EdgeInceptionError as exc:
            typer.echo(f"error: {shown(str(exc))}", err=True)
            raise typer.Exit(code=1) from None
        except ModuleNotFoundError as exc:  # an optional library this command needs, reached without a check
            top = (exc.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            typer.echo(f"error: this command needs {top}, which is not installed here: pip install 'edge-inception[{EXTRAS[top]}]'", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): clean-up has run on the way here
            typer.echo(f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: nothing half-written was left behind", err=True)
            raise typer.Exit(code=143 if isinstance(exc, Terminated) else 130) from None
        except MemoryError:
            typer.echo("error: out of memory (try a smaller --batch or image)", err=True)
            raise typer.Exit(code=1) from None
        except BrokenPipeError:  # stdout's reader left (`... | head -1`): nothing to say, as any Unix tool
            raise typer.Exit(code=reader_left()) from None
        except OSError as exc:  # the environment: a full disk, a vanished folder, a permission changed mid-run
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {shown(str(exc.strerror or exc) + where)}", err=True)
            raise typer.Exit(code=1) from None

    return reporter  # type: ignore[return-value]


def finite(value: float | None) -> float | None:
    """The callback of every float option: NaN and the infinities are a usage error (exit 2, one line). Click's
    ``FloatRange`` lets NaN through its ``min``/``max`` (NaN compares false with any bound), so a range is not enough."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by a closed pipe


def reader_left() -> int:
    """stdout's reader has gone (a closed pipe): point stdout at /dev/null so that Python's last flush at exit cannot
    fail again and print 'Exception ignored ... BrokenPipeError', and return the exit code (:data:`SIGPIPE_EXIT`), with
    no message: that is how `git log | head -1` or `yes | head -1` end."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a captured stdout): nothing to redirect
        pass
    return SIGPIPE_EXIT


def close_progress() -> None:
    """Close the progress bars still on screen (tqdm's, if any was started)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


SEEDED_NOTE = "note: no --weights given: GoogLeNet uses seeded random weights, so its outputs and labels are not meaningful"


def note_seeded(seeded: bool) -> None:
    if seeded:
        note(SEEDED_NOTE)


class Output:
    """What --quiet and --verbose set for the whole run."""

    quiet = False


def shown(text: object, max_chars: int = MAX_SHOWN_CHARS) -> str:
    """``text`` as printed: one line, control and format characters visible (see the module's docstring), cut at
    ``max_chars`` with '...'. The one escaping function every printed outside field goes through."""
    return printable(str(text), max_chars)


def note(text: str) -> None:
    """A note or warning on stderr, unless --quiet; escaped (:func:`shown`), since notes quote files and servers."""
    if not Output.quiet:
        typer.echo(shown(text), err=True)


_NUMBER = re.compile(r"[-+]?(\d[\d,]*(\.\d*)?|\.\d+)(e[-+]?\d+)?\s*(%|x|ms|s|MB)?")


def numeric_column(cells: Iterable[str]) -> bool:
    """A column to right-align: every cell a number (an optional unit: %, x, ms, s, MB) or empty / ``-``."""
    cells = [c.strip() for c in cells]
    return any(c not in ("", "-") for c in cells) and all(c in ("", "-") or _NUMBER.fullmatch(c) is not None for c in cells)


def echo_table(rows: list[list[str]], header: list[str]) -> None:
    """A plain table on stdout; every cell escaped (:func:`shown`); numeric columns right-aligned, text left-aligned,
    no trailing spaces (a long text cell in the last column does not pad the others)."""
    header = [shown(h) for h in header]
    rows = [[shown(c) for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = [i > 0 and numeric_column(str(r[i]) for r in rows) for i in range(len(header))]
    typer.echo("  ".join(h.rjust(w) if r else h.ljust(w) for h, w, r in zip(header, widths, right)).rstrip())
    typer.echo("  ".join("-" * w for w in widths))
    for row in rows:
        typer.echo("  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)).rstrip())


def write_outputs(report: Report, *, json: Path | None = None, markdown: Path | None = None, png: Path | None = None,
                  inputs: Iterable[str | Path] = (), err: bool = False) -> None:
    """A report's renderings asked for (None: not asked), written by the one writer (:func:`..report.write_report`:
    each atomically, none an input), and a ``wrote PATH`` line for each."""
    from .report import write_report

    for path in write_report(report, json=json, markdown=markdown, png=png, inputs=inputs):
        typer.echo(f"wrote {shown(path)}", err=err)


E = TypeVar("E", bound=Enum)


WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint (.pth/.pt/.safetensors). Default: seeded random weights.")]


ImageSizeOpt = Annotated[int | None, typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                                                  help="Input height and width (default: the checkpoint's, else 224).")]


PreprocessOpt = Annotated[PreprocessMode, typer.Option("--preprocess", help="fast: JPEGs decoded at reduced scale (DCT) and only the "
                                                    "crop resampled; exact: the reference transform on the full image.")]


ClusterOpt = Annotated[str | None, typer.Option("--cluster", help="Run the accuracy evaluation on a Ray cluster: its head's HOST:PORT "
                                               "(token in RAY_AUTH_TOKEN), or local (a private one for this run, 127.0.0.1, token "
                                               "auth). Same figures as without. Needs [cluster].")]
RequestTimeoutOpt = Annotated[float, typer.Option("--timeout", callback=finite, min=0.1, max=3600,
                                                  help="grpc://: seconds one request may take (a server "
                                                 "that does not answer within it is an error; an unavailable one is retried 3 times).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=256, help="--cluster: actors, each opening the model once; at most the CPUs "
                                                                     "(this machine's for local, the cluster's otherwise).")]


def workers_need_cluster(cluster: str | None, workers: int) -> None:
    """``--workers`` above 1 without ``--cluster`` is a usage error (exit 2): it was ignored, and one process ran."""
    if cluster is None and workers != 1:
        raise typer.BadParameter(f"{workers} workers run on a Ray cluster: add --cluster local (this machine) or --cluster HOST:PORT",
                                 param_hint="'--workers'")


@contextlib.contextmanager
def cluster_top_k(cluster: str | None, workers: int) -> Iterator[TopKOnFiles | None]:
    """``--cluster`` for a command whose accuracy verdict runs models on a labelled folder: a
    :class:`~edge_inception.cluster.evaluate.ClusterTopK` (the address checked now, the cluster joined at its first use,
    left and a private one stopped at the end), or None without ``--cluster`` (Ray is then never imported)."""
    workers_need_cluster(cluster, workers)
    if cluster is None:
        yield None
        return
    from .cluster.evaluate import ClusterTopK

    with ClusterTopK(cluster, workers=workers) as top_k:
        yield top_k
        if top_k.passes == 0:
            typer.echo(f"note: --cluster {shown(cluster)}: no labelled images to evaluate, the cluster was not used", err=True)
        else:
            typer.echo(f"note: cluster {shown(cluster)}: {top_k.workers} worker(s), {top_k.passes} accuracy pass(es), ready after "
                       f"{top_k.startup_s:.1f} s", err=True)


def choices(text: str, enum: type[E], option: str) -> tuple[E, ...]:
    """A comma-separated option of enum values; a wrong word is a usage error (exit 2) naming the choices."""
    try:
        return parse_list(text, enum, option)
    except ValueError as exc:
        raise typer.BadParameter(shown(str(exc).split(": ", 1)[1]), param_hint=f"'{option}'") from None


def int_list(text: str, what: str, hi: int = MAX_BATCH, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Comma-separated integers in [1, hi], each once in the order first given (``1,1`` measured batch 1 twice, two
    rows); anything else is a usage error (exit 2) giving the range, the value escaped."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = (0,)  # refused below
    if (not values and not allow_empty) or any(not 1 <= v <= hi for v in values):
        raise typer.BadParameter(f"comma-separated integers in [1, {hi}], got '{shown(text)}'", param_hint=f"'{what}'")
    return tuple(dict.fromkeys(values))


def progress(total: int, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True, disable=Output.quiet or None)


class LevelFormatter(logging.Formatter):
    """``warning: ...``, ``debug: ...``: the level in lower case, like the CLI's own ``error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        record.msg, record.args = shown(record.getMessage()), None  # log messages quote files and servers: escaped as notes are
        return super().format(record)


def log_to_stderr(level: int = logging.WARNING) -> None:
    """The log on stderr as ``warning: ...`` lines, escaped: for the CLI and the processes it starts (LoadGen's child)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
