"""Latency and throughput that hold up: engines measured in turn, in rounds, each in its own process.

Each result carries min/p50/p90/p95/p99/mean/std latency, throughput, speed-up over the baselines measured in
the same run (PyTorch eager and a default ONNX Runtime session on the unoptimised export), multiply-adds from
the flops counter and achieved multiply-adds per second against the machine's measured matmul peak.

The report is typed (:class:`BenchReport`) up to the JSON boundary (:meth:`BenchReport.as_dict`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeInceptionError, ModelFileError
from ..fileio import resolve_link
from ..limits import check_batch, check_batch_memory, check_threads
from ..report import Axis, Boxes, Figure, Panel, Point, Points, md_text
from ..vocab import BASELINE_ENGINES, Baseline
from .cpu import cpu_info
from .load import DISTURBED_CORES, LoadMeter, RoundLoad

log = logging.getLogger(__name__)

TORCH_ENGINE, ORT_DEFAULT_ENGINE = BASELINE_ENGINES[Baseline.torch], BASELINE_ENGINES[Baseline.ort_default]
TORCH_FP16_ENGINE = "torch-fp16-cl"  # on CUDA: FP16 weights and activations, channels-last memory
TORCH_GRAPH_ENGINE = "torch-fp16-cl-graph"  # the same, replayed from a captured CUDA graph: PyTorch's fastest plain form


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
    kind: str  # "artifact", or a baseline's Baseline value ("torch", "ort-default")
    backend: str
    precision: str
    path: str | None
    image_size: int
    macs_per_image: int
    source_onnx: str | None = None
    torch_kwargs: dict[str, Any] = field(default_factory=dict)
    agreement: float | None = None  # top-1 agreement with FP32, from a quantize report
    device: str = "cpu"  # where it computes: "cpu" or "cuda"
    fixed_batch: int | None = None  # an artifact that takes one batch size only

    @property
    def is_baseline(self) -> bool:
        return self.kind != "artifact"


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
    baseline: bool = False
    device: str = "cpu"
    path: str | None = None  # the artifact measured (None for the PyTorch baselines)


@dataclass
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    warmup_s: float = 0.0
    iterations: int = 50
    duration_s: float = 0.0
    rounds: int = 3
    threads: int = 0
    baselines: tuple[Baseline, ...] | None = None  # None: PyTorch where it is installed, and default ONNX Runtime
    rerun_disturbed: int = 0  # rounds taken under load measured again, at most this many times
    fixed_at_own_batch: bool = False  # an artifact that takes one batch size is measured at that size only (else refused)
    peak: bool = True  # probe the FP32 matmul peak first (for the '% CPU FP32 peak' column)


@dataclass
class MachineInfo:
    cpu: str
    arch: str
    cores: int
    simd: list[str]
    threads_requested: int | str
    platform: str
    gpu: dict[str, str] | None
    libraries: dict[str, str]
    matmul_peak_macs_per_s: float = 0.0


@dataclass
class BenchReport:
    machine: MachineInfo
    config: BenchConfig
    results: list[BenchResult]
    notes: list[str] = field(default_factory=list)
    rounds: list[RoundLoad] = field(default_factory=list)  # how busy the machine was in each round

    def scenarios(self) -> dict[str, Any]:
        """MLPerf-style summaries: single-stream (batch 1, p90) and offline (best throughput over batch sizes)."""
        return scenarios(self.results)

    def as_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["baselines"] = None if self.config.baselines is None else [b.value for b in self.config.baselines]
        return {"machine": asdict(self.machine), "config": cfg, "results": [asdict(r) for r in self.results],
                "scenarios": self.scenarios(), "notes": self.notes, "rounds": [asdict(r) for r in self.rounds]}

    def as_markdown(self) -> str:
        return markdown(self)

    def as_figure(self) -> Figure:
        return figure(self)


MAX_REPORT_BYTES = 1 << 20


def report_agreement(report: Path) -> float:
    """The top-1 agreement a quantize report (``<model>.report.json``) records: a number in [0, 1], read within bounds."""
    from ..fileio import read_json

    data = read_json(report, MAX_REPORT_BYTES, "accuracy report")
    value = data.get("accuracy", {}).get("top1_agreement") if isinstance(data, dict) and isinstance(data.get("accuracy"), dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelFileError(f"{report}: not an accuracy report of 'edge-inception quantize' (accuracy.top1_agreement in [0, 1] missing)")
    return float(value)


def describe(artifact: str | Path) -> Engine:
    """What an artifact (or ONNX model) is, where its FP32 source is, and what it computes."""
    from ..engines.registry import artifact_info, resolve_artifact
    from ..onnx_file import get_metadata, load_onnx
    from .flops import count_graph

    art = resolve_artifact(artifact)
    info = artifact_info(art)
    macs = count_graph(info.source_onnx, batch=1).total_macs
    meta = get_metadata(load_onnx(info.source_onnx, with_weights=False))
    report = Path(info.source_onnx).with_suffix(".report.json")
    agreement = report_agreement(report) if os.path.lexists(report) else (1.0 if info.precision == "fp32" else None)
    # a quantized model's FP32 source, where it is at hand (a device bundle carries only the model it deploys)
    fp32_path = resolve_link(meta["fp32_source"], Path(info.source_onnx).parent) if meta.get("fp32_source") else Path(info.source_onnx)
    fp32 = str(fp32_path) if fp32_path.is_file() else None
    prefix = "onnx" if info.target == "plain" else info.backend  # a plain ONNX file runs with ONNX Runtime's defaults
    variant = ("-tf32" if info.tf32 else "") + (f"-{info.variant}" if info.variant else "")
    variant += (f"-b{info.fixed_batch}" if info.fixed_batch and info.target != "plain" else "")
    name = f"{prefix}-{info.precision}{variant}" + ("" if info.target in ("plain", "cpu") else f"-{info.target}")
    return Engine(name=name, kind="artifact", backend=info.backend, precision=info.precision, path=str(art), image_size=info.image_size,
                  macs_per_image=macs, source_onnx=fp32, agreement=agreement, device=info.device, fixed_batch=info.fixed_batch)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def baseline_engines(reference: Engine, wanted: Sequence[Baseline]) -> list[Engine]:
    """PyTorch eager and default ONNX Runtime, on the FP32 export behind ``reference`` and on its device: for a GPU
    artifact, PyTorch on CUDA in FP32 and in FP16 channels-last, and ONNX Runtime's CUDA provider with its defaults."""
    from ..engines.pytorch import weights_for_onnx
    from ..onnx_file import get_metadata, load_onnx

    if reference.source_onnx is None or not wanted:
        return []
    fp32 = Path(reference.source_onnx)  # describe() already followed a quantized model to its FP32 source
    meta = get_metadata(load_onnx(fp32, with_weights=False))
    engines = []
    for base in wanted:
        if base is Baseline.torch:
            if not torch_available():
                raise EdgeInceptionError("the torch baseline needs PyTorch: pip install 'edge-inception[export]' (or --baseline ort-default)")
            kwargs = {**weights_for_onnx(meta), "device": reference.device}
            engines.append(Engine(TORCH_ENGINE, Baseline.torch.value, "torch", "fp32", None, reference.image_size, reference.macs_per_image,
                                  torch_kwargs=kwargs, agreement=1.0, device=reference.device))
            if reference.device == "cuda":
                engines.append(Engine(TORCH_FP16_ENGINE, Baseline.torch.value, "torch", "fp16", None, reference.image_size,
                                      reference.macs_per_image, torch_kwargs={**kwargs, "half": True, "channels_last": True},
                                      agreement=None, device="cuda"))
                engines.append(Engine(TORCH_GRAPH_ENGINE, Baseline.torch.value, "torch", "fp16", None, reference.image_size,
                                      reference.macs_per_image, torch_kwargs={**kwargs, "half": True, "channels_last": True, "cuda_graph": True},
                                      agreement=None, device="cuda"))
        else:
            engines.append(Engine(ORT_DEFAULT_ENGINE, Baseline.ort_default.value, "ort", "fp32", str(fp32), reference.image_size,
                                  reference.macs_per_image, agreement=1.0, device=reference.device))
    return engines


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "edge_inception.evaluate.bench_worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or "no output").strip().splitlines()
        why = lines[-1]
        if proc.returncode < 0:  # killed by a signal: a crash in native code (a segmentation fault) leaves no Python error
            why = f"the engine's process died of {signal.Signals(-proc.returncode).name}" + (f" (last output: {why})" if proc.stderr else "")
        raise EdgeInceptionError(f"benchmark of {spec.get('path') or spec['kind']} failed: {why}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# Where a driver shows a GPU PyTorch's torch.cuda can use: NVIDIA's (a desktop or server GPU; a Jetson's integrated one,
# JetPack 5 and 6), WSL2's (/dev/dxg: CUDA on Windows) and ROCm's (/dev/kfd: PyTorch's ROCm builds answer torch.cuda).
# Without any of them PyTorch can find no device, so the report does not import it (about 2 s of CPU) only to learn that
GPU_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/gpus", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu", "/dev/dxg", "/dev/kfd")


