"""``edge-inception pipeline``: checkpoint -> export -> quantize -> build -> verify -> benchmark -> report.

Everything is written into a temporary folder beside the output and moved into place at the end, so an
interrupted run leaves no half-written artifact and an existing report folder is replaced only by a complete
one. A stage that fails is named; the artifacts earlier stages completed are kept in ``<out>.failed/``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeInceptionError
from .fileio import atomic_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    output: Path
    weights: Path | None = None
    target: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calib: Path | None = None
    image_size: int | None = None
    min_agreement: float = 0.99
    force: bool = False
    bench_iterations: int = 30
    bench_rounds: int = 3
    batches: tuple[int, ...] = (1,)  # the edge case; add 8, 32 ... for throughput


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


class StageFailed(EdgeInceptionError):
    pass


def run_pipeline(cfg: PipelineConfig, on_stage: Callable[[str], None] | None = None,
                 progress: Callable[[int, str], Any] | None = None) -> PipelineResult:
    from .convert.export import export_model
    from .convert.quantize import quantize_model
    from .engines.build import build
    from .engines.targets import get_target
    from .evaluate.bench import BenchConfig, markdown, plot, run_bench
    from .evaluate.flops import count_graph

    bad = [p for p in cfg.precisions if p not in ("fp32", "fp16", "int8")]
    if bad or not cfg.precisions:
        raise EdgeInceptionError(f"--precisions takes fp32, fp16, int8 (got {', '.join(bad) or 'none'})")
    target = get_target(cfg.target)
    for p in cfg.precisions:
        target.check(target.backend, p)
    stages: list[StageLog] = []
    out = cfg.output
    with atomic_dir(out, replace=cfg.force) as work:
        current = "setup"

        def stage(name: str):
            nonlocal current
            current = name
            if on_stage:
                on_stage(name)
            return time.perf_counter()

        def done(name: str, t0: float, detail: str) -> None:
            stages.append(StageLog(name, time.perf_counter() - t0, detail))

        try:
            t = stage("export")
            exported = export_model(cfg.weights, work / "model.fp32.onnx", image_size=cfg.image_size)
            fp32 = exported.path
            loaded = exported.loaded
            done("export", t, f"{fp32.name}: " + ", ".join(f"{s.step} max rel err {s.parity.max_rel_error:.1e}" for s in exported.steps))

            sources = {"fp32": fp32}
            quant_reports: dict[str, Any] = {}
            for prec in (p for p in cfg.precisions if p != "fp32"):
                t = stage(f"quantize {prec}")
                q = quantize_model(fp32, prec, output=work / f"model.{prec}.onnx", calib=cfg.calib, target="cpu" if target.device == "cpu"
                                   else "tensorrt", min_agreement=cfg.min_agreement, progress=progress)
                sources[prec] = q.path
                quant_reports[prec] = q.as_dict()
                done(f"quantize {prec}", t, f"top-1 agreement {q.accuracy.top1_agreement:.1%}, {q.accuracy.size_bytes / 1e6:.1f} MB"
                     + (f", float activations kept for: {', '.join(q.kept_float)}" if q.kept_float else ""))

            artifacts: dict[str, Path] = {}
            build_dir = work / "artifacts"
            for prec in cfg.precisions:
                t = stage(f"build {prec}")
                b = build(sources[prec], target, output_dir=build_dir)
                artifacts[prec] = b.artifact
                done(f"build {prec}", t, f"{b.artifact.name}: top-1 agreement {b.parity.top1_agreement:.1%} vs its ONNX")

            t = stage("verify")
            verification = verify_against_torch(artifacts, loaded, exported.metadata)
            done("verify", t, ", ".join(f"{k} {v['top1_agreement']:.1%}" for k, v in verification.items()))

            t = stage("flops")
            flops = count_graph(fp32).as_json()
            done("flops", t, f"{flops['total_macs'] / 1e9:.2f} G multiply-adds per image")

            t = stage("bench")
            report = run_bench([str(artifacts[p]) for p in cfg.precisions],
                               BenchConfig(batches=cfg.batches, iterations=cfg.bench_iterations, rounds=cfg.bench_rounds), progress=progress)
            for r in report["results"]:  # agreement of our artifacts measured against PyTorch, not only vs FP32 ONNX
                ours = r["engine"] not in ("ort-default", "torch-eager")
                if ours and r["precision"] in verification:
                    r["agreement"] = verification[r["precision"]]["top1_agreement"]
            write_json_atomic(work / "bench.json", report)
            write_text_atomic(work / "bench.md", markdown(report))
            plot(report, work / "bench.png")
            done("bench", t, f"{len(report['results'])} results")

            t = stage("report")
            summary = summarise(cfg, loaded, exported, quant_reports, artifacts, verification, flops, report, stages, out)
            write_json_atomic(work / "report.json", summary)
            write_text_atomic(work / "report.md", report_markdown(summary, report))
            done("report", t, "report.md, report.json")
        except EdgeInceptionError as exc:
            failed = out.with_name(out.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            shutil.copytree(work, failed)
            raise StageFailed(f"stage '{current}' failed: {exc} (earlier outputs kept in {failed})") from exc
    return PipelineResult(out, summary, stages)


def verify_against_torch(artifacts: dict[str, Path], loaded, metadata: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every artifact against the PyTorch model, on held-out photos (the demo crops' held-out split)."""
    import torch

    from .data.demo_data import default_demo_dir, make_demo_dataset
    from .data.images import find_images, load_batch
    from .engines.base import open_runner
    from .evaluate.verify import compare

    size = int(metadata["image_size"])
    held = find_images([make_demo_dataset(default_demo_dir()) / "val"]).images
    batches = [load_batch(held[i : i + 20], size) for i in range(0, len(held), 20)]
    model = loaded.model.eval()
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(b)).numpy() for b in batches])
    out = {}
    for prec, art in artifacts.items():
        with open_runner(art) as runner:
            got = np.concatenate([runner.infer(b) for b in batches])
        out[prec] = compare(ref, got).as_dict()
    return out


