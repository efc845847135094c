"""Candidates: every artifact a target allows and this machine can run, and which of them ships, as plain functions.

A candidate is one backend x one precision x one variant (on a GPU: FP32 with TF32 allowed, and an artifact exported
at a fixed batch of 1 so that ONNX Runtime replays a captured CUDA graph). :func:`plan_candidates` enumerates them
from the target's preset and what this machine has (each backend's ``available()``, the GPU probes of
:mod:`~edge_inception.engines.choose`); :func:`choose_ship` picks the one to ship from their measurements: the fastest
that passed its judge (:func:`judge_candidate`: float by its logits' numbers, INT8 by agreement at 95 % confidence),
where a tie within :data:`NOISE` goes to the more faithful candidate (Olive's auto-optimisation and ``trtexec --best``
make the same trade; the rule here is ours). Neither function touches a runtime, so both are
tested on hand-made inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BackendUnavailableError
from ..evaluate.verdict import Verdict as Bound
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
    # an FP32 model the runtime computes in this reduced float ("bf16": OpenVINO's INFERENCE_PRECISION_HINT on a CPU with
    # AVX-512 BF16 or AMX); judged by the logits' numbers, like TF32 and FP16
    inference_precision: str = ""
    quantizer: str = ""  # INT8 made by this peer quantizer from the FP32 model ("nncf": OpenVINO's NNCF); "" is ours (quantize)

    @property
    def name(self) -> str:
        """``ort-int8``, ``openvino-fp32``, ``ort-fp32-tf32-b1``, ``openvino-fp32-bf16``, ``openvino-int8-nncf``: backend,
        precision, then the variant."""
        parts = [self.backend.value, self.precision.value] + (["tf32"] if self.tf32 else []) + (
            [self.inference_precision] if self.inference_precision else []) + ([self.quantizer] if self.quantizer else []) + (
            [f"b{self.fixed_batch}"] if self.fixed_batch else [])
        return "-".join(parts)

    @property
    def strict_fp32(self) -> bool:
        """FP32 computed as FP32 (no TF32 products, no bf16 inference precision): judged against its reference's tolerance."""
        return self.precision is Precision.fp32 and not self.tf32 and not self.inference_precision

    @property
    def fidelity(self) -> tuple[int, int]:
        """Lower is more faithful to FP32: strict FP32, TF32 (10-bit products), FP16 (11-bit significand), BF16 (8-bit),
        INT8; a dynamic-batch artifact before a fixed one (it serves every batch size)."""
        order = {Precision.fp32: 3 if self.inference_precision else 1 if self.tf32 else 0, Precision.fp16: 2, Precision.int8: 4}
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


# The CPU flags (/proc/cpuinfo) each kind of arithmetic runs faster with: what a report shows beside a candidate, since
# neither ONNX Runtime nor OpenVINO says which kernels it chose. INT8: VNNI's u8 x s8 dot products (AVX-512 or AVX) and
# AMX's tiles; bf16: AVX-512 BF16's dot products and AMX's bf16 tiles; float: AVX2/FMA, AVX-512, AVX-512 FP16, AMX FP16.
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "int8": ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx2", "f16c", "avx512f", "avx512_fp16", "amx_fp16"),
    "fp32": ("avx2", "fma", "avx512f"),
}
# The reduced float inference precisions a CPU with these flags computes natively (OpenVINO's CPU plugin runs bf16 with
# AVX-512 BF16 or AMX BF16; without them it would emulate or fall back to f32, so no such candidate there).
CPU_FLOAT_PRECISIONS: dict[str, frozenset[str]] = {"bf16": frozenset({"avx512_bf16", "amx_bf16"})}


