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

from .errors import EdgeInceptionError, require_modules
from .fileio import atomic_dir, write_json_atomic, write_text_atomic
from .vocab import Backend, Precision, QuantTarget

if TYPE_CHECKING:
    from .convert.quantize import QuantizeResult
    from .evaluate.bench import BenchReport
    from .evaluate.profile import ProfileReport
    from .evaluate.verify import Parity

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    output: Path
    weights: Path | None = None
    target: str = "cpu"
    precisions: tuple[Precision, ...] = (Precision.fp32, Precision.fp16, Precision.int8)
    calib: Path | None = None
    image_size: int | None = None
    min_agreement: float = 0.99
    force: bool = False
    bench_iterations: int = 30
    bench_rounds: int = 3
    batches: tuple[int, ...] = (1,)  # the edge case; add 8, 32 ... for throughput

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
    """What the stages produced, for the report."""

    model: dict[str, Any] = field(default_factory=dict)  # source, variant, num_classes, seeded_weights, image_size
    artifacts: dict[Precision, Path] = field(default_factory=dict)
    quantization: dict[Precision, QuantizeResult] = field(default_factory=dict)
    verification: dict[Precision, Parity] = field(default_factory=dict)  # each artifact against PyTorch
    flops: dict[str, Any] = field(default_factory=dict)
    stages: list[StageLog] = field(default_factory=list)
    runtime: str = ""  # the runtime the target's artifacts were built with, and why
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
        self.stages.append(StageLog(name, time.perf_counter() - t0, " ".join(detail)))


class StageFailed(EdgeInceptionError):
    pass


