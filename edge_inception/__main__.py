"""``edge-inception`` and ``python -m edge_inception``: signal handling first, then the command line.

This module imports nothing but the standard library before the handlers are in place, so Ctrl-C or SIGTERM while
the CLI is still importing exits quietly (130 / 143) instead of printing a traceback.
"""

from __future__ import annotations

import signal
import sys


def _terminate(signum: int, frame: object) -> None:
    from .errors import Terminated

    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: unwind, so temporary files are removed on the way out
    try:
        from .cli import main as cli_main

        cli_main()  # a command's own interruption is reported by the CLI; this catches one while Typer sets up
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        print(f"{'terminated' if terminated else 'interrupted'} while starting: nothing was written", file=sys.stderr)
        raise SystemExit(143 if terminated else 130) from None


if __name__ == "__main__":
    main()
