"""The ``edge-inception`` command line: each command parses options, calls one library function, prints."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import __version__
from .errors import EdgeInceptionError
from .model import Variant

app = typer.Typer(
    name="edge-inception",
    help="GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """User errors become one line on stderr and exit code 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeInceptionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing half-written was left behind", err=True)
            raise typer.Exit(code=130) from None

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
VariantOpt = Annotated[Variant | None, typer.Option("--variant", help="Layout, when no checkpoint says (default torchvision).")]


@app.command()
@handle_errors
def export(
    weights: WeightsOpt = None,
    variant: VariantOpt = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="Classes, when no checkpoint says (default 1000).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Input height and width (default 224).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    batch: Annotated[int | None, typer.Option("--batch", help="Fixed batch size (default: dynamic batch).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension (the default).")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim after export.")] = True,
    keep_batchnorm: Annotated[bool, typer.Option("--keep-batchnorm", help="Do not fold BatchNorm (implies --no-simplify).")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="ONNX file to write (default under export/output/).")] = None,
) -> None:
    """Export GoogLeNet to aux-free ONNX, verified against PyTorch and simplified."""
    from .export import export_model

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
    from .simplify import simplify_file

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
    from .onnx_meta import onnx_info

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
    image_size: Annotated[int | None, typer.Option("--image-size", help="Count at this input size (default: the model's).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Multiply-adds and parameters per stage against the paper's Table 1 and its 1.5 G budget."""
    from .flops import count_graph

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


def _progress(total: int, desc: str):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)


@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree: one sub-folder of images per class.")],
    weights: WeightsOpt = None,
    variant: Annotated[Variant, typer.Option("--variant", help="Layout when training from seeded weights.")] = Variant.torchvision,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (one-cycle schedule).")] = 0.01,
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
    val: Annotated[Path | None, typer.Option("--val", help="Validation ImageFolder (default: hold out 15% of --data).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (class names go to <name>.json).")] = Path(
        "export/output/finetuned.pth"
    ),
) -> None:
    """Fine-tune GoogLeNet on your classes with the auxiliary classifiers (loss = main + 0.3 x aux)."""
    from .train import TrainConfig
    from .train import train as run_training

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
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for train/ and val/ (ImageFolder layout).")] = Path("export/output/demo-data"),
) -> None:
    """Write the built-in demo data set: crops of real photos bundled with scikit-image, one class per photo."""
    from .demo_data import DEMO_CLASSES, make_demo_dataset

    out = make_demo_dataset(output)
    typer.echo(f"wrote {out}/train and {out}/val ({len(DEMO_CLASSES)} classes: {', '.join(DEMO_CLASSES)})")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