def run_pipeline(cfg: PipelineConfig, on_stage: Callable[[str], None] | None = None,
                 progress: Callable[[int, str], Any] | None = None) -> PipelineResult:
    from .convert.export import export_model
    from .convert.quantize import quantize_model
    from .engines.build import build
    from .engines.choose import choose, probe
    from .engines.targets import get_target
    from .evaluate.bench import BenchConfig, markdown, plot, run_bench
    from .evaluate.flops import count_graph

    require_modules("the pipeline (it starts from a PyTorch checkpoint)", "torch", "onnxsim")
    if not cfg.precisions:
        raise EdgeInceptionError("--precisions: give at least one of fp32, fp16, int8")
    target = get_target(cfg.target)
    for p in cfg.precisions:
        target.check_precision(p)
    # the runtime decides the INT8 scheme: TensorRT (native or as ONNX Runtime's provider) takes symmetric Q/DQ and gains
    # nothing from weight-only stages; ONNX Runtime's CPU and CUDA kernels run weight-only stages in float
    choice = choose(target, Precision.int8, None, probe(target))
    for p in cfg.precisions:
        target.check(choice.backend, p)
    run = PipelineRun(runtime=choice.line)
    out = cfg.output
    with atomic_dir(out, replace=cfg.force) as work:
        try:
            with run.stage("export", on_stage) as detail:
                exported = export_model(cfg.weights, work / "model.fp32.onnx", image_size=cfg.image_size)
                fp32, loaded = exported.path, exported.loaded
                run.model = {"source": loaded.source, "variant": loaded.variant.value, "num_classes": loaded.num_classes,
                             "seeded_weights": loaded.seeded, "image_size": int(exported.metadata["image_size"])}
                detail.append(f"{fp32.name}: " + ", ".join(f"{s.step} max rel err {s.parity.max_rel_error:.1e}" for s in exported.steps))

            sources: dict[Precision, Path] = {Precision.fp32: fp32}
            if target.device == "cpu":
                quant_target = QuantTarget.cpu
            elif choice.backend is Backend.tensorrt or "TensorrtExecutionProvider" in choice.providers:
                quant_target = QuantTarget.tensorrt
            else:
                quant_target = QuantTarget.gpu
            for reduced in (p for p in cfg.precisions if p is not Precision.fp32):
                with run.stage(f"quantize {reduced.value}", on_stage) as detail:
                    q = quantize_model(fp32, reduced, output=work / f"model.{reduced.value}.onnx", calib=cfg.calib, target=quant_target,
                                       min_agreement=cfg.min_agreement, progress=progress)
                    sources[reduced], run.quantization[reduced] = q.path, q
                    detail.append(f"top-1 agreement {q.accuracy.top1_agreement:.1%}, {q.accuracy.size_bytes / 1e6:.1f} MB"
                                  + (f", float activations kept for: {', '.join(q.kept_float)}" if q.kept_float else ""))

            for prec in cfg.precisions:
                with run.stage(f"build {prec.value}", on_stage) as detail:
                    b = build(sources[prec], target, output_dir=work / "artifacts")
                    run.artifacts[prec] = b.artifact
                    detail.append(f"{b.artifact.name}: top-1 agreement {b.parity.top1_agreement:.1%} vs its ONNX")

            with run.stage("verify", on_stage) as detail:
                run.verification = verify_against_torch(run.artifacts, loaded.model, run.model["image_size"])
                detail.append(", ".join(f"{k.value} {v.top1_agreement:.1%}" for k, v in run.verification.items()))

            with run.stage("flops", on_stage) as detail:
                run.flops = count_graph(fp32).as_json()
                detail.append(f"{run.flops['total_macs'] / 1e9:.2f} G multiply-adds per image")

            with run.stage("bench", on_stage) as detail:
                report = run_bench([str(run.artifacts[p]) for p in cfg.precisions],
                                   BenchConfig(batches=cfg.batches, iterations=cfg.bench_iterations, rounds=cfg.bench_rounds), progress=progress)
                for r in report.results:  # agreement of our artifacts measured against PyTorch, not only vs FP32 ONNX
                    if not r.baseline and Precision(r.precision) in run.verification:
                        r.agreement = run.verification[Precision(r.precision)].top1_agreement
                write_json_atomic(work / "bench.json", report.as_dict())
                write_text_atomic(work / "bench.md", markdown(report))
                plot(report, work / "bench.png")
                detail.append(f"{len(report.results)} results")

            with run.stage("profile", on_stage) as detail:
                from .evaluate.profile import plot as plot_profile
                from .evaluate.profile import profile_artifact

                profiles = [profile_artifact(run.artifacts[p], iterations=10) for p in cfg.precisions]
                write_json_atomic(work / "profile.json", [pr.as_dict() for pr in profiles])
                plot_profile(profiles, work / "profile.png")
                detail.append(", ".join(f"{pr.precision} {pr.end_to_end_ms:.2f} ms ({pr.unassigned_share:.0%} unassigned)" for pr in profiles))

            with run.stage("report", on_stage) as detail:
                summary = summarise(cfg, run, report)
                write_json_atomic(work / "report.json", summary)
                write_text_atomic(work / "report.md", report_markdown(summary, report, profiles))
                detail.append("report.md, report.json")
        except EdgeInceptionError as exc:
            failed = out.with_name(out.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            shutil.copytree(work, failed)
            raise StageFailed(f"stage '{run.current}' failed: {exc} (earlier outputs kept in {failed})") from exc
    return PipelineResult(out, summary, run.stages)


def verify_against_torch(artifacts: dict[Precision, Path], model, image_size: int) -> dict[Precision, Parity]:
    """Every artifact against the PyTorch model, on held-out photos (the demo crops' held-out split)."""
    import torch

    from .data.demo_data import default_demo_dir, make_demo_dataset
    from .data.images import find_images, load_batch
    from .engines.registry import open_runner
    from .evaluate.verify import compare

    held = find_images([make_demo_dataset(default_demo_dir()) / "val"]).images
    batches = [load_batch(held[i : i + 20], image_size) for i in range(0, len(held), 20)]
    model = model.eval()
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(b)).numpy() for b in batches])
    out = {}
    for prec, art in artifacts.items():
        with open_runner(art) as runner:
            got = np.concatenate([runner.run(b) for b in batches])
        out[prec] = compare(ref, got)
    return out


