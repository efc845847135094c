"""``edge-inception profile``: where the time goes, per stage of the paper's Table 1, beside what each stage computes.

Each backend reports time per node or layer (ONNX Runtime's profiler, OpenVINO's per-layer performance counters,
TensorRT's IProfiler); node names keep the PyTorch module path through export and graph optimisation
(``/inception4a/branch2/...``, ``... + /inception4a/branch2/Relu`` after fusion), so each maps to its stage as the
flops counter maps it. Nodes of no stage (layout reorders, the input's quantization, the final transposes) are
"other"; the gap between the end-to-end time and the sum of the nodes (the runtime's own work between kernels) is
reported as unassigned.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.registry import PLAIN_ONNX_BACKEND, artifact_info, get_backend, is_plain_onnx, resolve_artifact
from ..engines.runner import NodeTime, Timings
from ..errors import EdgeInceptionError
from ..limits import check_batch, check_batch_memory
from ..report import Axis, Bars, Figure, Series, md_text
from .flops import count_graph, stage_of

OTHER = "other"


@dataclass
class StageTime:
    stage: str
    ms: float
    time_share: float
    macs: int
    paper_macs: int | None
    macs_share: float
    gmacs_per_s: float | None
    nodes: int


@dataclass
class ProfileReport:
    artifact: str
    backend: str
    precision: str
    device: str
    batch: int
    iterations: int
    source: str
    end_to_end_ms: float  # mean of the profiled runs: the same statistic as the node times, so the two add up
    nodes_ms: float  # sum of all node times, per inference
    unassigned_ms: float  # end_to_end - nodes: the runtime's own time between kernels
    stages: list[StageTime] = field(default_factory=list)

    @property
    def unassigned_share(self) -> float:
        return self.unassigned_ms / self.end_to_end_ms if self.end_to_end_ms else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unassigned_share"] = self.unassigned_share
        return d

    def as_markdown(self) -> str:
        return markdown(self)

    def as_figure(self) -> Figure:
        return figure([self])


def profile_artifact(artifact: str | Path, *, batch: int = 1, iterations: int = 20, warmup: int = 5) -> ProfileReport:
    """Run ``artifact`` under its backend's profiler and attribute the time to Table 1 stages."""
    from ..engines.manifest import read_manifest

    check_batch(batch)
    if not 1 <= iterations <= 10_000:
        raise EdgeInceptionError(f"--iterations must be in [1, 10000], got {iterations}")
    art = resolve_artifact(artifact)
    info = artifact_info(art)
    check_batch_memory(batch, info.image_size)
    manifest = None if is_plain_onnx(art) else read_manifest(art)
    backend = get_backend(manifest.backend if manifest else PLAIN_ONNX_BACKEND)
    profile = getattr(backend, "profile", None)
    if profile is None:
        raise EdgeInceptionError(f"the {backend.name.value} backend has no profiler here")
    x = np.random.default_rng(0).standard_normal((batch, 3, info.image_size, info.image_size)).astype(np.float32)
    timings: Timings = profile(art, manifest, x, iterations=iterations, warmup=warmup)
    return attribute(timings, count_graph(info.source_onnx, batch=batch), artifact=str(art), backend=backend.name.value,
                     precision=info.precision, device=info.device, batch=batch, iterations=iterations,
                     tensor_stages=tensor_stages(info.source_onnx))


def tensor_stages(onnx_path: str | Path) -> dict[str, str]:
    """Each tensor of the source graph -> the stage of the node that produces it: a runtime that names a fused layer
    after its output tensor (OpenVINO's "logits" for the classifier) is still attributed."""
    from ..onnx_file import load_onnx

    graph = load_onnx(onnx_path, with_weights=False).graph
    stages: dict[str, str] = {}
    for n in graph.node:  # in graph order: a producer comes before its consumers
        stage = stage_of(n.name)
        if stage in ("unknown", "input") and n.op_type == "Cast" and n.input and n.input[0] in stages:
            # FP16 graphs end in a Cast back to float32 (keep_io_types) that OpenVINO fuses into the classifier and names
            # after the graph output ("logits"): the Cast belongs to the stage that produced its input
            stage = stages[n.input[0]]
        if stage not in ("unknown", "input"):
            stages.update({out: stage for out in n.output})
    return stages


