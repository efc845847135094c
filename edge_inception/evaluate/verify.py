"""Output parity between two runs of the same model: the one measure every conversion step, build, the quantization
guard and the pipeline judge by. Pure numpy: callers bring the two runs as functions or arrays."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import VerificationError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of N x C ``logits`` (row-wise softmax, in the logits' float type). Rank classes with
    :func:`top_classes` on the logits, not on these: rounding can make distinct logits equal probabilities."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best classes of each row of ``scores`` (N x C, or one row of C; logits), best first, as int64 indices
    (N x k, or k). Equal scores rank in class order (the lower index first, as ``np.argmax`` picks), so every command
    (predict, eval, verify, serve, stream, the cluster) ranks a tie alike: a quantized model's logits often tie."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")[..., :k]


@dataclass
class Parity:
    """How far ``candidate`` logits are from ``reference`` logits."""

    samples: int
    max_abs_error: float
    max_rel_error: float  # max |a - b| / max |a|, over each batch
    top1_agreement: float
    top5_overlap: float
    mean_cosine: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, other: Parity) -> Parity:
        n = self.samples + other.samples
        return Parity(
            samples=n,
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            max_rel_error=max(self.max_rel_error, other.max_rel_error),
            top1_agreement=(self.top1_agreement * self.samples + other.top1_agreement * other.samples) / n,
            top5_overlap=(self.top5_overlap * self.samples + other.top5_overlap * other.samples) / n,
            mean_cosine=(self.mean_cosine * self.samples + other.mean_cosine * other.samples) / n,
        )


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise VerificationError(f"output shapes differ: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref - cand)
    scale = max(float(np.abs(ref).max()), 1e-12)
    k = min(5, ref.shape[1])
    top_ref = top_classes(ref, k)
    top_cand = top_classes(cand, k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)])
    cos = np.sum(ref * cand, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-300)
    return Parity(
        samples=ref.shape[0],
        max_abs_error=float(diff.max()),
        max_rel_error=float(diff.max() / scale),
        top1_agreement=float(np.mean(top_ref[:, 0] == top_cand[:, 0])),
        top5_overlap=float(overlap),
        mean_cosine=float(cos.mean()),
    )


def parity_over(batches: Iterable[np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
                candidate: Callable[[np.ndarray], np.ndarray]) -> Parity:
    """Run both on every batch and fold the per-batch :class:`Parity` into one."""
    parities = [compare(reference(b), candidate(b)) for b in batches]
    if not parities:
        raise VerificationError("no inputs to compare on")
    return functools.reduce(Parity.merge, parities)


@dataclass
class StepReport:
    """One verified conversion step: what it was checked against, on which batch sizes, and how close it came."""

    step: str
    reference: str
    parity: Parity
    batches: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "reference": self.reference, "batches": self.batches, **self.parity.as_dict()}


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> tuple[int, int]:
    """How many rows have their label first, and among the top ``k``."""
    top = top_classes(logits, k)
    return int((top[:, 0] == labels).sum()), int((top == labels[:, None]).any(axis=1).sum())


def require(parity: Parity, *, rel_tol: float, step: str) -> None:
    if not parity.max_rel_error <= rel_tol:  # also catches NaN
        raise VerificationError(
            f"{step}: outputs differ beyond tolerance (max relative error {parity.max_rel_error:.3g} > {rel_tol:g}, "
            f"top-1 agreement {parity.top1_agreement:.1%}); nothing written"
        )


def verification_inputs(image_size: int, batch: int | None, seed: int = 0) -> list[np.ndarray]:
    """Random and real-photo batches: sizes 1 and 4 for a dynamic-batch model, else ``batch``. Where the bundled photos
    are not installed (a device with the runtime only), random batches alone; a bundle's reference data covers photos."""
    from ..data.images import bundled_photos, load_batch
    from ..errors import MissingDependencyError

    rng = np.random.default_rng(seed)
    try:
        photos = bundled_photos()
    except MissingDependencyError:
        photos = []
    sizes = [1, 4] if batch is None else [batch]
    out = []
    for n in sizes:
        out.append(rng.standard_normal((n, 3, image_size, image_size)).astype(np.float32))
        out.append(rng.uniform(-2.0, 2.5, (n, 3, image_size, image_size)).astype(np.float32) if not photos
                   else load_batch([photos[i % len(photos)] for i in range(n)], image_size))
    return out
