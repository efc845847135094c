"""ONNX Runtime backend: CPU with graph optimisations applied offline, CUDA and TensorRT providers for GPUs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from .base import Manifest, Runner
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


def fold_weight_only_dequantize(model) -> int:
    """Turn INT8 weights that feed float compute (the quantization guard's weight-only stages) back into float initializers.

    ONNX Runtime does not constant-fold DequantizeLinear (it keeps Q/DQ pairs for its INT8 fusions), so such a stage
    would dequantize its weights on every run. An engine build folds them once, as TensorRT does: the artifact grows
    by those weights, the arithmetic is the same. Weights of INT8 compute (activation DQ beside them) are left alone.
    Returns how many were folded.
    """
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def int8_compute(node, weight_name: str) -> bool:
        # ORT fuses DQ(x) + DQ(w) -> Conv [-> Relu] -> Q into one INT8 kernel; without the Q after it, the op runs in
        # float from dequantized inputs (a weight-only stage behind an INT8 one)
        others = [producer.get(i) for i in node.input if i and i != weight_name]
        if not any(p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in init for p in others):
            return False
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
            after = consumers.get(after[0].output[0], [])
        return bool(after) and all(a.op_type == "QuantizeLinear" for a in after)

    folded = []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or not all(i in init for i in dq.input if i):
            continue
        users = consumers.get(dq.output[0], [])
        if not users or any(u.op_type not in ("Conv", "Gemm", "MatMul") or int8_compute(u, dq.output[0]) for u in users):
            continue
        q = numpy_helper.to_array(init[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(init[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim == 1 and q.ndim > 1:
            shape[axis] = -1
        w = ((q - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(w, dq.output[0]))
        folded.append(dq)
    for dq in folded:
        model.graph.node.remove(dq)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return len(folded)


def cpu_model(source: Path) -> tuple[str | bytes, int]:
    """``source`` as the CPU engine runs it: its path, or its bytes with weight-only INT8 folded; and how many were folded."""
    import onnx

    model = onnx.load(str(source))
    folded = fold_weight_only_dequantize(model)
    if not folded:
        return str(source), 0
    log.info("folded %d weight-only DequantizeLinear node(s) into float weights", folded)
    return model.SerializeToString(), folded


def build_cpu(source: Path, artifact: Path, threads: int) -> int:
    """Apply ONNX Runtime's full graph optimisation (fusions, QDQ -> QLinear, NCHWc layouts) and save the result.

    Weight-only INT8 stages are folded to float first (see :func:`fold_weight_only_dequantize`); returns how many.
    """
    import onnxruntime as ort

    model, folded = cpu_model(source)
    ort.InferenceSession(model, session_options(threads, optimize_to=artifact), providers=["CPUExecutionProvider"])
    return folded


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
