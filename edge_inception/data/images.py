"""Images in, normalised NCHW float32 batches out, exactly as at inference.

Preprocessing is torchvision's classification transform: resize the shorter side to ``size * 256 / 224``
(256 for 224), centre-crop ``size``, scale to [0, 1], subtract the ImageNet mean and divide by its std.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageError, require_modules
from ..limits import MAX_ASPECT_RATIO, MAX_DECODED_PIXELS
from ..vocab import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def resize_size_for(image_size: int) -> int:
    return round(image_size * 256 / 224)


def load_image(path: str | Path):  # -> PIL.Image.Image
    """Open an image as 8-bit RGB, upright, as a viewer shows it; anything unusable is an :class:`ImageError`.

    Width x height and aspect ratio are checked from the header before any pixel is decoded (a 48 KB PNG can claim
    20000 x 20000 pixels). The EXIF orientation is applied (phones store photos sideways with a rotation tag),
    16-bit and 32-bit greyscale are scaled to 8 bits rather than clipped, and transparency goes over white.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        with Image.open(p) as opened:
            check_header(opened.size, p)
            opened.load()
            return to_rgb(opened)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, in open(), for claims far beyond ours
        raise ImageError(f"{p}: refusing to decode, {str(exc).split(',')[0].lower()} (the limit here is "
                         f"{MAX_DECODED_PIXELS / 1e6:.0f} MP)") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"not a readable image: {p}") from exc


def check_header(size: tuple[int, int], path: Path) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{path}: image has no pixels ({w} x {h})")
    if w * h > MAX_DECODED_PIXELS:
        raise ImageError(f"{path}: {w} x {h} pixels ({w * h / 1e6:.0f} MP) is more than the {MAX_DECODED_PIXELS / 1e6:.0f} MP this toolkit decodes")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageError(f"{path}: {w} x {h} pixels is more elongated than {MAX_ASPECT_RATIO:.0f}:1; crop it first")


def to_rgb(image):  # PIL.Image.Image -> PIL.Image.Image
    """Any decoded image -> 8-bit RGB, upright (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(image) or image
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            full = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        else:  # 16-bit PNG/TIFF, also when Pillow opens it as 32-bit "I"
            full = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0.0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a / full * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa"):
        # transparent pixels over white, not black
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def preprocess(image, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """PIL RGB image -> 3 x size x size float32, normalised."""
    from PIL import Image

    short = resize_size_for(image_size)
    w, h = image.size
    scale = short / min(w, h)
    new_w, new_h = max(short, round(w * scale)), max(short, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    return normalize(image.crop((left, top, left + image_size, top + image_size)), mean, std)


def normalize(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """PIL RGB image -> 3 x H x W float32 in [0, 1], minus ``mean``, divided by ``std``."""
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    normed = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)


def load_batch(paths: Sequence[str | Path], image_size: int = 224) -> np.ndarray:
    """Preprocess every path into one N x 3 x S x S batch; a bad image raises."""
    if not paths:
        raise ImageError("no images given")
    return np.stack([preprocess(load_image(p), image_size) for p in paths])


@dataclass
class ImageScan:
    images: list[Path]
    skipped: list[Path]  # files with another extension, or that did not decode


def find_images(inputs: Iterable[str | Path], *, recursive: bool = True, check: bool = False) -> ImageScan:
    """Files and folders (recursively) to a sorted list of images; other files are counted as skipped.

    With ``check`` every image is decoded once so unreadable files are skipped too.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(p.glob(pattern)):
                if f.is_file() and not f.name.startswith("."):
                    (images if f.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(f)
        elif p.is_file():
            images.append(p)
        else:
            matches = sorted(Path().glob(str(item))) if any(c in str(item) for c in "*?[") else []
            if not matches:
                if "://" in str(item):
                    raise ImageError(f"{item} is a URL: predict, eval and quantize read local files (download it first)")
                raise ImageError(f"no such image or folder: {item}")
            sub = find_images(matches, recursive=recursive, check=False)
            images += sub.images
            skipped += sub.skipped
    if check:
        good = []
        for f in images:
            try:
                load_image(f)
                good.append(f)
            except ImageError:
                skipped.append(f)
        images = good
    return ImageScan(images, skipped)


def bundled_photos_dir() -> Path:
    """scikit-image's bundled photos (shipped in its wheel, no download): the workstation's extra, not the device's."""
    require_modules("the bundled photos (demo data, default calibration, reference images)", "skimage")
    import skimage

    return Path(skimage.__file__).parent / "data"


# Real photographs among scikit-image's bundled data (synthetic images like the phantom are left out).
BUNDLED_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


def bundled_photos() -> list[Path]:
    base = bundled_photos_dir()
    found = [base / name for name in BUNDLED_PHOTOS if (base / name).is_file()]
    if not found:
        raise ImageError(f"scikit-image's bundled photos were not found in {base}")
    return found
