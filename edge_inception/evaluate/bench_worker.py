"""One engine, one batch size, one round, in its own process: ``python -m edge_inception.evaluate.bench_worker SPEC_JSON``.

Running each measurement in a fresh process guarantees no other engine's thread pool is alive and spinning
(measured here: interleaving two ONNX Runtime sessions in one process doubled one's latency).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_inferences(infer: Callable[[], object], *, warmup: int, iterations: int, warmup_s: float = 0.0,
                    duration_s: float = 0.0) -> list[float]:
    """Milliseconds per call of ``infer`` (which must return once the device is done): ``warmup`` calls and
    ``warmup_s`` seconds untimed, then at least ``iterations`` calls and at least ``duration_s`` seconds timed."""
    t_end = time.perf_counter() + warmup_s
    for _ in range(warmup):
        infer()
    while time.perf_counter() < t_end:
        infer()
    samples: list[float] = []
    deadline = time.perf_counter() + duration_s
    while len(samples) < iterations or (duration_s and time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        infer()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def make_runner(spec: dict[str, Any]):  # -> Runner
    from ..engines.registry import PLAIN_ONNX_BACKEND, get_backend, open_runner
    from ..vocab import Baseline

    kind, threads = spec["kind"], int(spec.get("threads") or 0)
    if kind == Baseline.torch:
        from ..engines.pytorch import TorchRunner

        return TorchRunner(threads=threads, **spec["torch_kwargs"])
    if kind == Baseline.ort_default:
        from pathlib import Path

        if spec.get("device") == "cuda":  # plain ONNX Runtime on the same GPU: the CUDA provider with its defaults
            from ..engines.ort import CPU, CUDA, OrtRunner

            return OrtRunner(Path(spec["path"]), threads=threads, optimized=False, providers=[(CUDA, {}), (CPU, {})])
        return get_backend(PLAIN_ONNX_BACKEND).open(Path(spec["path"]), None, threads=threads)
    return open_runner(spec["path"], threads=threads or None)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    batch = np.random.default_rng(0).standard_normal((spec["batch"], 3, spec["image_size"], spec["image_size"])).astype(np.float32)
    with make_runner(spec) as runner:
        samples = time_inferences(lambda: runner.infer(batch), warmup=int(spec.get("warmup") or 0), iterations=int(spec.get("iterations") or 0),
                                  warmup_s=float(spec.get("warmup_s") or 0), duration_s=float(spec.get("duration_s") or 0))
    return {"samples_ms": samples}


def matmul_peak(seconds: float = 0.5, n: int = 2048, threads: int = 0) -> dict[str, float]:
    """Multiply-adds per second of a float32 n x n matrix multiply in ONNX Runtime (MLAS, the CPU kernels the
    engines use), with the engines' thread count; best of as many runs as fit in ``seconds`` (at least three).
    0.5 s: about nine runs of 54 ms on a 2-core AVX-512 Xeon, whose best agreed with the best of 1 s (18 runs) within
    the probe's own spread (148-158 vs 154-158 G multiply-adds/s, three alternating tries each), for 0.5 s less a bench."""
    from onnx import TensorProto, helper, numpy_helper

    from ..onnx_file import ort_session

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort_session(model.SerializeToString(), threads=threads)
    a = rng.standard_normal((n, n)).astype(np.float32)
    samples = time_inferences(lambda: session.run(None, {"a": a}), warmup=2, iterations=3, duration_s=seconds)
    return {"macs_per_s": n**3 / (min(samples) / 1e3), "n": n, "threads": threads}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    out = matmul_peak(threads=int(spec.get("threads") or 0)) if spec["kind"] == "peak" else measure(spec)
    print(json.dumps(out))
