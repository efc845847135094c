"""Export, simplify, inspect and quantize ONNX models: ``export``, ``simplify``, ``info``, ``flops``, ``quantize``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli_common import (
    ClusterOpt,
    ImageSizeOpt,
    WeightsOpt,
    WorkersOpt,
    cluster_top_k,
    echo_table,
    finite,
    handle_errors,
    note,
    note_seeded,
    progress,
    shown,
)
from ..cli_format import PlainTyper
from ..fileio import ONNX_FILE, check_outputs, json_text, require_suffix
from ..limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_OPSET, MIN_OPSET
from ..vocab import (
    MIN_IMAGE_SIZE,
    CalibMethod,
    Criterion,
    Precision,
    QuantTarget,
    Variant,
)

app = PlainTyper()  # merged into the root app (no group of its own)


def _step_rows(steps: list[Any]) -> list[list[str]]:
    return [
        [s.step, s.reference, ",".join(map(str, s.batches)), f"{s.parity.max_abs_error:.2e}", f"{s.parity.max_rel_error:.2e}",
         f"{s.parity.top1_agreement:.1%}", f"{s.parity.top5_overlap:.1%}"]
        for s in steps
    ]


STEP_HEADER = ["step", "checked against", "batch", "max abs err", "max rel err", "top-1 agree", "top-5 overlap"]


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
    from ..convert.export import export_model

    if batch is not None and dynamic_batch:
        raise typer.BadParameter("--batch and --dynamic-batch exclude each other", param_hint="'--dynamic-batch'")
    require_suffix(output, ONNX_FILE)
    check_outputs(output, inputs=[weights] if weights else [])
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
    from ..convert.simplify import simplify_file

    require_suffix(output, ONNX_FILE)
    check_outputs(output, inputs=[model])
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
    from ..names import printable
    from ..onnx_file import onnx_info

    data = onnx_info(model)
    if as_json:
        typer.echo(json_text(data.as_dict(), indent=2))
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
    from ..evaluate.flops import count_graph

    report = count_graph(model, image_size=image_size, batch=batch)
    if as_json:
        typer.echo(json_text(report.as_json(), indent=2))
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
    holdout: Annotated[Path | None, typer.Option("--holdout", help="Photos kept apart (a folder, flat or one sub-folder per class): the "
                                                 "verdict, every distinct photo judged, none calibrated or chosen on (default: --calib's "
                                                 "photos, cross-fitted).")] = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Labelled ImageFolder: judge by accuracy (INT8 >= 99% of FP32's).")] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", callback=finite, min=0.0, max=1.0,
                                                 help="Agreement criterion: top-1 agreement with FP32.")] = 0.99,
    criterion: Annotated[Criterion, typer.Option("--criterion", help="accuracy (INT8 >= 99% of FP32's, needs labels), agreement, or auto: "
                                                 "agreement, and accuracy too where labels are at hand.")] = Criterion.auto,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output (default <name>.<precision>.onnx).")] = None,
    cluster: ClusterOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """INT8 (static, calibrated, Q/DQ) or FP16, with an accuracy report against FP32 and an accuracy guard."""
    from ..convert.quantize import quantize_model

    require_suffix(output, ONNX_FILE)
    check_outputs(output, inputs=[model])
    with cluster_top_k(cluster, workers) as top_k:
        result = quantize_model(model, precision, output=output, calib=calib, calib_size=calib_size, calib_method=calib_method, target=target,
                                holdout=holdout, eval_dir=eval_dir, min_agreement=min_agreement, criterion=criterion, progress=progress,
                                top_k=top_k)
    for warning in result.warnings:
        note(f"warning: {warning}")
    if result.skipped_files:
        note(f"skipped {result.skipped_files} non-image or unreadable file(s)")
    a = result.accuracy
    typer.echo(f"{result.precision.value}: {result.scheme}")
    typer.echo(f"criterion: {result.criterion}")
    if result.calibration_method:
        tried = ", ".join(f"{m} {v['top1_agreement']:.1%}" for m, v in result.calibration_trials.items())
        typer.echo(f"calibration: {result.calibration_method} (agreement per method: {shown(tried)})")
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
        typer.echo(f"photos: {shown(result.photo_use)}")
    if result.bias_correction:
        typer.echo(result.bias_correction)
    for v in result.verdicts:
        typer.echo(f"verdict: {shown(v['explanation'])}")
    if result.off_calibration:
        typer.echo(f"off-calibration check: {shown(result.off_calibration['explanation'])}")
    typer.echo(f"claim: {shown(result.claim)}")
    typer.echo(f"wrote {shown(result.path)} and {shown(result.report_path)}")
