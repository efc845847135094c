"""The PyTorch model itself, in eager mode: the baseline every benchmark compares against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, CheckpointError, require_modules
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
    """The PyTorch model in eager mode; on CUDA optionally in FP16 with channels-last memory (PyTorch's fast GPU path)."""

    name = "torch"

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu", threads: int = 0, half: bool = False,
                 channels_last: bool = False, **load_kwargs: Any) -> None:
        self.weights, self.device, self.threads, self.load_kwargs = weights, device, threads, load_kwargs
        self.half, self.channels_last = half, channels_last
        self.model: Any = None

    def activate(self) -> None:
        require_modules("the PyTorch runner", "torch")
        import torch

        from ..model.checkpoints import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("the PyTorch baseline on CUDA needs a CUDA build of PyTorch and a GPU; neither is here")
        model = load_model(self.weights, **self.load_kwargs).model.eval().to(self.device)
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented, absent from the stubs
        self.model = model

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.half:
                x = x.half()
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(x)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return np.asarray(out.float().cpu().numpy())

    def deactivate(self) -> None:
        self.model = None
