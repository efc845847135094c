"""``eval --cluster``: top-1 / top-5 of an artifact on an ImageFolder, spread over a Ray cluster with Ray Data.

The work is the one plain ``eval`` does (:func:`edge_inception.evaluate.predict.evaluate`), cut differently: the head
scans the folder and maps class folders to outputs (same functions); Ray Data's ``map_batches`` sends the file paths in
batches to a pool of actors, one per worker, each of which opens the artifact once through the backend registry
(:func:`~edge_inception.engines.registry.open_runner`) and decodes + preprocesses its batch with the toolkit's own
loader (:func:`~edge_inception.data.images.prefetch_batches`, ``fast`` or ``exact``); it sends back the top-k class
indices of every image (or why it did not decode), and the head counts.

Every node reads the artifact and the images at the same paths: on a one-machine cluster (``local``) that is a given,
across machines it needs a shared file system.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import scan_image_folder
from ..data.images import prefetch_batches
from ..engines.registry import artifact_info, open_runner
from ..errors import DatasetError
from ..evaluate.predict import EvalResult, folder_labels, folder_order_warning
from ..evaluate.verify import top_classes
from ..limits import usable_cpus
from ..vocab import FolderOrder, PreprocessMode
from .capacity import check_workers, workers_that_fit
from .connect import MAX_WORKERS, ClusterError, check_address, check_head, connect, quiet_ray_loggers

log = logging.getLogger(__name__)

TOP_K = 5
RAY_REMOTE_ARGS_DEPRECATED = r"`ray_remote_args` is deprecated"  # Ray Data 2.60's warning for map_batches(**ray_remote_args)
# A pass that moves no block for this long ends in a ClusterError: actors that get no CPU (other jobs took them after
# the first pass's check, or between passes; a node gone), a worker stuck. Ray Data's own guard, whose default (30 min)
# is kept for a user who sets Ray's variable for it; one Ray Data batch (CHUNKS_PER_CALL engine batches) takes seconds
# on a small board, and the actors' start (each opening the model) well under a minute.
NO_PROGRESS_TIMEOUT_S = 300.0
NO_PROGRESS_ENV = "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S"
CHUNKS_PER_CALL = 8  # engine batches per Ray Data batch: decoding overlaps inference within the call, as in plain eval


class Classifier:
    """Ray Data's callable class: built once per actor (the artifact opened once), called per batch of paths.

    A batch is ``{"path": N str}``; the answer adds ``top`` (N x k int64 class indices, best first, -1 where the image
    did not decode), ``error`` (N str, empty where it decoded) and ``started`` (N float64: the wall-clock second the
    call began, the same for the batch: the head times the steady state from the first one). The batch runs through the engine ``batch_size``
    images at a time, the next chunk decoded in a thread while the engine runs this one (plain eval's overlap: a batch
    from Ray is :data:`CHUNKS_PER_CALL` chunks, so only its first chunk's decoding is not hidden)."""

    def __init__(self, artifact: str, image_size: int, mode: str, k: int, threads: int | None, batch_size: int = 16) -> None:
        self.threads = threads if threads is not None else assigned_cpus()
        self.runner = open_runner(artifact, threads=self.threads).__enter__()
        self.image_size, self.mode, self.k, self.batch_size = image_size, PreprocessMode(mode), k, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.time()
        paths = [Path(str(p)) for p in batch["path"]]
        top = np.full((len(paths), self.k), -1, np.int64)
        errors = np.array([""] * len(paths), dtype=object)
        index = {p: i for i, p in enumerate(paths)}
        for chunk in prefetch_batches(paths, self.image_size, self.mode, batch_size=self.batch_size):
            for p, why in chunk.failed:
                errors[index[p]] = why or "unreadable"
            if chunk.paths:
                top[[index[p] for p in chunk.paths]] = top_classes(self.runner.run(chunk.tensors), self.k)  # the ranking every command uses
        return {"path": batch["path"], "top": top, "error": errors, "started": np.full(len(paths), started)}

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.__exit__(None, None, None)


def assigned_cpus() -> int:
    """The CPUs Ray gave this actor (its ``num_cpus``; at least 1): its engine's threads, so that several actors on one
    node share its cores instead of each starting a thread per core (``workers`` actors x cores threads on a node)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


@dataclass
class ClusterEvalResult(EvalResult):
    """:class:`EvalResult` plus what the cluster adds: the per-image top-k (path -> class indices, best first), the
    seconds until the cluster was usable (``startup_s``) and then until the first worker began its first batch
    (``workers_s``: Ray Data's plan, the actors started, each opening the artifact), neither in ``seconds``, and the worker
    count."""

    top: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    startup_s: float = 0.0
    workers_s: float = 0.0
    workers: int = 1
    address: str = "local"


class ClusterTopK:
    """A :class:`~edge_inception.evaluate.topk.TopKOnFiles` on the Ray cluster at ``address`` (``local``: a private one
    with ``workers`` CPUs): ``workers`` actors, ``batch_size`` images per engine call (:data:`CHUNKS_PER_CALL` of them per Ray
    Data batch). Joined (Ray imported) at the first call,
    kept for the next ones (``quantize`` judges several models), left, and a private cluster stopped, on exit.

    ``startup_s``: seconds until the cluster was usable; ``workers_s``: in the last pass, seconds until the first worker
    began its first batch (Ray Data's plan, actors started, each opening the model: start-up, as plain eval's model
    load is not in its rate); ``seconds``: the rest of the last pass, to the last answer (decode + preprocess +
    inference + transfers: the steady state). The workers' start is read from their wall clocks: on a joined cluster
    they are taken to agree with the head's (NTP); one outside the pass counts the whole pass.

    Raises :class:`ClusterError` for a bad address or worker count (at construction; on a joined cluster, more workers
    than its CPUs, or than are free at the first pass, once joined: :func:`~edge_inception.cluster.capacity.check_workers`),
    a cluster that cannot be used, a pass that makes no progress for :data:`NO_PROGRESS_TIMEOUT_S` (no worker gets a
    CPU, a worker stuck), a worker that fails or an answer that does not match what was sent."""

    def __init__(self, address: str, *, workers: int = 1, batch_size: int = 16, threads: int | None = None) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ClusterError(f"--workers must be in [1, {MAX_WORKERS}], got {workers}")
        check_address(address)
        if address == "local":
            check_workers(workers, usable_cpus(), address)  # more would contend for the cores (the cluster is sized to the workers)
        else:
            check_head(address)  # a wrong address is said now, before the work that leads to the first pass
        if threads is None and address == "local":
            threads = max(1, usable_cpus() // workers)  # the workers share the machine's cores, as plain eval's one runner does
        # on a joined cluster (threads None) each actor's engine runs as many threads as Ray CPUs it was given (assigned_cpus)
        self.address, self.workers, self.batch_size, self.threads = address, workers, batch_size, threads
        self.startup_s = self.workers_s = self.seconds = 0.0
        self.passes = 0
        self._stack = contextlib.ExitStack()
        self._joined = False

    def __enter__(self) -> ClusterTopK:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._joined = False

    def __call__(self, model: Path, paths: Sequence[Path], *, image_size: int, mode: PreprocessMode, k: int
                 ) -> tuple[dict[str, list[int]], dict[str, str]]:
        if not self._joined:
            self.startup_s = self._stack.enter_context(connect(self.address, num_cpus=self.workers)).startup_s
            self._joined = True
        import ray
        import ray.data

        if self.address != "local":  # Ray Data's actor pool would run fewer actors than asked, or none, and wait
            # free CPUs at the first pass only: a later one would count the CPUs our last pass's actors still hold while
            # Ray Data lets them go
            # per node (Ray's DeveloperAPI): an actor's CPU is on one node, and Ray's cluster-wide sums add up fractions
            from ray._private.state import available_resources_per_node, total_resources_per_node

            free = workers_that_fit(available_resources_per_node().values()) if self.passes == 0 else None
            check_workers(self.workers, workers_that_fit(total_resources_per_node().values()), self.address, free)

        quiet_ray_loggers()  # Ray Data sets its own levels when imported
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        if NO_PROGRESS_ENV not in os.environ:  # Ray's own setting, where the user gave one
            ctx.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
        sent = sorted({str(Path(p).resolve()) for p in paths})
        per_call = self.batch_size * CHUNKS_PER_CALL
        blocks = max(1, min(-(-len(sent) // per_call), self.workers * 8))
        items = ray.data.from_items([{"path": p} for p in sent], override_num_blocks=blocks)
        with warnings.catch_warnings():
            # max_restarts=0: a failed actor fails the run. Ray 2.60 has no named parameter for it (map_batches names
            # num_cpus, resources, label_selector, ...; none for restarts), and without it Ray Data restarts actors
            # without end (tried here: an actor that exited in its first batch left the run waiting past 100 s) and
            # Ray's core logs an ERROR line per actor ("constructor arguments in the object store and max_restarts >
            # 0"). Its deprecation of the catch-all (removed in Ray 2.64) is silenced for this one call, by its text:
            # the pin is 2.60 (constraints.txt); a Ray that drops the catch-all needs another way to say this.
            warnings.filterwarnings("ignore", message=RAY_REMOTE_ARGS_DEPRECATED, category=DeprecationWarning)
            ds = items.map_batches(Classifier, fn_constructor_args=(str(Path(model).resolve()), image_size, PreprocessMode(mode).value, k,
                                                                    self.threads, self.batch_size),
                                   batch_size=per_call, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.workers),
                                   num_cpus=1, max_restarts=0)
        t0 = time.time()
        try:
            rows: list[dict[str, Any]] = ds.take_all()
        except ray.data.exceptions.ExecutionTimeoutError:
            raise ClusterError(f"--workers {self.workers}: the Ray cluster at {self.address} made no progress for "
                               f"{ctx.execution_no_progress_timeout_s:g} s: workers that get no CPU (other jobs hold them, or a "
                               f"node is gone: ray status) or a worker stuck ({NO_PROGRESS_ENV} sets this bound)") from None
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"the evaluation failed on the cluster: {str(exc).splitlines()[0][:300]}") from None
        t1 = time.time()
        first = min((float(row["started"]) for row in rows), default=t0)
        first = first if t0 <= first <= t1 else t0  # a worker's clock that disagrees with ours: the whole pass
        self.workers_s, self.seconds = first - t0, t1 - first
        self.passes += 1
        top: dict[str, list[int]] = {}
        failed: dict[str, str] = {}
        expected = set(sent)
        for row in rows:
            path = str(row["path"])
            if path not in expected:
                raise ClusterError(f"a worker answered for a file it was not sent: {path[:200]!r}")
            if row["error"]:
                failed[path] = str(row["error"])
            else:
                top[path] = [int(i) for i in row["top"]]
        if len(top) + len(failed) != len(sent):
            raise ClusterError(f"the cluster answered for {len(top) + len(failed)} of {len(sent)} images")
        return top, failed


def evaluate_on_cluster(artifact: str | Path, data: str | Path, address: str, *, workers: int = 1, batch_size: int = 16,
                        mode: PreprocessMode = PreprocessMode.fast, order: FolderOrder = FolderOrder.numeric,
                        threads: int | None = None) -> ClusterEvalResult:
    """Top-1 / top-5 of ``artifact`` on the ImageFolder ``data`` over the Ray cluster at ``address`` (``local``: a
    private one with ``workers`` CPUs), ``workers`` actors, ``batch_size`` images per engine call (:class:`ClusterTopK`).

    ``seconds`` covers the data set's pass from the first worker's first batch (decode + preprocess + inference +
    transfers), not the cluster's start-up (``startup_s``) nor the workers' (``workers_s``), as plain eval's rate leaves
    out its model load. Unreadable files are counted in ``skipped`` and listed in ``failed``.

    Raises :class:`DatasetError` as plain eval does, :class:`ClusterError` when the cluster cannot be used or a
    worker fails."""
    run = ClusterTopK(address, workers=workers, batch_size=batch_size, threads=threads)
    art = Path(artifact).resolve()
    info = artifact_info(art)
    folder = scan_image_folder(data, min_classes=1, check=False)
    mapping = folder_labels(folder.classes, info.class_names, info.num_classes, order)
    warning = folder_order_warning(folder.classes, info.class_names, order)
    label_of = {str(p.resolve()): mapping[label] for p, label in folder.samples}
    with run:
        top, failed = run(art, [p for p, _ in folder.samples], image_size=info.image_size, mode=mode, k=min(TOP_K, info.num_classes))
    n = len(top)
    if n == 0:
        raise DatasetError(f"{data}: no readable images")
    top1 = sum(1 for p, t in top.items() if t[0] == label_of[p])
    top5 = sum(1 for p, t in top.items() if label_of[p] in t)
    return ClusterEvalResult(n, top1 / n, top5 / n, len(folder.skipped) + len(failed), run.seconds, [warning] if warning else [],
                             seeded=info.seeded, top=top, failed=failed, startup_s=run.startup_s, workers_s=run.workers_s, workers=workers,
                             address=address)
