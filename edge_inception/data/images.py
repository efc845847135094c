"""Images in, normalised NCHW float32 batches out, exactly as at inference.

Preprocessing is torchvision's classification transform: resize the shorter side to ``size * 256 / 224``
(256 for 224), centre-crop ``size``, scale to [0, 1], subtract the ImageNet mean and divide by its std.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import ImageError, require_modules
from ..limits import MAX_ASPECT_RATIO, MAX_DECODED_PIXELS, LimitError
from ..vocab import IMAGENET_MEAN, IMAGENET_STD, PreprocessMode

log = logging.getLogger(__name__)

# The one list of image file names every command reads (predict, eval, calibration, training folders, stream folders):
# the formats Pillow decodes that photos and data sets come in.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".gif",
                              ".ppm", ".pgm", ".pbm", ".pnm"})


IMAGE_KINDS = "jpg/png/bmp/webp/tiff/gif/ppm"  # IMAGE_EXTENSIONS in a few words, for messages


def is_image_name(path: str | Path) -> bool:
    """True if the file name ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def resize_size_for(image_size: int) -> int:
    """The short side before the centre crop: 256 for 224 (torchvision's classification transform)."""
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class Geometry:
    """Where torchvision's ``Resize(short)`` + ``CenterCrop(crop)`` puts an image, in pixels.

    ``resized``: (width, height) after the resize; ``box``: (left, top, right, bottom) of the crop in resized pixels.
    """

    resized: tuple[int, int]
    box: tuple[int, int, int, int]


def reference_geometry(width: int, height: int, image_size: int = 224) -> Geometry:
    """torchvision's geometry to the pixel (``transforms.functional``: ``_compute_resized_output_size`` and ``center_crop``).

    The short side becomes ``resize_size_for(image_size)`` and the long side ``int(short * long / short_in)`` (truncated,
    not rounded); the crop starts at ``int(round((side - crop) / 2.0))`` (rounded, not floored).
    """
    short_out = resize_size_for(image_size)
    if width <= height:
        new_w, new_h = short_out, int(short_out * height / width)
    else:
        new_w, new_h = int(short_out * width / height), short_out
    left, top = int(round((new_w - image_size) / 2.0)), int(round((new_h - image_size) / 2.0))
    return Geometry((new_w, new_h), (left, top, left + image_size, top + image_size))


def load_image(path: str | Path):  # -> PIL.Image.Image
    """Open an image as 8-bit RGB, upright, as a viewer shows it; anything unusable is an :class:`ImageError`.

    Width x height and aspect ratio are checked from the header before any pixel is decoded (a 48 KB PNG can claim
    20000 x 20000 pixels). The EXIF orientation is applied (phones store photos sideways with a rotation tag),
    16-bit and 32-bit greyscale are scaled to 8 bits rather than clipped, and transparency goes over white.
    """
    from PIL import UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        with opened_image(p, p) as opened:
            opened.load()
            return to_rgb(opened)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"not a readable image: {p}") from exc


