"""The ``edge-inception`` command line: each command parses options, calls one library function, prints."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from . import __version__
from .errors import EXTRAS, EdgeInceptionError, Terminated
from .limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_OPSET, MIN_OPSET, max_threads
from .vocab import MIN_IMAGE_SIZE, Backend, Baseline, CalibMethod, Criterion, Precision, QuantTarget, Variant, parse_list

if TYPE_CHECKING:
    from .evaluate.bench import BenchReport

app = typer.Typer(
    name="edge-inception",
    help="GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click output: a usage error ends in one "Error: ..." line, and start-up skips rich
)

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E", bound=Enum)


def handle_errors(fn: F) -> F:
    """User errors become one line on stderr and exit code 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeInceptionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        except ModuleNotFoundError as exc:  # an optional library this command needs, reached without a check
            top = (exc.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            typer.echo(f"error: this command needs {top}, which is not installed here: pip install 'edge-inception[{EXTRAS[top]}]'", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): clean-up has run on the way here
            typer.echo(f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: nothing half-written was left behind", err=True)
            raise typer.Exit(code=143 if isinstance(exc, Terminated) else 130) from None
        except MemoryError:
            typer.echo("error: out of memory (try a smaller --batch or image)", err=True)
            raise typer.Exit(code=1) from None
        except OSError as exc:  # the environment: a full disk, a vanished folder, a permission changed mid-run
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


SEEDED_NOTE = "note: no --weights given: GoogLeNet uses seeded random weights, so its outputs and labels are not meaningful"


def _note_seeded(seeded: bool) -> None:
    if seeded:
        typer.echo(SEEDED_NOTE, err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edge-inception {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine."""


def _echo_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    typer.echo("  ".join("-" * w for w in widths))
    for row in rows:
        typer.echo("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _step_rows(steps: list[Any]) -> list[list[str]]:
    return [
        [s.step, s.reference, ",".join(map(str, s.batches)), f"{s.parity.max_abs_error:.2e}", f"{s.parity.max_rel_error:.2e}",
         f"{s.parity.top1_agreement:.1%}", f"{s.parity.top5_overlap:.1%}"]
        for s in steps
    ]


STEP_HEADER = ["step", "checked against", "batch", "max abs err", "max rel err", "top-1 agree", "top-5 overlap"]

WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint (.pth/.pt/.safetensors). Default: seeded random weights.")]
ImageSizeOpt = Annotated[int | None, typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                                                  help="Input height and width (default: the checkpoint's, else 224).")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, max=max_threads(), help="Threads per engine (0: each runtime's default).")]
VariantOpt = Annotated[Variant | None, typer.Option("--variant", help="Layout, when no checkpoint says (default torchvision).")]


@app.command()
@handle_errors
def export(
    weights: WeightsOpt = None,
    variant: VariantOpt = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=1, max=MAX_CLASSES,
                                                    help="Classes, when no checkpoint says (default 1000).")] = None,
    image_size: ImageSizeOpt = None,
    opset: Annotated[int, typer.Option("--opset", min=MIN_OPSET, max=MAX_OPSET, help="ONNX opset.")] = 17,
    batch: Annotated[int | None, typer.Option("--batch", min=1, max=MAX_BATCH, help="Fixed batch size (default: dynamic batch).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension (the default).")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim after export.")] = True,
    keep_batchnorm: Annotated[bool, typer.Option("--keep-batchnorm", help="Do not fold BatchNorm (implies --no-simplify).")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="ONNX file to write (default under export/output/).")] = None,
) -> None:
    """Export GoogLeNet to aux-free ONNX, verified against PyTorch and simplified."""
    from .convert.export import export_model

    if batch is not None and dynamic_batch:
        raise EdgeInceptionError("--batch and --dynamic-batch exclude each other")
    result = export_model(weights, output, variant=variant, num_classes=num_classes, image_size=image_size, opset=opset,
                          batch=batch, simplify=simplify, fold_batchnorm=not keep_batchnorm)
    _note_seeded(result.loaded.seeded)
    _echo_table(_step_rows(result.steps), STEP_HEADER)
    typer.echo(f"wrote {result.path}")


@app.command("simplify")
@handle_errors
def simplify_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output (default <name>.sim.onnx).")] = None,
) -> None:
    """Simplify an ONNX model with onnxsim (BatchNorm folded), verified before vs after."""
    from .convert.simplify import simplify_file

    out, step = simplify_file(model, output)
    _echo_table(_step_rows([step]), STEP_HEADER)
    typer.echo(f"wrote {out}")


@app.command()
@handle_errors
def info(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Inputs, outputs, opset, node and parameter counts, and edge-inception metadata of an ONNX model."""
    from .convert.onnx_file import onnx_info

    data = onnx_info(model)
    if as_json:
        typer.echo(json.dumps(data.as_dict(), indent=2))
        return
    typer.echo(f"{data.path}  ({data.size_bytes / 1e6:.2f} MB, opset {data.opset}, {data.nodes} nodes, {data.parameters:,} parameters)")
    for kind, items in (("input", data.inputs), ("output", data.outputs)):
        for name, dtype, dims in items:
            typer.echo(f"  {kind:<6} {name}: {dtype} [{' x '.join(map(str, dims))}]")
    typer.echo("  ops: " + ", ".join(f"{k} {v}" for k, v in data.op_counts.items()))
    for key, value in data.metadata.items():
        shown = value if len(value) < 100 else value[:97] + "..."
        typer.echo(f"  {key}: {shown}")


def _m(value: int | None, unit: float = 1e6, digits: int = 1) -> str:
    return "-" if value is None else f"{value / unit:,.{digits}f}"


@app.command()
@handle_errors
def flops(
    model: Annotated[Path, typer.Argument(help="ONNX model (FP32, simplified, FP16 or QDQ INT8).")],
    image_size: Annotated[int | None, typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                                                   help="Count at this input size (default: the model's).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Multiply-adds and parameters per stage against the paper's Table 1 and its 1.5 G budget."""
    from .evaluate.flops import count_graph

    report = count_graph(model, image_size=image_size, batch=batch)
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
        return
    rows = []
    for s in report.stages:
        diff = "-" if s.macs_diff is None else f"{s.macs_diff:+.1%}"
        rows.append([s.name, _m(s.macs), _m(s.paper_macs), diff, _m(s.params, 1e3), _m(s.paper_params, 1e3), _m(s.other_ops)])
    typer.echo(f"{report.model}: {report.variant or 'unknown'} layout, batch {report.batch}, {report.image_size}x{report.image_size} input")
    _echo_table(rows, ["stage", "MACs (M)", "paper (M)", "diff", "params (K)", "paper (K)", "other ops (M)"])
    per_image = report.total_macs / report.batch
    typer.echo(f"total: {report.total_macs:,} multiply-adds ({per_image / 1e9:.3f} G per image, {per_image / report.budget_macs:.1%} "
               f"of the paper's 1.5 G budget), {report.total_params:,} parameters, {report.total_other_ops:,} other ops")
    typer.echo("notes:")
    for note in report.notes:
        typer.echo(f"  - {note}")


@app.command()
@handle_errors
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model (from export).")],
    precision: Annotated[Precision, typer.Option("--precision", help="int8 or fp16.")],
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration images (folder, recursive). Default: bundled photos.")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", min=1, max=10_000)] = 100,
    calib_method: Annotated[CalibMethod, typer.Option("--calib-method", help="How activation ranges are calibrated (auto: try each, keep "
                                                      "the one closest to FP32 on the worst selection photo).")] = CalibMethod.auto,
    target: Annotated[QuantTarget, typer.Option("--target", help="What the INT8 graph is for: picks the scheme.")] = QuantTarget.cpu,
    holdout: Annotated[Path | None, typer.Option("--holdout", help="Verdict images: the report's figures and its claim (default: 3 in 10 of "
                                                                      "--calib's photos, never calibrated or chosen on).")] = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Labelled ImageFolder: judge by accuracy (INT8 >= 99% of FP32's).")] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=1.0, help="Agreement criterion: top-1 agreement with FP32.")] = 0.99,
    criterion: Annotated[Criterion, typer.Option("--criterion", help="accuracy (INT8 >= 99% of FP32's, needs labels), agreement, or auto: "
                                                 "agreement, and accuracy too where labels are at hand.")] = Criterion.auto,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output (default <name>.<precision>.onnx).")] = None,
) -> None:
    """INT8 (static, calibrated, Q/DQ) or FP16, with an accuracy report against FP32 and an accuracy guard."""
    from .convert.quantize import quantize_model

    result = quantize_model(model, precision, output=output, calib=calib, calib_size=calib_size, calib_method=calib_method, target=target,
                            holdout=holdout, eval_dir=eval_dir, min_agreement=min_agreement, criterion=criterion, progress=_progress)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if result.skipped_files:
        typer.echo(f"skipped {result.skipped_files} non-image or unreadable file(s)", err=True)
    a = result.accuracy
    typer.echo(f"{result.precision.value}: {result.scheme}")
    typer.echo(f"criterion: {result.criterion}")
    if result.calibration_method:
        tried = ", ".join(f"{m} {v['top1_agreement']:.1%}" for m, v in result.calibration_trials.items())
        typer.echo(f"calibration: {result.calibration_method} (agreement per method: {tried})")
    rows = [["top-1 agreement", f"{a.top1_agreement:.2%}"], ["top-5 overlap", f"{a.top5_overlap:.2%}"],
            ["mean cosine", f"{a.mean_cosine:.5f}"], ["max abs logit error", f"{a.max_abs_error:.4f}"],
            ["verdict images", f"{a.holdout_images}: {result.holdout_source}"]]
    rows += [[f"{role} (distinct photos)", f"{r['samples']} ({r['distinct_images']}): {r['source']}"] for role, r in result.roles.items()
             if role != "verdict" and (role != "calibration" or result.calibration_source)]
    rows.append(["size", f"{a.fp32_size_bytes / 1e6:.1f} MB -> {a.size_bytes / 1e6:.1f} MB ({a.size_ratio:.0%})"])
    if a.labelled:
        rows += [[k.replace("_", " "), f"{v:.2%}"] for k, v in a.labelled.items()]
    if result.kept_float:
        rows.append(["float activations (guard)", ", ".join(result.kept_float)])
        if result.float_weights:
            rows.append(["float weights (guard)", ", ".join(result.float_weights)])
    rows += [[f"latency {k}, host CPU (ms)", f"{v:.2f}"] for k, v in result.latency_ms.items()]
    _echo_table(rows, ["metric", "vs fp32"])
    for v in result.verdicts:
        typer.echo(f"verdict: {v['explanation']}")
    if result.off_calibration:
        typer.echo(f"off-calibration check: {result.off_calibration['explanation']}")
    typer.echo(f"claim: {result.claim}")
    typer.echo(f"wrote {result.path} and {result.report_path}")


@app.command()
@handle_errors
def targets(
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra folder of target TOML files.")] = None,
) -> None:
    """List the device presets (shipped in the package, and your own from --targets-dir)."""
    from .engines.targets import list_targets

    rows = [[t.name, t.backend, "/".join(t.backends), t.default_precision, ",".join(t.precisions),
             f"{t.batch_min}-{t.batch_opt}-{t.batch_max}", "-" if t.dla_core is None else str(t.dla_core), t.tensorrt_version or "-",
             t.description] for t in list_targets(targets_dir).values()]
    _echo_table(rows, ["target", "backend", "backends", "default", "precisions", "batch min-opt-max", "DLA", "TensorRT", "device"])


@app.command()
@handle_errors
def build(
    model: Annotated[Path, typer.Argument(help="ONNX model (fp32, or fp16/int8 from quantize).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see 'targets') or a TOML file.")],
    backend: Annotated[Backend | None, typer.Option("--backend", help="Runtime (default: the target's).")] = None,
    precision: Annotated[Precision | None, typer.Option("--precision", help="Expected precision of the graph.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, max=max_threads(), help="CPU threads (default: the target's).")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Folder for the artifact and its manifest.")] = None,
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra folder of target TOML files.")] = None,
    allow_tf32: Annotated[bool, typer.Option("--allow-tf32", help="Let FP32 run as TF32 on a GPU (judged then like FP16).")] = False,
) -> None:
    """Build an artifact for a target, with a JSON manifest, verified against the source ONNX."""
    from .engines.build import build as build_artifact
    from .engines.targets import get_target

    result = build_artifact(model, get_target(target, targets_dir), backend=backend, precision=precision, output_dir=output_dir,
                            threads=threads, allow_tf32=allow_tf32)
    m, p = result.manifest, result.parity
    typer.echo(f"runtime: {result.note}")
    typer.echo(f"{m.backend} / {m.target} / {m.precision} on {m.device}: max rel error {p.max_rel_error:.2e}, "
               f"top-1 agreement {p.top1_agreement:.1%} vs {model.name}")
    typer.echo(f"wrote {result.artifact} and {result.artifact.name}.manifest.json")


@app.command()
@handle_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    images: Annotated[list[str], typer.Argument(help="Images, folders or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """Classify images: top-k labels and scores."""
    from .evaluate.predict import predict as run_predict

    for p in run_predict(artifact, images, top_k=top_k):
        if as_json:
            typer.echo(json.dumps(p.as_dict()))
            continue
        typer.echo(p.image)
        for index, label, score in p.top:
            typer.echo(f"  {score:7.2%}  {label} ({index})")


@app.command("eval")
@handle_errors
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder: class folders named by synset id, class index or class name.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH)] = 16,
) -> None:
    """Top-1 / top-5 accuracy on a labelled folder."""
    from .evaluate.predict import evaluate

    r = evaluate(artifact, data, batch_size, progress=_progress)
    typer.echo(f"{r.images} images: top-1 {r.top1:.2%}, top-5 {r.top5:.2%}" + (f" ({r.skipped} files skipped)" if r.skipped else ""))


def _choices(text: str, enum: type[E], option: str) -> tuple[E, ...]:
    """A comma-separated option of enum values; a wrong word is a usage error (exit 2) naming the choices."""
    try:
        return parse_list(text, enum, option)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[1], param_hint=f"'{option}'") from None


def _int_list(text: str, what: str, hi: int = MAX_BATCH) -> tuple[int, ...]:
    """Comma-separated integers in [1, hi]; anything else is a usage error (exit 2) giving the range."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"comma-separated integers in [1, {hi}], got '{text}'", param_hint=f"'{what}'") from None
    if not values or min(values) < 1 or max(values) > hi:
        raise typer.BadParameter(f"comma-separated integers in [1, {hi}], got '{text}'", param_hint=f"'{what}'")
    return values


@app.command()
@handle_errors
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="Built artifacts and/or ONNX models.")],
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=100_000, help="Warm-up inferences.")] = 10,
    warmup_s: Annotated[float, typer.Option("--warmup-s", min=0, max=3600, help="Warm-up seconds (added to --warmup).")] = 0.0,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="Timed inferences per engine per round.")] = 50,
    duration: Annotated[float, typer.Option("--duration", min=0, max=3600, help="Timed seconds per engine per round (instead).")] = 0.0,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Rounds; engines are measured in turn in each.")] = 3,
    rerun_disturbed: Annotated[int, typer.Option("--rerun-disturbed", min=0, max=100,
                                                 help="Measure a round again when other processes used CPU during it, up to N times.")] = 0,
    threads: ThreadsOpt = 0,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Baselines, comma-separated: torch, ort-default, or none "
                                                 "(default: both, torch only where PyTorch is installed).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """Latency and throughput per engine and batch size, against PyTorch eager and default ONNX Runtime."""
    from .evaluate.bench import BenchConfig, run_bench, write_outputs
    from .fileio import check_outputs

    check_outputs(json_out, markdown_out, plot_out)  # refuse an unwritable output now, not after the benchmark

    bases = None if baseline is None else () if baseline.strip() == "none" else _choices(baseline, Baseline, "--baseline")
    cfg = BenchConfig(batches=_int_list(batch, "--batch"), warmup=warmup, warmup_s=warmup_s, iterations=iterations if not duration else 0,
                      duration_s=duration, rounds=rounds, threads=threads, baselines=bases, rerun_disturbed=rerun_disturbed)
    report = run_bench([str(a) for a in artifacts], cfg, progress=_progress)
    _print_bench(report)
    write_outputs(report, json_out, markdown_out, plot_out)
    for path in (json_out, markdown_out, plot_out):
        if path:
            typer.echo(f"wrote {path}")


def _print_bench(report: BenchReport) -> None:
    from .evaluate.bench import ORT_DEFAULT_ENGINE, TORCH_ENGINE, peak_text

    m = report.machine
    typer.echo(f"{m.cpu} ({m.cores} cores, {', '.join(m.simd)}); FP32 matmul peak {m.matmul_peak_macs_per_s / 1e9:.1f} GMAC/s")
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    rows = []
    for r in report.results:
        lat, sp = r.latency_ms, r.speedup_vs
        rows.append([r.engine, r.device, str(r.batch), f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{lat['std']:.2f}",
                     f"{r.throughput_ips:.1f}", f"{r.macs_per_s / 1e9:.1f}", peak_text(r.peak_fraction),
                     f"{sp[TORCH_ENGINE]:.2f}x" if TORCH_ENGINE in sp else "-", f"{sp[ORT_DEFAULT_ENGINE]:.2f}x" if ORT_DEFAULT_ENGINE in sp else "-",
                     "-" if r.agreement is None else f"{r.agreement:.1%}"])
    _echo_table(rows, ["engine", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "std", "img/s", "GMAC/s", "% CPU peak", "vs torch", "vs ort",
                       "agree"])


@app.command()
@handle_errors
def pipeline(
    weights: WeightsOpt = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target preset.")] = "cpu",
    precisions: Annotated[str, typer.Option("--precisions", help="Comma-separated: fp32,fp16,int8.")] = "fp32,fp16,int8",
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration images for INT8 (default: bundled photos).")] = None,
    image_size: ImageSizeOpt = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=1.0, help="Accuracy guard for quantized artifacts.")] = 0.99,
    batch: Annotated[str, typer.Option("--batch", help="Benchmark batch sizes (e.g. 1,8,32).")] = "1",
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="Timed inferences per engine per round.")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Benchmark rounds (each engine in a fresh process per round).")] = 3,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder (atomically).")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("runs/pipeline"),
) -> None:
    """Export, quantize, build, verify and benchmark in one step; writes a report folder."""
    from .pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(output=output, weights=weights, target=target, precisions=_choices(precisions, Precision, "--precisions"),
                         calib=calib, image_size=image_size, min_agreement=min_agreement, force=force, bench_iterations=iterations,
                         bench_rounds=rounds, batches=_int_list(batch, "--batch"))
    if weights is None:
        typer.echo(SEEDED_NOTE, err=True)
    started: dict[str, float] = {}

    def on_stage(name: str) -> None:
        import time

        started[name] = time.perf_counter()
        typer.echo(f"[{len(started)}] {name} ...", err=True)

    result = run_pipeline(cfg, on_stage=on_stage, progress=_progress)
    _echo_table([[s.name, f"{s.seconds:.1f}", s.detail] for s in result.stages], ["stage", "seconds", "result"])
    ship = result.report["ship"]
    typer.echo(f"ship: {ship['artifact']} ({ship['precision']}): {ship['why']}")
    typer.echo(f"wrote {result.output}/report.md, report.json, bench.png and artifacts/")


@app.command()
@handle_errors
def profile(
    artifact: Annotated[Path, typer.Argument(help="Built artifact, build folder, or ONNX model.")],
    batch: Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH)] = 1,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=10_000, help="Profiled inferences.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the table here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: share of time against share of multiply-adds.")] = None,
) -> None:
    """Time per Table 1 stage, from the backend's own profiler, beside the stage's multiply-adds (ours and the paper's)."""
    from .evaluate.profile import markdown, plot, profile_artifact
    from .fileio import check_outputs, write_text_atomic

    check_outputs(markdown_out, plot_out)
    report = profile_artifact(artifact, batch=batch, iterations=iterations)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(markdown(report))
    if markdown_out:
        write_text_atomic(markdown_out, markdown(report))
        typer.echo(f"wrote {markdown_out}", err=as_json)
    if plot_out:
        plot([report], plot_out)
        typer.echo(f"wrote {plot_out}", err=as_json)


@app.command()
@handle_errors
def bundle(
    model: Annotated[Path, typer.Argument(help="ONNX model to deploy (fp32, or fp16/int8 from quantize).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Device preset (see 'targets') or a TOML file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle folder (default <name>.<target>.bundle).")] = None,
    references: Annotated[int, typer.Option("--references", min=1, max=64, help="Reference images to carry.")] = 8,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle folder (atomically).")] = False,
) -> None:
    """One folder to copy to the device: the ONNX, preprocessing, labels, preset, reference data, build.sh (edge-inception and trtexec)."""
    from .deploy.bundle import make_bundle

    result = make_bundle(model, target, output, force=force, references=references)
    for line in result.build_commands:
        typer.echo(f"  {line}")
    typer.echo(f"wrote {result.folder} ({len(result.files)} files)")


@app.command()
@handle_errors
def check(
    artifact: Annotated[Path, typer.Argument(help="Artifact, build folder, or an engine trtexec built.")],
    reference: Annotated[Path, typer.Option("--reference", help="A bundle's reference/ folder.")],
    target: Annotated[str | None, typer.Option("--target", help="For a trtexec engine: the preset it was built for (default: the bundle's).")] = None,
) -> None:
    """Replay a bundle's reference inputs through an artifact; compare with the workstation's outputs."""
    from .deploy.check import check_artifact

    r = check_artifact(artifact, reference, target=target)
    p = r.parity
    typer.echo(f"check passed: {r.artifact.name} ({r.precision} on {r.device}) on {p.samples} reference images: max rel error "
               f"{p.max_rel_error:.2e}, mean cosine {p.mean_cosine:.5f}, top-1 agreement {p.top1_agreement:.1%}")
    if r.adopted:
        typer.echo(f"adopted: wrote {r.artifact.name}.manifest.json")


def _progress(total: int, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)


@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree: one sub-folder of images per class.")],
    weights: WeightsOpt = None,
    variant: Annotated[Variant, typer.Option("--variant", help="Layout when training from seeded weights.")] = Variant.torchvision,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=100_000)] = 10,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, max=10_000_000,
                                                  help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, max=MAX_BATCH)] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (one-cycle schedule).")] = 0.01,
    image_size: Annotated[int, typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE)] = 224,
    val: Annotated[Path | None, typer.Option("--val", help="Validation ImageFolder (default: hold out 15% of --data).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (class names go to <name>.json).")] = Path(
        "export/output/finetuned.pth"
    ),
) -> None:
    """Fine-tune GoogLeNet on your classes with the auxiliary classifiers (loss = main + 0.3 x aux)."""
    from .model.train import TrainConfig
    from .model.train import train as run_training

    cfg = TrainConfig(data=data, output=output, val=val, weights=weights, variant=variant, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, lr=lr, image_size=image_size, seed=seed)
    result = run_training(cfg, progress=_progress)
    if weights is None:
        typer.echo("note: training from seeded random weights (no --weights)", err=True)
    if result.skipped_files:
        typer.echo(f"skipped {result.skipped_files} unreadable or non-image file(s)", err=True)
    _echo_table([[str(h.epoch), str(h.steps), f"{h.train_loss:.3f}", f"{h.train_acc:.1%}", f"{h.val_acc:.1%}", f"{h.seconds:.1f}"]
                 for h in result.history], ["epoch", "steps", "loss", "train acc", "val acc", "seconds"])
    if result.checkpoint is None:
        typer.echo("error: interrupted before the first checkpoint; nothing written", err=True)
        raise typer.Exit(code=130 if result.interrupted else 1)
    typer.echo(f"best val accuracy {result.best_val_acc:.1%} ({len(result.classes)} classes, device {result.device})")
    typer.echo(f"wrote {result.checkpoint} and {result.checkpoint.with_suffix('.json')}")
    if result.interrupted:
        raise typer.Exit(code=130)


@app.command()
@handle_errors
def demo_data(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for train/ and val/ (ImageFolder layout).")] = Path(
        "export/output/demo-data"
    ),
) -> None:
    """Write the built-in demo data set: crops of real photos bundled with scikit-image, one class per photo."""
    from .data.demo_data import DEMO_CLASSES, make_demo_dataset

    out = make_demo_dataset(output)
    typer.echo(f"wrote {out}/train and {out}/val ({len(DEMO_CLASSES)} classes: {', '.join(DEMO_CLASSES)})")


def main() -> None:
    """Run the CLI (``edge_inception.__main__.main`` installs the signal handlers first, then calls this)."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    app()
