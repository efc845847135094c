"""How sure a quantized model's verdict is: a lower confidence bound on a proportion (top-1 agreement with FP32, or top-1
accuracy) measured on crops of few photos.

Crops of one photo are not independent trials: a photo whose content INT8 gets wrong tends to be wrong in every crop. The
bound therefore counts distinct source images, not crops. With ``m`` crops per image and intra-class correlation ``rho``,
Kish's design effect is ``1 + (m - 1) * rho`` (L. Kish, *Survey Sampling*, 1965, section 5.4); at its upper limit
(``rho = 1``: every crop of an image answers alike) the effective sample size is the number of distinct images. That is the
``n`` used here, with the observed proportion, in the one-sided Wilson score bound (E. B. Wilson, JASA 22, 1927; the
interval Brown, Cai and DasGupta recommend for small ``n`` and proportions near 1, *Statistical Science* 16(2), 2001), which
unlike the normal approximation stays inside [0, 1] and is not 100 % when every trial succeeded.

A claim "agreement >= 99 %" at 95 % confidence thus needs the bound to clear 0.99: with every image agreeing that takes
:func:`images_needed` (0.99) = 268 distinct images. Fewer images can still show a model is *bad*; they cannot show it is good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
Z_ONE_SIDED_95 = 1.6448536269514722  # the standard normal's 95th percentile


def wilson_lower_bound(successes: float, trials: float, z: float = Z_ONE_SIDED_95) -> float:
    """Lower end of the Wilson score interval for ``successes`` out of ``trials`` (one-sided, ``z`` = 1.645: 95 %).

    ``successes`` may be fractional (a proportion times an effective sample size). Returns 0.0 for no trials.
    Raises ValueError if ``successes`` is not in [0, trials].
    """
    if trials <= 0:
        return 0.0
    if not 0.0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - margin) / (1 + z2 / trials))


def images_needed(target: float, observed: float = 1.0, z: float = Z_ONE_SIDED_95) -> int | None:
    """The fewest distinct images whose bound clears ``target`` if they keep the ``observed`` proportion; None if no number
    can (observed <= target)."""
    if observed <= target:
        return None
    n = 1
    while wilson_lower_bound(observed * n, n, z) < target:
        n *= 2
    lo, hi = n // 2, n
    while lo + 1 < hi:  # the bound rises with n at a fixed proportion
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if wilson_lower_bound(observed * mid, mid, z) < target else (lo, mid)
    return hi


@dataclass(frozen=True)
class Verdict:
    """A proportion measured on ``samples`` images or crops of ``images`` distinct source images, against ``criterion``.

    ``measure`` names what was counted ("top-1 agreement with FP32", "top-1 accuracy"); ``source`` where the images came
    from. ``lower_bound`` is the one-sided 95 % Wilson bound with n = distinct images (see the module's docstring)."""

    measure: str
    value: float
    samples: int
    images: int
    criterion: float
    source: str

    @property
    def lower_bound(self) -> float:
        n = min(self.samples, self.images)
        return wilson_lower_bound(self.value * n, n)

    @property
    def met(self) -> bool:
        """The criterion is met only when the lower bound clears it, not the point estimate."""
        return self.lower_bound >= self.criterion

    @property
    def missed(self) -> bool:
        """The point estimate itself is below the criterion: the model, not the evidence, falls short."""
        return self.value < self.criterion

    def explain(self) -> str:
        """One line: the figure, its bound, and whether it supports the criterion; if not, what would."""
        head = (f"{self.measure} {self.value:.1%} on {self.samples} image(s) of {self.images} distinct photo(s) ({self.source}); "
                f"{CONFIDENCE:.0%} lower bound {self.lower_bound:.1%}")
        if self.met:
            return f"{head} >= {self.criterion:.1%}: criterion met"
        if self.missed:
            return f"{head}: below {self.criterion:.1%}, the criterion is missed"
        need = images_needed(self.criterion, self.value)
        return (f"{head} < {self.criterion:.1%}: the evidence is too thin to claim {self.criterion:.0%}"
                + (f"; judging on at least {need} distinct photos would be needed at this {self.measure}"
                   f" (--holdout DIR, or a larger --calib folder)" if need else ""))

    def as_dict(self) -> dict[str, object]:
        return {"measure": self.measure, "value": self.value, "samples": self.samples, "distinct_images": self.images,
                "criterion": self.criterion, "lower_bound": self.lower_bound, "confidence": CONFIDENCE, "met": self.met,
                "source": self.source, "explanation": self.explain()}
