"""Images for INT8 calibration and for judging the result: two sets that never share a pixel, preprocessed exactly
as at inference, and the reader ONNX Runtime's calibrators pull batches from.

The guard never judges on fewer than :data:`HOLDOUT_SIZE` images. When the user's folder is too small for that (six
photos, say), both sets are made of crops: calibration crops from the left 70 % of every image, held-out crops from
the right 30 %, as the bundled demo data is made. Where each set came from is reported with its size.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.images import find_images, load_image, preprocess
from ..errors import ImageError

log = logging.getLogger(__name__)

HOLDOUT_SIZE = 100
TRAIN_FRACTION = 0.7  # calibration crops from the left 70 % of an image, held-out crops from the right 30 %

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Sample:
    """An image, or a crop of one (left, top, right, bottom in pixels)."""

    path: Path
    box: Box | None = None


@dataclass
class ImageSets:
    calibration: list[Sample]
    holdout: list[Sample]
    skipped: int
    calibration_source: str
    holdout_source: str
    warnings: list[str] = field(default_factory=list)
    users_data: bool = True


def select_images(calib: Path | None, holdout: Path | None, calib_size: int, holdout_size: int = HOLDOUT_SIZE, seed: int = 0) -> ImageSets:
    """Calibration and held-out samples that never overlap; at least ``holdout_size`` held-out ones."""
    if calib is None:
        from ..data.demo_data import default_demo_dir, make_demo_dataset

        demo = make_demo_dataset(default_demo_dir())
        cal = spread([Sample(p) for p in find_images([demo / "train"]).images], calib_size)
        if holdout is not None:
            hold, hold_source, skipped = _holdout_folder(holdout, holdout_size, seed)
        else:
            hold = spread([Sample(p) for p in find_images([demo / "val"]).images], holdout_size)
            hold_source, skipped = f"{len(hold)} crops of the bundled photos (scikit-image), right 30 % of each", 0
        warning = ("calibrating on the bundled demo photos, not your data: INT8 scales fit the images they were calibrated on "
                   "(pass --calib DIR with your own images)")
        return ImageSets(cal, hold, skipped, f"{len(cal)} crops of the bundled photos (scikit-image), left 70 % of each", hold_source,
                         [warning], users_data=False)
    if not calib.exists():
        raise ImageError(f"calibration folder not found: {calib}")
    scan = find_images([calib], check=True)
    if not scan.images:
        raise ImageError(f"{calib}: no readable images (jpg/png/bmp/webp); {len(scan.skipped)} other file(s) skipped")
    if holdout is not None:
        hold, hold_source, hold_skipped = _holdout_folder(holdout, holdout_size, seed)
        held_paths = {s.path for s in hold}
        cal = spread([Sample(p) for p in scan.images if p not in held_paths], calib_size)
        if not cal:
            raise ImageError(f"{calib}: every image is also in --holdout; calibration and held-out images must differ")
        return ImageSets(cal, hold, len(scan.skipped) + hold_skipped, f"{len(cal)} images from {calib}", hold_source)
    if len(scan.images) >= 2 * holdout_size:  # enough to hold out whole images and still calibrate on as many
        held = spread([Sample(p) for p in scan.images], holdout_size)
        held_set = {s.path for s in held}
        cal = spread([Sample(p) for p in scan.images if p not in held_set], calib_size)
        return ImageSets(cal, held, len(scan.skipped), f"{len(cal)} images from {calib}",
                         f"{len(held)} other images from {calib}, spread over the folder")
    cal, hold = split_crops(scan.images, calib_size, holdout_size, seed)
    n = len(scan.images)
    return ImageSets(cal, hold, len(scan.skipped), f"{len(cal)} crops from the left 70 % of {n} image(s) in {calib}",
                     f"{len(hold)} crops from the right 30 % of the same {n} image(s): no pixel in both sets")


def _holdout_folder(folder: Path, holdout_size: int, seed: int) -> tuple[list[Sample], str, int]:
    scan = find_images([folder], check=True)
    if not scan.images:
        raise ImageError(f"{folder}: no readable images for --holdout")
    if len(scan.images) >= holdout_size:
        hold = spread([Sample(p) for p in scan.images], holdout_size)
        return hold, f"{len(hold)} images from {folder}", len(scan.skipped)
    hold = crops(scan.images, 0.0, 1.0, math.ceil(holdout_size / len(scan.images)), random.Random(seed))[:holdout_size]
    return hold, f"{len(hold)} crops of the {len(scan.images)} image(s) in {folder}", len(scan.skipped)


def split_crops(images: list[Path], calib_size: int, holdout_size: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Calibration crops from the left 70 % of every image and held-out crops from the right 30 %."""
    rng = random.Random(seed)
    per_cal = math.ceil(calib_size / len(images))
    per_hold = math.ceil(holdout_size / len(images))
    return crops(images, 0.0, TRAIN_FRACTION, per_cal, rng)[:calib_size], crops(images, TRAIN_FRACTION, 1.0, per_hold, rng)[:holdout_size]


def crops(images: list[Path], x0: float, x1: float, per_image: int, rng: random.Random) -> list[Sample]:
    """``per_image`` square crops (45-100 % of the region's shorter side) from the region [x0, x1) of each image's width."""
    out: list[Sample] = []
    for path in images:
        w, h = load_image(path).size  # upright, as the crops are taken from the upright image
        left, right = int(w * x0), max(int(w * x0) + 1, int(w * x1))
        rw = right - left
        for _ in range(per_image):
            side = max(1, int(min(rw, h) * rng.uniform(0.45, 1.0)))
            x = left + rng.randint(0, rw - side)
            y = rng.randint(0, h - side)
            out.append(Sample(path, (x, y, x + side, y + side)))
    return out


def spread(items: list[Sample], n: int) -> list[Sample]:
    """Up to ``n`` items spread evenly over the (sorted, class-ordered) list."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def image_batches(samples: list[Sample], size: int, batch: int = 16) -> list[np.ndarray]:
    """``samples`` preprocessed as at inference (a crop first, if any), in batches of ``batch``."""
    cache: dict[Path, object] = {}

    def load(s: Sample) -> np.ndarray:
        if s.path not in cache:
            cache[s.path] = load_image(s.path)
        im = cache[s.path]
        return preprocess(im.crop(s.box) if s.box else im, size)  # type: ignore[attr-defined]

    return [np.stack([load(s) for s in samples[i : i + batch]]) for i in range(0, len(samples), batch)]


def rebatch(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The same images in batches of exactly ``size``, for a model exported at a fixed batch: the remainder is dropped
    (it would weigh a repeated image twice in the statistics), unless there are fewer images than one batch."""
    images = np.concatenate(batches)
    if len(images) < size:
        images = np.concatenate([images, np.repeat(images[-1:], size - len(images), axis=0)])
    return [images[i : i + size] for i in range(0, len(images) - size + 1, size)]


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over preprocessed batches, with an optional progress hook."""

    def __init__(self, input_name: str, batches: list[np.ndarray], on_batch: Callable[[], None] | None = None) -> None:
        self.input_name, self.batches, self.on_batch = input_name, batches, on_batch
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        if self.on_batch:
            self.on_batch()
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)
