"""Images for INT8 calibration and for judging the result, preprocessed exactly as at inference, and the reader ONNX
Runtime's calibrators pull batches from. Every photo the user gave calibrates the written model; every photo is judged
only by a model that was not calibrated on it (cross-fitting by photo).

* selection: photos (2 in 10) the calibration method and the guard's float stages are chosen on, by models calibrated
  on the other photos (the *calibration* role);
* verdict: every other photo, in up to :data:`CROSS_FOLDS` folds; fold k's photos are judged by the chosen recipe
  calibrated on every photo outside fold k (selection photos included), and the folds' answers are pooled, so the
  verdict counts all of them as distinct photos no model judging them was calibrated on or chose anything on;
* final: the written model is calibrated on every photo.

With ``--holdout DIR`` that folder is the verdict, judged by the final model (calibrated on every ``--calib`` photo): every
distinct photo in it (:func:`scan_holdout`), none of them calibrated on or chosen on (a ``--calib`` photo also in it is left
out of calibration, and the report says so).

Roles are split by distinct source image, not by crops: crops of one photo are near-copies for a quantizer, so a verdict
on crops of the calibration photos says little about new photos. A role with fewer images than it needs samples uses
several random crops of each of its images; the report states how many distinct images each role had. When the user's
folder is too small to support a claim by itself, the verdict is repeated on bundled photos (scikit-image) that are not
among the calibration images, reported separately.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.datasets import ImageCache
from ..data.images import IMAGE_KINDS, find_images, preprocess, scan_photo_folder
from ..errors import EdgeInceptionError, ImageError
from ..limits import MAX_HOLDOUT_IMAGES

log = logging.getLogger(__name__)

HOLDOUT_SIZE = 100  # samples the selection (and a crop-based verdict) uses at least
VERDICT_SIZE = 300  # the most whole images the verdict judges on
SELECTION_SHARE, VERDICT_SHARE = 0.2, 0.3  # of the user's distinct images (VERDICT_SHARE: --holdout's split, unused now)
# Folds of the verdict photos: each costs one more calibration with the chosen method (the peers' k-fold practice:
# leave-one-out would cost one calibration per photo; 3 folds keep the run within ~2x a single calibration of each method)
CROSS_FOLDS = 3

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Sample:
    """An image, or a crop of one (left, top, right, bottom in pixels)."""

    path: Path
    box: Box | None = None


@dataclass
class Role:
    """One role's samples, drawn from ``images`` distinct source images."""

    samples: list[Sample]
    source: str

    @property
    def images(self) -> int:
        return len({s.path for s in self.samples})

    def photos_sha256(self) -> list[str]:
        """The sha256 of each distinct source image's file, sorted: what the role used, comparable across roles and runs."""
        return sorted({_content_key(s.path) for s in self.samples})

    def as_dict(self) -> dict[str, object]:
        hashes = self.photos_sha256()
        return {"samples": len(self.samples), "distinct_images": self.images, "source": self.source, "sha256": set_digest(hashes),
                "photos_sha256": hashes}


@dataclass(frozen=True)
class Holdout:
    """A ``--holdout`` folder as judged: one path per distinct photo (by content, sorted), each photo's sha256, and the
    files left out (``skipped``: unreadable or not images; ``duplicates``: a copy of a photo already counted)."""

    folder: Path
    photos: list[Path]
    photos_sha256: list[str]
    skipped: int
    duplicates: int

    @property
    def sha256(self) -> str:
        """One digest over the photos' contents (their sorted sha256s): changes with any photo, not with names or order."""
        return set_digest(self.photos_sha256)

    def describe(self) -> str:
        extra = [f"{self.skipped} unreadable or non-image file(s) skipped"] if self.skipped else []
        extra += [f"{self.duplicates} duplicate(s) counted once"] if self.duplicates else []
        return (f"--holdout {self.folder}: {len(self.photos)} distinct photo(s), sha256 {self.sha256[:16]}"
                + (f" ({'; '.join(extra)})" if extra else ""))

    def as_dict(self) -> dict[str, object]:
        return {"folder": str(self.folder), "photos": len(self.photos), "skipped": self.skipped, "duplicates": self.duplicates,
                "sha256": self.sha256, "photos_sha256": self.photos_sha256}


