"""How many ``--workers`` a cluster can run: one Ray CPU per worker, at most as many workers as the cluster has CPUs,
and, on a joined cluster, as many as are free now.

Refused, not capped: each worker is an actor with an engine of its own, and Ray Data's actor pool runs with the actors
that get a CPU on a joined cluster (fewer than asked where it lacks CPUs or other jobs hold them; with none, it waits,
until :data:`~edge_inception.cluster.evaluate.NO_PROGRESS_TIMEOUT_S` ends the pass); on ``local`` (a private
cluster sized to the workers) Ray would start them all on the machine's cores, where they contend and each takes its
memory. A count lowered in silence would make the report's "N worker(s)" (and a benchmark's comparison at the same
worker count) say something that did not run, so the line says the most that can run and the user chooses (as ``ray
start --num-cpus`` or ``torchrun --nproc-per-node`` take a count as given, and leave no room for a second guess of ours
in between).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .connect import ClusterError


def workers_that_fit(nodes: Iterable[Mapping[str, object]]) -> int:
    """How many one-CPU workers fit on nodes with these resources (Ray's per-node dicts, total or available; no ``CPU``
    key: none): each node's whole CPUs, since an actor's CPU is on one node (two nodes with half a CPU free each hold no
    worker, though Ray's cluster-wide sum says one). A value that is not a finite number counts as none."""
    fit = 0
    for resources in nodes:
        cpus = resources.get("CPU", 0)
        if isinstance(cpus, int | float) and math.isfinite(cpus) and cpus > 0:
            fit += int(cpus)
    return fit


def check_workers(workers: int, cpus: float, where: str, free: float | None = None) -> None:
    """Refuse ``workers`` actors (one CPU each) on ``where`` (``local``, or a head's address) with ``cpus`` CPUs in all
    and, on a joined cluster, ``free`` of them not held now (None: not known):
    :class:`ClusterError` saying the most that can run. ``cpus`` is the local machine's
    (:func:`~edge_inception.limits.usable_cpus`) or the joined cluster's (:func:`workers_that_fit` its nodes' totals;
    ``free``: their available resources)."""
    most = int(cpus)
    if workers > most:
        if where == "local":
            raise ClusterError(f"--workers {workers} for --cluster local: this machine gives this process {most} CPU(s); at most "
                               f"{most} (each worker is a process with an engine of its own)")
        if most < 1:
            raise ClusterError(f"the Ray cluster at {where} has no CPU for a worker (a head started with --num-cpus 0 and no node "
                               "joined?)")
        raise ClusterError(f"--workers {workers}: the Ray cluster at {where} has {most} CPU(s) in all (ray status); at most {most} "
                           "(each worker takes one)")
    if free is None or where == "local" or workers <= int(free):
        return
    now = max(0, int(free))
    raise ClusterError(f"--workers {workers}: the Ray cluster at {where} has {most} CPU(s) in all, {now} free now (other jobs hold "
                       f"the rest: ray status); at most {now} now, or wait for them (each worker takes one, and Ray would run fewer "
                       "than asked)")
