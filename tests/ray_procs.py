"""Processes the cluster tests start: each in a session of its own, marked in its environment, killed by PID.

Ray's own ``ray stop`` / ``ray.shutdown()`` is not relied on: every process of the session a test started (Ray's GCS,
raylets, workers keep the session even where they change their process group) is sent SIGTERM, then SIGKILL, by PID;
and the marker in the environment (inherited by every Ray process) finds any that escaped the session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = "EDGE_INCEPTION_RAY_TEST"
RUN_ID = uuid.uuid4().hex


def _procs() -> Iterator[tuple[int, int, bytes]]:
    """(pid, session id, environ) of this user's processes."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (d / "stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            yield int(d.name), sid, (d / "environ").read_bytes()


def marked() -> list[int]:
    """PIDs of live processes carrying this test run's marker (zombies excluded)."""
    out = []
    needle = f"{MARKER}={RUN_ID}".encode()
    for pid, _sid, env in _procs():
        if needle in env.split(b"\0") and pid != os.getpid():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
    return out


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, MARKER: RUN_ID, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def kill_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM every process in session ``sid``, wait up to ``grace_s``, SIGKILL what is left."""

    def members() -> list[int]:
        return sorted({pid for pid, s, _ in _procs() if s == sid} - {os.getpid()})

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in members():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(p in marked() for p in members()):  # zombies do not count
            time.sleep(0.2)


def start(args: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """Start ``args`` in a new session, output to ``log``, with the marker set."""
    with open(log, "ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env(**extra), start_new_session=True)


def run(args: list[str], timeout: float, **extra: str) -> subprocess.CompletedProcess:
    """Run ``args`` to completion in a new session (bounded by ``timeout``); whatever it leaves in its session is killed."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{args[:4]} did not finish within {timeout} s: {err[-2000:]}") from None
    finally:
        kill_session(proc.pid, grace_s=2.0)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def kill_marked() -> list[int]:
    """SIGKILL every live process carrying the marker (those that escaped their session); return their PIDs."""
    left = marked()
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, deadline: float, what: str) -> None:
    """Wait until ``path`` exists (the sign ``proc`` gives that ``what`` is done), failing if ``proc`` ends first (its
    ``log`` in the message) or ``deadline`` (``time.monotonic()``) passes: hang detection, not a timing."""
    while not path.exists():
        assert proc.poll() is None, f"{what}: the process ended first: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not done in time"
        time.sleep(0.2)