def _pillow_bounded() -> None:
    """Pillow's own bomb limit set to :data:`MAX_DECODED_PIXELS` (its error is for more than twice ``MAX_IMAGE_PIXELS``),
    and its DecompressionBombWarning (over half of it) not printed: :func:`check_header` sees only the size ``open()``
    reports, while Pillow checks, with its own limit, the pictures it opens inside an image (an ICO's or ICNS's embedded
    PNG, which ``open()`` decodes, a GIF frame larger than its screen): a 0.5 MB ``.ico`` holding a 13000 x 13000 PNG
    was decoded (674 MB) before it was refused. Pillow's "Image was not the expected size" (an ICO whose PNG differs
    from its directory) is not printed either. Installed for the process at each open (a caller's
    ``warnings.catch_warnings`` may have reset the filters since; Python drops the duplicate)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS // 2  # Pillow refuses more than twice this: 64 MP
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", message="Image was not the expected size", category=UserWarning)


@contextlib.contextmanager
def opened_image(source: str | Path | IO[bytes], where: Path) -> Iterator[Any]:  # -> PIL.Image.Image
    """Pillow's ``Image.open(source)`` with its header checked (:func:`check_header`, nothing decoded yet), the one way
    the toolkit opens an image. Pillow's own bomb limit is set to ours (:func:`_pillow_bounded`): a picture it opens
    or decodes inside the file beyond it (an ICO's PNG, a frame, a tile) is the same :class:`ImageError`. ``where``
    names the image in errors. Pillow's own errors for an unreadable file pass through (the caller says "not a
    readable image")."""
    from PIL import Image

    _pillow_bounded()
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:  # Pillow's check in open(), of the header or of a picture inside
        raise _too_large(exc, where) from None
    with image:
        check_header(image.size, where)
        try:
            yield image
        except Image.DecompressionBombError as exc:  # a picture inside it (a frame, a tile) beyond the bound, met decoding
            raise _too_large(exc, where) from None


def _too_large(exc: Exception, where: Path) -> ImageError:
    """Pillow's DecompressionBombError as the toolkit's one line (the size it found, the bound)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.6g} MP" if found else "its size"  # 64.008 MP, not a rounded "64 MP"
    return ImageError(f"{where}: {size} is more than the {MAX_DECODED_PIXELS / 1e6:.0f} MP this toolkit decodes")


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
    if im.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in im.info:
        # transparent pixels over white, not black; an RGB / L / P image's colour key (PNG tRNS, GIF) counts too:
        # converting to RGBA first turns the key into alpha
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def preprocess(image, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """PIL RGB image -> 3 x size x size float32, normalised: the reference transform (torchvision's ``Resize`` with
    Pillow's antialiased bilinear filter, then ``CenterCrop``, ``ToTensor``, ``Normalize``), see :func:`reference_geometry`."""
    from PIL import Image

    g = reference_geometry(image.size[0], image.size[1], image_size)
    image = image.resize(g.resized, Image.Resampling.BILINEAR)
    return normalize(image.crop(g.box), mean, std)


def normalize(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """PIL RGB image -> 3 x H x W float32 in [0, 1], minus ``mean``, divided by ``std``."""
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    normed = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)


def load_batch(paths: Sequence[str | Path], image_size: int = 224, mode: PreprocessMode = PreprocessMode.exact) -> np.ndarray:
    """Preprocess every path into one N x 3 x S x S float32 batch (``mode``: see :func:`load_tensor`); a bad image raises."""
    if not paths:
        raise ImageError("no images given")
    return np.stack([load_tensor(p, image_size, mode) for p in paths])


# The fast path decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) but keeps at least this many times the
# resize's short side, so the antialiased resize that follows still averages over real pixels (measured: margin 2 keeps
# top-1 agreement with the reference >= 99.5 % on real photos, see benchmarks/stream_goals.py).
DRAFT_MARGIN = 2.0


def load_tensor(path: str | Path, image_size: int = 224, mode: PreprocessMode = PreprocessMode.fast) -> np.ndarray:
    """An image file -> 3 x S x S float32, normalised, as the model takes it.

    ``exact`` is :func:`load_image` then :func:`preprocess`. ``fast`` decodes a large JPEG at 1/2, 1/4 or 1/8 scale in the
    DCT domain (:func:`decode_for`) and resamples only the centre crop's pixels from it (:func:`crop_resize`, with the
    reference geometry of the full-size upright image); every image decoded at full size (PNG, TIFF, BMP, WebP, GIF,
    a JPEG too small to reduce) goes through :func:`preprocess` itself, so its tensor is the reference's, bit for bit.
    Raises :class:`ImageError` for anything unreadable.
    """
    if mode == PreprocessMode.exact:
        return preprocess(load_image(path), image_size)
    image, full, scale = _decode_reduced(path, image_size)
    if scale is None:
        # Decoded at full size: the reference transform itself. Resampling only the crop (Pillow's resize(box=...)) is
        # not the same arithmetic: Pillow takes the box as 32-bit floats and picks its own pass order, which moved
        # pixels by one level; the full resize costs little beside the decode (measured in the README).
        return preprocess(image, image_size)
    return crop_resize(image, full, image_size, scale=scale)


def decode_for(path: str | Path, image_size: int = 224):  # -> tuple[PIL.Image.Image, tuple[int, int]]
    """Decode only the pixels an ``image_size`` input needs: (upright RGB image, its full upright (width, height)).

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``Image.draft``) while its short side stays
    at least ``DRAFT_MARGIN`` x the resize's; other formats are decoded fully. Checks as :func:`load_image`.
    """
    image, full, _ = _decode_reduced(path, image_size)
    return image, full


def _decode_reduced(path: str | Path, image_size: int):  # -> tuple[PIL.Image.Image, tuple[int, int], tuple[float, float] | None]
    """:func:`decode_for`, plus the DCT scale the image was decoded at (pixels per full-size pixel, x and y), None when
    it was decoded at full size. libjpeg's 1/s output is ``ceil(side / s)`` pixels wide, its last one partly outside
    the picture, so the scale is 1/s exactly, not the ratio of the sizes."""
    from PIL import UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        with opened_image(p, p) as opened:
            full = opened.size
            scale: tuple[float, float] | None = None
            if opened.format == "JPEG":
                k = DRAFT_MARGIN * resize_size_for(image_size) / min(full)
                if k < 1.0:
                    drafted = opened.draft("RGB", (int(full[0] * k) + 1, int(full[1] * k) + 1))
                    if drafted is not None and opened.size != full:
                        box = drafted[1]  # (0, 0, width / s, height / s): the full picture in decoded pixels
                        scale = (box[2] / full[0], box[3] / full[1])
            if opened.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that swap width and height
                full = (full[1], full[0])
                scale = (scale[1], scale[0]) if scale else None
            opened.load()
            return to_rgb(opened), full, scale
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"not a readable image: {p}") from exc


def crop_resize(image, full_size: tuple[int, int] | None = None, image_size: int = 224,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                scale: tuple[float, float] | None = None) -> np.ndarray:
    """An upright RGB PIL image -> 3 x S x S float32: the reference resize + centre crop, resampling only the crop.

    ``full_size`` is the upright (width, height) the geometry is computed for (default the image's own): a JPEG
    decoded at a reduced scale keeps the geometry of its full size. ``scale``: the image's pixels per full-size pixel
    (x, y); default the ratio of the sizes (a JPEG decoded at 1/s passes exactly 1/s, see :func:`decode_for`).
    Pillow's ``resize(box=...)`` places each output pixel where the full resize would, with the same filter support,
    but not with the same arithmetic (the box is rounded to 32-bit floats): at full scale the result is within one
    level of :func:`preprocess`, not equal to it (:func:`load_tensor` calls :func:`preprocess` there).
    """
    from PIL import Image

    w, h = image.size
    fw, fh = full_size or (w, h)
    g = reference_geometry(fw, fh, image_size)
    if scale is None:
        sx, sy = w / g.resized[0], h / g.resized[1]  # image pixels per resized pixel
    else:
        sx, sy = scale[0] * fw / g.resized[0], scale[1] * fh / g.resized[1]
    left, top, right, bottom = g.box
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR,
                         box=(left * sx, top * sy, min(right * sx, w), min(bottom * sy, h)))
    return normalize(image, mean, std)