def summarise(cfg, loaded, exported, quant_reports, artifacts, verification, flops, bench_report, stages, out) -> dict[str, Any]:
    p50 = {r["precision"]: r["latency_ms"]["p50"] for r in bench_report["results"]
           if r["batch"] == 1 and r["engine"] not in ("ort-default", "torch-eager")}
    eligible = {p: v for p, v in p50.items() if verification[p]["top1_agreement"] >= cfg.min_agreement}
    ship = min(eligible, key=lambda p: eligible[p]) if eligible else None
    why = (f"lowest batch-1 p50 ({eligible[ship]:.2f} ms) among artifacts with top-1 agreement >= {cfg.min_agreement:.0%} against PyTorch"
           if ship else "no artifact met the accuracy guard")
    return {
        "model": {"source": loaded.source, "variant": loaded.variant.value, "num_classes": loaded.num_classes, "seeded_weights": loaded.seeded,
                  "image_size": int(exported.metadata["image_size"])},
        "target": cfg.target,
        "artifacts": {p: str(Path("artifacts") / a.name) for p, a in artifacts.items()},
        "verification_vs_pytorch": verification,
        "quantization": {p: {"accuracy": r["accuracy"], "scheme": r["scheme"], "kept_float": r["kept_float"],
                             "float_weights": r["float_weights"]} for p, r in quant_reports.items()},
        "flops": {"total_macs": flops["total_macs"], "budget_macs": flops["budget_macs"], "total_params": flops["total_params"]},
        "latency_p50_ms_batch1": p50,
        "ship": {"precision": ship, "artifact": str(Path("artifacts") / artifacts[ship].name) if ship else None, "why": why},
        "stages": [{"name": s.name, "seconds": round(s.seconds, 2), "detail": s.detail} for s in stages],
        "output": str(out),
    }


def report_markdown(summary: dict[str, Any], bench_report: dict[str, Any]) -> str:
    from .evaluate.bench import markdown as bench_md

    m = summary["model"]
    lines = ["# edge-inception pipeline report", ""]
    if m["seeded_weights"]:
        lines += ["> **Seeded random weights** (no `--weights`): the pipeline, timings and agreement figures are real, "
                  "but the labels this model predicts are not meaningful.", ""]
    ship = summary["ship"]
    lines += [f"- model: {m['variant']} layout, {m['num_classes']} classes, {m['image_size']}x{m['image_size']} input, from `{m['source']}`",
              f"- target: `{summary['target']}`",
              f"- **ship: `{ship['artifact']}`** ({ship['precision']}): {ship['why']}", "",
              "## Accuracy against PyTorch (held-out photos)", "",
              "| precision | top-1 agreement | top-5 overlap | mean cosine | max abs error |", "|---|---:|---:|---:|---:|"]
    for p, v in summary["verification_vs_pytorch"].items():
        lines.append(f"| {p} | {v['top1_agreement']:.1%} | {v['top5_overlap']:.1%} | {v['mean_cosine']:.5f} | {v['max_abs_error']:.4f} |")
    f = summary["flops"]
    lines += ["", "## Compute budget", "", f"{f['total_macs']:,} multiply-adds per image ({f['total_macs'] / f['budget_macs']:.1%} of the "
              f"paper's 1.5 G budget), {f['total_params']:,} parameters.", "", "## Latency", "", bench_md(bench_report).split("\n", 2)[2],
              "## Stages", "", "| stage | seconds | detail |", "|---|---:|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.1f} | {s['detail']} |" for s in summary["stages"]]
    return "\n".join(lines) + "\n"