def gpu_node_visible(nodes: Sequence[str] = GPU_NODES) -> bool:
    """Whether any of the drivers' device nodes exists (:data:`GPU_NODES`)."""
    return any(os.path.exists(n) for n in nodes)


def _torch_version() -> str | None:
    """PyTorch's version from its installed metadata (the same string as ``torch.__version__``), without importing it
    unless it is imported already."""
    if "torch" in sys.modules:
        return str(getattr(sys.modules["torch"], "__version__", "")) or None
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> MachineInfo:
    import onnxruntime

    cpu = cpu_info()
    libs = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    gpu_node = gpu_node_visible()
    for mod in ("torch", "openvino", "tensorrt"):
        if importlib.util.find_spec(mod) is None:
            continue
        if mod == "torch" and not gpu_node:
            version = _torch_version()  # no GPU to ask it about: not imported
        else:
            try:
                version = getattr(__import__(mod), "__version__", None)  # tensorrt-stubs alone is an empty namespace
            except Exception:  # a wheel whose native libraries are missing
                version = None
        if version:
            libs[mod] = str(version)
    gpu = None
    if "torch" in libs and gpu_node:
        import torch

        if torch.cuda.is_available():
            gpu = {"name": torch.cuda.get_device_name(), "compute_capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    return MachineInfo(cpu=cpu.model, arch=cpu.arch, cores=cpu.cores, simd=cpu.simd, threads_requested=threads or "default",
                       platform=platform.platform(), gpu=gpu, libraries=libs)


