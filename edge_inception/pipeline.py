"""``edge-inception pipeline``: checkpoint -> export -> quantize -> build -> verify -> benchmark -> report.

Everything is written into a temporary folder beside the output and moved into place at the end, so an
interrupted run leaves no half-written artifact and an existing report folder is replaced only by a complete
one. A stage that fails is named; the artifacts earlier stages completed are kept in ``<out>.failed/``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .engines.candidates import (
    Candidate,
    Evidence,
    Measured,
    Plan,
    backend_extras,
    choose_ship,
    isa_used,
    judge_candidate,
    missing_backends,
    plan_candidates,
    quant_target,
)
from .errors import BackendUnavailableError, EdgeInceptionError, OutputPathError, VerificationError, require_modules
from .fileio import atomic_dir
from .report import Rendered, md_text, write_report
from .vocab import Precision, QuantTarget

if TYPE_CHECKING:
    from .convert.calibration import Holdout
    from .convert.quantize import QuantizeResult
    from .evaluate.bench import BenchReport
    from .evaluate.profile import ProfileReport
    from .evaluate.topk import TopKOnFiles
    from .evaluate.verify import Parity

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    output: Path
    weights: Path | None = None
    target: str = "cpu"
    precisions: tuple[Precision, ...] = (Precision.fp32, Precision.fp16, Precision.int8)
    calib: Path | None = None
    calib_size: int = 100  # calibration samples (crops) drawn from ``calib``, ours and a peer quantizer's (quantize --calib-size)
    image_size: int | None = None
    min_agreement: float = 0.99
    force: bool = False
    bench_iterations: int = 30
    bench_rounds: int = 3
    batches: tuple[int, ...] = (1,)  # the edge case; add 8, 32 ... for throughput
    ship_unproven: bool = False  # ship a candidate whose claim the evidence cannot carry (INT8 on too few photos), saying so
    eval_dir: Path | None = None  # labelled ImageFolder for the quantized models' accuracy verdict (quantize --eval)
    top_k: TopKOnFiles | None = None  # where that verdict's models run (--cluster); None: in this process
    # photos the user keeps apart (--holdout): never calibrated or chosen on; every candidate is judged on every distinct one
    holdout: Path | None = None

    def __post_init__(self) -> None:
        self.precisions = tuple(Precision(p) for p in self.precisions)  # ("fp32", "int8") from Python callers too


@dataclass
class StageLog:
    name: str
    seconds: float
    detail: str


@dataclass
class PipelineResult:
    output: Path
    report: dict[str, Any]
    stages: list[StageLog] = field(default_factory=list)


@dataclass
class PipelineRun:
    """What the stages produced, for the report. Keys are candidate names (``ort-int8``, ``openvino-fp32``)."""

    model: dict[str, Any] = field(default_factory=dict)  # source, variant, num_classes, seeded_weights, image_size
    plan: Plan = field(default_factory=lambda: Plan(()))
    artifacts: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # candidates not built: why (their judge, or their runtime)
    quantization: dict[str, QuantizeResult] = field(default_factory=dict)  # by the quantized model's label (int8, int8-tensorrt)
    verification: dict[str, Parity] = field(default_factory=dict)  # each artifact against PyTorch
    verification_photos: int = 0  # distinct source photos among the verification images
    verification_source: str = ""  # what those images are: what the judge saw
    holdout: Holdout | None = None  # the --holdout folder, scanned before the first stage
    build_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # each artifact's manifest options (runtime precision)
    flops: dict[str, Any] = field(default_factory=dict)
    stages: list[StageLog] = field(default_factory=list)
    current: str = "setup"

    @contextmanager
    def stage(self, name: str, on_stage: Callable[[str], None] | None) -> Iterator[list[str]]:
        """Time a stage; the block appends its one-line result to the yielded list."""
        self.current = name
        if on_stage:
            on_stage(name)
        t0 = time.perf_counter()
        detail: list[str] = []
        yield detail
        self.stages.append(StageLog(name, time.perf_counter() - t0, "; ".join(detail)))


class StageFailed(EdgeInceptionError):
    pass


def artifact_stem(candidate: Candidate) -> str:
    """``model.fp32``, ``model.fp32-tf32-b1``: the artifact's file name before its backend's suffix."""
    return "model." + candidate.name.split("-", 1)[1]


def run_pipeline(cfg: PipelineConfig, on_stage: Callable[[str], None] | None = None,
                 progress: Callable[[int, str], Any] | None = None) -> PipelineResult:
    from .convert.export import export_model
    from .convert.graph_ops import with_fixed_batch
    from .convert.quantize import quantize_model, require_int8_quantizer
    from .engines.build import build
    from .engines.choose import probe
    from .engines.targets import get_target
    from .evaluate.bench import BenchConfig, run_bench
    from .evaluate.cpu import cpu_info
    from .evaluate.flops import count_graph

    require_modules("the pipeline (it starts from a PyTorch checkpoint)", "torch", "onnxsim")
    if not cfg.precisions:
        raise EdgeInceptionError("--precisions: give at least one of fp32, fp16, int8")
    target = get_target(cfg.target)
    for p in cfg.precisions:
        target.check_precision(p)
    if Precision.int8 in cfg.precisions:  # an ONNX Runtime too old for it: one line before the export, not after it
        require_int8_quantizer()
    plan = plan_candidates(target, cfg.precisions, missing_backends(target), probe(target), extras=backend_extras(target, cpu_info().flags))
    if not plan.candidates:
        raise EdgeInceptionError(f"target '{target.name}': no candidate can be built here: " + "; ".join(f"{s.name}: {s.why}" for s in plan.skipped))
    run = PipelineRun(plan=plan)
    if cfg.holdout is not None:  # checked before any stage: a bad folder costs one line, not an export and a calibration
        from .convert.calibration import scan_holdout

        run.holdout = scan_holdout(cfg.holdout)
    if cfg.calib is not None:  # so is --calib (an empty one was found after the export and the FP16 model, a .failed folder left)
        from .convert.calibration import check_calibration_folder

        check_calibration_folder(cfg.calib)
    out = cfg.output
    with atomic_dir(out, replace=cfg.force, index={"what": "pipeline report"}) as work:
        try:
            with run.stage("export", on_stage) as detail:
                exported = export_model(cfg.weights, work / "model.fp32.onnx", image_size=cfg.image_size)
                fp32, loaded = exported.path, exported.loaded
                run.model = {"source": loaded.source, "variant": loaded.variant.value, "num_classes": loaded.num_classes,
                             "seeded_weights": loaded.seeded, "image_size": int(exported.metadata["image_size"])}
                detail.append(f"{fp32.name}: " + ", ".join(f"{s.step} max rel err {s.parity.max_rel_error:.1e}" for s in exported.steps))

            # one quantized model per precision and INT8 scheme the candidates' runtimes take
            schemes: dict[Precision, list[QuantTarget]] = {}
            for c in plan.candidates:  # (a peer quantizer's candidate is made from the FP32 model by its backend)
                qt = quant_target(target, c)
                if c.precision is not Precision.fp32 and not c.quantizer and qt not in schemes.setdefault(c.precision, []):
                    schemes[c.precision].append(qt)
            models: dict[tuple[Precision, QuantTarget | None], Path] = {}
            for reduced, qts in schemes.items():
                for qt in qts:
                    label = reduced.value if len(qts) == 1 else f"{reduced.value}-{qt.value}"
                    with run.stage(f"quantize {label}", on_stage) as detail:
                        q = quantize_model(fp32, reduced, output=work / f"model.{label}.onnx", calib=cfg.calib, calib_size=cfg.calib_size, target=qt,
                                           min_agreement=cfg.min_agreement, progress=progress, eval_dir=cfg.eval_dir, top_k=cfg.top_k,
                                           holdout=cfg.holdout)
                        models[(reduced, qt)], run.quantization[label] = q.path, q
                        detail.append(f"top-1 agreement {q.accuracy.top1_agreement:.1%}, {q.accuracy.size_bytes / 1e6:.1f} MB"
                                      + (f", float activations kept for: {', '.join(q.kept_float)}" if q.kept_float else ""))
                        if reduced is Precision.int8:  # what the INT8 model was made for and from, on the console and in the report
                            detail.append(f"{q.scheme}; calibrated on {q.calibration_source}; {q.bias_correction}")
                        for warning in q.warnings:
                            log.warning("%s: %s", label, warning)

            with run.stage("build", on_stage) as detail:
                for c in plan.candidates:
                    src = fp32 if c.precision is Precision.fp32 or c.quantizer else models[(c.precision, quant_target(target, c))]
                    if c.fixed_batch is not None:
                        fixed = src.with_name(f"{src.stem}.b{c.fixed_batch}.onnx")
                        src = fixed if fixed.exists() else with_fixed_batch(src, fixed, c.fixed_batch)
                    try:
                        b = build(src, target, backend=c.backend, output_dir=work / "artifacts", allow_tf32=c.tf32, name=artifact_stem(c),
                                  inference_precision=c.inference_precision or None, quantizer=c.quantizer or None, calib=cfg.calib,
                                  calib_size=cfg.calib_size, holdout=cfg.holdout)
                    except (VerificationError, BackendUnavailableError) as exc:  # this candidate fails its judge or its runtime
                        run.failures[c.name] = str(exc)
                        log.warning("candidate %s not built: %s", c.name, exc)
                        continue
                    run.artifacts[c.name] = b.artifact
                    run.build_options[c.name] = dict(b.manifest.options)
                if not run.artifacts:
                    raise EdgeInceptionError("no candidate was built: " + "; ".join(f"{k}: {v}" for k, v in run.failures.items()))
                detail.append(f"{len(run.artifacts)} of {len(plan.candidates)} candidates built and verified against their ONNX"
                              + (f"; not built: {', '.join(run.failures)}" if run.failures else ""))

            with run.stage("verify", on_stage) as detail:
                run.verification, run.verification_photos, run.verification_source = verify_against_torch(
                    run.artifacts, loaded.model, run.model["image_size"], run.holdout, calibrated_on_bundled=cfg.calib is None)
                judged = {m.name: judge_candidate(m.candidate, m.evidence, cfg.min_agreement) for m in measured_candidates(run, None, 0)}
                detail.append(", ".join(f"{k} {v.top1_agreement:.1%} ({judged[k].status})" for k, v in run.verification.items())
                              + f" on {run.verification_source}")

            with run.stage("flops", on_stage) as detail:
                run.flops = count_graph(fp32).as_json()
                detail.append(f"{run.flops['total_macs'] / 1e9:.2f} G multiply-adds per image")

            with run.stage("bench", on_stage) as detail:
                names = {str(a): n for n, a in run.artifacts.items()}
                report = run_bench(list(names), BenchConfig(batches=cfg.batches, iterations=cfg.bench_iterations, rounds=cfg.bench_rounds,
                                                            fixed_at_own_batch=True), progress=progress)
                for r in report.results:  # agreement of our artifacts measured against PyTorch, not only vs FP32 ONNX
                    if not r.baseline and names.get(str(r.path)) in run.verification:
                        r.agreement = run.verification[names[str(r.path)]].top1_agreement
                write_report(report, json=work / "bench.json", markdown=work / "bench.md", png=work / "bench.png")
                detail.append(f"{len(report.results)} results, {len(run.artifacts)} candidates in one run")

            with run.stage("profile", on_stage) as detail:
                from .evaluate.profile import Profiles, profile_artifact

                profiles = [profile_artifact(a, iterations=10) for a in run.artifacts.values()]
                write_report(Profiles(dict(zip(run.artifacts, profiles))), json=work / "profile.json", png=work / "profile.png")
                detail.append(", ".join(f"{n} {pr.end_to_end_ms:.2f} ms ({pr.unassigned_share:.0%} unassigned)"
                                        for n, pr in zip(run.artifacts, profiles)))

            with run.stage("report", on_stage) as detail:
                summary = summarise(cfg, run, report)
                summary["preprocessing"] = preprocessing_agreement(work, summary, run.model["image_size"])
                write_report(Rendered(summary, report_markdown(summary, report, profiles)), json=work / "report.json", markdown=work / "report.md")
                detail.append("report.md, report.json")
        except EdgeInceptionError as exc:
            if not any(work.iterdir()):  # failed before any stage wrote a file: nothing to keep
                raise StageFailed(f"stage '{run.current}' failed: {exc}") from exc
            failed = out.with_name(out.name + ".failed")
            try:  # replaces an earlier failed run's folder, never a folder of the user's (fileio.check_replaceable)
                with atomic_dir(failed, replace=True, index={"what": "pipeline outputs of a failed run"}) as kept:
                    shutil.copytree(work, kept, dirs_exist_ok=True)
            except OutputPathError as why:
                raise StageFailed(f"stage '{run.current}' failed: {exc} (earlier outputs not kept: {why})") from exc
            raise StageFailed(f"stage '{run.current}' failed: {exc} (earlier outputs kept in {failed})") from exc
    return PipelineResult(out, summary, run.stages)


def preprocessing_agreement(work: Path, summary: dict[str, Any], image_size: int) -> dict[str, Any] | None:
    """``--preprocess fast`` against ``exact`` on the shipped artifact (else the first built), on JPEG crops of the
    bundled photos decoded at reduced scale: the report's statement of what the fast path changes (None: no artifact)."""
    from .evaluate.preprocess_agreement import photo_agreement

    rel = summary["ship"]["artifact"] or next(iter(summary["artifacts"].values()), None)
    if rel is None:
        return None
    return photo_agreement(work / rel, image_size).as_dict()