def scan_holdout(folder: Path, *, keep: bool = False) -> Holdout:
    """A ``--holdout`` folder (flat or ImageFolder; :func:`~edge_inception.data.images.scan_photo_folder`'s checks: no link
    leaving it, at most :data:`~edge_inception.limits.MAX_HOLDOUT_IMAGES` image files, at least one readable image),
    reduced to distinct photos. ``keep``: the check's decodes are kept (:func:`decoded`) for the verdict that follows, inside
    a quantization that lets go of them when it ends; otherwise nothing is held. Raises ImageError or LimitError."""
    scan = scan_photo_folder(folder, "--holdout", MAX_HOLDOUT_IMAGES, decode=decoded if keep else None)
    photos = _distinct(scan.images)
    return Holdout(Path(folder), photos, sorted(_content_key(p) for p in photos), len(scan.skipped), len(scan.images) - len(photos))


def set_digest(hashes: list[str]) -> str:
    """sha256 over sorted per-file sha256s, one per line: a set of photos' fingerprint."""
    return hashlib.sha256("".join(h + "\n" for h in sorted(hashes)).encode()).hexdigest()


@dataclass
class Fold:
    """Photos judged together (``verdict``) by a model calibrated on every other photo (``calibration``)."""

    verdict: Role
    calibration: Role


@dataclass
class ImageSets:
    calibration: Role  # the choice stage's calibration: every photo but the selection photos
    selection: Role
    verdict: Role  # the folds' verdict samples pooled, or the --holdout folder
    skipped: int
    warnings: list[str] = field(default_factory=list)
    users_data: bool = True
    off_calibration: Role | None = None  # bundled photos that are not calibration images, for a small user folder
    folds: list[Fold] = field(default_factory=list)  # empty with --holdout
    final: Role | None = None  # the written model's calibration: every photo
    holdout: Holdout | None = None  # the --holdout folder the verdict is (None: the verdict is cross-fitted)

    def disjoint(self) -> bool:
        """No model judges a photo it was calibrated on or chose on: calibration and selection share no photo, selection
        and verdict none, each fold's calibration and verdict none; the final calibration and --holdout's verdict none;
        the off-calibration check shares none with the final calibration."""
        def paths(r: Role | None) -> set[Path]:
            return {s.path.resolve() for s in r.samples} if r else set()

        cal, sel, ver, final = paths(self.calibration), paths(self.selection), paths(self.verdict), paths(self.final)
        folds_ok = all(not (paths(f.calibration) & paths(f.verdict)) for f in self.folds)
        holdout_ok = bool(self.folds) or not (final & ver)
        return not (cal & sel or sel & ver or paths(self.off_calibration) & final) and folds_ok and holdout_ok

    def photo_use(self) -> str:
        """One line for the report: how the photos were used."""
        final = self.final.images if self.final else self.calibration.images
        if self.folds:
            return (f"{final} photo(s) calibrate the written model; the method and any float stages were chosen on {self.selection.images} "
                    f"selection photo(s) (calibrated on the other {self.calibration.images}); the verdict pools {self.verdict.images} photo(s) "
                    f"in {len(self.folds)} fold(s), each judged by the same recipe calibrated on every photo outside its fold (cross-fitting)")
        return (f"{final} photo(s) calibrate the written model; the method and any float stages were chosen on {self.selection.images} "
                f"selection photo(s) (calibrated on the other {self.calibration.images}); the verdict is --holdout's {self.verdict.images} photo(s)")


def check_calibration_folder(calib: Path) -> None:
    """A ``--calib`` folder as it can be checked before any work (names only, nothing decoded): present, with an image
    file in it. Raises ImageError (what :func:`select_images` would say later, after an export and more)."""
    if not calib.exists():
        raise ImageError(f"calibration folder not found: {calib}")
    scan = find_images([calib])
    if not scan.images:
        raise ImageError(f"{calib}: no readable images ({IMAGE_KINDS}); {len(scan.skipped)} other file(s) skipped")


