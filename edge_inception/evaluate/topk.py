"""The accuracy verdicts' one step that can run elsewhere: each image's top-k class indices under a model.

``quantize --eval`` and the pipeline judge a quantized model by its top-1 / top-5 accuracy on a labelled folder. By
default they run the model in-process on tensors they decoded once; given a :class:`TopKOnFiles` (``--cluster``: a Ray
cluster, :class:`edge_inception.cluster.evaluate.ClusterTopK`) they send the file paths there instead and count the
answers here with :func:`hits`. The layers below the cluster see only this protocol, never Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..vocab import PreprocessMode


class TopKOnFiles(Protocol):
    def __call__(self, model: Path, paths: Sequence[Path], *, image_size: int, mode: PreprocessMode, k: int
                 ) -> tuple[dict[str, list[int]], dict[str, str]]:
        """Top-``k`` class indices (best first, the order :func:`~edge_inception.evaluate.verify.topk_hits` uses) of
        ``model`` (an ONNX file or a built artifact) on each image of ``paths``, decoded and preprocessed with ``mode``
        at ``image_size`` px: ({resolved path: k indices}, {resolved path: why it did not decode})."""
        ...


def hits(top: dict[str, list[int]], paths: Sequence[Path], labels: np.ndarray) -> tuple[int, int]:
    """How many of ``paths`` (labels in the same order) have their label first, and among the top k, in ``top``.
    Raises ValueError when an image has no answer."""
    missing = [p for p in paths if str(Path(p).resolve()) not in top]
    if missing:
        raise ValueError(f"no answer for {len(missing)} of {len(paths)} images (first: {missing[0]})")
    rows = np.array([top[str(Path(p).resolve())] for p in paths])
    return int((rows[:, 0] == labels).sum()), int((rows == labels[:, None]).any(axis=1).sum())
