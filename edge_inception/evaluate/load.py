"""How busy the machine was while we measured: the load average, and the CPU time other processes took.

A benchmark on a shared machine is only as good as the quiet it ran in. Each round records the 1-minute load average
before and after, the CPU time the rest of the machine used during it (all CPU time from /proc/stat, less ours:
:class:`OwnCpu`), and the time a hypervisor stole; a round in which others used more than a tenth of a core is marked
disturbed (and rerun, where the caller allows).

Ours is this process, every process it started (running or finished: a server or a worker pool that lives across rounds
is ours, not a disturbance), and every process that carries this process's mark (:func:`mark_ours`) in the environment
it started with, with their descendants: a daemon that re-parents itself away from us, such as Ray's GCS, raylet and
workers started by ``ray start`` or ``ray.init``, inherits the mark, while another user's processes (and this user's
other Ray sessions) do not.
"""

from __future__ import annotations

import os
import resource
import secrets
import threading
import time
from dataclasses import dataclass

DISTURBED_CORES = 0.1  # other processes' average CPU use, in cores, above which a round does not count as quiet
OWNER_ENV = "EDGE_INCEPTION_LOAD_OWNER"  # the mark :func:`mark_ours` puts in the environment our processes inherit
SAMPLE_S = 0.25  # how often the processes we count as ours are read during a round (the last value of one that exits)
FULL_SCAN_EVERY = 8  # samples: the processes judged not ours are read again (a PID taken again by a new process)
READ_TIMEOUT_S = 5.0  # how long :meth:`OwnCpu.start` / :meth:`OwnCpu.stop` wait for the thread's first / last reading (a /proc read that hangs)

_mark: str | None = None


def mark_ours() -> str:
    """Mark every process this one starts from now on as ours, including those that leave our process tree (a daemon,
    Ray's daemons and workers): sets :data:`OWNER_ENV` in ``os.environ`` to a value of this process (the same on every
    call; an inherited value is replaced, so a meter inside a process a benchmark started judges its own family).
    Returns the mark."""
    global _mark
    if _mark is None:
        _mark = f"{os.getpid()}-{secrets.token_hex(8)}"
    os.environ[OWNER_ENV] = _mark
    return _mark


def _proc_stat() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds since boot, all CPUs together; None where /proc/stat is not readable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


