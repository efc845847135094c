"""How busy the machine was while we measured: the load average, and the CPU time other processes took.

A benchmark on a shared machine is only as good as the quiet it ran in. Each round records the 1-minute load average
before and after, the CPU time the rest of the machine used during it (all CPU time from /proc/stat, less our own and
that of every process we started, running or finished: a server or a worker pool that lives across rounds is ours,
not a disturbance), and the time a hypervisor stole; a round in which others used more than a tenth of a core is marked
disturbed (and rerun, where the caller allows).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

DISTURBED_CORES = 0.1  # other processes' average CPU use, in cores, above which a round does not count as quiet


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


def _descendants_cpu() -> float:
    """CPU seconds of our live descendants (children, grandchildren, ...): each one's own time and that of the children
    it has reaped. A descendant reaped by us moves into RUSAGE_CHILDREN, one reaped by another descendant into that
    one's reaped time, so the sum with :func:`_own_cpu`'s rusage stays continuous as processes come and go."""
    me = os.getpid()
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        try:  # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15), counted from state as 0
            parent[int(name)] = int(fields[1])
            times[int(name)] = float(sum(int(x) for x in fields[11:15]))
        except (ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, list(children.get(me, []))
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process, its reaped children, and its live descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _descendants_cpu()


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
    """``with LoadMeter(i) as m: ...`` then ``m.result``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> LoadMeter:
        self.t0, self.load0, self.stat0, self.own0 = time.monotonic(), _loadavg(), _proc_stat(), _own_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-9)
        stat1 = _proc_stat()
        others = steal = None
        if self.stat0 is not None and stat1 is not None:
            others = max(0.0, (stat1[0] - self.stat0[0]) - (_own_cpu() - self.own0)) / wall
            steal = (stat1[1] - self.stat0[1]) / wall
        disturbed = (others or 0.0) > DISTURBED_CORES or (steal or 0.0) > DISTURBED_CORES
        self.result = RoundLoad(self.index, round(wall, 2), self.load0, _loadavg(), None if others is None else round(others, 3),
                                None if steal is None else round(steal, 3), disturbed)