VERIFY_BATCH = 20  # images per verification batch: memory stays one batch whatever the --holdout folder holds


def verify_against_torch(artifacts: dict[str, Path], model, image_size: int, holdout: Holdout | None = None, *,
                         calibrated_on_bundled: bool = True) -> tuple[dict[str, Parity], int, str]:
    """Every artifact against the PyTorch model; returns each one's :class:`Parity`, the number of distinct source photos
    judged on (the judge's n) and one line saying what they were.

    With ``holdout`` (``--holdout``): every distinct photo of that folder, whole, preprocessed as at inference, none of
    them calibrated or chosen on. Without: the demo set's held-out crops, 10 per class folder, each folder one bundled
    photo (so n counts folders, not crops); with ``calibrated_on_bundled`` the INT8 models were calibrated on those same
    photos (their other crops), which the line says. Every artifact is opened once and each batch decoded once."""
    import contextlib

    import torch

    from .data.demo_data import default_demo_dir, make_demo_dataset
    from .data.images import find_images, load_batch
    from .engines.registry import open_runner
    from .evaluate.verify import compare

    if holdout is not None:
        held, photos = holdout.photos, len(holdout.photos)
        source = holdout.describe() + ", none calibrated or chosen on"
    else:
        held = find_images([make_demo_dataset(default_demo_dir()) / "val"]).images
        photos = len({p.parent for p in held})
        source = (f"{len(held)} held-out crops of {photos} bundled photos (the demo set's val split)"
                  + ("; the INT8 models were calibrated on crops of the same photos" if calibrated_on_bundled else ""))
    model = model.eval()
    refs: list[np.ndarray] = []
    gots: dict[str, list[np.ndarray]] = {name: [] for name in artifacts}
    with contextlib.ExitStack() as stack, torch.inference_mode():
        runners = {name: stack.enter_context(open_runner(art)) for name, art in artifacts.items()}
        for i in range(0, len(held), VERIFY_BATCH):
            b = load_batch(held[i : i + VERIFY_BATCH], image_size)
            refs.append(model(torch.from_numpy(b)).numpy())
            for name, runner in runners.items():
                gots[name].append(runner.run(b))
    ref = np.concatenate(refs)
    return {name: compare(ref, np.concatenate(got)) for name, got in gots.items()}, photos, source


