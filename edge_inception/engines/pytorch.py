"""The PyTorch model itself, in eager mode: the baseline every benchmark compares against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, require_modules
from .runner import Runner


def weights_for_onnx(metadata: dict[str, str]) -> dict[str, Any]:
    """How to rebuild the PyTorch model an ONNX file was exported from (its checkpoint, or its seed)."""
    source = metadata.get("checkpoint", "")
    kwargs: dict[str, Any] = {"variant": metadata.get("variant"), "transform_input": metadata.get("transform_input") == "true"}
    if source.startswith("seed:"):
        return {**kwargs, "weights": None, "seed": int(source.split(":", 1)[1]), "num_classes": int(metadata.get("num_classes", 1000))}
    if not source or not Path(source).is_file():
        raise CheckpointError(f"the checkpoint this model was exported from is not available here: {source or 'unknown'}")
    return {**kwargs, "weights": source}


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu", threads: int = 0, **load_kwargs: Any) -> None:
        self.weights, self.device, self.threads, self.load_kwargs = weights, device, threads, load_kwargs
        self.model: Any = None

    def activate(self) -> None:
        require_modules("the PyTorch runner", "torch")
        import torch

        from ..model.checkpoints import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = load_model(self.weights, **self.load_kwargs).model.eval().to(self.device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return np.asarray(out.float().cpu().numpy())

    def deactivate(self) -> None:
        self.model = None
