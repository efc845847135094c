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


def _exit_past_native_threads(code: object) -> None:
    """Exit at once (``os._exit``, after flushing stdout and stderr) when a daemon thread is still alive: one abandoned
    inside a native call (FFmpeg's open of a silent stream after Ctrl-C, a decode) would otherwise run on into a finalising
    interpreter and crash it (SIGSEGV instead of 130/143). Everything of ours was cleaned up while unwinding to here;
    with no such thread the normal exit runs."""
    import threading

    if not any(t.daemon and t.is_alive() for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import os

    if code is not None and not isinstance(code, int):  # SystemExit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code or 0)


_CODE_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # about a library's API: for developers


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
                  line: str | None = None) -> None:
    """Python's warnings as the CLI prints everything else: one escaped ``warning:`` line on stderr, never the two lines
    (a library's file name and source line) Python's default shows. A library's deprecation of its own API (Ray
    Data's ``ray_remote_args``, say) is a note to developers, not to the user of a command: not shown."""
    if issubclass(category, _CODE_WARNINGS):
        return
    from .names import printable

    text = str(message).strip().splitlines()
    print(f"warning: {printable(text[0] if text else category.__name__, 300)} ({category.__name__})", file=sys.stderr)


def main() -> None:
    import warnings

    warnings.showwarning = _warning_line  # every warning shown, by whichever filter, goes through here
    signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: unwind, so temporary files are removed on the way out
    try:
        from .cli import main as cli_main

        cli_main()  # a command's own interruption is reported by the CLI; this catches one while Typer sets up
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        print(f"{'terminated' if terminated else 'interrupted'} while starting: nothing was written", file=sys.stderr)
        _exit_past_native_threads(143 if terminated else 130)
        raise SystemExit(143 if terminated else 130) from None
    except SystemExit as exc:
        _exit_past_native_threads(exc.code)
        raise
    _exit_past_native_threads(0)


if __name__ == "__main__":
    main()