def measured_candidates(run: PipelineRun, bench: BenchReport | None, batch: int) -> list[Measured]:
    """Each planned candidate with its p50 at ``batch`` from ``bench`` (matched by artifact path; None: not yet
    measured), its logits against PyTorch (the judge's evidence) and, if it was not built, why."""
    p50 = {str(r.path): r.latency_ms["p50"] for r in bench.results if not r.baseline and r.batch == batch} if bench else {}
    out = []
    for c in run.plan.candidates:
        art = run.artifacts.get(c.name)
        parity = run.verification.get(c.name)
        evidence = (Evidence(parity.top1_agreement, parity.samples, run.verification_photos, parity.mean_cosine, parity.max_rel_error,
                             photos_source=run.verification_source) if parity else None)
        out.append(Measured(c, p50.get(str(art)) if art else None, evidence, run.failures.get(c.name)))
    return out


def summarise(cfg: PipelineConfig, run: PipelineRun, bench: BenchReport) -> dict[str, Any]:
    batch = min(cfg.batches)  # the decision is made where the edge case is: the smallest batch benchmarked
    measured = measured_candidates(run, bench, batch)
    decision = choose_ship(measured, cfg.min_agreement, ship_unproven=cfg.ship_unproven, batch=batch)
    rel = {n: str(Path("artifacts") / a.name) for n, a in run.artifacts.items()}
    p50s: dict[str, dict[str, float]] = {}
    for r in bench.results:
        if not r.baseline:
            name = next((n for n, a in run.artifacts.items() if str(a) == str(r.path)), r.engine)
            p50s.setdefault(name, {})[str(r.batch)] = r.latency_ms["p50"]
    candidates = []
    from .evaluate.cpu import cpu_info

    flags = cpu_info().flags if summary_device(cfg) == "cpu" else frozenset()
    for m in measured:
        c, v = m.candidate, decision.verdict(m.name)
        options = run.build_options.get(c.name, {})
        candidates.append({"name": c.name, "backend": c.backend.value, "precision": c.precision.value, "tf32": c.tf32, "fixed_batch": c.fixed_batch,
                           "inference_precision": c.inference_precision or None, "quantizer": c.quantizer or "ours",
                           "runtime": c.runtime, "artifact": rel.get(c.name), "p50_ms": p50s.get(c.name, {}), "agreement": m.agreement,
                           "status": v.status, "judged": v.judged, "behind_ms": v.behind_ms, "behind": v.behind, "note": v.note,
                           "isa": isa_used(c, flags), "runtime_precision": options.get("runtime_inference_precision"),
                           "calibration": options.get("calibration")})
    shipped = next((m.candidate for m in measured if m.name == decision.ship), None)
    return {
        "model": run.model,
        "target": cfg.target,
        "runtime": "; ".join(dict.fromkeys(f"{c.backend.value}: {c.runtime}" for c in run.plan.candidates)),
        "decision_batch": batch,
        "candidates": candidates,
        "skipped": [{"name": s.name, "why": s.why} for s in run.plan.skipped],
        "artifacts": rel,
        "verification_vs_pytorch": {n: v.as_dict() for n, v in run.verification.items()},
        "verification_photos": run.verification_photos,
        "verification_source": run.verification_source,  # what every candidate's judge saw
        "holdout": ({**run.holdout.as_dict(), "use": "every candidate judged on every distinct photo against PyTorch; the INT8 verdict of "
                     "quantize on the same photos; none of them calibrated on (ours or NNCF) or used to choose a method or stage"}
                    if run.holdout else None),
        "quantization": {label: {"accuracy": q.as_dict()["accuracy"], "scheme": q.scheme, "kept_float": q.kept_float,
                                 "float_weights": q.float_weights, "calibration_source": q.calibration_source, "claim": q.claim,
                                 "photo_use": q.photo_use, "bias_correction": q.bias_correction,
                                 "warnings": q.warnings} for label, q in run.quantization.items()},
        "flops": {k: run.flops[k] for k in ("total_macs", "budget_macs", "total_params")},
        "latency_p50_ms_batch1": {n: v["1"] for n, v in p50s.items() if "1" in v},
        "ship": {"candidate": decision.ship, "backend": shipped.backend.value if shipped else None,
                 "precision": shipped.precision.value if shipped else None, "artifact": rel.get(decision.ship or ""), "batch": batch,
                 "fastest": decision.fastest, "why": decision.why, "unproven": decision.unproven,
                 "ship_unproven_asked": cfg.ship_unproven, "judged_on": run.verification_source},
        "stages": [{"name": s.name, "seconds": round(s.seconds, 2), "detail": s.detail} for s in run.stages],
        "output": str(cfg.output),
    }