def select_images(calib: Path | None, holdout: Path | None, calib_size: int, holdout_size: int = HOLDOUT_SIZE, seed: int = 0,
                  off_calibration_below: int = 0) -> ImageSets:
    """The three roles, disjoint by source image. ``calib``: the user's folder (None: the bundled photos); ``holdout``: a
    folder for the verdict alone (then ``calib`` gives calibration and selection). ``off_calibration_below``: when the
    user's verdict has fewer distinct images than this, add the off-calibration check on bundled photos.

    Raises ImageError for a missing or unusable folder, or too few distinct images for the roles.
    """
    rng = random.Random(seed)
    skipped = 0
    if calib is None:
        from ..data.images import bundled_photos

        images = bundled_photos()
        where, users = "the bundled photos (scikit-image)", False
    else:
        if not calib.exists():
            raise ImageError(f"calibration folder not found: {calib}")
        scan = find_images([calib], check=True, decode=decoded)  # the check's decode is the one the roles use (decoded's bound)
        if not scan.images:
            raise ImageError(f"{calib}: no readable images ({IMAGE_KINDS}); {len(scan.skipped)} other file(s) skipped")
        images, skipped, where, users = list(scan.images), len(scan.skipped), str(calib), True
        sources = demo_sources(calib)
        if sources is not None:  # crops of a few photos: one source image per photo, as the pipeline counts them
            images = _distinct(images, key=lambda p: sources.get(p.resolve(), f"file:{p}"))  # a file it does not name: its own
            where = f"{calib} (crops of {len(images)} photo(s): the demo set, one photo per class folder)"
    kept_apart: Holdout | None = None
    overlap = 0
    if holdout is not None:
        kept_apart = scan_holdout(holdout, keep=True)  # the check's decode is the verdict's
        held_keys = set(kept_apart.photos_sha256)
        distinct = _distinct(images)
        images = [p for p in distinct if _content_key(p) not in held_keys]
        overlap = len(distinct) - len(images)
        if len(images) < 2:
            raise ImageError(f"{where}: fewer than 2 images that are not also in --holdout; calibration and selection need one each")
        cal_imgs, sel_imgs = _split(images, False, rng)
        # every held-out photo is judged (whole; crops of each when there are fewer photos than the selection's samples)
        verdict = _role(kept_apart.photos, max(holdout_size, len(kept_apart.photos)), rng, kept_apart.describe())
        folds: list[Fold] = []
    else:
        images = _distinct(images)
        if len(images) < 3:
            raise ImageError(f"{where}: {len(images)} distinct image(s); calibration, selection and verdict need 3 or more different "
                             "images (or pass --holdout DIR for the verdict)")
        cal_imgs, sel_imgs = _split(images, False, rng)
        folds = _folds(images, cal_imgs, max(holdout_size, min(VERDICT_SIZE, len(cal_imgs))), calib_size, rng, where)
        verdict = Role([s for f in folds for s in f.verdict.samples],
                       f"{sum(len(f.verdict.samples) for f in folds)} samples of {len(cal_imgs)} image(s) from {where}, in {len(folds)} "
                       "cross-fitted fold(s)")
    sets = ImageSets(_role(cal_imgs, calib_size, rng, where), _role(sel_imgs, holdout_size, rng, where), verdict, skipped, users_data=users,
                     folds=folds, final=_role(images, calib_size, rng, where), holdout=kept_apart)
    if kept_apart is not None:
        sets.skipped += kept_apart.skipped
    if overlap:
        sets.warnings.append(f"{overlap} photo(s) of the calibration photos are also in --holdout: left out of calibration and selection, "
                             "judged only")
    if not users:
        sets.warnings.append("calibrating on the bundled demo photos, not your data: INT8 scales fit the images they were calibrated on "
                             "(pass --calib DIR with your own images)")
    elif verdict.images < off_calibration_below:
        sets.off_calibration = _off_calibration(images, holdout_size, rng, sets.warnings)
    return sets


