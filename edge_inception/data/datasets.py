"""ImageFolder trees (one sub-folder per class) for training and evaluation, without torchvision."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, ImageError
from ..names import UnsafeNameError, check_labels
from .images import is_image_name, load_image, normalize, preprocess

log = logging.getLogger(__name__)


@dataclass
class ImageFolder:
    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[Path] = field(default_factory=list)  # unreadable images and non-image files


def scan_image_folder(root: str | Path, *, min_classes: int = 2, check: bool = True, cache: ImageCache | None = None) -> ImageFolder:
    """Read ``root/<class>/**/<image>``; refuse fewer than ``min_classes`` classes or an empty class. ``check`` decodes
    each image (an unreadable one is skipped), into ``cache`` where given, so that its use decodes it no more."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"data folder not found: {base}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < min_classes:
        raise DatasetError(f"{base}: found {len(classes)} class folder(s), need at least {min_classes} (ImageFolder layout: one folder per class)")
    try:  # folder names become class names: printed, and written one per line into labels.txt
        check_labels(classes, f"{base}: class folder names")
    except UnsafeNameError as exc:
        raise DatasetError(str(exc)) from None
    samples: list[tuple[Path, int]] = []
    skipped: list[Path] = []
    for label, cls in enumerate(classes):
        found = 0
        for f in sorted((base / cls).rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if not is_image_name(f):
                skipped.append(f)
                continue
            if check:
                try:
                    cache.get(f) if cache is not None else load_image(f)
                except ImageError:
                    skipped.append(f)
                    continue
            samples.append((f, label))
            found += 1
        if found == 0:
            raise DatasetError(f"{base}: class '{cls}' has no readable images")
    if skipped:
        log.warning("%s: skipped %d unreadable or non-image file(s), e.g. %s", base, len(skipped), skipped[0])
    return ImageFolder(base, classes, samples, skipped)


def random_resized_crop(image, size: int, rng: random.Random, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style augmentation (the paper's 'random crops of various sizes and aspect ratios')."""
    from PIL import Image

    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def train_sample(image, size: int, rng: random.Random) -> np.ndarray:
    from PIL import Image

    crop = random_resized_crop(image, size, rng)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(crop)


class ImageCache:
    """Decoded images kept in memory, at most ``max_bytes`` of them (Pillow keeps RGB as 4 bytes a pixel; the least
    recently used let go first): a folder is decoded once to find its unreadable files (:func:`scan_image_folder`) and
    again to use them (:func:`eval_batches`, each training epoch); a small set is decoded once for all of them, a large
    one costs what it did without the cache, never memory beyond the bound. Keyed by path: for one command's run over
    files it does not change."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        from collections import OrderedDict

        self._images: OrderedDict[Path, Any] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes

    def get(self, path: Path):  # -> PIL.Image.Image
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        image = load_image(path)
        size = 4 * image.width * image.height
        if size <= self.max_bytes:
            self._images[path] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= 4 * old.width * old.height
        return image


def eval_batches(folder: ImageFolder, image_size: int, batch_size: int, cache: ImageCache | None = None):
    """Yield (N x 3 x S x S float32, labels) in file order, preprocessed as at inference."""
    for start in range(0, len(folder.samples), batch_size):
        chunk = folder.samples[start : start + batch_size]
        images = [cache.get(p) if cache else load_image(p) for p, _ in chunk]
        yield np.stack([preprocess(im, image_size) for im in images]), np.array([label for _, label in chunk])