def summary_device(cfg: PipelineConfig) -> str:
    """The target's device (``cpu`` or ``cuda``): whose ISA flags the report shows beside each candidate."""
    from .engines.targets import get_target

    return get_target(cfg.target).device


def isa_text(c: dict[str, Any]) -> str:
    """A candidate's ISA cell: the CPU flags its arithmetic can use, and what OpenVINO reports computing it in."""
    flags = ", ".join(c.get("isa") or []) or "-"
    return flags + (f"; OpenVINO computes {c['runtime_precision']}" if c.get("runtime_precision") else "")


def _verdict_text(c: dict[str, Any]) -> str:
    status = c["status"]
    if status == "shipped":
        return "**shipped, UNPROVEN** (--ship-unproven)" if c.get("judged") == "unproven" else "**shipped**"
    return f"{status}: {md_text(c['note'], 2000)}" if c["note"] else status


def candidates_markdown(summary: dict[str, Any]) -> list[str]:
    """The candidates table: every candidate's p50 per batch size, its agreement with PyTorch and how it lost."""
    batches = sorted({int(b) for c in summary["candidates"] for b in c["p50_ms"]}) or [summary["decision_batch"]]
    lines = [f"Each candidate was built, verified against its ONNX and against PyTorch, and measured in one benchmark run; the "
             f"decision is made at batch {summary['decision_batch']}.", "",
             "Judge: float candidates by their logits' numbers against PyTorch (cosine, max relative error); INT8 by top-1 agreement "
             "whose one-sided 95% lower bound over distinct photos must clear the criterion (else `unproven`, shipped only with "
             "`--ship-unproven`).", "",
             "| candidate | runtime | ISA (CPU flags it can use) | " + " | ".join(f"p50 ms (batch {b})" for b in batches)
             + " | top-1 agreement vs PyTorch | judge | verdict |",
             "|---|---|---|" + "---:|" * len(batches) + "---:|---|---|"]
    for c in summary["candidates"]:
        p50 = [f"{c['p50_ms'][str(b)]:.2f}" if str(b) in c["p50_ms"] else "-" for b in batches]
        agree = "-" if c["agreement"] is None else f"{c['agreement']:.1%}"
        lines.append(f"| {c['name']} | {c['runtime']} | {isa_text(c)} | " + " | ".join(p50)
                      + f" | {agree} | {c.get('judged') or '-'} | {_verdict_text(c)} |")
    lines += [f"- not a candidate here: {s['name']}: {md_text(s['why'], 2000)}" for s in summary["skipped"]]
    return lines + [""]


