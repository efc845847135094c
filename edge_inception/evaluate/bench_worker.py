"""One engine, one batch size, one round, in its own process: ``python -m edge_inception.evaluate.bench_worker SPEC_JSON``.

Running each measurement in a fresh process guarantees no other engine's thread pool is alive and spinning
(measured here: interleaving two ONNX Runtime sessions in one process doubled one's latency).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np


def make_runner(spec: dict[str, Any]):  # -> Runner
    from ..engines.base import open_runner

    kind, threads = spec["kind"], int(spec.get("threads") or 0)
    if kind == "torch":
        from ..engines.pytorch import TorchRunner

        return TorchRunner(threads=threads, **spec["torch_kwargs"])
    if kind == "ort-default":
        from ..engines.ort import OrtRunner

        return OrtRunner(spec["path"], threads=threads, optimized=False)
    return open_runner(spec["path"], threads=threads or None)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    batch = np.random.default_rng(0).standard_normal((spec["batch"], 3, spec["image_size"], spec["image_size"])).astype(np.float32)
    with make_runner(spec) as runner:
        t_end = time.perf_counter() + float(spec.get("warmup_s") or 0)
        for _ in range(int(spec.get("warmup") or 0)):
            runner.infer(batch)
        while time.perf_counter() < t_end:
            runner.infer(batch)
        samples: list[float] = []
        deadline = time.perf_counter() + float(spec.get("duration_s") or 0)
        n = int(spec.get("iterations") or 0)
        while len(samples) < n or (spec.get("duration_s") and time.perf_counter() < deadline):
            t0 = time.perf_counter_ns()
            runner.infer(batch)  # runners synchronise the device before returning
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    return {"samples_ms": samples}


def matmul_peak(seconds: float = 1.0, n: int = 1024, threads: int = 0) -> dict[str, float]:
    """Multiply-adds per second of a float32 n x n matrix multiply (PyTorch's CPU BLAS), best of several."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, n**3 / (time.perf_counter() - t0))
    return {"macs_per_s": best, "n": n, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    out = matmul_peak(threads=int(spec.get("threads") or 0)) if spec["kind"] == "peak" else measure(spec)
    print(json.dumps(out))