def _folds(images: list[Path], judged: list[Path], wanted: int, calib_size: int, rng: random.Random, where: str) -> list[Fold]:
    """``judged`` in up to :data:`CROSS_FOLDS` folds of near-equal size; each fold's ``wanted`` share of verdict samples, and
    its calibration samples from every photo of ``images`` outside it."""
    order = sorted(judged)
    rng.shuffle(order)
    k = min(CROSS_FOLDS, len(order))
    parts = [order[i::k] for i in range(k)]
    out = []
    for part in parts:
        share = max(1, round(wanted * len(part) / len(order)))
        rest = [p for p in images if p not in set(part)]
        out.append(Fold(_role(part, share, rng, where), _role(rest, calib_size, rng, where)))
    return out


DEMO_DATA_INDEX_WHAT = "demo data set"  # what demo-data's folder index says it holds (data.demo_data)


def demo_sources(folder: Path) -> dict[Path, str] | None:
    """For ``folder`` inside a demo-data set (its folder, or train/ or val/ of it, as the index ``demo-data`` wrote
    says): the source photo of each image under it, its class folder (demo-data makes one class per bundled photo, all
    its crops cut from that photo). None elsewhere. The crops are separate files, so by content they looked like
    hundreds of photos: `quantize --calib demo/train` claimed agreement on "299 distinct photo(s)" of 10."""
    from ..fileio import read_output_index

    for root in (folder, folder.parent):
        try:
            index = read_output_index(root)
        except (EdgeInceptionError, OSError):  # not an index of ours, or unreadable: not a demo set
            index = None
        if index is not None and index.get("what") == DEMO_DATA_INDEX_WHAT:
            out: dict[Path, str] = {}
            for rel in index["files"]:
                parts = rel.split("/")
                if len(parts) == 3 and parts[0] in ("train", "val"):
                    out[(root / rel).resolve()] = parts[1]
            return out
    return None


def _distinct(images: list[Path], key: Callable[[Path], str] | None = None) -> list[Path]:
    """One path per source image, the first in sorted order: by ``key`` (default: the file's content, so a photo
    copied twice is one source image)."""
    seen: dict[str, Path] = {}
    for p in sorted(images):
        seen.setdefault((key or _content_key)(p), p)
    return list(seen.values())


FileKey = tuple[str, int, int, int, int, int]


def _file_key(path: Path) -> FileKey:
    """What names a file's bytes in this process's memos (:func:`_content_key`, :func:`_upright_size`, :func:`decoded`): its
    resolved path, size, modification and change time (the change time: an edit whose mtime was set back, as exiftool -P
    does), device and inode (another file renamed over it with the same size and times: the times come from a coarse
    clock, one kernel tick, and tar, rsync -t and cp -p keep the modification time)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:  # gone since it was listed: the toolkit's error, as load_image gives it
        raise ImageError(f"image not found: {path}") from exc
    except OSError as exc:
        raise ImageError(f"not a readable image: {path} ({exc.strerror or exc})") from exc
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino


_KEYS: dict[FileKey, str] = {}


def _content_key(path: Path) -> str:
    """The file's sha256 (remembered by :func:`_file_key`: roles and reports ask for it repeatedly)."""
    key = _file_key(path)
    if key not in _KEYS:
        h = hashlib.sha256()
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:  # gone or made unreadable since it was listed
            raise ImageError(f"not a readable image: {path} ({exc.strerror or exc})") from exc
        _KEYS[key] = h.hexdigest()
    return _KEYS[key]


def _split(images: list[Path], with_verdict: bool, rng: random.Random) -> list[list[Path]]:
    """``images`` shuffled (a class-ordered folder spreads over every role), then cut: selection and verdict by their
    shares (capped; at least one image each), calibration the rest. Returns [calibration, selection(, verdict)]."""
    order = list(images)
    rng.shuffle(order)
    n = len(order)
    sel = min(max(1, round(n * SELECTION_SHARE)), HOLDOUT_SIZE)
    ver = min(max(1, round(n * VERDICT_SHARE)), VERDICT_SIZE) if with_verdict else 0
    cal = n - sel - ver
    return [order[:cal], order[cal : cal + sel]] + ([order[cal + sel :]] if with_verdict else [])


