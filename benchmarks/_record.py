"""Records that say whether they can be believed: the one mechanism every script in benchmarks/ uses.

    from _record import Record            # the scripts run as `python benchmarks/X.py`, so this folder is on sys.path

    rec = Record(max_load=0.5)            # the CPU's name and ISA flags, read once
    rec.wait_for_quiet()                  # up to 10 min for the 1-minute load average to fall below max_load
    with rec.round("part A"):             # the load before and after, other processes' CPU time during it
        ...
    value = rec.measure("engine b1", fn, reruns=2)   # fn() again (up to 2 more times) while its round was disturbed
    rec.add_rounds("bench", report.rounds)           # rounds a BenchReport measured itself (bench's own --rerun-disturbed)
    doc["record"] = rec.as_dict()         # cpu, isa, every round, quotable
    lines = rec.header()                  # Markdown: the CPU + ISA line, and the quiet/disturbed verdict
    rec.met(ok)                           # 'yes' / '**no**', and 'yes (disturbed run: not quotable)'

Inside `make bench` (benchmarks/record_all.py), the machine is judged quiet once, at the start, by the load average;
each later script's start is then judged by what the rest of the machine does (other processes under a tenth of a core
over :data:`IDLE_WINDOW_S`), because the load average then mostly remembers the previous script, which is ours, and
takes minutes to decay (:data:`SEQUENCE_ENV` carries the sequence's starting load to the scripts).

A round is disturbed when other processes (all the machine's CPU time less ours and that of every process we started,
those that left our process tree included, such as the GCS, raylet and workers of a Ray session the script started: they
carry the mark :class:`Record` puts in the environment, :mod:`edge_inception.evaluate.load`) used more than a tenth of
a core during it, or a hypervisor stole as much. A results file with a disturbed round (one that counts: a round
measured again does not) is still written, and says it is not to be quoted as a goal met; so does one started at a load
average above ``max_load``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from edge_inception.evaluate.cpu import cpu_info
from edge_inception.evaluate.load import DISTURBED_CORES, LoadMeter, RoundLoad, mark_ours

T = TypeVar("T")
MAX_LOAD = 0.5  # the 1-minute load average below which a machine counts as quiet at the start
WAIT_S = 600.0
SEQUENCE_ENV = "EDGE_INCEPTION_BENCH_START_LOAD"  # set by record_all.py: the load average when `make bench` started, quiet
IDLE_WINDOW_S = 5.0  # inside make bench: the window in which other processes must stay under DISTURBED_CORES before a script


def refused(exc: BaseException) -> int:
    """What the product refuses (a missing or unusable model, folder or option: its EdgeInceptionError) as the CLI says
    it: one line on stderr, printable; the exit status 1."""
    import sys

    from edge_inception.names import printable

    print(f"error: {printable(str(exc))}", file=sys.stderr)
    return 1


def run_main(main: Callable[[], int]) -> int:
    """A benchmark script's ``main()``, with what the product refuses as one line and exit 1 (:func:`refused`), never a
    traceback."""
    from edge_inception.errors import EdgeInceptionError

    try:
        return main()
    except EdgeInceptionError as exc:
        return refused(exc)


def sequence_start_load() -> float | None:
    """The load average at which the running `make bench` started (quiet by the load rule), or None outside one."""
    try:
        value = float(os.environ.get(SEQUENCE_ENV, ""))
    except ValueError:
        return None
    return value if 0.0 <= value < 1e6 else None


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def isa_text(isa: list[str]) -> str:
    return ", ".join(isa) or "no SIMD flags read"


class Record:
    """How one benchmark run went: the CPU, the load at the start, and every round's load (see the module's docstring)."""

    def __init__(self, *, max_load: float = MAX_LOAD) -> None:
        mark_ours()  # every process the benchmark starts from here on is ours, also those that leave its tree (Ray's daemons)
        cpu = cpu_info()
        self.cpu, self.cores, self.isa = cpu.model, cpu.cores, cpu.simd
        self.max_load = max_load
        self.load_at_start = loadavg()
        self.waited_s = 0.0
        self.rounds: list[dict[str, Any]] = []
        self.sequence_load = sequence_start_load()
        self.others_before: float | None = None  # inside make bench: other processes' cores in the window before the start

    def wait_for_quiet(self, limit_s: float = WAIT_S, poll_s: float = 5.0) -> float:
        """Wait until the machine is quiet (at most ``limit_s``); the seconds waited. Quiet: the 1-minute load average
        below ``max_load``; inside `make bench` that started quiet, the rest of the machine under a tenth of a core over
        :data:`IDLE_WINDOW_S` (the module's notes say why)."""
        t0 = time.monotonic()
        if self.sequence_load is not None and self.sequence_load < self.max_load:
            while True:
                with LoadMeter(-1) as meter:
                    time.sleep(IDLE_WINDOW_S)
                self.others_before = meter.result.others_cores
                if not meter.result.disturbed or time.monotonic() - t0 >= limit_s:
                    break
        else:
            while (loadavg() or 0.0) >= self.max_load and time.monotonic() - t0 < limit_s:
                time.sleep(poll_s)
        self.waited_s = round(time.monotonic() - t0, 1)
        self.load_at_start = loadavg()
        return self.waited_s

    @property
    def judged_in_sequence(self) -> bool:
        """Whether this script's start was judged by make bench's rule (the others idle), not by the load average."""
        return self.others_before is not None and self.sequence_load is not None

    @property
    def quiet_start(self) -> bool:
        """The load rule at the start, or (inside a `make bench` that started quiet) the rest of the machine idle before it."""
        if self.judged_in_sequence:
            return self.sequence_load < self.max_load and self.others_before <= DISTURBED_CORES
        return self.load_at_start is None or self.load_at_start < self.max_load

    def _start_text(self) -> str:
        if self.judged_in_sequence:
            return (f"make bench started at load {self.sequence_load}; other processes used {self.others_before} core in the "
                    f"{IDLE_WINDOW_S:g} s before this script (load average {self.load_at_start}, mostly make bench's previous script)")
        return f"load average {self.load_at_start} at the start"

    def _add(self, label: str, load: RoundLoad, row: dict[str, Any] | None = None) -> dict[str, Any]:
        row = {} if row is None else row
        row.update({"label": label, **asdict(load), "round": len(self.rounds)})
        self.rounds.append(row)
        return row

    @contextmanager
    def round(self, label: str) -> Iterator[dict[str, Any]]:
        """Measure the machine around the block; yields the round's row (filled in when the block ends)."""
        row: dict[str, Any] = {"label": label}
        with LoadMeter(len(self.rounds)) as meter:
            yield row
        self._add(label, meter.result, row)

    def measure(self, label: str, fn: Callable[[], T], *, reruns: int = 0) -> T:
        """``fn()`` in a round; while that round was disturbed, up to ``reruns`` more times (the disturbed rounds stay in
        the record, not counted). Returns the last call's value."""
        for attempt in range(reruns + 1):
            with self.round(label if attempt == 0 else f"{label} (again)") as row:
                value = fn()
            if not row["disturbed"] or attempt == reruns:
                return value
            row["counted"] = False
        raise AssertionError("unreachable")

    def add_rounds(self, label: str, rounds: list[RoundLoad] | list[dict[str, Any]]) -> None:
        """Rounds measured elsewhere (a BenchReport's ``rounds``, or their JSON form)."""
        for r in rounds:
            self._add(label, r if isinstance(r, RoundLoad) else RoundLoad(**{k: v for k, v in r.items() if k in RoundLoad.__dataclass_fields__}))

    @property
    def disturbed(self) -> list[dict[str, Any]]:
        """The disturbed rounds whose figures count."""
        return [r for r in self.rounds if r["disturbed"] and r.get("counted", True)]

    @property
    def quotable(self) -> bool:
        return not self.disturbed and self.quiet_start

    def why(self) -> str:
        if self.quotable:
            return (f"quiet: {self._start_text()} (< {self.max_load}), no counted round in which other "
                    f"processes used more than {DISTURBED_CORES} core ({len(self.rounds)} round(s))")
        parts = []
        if not self.quiet_start and self.judged_in_sequence:
            parts.append(f"not quiet at the start: {self._start_text()} (quiet: make bench started at load < {self.max_load} and others "
                         f"used at most {DISTURBED_CORES} core before this script)")
        elif not self.quiet_start:
            parts.append(f"the 1-minute load average was {self.load_at_start} at the start (>= {self.max_load})")
        if self.disturbed:
            parts.append(f"{len(self.disturbed)} of {len(self.rounds)} round(s) ran while other processes used more than {DISTURBED_CORES} "
                         "core (" + ", ".join(f"{r['label']}: {r['others_cores']}" for r in self.disturbed[:6])
                         + (", ..." if len(self.disturbed) > 6 else "") + ")")
        return "NOT TO BE QUOTED as a goal met: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "cores": self.cores, "isa": self.isa, "max_load": self.max_load, "load_at_start": self.load_at_start,
                "bench_start_load": self.sequence_load, "others_cores_before": self.others_before,
                "waited_for_quiet_s": self.waited_s, "rounds": self.rounds, "disturbed_rounds": len(self.disturbed),
                "quotable": self.quotable, "verdict": self.why()}

    def header(self) -> list[str]:
        """Two Markdown list items: the machine, and whether these figures may be quoted."""
        return [f"- CPU: {self.cpu}, {self.cores} cores; ISA: {isa_text(self.isa)}",
                f"- record: {'quiet' if self.quotable else '**' + self.why() + '**'}"
                + ("" if not self.quotable else f" ({len(self.rounds)} round(s), {self._start_text()})")]

    def met(self, ok: bool) -> str:
        """A goal's 'met' cell: a met goal from a disturbed run says it is not to be quoted."""
        if not ok:
            return "**no**"
        return "yes" if self.quotable else "yes (disturbed run: not quotable)"
