"""``edge-inception build MODEL --target T --backend auto --precision auto``: every candidate, measured, the fastest kept.

From one ONNX model: each precision the target runs (FP16 and INT8 quantized from an FP32 model, with the accuracy
guard against FP32), each backend of the target that runs here, each GPU variant (TF32, fixed-shape CUDA graph); every
candidate built and verified against its source in a staging folder, measured in one benchmark run (each engine in its
own process), and :func:`~edge_inception.engines.candidates.choose_ship` picks the fastest that passed its judge. Only
that one is built into the output folder (verified again there), beside ``candidates.json`` and ``candidates.md``
saying what every candidate measured and how it lost. The judge here is the model's own FP32 (no PyTorch needed): the
build's comparison with its source, and the quantized model's top-1 agreement with FP32 on held-out images.

``edge-inception build MODEL --target cpu`` (no ``--backend``): :func:`pick_backend`, the same idea on one axis: the
model's own precision, every CPU backend installed, measured briefly once per CPU kind and model, and remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engines.candidates import (
    Candidate,
    Decision,
    Evidence,
    Measured,
    Plan,
    backend_extras,
    choose_ship,
    isa_used,
    missing_backends,
    plan_candidates,
    quant_target,
)
from .engines.choose import Choice
from .engines.targets import Target
from .errors import BackendUnavailableError, EdgeInceptionError, VerificationError
from .fileio import staging_dir
from .limits import MAX_BATCH
from .report import Rendered, md_text, write_report
from .vocab import Backend, Precision, QuantTarget

log = logging.getLogger(__name__)


@dataclass
class AutoBuildResult:
    artifact: Path | None  # the shipped artifact, built into the output folder; None when no candidate passed
    decision: Decision
    plan: Plan
    p50_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # candidate -> batch -> p50 (ms)
    agreement: dict[str, float] = field(default_factory=dict)  # candidate -> top-1 agreement with the FP32 model
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate -> its artifact's manifest options (runtime precision)
    report: Path | None = None  # candidates.md


def auto_build(model: str | Path, target: Target, *, backends: Sequence[Backend] | None, precisions: Sequence[Precision] | None,
               output_dir: str | Path, calib: Path | None = None, min_agreement: float = 0.99, batches: tuple[int, ...] = (1,),
               iterations: int = 30, rounds: int = 3, progress: Callable[[int, str], Any] | None = None) -> AutoBuildResult:
    """Build every candidate of ``target`` from ``model``, measure them in one run and keep the fastest judged one.

    ``backends``/``precisions`` None mean every one the target allows; a reduced precision needs an FP32 model (it is
    quantized here, calibrated on ``calib`` or the bundled photos). The decision is made at the smallest of ``batches``.
    Raises :class:`EdgeInceptionError` when nothing can be built; a candidate that fails its judge or its runtime is
    reported, not fatal.
    """
    from .convert.graph_ops import with_fixed_batch
    from .convert.quantize import quantize_model
    from .engines.build import build
    from .engines.choose import probe
    from .engines.peers import crossfit_evidence
    from .evaluate.bench import BenchConfig, run_bench
    from .evaluate.cpu import cpu_info
    from .onnx_file import graph_precision, load_onnx

    src = Path(model)
    found = Precision(graph_precision(load_onnx(src, with_weights=False)))
    wanted = tuple(precisions) if precisions else tuple(Precision(p) for p in target.precisions)
    if found is not Precision.fp32 and wanted != (found,):
        if precisions:
            raise EdgeInceptionError(f"{src} is a {found.value} graph: only an FP32 model can be quantized to other precisions")
        wanted = (found,)
    for p in wanted:
        target.check_precision(p)
    # peers (NNCF) and reduced inference precisions (bf16) start from an FP32 model
    extras = backend_extras(target, cpu_info().flags) if found is Precision.fp32 else None
    plan = plan_candidates(target, wanted, missing_backends(target), probe(target), backends=backends, extras=extras)
    if not plan.candidates:
        raise EdgeInceptionError(f"target '{target.name}': no candidate can be built here: " + "; ".join(f"{s.name}: {s.why}" for s in plan.skipped))
    out = Path(output_dir)
    sources: dict[tuple[Precision, QuantTarget | None], Path] = {}
    agreement: dict[tuple[Precision, QuantTarget | None], Evidence | None] = {}  # None for the source: its build's parity
    peer_evidence: dict[str, Evidence] = {}  # a peer quantizer's candidate: its cross-fitted agreement with the FP32 model
    for c in plan.candidates:  # the quantized models are the user's files too: written beside the artifact, atomically
        if c.quantizer:
            with staging_dir(out, f"{c.quantizer}.folds") as folds:
                peer_evidence[c.name] = crossfit_evidence(src, c.backend, c.quantizer, calib, 100, folds)
            continue
        key = (c.precision, None if c.precision is found else quant_target(target, c))
        if key in sources:
            continue
        if c.precision is found:
            sources[key], agreement[key] = src, None
            continue
        qt = quant_target(target, c)
        q = quantize_model(src, c.precision, output=out / f"{src.stem}.{c.precision.value}" f"{'' if qt is QuantTarget.cpu else '-' + qt.value}.onnx",
                           calib=calib, target=qt, min_agreement=min_agreement, progress=progress)
        a = q.accuracy
        sources[key] = q.path
        agreement[key] = Evidence(a.top1_agreement, a.holdout_images, int(q.verdicts[0]["distinct_images"]), a.mean_cosine, a.max_rel_error,
                                  "the FP32 model")

    def source_of(c: Candidate) -> tuple[Path, Evidence | None]:
        if c.quantizer:
            return src, peer_evidence[c.name]
        key = (c.precision, None if c.precision is found else quant_target(target, c))
        return sources[key], agreement[key]

    measured: list[Measured] = []
    p50s: dict[str, dict[int, float]] = {}
    agreements: dict[str, float] = {}
    evidence: dict[str, Evidence] = {}
    options: dict[str, dict[str, Any]] = {}
    with staging_dir(out, "candidates") as work:
        built: dict[str, Path] = {}
        failures: dict[str, str] = {}
        for c in plan.candidates:
            path, agree = source_of(c)
            if c.fixed_batch is not None:
                fixed = work / f"{path.stem}.b{c.fixed_batch}.onnx"
                path = fixed if fixed.exists() else with_fixed_batch(path, fixed, c.fixed_batch)
            try:
                b = build(path, target, backend=c.backend, output_dir=work, allow_tf32=c.tf32, name=_stem(src, c),
                          inference_precision=c.inference_precision or None, quantizer=c.quantizer or None, calib=calib)
                built[c.name] = b.artifact
                options[c.name] = dict(b.manifest.options)
                # a quantized model: quantize's verdict against FP32; the source precision: its build's parity with the source
                # (an INT8 graph given as is has no agreement with FP32 on known photos: 0 photos, so never proven)
                as_is = c.precision is Precision.int8
                evidence[c.name] = agree or Evidence(b.parity.top1_agreement, b.parity.samples, 0 if as_is else b.parity.samples,
                                                     b.parity.mean_cosine, b.parity.max_rel_error, "its own ONNX" if as_is else "the FP32 model")
                agreements[c.name] = evidence[c.name].agreement
            except (VerificationError, BackendUnavailableError) as exc:
                failures[c.name] = str(exc)
                log.warning("candidate %s not built: %s", c.name, exc)
        if not built:
            raise EdgeInceptionError("no candidate was built: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
        names = {str(a): n for n, a in built.items()}
        report = run_bench(list(names), BenchConfig(batches=batches, iterations=iterations, rounds=rounds, baselines=(), fixed_at_own_batch=True,
                                                     peak=False),  # only p50s are read: no matmul peak probe (2-5 s of CPU)
                           progress=progress)
        for r in report.results:
            p50s.setdefault(names[str(r.path)], {})[r.batch] = r.latency_ms["p50"]
        batch = min(batches)
        measured = [Measured(c, p50s.get(c.name, {}).get(batch), evidence.get(c.name), failures.get(c.name)) for c in plan.candidates]
        decision = choose_ship(measured, min_agreement, batch=batch)
    artifact = None
    if decision.ship:
        c = next(c for c in plan.candidates if c.name == decision.ship)
        path, _ = source_of(c)
        if c.fixed_batch is not None:
            path = with_fixed_batch(path, out / f"{path.stem}.b{c.fixed_batch}.onnx", c.fixed_batch)
        artifact = build(path, target, backend=c.backend, output_dir=out, allow_tf32=c.tf32, name=_stem(src, c),
                         inference_precision=c.inference_precision or None, quantizer=c.quantizer or None, calib=calib).artifact
    result = AutoBuildResult(artifact, decision, plan, p50s, agreements, options)
    result.report = _write_report(out, result, batches, min_agreement)
    return result


def _stem(src: Path, c: Candidate) -> str:
    return f"{src.stem}.{c.name.split('-', 1)[1]}"


def _write_report(out: Path, r: AutoBuildResult, batches: tuple[int, ...], min_agreement: float) -> Path:
    from .evaluate.cpu import cpu_info

    rows: list[dict[str, Any]] = []
    flags = cpu_info().flags
    for c in r.plan.candidates:
        v = r.decision.verdict(c.name)
        rows.append({"name": c.name, "backend": c.backend.value, "precision": c.precision.value, "tf32": c.tf32, "fixed_batch": c.fixed_batch,
                     "runtime": c.runtime, "p50_ms": {str(b): t for b, t in r.p50_ms.get(c.name, {}).items()},
                     "agreement_vs_fp32": r.agreement.get(c.name), "status": v.status, "judged": v.judged,
                     "behind_ms": v.behind_ms, "behind": v.behind, "note": v.note, "inference_precision": c.inference_precision or None,
                     "quantizer": c.quantizer or "ours", "isa": isa_used(c, flags),
                     "runtime_precision": r.options.get(c.name, {}).get("runtime_inference_precision")})
    data: dict[str, Any] = {"ship": {"candidate": r.decision.ship, "artifact": r.artifact.name if r.artifact else None, "why": r.decision.why},
            "decision_batch": min(batches), "min_agreement": min_agreement, "candidates": rows,
            "skipped": [{"name": s.name, "why": s.why} for s in r.plan.skipped]}
    lines = ["# edge-inception build: candidates", "", f"- **ship: `{data['ship']['artifact']}`** ({r.decision.ship}): {r.decision.why}", "",
             "| candidate | runtime | ISA (CPU flags it can use) | " + " | ".join(f"p50 ms (batch {b})" for b in batches)
             + " | top-1 agreement vs FP32 | verdict |",
             "|---|---|---|" + "---:|" * len(batches) + "---:|---|"]
    for row in rows:
        p50 = [f"{row['p50_ms'][str(b)]:.2f}" if str(b) in row["p50_ms"] else "-" for b in batches]
        agree = "-" if row["agreement_vs_fp32"] is None else f"{row['agreement_vs_fp32']:.1%}"
        verdict = "**shipped**" if row["status"] == "shipped" else f"{row['status']}: {md_text(row['note'], 2000)}" if row["note"] else row["status"]
        isa = ", ".join(row["isa"]) or "-"
        isa += f"; OpenVINO computes {row['runtime_precision']}" if row["runtime_precision"] else ""
        lines.append(f"| {row['name']} | {row['runtime']} | {isa} | " + " | ".join(p50) + f" | {agree} | {verdict} |")
    lines += [f"- not a candidate here: {s['name']}: {md_text(s['why'], 2000)}" for s in data["skipped"]]
    return write_report(Rendered(data, "\n".join(lines) + "\n"), json=out / "candidates.json", markdown=out / "candidates.md")[-1]


# ---------------------------------------------------------------- build without --backend: the fastest backend on this CPU

PICK_BATCH = 1
PICK_RECORD_VERSION = 1
MAX_PICK_RECORD_BYTES = 64 << 10


@dataclass
class BackendPick:
    """What ``build --target T`` (no ``--backend``) builds with, and the line that says why."""

    choice: Choice
    record: Path | None = None  # the remembered measurement (written now, or read)
    measured: bool = False  # measured in this call (False: remembered, or nothing to measure)


def pick_key(cpu_model: str, cpu_flags: frozenset[str], model_sha256: str, target: Target, threads: int, libraries: dict[str, str]) -> str:
    """What a remembered backend measurement is valid for: this CPU kind (model name and ISA flags), this model's bytes,
    the target, the threads, and the runtimes' versions; a sha256 (pure)."""
    doc = {"v": PICK_RECORD_VERSION, "cpu": cpu_model, "flags": sorted(cpu_flags), "model": model_sha256, "target": target.name,
           "backends": list(target.backends), "threads": threads, "libraries": dict(sorted(libraries.items()))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


MAX_RECORD_TEXT = 2000  # characters of a record's text field (a failure's one line, a date)
MAX_RECORD_MS = 3.6e6  # a p50 above an hour is not a measurement of one inference


def _record_time_ok(t: object, seen: set[str]) -> bool:
    if not isinstance(t, dict) or t.get("backend") not in {b.value for b in Backend} or t["backend"] in seen:
        return False
    seen.add(t["backend"])
    p50, failure = t.get("p50_ms"), t.get("failure")
    p50_ok = p50 is None or (isinstance(p50, (int, float)) and not isinstance(p50, bool) and 0 < p50 <= MAX_RECORD_MS)
    failure_ok = failure is None or (isinstance(failure, str) and len(failure) <= MAX_RECORD_TEXT)
    return p50_ok and failure_ok and (p50 is None) != (failure is None)  # a time or the reason there is none


def read_pick_record(path: Path, key: str, batch: int | None = None) -> dict[str, Any] | None:
    """A remembered measurement, or None when there is none or it does not check out (it is then measured again and
    rewritten): the key, the record's own sha256, and each field typed and bounded as :func:`pick_backend` writes it
    (one entry per backend, each a p50 in (0, 1 h] ms or the reason there is none; ``batch`` the one measured for this
    model when given; ``disturbed`` a bool; text fields at most :data:`MAX_RECORD_TEXT` characters). The sha256 catches
    an edit, a truncation or a mix-up, not a forgery: whoever can write the cache folder can rewrite it."""
    from .fileio import read_record

    seen: set[str] = set()

    def fields_ok(doc: dict[str, Any]) -> bool:
        return (isinstance(doc.get("times"), list) and 0 < len(doc["times"]) <= len(Backend)
                and isinstance(doc.get("batch"), int) and not isinstance(doc.get("batch"), bool) and 1 <= doc["batch"] <= MAX_BATCH
                and (batch is None or doc["batch"] == batch) and isinstance(doc.get("disturbed", False), bool)
                and isinstance(doc.get("measured_at", ""), str) and len(doc.get("measured_at", "")) <= MAX_RECORD_TEXT
                and all(_record_time_ok(t, seen) for t in doc["times"]))

    doc = read_record(path, key, MAX_PICK_RECORD_BYTES, "backend record", fields_ok,
                      "not a record for this model and CPU, or its hash does not match")
    return None if doc is None else dict(doc)


def pick_backend(model: str | Path, target: Target, *, threads: int | None = None, expect: Precision | str | None = None,
                 cache: Path | None = None, progress: Callable[[int, str], Any] | None = None) -> BackendPick:
    """The backend ``build`` uses when none is asked for: on a CPU target with two or more backends installed, the fastest
    for this model on this CPU (:func:`~edge_inception.engines.choose.fastest_backend`, the pipeline's tie rule), from a
    short measurement (each backend built and verified in a scratch folder, then one benchmark run: 2 rounds of 20
    inferences at batch 1, or the model's one batch size, each engine in its own process) remembered in ``cache`` (default: the user's cache folder,
    ``backend-choice/<key>.json``, written atomically with its own sha256; keyed by :func:`pick_key`). A remembered
    record taken under load is measured again when the machine is quiet. GPU targets and a single backend measure nothing.
    ``expect``: the precision the caller expects (``--precision``), refused before anything is measured when the graph
    has another, as :func:`~edge_inception.engines.build.build` refuses it.
    """
    import os
    import tempfile
    from importlib.metadata import PackageNotFoundError, version

    from .engines.build import build
    from .engines.candidates import NOISE
    from .engines.choose import BackendTime, backends_to_measure, fastest_backend
    from .evaluate.bench import BenchConfig, run_bench
    from .evaluate.cpu import cpu_info
    from .fileio import cache_dir, sha256_file, write_record
    from .onnx_file import graph_precision, load_onnx, onnx_facts

    src = Path(model)
    precision = Precision(graph_precision(load_onnx(src)))  # with its weights: external data is checked (inside the folder) first, as build does
    if expect is not None and Precision(expect) is not precision:
        raise EdgeInceptionError(f"{src} is a {precision.value} graph; precision comes from the graph "
                                 f"(run 'edge-inception quantize --precision {Precision(expect).value}' first)")
    target.check_precision(precision)
    if target.device != "cpu":
        from .engines.choose import choose, probe

        return BackendPick(choose(target, precision, None, probe(target)))
    missing = missing_backends(target)
    to_measure = backends_to_measure(target, None, missing)
    if not to_measure:
        return BackendPick(fastest_backend(target, precision, None, missing, (), source="", noise=NOISE))
    n_threads = target.threads if threads is None else threads
    batch = onnx_facts(src).fixed_batch or PICK_BATCH  # a model exported at one batch size is measured at that one
    libraries = {}
    for dist in ("onnxruntime", "openvino", "onnxruntime-gpu", "onnxruntime-openvino"):
        try:
            libraries[dist] = version(dist)
        except PackageNotFoundError:
            continue
    cpu = cpu_info()
    model_sha256 = sha256_file(src)
    key = pick_key(cpu.model, cpu.flags, model_sha256, target, n_threads, libraries)
    path = (cache or cache_dir() / "backend-choice") / f"{key}.json"
    record = read_pick_record(path, key, batch)
    try:
        quiet_now = os.getloadavg()[0] < 0.5
    except OSError:
        quiet_now = False
    if record is not None and not (record.get("disturbed") and quiet_now):
        times = [BackendTime(Backend(t["backend"]), t.get("p50_ms"), t.get("failure")) for t in record["times"]]
        source = f"remembered from {path}, measured {record.get('measured_at', '?')}" + (" under load" if record.get("disturbed") else "")
        return BackendPick(fastest_backend(target, precision, None, missing, times, source=source, noise=NOISE,
                                           batch=int(record["batch"])), path, False)
    times = []
    built: dict[str, Backend] = {}
    with tempfile.TemporaryDirectory(prefix="edge-inception-pick-") as tmp:
        for b in to_measure:
            try:
                built[str(build(src, target, backend=b, output_dir=Path(tmp) / b.value, threads=n_threads).artifact)] = b
            except (VerificationError, BackendUnavailableError) as exc:
                times.append(BackendTime(b, None, str(exc)))
        report = None
        if built:
            report = run_bench(list(built), BenchConfig(batches=(batch,), warmup=5, iterations=20, rounds=2, threads=n_threads,
                                                        baselines=(), rerun_disturbed=1, peak=False), progress=progress)
            times += [BackendTime(built[str(r.path)], r.latency_ms["p50"]) for r in report.results]
    disturbed = bool(report and any(r.disturbed and r.counted for r in report.rounds))
    doc: dict[str, Any] = {"key": key, "cpu": cpu.model, "isa": cpu.simd, "model_sha256": model_sha256, "target": target.name,
                           "precision": precision.value, "threads": n_threads, "libraries": libraries, "batch": batch,
                           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "disturbed": disturbed,
                           "times": [{"backend": t.backend.value, "p50_ms": t.p50_ms, "failure": t.failure} for t in times]}
    written: Path | None = path
    try:
        write_record(path, doc)
        remembered = f"remembered in {path}"
    except EdgeInceptionError as exc:  # an unwritable cache costs a measurement next time, not this build
        log.warning("cannot remember the backend measurement: %s", exc)
        written, remembered = None, "not remembered: the cache folder is not writable"
    source = "measured now" + (", under load" if disturbed else "") + f"; {remembered}"
    return BackendPick(fastest_backend(target, precision, None, missing, times, source=source, noise=NOISE, batch=batch), written, True)
