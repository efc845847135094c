"""The runner interface every backend implements: ``with runner: logits = runner.infer(batch)``.

Modelled on Polygraphy's ``BaseRunner``: ``activate`` loads (sessions, engines, device memory), ``infer`` runs one
batch, ``deactivate`` frees. This module knows no backend.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


class Runner(abc.ABC):
    """One loaded model: N x 3 x H x W float32 in, N x num_classes float32 logits out."""

    name = "runner"
    device = "cpu"  # where it computes: "cpu", or "cuda" / a GPU's name for GPU backends
    batch_range: tuple[int, int] | None = None  # the batch sizes the artifact takes (its manifest's min and max), if bounded

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abc.abstractmethod
    def activate(self) -> None: ...

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x num_classes float32 logits; returns once the device is done."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits of any number of images: within the artifact's batch range in one call, else in chunks it takes (a
        fixed-batch artifact gets its batch, the last chunk padded). ``infer`` runs exactly the batch it is given."""
        from ..onnx_file import run_in_batches

        if self.batch_range is None:
            return self.infer(images)
        return run_in_batches(self.infer, images, *self.batch_range)


@dataclass
class NodeTime:
    """One node's (or fused layer's) time per inference, as a backend's profiler reports it."""

    name: str
    op: str
    ms: float


@dataclass
class Timings:
    """What a backend's ``profile()`` returns: node times per inference, each profiled run's duration, the profiler used."""

    nodes: list[NodeTime]
    runs_ms: list[float]
    source: str
