"""Training and data: ``train``, ``demo-data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    WeightsOpt,
    echo_table,
    finite,
    handle_errors,
    note,
    progress,
    shown,
)
from ..cli_format import PlainTyper
from ..limits import MAX_BATCH, MAX_IMAGE_SIZE
from ..vocab import (
    MIN_IMAGE_SIZE,
    Variant,
)

app = PlainTyper()  # merged into the root app (no group of its own)


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
    lr: Annotated[float, typer.Option("--lr", callback=finite, min=1e-8, max=10.0, help="Peak learning rate (one-cycle schedule).")] = 0.01,
    image_size: Annotated[int, typer.Option("--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE)] = 224,
    val: Annotated[Path | None, typer.Option("--val", help="Validation ImageFolder (default: hold out 15% of --data).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (class names go to <name>.json).")] = Path(
        "export/output/finetuned.pth"
    ),
) -> None:
    """Fine-tune GoogLeNet on your classes with the auxiliary classifiers (loss = main + 0.3 x aux)."""
    from ..fileio import CHECKPOINT_FILE, check_outputs, require_suffix
    from ..model.train import TrainConfig
    from ..model.train import train as run_training

    require_suffix(output, CHECKPOINT_FILE)
    check_outputs(output, inputs=[p for p in (data, val, weights) if p is not None])

    cfg = TrainConfig(data=data, output=output, val=val, weights=weights, variant=variant, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, lr=lr, image_size=image_size, seed=seed)
    result = run_training(cfg, progress=progress)
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
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for train/ and val/ (ImageFolder layout) and holdout/.")] = Path(
        "export/output/demo-data"
    ),
) -> None:
    """Write the built-in demo data set: crops of real photos bundled with scikit-image, one class per photo."""
    from ..data.demo_data import DEMO_CLASSES, HOLDOUT_PHOTOS, make_demo_dataset

    out = make_demo_dataset(output)
    typer.echo(f"wrote {shown(out)}/train and {shown(out)}/val ({len(DEMO_CLASSES)} classes: {', '.join(DEMO_CLASSES)}) and "
               f"{shown(out)}/holdout ({len(HOLDOUT_PHOTOS)} other photos, for pipeline --holdout)")
