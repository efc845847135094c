"""Candidates: every artifact a target allows and this machine can run, and which of them ships, as plain functions.

A candidate is one backend x one precision x one variant (on a GPU: FP32 with TF32 allowed, and an artifact exported
at a fixed batch of 1 so that ONNX Runtime replays a captured CUDA graph). :func:`plan_candidates` enumerates them
from the target's preset and what this machine has (each backend's ``available()``, the GPU probes of
:mod:`~edge_inception.engines.choose`); :func:`choose_ship` picks the one to ship from their measurements: the fastest
that passed its judge, where a tie within :data:`NOISE` goes to the more faithful candidate (Olive's auto-optimisation
and ``trtexec --best`` make the same trade; the rule here is ours). Neither function touches a runtime, so both are
tested on hand-made inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BackendUnavailableError
from ..vocab import Backend, Precision, QuantTarget
from .choose import TENSORRT, Availability, choose
from .targets import Target

# Two p50s closer than this (relative to the faster) are a tie: on this project's shared machines the same engine's
# p50 moves by 1-3 % between rounds (benchmarks/results/), so a smaller gap is not evidence of a faster artifact.
NOISE = 0.03

# The batch a fixed-shape variant is exported at: the edge case, where a captured CUDA graph pays off.
GRAPH_BATCH = 1


@dataclass(frozen=True)
class Candidate:
    """One artifact the pipeline can build: ``backend`` at ``precision``, optionally TF32 or fixed-shape."""

    backend: Backend
    precision: Precision
    tf32: bool = False  # FP32 whose convolutions may run as TF32 on a GPU (judged by the logits' cosine, like FP16)
    fixed_batch: int | None = None  # exported at this one batch size (ONNX Runtime on a GPU replays a CUDA graph)
    providers: tuple[str, ...] = ()  # ONNX Runtime's GPU execution providers, in priority order (engines.choose)
    runtime: str = ""  # which runtime and why, in one line

    @property
    def name(self) -> str:
        """``ort-int8``, ``openvino-fp32``, ``ort-fp32-tf32-b1``: backend, precision, then the variant."""
        parts = [self.backend.value, self.precision.value] + (["tf32"] if self.tf32 else []) + (
            [f"b{self.fixed_batch}"] if self.fixed_batch else [])
        return "-".join(parts)

    @property
    def fidelity(self) -> tuple[int, int]:
        """Lower is more faithful to FP32: strict FP32, TF32, FP16, INT8; a dynamic-batch artifact before a fixed one
        (it serves every batch size)."""
        order = {Precision.fp32: 1 if self.tf32 else 0, Precision.fp16: 2, Precision.int8: 3}
        return order[self.precision], 0 if self.fixed_batch is None else 1


@dataclass(frozen=True)
class Skipped:
    """A candidate the target allows but this machine cannot build, and why."""

    name: str
    why: str


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...] = ()


def plan_candidates(target: Target, precisions: Sequence[Precision], missing: Mapping[Backend, str | None], gpu: Availability, *,
                    backends: Sequence[Backend] | None = None) -> Plan:
    """Every candidate of ``target`` at ``precisions`` that this machine can build, in the preset's backend order.

    ``missing`` maps each backend to why it cannot run here (None: it can; a backend absent from the mapping counts as
    missing); ``gpu`` is :func:`~edge_inception.engines.choose.probe`'s answer (all None for a CPU target);
    ``backends`` narrows the preset's list (``build --backend X``). On a GPU each precision also gets a fixed-shape
    batch-1 variant for ONNX Runtime (its CUDA graph), and FP32 a TF32 variant. Raises nothing: what cannot be built
    is in :attr:`Plan.skipped` with its reason.
    """
    out: list[Candidate] = []
    skipped: list[Skipped] = []
    gpu_target = target.device != "cpu"
    for backend in (Backend(b) for b in (backends or target.backends)):
        if backend.value not in target.backends:
            skipped.append(Skipped(backend.value, f"target '{target.name}' does not use {backend.value}"))
            continue
        why = missing.get(backend, f"{backend.value}: not probed")
        if why:
            skipped.append(Skipped(backend.value, why))
            continue
        for precision in precisions:
            for tf32 in (False, True) if gpu_target and precision is Precision.fp32 else (False,):
                label = f"{backend.value}-{precision.value}" + ("-tf32" if tf32 else "")
                if precision.value not in target.precisions:
                    skipped.append(Skipped(label, f"target '{target.name}' does not run {precision.value}"))
                    continue
                try:
                    choice = choose(target, precision, backend, gpu, allow_tf32=tf32)
                except BackendUnavailableError as exc:
                    skipped.append(Skipped(label, str(exc)))
                    continue
                variants = (None, GRAPH_BATCH) if gpu_target and backend is Backend.ort else (None,)
                out += [Candidate(backend, precision, tf32, fixed, choice.providers, choice.line) for fixed in variants]
    return Plan(tuple(out), tuple(skipped))


def missing_backends(target: Target) -> dict[Backend, str | None]:
    """Each of ``target``'s backends, and why it cannot run here (None: it can): the registry's ``available()``."""
    from .registry import get_backend

    return {Backend(b): get_backend(b).available() for b in target.backends}


def quant_target(target: Target, candidate: Candidate) -> QuantTarget:
    """The INT8 scheme a candidate's runtime takes: TensorRT (native or as ONNX Runtime's provider) symmetric Q/DQ;
    ONNX Runtime's CUDA kernels the GPU scheme; every CPU runtime the CPU one."""
    if target.device == "cpu":
        return QuantTarget.cpu
    if candidate.backend is Backend.tensorrt or TENSORRT in candidate.providers:
        return QuantTarget.tensorrt
    return QuantTarget.gpu