def run_bench(artifacts: Sequence[str | Path], cfg: BenchConfig, progress: Callable[[int, str], Any] | None = None) -> BenchReport:
    if not artifacts:
        raise EdgeInceptionError("give at least one artifact to benchmark")
    engines = [describe(a) for a in artifacts]
    seen: dict[str, int] = {}
    for e in engines:  # the same kind of artifact twice: number them
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name}-{seen[e.name]}"
    notes = []
    wanted = cfg.baselines
    if wanted is None:
        wanted = (Baseline.torch, Baseline.ort_default) if torch_available() else (Baseline.ort_default,)
        if not torch_available():
            notes.append("PyTorch is not installed: no torch-eager baseline (pip install 'edge-inception[export]' adds it)")
    if wanted and engines[0].source_onnx is None:
        notes.append(f"no baselines: the FP32 model {engines[0].path} was quantized from is not here (a bundle carries only the model it "
                     "deploys); they need it beside the quantized model")
        wanted = ()
    engines += baseline_engines(engines[0], wanted)
    sizes = {e.image_size for e in engines}
    if len(sizes) > 1:
        raise EdgeInceptionError(f"artifacts have different input sizes ({sorted(sizes)}): benchmark like with like")

    def measured_at(e: Engine, batch: int) -> bool:
        return not (cfg.fixed_at_own_batch and e.fixed_batch and e.fixed_batch != batch)

    for e in engines:
        if cfg.fixed_at_own_batch and e.fixed_batch and e.fixed_batch not in cfg.batches:
            notes.append(f"{e.name} takes batches of {e.fixed_batch} only, which this run does not measure")
        elif not cfg.fixed_at_own_batch and e.fixed_batch and any(b != e.fixed_batch for b in cfg.batches):
            raise EdgeInceptionError(f"{Path(e.path or e.name).name} takes batches of {e.fixed_batch} only (exported with --batch "
                                     f"{e.fixed_batch}): bench it with --batch {e.fixed_batch}")
    for batch in cfg.batches:
        check_batch(batch)
        check_batch_memory(batch, engines[0].image_size)
    check_threads(cfg.threads)
    machine = machine_info(cfg.threads)
    if cfg.peak:
        machine.matmul_peak_macs_per_s = _worker({"kind": "peak", "threads": cfg.threads})["macs_per_s"]
    samples: dict[tuple[str, int], list[float]] = {(e.name, b): [] for e in engines for b in cfg.batches if measured_at(e, b)}
    per_round = len(samples)
    total = cfg.rounds * per_round
    bar = progress(total, "benchmarking") if progress else None
    rounds: list[RoundLoad] = []
    done = reruns = 0
    while done < cfg.rounds:  # rounds interleave engines, so drift hits all alike
        taken: dict[tuple[str, int], list[float]] = {key: [] for key in samples}
        with LoadMeter(len(rounds)) as meter:
            for batch in cfg.batches:
                for e in (e for e in engines if measured_at(e, batch)):
                    spec = {"kind": e.kind, "path": e.path, "torch_kwargs": e.torch_kwargs, "threads": cfg.threads, "batch": batch,
                            "device": e.device, "image_size": e.image_size, "warmup": cfg.warmup, "warmup_s": cfg.warmup_s,
                            "iterations": cfg.iterations, "duration_s": cfg.duration_s}
                    taken[(e.name, batch)] = _worker(spec)["samples_ms"]
                    if bar is not None:
                        bar.update(1)
        load = meter.result
        rounds.append(load)
        if load.disturbed and reruns < cfg.rerun_disturbed:
            reruns += 1  # measured under load: measure that round again; this one stays in the record, not in the figures
            load.counted = False
            if bar is not None:
                bar.total += per_round
            continue
        for key, values in taken.items():
            samples[key] += values
        done += 1
    if bar is not None:
        bar.close()
    disturbed = [r for r in rounds if r.disturbed]
    if disturbed:
        in_figures = sum(r.counted for r in disturbed)
        notes.append(f"{len(disturbed)} of {len(rounds)} round(s) ran while other processes used more than {DISTURBED_CORES} core; "
                     f"{len(disturbed) - in_figures} measured again, {in_figures} in the figures")
    peak = machine.matmul_peak_macs_per_s
    results = []
    for e in engines:
        for batch in (b for b in cfg.batches if measured_at(e, b)):
            stats = latency_stats(samples[(e.name, batch)])
            macs = e.macs_per_image * batch
            macs_per_s = macs / (stats["p50"] / 1e3)
            results.append(BenchResult(e.name, e.backend, e.precision, batch, stats, batch / (stats["p50"] / 1e3), macs, macs_per_s,
                                       macs_per_s / peak if peak and e.device == "cpu" else None, agreement=e.agreement,
                                       samples_ms=samples[(e.name, batch)], baseline=e.is_baseline, device=e.device, path=e.path))
    add_speedups(results)
    if any((r.peak_fraction or 0) > 1.0 for r in results):
        notes.append("a '% CPU FP32 peak' above 100 % (marked (!)) means the matmul probe read less than the engines reach (INT8 "
                     "kernels can exceed the FP32 peak); compare those rows by latency, not by that column")
    return BenchReport(machine, cfg, results, notes, rounds)


