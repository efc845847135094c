"""Work that blocks in C++ (LoadGen's ``StartTest``), run in a child process where a signal and a watchdog can stop it.

Python runs a signal handler only between bytecodes of the main thread, so Ctrl-C and SIGTERM go unheard while
``mlperf_loadgen.StartTest`` blocks (it returns when LoadGen's run is over: 10 minutes for an MLPerf run). Here the
parent only waits, on a pipe and the child's sentinel, so it hears a signal at once; it then stops the child (SIGTERM,
SIGKILL after :data:`KILL_AFTER_S`) and the signal goes on up as ``KeyboardInterrupt``/``Terminated``.

The protocol, child to parent, one tuple per message on a one-way pipe:

- ``("progress", text)``: a line for the user;
- ``("deadline", seconds, what, why)``: the phase ``what`` starts now and must end within ``seconds`` (the watchdog);
- ``("error", exc)``: an :class:`EdgeInceptionError` (the run is stopped at once, not at its end);
- ``("done", value)``: the result.

The child (``python -m edge_inception.serve.child``) ignores SIGINT (blocked while it starts, so a Ctrl-C to the
terminal's process group reaches only the parent, which decides) and dies by SIGTERM's default action. The job comes
on a second pipe, the lifeline, held only by the parent: if the parent dies (even by SIGKILL) the child reads
end-of-file and exits, so no child outlives the command.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import EdgeInceptionError, ServeError

log = logging.getLogger(__name__)

KILL_AFTER_S = 2.0  # SIGTERM, then SIGKILL if the child still runs this long after
EXIT_WAIT_S = 10.0  # a child that sent its result may take this long to exit (LoadGen's threads, the interpreter's exit)


class WatchdogError(ServeError):
    """A phase of the child's work that ran past its bound; the child was stopped."""


