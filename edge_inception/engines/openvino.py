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
from .runner import Runner

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

    def __init__(self, path: Path, *, threads: int = 0, hint: str = "LATENCY", device: str = "CPU", inference_precision: str | None = None) -> None:
        self.path, self.threads, self.hint, self.device = path, threads, hint, device
        self.inference_precision = inference_precision
        self.request: Any = None

    def activate(self) -> None:
        ov = _ov()
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        compiled = ov.Core().compile_model(str(self.path), self.device, config)
        self.request = compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
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

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None) -> Runner:
        n = threads if threads is not None else (manifest.threads if manifest else 0)
        precision = manifest.options.get("inference_precision") if manifest else None
        return OpenVinoRunner(artifact, threads=n, inference_precision=precision if isinstance(precision, str) else None)


BACKEND = OpenVinoBackend()
