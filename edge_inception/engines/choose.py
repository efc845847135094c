"""Which runtime builds an artifact for a target: the decision, as a plain function of what this machine has.

CPU targets use the target's backend (or ``--backend``). For GPU targets, in order of preference:

1. native TensorRT, when the real ``tensorrt`` module loads (not the stubs' empty namespace);
2. ONNX Runtime with its TensorRT provider, when that provider's libraries really load (a probe session, once);
   not for a strict FP32 build, since that provider cannot turn TensorRT's TF32 off;
3. ONNX Runtime with its CUDA provider.

``--backend`` forces one and fails with that backend's install hint when it cannot run here. The choice is stated
in one line at build time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendUnavailableError
from ..vocab import Backend, Precision
from .targets import Target

CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


@dataclass(frozen=True)
class Availability:
    """What this machine can run for a GPU target: each field None when usable, else why not."""

    tensorrt: str | None  # native TensorRT Python bindings
    ort_tensorrt: str | None  # ONNX Runtime's TensorRT execution provider
    ort_cuda: str | None  # ONNX Runtime's CUDA execution provider


@dataclass(frozen=True)
class Choice:
    backend: Backend
    providers: tuple[str, ...] = ()  # ONNX Runtime's GPU execution providers, in priority order
    line: str = ""  # what was chosen and why, for the user


def probe(target: Target) -> Availability:
    """The real probes (each cached for the process); a CPU target probes nothing."""
    if target.device == "cpu":
        return Availability(None, None, None)
    from .ort import provider_missing
    from .tensorrt import tensorrt_missing

    return Availability(tensorrt_missing(), provider_missing(TENSORRT), provider_missing(CUDA))


def choose(target: Target, precision: Precision, requested: Backend | None, available: Availability, *,
           allow_tf32: bool = False) -> Choice:
    """The backend (and, for ONNX Runtime on a GPU, its providers) for ``target``."""
    if target.device == "cpu":
        backend = requested or Backend(target.backend)
        return Choice(backend, (), f"{backend.value} on the CPU")
    wants_trt = Backend.tensorrt.value in target.backends
    if requested is Backend.tensorrt or (requested is None and wants_trt and available.tensorrt is None):
        if available.tensorrt is not None:
            raise BackendUnavailableError(available.tensorrt)
        return Choice(Backend.tensorrt, (), "native TensorRT")
    if requested not in (None, Backend.ort):
        return Choice(requested, (), f"{requested.value} (as asked)")
    providers: list[str] = []
    skipped: list[str] = []
    if wants_trt and available.tensorrt is not None:
        skipped.append(f"native TensorRT: {available.tensorrt}")
    if wants_trt and available.ort_tensorrt is None and (precision is not Precision.fp32 or allow_tf32):
        providers.append(TENSORRT)
    elif wants_trt and available.ort_tensorrt is None:
        skipped.append("ONNX Runtime's TensorRT provider: it cannot turn TF32 off, and this FP32 build is strict (--allow-tf32 permits it)")
    elif wants_trt:
        skipped.append(f"ONNX Runtime's TensorRT provider: {available.ort_tensorrt}")
    if available.ort_cuda is None:
        providers.append(CUDA)
    else:
        skipped.append(f"ONNX Runtime's CUDA provider: {available.ort_cuda}")
    if not providers:
        raise BackendUnavailableError(f"target '{target.name}' needs a GPU runtime and none is usable here: " + "; ".join(skipped))
    line = f"ONNX Runtime with {' then '.join(providers)}"
    if skipped and requested is None:
        line += " (not " + "; not ".join(skipped) + ")"
    return Choice(Backend.ort, tuple(providers), line)