class Channel:
    """The child's end: messages to the parent, thread-safe (LoadGen calls the SUT from its own threads)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.failed = False

    def send(self, *message: Any) -> None:
        with self.lock:
            self.conn.send(message)

    def progress(self, text: str) -> None:
        self.send("progress", text)

    def deadline(self, seconds: float, what: str, why: str) -> None:
        """The phase ``what`` starts now and must end within ``seconds``; ``why`` says where the bound comes from."""
        self.send("deadline", float(seconds), what, why)

    def fail(self, exc: EdgeInceptionError) -> None:
        """Report the first failure now: the parent stops the run instead of waiting for LoadGen's end."""
        with self.lock:
            if self.failed:
                return
            self.failed = True
            try:
                self.conn.send(("error", exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle still ends the run, as a plain line
                self.conn.send(("error", ServeError(str(exc))))


def _watch_parent(lifeline: Any) -> None:
    try:
        lifeline.recv()  # the parent sends nothing more: this ends (EOFError) when its end closes, i.e. when it exits or dies
    except BaseException:  # noqa: BLE001
        pass
    os._exit(1)


def main(argv: list[str]) -> None:
    """The child: ``python -m edge_inception.serve.child RESULTS_FD LIFELINE_FD``; the job ``(fn, args)`` comes first on
    the lifeline, the messages go out on RESULTS_FD."""
    from multiprocessing.connection import Connection

    from ..cli_common import log_to_stderr

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent hears Ctrl-C and stops this process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while this process started
    log_to_stderr()  # the client's retries and notes read as the command's own: 'warning: ...'
    conn, lifeline = Connection(int(argv[0]), readable=False), Connection(int(argv[1]), writable=False)
    chan = Channel(conn)
    try:
        fn, args = lifeline.recv()
        threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True, name="lifeline").start()
        result = fn(chan, *args)
    except EdgeInceptionError as exc:
        chan.fail(exc)
        return
    except MemoryError:
        chan.fail(EdgeInceptionError("out of memory in LoadGen's process (try a smaller --batch or fewer images)"))
        return
    except BaseException as exc:  # noqa: BLE001 - a bug: its traceback on stderr, one line to the parent
        traceback.print_exc()
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        chan.fail(ServeError(f"LoadGen's process failed: {type(exc).__name__}: {text} (traceback above)"))
        return
    chan.send("done", result)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def run_in_child(fn: Callable[..., Any], args: tuple[Any, ...], *, what: str, startup_s: float,
                 progress: Callable[[str], None] | None = None) -> Any:
    """``fn(channel, *args)`` in a child Python process; its result (``("done", value)``), or its error raised here.

    ``what`` names the work in messages; ``startup_s`` bounds the time until the child's first ``deadline`` message. A
    phase past its deadline raises :class:`WatchdogError`; a child that dies without a result, :class:`ServeError`; a
    signal to this process, its ``KeyboardInterrupt``. In every case the child is stopped and reaped before this returns.
    ``fn`` and ``args`` must pickle (``fn`` a module-level function). A plain subprocess, not multiprocessing: its spawn
    also starts a resource-tracker process that outlives a Ctrl-C by a second or more."""
    import subprocess
    import sys
    from multiprocessing.connection import Connection

    res_r, res_w = os.pipe()
    life_r, life_w = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the modules this process imports
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited: the child starts with Ctrl-C blocked
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge_inception.serve.child", str(res_w), str(life_r)], pass_fds=(res_w, life_r),
                                stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        for fd in (res_r, res_w, life_r, life_w):
            os.close(fd)
        raise ServeError(f"cannot start {what}: {exc.strerror or exc}") from exc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C that came meanwhile is delivered here, now
    os.close(res_w)
    os.close(life_r)
    results, lifeline = Connection(res_r, writable=False), Connection(life_w, readable=False)
    finished = False
    try:
        lifeline.send((fn, args))
        value = _supervise(proc, results, what, startup_s, progress)
        finished = True
        return value
    finally:
        stop(proc, grace_s=EXIT_WAIT_S if finished else 0.0)  # a child that failed or was interrupted is stopped at once
        results.close()
        lifeline.close()


def _supervise(proc: Any, conn: Any, what: str, startup_s: float, progress: Callable[[str], None] | None) -> Any:
    from multiprocessing.connection import wait

    phase, why, limit = f"{what}'s start-up", "its start-up bound", startup_s
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WatchdogError(f"{phase} did not finish within {limit:.3g} s ({why}); stopped it, nothing was written")
        if not wait([conn], timeout=min(left, 1.0)):
            continue
        try:
            message = conn.recv()
        except (EOFError, OSError):  # only the child holds the pipe's other end: it ended
            try:
                proc.wait(KILL_AFTER_S)
            except Exception:  # noqa: BLE001 - still running with its end closed: stop() kills it
                pass
            raise ServeError(f"{what} ended without a result ({_exit_text(proc.returncode)})") from None
        kind = message[0]
        if kind == "progress" and progress is not None:
            progress(str(message[1]))
        elif kind == "deadline":
            limit, phase, why = float(message[1]), str(message[2]), str(message[3])
            deadline = time.monotonic() + limit
        elif kind == "error":
            exc = message[1]
            raise exc if isinstance(exc, EdgeInceptionError) else ServeError(str(exc))
        elif kind == "done":
            return message[1]


def stop(proc: Any, grace_s: float = 0.0) -> None:
    """Reap ``proc`` (a :class:`subprocess.Popen`): wait ``grace_s`` for it to exit, then SIGTERM, then SIGKILL after
    :data:`KILL_AFTER_S`. A second Ctrl-C meanwhile kills it at once, then goes on up."""
    import subprocess

    try:
        for action, wait_s in ((None, grace_s), (proc.terminate, KILL_AFTER_S), (proc.kill, KILL_AFTER_S)):
            if proc.poll() is not None:
                return
            if action is not None:
                if action is proc.kill:
                    log.warning("%s did not stop on SIGTERM; killing it", proc.args[2])
                action()
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
