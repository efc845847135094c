"""OpenVINO runtime (optional extra): x86 CPUs and Intel GPUs. The artifact is OpenVINO IR (.xml + .bin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from .base import Runner


def _ov():  # -> module
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'edge-inception[openvino]'") from exc
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

    def __init__(self, path: Path, *, threads: int = 0, hint: str = "LATENCY", device: str = "CPU") -> None:
        self.path, self.threads, self.hint, self.device = path, threads, hint, device
        self.request: Any = None

    def activate(self) -> None:
        ov = _ov()
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = ov.Core().compile_model(str(self.path), self.device, config)
        self.request = compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(next(iter(result.values())))

    def deactivate(self) -> None:
        self.request = None
