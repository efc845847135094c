"""How far ``--preprocess fast`` is from ``exact`` on a model: the same images through both, the same runner.

Images decoded at full size (PNG, TIFF, BMP, ..., small JPEGs) give the reference tensor bit for bit on the fast path
(``data.images.load_tensor``); only JPEGs decoded at 1/2, 1/4 or 1/8 scale in the DCT domain differ. Their difference is
measured, never assumed: ``eval`` and the pipeline report state it with the number of images compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import load_tensor
from ..errors import ImageError
from ..limits import DEFAULT_AGREEMENT_SAMPLE
from ..vocab import PreprocessMode
from .verify import softmax, top_classes

__all__ = ["DEFAULT_AGREEMENT_SAMPLE", "PreprocessAgreement", "fast_exact_agreement", "spread_sample"]

# Phone and camera sizes for the pipeline report's sample: JPEGs this large are decoded at reduced scale at 224 (short
# side > 2 x 256), so the sample measures what differs.
REDUCED_JPEG_SIZES = ((1600, 1200), (1200, 1600), (2048, 1536), (1920, 1080), (1080, 1920), (3000, 2000))


@dataclass(frozen=True)
class PreprocessAgreement:
    """``fast`` against ``exact`` preprocessing on ``images`` images (of ``population``): ``reduced`` of them were decoded
    at reduced scale (the others gave the reference tensor exactly); ``top1_agreement`` in [0, 1]; ``max_abs_dp``: the
    largest difference in any class probability (softmax of the logits), over all compared images and classes;
    ``max_abs_input``: the largest difference in the normalised input tensor."""

    images: int
    population: int
    reduced: int
    top1_agreement: float
    max_abs_dp: float
    max_abs_input: float

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "of": self.population, "decoded_at_reduced_scale": self.reduced,
                "top1_agreement": round(self.top1_agreement, 6), "max_abs_dp": float(f"{self.max_abs_dp:.3g}"),
                "max_abs_input": float(f"{self.max_abs_input:.3g}")}

    def line(self) -> str:
        """One sentence for the console and the reports."""
        if self.images == 0:
            return "fast vs exact preprocessing: no image compared"
        return (f"fast vs exact preprocessing on {self.images} of {self.population} images ({self.reduced} JPEG{'' if self.reduced == 1 else 's'} "
                f"decoded at reduced scale, the rest identical tensors): top-1 agreement {self.top1_agreement:.2%}, max |dp| {self.max_abs_dp:.2g}")


def spread_sample(paths: Sequence[Path], k: int) -> list[Path]:
    """``k`` of ``paths`` evenly spread over the list (all of them when there are no more than ``k``); deterministic."""
    if k <= 0:
        return []
    if len(paths) <= k:
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, k).round().astype(int)]


def fast_exact_agreement(runner: Any, paths: Sequence[Path], image_size: int, population: int | None = None) -> PreprocessAgreement:
    """Every path through both preprocessing paths and ``runner`` (an open :class:`engines.runner.Runner`: ``run(N x 3 x S x S)``
    -> logits). Unreadable images are left out of the count. Identical tensors count as agreeing with |dp| = 0 without
    running the model."""
    compared = reduced = agree = 0
    max_dp = max_in = 0.0
    for p in paths:
        try:
            fast = load_tensor(p, image_size, PreprocessMode.fast)
            exact = load_tensor(p, image_size, PreprocessMode.exact)
        except ImageError:
            continue
        compared += 1
        if np.array_equal(fast, exact):
            agree += 1
            continue
        reduced += 1
        max_in = max(max_in, float(np.abs(fast - exact).max()))
        logits = np.asarray(runner.run(np.stack([fast, exact]))).reshape(2, -1).astype(np.float64)
        probs, top = softmax(logits), top_classes(logits, 1)
        agree += int(top[0, 0] == top[1, 0])
        max_dp = max(max_dp, float(np.abs(probs[0] - probs[1]).max()))
    return PreprocessAgreement(compared, population if population is not None else len(paths), reduced,
                               agree / compared if compared else 1.0, max_dp, max_in)


def photo_jpegs(folder: Path, count: int = 12, seed: int = 0) -> list[Path]:
    """``count`` JPEGs in ``folder``: crops of scikit-image's bundled photos (real photographs) resized to
    :data:`REDUCED_JPEG_SIZES` in turn and saved at quality 85-95, the kind of file the fast path decodes at reduced
    scale. Deterministic for a seed."""
    from PIL import Image

    from ..data.images import bundled_photos, load_image

    rng = np.random.default_rng(seed)
    photos = bundled_photos()
    out = []
    for i in range(count):
        im = load_image(photos[i % len(photos)])
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        path = folder / f"photo{i:03d}.jpg"
        im.resize(REDUCED_JPEG_SIZES[i % len(REDUCED_JPEG_SIZES)], Image.Resampling.BICUBIC,
                  box=(left, top, left + cw, top + ch)).save(path, quality=int(rng.integers(85, 96)))
        out.append(path)
    return out


def photo_agreement(artifact: str | Path, image_size: int, count: int = 12) -> PreprocessAgreement:
    """:func:`fast_exact_agreement` of ``artifact`` on :func:`photo_jpegs` (made in a temporary folder, removed after)."""
    import tempfile

    from ..engines.registry import open_runner

    with tempfile.TemporaryDirectory(prefix="edge-inception-jpegs-") as tmp, open_runner(artifact) as runner:
        return fast_exact_agreement(runner, photo_jpegs(Path(tmp), count), image_size)
