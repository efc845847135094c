"""Which runtime builds an artifact for a target: the decision, as a plain function of what this machine has.

CPU targets: ``build`` without ``--backend`` takes the fastest of the target's backends that run here, from a short
measurement of each on this machine (or its remembered record: :func:`edge_inception.autobuild.pick_backend`), decided
by :func:`fastest_backend`; with one backend installed, that one. Library calls without a backend use the target's
first (:func:`choose`). For GPU targets, in order of preference:

1. native TensorRT, when the real ``tensorrt`` module loads (not the stubs' empty namespace);
2. ONNX Runtime with its TensorRT provider, when that provider's libraries really load (a probe session, once);
   not for a strict FP32 build, since that provider cannot turn TensorRT's TF32 off;
3. ONNX Runtime with its CUDA provider.

``--backend`` forces one and fails with that backend's install hint when it cannot run here. The choice is stated
in one line at build time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class BackendTime:
    """One CPU backend's measured p50 (ms) on this machine for the model being built; None with ``failure`` when it could
    not be built or verified there."""

    backend: Backend
    p50_ms: float | None
    failure: str | None = None


def backends_to_measure(target: Target, requested: Backend | None, missing: Mapping[Backend, str | None]) -> tuple[Backend, ...]:
    """The backends whose speed decides a CPU build: every one of the target's that runs here (``missing`` None), when
    none was asked for and there are two or more; otherwise none (nothing to measure)."""
    if target.device != "cpu" or requested is not None:
        return ()
    usable = tuple(Backend(b) for b in target.backends if missing.get(Backend(b), "not probed") is None)
    return usable if len(usable) > 1 else ()


def fastest_backend(target: Target, precision: Precision, requested: Backend | None, missing: Mapping[Backend, str | None],
                    times: Sequence[BackendTime], *, source: str, noise: float, batch: int = 1) -> Choice:
    """The backend for a CPU build of a ``precision`` model (pure: every input given).

    ``requested`` (``--backend``) wins. Otherwise the target's backends that run here (``missing`` maps each to why it
    cannot, None when it can): the only one, if one; else the lowest p50 of ``times`` (measured at ``batch``) among
    those built and verified, where p50s within ``noise`` (relative) tie and the tie goes to the earlier in the
    target's list (the pipeline's rule: :func:`~edge_inception.engines.candidates.choose_ship`); with no usable time,
    the first. ``source`` says where the times come from (measured now, or a remembered record). The line says which
    and why. Raises :class:`BackendUnavailableError` when none of the target's backends runs here.
    """
    if requested is not None:
        return Choice(requested, (), f"{requested.value} on the CPU (as asked: --backend {requested.value})")
    order = [Backend(b) for b in target.backends]
    usable = [b for b in order if missing.get(b, "not probed") is None]
    not_here = "; ".join(f"not {b.value}: {missing.get(b) or 'not probed'}" for b in order if b not in usable)
    if not usable:
        raise BackendUnavailableError(f"target '{target.name}': none of its backends runs here ({not_here})")
    if len(usable) == 1:
        return Choice(usable[0], (), f"{usable[0].value} on the CPU: the only one of target '{target.name}''s backends that runs here"
                      + (f" ({not_here})" if not_here else ""))
    timed = {t.backend: t.p50_ms for t in times if t.failure is None and t.p50_ms is not None and t.backend in usable}
    failed = "; ".join(f"{t.backend.value} not judged: {t.failure}" for t in times if t.failure is not None)
    if not timed:
        return Choice(usable[0], (), f"{usable[0].value} on the CPU: the target's first; no backend could be measured"
                      + (f" ({failed})" if failed else ""))
    best = min(timed.values())
    ship = next(b for b in usable if b in timed and timed[b] <= best * (1 + noise))
    figures = ", ".join(f"{b.value} {timed[b]:.2f} ms" for b in sorted(timed, key=timed.__getitem__))
    why = "the fastest" if timed[ship] == best else f"within {noise:.0%} of the fastest (a tie) and first in the target's list"
    line = f"{ship.value} on the CPU: {why} for {precision.value} on this CPU (p50 at batch {batch}: {figures}; {source})"
    return Choice(ship, (), line + (f"; {failed}" if failed else ""))