@dataclass
class ImageScan:
    images: list[Path]
    skipped: list[Path]  # files with another extension, or that did not decode


GLOB_MAGIC = "*?["
MAX_FOUND = 2_000_000  # files one folder or pattern may give (ImageNet's training set is 1.28 M): a bound on memory


def split_glob(pattern: str | Path) -> tuple[Path, str] | None:
    """A glob pattern as (the folder its matches lie under: the path before the first part with ``*``, ``?`` or ``[``,
    the pattern relative to it); None when ``pattern`` has no such part (a plain path)."""
    parts = Path(pattern).parts
    first = next((i for i, part in enumerate(parts) if any(c in part for c in GLOB_MAGIC)), None)
    if first is None:
        return None
    return Path(*parts[:first]) if first else Path("."), "/".join(parts[first:])


def _bounded(paths: Iterable[Path], what: object) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if len(found) == MAX_FOUND:
            raise ImageError(f"{what}: more than {MAX_FOUND:,} files; give a smaller folder or pattern")
        found.append(path)
    return sorted(found)


def glob_paths(pattern: str | Path) -> list[Path]:
    """The paths ``pattern`` matches (``**``: any depth), sorted, at most :data:`MAX_FOUND` (ImageError beyond).
    ``**`` never follows a link to a folder (pathlib's rule; ``glob.glob`` followed them, so ``f/a -> .`` made the walk
    exponential and a link to ``/`` walked the whole disk)."""
    split = split_glob(pattern)
    if split is None:
        return [Path(pattern)] if os.path.lexists(pattern) else []
    anchor, rel = split
    if not anchor.is_dir():
        return []
    hidden = any(part.startswith(".") for part in rel.split("/"))  # as glob.glob: '*' matches no name that starts with '.'

    def shown(m: Path) -> bool:
        return hidden or not any(part.startswith(".") for part in m.relative_to(anchor).parts)

    try:
        return _bounded((m for m in anchor.glob(rel) if shown(m)), pattern)
    except ValueError as exc:  # a pattern pathlib does not take ('**' inside a name, an empty part)
        raise ImageError(f"{pattern}: not a usable glob pattern ({exc})") from None


