"""The accuracy guard's search: which Table 1 stages must keep higher precision for INT8 to keep the model's answers.

Sensitivity: quantize one stage at a time (the rest at the fallback precision) and measure the logits' cosine loss
on a probe subset of the held-out images. Stages then fall back in order of damage (per parameter, where the
fallback is all float and so costs file size); the smallest prefix that meets the guard is found by bisection. If
every stage at the fallback still misses it, weights go float too, in the same order (the fewest stages that need it),
and then the fewest stages at the fallback beside them.

The search knows nothing of how a mixed model is made: a :class:`Mixer` builds one from two lists of stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..evaluate.verify import Parity, compare
from ..vocab import CalibMethod

log = logging.getLogger(__name__)

Logits = Callable[[Path, list[np.ndarray]], np.ndarray]  # a model file's logits on batches


@dataclass(frozen=True)
class CalibrationTrial:
    """How the pure INT8 model of one calibration method did on the selection photos."""

    meets: bool  # the criterion (agreement, or accuracy) met
    worst_image_cosine: float  # the logits' cosine with FP32 on the hardest photo
    mean_cosine: float  # over every selection photo


def best_calibration(trials: Mapping[CalibMethod, CalibrationTrial]) -> CalibMethod:
    """The calibration kept (``--calib-method auto``): among the methods that meet the criterion (among all when none
    does), the highest cosine on the worst photo, then the highest mean cosine; a full tie goes to the first tried
    (agreement ties at 100 % on a few photos say little; the logits' cosine on the hardest photo says more).
    Raises ValueError when nothing was tried."""
    if not trials:
        raise ValueError("no calibration method was tried")
    return max(trials, key=lambda m: (trials[m].meets, trials[m].worst_image_cosine, trials[m].mean_cosine))


class Mixer(Protocol):
    @property
    def stages(self) -> dict[str, list[str]]:  # Table 1 stage -> its node names
        ...

    @property
    def stage_params(self) -> dict[str, int]:
        ...

    weight_only_fallback: bool  # the fallback keeps INT8 weights (float activations), else goes all float

    def build(self, name: str, fallback: Sequence[str], float_stages: Sequence[str] = ()) -> Path:
        """An INT8 model where ``fallback`` stages get the fallback precision and ``float_stages`` are all float."""


@dataclass
class GuardResult:
    candidate: Path
    parity: Parity
    kept: list[str] = field(default_factory=list)  # stages at the fallback precision
    float_weights: list[str] = field(default_factory=list)  # of those, the ones whose weights are float too
    sensitivity: dict[str, float] = field(default_factory=dict)


Judge = Callable[[Path], tuple[bool, Parity]]  # does a model file meet the criterion, and how close is it to FP32


def run_guard(mixer: Mixer, logits: Logits, hold_batches: list[np.ndarray], reference: np.ndarray, judge: Judge,
              probe_images: int = 32) -> GuardResult:
    """Keep the stages that hurt most in higher precision until ``judge`` accepts the model."""
    stages = list(mixer.stages)
    probe = np.concatenate(hold_batches)[:probe_images]
    probe_ref = reference[: len(probe)]
    sensitivity = {}
    for stage in stages:
        trial = mixer.build(f"only_{stage}", [s for s in stages if s != stage])
        sensitivity[stage] = 1.0 - compare(probe_ref, logits(trial, [probe])).mean_cosine
    ranked = rank(sensitivity, mixer.stage_params, mixer.weight_only_fallback)
    log.info("INT8 sensitivity by stage: %s", ", ".join(f"{s} {sensitivity[s]:.2e}" for s in ranked))

    tried: dict[tuple[int, int], tuple[Path, bool, Parity]] = {}

    def attempt(k: int, f: int = 0) -> tuple[Path, bool, Parity]:
        if (k, f) not in tried:
            path = mixer.build(f"mixed_{k}_{f}", ranked[:k], ranked[:f])
            tried[k, f] = (path, *judge(path))
            log.info("higher precision for %d stage(s) (%d all float): top-1 agreement %.3f", k, f, tried[k, f][2].top1_agreement)
        return tried[k, f]

    def ok(k: int, f: int = 0) -> bool:
        return attempt(k, f)[1]

    n = len(ranked)
    k, f = n, 0
    if ok(n):
        k = smallest(1, n, ok)
    elif mixer.weight_only_fallback and ok(n, n):
        f = smallest(1, n, lambda j: ok(n, j))  # the fewest stages whose weights must be float ...
        k = smallest(f, n, lambda j: ok(j, f))  # ... then the fewest at float activations beside them
    elif mixer.weight_only_fallback:
        f = n
    path, _, parity = attempt(k, f)
    return GuardResult(candidate=path, parity=parity, kept=ranked[:k], float_weights=ranked[:f] if mixer.weight_only_fallback else ranked[:k],
                       sensitivity=sensitivity)


def rank(sensitivity: dict[str, float], params: dict[str, int], weight_only_fallback: bool) -> list[str]:
    """Stages by damage; where the fallback is all float, by damage per parameter (what keeping it costs in file size)."""
    def cost(stage: str) -> float:
        return 1.0 if weight_only_fallback else params.get(stage, 0) + 10_000

    return sorted(sensitivity, key=lambda s: sensitivity[s] / cost(s), reverse=True)


def smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Smallest k in [lo, hi] with ok(k), given ok(hi) holds and ok is (close to) monotone."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