def node_stage(name: str, tensors: dict[str, str] | None = None) -> str:
    """The Table 1 stage a profiled node belongs to, or "other"."""
    first = name.split(" + ")[0].strip()  # TensorRT names fused layers "a + b"
    stage = stage_of(first)
    if stage in ("unknown", "input") and tensors:
        stage = tensors.get(first.split("/sink_port")[0], stage)
    return OTHER if stage in ("unknown", "input") else stage


def attribute(timings: Timings, flops, tensor_stages: dict[str, str] | None = None, **about: Any) -> ProfileReport:  # flops: FlopReport
    """Node times -> stage times beside the stages' multiply-adds (ours and the paper's)."""
    per_stage: dict[str, list[NodeTime]] = {}
    for node in timings.nodes:
        per_stage.setdefault(node_stage(node.name, tensor_stages), []).append(node)
    nodes_ms = sum(n.ms for n in timings.nodes)
    e2e = statistics.fmean(timings.runs_ms) if timings.runs_ms else nodes_ms
    macs = {s.name: s for s in flops.stages}
    total_macs = max(flops.total_macs, 1)
    stages = []
    for name in [*(s.name for s in flops.stages if s.name in per_stage), *(n for n in per_stage if n not in macs)]:
        ms = sum(n.ms for n in per_stage[name])
        count = macs.get(name)
        m = count.macs if count else 0
        stages.append(StageTime(name, ms, ms / e2e if e2e else 0.0, m, count.paper_macs if count else None, m / total_macs,
                                m / (ms / 1e3) / 1e9 if m and ms > 0 else None, len(per_stage[name])))
    return ProfileReport(source=timings.source, end_to_end_ms=e2e, nodes_ms=nodes_ms, unassigned_ms=e2e - nodes_ms, stages=stages, **about)


def unassigned_text(report: ProfileReport) -> str:
    """The time between the nodes; where the nodes' times add up to more than the runs took, they ran in parallel."""
    if report.unassigned_ms >= 0:
        return f"not assigned to a node {report.unassigned_ms:.3f} ms ({report.unassigned_share:.1%})"
    return (f"the nodes' times add up to {-report.unassigned_ms:.3f} ms ({-report.unassigned_share:.1%}) more than the runs took: "
            "nodes ran in parallel, so no time is left unassigned")


def markdown(report: ProfileReport, *, title: bool = True) -> str:
    lines = [f"# edge-inception profile: {md_text(Path(report.artifact).name)}", ""] if title else []
    lines += [f"- {report.backend} / {report.precision} on {md_text(report.device)}, batch {report.batch}, {report.iterations} profiled runs "
              f"({md_text(report.source)})",
              f"- end to end {report.end_to_end_ms:.3f} ms (mean of the runs); nodes {report.nodes_ms:.3f} ms; " + unassigned_text(report), "",
              "| stage | ms | % of time | M multiply-adds | paper (M) | % of multiply-adds | G multiply-adds/s | nodes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report.stages:
        paper = "-" if s.paper_macs is None else f"{s.paper_macs / 1e6:,.0f}"
        rate = "-" if s.gmacs_per_s is None else f"{s.gmacs_per_s:.1f}"
        lines.append(f"| {s.stage} | {s.ms:.3f} | {s.time_share:.1%} | {s.macs / 1e6:,.1f} | {paper} | {s.macs_share:.1%} | {rate} | {s.nodes} |")
    return "\n".join(lines) + "\n"


def figure(reports: list[ProfileReport]) -> Figure:
    """The plot: share of time against share of multiply-adds, per stage, one panel per report (FP32 beside INT8 shows
    where INT8 gains and where quantize/dequantize costs)."""
    return Figure([Bars(f"{r.precision} ({r.backend}, {r.device}): {r.end_to_end_ms:.2f} ms", [s.stage.replace("inception_", "") for s in r.stages],
                        [Series("% of time", [s.time_share * 100 for s in r.stages]),
                         Series("% of multiply-adds", [s.macs_share * 100 for s in r.stages])],
                        Axis("share of the stage, of total time or multiply-adds", "%"), rotation=60) for r in reports],
                  width=6.5 * max(1, len(reports)))


@dataclass
class Profiles:
    """Profiles side by side, by name (a pipeline's candidates): one report, one panel each."""

    named: dict[str, ProfileReport]

    def as_dict(self) -> list[dict[str, Any]]:
        return [{"candidate": name, **r.as_dict()} for name, r in self.named.items()]

    def as_markdown(self) -> str:
        return "\n".join(markdown(r) for r in self.named.values())

    def as_figure(self) -> Figure:
        return figure(list(self.named.values()))
