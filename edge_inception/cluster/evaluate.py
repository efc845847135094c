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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import scan_image_folder
from ..data.images import prefetch_batches
from ..engines.registry import artifact_info, open_runner
from ..errors import DatasetError
from ..evaluate.predict import EvalResult, folder_labels, folder_order_warning
from ..vocab import FolderOrder, PreprocessMode
from .connect import MAX_WORKERS, ClusterError, check_address, connect, quiet_ray_loggers

log = logging.getLogger(__name__)

TOP_K = 5


class Classifier:
    """Ray Data's callable class: built once per actor (the artifact opened once), called per batch of paths.

    A batch is ``{"path": N str}``; the answer adds ``top`` (N x k int64 class indices, best first, -1 where the image
    did not decode) and ``error`` (N str, empty where it decoded)."""

    def __init__(self, artifact: str, image_size: int, mode: str, k: int, threads: int | None) -> None:
        self.runner = open_runner(artifact, threads=threads).__enter__()
        self.image_size, self.mode, self.k = image_size, PreprocessMode(mode), k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(str(p)) for p in batch["path"]]
        top = np.full((len(paths), self.k), -1, np.int64)
        errors = np.array([""] * len(paths), dtype=object)
        index = {p: i for i, p in enumerate(paths)}
        for chunk in prefetch_batches(paths, self.image_size, self.mode, batch_size=max(1, len(paths)), ahead=1):
            for p, why in chunk.failed:
                errors[index[p]] = why or "unreadable"
            if chunk.paths:
                logits = self.runner.run(chunk.tensors)
                rows = np.argsort(-logits, axis=1)[:, : self.k]  # the order verify.topk_hits uses
                top[[index[p] for p in chunk.paths]] = rows
        return {"path": batch["path"], "top": top, "error": errors}

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.__exit__(None, None, None)


@dataclass
class ClusterEvalResult(EvalResult):
    """:class:`EvalResult` plus what the cluster adds: the per-image top-k (path -> class indices, best first), the
    seconds until the cluster was usable (``startup_s``, not in ``seconds``), and the worker count."""

    top: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    startup_s: float = 0.0
    workers: int = 1
    address: str = "local"


def evaluate_on_cluster(artifact: str | Path, data: str | Path, address: str, *, workers: int = 1, batch_size: int = 16,
                        mode: PreprocessMode = PreprocessMode.fast, order: FolderOrder = FolderOrder.numeric,
                        threads: int | None = None) -> ClusterEvalResult:
    """Top-1 / top-5 of ``artifact`` on the ImageFolder ``data`` over the Ray cluster at ``address`` (``local``: a
    private one with ``workers`` CPUs), ``workers`` actors, ``batch_size`` images per call.

    ``seconds`` covers the data set's pass (decode + preprocess + inference + transfers), not the cluster's start-up
    (``startup_s``). Unreadable files are counted in ``skipped`` and listed in ``failed``.

    Raises :class:`DatasetError` as plain eval does, :class:`ClusterError` when the cluster cannot be used or a
    worker fails."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ClusterError(f"--workers must be in [1, {MAX_WORKERS}], got {workers}")
    check_address(address)
    art = Path(artifact).resolve()
    info = artifact_info(art)
    folder = scan_image_folder(data, min_classes=1, check=False)
    mapping = folder_labels(folder.classes, info.class_names, info.num_classes, order)
    warning = folder_order_warning(folder.classes, info.class_names, order)
    label_of = {str(p.resolve()): mapping[label] for p, label in folder.samples}
    k = min(TOP_K, info.num_classes)
    if threads is None and address == "local":
        import os

        threads = max(1, (os.cpu_count() or 1) // workers)  # the workers share the machine's cores, as plain eval's one runner does
    with connect(address, num_cpus=workers) as cluster:
        import ray
        import ray.data

        quiet_ray_loggers()  # Ray Data sets its own levels when imported
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        paths = sorted(label_of)
        blocks = max(1, min(len(paths) // batch_size, workers * 8))
        items = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        ds = items.map_batches(Classifier, fn_constructor_args=(str(art), info.image_size, mode.value, k, threads), batch_size=batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                            max_restarts=0)  # a failed actor fails the run (and Ray warns of restarts otherwise)
        t0 = time.perf_counter()
        try:
            rows: list[dict[str, Any]] = ds.take_all()
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"the evaluation failed on the cluster: {str(exc).splitlines()[0][:300]}") from None
        seconds = time.perf_counter() - t0
    top: dict[str, list[int]] = {}
    failed: dict[str, str] = {}
    for row in rows:
        path = str(row["path"])
        if path not in label_of:
            raise ClusterError(f"a worker answered for a file it was not sent: {path[:200]!r}")
        if row["error"]:
            failed[path] = str(row["error"])
        else:
            top[path] = [int(i) for i in row["top"]]
    if len(top) + len(failed) != len(paths):
        raise ClusterError(f"the cluster answered for {len(top) + len(failed)} of {len(paths)} images")
    n = len(top)
    if n == 0:
        raise DatasetError(f"{data}: no readable images")
    top1 = sum(1 for p, t in top.items() if t[0] == label_of[p])
    top5 = sum(1 for p, t in top.items() if label_of[p] in t)
    return ClusterEvalResult(n, top1 / n, top5 / n, len(folder.skipped) + len(failed), seconds, [warning] if warning else [],
                             seeded=info.seeded, top=top, failed=failed, startup_s=cluster.startup_s, workers=workers, address=address)
