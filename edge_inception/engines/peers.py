"""A peer quantizer's evidence, gathered as ours is: cross-fitted by photo (issue 39).

NNCF (``openvino-int8-nncf``) calibrates the shipped artifact on every photo the user gave, like ``quantize``; its
agreement with the FP32 model is measured on photos its calibration did not see by the same folds
(:func:`~edge_inception.convert.calibration.select_images`): for each fold, the peer calibrates on every other photo and
is judged on that fold's crops. The pooled figures feed the one judge
(:func:`~edge_inception.engines.candidates.judge_candidate`), whose bound counts distinct photos.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..convert.calibration import image_batches, release_decoded, select_images
from ..errors import EdgeInceptionError
from ..evaluate.verify import compare
from ..onnx_file import load_onnx, model_facts, ort_session, run_session
from ..vocab import Backend
from .candidates import Evidence

log = logging.getLogger(__name__)


def crossfit_evidence(source: Path, backend: Backend, quantizer: str, calib: Path | None, calib_size: int, work: Path) -> Evidence:
    """``quantizer`` (one of ``backend``'s peer quantizers) against the FP32 ``source`` on photos it was not calibrated on:
    per fold of ``calib``'s photos (None: the bundled photos), an artifact calibrated on the other photos (``calib_size``
    crops) and judged on the fold's crops, written into ``work``. Raises ImageError for too few photos,
    BackendUnavailableError without the quantizer, EdgeInceptionError when the folds judge nothing."""
    from .registry import require_backend

    engine = require_backend(backend)
    size = model_facts(load_onnx(source, with_weights=False), str(source)).image_size
    try:
        sets = select_images(calib, None, calib_size)
        if not sets.folds:
            raise EdgeInceptionError(f"{quantizer}: no cross-fitting folds for these photos")
        session = ort_session(source)
        refs, gots = [], []
        for i, fold in enumerate(sets.folds):
            artifact = work / f"{quantizer}.fold{i}{engine.suffix}"
            engine.quantize_peer(quantizer, source, artifact, image_batches(fold.calibration.samples, size, batch=1))
            batches = image_batches(fold.verdict.samples, size)
            with engine.open(artifact, None) as runner:
                gots += [runner.run(b) for b in batches]
            refs += [run_session(session, b) for b in batches]
            log.info("%s fold %d of %d: judged %d crop(s) of %d photo(s) it was not calibrated on", quantizer, i + 1, len(sets.folds),
                     len(fold.verdict.samples), fold.verdict.images)
    finally:
        release_decoded()  # the photos decoded for the folds are let go, as at a quantization's end
    p = compare(np.concatenate(refs), np.concatenate(gots))
    return Evidence(p.top1_agreement, p.samples, sets.verdict.images, p.mean_cosine, p.max_rel_error, "the FP32 model (cross-fitted by photo)")
