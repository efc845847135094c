"""Run an artifact (or a plain ONNX model) on images: top-k labels, and accuracy on a labelled folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import ImageCache, eval_batches, scan_image_folder
from ..data.images import find_images, load_batch
from ..engines.registry import artifact_info, open_runner
from ..errors import DatasetError, ImageError
from ..model.labels import imagenet_folder_index
from .verify import topk_hits


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class Prediction:
    image: str
    top: list[tuple[int, str, float]]  # class index, name, probability

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"index": i, "label": n, "score": round(s, 6)} for i, n, s in self.top]}


def predict(artifact: str | Path, images: Sequence[str | Path], top_k: int = 5, batch_size: int = 8) -> list[Prediction]:
    info = artifact_info(artifact)
    scan = find_images(images)
    if not scan.images:
        raise ImageError("no images found in " + ", ".join(map(str, images)))
    names = info.class_names
    k = min(top_k, info.num_classes)
    results: list[Prediction] = []
    with open_runner(artifact) as runner:
        for start in range(0, len(scan.images), batch_size):
            chunk = scan.images[start : start + batch_size]
            probs = softmax(runner.run(load_batch(chunk, info.image_size)))
            for path, p in zip(chunk, probs):
                order = np.argsort(-p)[:k]
                results.append(Prediction(str(path), [(int(i), names[i], float(p[i])) for i in order]))
    return results


@dataclass
class EvalResult:
    images: int
    top1: float
    top5: float
    skipped: int


def folder_labels(classes: list[str], class_names: list[str] | None, num_classes: int) -> list[int]:
    """Map class folders to model outputs: by synset id / index for ImageNet, else by the model's class names."""
    mapping = []
    for folder in classes:
        index = imagenet_folder_index(folder) if num_classes == 1000 else None
        if index is None and class_names and folder in class_names:
            index = class_names.index(folder)
        if index is None and folder.isdigit() and int(folder) < num_classes:
            index = int(folder)
        if index is None:
            raise DatasetError(f"class folder '{folder}' matches no class of the model (use synset ids, class indices or class names)")
        mapping.append(index)
    return mapping


def evaluate(artifact: str | Path, data: str | Path, batch_size: int = 16, progress: Callable[[int, str], Any] | None = None) -> EvalResult:
    info = artifact_info(artifact)
    folder = scan_image_folder(data, min_classes=1)
    mapping = folder_labels(folder.classes, info.class_names, info.num_classes)
    top1 = top5 = 0
    bar = progress(len(folder.samples), "evaluating") if progress else None
    with open_runner(artifact) as runner:
        for batch, labels in eval_batches(folder, info.image_size, batch_size, ImageCache()):
            hit1, hit5 = topk_hits(runner.run(batch), np.array([mapping[label] for label in labels]))
            top1, top5 = top1 + hit1, top5 + hit5
            if bar is not None:
                bar.update(len(labels))
    if bar is not None:
        bar.close()
    n = len(folder.samples)
    return EvalResult(n, top1 / n, top5 / n, len(folder.skipped))