@dataclass(frozen=True)
class Measured:
    """A candidate as the pipeline found it: its p50 at the deciding batch size (None: not measured), its top-1
    agreement with the reference (PyTorch) and why it failed its judge (None: it passed)."""

    candidate: Candidate
    p50_ms: float | None
    agreement: float | None = None
    failure: str | None = None

    @property
    def name(self) -> str:
        return self.candidate.name


@dataclass(frozen=True)
class Verdict:
    """What became of one candidate: ``shipped``, ``slower`` (lost on time), ``tie`` (within noise of the shipped one,
    less faithful), ``failed`` (missed its judge) or ``not measured``; ``behind_ms``/``behind`` against the shipped
    candidate (milliseconds, and that as a fraction of the shipped p50); negative when it ran faster."""

    name: str
    status: str
    p50_ms: float | None
    agreement: float | None
    behind_ms: float | None = None
    behind: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    ship: str | None  # the shipped candidate's name, None when none passed its judge
    why: str
    fastest: str | None  # the fastest judged candidate (the shipped one unless a more faithful one tied it)
    verdicts: tuple[Verdict, ...]

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def choose_ship(measured: Sequence[Measured], min_agreement: float, *, noise: float = NOISE, batch: int = 1) -> Decision:
    """The candidate to ship: the lowest p50 at ``batch`` among those that passed their judge (built and verified
    against their source, and top-1 agreement with the reference >= ``min_agreement``). Candidates within ``noise``
    (relative) of the fastest tie; the tie goes to the most faithful (:attr:`Candidate.fidelity`), then to the earlier
    in ``measured`` (the preset's backend order). Every candidate gets a :class:`Verdict` saying how it lost."""
    def passed(m: Measured) -> bool:
        return m.failure is None and m.p50_ms is not None and m.agreement is not None and m.agreement >= min_agreement

    eligible = [m for m in measured if passed(m)]
    if not eligible:
        why = f"no candidate passed its judge (built, verified, top-1 agreement >= {min_agreement:.0%} against PyTorch)"
        return Decision(None, why, None, tuple(_verdict(m, None, set(), min_agreement) for m in measured))
    fastest = min(eligible, key=lambda m: m.p50_ms or 0.0)
    best = fastest.p50_ms or 0.0
    tied = [m for m in eligible if (m.p50_ms or 0.0) <= best * (1 + noise)]
    ship = min(tied, key=lambda m: (m.candidate.fidelity, eligible.index(m)))
    if ship is fastest:
        why = f"fastest candidate that passed its judge: p50 {best:.2f} ms at batch {batch}"
    else:
        why = (f"p50 {ship.p50_ms:.2f} ms at batch {batch}, within {noise:.0%} of the fastest ({fastest.name}, {best:.2f} ms: a tie "
               f"within noise), and more faithful")
    others = [m.name for m in tied if m is not ship]
    if others and ship is fastest:
        why += f"; tied within {noise:.0%} with less faithful {', '.join(others)}"
    why += f"; judge: built and verified against its source, top-1 agreement >= {min_agreement:.0%} against PyTorch"
    tie_names = {m.name for m in tied}
    return Decision(ship.name, why, fastest.name, tuple(_verdict(m, ship, tie_names, min_agreement, noise) for m in measured))


def _verdict(m: Measured, ship: Measured | None, tied: set[str], min_agreement: float, noise: float = NOISE) -> Verdict:
    behind_ms = behind = None
    if ship is not None and m.p50_ms is not None and ship.p50_ms:
        behind_ms = m.p50_ms - ship.p50_ms
        behind = behind_ms / ship.p50_ms
    if ship is not None and m is ship:
        return Verdict(m.name, "shipped", m.p50_ms, m.agreement, 0.0, 0.0)
    if m.failure is not None:
        return Verdict(m.name, "failed", m.p50_ms, m.agreement, behind_ms, behind, m.failure)
    if m.p50_ms is None:
        return Verdict(m.name, "not measured", None, m.agreement, note="no latency at the deciding batch size")
    if m.agreement is None or m.agreement < min_agreement:
        seen = "not verified" if m.agreement is None else f"top-1 agreement {m.agreement:.1%}"
        return Verdict(m.name, "failed", m.p50_ms, m.agreement, behind_ms, behind, f"{seen} < {min_agreement:.0%} against PyTorch")
    against = f"{behind_ms:+.2f} ms ({behind:+.1%}) against {ship.name}" if ship and behind_ms is not None and behind is not None else ""
    if m.name in tied:
        return Verdict(m.name, "tie", m.p50_ms, m.agreement, behind_ms, behind, f"{against}: within {noise:.0%} of the fastest, less faithful")
    return Verdict(m.name, "slower", m.p50_ms, m.agreement, behind_ms, behind, against)
