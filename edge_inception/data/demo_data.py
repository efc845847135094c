"""A tiny labelled data set made offline from real photos, for the demo, the README and the tests.

One class per photo from scikit-image's bundled data. Each photo is split vertically: training crops come
from its left 70 %, held-out crops from its right 30 %, so no held-out pixel was ever seen in training (or
in INT8 calibration, which draws from the training split). ``holdout/`` holds the bundled photos that are no class's
(:data:`HOLDOUT_PHOTOS`), whole and byte for byte: photos none of the demo's crops come from, for ``pipeline --holdout``
(4 photos: enough to show the mechanism, far from the 268 a 99 % claim needs).
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
from pathlib import Path

from ..errors import EdgeInceptionError
from ..fileio import atomic_dir, builders_lock, foreign_entries, read_output_index, read_text, sha256_file
from .images import BUNDLED_PHOTOS, bundled_photos_dir, load_image

log = logging.getLogger(__name__)

DEMO_CLASSES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cat": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "galaxies": "hubble_deep_field.jpg",
    "motorcycle": "motorcycle_left.png",
    "rocket": "rocket.jpg",
}
TRAIN_FRACTION = 0.7
DEMO_VERSION = 2  # 2: holdout/
# the bundled photos that are no demo class's: never cropped into train/ or val/
HOLDOUT_PHOTOS = tuple(p for p in BUNDLED_PHOTOS if p not in DEMO_CLASSES.values())


def make_demo_dataset(
    out_dir: str | Path,
    *,
    train_per_class: int = 40,
    val_per_class: int = 10,
    crop_px: int = 128,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/train/<class>/*.png``, ``out_dir/val/<class>/*.png`` and ``out_dir/holdout/`` (the
    :data:`HOLDOUT_PHOTOS`, copied); return ``out_dir``.

    Existing complete output is reused (a ``VERSION`` file marks it complete). Processes that make the same folder at
    once (two commands' first run on a fresh cache folder) make it once: the others wait (:func:`builders_lock` on its
    parent) and reuse it, so a complete folder one of them is reading is never replaced under it.
    """
    out = Path(out_dir)
    stamp = f"{DEMO_VERSION} {train_per_class} {val_per_class} {crop_px} {seed}"  # VERSION's content: what made the folder
    if _complete(out, stamp):
        return out
    with builders_lock(out.parent):
        if _complete(out, stamp):  # made meanwhile by another process
            return out
        return _make(out, stamp, train_per_class, val_per_class, crop_px, seed)


def _complete(out: Path, stamp: str) -> bool:
    """``out`` is the demo set ``stamp`` describes, whole: its VERSION says so, and its index (``edge-inception.json``)
    accounts for everything in it with the sha256 of each file (the marker alone was trusted: a folder with photos
    deleted or files added was reused as it stood)."""
    with contextlib.suppress(EdgeInceptionError, OSError):  # missing, too large, not a regular file, not ours: made again
        if read_text(out / "VERSION", 1024, "demo data marker").strip() != stamp:
            return False
        index = read_output_index(out)
        return index is not None and not foreign_entries(out, index) and all(
            sha256_file(out / rel) == digest for rel, digest in index["files"].items())
    return False


def _make(out: Path, stamp: str, train_per_class: int, val_per_class: int, crop_px: int, seed: int) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    base = bundled_photos_dir()
    with atomic_dir(out, replace=True, index={"what": "demo data set"}) as tmp:  # ours only: check_replaceable
        for cls, filename in DEMO_CLASSES.items():
            photo = load_image(base / filename)
            w, h = photo.size
            split = int(w * TRAIN_FRACTION)
            regions = {"train": (0, split, train_per_class), "val": (split, w, val_per_class)}
            for subset, (x0, x1, count) in regions.items():
                folder = tmp / subset / cls
                folder.mkdir(parents=True)
                rw = x1 - x0
                for i in range(count):
                    side = int(min(rw, h) * rng.uniform(0.45, 1.0))
                    left = x0 + rng.randint(0, rw - side)
                    top = rng.randint(0, h - side)
                    crop = photo.crop((left, top, left + side, top + side)).resize((crop_px, crop_px), Image.Resampling.BILINEAR)
                    # zlib level 1: the same pixels (PNG is lossless), 2.6x faster to write (1.7 vs 4.5 ms a crop), 4 % larger
                    crop.save(folder / f"{cls}_{i:03d}.png", compress_level=1)
        (tmp / "holdout").mkdir()
        for name in HOLDOUT_PHOTOS:
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / "holdout" / name)
        (tmp / "VERSION").write_text(stamp + "\n")
    log.info("demo data set written to %s (%d classes)", out, len(DEMO_CLASSES))
    return out


def default_demo_dir() -> Path:
    from ..fileio import cache_dir

    return cache_dir() / f"demo-v{DEMO_VERSION}"