def _role(images: list[Path], wanted: int, rng: random.Random, where: str) -> Role:
    """``wanted`` samples: whole images spread over ``images`` when there are enough, else random crops of each."""
    images = sorted(images)
    if len(images) >= wanted:
        return Role(spread([Sample(p) for p in images], wanted), f"{wanted} of {len(images)} images from {where}")
    samples = crops(images, 0.0, 1.0, math.ceil(wanted / len(images)), rng)
    samples = [samples[i] for i in sorted(rng.sample(range(len(samples)), wanted))]
    return Role(samples, f"{wanted} crops of {len(images)} image(s) from {where}")


def _off_calibration(calibration: list[Path], wanted: int, rng: random.Random, warnings: list[str]) -> Role | None:
    """Crops of the bundled photos that are not among the calibration images; None (and a warning) without scikit-image."""
    import importlib.util

    if importlib.util.find_spec("skimage") is None:
        warnings.append("no off-calibration check: the bundled photos need scikit-image (pip install 'edge-inception[export]')")
        return None
    from ..data.images import bundled_photos

    used = {_content_key(p) for p in calibration}
    others = [p for p in bundled_photos() if _content_key(p) not in used]
    if not others:
        return None
    return _role(others, wanted, rng, "the bundled photos (scikit-image) that are not calibration images")


_SIZES: dict[FileKey, tuple[int, int]] = {}
DECODED_BYTES = 256 * 2**20  # the decoded photos kept (Pillow keeps RGB as 4 bytes a pixel): the bundled photos take 20 MiB, a 12 MP photo 48 MiB
# A file changed less than this before it was read is not kept by decoded(): a change within the same tick of the clock the
# file times come from (a few ms; FAT's 2 s) can leave its key as it was (git's "racily clean" files)
RACY_NS = 3 * 10**9
_DECODED = ImageCache(DECODED_BYTES)  # the decoded photos, by _file_key


def _upright_size(path: Path) -> tuple[int, int]:
    """Width x height of the image as decoded (:func:`load_image`: upright), remembered by :func:`_file_key`: one
    quantization takes crops of the same photos for up to nine roles (calibration, selection, the final model's, and each
    cross-fitted fold's two), and a 12 MP photo takes a quarter of a second."""
    key = _file_key(path)
    if key not in _SIZES:
        _SIZES[key] = decoded(path).size
    return _SIZES[key]


def decoded(path: Path):  # -> PIL.Image.Image
    """:func:`load_image` of ``path``, remembered by :func:`_file_key` while the photos kept stay within
    :data:`DECODED_BYTES` (the least recently used let go first; a photo larger than that alone, or one changed in the last
    :data:`RACY_NS`, is not kept). One quantization decodes each photo for up to nine roles (see :func:`_upright_size`),
    and ``quantize_model`` lets go of them when it ends (:func:`release_decoded`). The image returned is shared: crop or
    copy it, never change it in place."""
    key = _file_key(path)  # a photo gone since it was listed: ImageError, as load_image gives it
    return _DECODED.get(path, key, keep=lambda: time.time_ns() - key[3] >= RACY_NS)


def release_decoded() -> None:
    """Let go of every photo :func:`decoded` keeps (the end of a quantization: a pipeline's later stages, building and
    benchmarking engines, do not hold up to :data:`DECODED_BYTES` of photos)."""
    _DECODED.clear()


def crops(images: list[Path], x0: float, x1: float, per_image: int, rng: random.Random) -> list[Sample]:
    """``per_image`` square crops (45-100 % of the region's shorter side) from the region [x0, x1) of each image's width."""
    out: list[Sample] = []
    for path in images:
        w, h = _upright_size(path)  # upright, as the crops are taken from the upright image
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
    return list(iter_batches(samples, size, batch))


def iter_batches(samples: list[Sample], size: int, batch: int = 16) -> Iterator[np.ndarray]:
    """:func:`image_batches` one batch at a time: memory stays one batch and the decoded photos :func:`decoded` keeps
    (at most :data:`DECODED_BYTES`), however many photos a --holdout folder has."""
    for i in range(0, len(samples), batch):
        out = []
        for s in samples[i : i + batch]:
            im = decoded(s.path)
            out.append(preprocess(im.crop(s.box) if s.box else im, size))
        yield np.stack(out)


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