def report_markdown(summary: dict[str, Any], bench_report: BenchReport, profiles: list[ProfileReport] | None = None) -> str:
    from .evaluate.bench import markdown as bench_md
    from .evaluate.profile import markdown as profile_md

    m = summary["model"]
    lines = ["# edge-inception pipeline report", ""]
    if m["seeded_weights"]:
        lines += ["> **Seeded random weights** (no `--weights`): the pipeline, timings and agreement figures are real, "
                  "but the labels this model predicts are not meaningful.", ""]
    ship = summary["ship"]
    lines += [f"- model: {m['variant']} layout, {m['num_classes']} classes, {m['image_size']}x{m['image_size']} input, from `{m['source']}`",
              f"- target: `{summary['target']}`, runtimes: {summary['runtime']}",
              f"- **ship: `{ship['artifact']}`** ({ship['candidate']}): {ship['why']}",
              f"- judged on: {summary['verification_source']}", "",
              "## Candidates", "", *candidates_markdown(summary),
              "## Accuracy against PyTorch (held-out photos)", "",
              "| candidate | top-1 agreement | top-5 overlap | mean cosine | max abs error |", "|---|---:|---:|---:|---:|"]
    for p, v in summary["verification_vs_pytorch"].items():
        lines.append(f"| {p} | {v['top1_agreement']:.1%} | {v['top5_overlap']:.1%} | {v['mean_cosine']:.5f} | {v['max_abs_error']:.4f} |")
    if summary["quantization"]:
        lines += ["", "## Quantization", ""]
        for label, q in summary["quantization"].items():
            lines.append(f"- {label}: {q['scheme']}" + (f"; calibrated on {q['calibration_source']}" if q.get("calibration_source") else "")
                         + (f"; claim: {q['claim']}" if q.get("claim") else ""))
            lines += [f"  - {k.replace('_', ' ')}: {q[k]}" for k in ("photo_use", "bias_correction") if q.get(k)]
            lines += [f"  - warning: {w}" for w in q.get("warnings", [])]
    pre = summary.get("preprocessing")
    if pre:
        lines += ["", "## Preprocessing: fast against exact", "",
                  f"`--preprocess fast` (the default of predict, eval and stream) gives the exact path's tensor, bit for bit, for every "
                  f"image decoded at full size (PNG, TIFF, BMP, small JPEGs); a large JPEG is decoded at 1/2-1/8 scale in the DCT domain. "
                  f"On {pre['images']} JPEG crops of the bundled photos ({pre['decoded_at_reduced_scale']} decoded at reduced scale), "
                  f"the shipped artifact's top-1 agreed on {pre['top1_agreement']:.1%}, largest difference in a class probability "
                  f"{pre['max_abs_dp']:.2g}."]
    f = summary["flops"]
    lines += ["", "## Compute budget", "", f"{f['total_macs']:,} multiply-adds per image ({f['total_macs'] / f['budget_macs']:.1%} of the "
              f"paper's 1.5 G budget), {f['total_params']:,} parameters.", "", "## Latency", "", bench_md(bench_report, title=False),
              *(["## Where the time goes", "", "![share of time against share of multiply-adds, per stage](profile.png)", ""]
                + [profile_md(pr, title=False) for pr in profiles or []] if profiles else []),
              "## Stages", "", "| stage | seconds | detail |", "|---|---:|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.1f} | {s['detail']} |" for s in summary["stages"]]
    return "\n".join(lines) + "\n"