def find_images(inputs: Iterable[str | Path], *, recursive: bool = True, check: bool = False,
                decode: Callable[[Path], Any] | None = None) -> ImageScan:
    """Files and folders (recursively) to a sorted list of images; other files are counted as skipped.

    With ``check`` every image is decoded once so unreadable files are skipped too: by ``decode`` (default
    :func:`load_image`; one that keeps what it decodes makes the check's decode the one the caller uses).
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in _bounded(p.glob(pattern), p):
                if f.is_file() and not f.name.startswith("."):
                    (images if is_image_name(f) else skipped).append(f)
        elif p.is_file():
            images.append(p)
        elif p.exists():  # a FIFO, a device, a socket: never opened (a FIFO would block the read forever)
            raise ImageError(f"{p}: not a regular file or folder")
        else:
            matches = glob_paths(item) if split_glob(item) is not None else []
            if not matches:
                if "://" in str(item):
                    raise ImageError(f"{item} is a URL: predict, eval and quantize read local files (download it first)")
                raise ImageError(f"no such image or folder: {item}")
            # a FIFO a pattern matched, or a link to a folder (never walked: 'a -> .' loops, 'r -> /' is the whole disk):
            # skipped, as in a folder
            usable = [m for m in matches if m.is_file() or (m.is_dir() and not m.is_symlink())]
            kept = set(usable)
            skipped += [m for m in matches if m not in kept]
            sub = find_images(usable, recursive=recursive, check=False)
            images += sub.images
            skipped += sub.skipped
    if check:
        images, unreadable = _decodable(images, decode or load_image)
        skipped += unreadable
    return ImageScan(images, skipped)


def _decodable(images: list[Path], decode: Callable[[Path], Any]) -> tuple[list[Path], list[Path]]:
    """``images`` split by one ``decode`` each (:func:`load_image`, or a caller's that keeps what it decodes): those that
    decode, and those that do not (ImageError)."""
    good: list[Path] = []
    bad: list[Path] = []
    for f in images:
        try:
            decode(f)
            good.append(f)
        except ImageError:
            bad.append(f)
    return good, bad


def scan_photo_folder(root: str | Path, what: str, max_images: int, decode: Callable[[Path], Any] | None = None) -> ImageScan:
    """The images of a folder of photos the user gives (flat, or an ImageFolder tree: one sub-folder per class; the class
    names are not used), each decoded once (by ``decode``, as :func:`find_images`'s check): unreadable files and files of
    another kind are counted in ``skipped``.
    Hidden files and folders are left out, as everywhere. A link may point inside ``root`` (its target is read there, or
    skipped if it is a folder: the walk reaches it by its own path) but never outside it: a folder of photos kept apart
    must not quietly read other files. ``what`` names the option in messages (``--holdout``).

    Raises ImageError for a missing folder, a file given instead, a link leaving ``root``, or no readable image;
    LimitError for more than ``max_images`` image files (counted before any is decoded).
    """
    base = Path(root)
    if not base.is_dir():
        raise ImageError(f"{what} {base}: " + ("not a folder (give a folder of images)" if base.exists() else "no such folder"))
    real = base.resolve()
    images: list[Path] = []
    skipped: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            entry = here / name
            if not entry.is_symlink():
                continue
            try:
                target = entry.resolve()
            except (RuntimeError, OSError):  # a loop of links (Python 3.11's resolve raises RuntimeError): it reads nothing, skipped below
                continue
            if not target.is_relative_to(real):
                raise ImageError(f"{what} {base}: {entry} is a link to {target}, outside the folder (copy the photo in instead)")
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and not (here / n).is_symlink())
        for name in sorted(filenames):
            f = here / name
            if name.startswith("."):
                continue
            if not f.is_file() or not is_image_name(f):  # a FIFO or device is never opened; another kind of file is counted
                skipped.append(f)
                continue
            images.append(f)
            if len(images) > max_images:
                raise LimitError(f"{what} {base}: more than {max_images} image files, the most one run judges")
    good, unreadable = _decodable(images, decode or load_image)
    skipped += unreadable
    if not good:
        raise ImageError(f"{what} {base}: no readable images ({IMAGE_KINDS}); {len(skipped)} other file(s) skipped")
    return ImageScan(good, skipped)


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


@dataclass
class TensorBatch:
    """Up to ``batch_size`` files preprocessed: ``tensors`` (N x 3 x S x S float32) for ``paths``; ``failed``: the
    files of the chunk that did not decode (with their one-line reasons)."""

    paths: list[Path]
    tensors: np.ndarray
    failed: list[tuple[Path, str]]


def load_chunk(chunk: Sequence[Path], image_size: int, mode: PreprocessMode) -> TensorBatch:
    """``chunk``'s files preprocessed, those that do not decode in ``failed`` (not raised)."""
    good: list[Path] = []
    arrays: list[np.ndarray] = []
    failed: list[tuple[Path, str]] = []
    for p in chunk:
        try:
            arrays.append(load_tensor(p, image_size, mode))
            good.append(p)
        except ImageError as exc:
            failed.append((p, str(exc)))
    tensors = np.stack(arrays) if arrays else np.zeros((0, 3, image_size, image_size), np.float32)
    return TensorBatch(good, tensors, failed)


def prefetch_batches(paths: Sequence[Path], image_size: int, mode: PreprocessMode, batch_size: int, ahead: int = 2) -> Iterator[TensorBatch]:
    """Yield a :class:`TensorBatch` per ``batch_size`` files in order, decoded and preprocessed in a background thread
    up to ``ahead`` batches ahead of the consumer (Pillow's decoders and the runtimes release the GIL, so decoding
    overlaps inference). Unreadable files are reported in ``failed``, not raised."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        next_chunk = 0
        try:
            while pending or next_chunk < len(chunks):
                while next_chunk < len(chunks) and len(pending) < ahead:
                    pending.append(pool.submit(load_chunk, chunks[next_chunk], image_size, mode))
                    next_chunk += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
