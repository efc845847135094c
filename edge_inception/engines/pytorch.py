"""The PyTorch model itself, the baseline every benchmark compares against: in eager mode, and on CUDA also replayed from
a captured CUDA graph (PyTorch's fastest plain form at small batches, where launching kernels costs more than running them)."""

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


class GraphedCall:
    """``fn`` (a PyTorch callable on one CUDA tensor) captured into a CUDA graph once per input shape and replayed: one
    launch per inference instead of one per kernel. Each shape keeps a static input buffer that a call copies into.

    Capture follows PyTorch's recipe: three warm-up calls on a side stream (cuDNN picks its algorithms, lazy
    initialisation happens there), then the capture. A callable that cannot be captured raises on the first call; there
    is no fallback, since a failed capture can leave the process's CUDA state unusable (seen on an H100 with an
    AOTInductor package: the next compile failed with "Offset increment outside graph capture")."""

    def __init__(self, fn: Any, warmup: int = 3) -> None:
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}  # shape -> (graph, static input, static output)

    def __call__(self, x: Any) -> Any:
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_x, static_y = self.graphs[key]
        static_x.copy_(x, non_blocking=True)
        graph.replay()
        return static_y

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        import torch

        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_y = self.fn(static_x)
        return graph, static_x, static_y


class TorchRunner(Runner):
    """The PyTorch model in eager mode; on CUDA optionally in FP16 with channels-last memory (PyTorch's fast GPU path)."""

    name = "torch"

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu", threads: int = 0, half: bool = False,
                 channels_last: bool = False, cuda_graph: bool = False, **load_kwargs: Any) -> None:
        self.weights, self.device, self.threads, self.load_kwargs = weights, device, threads, load_kwargs
        self.half, self.channels_last = half, channels_last
        self.cuda_graph = cuda_graph and device.startswith("cuda")  # replay from a captured CUDA graph
        self.model: Any = None
        self.call: Any = None

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
        self.call = GraphedCall(model) if self.cuda_graph else model

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.half:
                x = x.half()
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.call(x)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return np.asarray(out.float().cpu().numpy())

    def deactivate(self) -> None:
        self.model = self.call = None