@dataclass(frozen=True)
class _Proc:
    start: int  # start time since boot, in ticks: a PID taken again is another process
    ppid: int
    own: int  # utime + stime, ticks
    reaped: int  # cutime + cstime: the children it has waited for, ticks


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
        return _Proc(int(fields[19]), int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    except (OSError, ValueError, IndexError):
        return None


def _carries(pid: int, needle: bytes) -> bool | None:
    """Whether the environment ``pid`` started with holds ``needle``: False where it cannot be read and the process is
    another user's (its real UID) or gone; None where it cannot be read now and may be later (this user's process made
    non-dumpable for a while, this process out of file descriptors): not known."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            uid = next((line.split()[1] for line in f if line.startswith("Uid:")), None)
    except OSError:
        return None
    return None if uid == str(os.getuid()) else False


def _rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class OwnCpu:
    """CPU seconds used by ours (the module's notes) since :meth:`start`: this process and the children it has reaped
    (rusage), every live process of ours (its own time and that of the children it reaped, from /proc, read every
    ``interval_s`` by a thread), and, for those that ended in an interval, the part of their last readings that the
    reaped counters of ours (ours' ``cutime``, our ``RUSAGE_CHILDREN``) did not take in over that interval: a daemon or a
    Ray worker reaped by init, or by a parent that ignores SIGCHLD (the kernel then adds its time to no one).

    What it cannot see errs towards "others" (a disturbed round), never towards "ours": what a process of ours used
    after its last reading, and one that lives less than ``interval_s`` and is reaped outside ours. A process whose
    verdict could not be reached (its environment not readable now: :func:`_carries`) is judged again at every sample,
    not kept as another's; once found ours, only its time since it was first read counts. Every reading is the
    thread's: a first or last one that does not come within ``READ_TIMEOUT_S`` (a /proc read that hangs: an environment
    read waits on the process's memory lock) leaves :attr:`complete` False, and :meth:`stop` answers with the last
    reading that came."""

    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.me = os.getpid()
        self.needle = f"{OWNER_ENV}={_mark}".encode() if _mark is not None else None
        self.live: dict[int, _Proc] = {}  # ours, as last read
        self.others: dict[int, int] = {}  # PID -> start time of processes judged not ours
        self.unsure: dict[int, _Proc] = {}  # PID -> first reading of processes not judged yet (read again every sample)
        self.offset_ticks = 0  # the time processes found ours late had used when first read: not in any round
        self.counted: set[int] = set()  # every PID counted as ours (for tests and reports)
        self.ended_s = 0.0  # the last values of ours that ended unreaped by ours
        self.children_s = _rusage_s(resource.RUSAGE_CHILDREN)
        self.samples = 0
        self.last = 0.0  # the latest complete reading (:meth:`sample`'s answer)
        self.complete = True  # False: :meth:`stop` did not get its last reading in time
        self._final: float | None = None
        self._first = threading.Event()  # set once the thread's first reading (:attr:`t0`) is taken
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def _ours(self, pid: int, proc: _Proc, table: dict[int, _Proc], seen: dict[int, bool], unsure: set[int]) -> bool:
        """Ours: the PID already counted (same start), a child of this process or of one of ours, or marked. Not ours
        but not known either (its environment, or its parent's, not readable now): added to ``unsure``."""
        if pid in seen:
            return seen[pid]
        seen[pid] = False  # a cycle (PIDs read at different moments) ends here
        last = self.live.get(pid)
        if self.others.get(pid) == proc.start:
            pass
        elif last is not None and last.start == proc.start:
            seen[pid] = True
        elif proc.ppid == self.me:
            seen[pid] = True
        else:
            marked = _carries(pid, self.needle) if self.needle is not None else False
            if marked:
                seen[pid] = True
            elif proc.ppid in table:
                seen[pid] = self._ours(proc.ppid, table[proc.ppid], table, seen, unsure)
                if proc.ppid in unsure and not seen[pid]:
                    unsure.add(pid)
            if marked is None and not seen[pid]:
                unsure.add(pid)
        return seen[pid]

    def sample(self) -> float:
        """Read the processes now; the CPU seconds of ours so far (since boot for the live ones, not since :meth:`start`)."""
        with self._lock:
            full = self.samples % FULL_SCAN_EVERY == 0
            self.samples += 1
            table: dict[int, _Proc] = {}
            try:
                names = os.listdir("/proc")
            except OSError:  # out of file descriptors, say: nothing read now, ours kept as last read (not taken as ended)
                names = []
                table.update(self.live)
            for name in names:
                if not name.isdigit() or int(name) == self.me or (not full and int(name) in self.others and int(name) not in self.live):
                    continue
                proc = _read_proc(int(name))
                if proc is None and int(name) in self.live and os.path.exists(f"/proc/{name}"):
                    proc = self.live[int(name)]  # there but not read this time: as last read, not ended (it would count twice)
                if proc is not None:
                    table[int(name)] = proc
            seen: dict[int, bool] = {}
            unsure: set[int] = set()
            now = {pid: p for pid, p in table.items() if self._ours(pid, p, table, seen, unsure)}
            for pid, p in table.items():
                first = self.unsure.pop(pid, None)
                first = first if first is not None and first.start == p.start else None
                if pid in now:
                    if first is not None:  # found ours late: its time before it was first read is in no round
                        self.offset_ticks += first.own + first.reaped
                elif pid in unsure:
                    self.unsure[pid] = first or p
                else:
                    self.others[pid] = p.start
            children = _rusage_s(resource.RUSAGE_CHILDREN)
            tick = os.sysconf("SC_CLK_TCK")
            # what the reapers of ours took in since the last read: our reaped children, and the live ones' reaped time
            gained = (children - self.children_s) + sum(max(0, p.reaped - self.live[pid].reaped) for pid, p in now.items()
                                                        if pid in self.live and self.live[pid].start == p.start) / tick
            ended = [p for pid, p in self.live.items() if pid not in now or now[pid].start != p.start]
            # an ended process's time reached us only as far as the reapers' counters rose (a parent that ignores SIGCHLD,
            # as Ray's raylet does, or init, adds nothing): the rest of its last reading is counted here
            self.ended_s += max(0.0, sum(p.own + p.reaped for p in ended) / tick - gained)
            self.live, self.children_s = now, children
            self.counted |= set(now)
            self.last = (_rusage_s(resource.RUSAGE_SELF) + children + self.ended_s
                         + (sum(p.own + p.reaped for p in now.values()) - self.offset_ticks) / tick)
            return self.last

    def start(self, timeout_s: float = READ_TIMEOUT_S) -> OwnCpu:
        """Start the thread that takes the first reading, then one every ``interval_s``; wait for the first at most
        ``timeout_s``: past that (a /proc read that hangs: the first reading reads every process's environment),
        :attr:`complete` False, and the round's time of ours starts when the first reading comes, if ever (short: it
        errs towards "disturbed")."""
        self._thread = threading.Thread(target=self._run, name="own-cpu", daemon=True)
        self._thread.start()
        if not self._first.wait(timeout_s):
            self.complete = False
        return self

    def _run(self) -> None:
        self.t0 = self.sample()
        self._first.set()
        while not self._stop.wait(self.interval_s):
            self.sample()
        self._final = self.sample()

    def stop(self, timeout_s: float = READ_TIMEOUT_S) -> float:
        """Stop reading; the CPU seconds ours used since :meth:`start`. The last reading is the thread's, waited for at
        most ``timeout_s``: past that (a /proc read that hangs), the last reading that came, and :attr:`complete` False
        (the round's time of ours is then short, which errs towards "disturbed")."""
        self._stop.set()
        if self._thread is None:
            return self.sample() - self.t0
        self._thread.join(timeout_s)
        if self._thread.is_alive() or self._final is None:
            self.complete = False
            return self.last - self.t0
        return self._final - self.t0


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class RoundLoad:
    round: int
    seconds: float
    loadavg_before: float | None
    loadavg_after: float | None
    others_cores: float | None  # CPU time other processes used during the round, divided by its wall time
    steal_cores: float | None
    disturbed: bool
    counted: bool = True  # its samples are in the figures (False: disturbed and measured again)


class LoadMeter:
    """``with LoadMeter(i) as m: ...`` then ``m.result``: ours (:class:`OwnCpu`) read every ``interval_s`` meanwhile."""

    def __init__(self, index: int, interval_s: float = SAMPLE_S) -> None:
        self.index, self.interval_s = index, interval_s

    def __enter__(self) -> LoadMeter:
        self.t0, self.load0, self.stat0 = time.monotonic(), _loadavg(), _proc_stat()
        self.own = OwnCpu(self.interval_s).start()
        return self

    def __exit__(self, *exc: object) -> None:
        own_used = self.own.stop()
        wall = max(time.monotonic() - self.t0, 1e-9)
        stat1 = _proc_stat()
        others = steal = None
        if self.stat0 is not None and stat1 is not None:
            others = max(0.0, (stat1[0] - self.stat0[0]) - own_used) / wall
            steal = (stat1[1] - self.stat0[1]) / wall
        # a meter that could not read ours to the end cannot vouch for a quiet round
        disturbed = (others or 0.0) > DISTURBED_CORES or (steal or 0.0) > DISTURBED_CORES or not self.own.complete
        self.result = RoundLoad(self.index, round(wall, 2), self.load0, _loadavg(), None if others is None else round(others, 3),
                                None if steal is None else round(steal, 3), disturbed)
