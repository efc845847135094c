"""Latency and throughput that hold up: engines measured in turn, in rounds, each in its own process.

Each result carries min/p50/p90/p95/p99/mean/std latency, throughput, speed-up over the baselines measured in
the same run (PyTorch eager and a default ONNX Runtime session on the unoptimised export), multiply-adds from
the flops counter and achieved multiply-adds per second against the machine's measured matmul peak.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeInceptionError
from ..fileio import write_json_atomic, write_text_atomic
from .cpu import cpu_info

log = logging.getLogger(__name__)

BASELINES = ("torch", "ort-default")


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """Order statistics of per-inference latencies (linear interpolation between closest ranks)."""
    if len(samples_ms) == 0:
        raise EdgeInceptionError("no latency samples")
    a = np.asarray(samples_ms, dtype=np.float64)
    p = np.percentile(a, [50, 90, 95, 99])
    return {"min": float(a.min()), "p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]),
            "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "count": int(len(a))}


@dataclass
class Engine:
    name: str
    kind: str  # "artifact" | "torch" | "ort-default"
    backend: str
    precision: str
    path: str | None
    image_size: int
    macs_per_image: int
    source_onnx: str | None = None
    torch_kwargs: dict[str, Any] = field(default_factory=dict)
    agreement: float | None = None  # top-1 agreement with FP32, from a quantize report


@dataclass
class BenchResult:
    engine: str
    backend: str
    precision: str
    batch: int
    latency_ms: dict[str, float]
    throughput_ips: float
    macs: int  # per inference (whole batch)
    macs_per_s: float
    peak_fraction: float | None
    speedup_vs: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    warmup_s: float = 0.0
    iterations: int = 50
    duration_s: float = 0.0
    rounds: int = 3
    threads: int = 0
    baselines: tuple[str, ...] = BASELINES


def describe(artifact: str | Path) -> Engine:
    """What an artifact (or ONNX model) is, where its FP32 source is, and what it computes."""
    from ..convert.onnx_file import get_metadata, load_onnx
    from ..engines.base import artifact_info, manifest_path, read_manifest
    from .flops import count_graph

    art = Path(artifact)
    info = artifact_info(art)
    source = read_manifest(art).source_onnx if manifest_path(art).exists() else str(art)
    macs = count_graph(source, batch=1).total_macs
    meta = get_metadata(load_onnx(source, with_weights=False))
    report = Path(source).with_suffix(".report.json")
    agreement = json.loads(report.read_text())["accuracy"]["top1_agreement"] if report.is_file() else (1.0 if info["precision"] == "fp32" else None)
    prefix = "onnx" if info["target"] == "plain" else info["backend"]  # a plain ONNX file runs with ONNX Runtime's defaults
    name = f"{prefix}-{info['precision']}" + ("" if info["target"] in ("plain", "cpu") else f"-{info['target']}")
    return Engine(name=name, kind="artifact", backend=info["backend"], precision=info["precision"], path=str(art),
                  image_size=info["image_size"], macs_per_image=macs, source_onnx=meta.get("fp32_source", source), agreement=agreement)


def baseline_engines(reference: Engine, wanted: Sequence[str]) -> list[Engine]:
    """PyTorch eager and default ONNX Runtime, on the FP32 export behind ``reference``."""
    from ..convert.onnx_file import get_metadata, load_onnx
    from ..engines.pytorch import weights_for_onnx

    if reference.source_onnx is None:
        return []
    fp32 = Path(reference.source_onnx)
    meta = get_metadata(load_onnx(fp32, with_weights=False))
    if meta.get("precision", "fp32") != "fp32" and meta.get("fp32_source"):
        fp32 = Path(meta["fp32_source"])
        meta = get_metadata(load_onnx(fp32, with_weights=False))
    engines = []
    for name in wanted:
        if name == "torch":
            engines.append(Engine("torch-eager", "torch", "torch", "fp32", None, reference.image_size, reference.macs_per_image,
                                  torch_kwargs=weights_for_onnx(meta), agreement=1.0))
        elif name == "ort-default":
            engines.append(Engine("ort-default", "ort-default", "ort", "fp32", str(fp32), reference.image_size, reference.macs_per_image,
                                  agreement=1.0))
        else:
            raise EdgeInceptionError(f"unknown baseline '{name}' (choose from {', '.join(BASELINES)})")
    return engines


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "edge_inception.evaluate.bench_worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or "no output").strip().splitlines()
        raise EdgeInceptionError(f"benchmark of {spec.get('path') or spec['kind']} failed: {lines[-1]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime

    cpu = cpu_info()
    libs = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    for mod in ("torch", "openvino", "tensorrt"):
        try:
            version = getattr(__import__(mod), "__version__", None)  # tensorrt-stubs alone is an empty namespace
        except ImportError:
            version = None
        if version:
            libs[mod] = str(version)
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = {"name": torch.cuda.get_device_name(), "compute_capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    except ImportError:
        pass
    return {"cpu": cpu.model, "arch": cpu.arch, "cores": cpu.cores, "simd": cpu.simd, "threads_requested": threads or "default",
            "platform": platform.platform(), "gpu": gpu, "libraries": libs}


def run_bench(artifacts: Sequence[str | Path], cfg: BenchConfig, progress: Callable[[int, str], Any] | None = None) -> dict[str, Any]:
    if not artifacts:
        raise EdgeInceptionError("give at least one artifact to benchmark")
    engines = [describe(a) for a in artifacts]
    seen: dict[str, int] = {}
    for e in engines:  # the same kind of artifact twice: number them
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name}-{seen[e.name]}"
    engines += baseline_engines(engines[0], cfg.baselines)
    sizes = {e.image_size for e in engines}
    if len(sizes) > 1:
        raise EdgeInceptionError(f"artifacts have different input sizes ({sorted(sizes)}): benchmark like with like")
    peak = _worker({"kind": "peak", "threads": cfg.threads})["macs_per_s"]
    samples: dict[tuple[str, int], list[float]] = {(e.name, b): [] for e in engines for b in cfg.batches}
    total = cfg.rounds * len(engines) * len(cfg.batches)
    bar = progress(total, "benchmarking") if progress else None
    for _ in range(cfg.rounds):  # rounds interleave engines, so drift hits all alike
        for batch in cfg.batches:
            for e in engines:
                spec = {"kind": e.kind, "path": e.path, "torch_kwargs": e.torch_kwargs, "threads": cfg.threads, "batch": batch,
                        "image_size": e.image_size, "warmup": cfg.warmup, "warmup_s": cfg.warmup_s, "iterations": cfg.iterations,
                        "duration_s": cfg.duration_s}
                samples[(e.name, batch)] += _worker(spec)["samples_ms"]
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    results = []
    for e in engines:
        for batch in cfg.batches:
            stats = latency_stats(samples[(e.name, batch)])
            macs = e.macs_per_image * batch
            macs_per_s = macs / (stats["p50"] / 1e3)
            results.append(BenchResult(e.name, e.backend, e.precision, batch, stats, batch / (stats["p50"] / 1e3), macs, macs_per_s,
                                       macs_per_s / peak if peak else None, agreement=e.agreement, samples_ms=samples[(e.name, batch)]))
    add_speedups(results)
    return {"machine": {**machine_info(cfg.threads), "matmul_peak_macs_per_s": peak},
            "config": asdict(cfg), "results": [asdict(r) for r in results], "scenarios": scenarios(results)}


def add_speedups(results: list[BenchResult]) -> None:
    by_key = {(r.engine, r.batch): r for r in results}
    for r in results:
        for base in ("torch-eager", "ort-default"):
            b = by_key.get((base, r.batch))
            if b is not None:
                r.speedup_vs[base] = b.latency_ms["p50"] / r.latency_ms["p50"]


def scenarios(results: list[BenchResult]) -> dict[str, Any]:
    """MLPerf-style summaries: single-stream (batch 1, p90) and offline (best throughput over batch sizes)."""
    single = {r.engine: r.latency_ms["p90"] for r in results if r.batch == 1}
    offline: dict[str, dict[str, float]] = {}
    for r in results:
        best = offline.get(r.engine)
        if best is None or r.throughput_ips > best["throughput_ips"]:
            offline[r.engine] = {"throughput_ips": r.throughput_ips, "batch": r.batch}
    return {"single_stream_p90_ms": single, "offline": offline}


def _gpu_line(gpu: dict[str, str] | None) -> str:
    return f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else "none"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# edge-inception bench", "", f"- CPU: {m['cpu']} ({m['arch']}, {m['cores']} cores; {', '.join(m['simd'])}), threads: "
             f"{m['threads_requested']}", f"- GPU: {_gpu_line(m['gpu'])}",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in m['libraries'].items())}",
             f"- FP32 matmul peak (probe): {m['matmul_peak_macs_per_s'] / 1e9:.1f} G multiply-adds/s", "",
             "| engine | batch | p50 ms | p90 ms | p99 ms | mean ± std ms | img/s | GMAC/s | % FP32 peak | vs torch | vs ort-default | top-1 agree |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lat = r["latency_ms"]
        sp = r["speedup_vs"]
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.1%}"
        lines.append(f"| {r['engine']} | {r['batch']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['mean']:.2f} ± "
                     f"{lat['std']:.2f} | {r['throughput_ips']:.1f} | {r['macs_per_s'] / 1e9:.1f} | "
                     f"{(r['peak_fraction'] or 0):.0%} | {sp.get('torch-eager', 0):.2f}x | {sp.get('ort-default', 0):.2f}x | {agree} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    agreed = [r for r in results if r["agreement"] is not None and r["batch"] == min(x["batch"] for x in results)]
    fig, axes = plt.subplots(1, 2 if agreed else 1, figsize=(13 if agreed else 8, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.boxplot([r["samples_ms"] for r in results], showfliers=False)
    ax.set_xticks(range(1, len(results) + 1), [f"{r['engine']}\nb{r['batch']}" for r in results], fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency distribution per engine")
    if agreed:
        ax2 = axes[0][1]
        for r in agreed:
            ax2.scatter(r["latency_ms"]["p50"], r["agreement"] * 100)
            ax2.annotate(r["engine"], (r["latency_ms"]["p50"], r["agreement"] * 100), fontsize=8)
        ax2.set_xlabel("p50 latency (ms)")
        ax2.set_ylabel("top-1 agreement with FP32 (%)")
        ax2.set_title("latency vs accuracy")
    fig.tight_layout()
    from ..fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], json_path: str | Path | None, md_path: str | Path | None, png_path: str | Path | None) -> None:
    if json_path:
        write_json_atomic(json_path, report)
    if md_path:
        write_text_atomic(md_path, markdown(report))
    if png_path:
        plot(report, png_path)
