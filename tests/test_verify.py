"""The one measure every step is judged by (build, the quantization guard, the pipeline's ship decision), on arrays
whose answers are worked out by hand."""

import math

import numpy as np
import pytest

from edge_inception.errors import VerificationError
from edge_inception.evaluate.verify import Parity, compare, parity_over, require, topk_hits


def test_compare_on_known_arrays():
    ref = np.array([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, -1.0],
                    [3.0, 2.0, 1.0, 0.5, 0.0, 0.0, -1.0]])
    cand = np.array([[1.0, 2.0, 4.0, 0.0, 0.0, 0.0, -1.0],  # same top-1 (class 2), same top-5 set
                     [0.0, 2.0, 1.0, 0.5, 3.0, 0.0, -1.0]])  # top-1 moves 0 -> 4; top-5 {0,1,2,3,4|5} vs {4,1,2,3,0|5}
    p = compare(ref, cand)
    assert p.samples == 2
    assert p.max_abs_error == 3.0  # |3 - 0| in row 2, class 0 (and |0 - 3| at class 4)
    assert p.max_rel_error == pytest.approx(3.0 / 3.0)  # divided by max |ref| = 3
    assert p.top1_agreement == 0.5
    cos1 = (1 + 4 + 12 + 1) / (math.sqrt(1 + 4 + 9 + 1) * math.sqrt(1 + 4 + 16 + 1))
    cos2 = (0 + 4 + 1 + 0.25 + 0 + 0 + 1) / (math.sqrt(9 + 4 + 1 + 0.25 + 1) * math.sqrt(4 + 1 + 0.25 + 9 + 1))
    assert p.mean_cosine == pytest.approx((cos1 + cos2) / 2)
    # top-5 of row 2: ref {0,1,2,3} plus one of the tied zeros; cand {4,1,2,3,0}: at least 4 of 5 shared
    assert 0.9 <= p.top5_overlap <= 1.0


def test_identical_and_opposite_logits():
    x = np.random.default_rng(0).standard_normal((8, 10))
    same = compare(x, x.copy())
    assert (same.max_abs_error, same.max_rel_error, same.top1_agreement, same.top5_overlap) == (0.0, 0.0, 1.0, 1.0)
    assert same.mean_cosine == pytest.approx(1.0)
    flipped = compare(x, -x)
    assert flipped.mean_cosine == pytest.approx(-1.0) and flipped.top1_agreement == 0.0
    assert flipped.max_abs_error == pytest.approx(2 * np.abs(x).max())


def test_compare_refuses_shape_mismatch():
    with pytest.raises(VerificationError, match="shapes differ"):
        compare(np.zeros((2, 10)), np.zeros((2, 9)))


def test_merge_weights_by_samples_and_keeps_maxima():
    a = Parity(samples=1, max_abs_error=0.5, max_rel_error=0.1, top1_agreement=0.0, top5_overlap=0.4, mean_cosine=0.2)
    b = Parity(samples=3, max_abs_error=0.2, max_rel_error=0.3, top1_agreement=1.0, top5_overlap=1.0, mean_cosine=1.0)
    m = a.merge(b)
    assert m.samples == 4 and m.max_abs_error == 0.5 and m.max_rel_error == 0.3
    assert m.top1_agreement == pytest.approx(0.75) and m.top5_overlap == pytest.approx((0.4 + 3.0) / 4)
    assert m.mean_cosine == pytest.approx((0.2 + 3.0) / 4)


def test_parity_over_folds_every_batch():
    batches = [np.full((1, 4), float(i)) for i in range(3)]
    p = parity_over(batches, lambda b: b, lambda b: b if b[0, 0] != 2.0 else -b)
    assert p.samples == 3
    assert p.max_abs_error == 4.0  # the last batch: |2 - (-2)|
    with pytest.raises(VerificationError):
        parity_over([], lambda b: b, lambda b: b)


def test_require_refuses_nan_and_excess():
    nan = Parity(1, float("nan"), float("nan"), 1.0, 1.0, 1.0)
    with pytest.raises(VerificationError):
        require(nan, rel_tol=1e-3, step="x")
    with pytest.raises(VerificationError, match="beyond tolerance"):
        require(Parity(1, 1.0, 2e-3, 1.0, 1.0, 1.0), rel_tol=1e-3, step="x")
    require(Parity(1, 1.0, 1e-3, 1.0, 1.0, 1.0), rel_tol=1e-3, step="x")


def test_topk_hits():
    logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.5, 0.1, 0.2, 0.3, 0.4, 0.0], [0.05, 0.0, 0.0, 0.0, 0.1, 1.0]])
    labels = np.array([1, 5, 0])
    # row 0: label first; row 1: label ranked last of six; row 2: label third
    assert topk_hits(logits, labels) == (1, 2)
