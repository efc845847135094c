"""How busy the machine was while we measured: the load average, and the CPU time other processes took.

A benchmark on a shared machine is only as good as the quiet it ran in. Each round records the 1-minute load average
before and after, the CPU time the rest of the machine used during it (all CPU time from /proc/stat, less our own and
our children's), and the time a hypervisor stole; a round in which others used more than a tenth of a core is marked
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


def _own_cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
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