def add_speedups(results: list[BenchResult]) -> None:
    by_key = {(r.engine, r.batch): r for r in results}
    for r in results:
        for base in (TORCH_ENGINE, ORT_DEFAULT_ENGINE, TORCH_GRAPH_ENGINE):
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


def markdown(report: BenchReport, *, title: bool = True) -> str:
    m = report.machine
    lines = ["# edge-inception bench", ""] if title else []
    lines += [f"- CPU: {md_text(m.cpu)} ({m.arch}, {m.cores} cores; {', '.join(m.simd)}), threads: {m.threads_requested}",
              f"- GPU: {_gpu_line(m.gpu)}", f"- libraries: {', '.join(f'{k} {v}' for k, v in m.libraries.items())}",
              f"- FP32 matmul peak (probe): {peak_line(m.matmul_peak_macs_per_s, 'G multiply-adds/s')}"]
    lines += [f"- note: {md_text(n, 2000)}" for n in report.notes]
    if report.rounds:
        lines.append("- rounds (load average before -> after; other processes' CPU use; stolen): " + "; ".join(
            f"{r.round + 1}: {_num(r.loadavg_before)} -> {_num(r.loadavg_after)}, others {_num(r.others_cores)} core, "
            f"steal {_num(r.steal_cores)}" + (" (disturbed" + (", measured again)" if not r.counted else ")") if r.disturbed else "")
            for r in report.rounds))
    graph = any(TORCH_GRAPH_ENGINE in r.speedup_vs for r in report.results)  # GPU reports: PyTorch FP16 with a CUDA graph too
    lines += ["", "| engine | device | batch | p50 ms | p90 ms | p99 ms | mean ± std ms | img/s | GMAC/s | % CPU FP32 peak | vs torch "
              "| vs ort-default |" + (" vs torch graph |" if graph else "") + " top-1 agree |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if graph else "") + "---:|"]
    for r in report.results:
        lat, sp = r.latency_ms, r.speedup_vs
        agree = "-" if r.agreement is None else f"{r.agreement:.1%}"
        peak = peak_text(r.peak_fraction)
        lines.append(f"| {md_text(r.engine)} | {md_text(r.device)} | {r.batch} | "
                     f"{lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['mean']:.2f} ± "
                     f"{lat['std']:.2f} | {r.throughput_ips:.1f} | {r.macs_per_s / 1e9:.1f} | {peak} | "
                     f"{_speedup(sp, TORCH_ENGINE)} | {_speedup(sp, ORT_DEFAULT_ENGINE)} | "
                     + (f"{_speedup(sp, TORCH_GRAPH_ENGINE)} | " if graph else "") + f"{agree} |")
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def peak_line(macs_per_s: float, unit: str) -> str:
    """The probe's figure in ``unit`` (10^9 multiply-adds per second), or why there is none (``bench --no-peak``)."""
    return f"{macs_per_s / 1e9:.1f} {unit}" if macs_per_s else "not probed (--no-peak)"


def peak_text(fraction: float | None) -> str:
    """Achieved share of the probe's FP32 peak; above 100 % the probe under-read the machine, so it is flagged, not shown as fact."""
    if fraction is None:
        return "-"
    return f"{fraction:.0%}" if fraction <= 1.0 else f"{fraction:.0%} (!)"


def _speedup(speedups: dict[str, float], base: str) -> str:
    return f"{speedups[base]:.2f}x" if base in speedups else "-"


def figure(report: BenchReport) -> Figure:
    """The plot: one panel of latency distributions per batch size (a batch of 8 takes longer than one image), and p50
    latency against top-1 agreement at the smallest batch where agreement was measured."""
    results = report.results
    batches = sorted({r.batch for r in results})
    panels: list[Panel] = []
    for batch in batches:
        rows = [r for r in results if r.batch == batch]
        panels.append(Boxes(f"latency distribution, batch {batch}", [r.engine for r in rows], [r.samples_ms for r in rows],
                            Axis(f"latency per batch of {batch}", "ms", low=0)))
    agreed = [r for r in results if r.agreement is not None and r.batch == batches[0]] if batches else []
    if agreed:
        low = min((r.agreement or 0.0) * 100 for r in agreed)
        panels.append(Points("latency vs agreement",
                             [Point(r.latency_ms["p50"], (r.agreement or 0.0) * 100, f"{r.engine} ({r.latency_ms['p50']:.2f} ms)") for r in agreed],
                             Axis(f"p50 latency, batch {batches[0]}", "ms", low=0),
                             Axis("top-1 agreement with FP32", "%", low=max(0.0, min(low, 99.0) - 1.0), high=100.0)))  # at most 100 %
    return Figure(panels, width=max(6.5, 5.5 * len(panels)))
