"""One ranking of classes everywhere: the k best of a row of logits, ties in class order (evaluate.verify.top_classes).

A quantized model's logits tie often, and softmax rounds distinct logits to equal probabilities; when predict ranked
probabilities and eval ranked logits, eval --cluster and plain predict disagreed on 10 of 2,000 images' top-5 (an
OpenVINO INT8 GoogLeNet), with every logit identical."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from edge_inception.evaluate.verify import softmax, top_classes, topk_hits

PACKAGE = Path(__file__).resolve().parents[1] / "edge_inception"


def test_ties_rank_in_class_order_and_rows_rank_alone():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    assert top_classes(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_classes(scores[0], 5).tolist() == [1, 2, 4, 0, 3]  # one row as a vector
    assert top_classes(np.zeros((1, 7), np.float32), 7).tolist() == [list(range(7))]
    assert top_classes(scores, 3).dtype == np.int64


def test_logits_rank_where_their_probabilities_tie():
    logits = np.array([[200.0, -1.0, 0.0, -3.0]], np.float32)
    probs = softmax(logits)
    assert probs[0, 1] == probs[0, 2] == 0.0  # float32 underflow: the probabilities cannot tell classes 1 and 2 apart
    assert top_classes(logits, 4).tolist() == [[0, 2, 1, 3]]
    assert np.isclose(probs.sum(), 1.0)


def test_topk_hits_counts_with_the_same_ranking():
    logits = np.array([[0.0, 2.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 9.0]], np.float32)
    # row 0: best is class 1 (tie with 2, lower index first); row 1: all tie, class 0 first; row 2: class 2
    assert topk_hits(logits, np.array([2, 0, 2]), k=2) == (2, 3)
    assert topk_hits(logits, np.array([2, 2, 0]), k=1) == (0, 0)


def test_no_module_ranks_classes_on_its_own():
    """Every ranking goes through top_classes: an argsort, argpartition or sorted-by-score elsewhere would bring back a
    second tie order (the fault above). argmax is first-index-wins, the same rule, and stays allowed."""
    own = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("argsort", "argpartition"):
                own.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert own == ["evaluate/verify.py:" + str(_top_classes_line())], own


def _top_classes_line() -> int:
    tree = ast.parse((PACKAGE / "evaluate" / "verify.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "top_classes")
    return next(n.lineno for n in ast.walk(fn) if isinstance(n, ast.Attribute) and n.attr == "argsort")
