"""The ``edge-inception`` command line: each command parses options, calls one library function, prints."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from . import __version__
from .cli_common import SEEDED_NOTE, Output, echo_table, handle_errors, note, note_seeded, shown
from .cli_format import PlainTyper
from .errors import EdgeInceptionError
from .limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_OPSET, MIN_OPSET, max_threads
from .vocab import (
    MIN_IMAGE_SIZE,
    Backend,
    BackendOption,
    Baseline,
    CalibMethod,
    Criterion,
    FolderOrder,
    Precision,
    PrecisionOption,
    PreprocessMode,
    QuantTarget,
    Variant,
    parse_list,
)

if TYPE_CHECKING:
    from .evaluate.bench import BenchReport
    from .serve.loadgen import ScenarioConfig

app = PlainTyper(
    name="edge-inception",
    help="GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click output: a usage error ends in one "Error: ..." line, and start-up skips rich
)

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E", bound=Enum)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edge-inception {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors: no progress bars, notes or warnings.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also the libraries' and each step's debug log.")] = False,
) -> None:
    """GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other", param_hint="'--quiet'")
    Output.quiet = quiet
    logging.getLogger().setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO)  # Pillow's per-chunk PNG debug lines are not ours to show


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
        raise typer.BadParameter("--batch and --dynamic-batch exclude each other", param_hint="'--dynamic-batch'")
    result = export_model(weights, output, variant=variant, num_classes=num_classes, image_size=image_size, opset=opset,
                          batch=batch, simplify=simplify, fold_batchnorm=not keep_batchnorm)
    note_seeded(result.loaded.seeded)
    echo_table(_step_rows(result.steps), STEP_HEADER)
    typer.echo(f"wrote {shown(result.path)}")


@app.command("simplify")
@handle_errors
def simplify_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output (default <name>.sim.onnx).")] = None,
) -> None:
    """Simplify an ONNX model with onnxsim (BatchNorm folded), verified before vs after."""
    from .convert.simplify import simplify_file

    out, step = simplify_file(model, output)
    echo_table(_step_rows([step]), STEP_HEADER)
    typer.echo(f"wrote {shown(out)}")


