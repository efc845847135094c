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


def test_stop_is_bounded_when_a_reading_hangs_and_answers_with_the_last_one_that_came():
    """A /proc read that hangs (a process stuck in the kernel) held the meter's thread inside a reading, and stop()
    joined it without end: the benchmark hung after its work. The hang is made here by holding the lock a reading
    holds for its whole length; stop() now answers within its bound, with the last complete reading, and says so."""
    import threading

    meter = OwnCpu(interval_s=0.01).start()
    with meter._lock:  # the thread's next reading waits here, as one on a hung /proc file would
        answers: list[float] = []
        stopper = threading.Thread(target=lambda: answers.append(meter.stop(timeout_s=0.2)), daemon=True)
        stopper.start()
        stopper.join(120)  # hang detection only
        assert not stopper.is_alive(), "stop() waited for a reading that does not come"
        assert answers == [meter.last - meter.t0] and meter.complete is False
    assert meter._thread is not None
    meter._thread.join(120)  # the held reading completes once let go
    assert not meter._thread.is_alive()



def test_start_is_bounded_when_the_first_reading_hangs():
    """The first reading (every process's environment read: the likeliest to meet a process whose memory lock is held)
    was taken in the caller's thread, unbounded: the same hang stop() was bounded against, one step earlier. start()
    now waits for it at most its bound and says the meter is not complete; stop() then answers too, and the thread
    ends once the reading is let go."""
    import threading

    meter = OwnCpu(interval_s=0.01)
    with meter._lock:  # the first reading waits here, as one on a hung /proc file would
        answers: list[float] = []

        def run() -> None:
            meter.start(timeout_s=0.2)
            answers.append(meter.stop(timeout_s=0.2))

        starter = threading.Thread(target=run, daemon=True)
        starter.start()
        starter.join(120)  # hang detection only
        assert not starter.is_alive(), "start() waited for a first reading that does not come"
        assert answers == [0.0] and meter.complete is False
    assert meter._thread is not None
    meter._thread.join(120)  # the held reading completes once let go, and the stopped thread ends
    assert not meter._thread.is_alive() and meter.t0 > 0

NOT_DUMPABLE = """
import ctypes, os, sys, time
prctl = ctypes.CDLL(None, use_errno=True).prctl
if os.fork():
    os._exit(0)
os.setsid()  # re-parented away from the meter's process: only the mark in its environment says it is ours
if os.geteuid() == 0:  # the meter runs unprivileged (root reads every environment): so does its daemon
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: its /proc/PID/environ is root's now, unreadable by its own user
while time.process_time() < 0.4:  # CPU time before the round: not the round's
    pass
print(os.getpid(), flush=True)
sys.stdin.readline()
prctl(4, 1, 0, 0, 0)  # readable again
t0 = time.process_time()
while time.process_time() < t0 + 0.4:
    pass
print(time.process_time() - t0, flush=True)
sys.stdin.readline()  # idle until the meter has read it
"""

METER = """
import encodings.ascii, json, os, resource, subprocess, sys  # imported before this process gives up root's files
from edge_inception.evaluate.load import FULL_SCAN_EVERY, OwnCpu, mark_ours
def mine():
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
mark_ours()
d = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
pid = int(d.stdout.readline())
d.wait(timeout=60)  # the daemon's first parent, gone
if os.geteuid() == 0:
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
meter = OwnCpu(interval_s=3600)  # read only when told
mine0, first = mine(), meter.sample()
unread = pid in meter.unsure and pid not in meter.counted
d.stdin.write("go\\n")
d.stdin.flush()
burned = float(d.stdout.readline())
for _ in range(FULL_SCAN_EVERY):  # a full scan among them
    last = meter.sample()
elsewhere = (last - first) - (mine() - mine0)
d.stdin.write("done\\n")
d.stdin.flush()
print(json.dumps({"unread": unread, "counted": pid in meter.counted, "elsewhere": elsewhere, "burned": burned}))
"""


def test_a_process_of_ours_whose_environment_could_not_be_read_once_is_judged_again():
    """A daemon of ours (marked, re-parented away) whose environment could not be read at the first reading (non-dumpable
    for a while, as a process that handles secrets or changed its user makes itself) was put with the others' for good:
    its CPU time counted as a disturbance for the rest of the round. Now it is read again, found ours once readable, and
    only its time since it was first read counts (not the 0.4 s it used before). The meter runs unprivileged (root
    reads every environment), in a process of its own."""
    import json

    r = subprocess.run([sys.executable, "-c", METER, NOT_DUMPABLE], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["unread"], f"the daemon's environment was readable at the first reading: nothing was tested ({got})"
    assert got["counted"], got
    assert got["burned"] - 0.05 <= got["elsewhere"] <= got["burned"] + 0.2, got
