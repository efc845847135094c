"""OpenVINO runtime (optional extra): x86 CPUs and Intel GPUs. The artifact is OpenVINO IR: ``<name>.xml`` (the graph,
hashed as the artifact) and ``<name>.bin`` (the weights, a companion whose hash the manifest also carries)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from ..vocab import Backend, Precision
from .manifest import Manifest
from .registry import BuildJob, BuildOutput
from .runner import NodeTime, Runner, Timings

INSTALL_HINT = "OpenVINO is not installed: pip install 'edge-inception[openvino]'"


def _ov():  # -> module
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(INSTALL_HINT) from exc
    return openvino


def openvino_version() -> str:
    return str(_ov().__version__)


def build_ir(source: Path, artifact: Path) -> None:
    """ONNX (including Q/DQ INT8) -> OpenVINO IR; weights go to the .bin beside the .xml."""
    ov = _ov()
    model = ov.convert_model(str(source))
    ov.save_model(model, str(artifact), compress_to_fp16=False)


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: Path, *, threads: int = 0, hint: str = "LATENCY", device: str = "CPU", inference_precision: str | None = None,
                 perf_counters: bool = False) -> None:
        self.path, self.threads, self.hint, self.device = path, threads, hint, device
        self.inference_precision, self.perf_counters = inference_precision, perf_counters
        self.request: Any = None

    def activate(self) -> None:
        ov = _ov()
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.perf_counters:
            config["PERF_COUNT"] = True
        compiled = ov.Core().compile_model(str(self.path), self.device, config)
        self.request = compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: the request reads the array in place (a sync call: it outlives the inference), no copy per call
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        return np.asarray(next(iter(result.values())))

    def deactivate(self) -> None:
        self.request = None


class OpenVinoBackend:
    name = Backend.openvino
    suffix = ".xml"

    def available(self) -> str | None:
        return None if importlib.util.find_spec("openvino") else INSTALL_HINT

    def build(self, job: BuildJob) -> BuildOutput:
        artifact = job.work_dir / f"{job.stem}{self.suffix}"
        build_ir(job.source, artifact)
        # OpenVINO's CPU plugin computes float layers in bf16 where the CPU has it (AVX512_BF16, AMX): an FP32 artifact
        # asks for f32, so that it computes what its source computes; reduced-precision artifacts keep the plugin's choice
        options = {"inference_precision": "f32"} if job.precision is Precision.fp32 else {}
        return BuildOutput(artifact, {"openvino": openvino_version()}, options, companions=[artifact.with_suffix(".bin")])

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None, perf_counters: bool = False) -> Runner:
        n = threads if threads is not None else (manifest.threads if manifest else 0)
        precision = manifest.options.get("inference_precision") if manifest else None
        return OpenVinoRunner(artifact, threads=n, inference_precision=precision if isinstance(precision, str) else None,
                              perf_counters=perf_counters)

    def profile(self, artifact: Path, manifest: Manifest | None, x: np.ndarray, *, iterations: int, warmup: int) -> Timings:
        """OpenVINO's per-layer performance counters (``PERF_COUNT``), read after each of ``iterations`` inferences."""
        import time

        runner = self.open(artifact, manifest, perf_counters=True)
        totals: dict[str, float] = {}
        ops: dict[str, str] = {}
        runs: list[float] = []
        with runner:
            request = runner.request  # type: ignore[attr-defined]
            for i in range(warmup + iterations):
                t0 = time.perf_counter()
                runner.infer(x)
                if i < warmup:
                    continue
                runs.append((time.perf_counter() - t0) * 1e3)
                for layer in request.get_profiling_info():
                    totals[layer.node_name] = totals.get(layer.node_name, 0.0) + layer.real_time.total_seconds() * 1e3
                    ops[layer.node_name] = f"{layer.node_type}/{layer.exec_type}"
        nodes = [NodeTime(n, ops[n], ms / iterations) for n, ms in totals.items() if ms > 0]
        return Timings(nodes, runs, f"OpenVINO {openvino_version()} performance counters")


BACKEND = OpenVinoBackend()
