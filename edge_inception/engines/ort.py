"""ONNX Runtime backend: CPU with graph optimisations applied offline, CUDA and TensorRT providers for GPUs."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.graph_ops import fold_for_cpu
from ..convert.onnx_file import ort_session, run_session
from ..errors import BackendUnavailableError, EdgeInceptionError
from ..fileio import write_failure
from ..vocab import Backend
from .manifest import Manifest
from .registry import BuildJob, BuildOutput
from .runner import Runner
from .targets import Target

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


def build_cpu(source: Path, artifact: Path, threads: int) -> int:
    """Apply ONNX Runtime's full graph optimisation (fusions, QDQ -> QLinear, NCHWc layouts) and save the result.

    Weight-only INT8 stages are folded to float first (see :func:`~edge_inception.convert.graph_ops.fold_for_cpu`);
    returns how many.
    """
    model, folded = fold_for_cpu(source)
    try:
        ort_session(model, threads=threads, save_optimized_to=artifact)
    except Exception as exc:  # ONNX Runtime's own exception types (Fail, InvalidProtobuf, ...) derive from Exception only
        raise EdgeInceptionError(f"ONNX Runtime could not write the optimised model: {write_failure(artifact.parent, exc)}") from exc
    return folded


class OrtRunner(Runner):
    name = "ort"

    def __init__(self, path: Path, *, threads: int = 0, optimized: bool = True,
                 providers: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.path, self.threads, self.optimized = path, threads, optimized  # optimized: done at build time, load as is
        self.providers = providers or [("CPUExecutionProvider", {})]
        self.session: Any = None
        self.device = "cpu" if self.providers[0][0] == "CPUExecutionProvider" else "cuda"

    def activate(self) -> None:
        require_providers(self.providers)
        self.session = ort_session(self.path, threads=self.threads, optimize=not self.optimized, providers=self.providers)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return run_session(self.session, batch)

    def deactivate(self) -> None:
        self.session = None


class OrtBackend:
    """ONNX Runtime: ``<name>.ort.onnx``, optimised offline for the CPU; for GPUs the source graph with provider options."""

    name = Backend.ort
    suffix = ".ort.onnx"

    def available(self) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else "ONNX Runtime is not installed: pip install onnxruntime"

    def build(self, job: BuildJob) -> BuildOutput:
        import onnxruntime as ort

        chain = providers_for(job.target, job.precision, job.cache_dir / "trt-cache")
        require_providers(chain)
        artifact = job.work_dir / f"{job.stem}{self.suffix}"
        cpu = job.target.device == "cpu"
        options: dict[str, Any] = {"providers": chain, "offline_optimized": cpu}
        if cpu:
            options["folded_weight_dequantize"] = build_cpu(job.source, artifact, job.threads)
        else:
            shutil.copyfile(job.source, artifact)  # GPU providers optimise (and cache engines) at first load
        return BuildOutput(artifact, {"onnxruntime": ort.__version__}, options)

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None) -> Runner:
        if manifest is None:  # a plain ONNX file: ONNX Runtime's own defaults, as a user would run it
            return OrtRunner(artifact, threads=threads or 0, optimized=False)
        n = threads if threads is not None else manifest.threads
        return OrtRunner(artifact, threads=n, optimized=bool(manifest.options.get("offline_optimized", False)),
                         providers=manifest.providers or None)


BACKEND = OrtBackend()
