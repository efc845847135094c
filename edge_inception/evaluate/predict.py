"""Run an artifact (or a plain ONNX model) on images: top-k labels, and accuracy on a labelled folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import scan_image_folder
from ..data.images import find_images, prefetch_batches
from ..engines.registry import artifact_info, open_runner
from ..errors import DatasetError, ImageError
from ..model.labels import imagenet_folder_index
from ..names import is_number
from ..vocab import FolderOrder, PreprocessMode
from .preprocess_agreement import DEFAULT_AGREEMENT_SAMPLE, PreprocessAgreement, fast_exact_agreement, spread_sample
from .verify import softmax, top_classes, topk_hits

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    image: str
    top: list[tuple[int, str, float]]  # class index, name, probability

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"index": i, "label": n, "score": round(s, 6)} for i, n, s in self.top]}


@dataclass
class PredictRun:
    """What :func:`predict` returns: one :class:`Prediction` per readable image, the unreadable ones, and the end-to-end
    rate (decode + preprocess + inference over the wall time, images/s)."""

    predictions: list[Prediction]
    failed: list[tuple[str, str]]  # (path, reason)
    seconds: float
    seeded: bool = False  # the model came from seeded random weights: its labels mean nothing

    @property
    def images_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0


def predict(artifact: str | Path, images: Sequence[str | Path], top_k: int = 5, batch_size: int = 8,
            mode: PreprocessMode = PreprocessMode.fast) -> PredictRun:
    """Top-k classes of every image (files, folders, globs). Decoding runs a batch ahead of inference in a thread.

    Raises :class:`ImageError` when no image is found, or when a single named image does not decode."""
    info = artifact_info(artifact)
    scan = find_images(images)
    if not scan.images:
        raise ImageError("no images found in " + ", ".join(map(str, images)))
    names = info.class_names
    k = min(top_k, info.num_classes)
    results: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    with open_runner(artifact) as runner:
        t0 = time.perf_counter()
        for batch in prefetch_batches(scan.images, info.image_size, mode, batch_size):
            failed += [(str(p), why) for p, why in batch.failed]
            if not batch.paths:
                continue
            logits = runner.run(batch.tensors)
            for path, p, order in zip(batch.paths, softmax(logits), top_classes(logits, k)):
                results.append(Prediction(str(path), [(int(i), names[i], float(p[i])) for i in order]))
        seconds = time.perf_counter() - t0
    if not results and len(failed) == 1:
        raise ImageError(failed[0][1])
    if not results:
        raise ImageError(f"none of the {len(failed)} images decoded, e.g. {failed[0][1]}")
    return PredictRun(results, failed, seconds, seeded=info.seeded)


@dataclass
class EvalResult:
    images: int
    top1: float
    top5: float
    skipped: int
    seconds: float = 0.0  # wall time of decode + preprocess + inference
    warnings: list[str] = field(default_factory=list)
    seeded: bool = False  # the model came from seeded random weights: its labels mean nothing
    preprocess_agreement: PreprocessAgreement | None = None  # fast vs exact on a sample (fast runs only)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def folder_order_warning(classes: list[str], class_names: list[str] | None, order: FolderOrder) -> str | None:
    """The warning for integer class folders whose string order (torchvision's ImageFolder) differs from their numeric
    order, when the model has no class names that settle it; None when the mapping is unambiguous."""
    if not classes or not all(is_number(c) for c in classes) or (class_names and all(c in class_names for c in classes)):
        return None
    if sorted(classes) == sorted(classes, key=int):
        return None
    if order == FolderOrder.numeric:
        return (f"class folders {', '.join(classes[:4])}, ... are integers and the model has no class names: folder '10' is read as "
                f"output 10 (--folder-order numeric); a model trained with torchvision's ImageFolder on these folders learnt them in "
                f"string order ('{sorted(classes)[2]}' is its output 2): use --folder-order imagefolder for such a model")
    return "class folders are integers: read in torchvision's ImageFolder order (names sorted as strings), not by their numbers"


def folder_labels(classes: list[str], class_names: list[str] | None, num_classes: int, order: FolderOrder = FolderOrder.numeric) -> list[int]:
    """Map class folders to model outputs: by synset id / index for ImageNet, else by the model's class names.

    Integer folders without class names: by their number (``numeric``), or by their position among the folder names
    sorted as strings (``imagefolder``, torchvision's ``ImageFolder.find_classes``). Raises :class:`DatasetError`
    for a folder that matches no output.
    """
    mapping = []
    string_order = sorted(classes)
    for folder in classes:
        index = imagenet_folder_index(folder) if num_classes == 1000 and not is_number(folder) else None
        if index is None and class_names and folder in class_names:
            index = class_names.index(folder)
        if index is None and is_number(folder) and order == FolderOrder.imagefolder and string_order.index(folder) < num_classes:
            index = string_order.index(folder)
        if index is None and is_number(folder) and order == FolderOrder.numeric and int(folder) < num_classes:
            index = int(folder)
        if index is None:
            raise DatasetError(f"class folder '{folder}' matches no class of the model (use synset ids, class indices or class names)")
        mapping.append(index)
    return mapping


def evaluate(artifact: str | Path, data: str | Path, batch_size: int = 16, progress: Callable[[int, str], Any] | None = None,
             mode: PreprocessMode = PreprocessMode.fast, order: FolderOrder = FolderOrder.numeric,
             agreement_sample: int = DEFAULT_AGREEMENT_SAMPLE) -> EvalResult:
    """Top-1 / top-5 accuracy of an artifact on an ImageFolder tree; unreadable images are skipped and counted.

    With ``fast`` preprocessing, ``agreement_sample`` images (evenly spread; 0: none) also go through ``exact`` and the
    same model afterwards, outside the timed rate: the result's ``preprocess_agreement``.
    Raises :class:`DatasetError` for a tree without images or a class folder that matches no output."""
    info = artifact_info(artifact)
    folder = scan_image_folder(data, min_classes=1, check=False)
    mapping = folder_labels(folder.classes, info.class_names, info.num_classes, order)
    warning = folder_order_warning(folder.classes, info.class_names, order)
    if warning:
        log.info(warning)
    label_of = {p: mapping[label] for p, label in folder.samples}
    top1 = top5 = n = 0
    skipped = len(folder.skipped)
    bar = progress(len(folder.samples), "evaluating") if progress else None
    with open_runner(artifact) as runner:
        t0 = time.perf_counter()
        for batch in prefetch_batches([p for p, _ in folder.samples], info.image_size, mode, batch_size):
            skipped += len(batch.failed)
            if batch.paths:
                hit1, hit5 = topk_hits(runner.run(batch.tensors), np.array([label_of[p] for p in batch.paths]))
                top1, top5, n = top1 + hit1, top5 + hit5, n + len(batch.paths)
            if bar is not None:
                bar.update(len(batch.paths) + len(batch.failed))
        seconds = time.perf_counter() - t0
        agreement = None
        if mode == PreprocessMode.fast and agreement_sample > 0 and n:
            paths = [p for p, _ in folder.samples]
            agreement = fast_exact_agreement(runner, spread_sample(paths, agreement_sample), info.image_size, population=len(paths))
    if bar is not None:
        bar.close()
    if n == 0:
        raise DatasetError(f"{data}: no readable images")
    return EvalResult(n, top1 / n, top5 / n, skipped, seconds, [warning] if warning else [], seeded=info.seeded,
                      preprocess_agreement=agreement)