def cpu_float_precisions(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The reduced float inference precisions (``"bf16"``) that ``flags`` (a CPU's /proc/cpuinfo flags) run natively: ``()``
    on an AVX2-only or AVX-512 VNNI CPU, ``("bf16",)`` with ``avx512_bf16`` or ``amx_bf16``. Pure."""
    return tuple(p for p, needs in CPU_FLOAT_PRECISIONS.items() if needs & set(flags))


def isa_used(candidate: Candidate, flags: frozenset[str] | set[str]) -> list[str]:
    """The flags of ``flags`` that the candidate's arithmetic can use (:data:`ISA_FLAGS` by its compute precision: bf16
    for a bf16 inference precision, else its precision), sorted. Pure."""
    kind = candidate.inference_precision or candidate.precision.value
    return sorted(set(ISA_FLAGS.get(kind, ())) & set(flags))


@dataclass(frozen=True)
class BackendExtras:
    """What a backend offers beyond its own precisions on this machine: peer INT8 quantizers installed for it
    (``("nncf",)``) and reduced float inference precisions this CPU runs natively for it (``("bf16",)``)."""

    quantizers: tuple[str, ...] = ()
    inference_precisions: tuple[str, ...] = ()


def plan_candidates(target: Target, precisions: Sequence[Precision], missing: Mapping[Backend, str | None], gpu: Availability, *,
                    backends: Sequence[Backend] | None = None, extras: Mapping[Backend, BackendExtras] | None = None) -> Plan:
    """Every candidate of ``target`` at ``precisions`` that this machine can build, in the preset's backend order.

    ``missing`` maps each backend to why it cannot run here (None: it can; a backend absent from the mapping counts as
    missing); ``gpu`` is :func:`~edge_inception.engines.choose.probe`'s answer (all None for a CPU target);
    ``backends`` narrows the preset's list (``build --backend X``). On a GPU each precision also gets a fixed-shape
    batch-1 variant for ONNX Runtime (its CUDA graph), and FP32 a TF32 variant. ``extras`` (:func:`backend_extras`) adds,
    per backend, an FP32 candidate per reduced inference precision (``openvino-fp32-bf16``) and an INT8 candidate per peer
    quantizer (``openvino-int8-nncf``). Raises nothing: what cannot be built is in :attr:`Plan.skipped` with its reason.
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
                more = (extras or {}).get(backend, BackendExtras())
                if precision is Precision.fp32 and not tf32:
                    out += [Candidate(backend, precision, providers=choice.providers, inference_precision=p,
                                      runtime=f"{choice.line}; inference precision {p}") for p in more.inference_precisions]
                if precision is Precision.int8:
                    out += [Candidate(backend, precision, providers=choice.providers, quantizer=q,
                                      runtime=f"{choice.line}; INT8 by {q} from the FP32 model") for q in more.quantizers]
    return Plan(tuple(out), tuple(skipped))


def backend_extras(target: Target, flags: frozenset[str] | set[str]) -> dict[Backend, BackendExtras]:
    """Each of ``target``'s backends' peer quantizers installed here (the registry's ``quantizers``: name -> why missing)
    and, on a CPU target, the inference precisions it takes (``inference_precisions``) that ``flags`` run natively."""
    from .registry import get_backend

    out = {}
    for b in target.backends:
        engine = get_backend(b)
        quantizers = tuple(q for q, why in engine.quantizers().items() if why is None)
        hints = tuple(p for p in cpu_float_precisions(flags) if p in engine.inference_precisions) if target.device == "cpu" else ()
        out[Backend(b)] = BackendExtras(quantizers, hints)
    return out


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


# The float judge (FP32, TF32, FP16, BF16): the logits' numbers, which every sample measures exactly (no sampling claim).
# Strict FP32 must reproduce PyTorch to the export's tolerance plus a GPU build's (1e-4 + 1e-4 relative to the largest
# logit, by the triangle inequality over PyTorch -> ONNX -> artifact: convert/export.py, engines/build.py); reduced
# float (FP16's 11-bit significand, TF32's 10-bit products) keeps the logits' direction (cosine) and their size
# within a few % of the largest logit. Measured on the demo net: FP16 cosine 1.00000, max error 0.008 of logits ~10;
# OpenVINO's bf16 (8-bit significand) on GoogLeNet at 64 px: cosine 0.99998, max error 0.0076 of the largest logit.
FP32_REL_TOL = 2e-4
FLOAT_MIN_COSINE = 0.999
FLOAT_REL_TOL = 0.05

PASSED, UNPROVEN, FAILED = "passed", "unproven", "failed"


@dataclass(frozen=True)
class Evidence:
    """A candidate's logits against the reference (PyTorch in the pipeline, the FP32 model in ``build --backend auto``)
    on ``samples`` images (or crops) of ``photos`` distinct source photos: the figures its judge reads."""

    agreement: float  # top-1 agreement, 0..1
    samples: int
    photos: int
    mean_cosine: float
    max_rel_error: float  # max |a - b| / max |a|
    reference: str = "PyTorch"
    photos_source: str = ""  # what the photos were (the pipeline's --holdout folder and its sha256, or the demo crops)


@dataclass(frozen=True)
class Judgement:
    """``passed``, ``unproven`` (the figure meets the criterion, its 95 % lower bound does not: the evidence cannot carry
    the claim) or ``failed``; ``reason`` is one line with the figures against the rule."""

    status: str
    reason: str


def judge_candidate(candidate: Candidate, evidence: Evidence | None, min_agreement: float) -> Judgement:
    """One judge for every candidate, by precision (pure; no runtime).

    Float candidates (strict FP32; TF32, FP16 and BF16) by their numbers: strict FP32 ``max_rel_error <= FP32_REL_TOL``;
    reduced float ``mean_cosine >= FLOAT_MIN_COSINE`` and ``max_rel_error <= FLOAT_REL_TOL``: a near-tie of two classes
    (a seeded net has many) may flip top-1 under any rounding, so float fidelity is not judged by agreement. INT8 by
    top-1 agreement with the reference, claimed only when its one-sided 95 % Wilson lower bound over distinct photos
    clears ``min_agreement`` (the rule ``quantize``'s verdict uses: :class:`~edge_inception.evaluate.verdict.Verdict`):
    ``passed`` when the bound clears it, ``failed`` when the figure itself is below, ``unproven`` between.
    """
    if evidence is None:
        return Judgement(FAILED, "not verified against the reference")
    if candidate.precision is Precision.int8:
        v = Bound(f"top-1 agreement with {evidence.reference}", evidence.agreement, evidence.samples, evidence.photos, min_agreement,
                  evidence.photos_source or "the held-out photos")
        head = (f"top-1 agreement {evidence.agreement:.1%} on {evidence.samples} image(s) of {evidence.photos} photo(s), "
                f"95% lower bound {v.lower_bound:.1%}")
        if v.met:
            return Judgement(PASSED, f"{head} >= {min_agreement:.1%}")
        if v.missed:
            return Judgement(FAILED, f"{head}: below {min_agreement:.1%}")
        return Judgement(UNPROVEN, f"{head} < {min_agreement:.1%}: the evidence cannot carry the claim")
    if candidate.strict_fp32:
        head = f"max relative error {evidence.max_rel_error:.1e} vs {evidence.reference}"
        if evidence.max_rel_error <= FP32_REL_TOL:
            return Judgement(PASSED, f"{head} <= {FP32_REL_TOL:g}")
        return Judgement(FAILED, f"{head} > {FP32_REL_TOL:g}")
    head = f"mean cosine {evidence.mean_cosine:.5f}, max relative error {evidence.max_rel_error:.1e} vs {evidence.reference}"
    if evidence.mean_cosine >= FLOAT_MIN_COSINE and evidence.max_rel_error <= FLOAT_REL_TOL:
        return Judgement(PASSED, f"{head} (>= {FLOAT_MIN_COSINE}, <= {FLOAT_REL_TOL:g})")
    return Judgement(FAILED, f"{head}: needs cosine >= {FLOAT_MIN_COSINE} and error <= {FLOAT_REL_TOL:g}")


@dataclass(frozen=True)
class Measured:
    """A candidate as the pipeline found it: its p50 at the deciding batch size (None: not measured), its logits against
    the reference (None: not verified) and why it was not built (None: it was)."""

    candidate: Candidate
    p50_ms: float | None
    evidence: Evidence | None = None
    failure: str | None = None

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def agreement(self) -> float | None:
        return self.evidence.agreement if self.evidence else None


@dataclass(frozen=True)
class Verdict:
    """What became of one candidate: ``shipped``, ``slower`` (lost on time), ``tie`` (within noise of the shipped one,
    less faithful), ``unproven`` (its claim not carried by the evidence, and not asked to ship such), ``failed``
    (missed its judge) or ``not measured``; ``judged`` is its judge's answer (passed, unproven, failed);
    ``behind_ms``/``behind`` against the shipped candidate (milliseconds, and that as a fraction of the shipped p50);
    negative when it ran faster."""

    name: str
    status: str
    p50_ms: float | None
    agreement: float | None
    behind_ms: float | None = None
    behind: float | None = None
    note: str = ""
    judged: str = ""


@dataclass(frozen=True)
class Decision:
    ship: str | None  # the shipped candidate's name, None when none passed its judge
    why: str
    fastest: str | None  # the fastest eligible candidate (the shipped one unless a more faithful one tied it)
    verdicts: tuple[Verdict, ...]
    unproven: bool = False  # the shipped candidate's claim is not carried by the evidence (shipped as asked)

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def choose_ship(measured: Sequence[Measured], min_agreement: float, *, ship_unproven: bool = False, noise: float = NOISE,
                batch: int = 1) -> Decision:
    """The candidate to ship: the lowest p50 at ``batch`` among those that passed their judge (built and verified
    against their source, then :func:`judge_candidate`); with ``ship_unproven`` (the user's ``--ship-unproven``) also
    those whose judge answered ``unproven``, and the reason says so. Candidates within ``noise`` (relative) of the
    fastest tie; the tie goes to a proven one before an unproven one, then the most faithful
    (:attr:`Candidate.fidelity`), then the earlier in ``measured`` (the preset's backend order). Every candidate gets a
    :class:`Verdict` saying how it lost."""
    judged = {m.name: _judgement(m, min_agreement) for m in measured}
    allowed = (PASSED, UNPROVEN) if ship_unproven else (PASSED,)
    eligible = [m for m in measured if judged[m.name].status in allowed and m.p50_ms is not None]
    rule = (f"judge: built and verified against its source; float (FP32, TF32, FP16, BF16) by its logits' numbers, INT8 (ours or a peer "
            f"quantizer's) by top-1 agreement >= {min_agreement:.0%} "
            "at 95% confidence")
    if not eligible:
        why = f"no candidate passed its judge ({rule})"
        held = [m.name for m in measured if judged[m.name].status == UNPROVEN]
        if held:
            why += f"; unproven: {', '.join(held)} (--ship-unproven ships the fastest of those)"
        return Decision(None, why, None, tuple(_verdict(m, judged[m.name], None, set(), ship_unproven) for m in measured))
    fastest = min(eligible, key=lambda m: m.p50_ms or 0.0)
    best = fastest.p50_ms or 0.0
    tied = [m for m in eligible if (m.p50_ms or 0.0) <= best * (1 + noise)]
    ship = min(tied, key=lambda m: (judged[m.name].status == UNPROVEN, m.candidate.fidelity, eligible.index(m)))

    def broke_tie(loser: Measured) -> str:
        """Which part of the key above put ``ship`` before ``loser``: proven before unproven, fidelity, the preset's order."""
        if judged[loser.name].status == UNPROVEN and judged[ship.name].status != UNPROVEN:
            return "proven"
        return "fidelity" if ship.candidate.fidelity < loser.candidate.fidelity else "order"

    if ship is fastest:
        why = (f"fastest candidate that passed its judge{' or could not be proven by it' if ship_unproven else ''}: p50 {best:.2f} ms "
               f"at batch {batch}")
    else:
        broke = {"proven": "and proven (the fastest could not be proven by its judge)", "fidelity": "and more faithful",
                 "order": "as faithful, and earlier in the preset's backend order"}[broke_tie(fastest)]
        why = (f"p50 {ship.p50_ms:.2f} ms at batch {batch}, within {noise:.0%} of the fastest ({fastest.name}, {best:.2f} ms: a tie "
               f"within noise), {broke}")
    others = [m.name for m in tied if m is not ship]
    if others and ship is fastest:  # how each of the others lost the tie
        lost = {"proven": "unproven", "fidelity": "less faithful", "order": "as faithful"}
        by_how: dict[str, list[str]] = {}
        for m in tied:
            if m is not ship:
                by_how.setdefault(lost[broke_tie(m)], []).append(m.name)
        why += f"; tied within {noise:.0%} with " + "; ".join(
            f"{how} {', '.join(names)}" + (" (later in the preset's backend order)" if how == "as faithful" else "") for how, names in by_how.items())
    unproven = judged[ship.name].status == UNPROVEN
    if unproven:
        why = f"UNPROVEN, shipped because --ship-unproven was given: {judged[ship.name].reason}; {why}"
    faster = [m for m in measured if m.p50_ms is not None and m.p50_ms < best and m not in eligible]
    if faster:  # what the user loses to the judge, and why: an INT8 that ran faster but whose claim the evidence cannot carry
        why += "; faster but not shipped: " + "; ".join(f"{m.name} at {m.p50_ms:.2f} ms ({judged[m.name].status}: {judged[m.name].reason})"
                                                        for m in sorted(faster, key=lambda m: m.p50_ms or 0.0))
    why += f"; {rule}"
    tie_names = {m.name for m in tied}
    return Decision(ship.name, why, fastest.name, tuple(_verdict(m, judged[m.name], ship, tie_names, ship_unproven, noise) for m in measured),
                    unproven)


def _judgement(m: Measured, min_agreement: float) -> Judgement:
    if m.failure is not None:
        return Judgement(FAILED, m.failure)
    return judge_candidate(m.candidate, m.evidence, min_agreement)


def _verdict(m: Measured, j: Judgement, ship: Measured | None, tied: set[str], ship_unproven: bool, noise: float = NOISE) -> Verdict:
    behind_ms = behind = None
    if ship is not None and m.p50_ms is not None and ship.p50_ms:
        behind_ms = m.p50_ms - ship.p50_ms
        behind = behind_ms / ship.p50_ms
    if ship is not None and m is ship:
        return Verdict(m.name, "shipped", m.p50_ms, m.agreement, 0.0, 0.0, j.reason if j.status == UNPROVEN else "", j.status)
    if j.status == FAILED:
        return Verdict(m.name, "failed", m.p50_ms, m.agreement, behind_ms, behind, j.reason, j.status)
    if m.p50_ms is None:
        return Verdict(m.name, "not measured", None, m.agreement, note="no latency at the deciding batch size", judged=j.status)
    if j.status == UNPROVEN and not ship_unproven:
        return Verdict(m.name, "unproven", m.p50_ms, m.agreement, behind_ms, behind, f"{j.reason} (not shipped without --ship-unproven)",
                       j.status)
    against = f"{behind_ms:+.2f} ms ({behind:+.1%}) against {ship.name}" if ship and behind_ms is not None and behind is not None else ""
    flag = " (unproven)" if j.status == UNPROVEN else ""
    if m.name in tied:
        return Verdict(m.name, "tie", m.p50_ms, m.agreement, behind_ms, behind,
                       f"{against}: within {noise:.0%} of the fastest, less faithful{flag}", j.status)
    return Verdict(m.name, "slower", m.p50_ms, m.agreement, behind_ms, behind, against + flag, j.status)
