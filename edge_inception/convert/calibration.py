"""Images for INT8 calibration and for judging the result: two lists that never overlap, preprocessed exactly as at
inference, and the reader ONNX Runtime's calibrators pull batches from."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import find_images, load_batch
from ..errors import ImageError

log = logging.getLogger(__name__)

HOLDOUT_SIZE = 100


@dataclass
class ImageSets:
    calibration: list[Path]
    holdout: list[Path]
    skipped: int
    source: str
    warning: str | None = None


def select_images(calib: Path | None, holdout: Path | None, calib_size: int, holdout_size: int = HOLDOUT_SIZE) -> ImageSets:
    """Calibration and held-out image lists that never overlap."""
    if calib is None:
        from ..data.demo_data import default_demo_dir, make_demo_dataset

        demo = make_demo_dataset(default_demo_dir())
        calib_scan = find_images([demo / "train"])
        hold = find_images([holdout]) if holdout else find_images([demo / "val"])
        warning = "calibrating on the bundled demo photos; calibration on your own images (--calib DIR) gives better INT8 scales"
        return ImageSets(spread(calib_scan.images, calib_size), spread(hold.images, holdout_size), 0, "bundled photos (scikit-image)", warning)
    if not calib.exists():
        raise ImageError(f"calibration folder not found: {calib}")
    scan = find_images([calib], check=True)
    if not scan.images:
        raise ImageError(f"{calib}: no readable images (jpg/png/bmp/webp); {len(scan.skipped)} other file(s) skipped")
    if holdout is not None:
        hold_scan = find_images([holdout], check=True)
        held = hold_scan.images
        held_set = set(held)
        calib_images = [p for p in scan.images if p not in held_set]
        skipped = len(scan.skipped) + len(hold_scan.skipped)
    else:
        # every 5th image is held out for the accuracy report, the rest calibrates
        held = scan.images[4::5] or scan.images[-1:]
        held_set = set(held)
        calib_images = [p for p in scan.images if p not in held_set] or scan.images
        skipped = len(scan.skipped)
    if len(calib_images) == len(scan.images) and holdout is None:
        log.warning("only one image: the accuracy report reuses a calibration image")
    return ImageSets(spread(calib_images, calib_size), spread(held, holdout_size), skipped, str(calib))


def spread(items: list[Path], n: int) -> list[Path]:
    """Up to ``n`` items spread evenly over the (sorted, class-ordered) list."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def image_batches(paths: list[Path], size: int, batch: int = 16) -> list[np.ndarray]:
    """``paths`` preprocessed as at inference, in batches of ``batch``."""
    return [load_batch(paths[i : i + batch], size) for i in range(0, len(paths), batch)]


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