@app.command()
@handle_errors
def info(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Inputs, outputs, opset, node and parameter counts, and edge-inception metadata of an ONNX model."""
    from .names import printable
    from .onnx_file import onnx_info

    data = onnx_info(model)
    if as_json:
        typer.echo(json.dumps(data.as_dict(), indent=2))
        return
    typer.echo(f"{shown(data.path)}  ({data.size_bytes / 1e6:.2f} MB, opset {data.opset}, {data.nodes} nodes, {data.parameters:,} parameters)")
    for kind, items in (("input", data.inputs), ("output", data.outputs)):
        for name, dtype, dims in items:
            typer.echo(f"  {kind:<6} {printable(name, 100)}: {dtype} [{' x '.join(printable(str(d), 40) for d in dims)}]")
    typer.echo("  ops: " + ", ".join(f"{printable(k, 60)} {v}" for k, v in data.op_counts.items()))
    for key, value in data.metadata.items():  # text from the file: escapes shown, not sent to the terminal
        typer.echo(f"  {printable(key, 100)}: {printable(value, 97)}")


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
    typer.echo(f"{shown(report.model)}: {report.variant or 'unknown'} layout, batch {report.batch}, {report.image_size}x{report.image_size} input")
    echo_table(rows, ["stage", "MACs (M)", "paper (M)", "diff", "params (K)", "paper (K)", "other ops (M)"])
    per_image = report.total_macs / report.batch
    typer.echo(f"total: {report.total_macs:,} multiply-adds ({per_image / 1e9:.3f} G per image, {per_image / report.budget_macs:.1%} "
               f"of the paper's 1.5 G budget), {report.total_params:,} parameters, {report.total_other_ops:,} other ops")
    typer.echo("notes:")
    for text in report.notes:
        typer.echo(f"  - {shown(text)}")


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
        note(f"warning: {warning}")
    if result.skipped_files:
        note(f"skipped {result.skipped_files} non-image or unreadable file(s)")
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
    echo_table(rows, ["metric", "vs fp32"])
    if result.photo_use:
        typer.echo(f"photos: {result.photo_use}")
    if result.bias_correction:
        typer.echo(result.bias_correction)
    for v in result.verdicts:
        typer.echo(f"verdict: {v['explanation']}")
    if result.off_calibration:
        typer.echo(f"off-calibration check: {result.off_calibration['explanation']}")
    typer.echo(f"claim: {result.claim}")
    typer.echo(f"wrote {shown(result.path)} and {shown(result.report_path)}")


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
    echo_table(rows, ["target", "backend", "backends", "default", "precisions", "batch min-opt-max", "DLA", "TensorRT", "device"])


@app.command()
@handle_errors
def build(
    model: Annotated[Path, typer.Argument(help="ONNX model (fp32, or fp16/int8 from quantize).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see 'targets') or a TOML file.")],
    backend: Annotated[BackendOption | None, typer.Option("--backend", help="Runtime (default: the target's first); auto: every one "
                                                          "of the target's that runs here, measured, the fastest judged kept.")] = None,
    precision: Annotated[PrecisionOption | None, typer.Option("--precision", help="Expected precision of the graph; auto: every one the "
                                                              "target runs (quantized from FP32), measured, the fastest judged kept.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, max=max_threads(), help="CPU threads (default: the target's).")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Folder for the artifact and its manifest.")] = None,
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra folder of target TOML files.")] = None,
    allow_tf32: Annotated[bool, typer.Option("--allow-tf32", help="Let FP32 run as TF32 on a GPU (judged then like FP16).")] = False,
    calib: Annotated[Path | None, typer.Option("--calib", help="With auto: calibration images for INT8 (default: bundled photos).")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="With auto: timed inferences per candidate per round.")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="With auto: benchmark rounds.")] = 3,
) -> None:
    """Build an artifact for a target, with a JSON manifest, verified against the source ONNX (auto: the fastest judged candidate)."""
    from .engines.build import build as build_artifact
    from .engines.targets import get_target

    tgt = get_target(target, targets_dir)
    if backend is BackendOption.auto or precision is PrecisionOption.auto:
        from .autobuild import auto_build
        from .onnx_file import graph_precision, load_onnx

        out = output_dir if output_dir is not None else model.parent / f"{model.stem}.{tgt.name}"
        # auto on one axis only: the other is the target's first backend, or the graph's own precision
        backends = None if backend is BackendOption.auto else [Backend(backend.value if backend else tgt.backend)]
        precisions = None if precision is PrecisionOption.auto else [
            Precision(precision.value if precision else graph_precision(load_onnx(model, with_weights=False)))]
        auto = auto_build(model, tgt, backends=backends, precisions=precisions, output_dir=out, calib=calib, iterations=iterations,
                          rounds=rounds, progress=_progress)
        for v in auto.decision.verdicts:
            p50 = "-" if v.p50_ms is None else f"{v.p50_ms:.2f} ms"
            typer.echo(f"  {shown(v.name):<18} {p50:>10}  {v.status}" + (f": {shown(v.note)}" if v.note else ""))
        for s in auto.plan.skipped:
            typer.echo(f"  not a candidate: {shown(s.name)}: {shown(s.why)}")
        if auto.artifact is None:
            raise EdgeInceptionError(f"{auto.decision.why} (see {auto.report})")
        typer.echo(f"ship: {shown(auto.artifact.name)} ({shown(auto.decision.ship)}): {shown(auto.decision.why)}")
        typer.echo(f"wrote {shown(auto.artifact)}, its manifest and {shown(auto.report)}")
        return
    result = build_artifact(model, tgt, backend=backend.value if backend else None, precision=precision.value if precision else None,
                            output_dir=output_dir, threads=threads, allow_tf32=allow_tf32)
    m, p = result.manifest, result.parity
    typer.echo(f"runtime: {result.note}")
    typer.echo(f"{m.backend} / {m.target} / {m.precision} on {m.device}: max rel error {p.max_rel_error:.2e}, "
               f"top-1 agreement {p.top1_agreement:.1%} vs {model.name}")
    typer.echo(f"wrote {shown(result.artifact)} and {shown(result.artifact.name)}.manifest.json")


PreprocessOpt = Annotated[PreprocessMode, typer.Option("--preprocess", help="fast: JPEGs decoded at reduced scale (DCT) and only the "
                                                    "crop resampled; exact: the reference transform on the full image.")]


@app.command()
@handle_errors
def predict(
    artifact: Annotated[str, typer.Argument(help="Built artifact or ONNX model, or a served model: grpc://HOST:PORT/MODEL.")],
    images: Annotated[list[str], typer.Argument(help="Images, folders or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=3600, help="grpc://: seconds one request may take (a server "
                                           "that does not answer within it is an error; an unavailable one is retried 3 times).")] = 10.0,
) -> None:
    """Classify images: top-k labels and scores, and the end-to-end rate (decode + preprocess + inference). Against a
    served model (grpc://) each image is printed as its batch completes, so a server failing midway leaves the results
    before it on screen and the error line says how many of the images were done."""
    from .evaluate.predict import Prediction
    from .evaluate.predict import predict as run_predict
    from .serve.client import is_remote, predict_remote

    def show(p: Prediction) -> None:
        if as_json:
            typer.echo(json.dumps(p.as_dict()))  # JSON escapes control characters itself
            return
        typer.echo(shown(p.image))
        for index, label, score in p.top:
            typer.echo(f"  {score:7.2%}  {shown(label, 300)} ({index})")

    if is_remote(artifact):
        run = predict_remote(artifact, images, top_k=top_k, mode=PreprocessMode(preprocess), timeout_s=timeout, on_prediction=show)
    else:
        run = run_predict(Path(artifact), images, top_k=top_k, mode=preprocess)
        for p in run.predictions:
            show(p)
    for _path, why in run.failed:
        note(f"skipped: {why}")
    n = len(run.predictions)
    note(f"{n} image{'' if n == 1 else 's'} in {run.seconds:.2f} s: {run.images_per_s:.1f} images/s end to end "
          f"(decode + preprocess {PreprocessMode(preprocess).value} + inference)")
    note_seeded(getattr(run, "seeded", False))


@app.command("eval")
@handle_errors
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder: class folders named by synset id, class index or class name.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH)] = 16,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    folder_order: Annotated[FolderOrder, typer.Option("--folder-order", help="Integer class folders without class names: numeric (folder 10 "
                                                      "is output 10) or imagefolder (torchvision's string order).")] = FolderOrder.numeric,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Spread over a Ray cluster: its head's HOST:PORT (token in RAY_AUTH_TOKEN), "
                                                "or local (a private one for this run, 127.0.0.1, token auth). Needs [cluster].")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="--cluster: actors, each opening the artifact once.")] = 1,
) -> None:
    """Top-1 / top-5 accuracy on a labelled folder, and the end-to-end rate; on a Ray cluster with --cluster."""
    from .evaluate.predict import evaluate

    if cluster is None:
        r = evaluate(artifact, data, batch_size, progress=_progress, mode=preprocess, order=folder_order)
    else:
        from .cluster.evaluate import evaluate_on_cluster

        r = c = evaluate_on_cluster(artifact, data, cluster, workers=workers, batch_size=batch_size, mode=preprocess, order=folder_order)
        note(f"cluster {cluster}: {c.workers} worker(s), ready after {c.startup_s:.1f} s (not in the rate below)")
    for warning in r.warnings:
        note(f"warning: {warning}")
    note_seeded(r.seeded)
    typer.echo(f"{r.images} images: top-1 {r.top1:.2%}, top-5 {r.top5:.2%}" + (f" ({r.skipped} files skipped)" if r.skipped else "")
               + f"; {r.images_per_s:.1f} images/s end to end")


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
    artifacts: Annotated[list[str], typer.Argument(help="Built artifacts and/or ONNX models (with --scenario: one, or grpc://HOST:PORT/MODEL).")],
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
    scenario: Annotated[str | None, typer.Option("--scenario", help="MLPerf scenarios through LoadGen, comma-separated: single-stream, "
                                                 "multi-stream, offline, server (--batch: most samples per inference).")] = None,
    short: Annotated[bool, typer.Option("--short", help="--scenario: a short run (not MLPerf-compliant), for tests and quick looks.")] = False,
    accuracy: Annotated[bool, typer.Option("--accuracy", help="--scenario: also LoadGen's accuracy mode, top-1 on --data (labelled).")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="--scenario: images (an ImageFolder for --accuracy); default bundled photos.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="--scenario: inferences in flight, 1-64.")] = 1,
    target_qps: Annotated[float | None, typer.Option("--target-qps", help="--scenario: Server's target / Offline's expected QPS.")] = None,
    target_latency_ms: Annotated[float | None, typer.Option("--target-latency-ms", help="--scenario server: latency bound.")] = None,
    samples_per_query: Annotated[int, typer.Option("--samples-per-query", help="--scenario multi-stream: samples per query (MLPerf: 8).")] = 8,
    min_duration_ms: Annotated[int | None, typer.Option("--min-duration-ms", help="--scenario: LoadGen's min_duration_ms (default: "
                                                        "LoadGen's, 1000 with --short).")] = None,
    min_query_count: Annotated[int | None, typer.Option("--min-query-count", help="--scenario: LoadGen's min_query_count.")] = None,
    watchdog_s: Annotated[float | None, typer.Option("--watchdog-s", help="--scenario: stop a LoadGen run after this many seconds "
                                                     "(default: 4 x what its settings should take + 70 s).")] = None,
    loadgen_logs: Annotated[Path | None, typer.Option("--loadgen-logs", help="--scenario: keep LoadGen's logs in this folder.")] = None,
) -> None:
    """Latency and throughput per engine and batch size, against PyTorch eager and default ONNX Runtime; or MLPerf's
    scenarios through LoadGen (--scenario), in-process or against a Triton server (grpc://)."""
    from .evaluate.bench import BenchConfig, run_bench, write_outputs
    from .fileio import check_outputs

    check_outputs(json_out, markdown_out, plot_out)  # refuse an unwritable output now, not after the benchmark
    if scenario is not None:
        from .serve.loadgen import Scenario, ScenarioConfig

        cfg_s = ScenarioConfig(_choices(scenario, Scenario, "--scenario"), short=short, accuracy=accuracy, data=data,
                               batch=max(_int_list(batch, "--batch")), concurrency=concurrency, target_qps=target_qps,
                               target_latency_ms=target_latency_ms, samples_per_query=samples_per_query, min_duration_ms=min_duration_ms,
                               min_query_count=min_query_count, threads=threads, log_dir=loadgen_logs, watchdog_s=watchdog_s)
        _bench_scenarios(artifacts, cfg_s, json_out, markdown_out, plot_out)
        return
    if any(a.startswith("grpc://") for a in artifacts):
        raise EdgeInceptionError("a served model (grpc://) is measured with --scenario (MLPerf's scenarios through LoadGen)")

    bases = None if baseline is None else () if baseline.strip() == "none" else _choices(baseline, Baseline, "--baseline")
    cfg = BenchConfig(batches=_int_list(batch, "--batch"), warmup=warmup, warmup_s=warmup_s, iterations=iterations if not duration else 0,
                      duration_s=duration, rounds=rounds, threads=threads, baselines=bases, rerun_disturbed=rerun_disturbed)
    report = run_bench([str(a) for a in artifacts], cfg, progress=_progress)
    _print_bench(report)
    write_outputs(report, json_out, markdown_out, plot_out)
    for path in (json_out, markdown_out, plot_out):
        if path:
            typer.echo(f"wrote {shown(path)}")


def _bench_scenarios(targets: list[str], cfg: ScenarioConfig, json_out: Path | None, markdown_out: Path | None, plot_out: Path | None = None) -> None:
    """``bench TARGET --scenario ...``: LoadGen's verdict and MLPerf's metric per scenario, printed and written."""
    from .serve.loadgen import run_scenarios, write_outputs

    if len(targets) != 1:
        raise EdgeInceptionError(f"--scenario measures one target (an artifact or grpc://HOST:PORT/MODEL), got {len(targets)}")
    report = run_scenarios(targets[0], cfg, progress=lambda text: typer.echo(shown(text), err=True))
    for text in report.notes:
        typer.echo(f"note: {shown(text)}", err=True)
    rows = [[r.scenario, "VALID" if r.valid else "INVALID", f"{r.metric} {r.metric_value:.2f}", f"{r.samples_per_s:.1f}",
             f"{r.latency_ms.get('p90', float('nan')):.2f}", f"{r.latency_ms.get('p99', float('nan')):.2f}", str(r.query_count),
             "-" if r.top1 is None else f"{r.top1:.1%}"] for r in report.results]
    typer.echo(f"{shown(report.results[0].engine)}: {shown(targets[0])}")
    echo_table(rows, ["scenario", "result", "MLPerf metric", "samples/s", "p90 ms", "p99 ms", "queries", "top-1"])
    for r in report.results:
        if not r.valid:
            typer.echo(f"{r.scenario} INVALID: {shown('; '.join(r.invalid_reasons) or 'see LoadGen log')}")
    write_outputs(report, json_out, markdown_out, plot_out)
    for path in (json_out, markdown_out, plot_out):
        if path:
            typer.echo(f"wrote {shown(path)}")


def _print_bench(report: BenchReport) -> None:
    from .evaluate.bench import ORT_DEFAULT_ENGINE, TORCH_ENGINE, peak_text

    m = report.machine
    typer.echo(f"{m.cpu} ({m.cores} cores, {', '.join(m.simd)}); FP32 matmul peak {m.matmul_peak_macs_per_s / 1e9:.1f} GMAC/s")
    for text in report.notes:
        note(f"note: {text}")
    rows = []
    for r in report.results:
        lat, sp = r.latency_ms, r.speedup_vs
        rows.append([r.engine, r.device, str(r.batch), f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{lat['std']:.2f}",
                     f"{r.throughput_ips:.1f}", f"{r.macs_per_s / 1e9:.1f}", peak_text(r.peak_fraction),
                     f"{sp[TORCH_ENGINE]:.2f}x" if TORCH_ENGINE in sp else "-", f"{sp[ORT_DEFAULT_ENGINE]:.2f}x" if ORT_DEFAULT_ENGINE in sp else "-",
                     "-" if r.agreement is None else f"{r.agreement:.1%}"])
    echo_table(rows, ["engine", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "std", "img/s", "GMAC/s", "% CPU peak", "vs torch", "vs ort",
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
    ship_unproven: Annotated[bool, typer.Option("--ship-unproven", help="Also ship a candidate whose claim the evidence cannot carry "
                                                "(INT8 agreement whose 95% lower bound is below --min-agreement); the ship line says so.")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("runs/pipeline"),
) -> None:
    """Export, quantize, build, verify and benchmark in one step; writes a report folder."""
    from .pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(output=output, weights=weights, target=target, precisions=_choices(precisions, Precision, "--precisions"),
                         calib=calib, image_size=image_size, min_agreement=min_agreement, force=force, bench_iterations=iterations,
                         bench_rounds=rounds, batches=_int_list(batch, "--batch"), ship_unproven=ship_unproven)
    if weights is None:
        note(SEEDED_NOTE)
    started: dict[str, float] = {}

    def on_stage(name: str) -> None:
        import time

        started[name] = time.perf_counter()
        note(f"[{len(started)}] {name} ...")

    result = run_pipeline(cfg, on_stage=on_stage, progress=_progress)
    echo_table([[s.name, f"{s.seconds:.1f}", s.detail] for s in result.stages], ["stage", "seconds", "result"])
    ship = result.report["ship"]
    typer.echo(f"ship: {shown(ship['artifact'])} ({shown(ship['candidate'])}): {shown(ship['why'])}")
    typer.echo(f"wrote {shown(result.output)}/report.md, report.json, bench.png and artifacts/")


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
        typer.echo("\n".join(shown(line) for line in markdown(report).splitlines()))
    if markdown_out:
        write_text_atomic(markdown_out, markdown(report))
        typer.echo(f"wrote {shown(markdown_out)}", err=as_json)
    if plot_out:
        plot([report], plot_out)
        typer.echo(f"wrote {shown(plot_out)}", err=as_json)


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
        typer.echo(f"  {shown(line)}")
    typer.echo(f"wrote {shown(result.folder)} ({len(result.files)} files); bundle.json sha256 {result.bundle_sha256}")


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
    typer.echo(f"check passed: {shown(r.artifact.name)} ({r.precision} on {r.device}) on {p.samples} reference images: max rel error "
               f"{p.max_rel_error:.2e}, mean cosine {p.mean_cosine:.5f}, top-1 agreement {p.top1_agreement:.1%}")
    typer.echo(f"bundle verified: every file matches bundle.json (sha256 {r.bundle_sha256}: compare with what 'bundle' printed)")
    if r.adopted:
        typer.echo(f"adopted: wrote {shown(r.artifact.name)}.manifest.json")


def _progress(total: int, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True, disable=Output.quiet or None)


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
        note("note: training from seeded random weights (no --weights)")
    if result.skipped_files:
        note(f"skipped {result.skipped_files} unreadable or non-image file(s)")
    echo_table([[str(h.epoch), str(h.steps), f"{h.train_loss:.3f}", f"{h.train_acc:.1%}", f"{h.val_acc:.1%}", f"{h.seconds:.1f}"]
                 for h in result.history], ["epoch", "steps", "loss", "train acc", "val acc", "seconds"])
    if result.checkpoint is None:
        typer.echo("error: interrupted before the first checkpoint; nothing written", err=True)
        raise typer.Exit(code=130 if result.interrupted else 1)
    typer.echo(f"best val accuracy {result.best_val_acc:.1%} ({len(result.classes)} classes, device {result.device})")
    typer.echo(f"wrote {shown(result.checkpoint)} and {shown(result.checkpoint.with_suffix('.json'))}")
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
    typer.echo(f"wrote {shown(out)}/train and {shown(out)}/val ({len(DEMO_CLASSES)} classes: {', '.join(DEMO_CLASSES)})")


@app.command()
@handle_errors
def stream(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    source: Annotated[str, typer.Argument(help="Video file, image folder or glob, /dev/videoN or a camera index, csi://N, rtsp:// or http:// URL.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    save: Annotated[Path | None, typer.Option("--save", help="Write an MP4 with the top-1 label drawn on each frame.")] = None,
    json_lines: Annotated[str | None, typer.Option("--json-lines", help="One JSON line per frame: a file, or - for stdout.")] = None,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Stop after this many frames.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, max=max_threads(), help="Engine threads (default: the artifact's).")] = None,
    reconnect: Annotated[float, typer.Option("--reconnect", min=0, max=86400,
                                             help="Seconds a camera or network stream that breaks is reopened for (0: not).")] = 30.0,
) -> None:
    """Classify a video, camera, network stream or image folder frame by frame: JSON lines, an annotated MP4, a summary."""
    import signal

    from .fileio import atomic_path, check_outputs
    from .stream.run import run_stream
    from .stream.writer import JsonLinesWriter

    check_outputs(save, None if json_lines in (None, "-") else Path(json_lines))
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) is a failed write to report, not a signal that kills
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sink: JsonLinesWriter | None = None
    with contextlib.ExitStack() as stack:
        # a JSON-lines file is written as the frames come (a camera runs for hours) into a temporary file beside it,
        # moved into place when the stream ends, also after Ctrl-C / SIGTERM and after a failed write (its whole lines)
        if json_lines not in (None, "-"):
            sink = JsonLinesWriter(stack.enter_context(open(stack.enter_context(atomic_path(Path(json_lines))), "wb")), json_lines)

        def on_frame(r: Any) -> None:
            if json_lines == "-":
                typer.echo(json.dumps(r.as_dict()))
            elif sink is not None:
                sink.write(r.as_dict())

        summary = run_stream(artifact, source, top_k=top_k, mode=preprocess, save=save, max_frames=max_frames, on_frame=on_frame,
                             progress=_progress, threads=threads, reconnect_s=reconnect)
    to_err = json_lines == "-"  # stdout carries the JSON lines
    st = summary.stages
    typer.echo(f"{summary.frames} frames in {summary.seconds:.2f} s: {summary.fps:.1f} FPS end to end ({summary.kind}, preprocess "
               f"{summary.preprocess}); dropped {summary.dropped}, skipped corrupt {summary.corrupt}"
               + (", input truncated" if summary.truncated else "")
               + (f", reconnected {summary.reconnects} time{'s' if summary.reconnects != 1 else ''}" if summary.reconnects else "")
               + (", source lost" if summary.lost else ""), err=to_err)
    if summary.inference_fps > 0:
        typer.echo(f"  the engine alone: {summary.inference_fps:.1f} FPS (end to end is {summary.fps / summary.inference_fps:.0%} of it)",
                   err=to_err)
    for stage, s in st.items():
        typer.echo(f"  {stage:<11} p50 {s.p50:8.2f} ms  p90 {s.p90:8.2f} ms", err=to_err)
    typer.echo("summary: " + json.dumps(summary.as_dict()), err=to_err)
    for written in (summary.saved, None if json_lines in (None, "-") else json_lines):
        if written:
            typer.echo(f"wrote {shown(written)}", err=to_err)
    if summary.output_error:
        kept = ([f"{summary.saved} ({summary.saved_frames} frames, to its last whole fragment)"] if summary.saved else []) \
            + ([f"{json_lines} ({sink.lines} whole lines)"] if sink is not None else [])
        raise EdgeInceptionError(f"cannot write {summary.output_error}; the stream stopped after {summary.frames} frames"
                                 + (f"; kept: {', '.join(kept)}" if kept else "; nothing was kept"))
    if summary.interrupted:
        typer.echo(f"{'terminated' if summary.interrupted == 'SIGTERM' else 'interrupted'}: the summary above covers the frames "
                   f"classified so far" + (", the video is closed and playable" if summary.saved else ""), err=True)
        raise typer.Exit(code=143 if summary.interrupted == "SIGTERM" else 130)


class _LevelFormatter(logging.Formatter):
    """``warning: ...``, ``debug: ...``: the level in lower case, like the CLI's own ``error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        record.msg, record.args = shown(record.getMessage()), None  # log messages quote files and servers: escaped as notes are
        return super().format(record)


from .serve.cli import app as serve_app  # noqa: E402 - the root app registers each area's sub-app (Triton's here)

app.add_typer(serve_app, name="serve")
from .cluster.cli import app as fleet_app  # noqa: E402

app.add_typer(fleet_app, name="fleet")


def main() -> None:
    """Run the CLI (``edge_inception.__main__.main`` installs the signal handlers first, then calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    app()
