"""Fine-tuning with the auxiliary classifiers: total loss = main + 0.3 x (aux1 + aux2), as in the paper.

The classifier (and both aux heads) are resized to the data's classes; SGD with momentum and a cosine
schedule; random resized crops and flips. The best checkpoint by validation accuracy is written atomically
as a state_dict in the layout ``export`` reads, with a JSON sidecar holding the class names, so ``predict``
prints them. Ctrl-C stops training and keeps the last good checkpoint.

On the CPU the model and its batches are held channels-last (NHWC: ``torch.channels_last``), the layout oneDNN's
convolutions and pooling compute in, instead of reordering each layer's input and output from NCHW (PyTorch's
memory-format tutorial): a training step took 1.5 x less time at 224 px, batch 16 (775 vs 1,160 ms on a 2-core Xeon
with AVX-512), 1.3 x less at 64 px. The checkpoint is written contiguous (NCHW), as before.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.datasets import ImageCache, ImageFolder, eval_batches, scan_image_folder, train_sample
from ..errors import DatasetError, EdgeInceptionError, OutputPathError, TrainingError, require_modules
from ..fileio import atomic_path, ensure_parent, write_failure, write_json_atomic
from ..limits import check_batch, check_image_size
from ..vocab import Variant
from .checkpoints import load_model, non_finite, sidecar_path

if TYPE_CHECKING:
    from .googlenet import GoogLeNet

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: Path
    output: Path
    val: Path | None = None
    weights: Path | None = None
    variant: Variant = Variant.torchvision
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    image_size: int = 224
    val_fraction: float = 0.15  # held out of --data when no --val is given
    seed: int = 0
    device: str | None = None  # default: cuda when available


@dataclass
class EpochStats:
    epoch: int
    steps: int
    train_loss: float
    train_acc: float
    val_acc: float
    seconds: float


@dataclass
class TrainResult:
    checkpoint: Path | None
    classes: list[str]
    best_val_acc: float
    history: list[EpochStats] = field(default_factory=list)
    interrupted: bool = False
    skipped_files: int = 0
    device: str = "cpu"


def split_validation(folder: ImageFolder, fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """Stratified hold-out: every class keeps at least one training and one validation image."""
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(folder.classes)):
        items = [s for s in folder.samples if s[1] == label]
        rng.shuffle(items)
        if len(items) < 2:
            raise DatasetError(f"class '{folder.classes[label]}' needs at least 2 images to hold one out for validation (or pass --val)")
        k = max(1, round(len(items) * fraction))
        val += items[:k]
        train += items[k:]
    return ImageFolder(folder.root, folder.classes, train), ImageFolder(folder.root, folder.classes, val)


def prepare_model(cfg: TrainConfig, num_classes: int):  # -> tuple[GoogLeNet, bool]
    """The model to fine-tune, with main and aux classifiers sized to ``num_classes``."""
    import torch

    loaded = load_model(cfg.weights, variant=None if cfg.weights else cfg.variant,
                        num_classes=None if cfg.weights else num_classes, aux_logits=True, seed=cfg.seed,
                        transform_input=None if cfg.weights else False)
    model: GoogLeNet = loaded.model
    if loaded.num_classes != num_classes:
        gen = torch.Generator().manual_seed(cfg.seed)
        model.fc = _fresh_linear(1024, num_classes, gen)
        for aux in (model.aux1, model.aux2):
            if aux is not None:
                aux.fc2 = _fresh_linear(1024, num_classes, gen)
        model.num_classes = num_classes
    return model, loaded.transform_input


def _fresh_linear(n_in: int, n_out: int, gen):  # -> nn.Linear
    import torch

    layer = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
        layer.bias.zero_()
    return layer


def _memory_format(device: str):  # -> torch.memory_format
    """channels-last on the CPU (``cpu``, ``cpu:0``: the module's notes), PyTorch's default elsewhere."""
    import torch

    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def evaluate(model, folder: ImageFolder, image_size: int, device: str, cache: ImageCache, batch_size: int = 64) -> float:
    import torch

    model.eval()
    correct = 0
    layout = _memory_format(device)
    with torch.inference_mode():
        for batch, labels in eval_batches(folder, image_size, batch_size, cache):
            logits = model(torch.from_numpy(batch).to(device).contiguous(memory_format=layout))
            correct += int((logits.argmax(1).cpu().numpy() == labels).sum())
    return correct / max(1, len(folder.samples))


def save_checkpoint(model, path: Path, sidecar: dict[str, Any]) -> None:
    import torch

    # NCHW strides, whatever layout trained: .contiguous() would keep a 1x1 kernel's channels-last strides (PyTorch
    # ignores size-1 dimensions when it checks contiguity), a clone in contiguous_format does not
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise TrainingError(f"not writing {path}: {bad}")
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # PyTorch's zip writer reports a full disk as a RuntimeError
            raise OutputPathError(f"cannot write {path}: {write_failure(path.parent, exc)}") from exc
    write_json_atomic(sidecar_path(path), sidecar)


ProgressFactory = Callable[[int, str], Any]


def train(cfg: TrainConfig, progress: ProgressFactory | None = None) -> TrainResult:
    """Fine-tune GoogLeNet on an ImageFolder tree; returns where the best checkpoint went."""
    require_modules("training", "torch")
    import torch

    from .googlenet import AUX_LOSS_WEIGHT, googlenet_loss

    check_image_size(cfg.image_size)
    check_batch(cfg.batch_size, "--batch-size")
    if cfg.batch_size < 2:
        raise EdgeInceptionError("--batch-size must be at least 2 (BatchNorm needs more than one sample)")
    ensure_parent(cfg.output)
    cache = ImageCache()  # the scan's decode of each image is the first epoch's
    data = scan_image_folder(cfg.data, cache=cache)
    if cfg.val is not None:
        train_set, val_set = data, scan_image_folder(cfg.val, cache=cache)
        if val_set.classes != train_set.classes:
            raise DatasetError(f"{cfg.val}: class folders {val_set.classes} differ from {cfg.data}'s {train_set.classes}")
    else:
        train_set, val_set = split_validation(data, cfg.val_fraction, cfg.seed)
    skipped = len(data.skipped) + (0 if cfg.val is None else len(val_set.skipped))

    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, transform_input = prepare_model(cfg, len(data.classes))
    layout = _memory_format(device)
    model.to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_set.samples) // cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.15)

    rng = random.Random(cfg.seed)
    result = TrainResult(checkpoint=None, classes=data.classes, best_val_acc=-1.0, skipped_files=skipped, device=device)
    sidecar: dict[str, Any] = {
        "classes": data.classes,
        "variant": model.variant.value,
        "image_size": cfg.image_size,
        "transform_input": transform_input,
        "aux_loss_weight": AUX_LOSS_WEIGHT,
        "trained_from": str(cfg.weights) if cfg.weights else f"seed:{cfg.seed}",
        "classes_from_training": True,
    }
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            order = list(train_set.samples)
            rng.shuffle(order)
            n_batches = min(steps_per_epoch, total_steps - step)
            bar = progress(n_batches, f"epoch {epoch}/{epochs}") if progress else None
            loss_sum, correct, seen = 0.0, 0, 0
            for b in range(n_batches):
                chunk = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x = torch.from_numpy(np.stack([train_sample(cache.get(p), cfg.image_size, rng) for p, _ in chunk])).to(device)
                x = x.contiguous(memory_format=layout)
                y = torch.tensor([label for _, label in chunk], device=device)
                outputs = model(x)
                loss = googlenet_loss(outputs, y)
                if not bool(torch.isfinite(loss)):
                    kept = f"; the best checkpoint before it is kept in {cfg.output}" if result.checkpoint else "; nothing written"
                    raise TrainingError(f"the training loss became {float(loss.detach())} at step {step + 1} (epoch {epoch}): the training diverged; "
                                        f"try a smaller --lr than {cfg.lr:g}{kept}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                loss_sum += float(loss.detach()) * len(chunk)
                correct += int((outputs[0].argmax(1) == y).sum())
                seen += len(chunk)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.2f}")
            if bar is not None:
                bar.close()
            val_acc = evaluate(model, val_set, cfg.image_size, device, cache)
            stats = EpochStats(epoch, step, loss_sum / max(1, seen), correct / max(1, seen), val_acc, time.perf_counter() - t0)
            result.history.append(stats)
            log.info("epoch %d: loss %.3f train acc %.3f val acc %.3f", epoch, stats.train_loss, stats.train_acc, val_acc)
            if val_acc > result.best_val_acc:
                result.best_val_acc = val_acc
                save_checkpoint(model, cfg.output, {**sidecar, "epoch": epoch, "steps": step, "val_accuracy": val_acc})
                result.checkpoint = cfg.output
    except KeyboardInterrupt:
        result.interrupted = True
        if result.checkpoint is not None:  # else none was written: result.checkpoint None says so (the CLI in one line)
            log.warning("interrupted: keeping the last good checkpoint %s", result.checkpoint)
    return result