def choose_ship(p50_ms: dict[str, float], agreement: dict[str, float], min_agreement: float) -> tuple[str | None, str]:
    """The artifact to ship: the lowest batch-1 p50 among those whose top-1 agreement with PyTorch meets the guard.
    Equal latencies go to the higher precision. Returns (precision or None, why)."""
    eligible = [p for p in p50_ms if agreement.get(p, 0.0) >= min_agreement]
    if not eligible:
        return None, f"no artifact met the accuracy guard (top-1 agreement >= {min_agreement:.0%} against PyTorch)"
    order = [p.value for p in Precision]  # fp32, fp16, int8: most faithful first
    ship = min(eligible, key=lambda p: (p50_ms[p], order.index(p) if p in order else len(order)))
    return ship, f"lowest batch-1 p50 ({p50_ms[ship]:.2f} ms) among artifacts with top-1 agreement >= {min_agreement:.0%} against PyTorch"


def summarise(cfg: PipelineConfig, run: PipelineRun, bench: BenchReport) -> dict[str, Any]:
    p50 = {r.precision: r.latency_ms["p50"] for r in bench.results if r.batch == 1 and not r.baseline}
    agreement = {p.value: v.top1_agreement for p, v in run.verification.items()}
    ship, why = choose_ship(p50, agreement, cfg.min_agreement)
    return {
        "model": run.model,
        "target": cfg.target,
        "runtime": run.runtime,
        "artifacts": {p.value: str(Path("artifacts") / a.name) for p, a in run.artifacts.items()},
        "verification_vs_pytorch": {p.value: v.as_dict() for p, v in run.verification.items()},
        "quantization": {p.value: {"accuracy": q.as_dict()["accuracy"], "scheme": q.scheme, "kept_float": q.kept_float,
                                   "float_weights": q.float_weights} for p, q in run.quantization.items()},
        "flops": {k: run.flops[k] for k in ("total_macs", "budget_macs", "total_params")},
        "latency_p50_ms_batch1": p50,
        "ship": {"precision": ship, "artifact": str(Path("artifacts") / run.artifacts[Precision(ship)].name) if ship else None, "why": why},
        "stages": [{"name": s.name, "seconds": round(s.seconds, 2), "detail": s.detail} for s in run.stages],
        "output": str(cfg.output),
    }


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
              f"- target: `{summary['target']}`, runtime: {summary['runtime']}",
              f"- **ship: `{ship['artifact']}`** ({ship['precision']}): {ship['why']}", "",
              "## Accuracy against PyTorch (held-out photos)", "",
              "| precision | top-1 agreement | top-5 overlap | mean cosine | max abs error |", "|---|---:|---:|---:|---:|"]
    for p, v in summary["verification_vs_pytorch"].items():
        lines.append(f"| {p} | {v['top1_agreement']:.1%} | {v['top5_overlap']:.1%} | {v['mean_cosine']:.5f} | {v['max_abs_error']:.4f} |")
    f = summary["flops"]
    lines += ["", "## Compute budget", "", f"{f['total_macs']:,} multiply-adds per image ({f['total_macs'] / f['budget_macs']:.1%} of the "
              f"paper's 1.5 G budget), {f['total_params']:,} parameters.", "", "## Latency", "", bench_md(bench_report, title=False),
              *(["## Where the time goes", "", "![share of time against share of multiply-adds, per stage](profile.png)", ""]
                + [profile_md(pr, title=False) for pr in profiles or []] if profiles else []),
              "## Stages", "", "| stage | seconds | detail |", "|---|---:|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.1f} | {s['detail']} |" for s in summary["stages"]]
    return "\n".join(lines) + "\n"
