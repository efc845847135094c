"""ImageFolder trees (one sub-folder per class) for training and evaluation, without torchvision."""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
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
    recently used let go first; an image larger than that alone is not kept): a folder is decoded once to find its
    unreadable files (:func:`scan_image_folder`) and again to use them (:func:`eval_batches`, each training epoch); a small
    set is decoded once for all of them, a large one costs what it did without the cache, never memory beyond the bound.
    Keyed by path (for one command's run over files it does not change) or by the caller's ``key`` (calibration's
    ``decoded``: the file's identity and times). Safe to share between threads. An image returned is shared: crop or copy
    it, never change it in place."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self._images: OrderedDict[Hashable, Any] = OrderedDict()  # the most recently used last
        self._lock = threading.Lock()
        self.bytes = 0
        self.max_bytes = max_bytes

    def get(self, path: Path, key: Hashable | None = None, keep: Callable[[], bool] | None = None):  # -> PIL.Image.Image
        """:func:`load_image` of ``path``, kept under ``key`` (default: the path) unless ``keep()``, asked once it is
        decoded, says no. Raises ImageError as load_image does."""
        key = path if key is None else key
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        image = load_image(path)
        size = _held_bytes(image)
        if size <= self.max_bytes and (keep is None or keep()):
            with self._lock:
                if key not in self._images:
                    self._images[key] = image
                    self.bytes += size
                while self.bytes > self.max_bytes:
                    self.bytes -= _held_bytes(self._images.popitem(last=False)[1])
        return image

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._images)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.bytes = 0


def _held_bytes(image: Any) -> int:
    """Memory a decoded image holds: Pillow stores an RGB image (all :func:`load_image` returns) as 4 bytes a pixel."""
    return int(image.width * image.height * 4)


def eval_batches(folder: ImageFolder, image_size: int, batch_size: int, cache: ImageCache | None = None):
    """Yield (N x 3 x S x S float32, labels) in file order, preprocessed as at inference."""
    for start in range(0, len(folder.samples), batch_size):
        chunk = folder.samples[start : start + batch_size]
        images = [cache.get(p) if cache else load_image(p) for p, _ in chunk]
        yield np.stack([preprocess(im, image_size) for im in images]), np.array([label for _, label in chunk])
