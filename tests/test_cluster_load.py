"""The load meter a cluster benchmark's record stands on: processes the benchmark started count as its own even when they
leave its process tree (as Ray's GCS, raylet and workers do: re-parented, reaped by init or by a raylet that ignores
SIGCHLD), and a process it did not start counts as another's. No Ray here: a daemon does what Ray's processes do."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_inception.evaluate.load import OWNER_ENV, OwnCpu, mark_ours

DAEMON = """
import os, sys, time
mode, go, out, burn = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
if os.fork():
    if mode == "escape":
        time.sleep(0.5)  # seen as our descendant first; then its parent ends and it is re-parented
    os._exit(0)
os.setsid()
parent = os.getppid()
with open(out + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(out + ".tmp", out + ".pid")
while not os.path.exists(go):
    time.sleep(0.01)
while mode == "escape" and os.getppid() == parent:
    time.sleep(0.01)
t0 = 0.0 if mode == "escape" else time.process_time()  # one started inside the round: all its time is in the round
while time.process_time() < t0 + burn:
    pass
with open(out + ".tmp", "w") as f:
    f.write(str(time.process_time() - t0))
os.rename(out + ".tmp", out)
time.sleep(1.5)  # idle: the meter reads its final time before it ends, reaped by init
"""


def _daemon(mode: str, tmp: Path, burn: float, env: dict[str, str]) -> int:
    """Start a daemon (fork, the parent exits, setsid); its PID, once it is up."""
    subprocess.run([sys.executable, "-c", DAEMON, mode, str(tmp / "go"), str(tmp / mode), str(burn)], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 60
    while not (tmp / f"{mode}.pid").exists():
        assert time.monotonic() < deadline, f"the {mode} daemon did not start"
        time.sleep(0.02)
    return int((tmp / f"{mode}.pid").read_text())


def _children_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_a_daemon_the_benchmark_started_is_ours_and_one_it_did_not_is_another(tmp_path, monkeypatch):
    monkeypatch.setenv(OWNER_ENV, "")  # mark_ours sets it: restored after the test
    mark_ours()
    marked = dict(os.environ)
    unmarked = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    ours = _daemon("ours", tmp_path, 0.5, marked)  # started by the benchmark, outside its tree when the round starts
    other = _daemon("other", tmp_path, 1.0, unmarked)  # the same, without the mark: another user's Ray, say
    for pid in (ours, other):
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
    self0, children0 = time.process_time(), _children_s()
    meter = OwnCpu(interval_s=0.05).start()
    (tmp_path / "go").touch()
    escaped = _daemon("escape", tmp_path, 0.5, unmarked)  # no mark, but seen as our descendant before it left
    deadline = time.monotonic() + 120
    while any(Path(f"/proc/{pid}").exists() for pid in (ours, other, escaped)):
        assert time.monotonic() < deadline, "the daemons did not end"
        time.sleep(0.05)
    used = meter.stop()
    ours_elsewhere = used - (time.process_time() - self0) - (_children_s() - children0)  # less this process and its reaped children
    burned = float((tmp_path / "ours").read_text()) + float((tmp_path / "escape").read_text())
    assert ours in meter.counted and escaped in meter.counted and other not in meter.counted
    assert burned - 0.05 <= ours_elsewhere <= burned + 0.3  # the other daemon's 1.0 s is not in it; a tick of slack below


BURN = """
import sys, time
while time.process_time() < float(sys.argv[1]):
    pass
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()  # idle until we close its stdin
"""


def test_a_reading_that_fails_for_want_of_file_descriptors_does_not_count_ours_twice():
    """A live process of ours whose /proc could not be read once (this process out of file descriptors: a server benchmark
    with many connections) was taken as ended, its whole CPU time added to ours, and added again when read next: a
    round that others disturbed passed as quiet. Now a failed reading keeps the last one."""
    child = subprocess.Popen([sys.executable, "-c", BURN, "0.6"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"  # 0.6 s of CPU already used, before the round
        meter = OwnCpu(interval_s=3600)  # read only when told (no thread)
        self0 = time.process_time()
        first = meter.sample()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        free = os.dup(0)  # the lowest free descriptor: a limit of that many leaves none
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        try:
            with pytest.raises(OSError):
                os.listdir("/proc")
            starved = meter.sample()  # /proc cannot be listed now
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        again = meter.sample()
        self_used = time.process_time() - self0
        assert child.pid in meter.counted
        assert starved - first <= self_used + 0.05 and again - first <= self_used + 0.05  # the child idled: nothing of its 0.6 s
    finally:
        child.communicate("", timeout=60)
