"""ONNX Runtime backend: CPU with graph optimisations applied offline, CUDA and TensorRT providers for GPUs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from ..targets import Target
from .base import Manifest, Runner

log = logging.getLogger(__name__)

PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu (pip install 'edge-inception[gpu]')",
    "TensorrtExecutionProvider": "onnxruntime-gpu with TensorRT libraries (pip install 'edge-inception[gpu,tensorrt]')",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}


def providers_for(target: Target, precision: str, cache_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Execution providers, in priority order, with their options for ``target``."""
    if target.device == "cpu":
        return [("CPUExecutionProvider", {})]
    trt_options = {
        "trt_fp16_enable": precision in ("fp16", "int8"),
        "trt_int8_enable": precision == "int8",
        "trt_max_workspace_size": target.workspace_mb << 20,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_builder_optimization_level": target.builder_optimization_level,
    }
    if target.dla_core is not None:
        trt_options.update({"trt_dla_enable": True, "trt_dla_core": target.dla_core})
    chain: list[tuple[str, dict[str, Any]]] = []
    if target.backend == "tensorrt" or "tensorrt" in target.backends:
        chain.append(("TensorrtExecutionProvider", trt_options))
    chain += [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}), ("CPUExecutionProvider", {})]
    return chain


def require_providers(chain: list[tuple[str, dict[str, Any]]]) -> None:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    for name, _ in chain[:1]:
        if name not in available:
            raise BackendUnavailableError(
                f"this onnxruntime build ({ort.__version__}) lacks {name}; install {PROVIDER_PACKAGES.get(name, 'a build that has it')}"
            )


def session_options(threads: int, optimize_to: Path | None = None, optimized: bool = True):  # -> ort.SessionOptions
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimize_to is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimize_to)
    elif optimized:
        # the artifact was optimised at build time: start-up does no graph work
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return opts


def build_cpu(source: Path, artifact: Path, threads: int) -> None:
    """Apply ONNX Runtime's full graph optimisation (fusions, QDQ -> QLinear, NCHWc layouts) and save the result."""
    import onnxruntime as ort

    ort.InferenceSession(str(source), session_options(threads, optimize_to=artifact), providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, path: Path, *, threads: int = 0, optimized: bool = True,
                 providers: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.path, self.threads, self.optimized = path, threads, optimized
        self.providers = providers or [("CPUExecutionProvider", {})]
        self.session: Any = None

    def activate(self) -> None:
        import onnxruntime as ort

        require_providers(self.providers)
        self.session = ort.InferenceSession(str(self.path), session_options(self.threads, optimized=self.optimized),
                                            providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0])

    def deactivate(self) -> None:
        self.session = None


def open_ort(artifact: Path, manifest: Manifest, threads: int | None = None) -> OrtRunner:
    providers = [(name, opts) for name, opts in manifest.options.get("providers", [["CPUExecutionProvider", {}]])]
    n = threads if threads is not None else int(manifest.options.get("threads", 0))
    return OrtRunner(artifact, threads=n, optimized=manifest.options.get("offline_optimized", False), providers=providers)
