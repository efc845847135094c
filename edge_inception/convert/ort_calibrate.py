"""Several calibration methods on the same images, with ONNX Runtime's calibrators: one run of the model for the histogram
methods, their histograms built on every core, the ranges handed to ``quantize_static`` as its own calibration cache.

``quantize_model`` calibrates with up to three methods (min-max, entropy, percentile) on the same images (the choice
stage's photos, each fold's), then once more per fold and for the written model with the chosen method.
``quantize_static`` alone would run the augmented model over the images once per method and build each method's
histograms on one core. Measured on a 2-core AVX2-only EPYC, GoogLeNet at 224 px: the histogram methods' augmented model
ran 50 ms a crop, percentile's histograms took 125 ms a crop and entropy's 100 ms; in a ``quantize`` of 152 s with
``--calib-method auto`` (100 crops a calibration), percentile's histograms (ONNX Runtime's
``HistogramCollector.collect_absolute_value``) were 43 % of the time (py-spy) and session runs 24 %.

:func:`calibrate` computes, for each method asked, exactly what ``quantize_static`` would (ONNX Runtime's calibrators,
made by its ``create_calibrator`` with the arguments ``quantize_static`` gives it; its collectors; its ``compute_data``),
and writes it as ONNX Runtime's calibration cache (``save_tensors_data``), which ``quantize_static(calibration_cache_path=)``
then reads instead of calibrating. Two things differ, neither in what is computed:

* the histogram methods (entropy, percentile) share one run of the augmented model: the first records each batch's
  outputs, the others are served them (:class:`_Replay`), in the same order, for the same input arrays;
* each histogram method's histograms are built tensor by tensor on up to :data:`WORKERS` threads (numpy releases the GIL
  in its array work): each tensor's histogram depends on that tensor's values alone.

tests/test_ort_calibrate.py checks that each cache equals the one ``quantize_static`` writes by itself. Where ONNX
Runtime's calibrators are not as this expects (the attributes it reads), a method calibrates alone, as inside
``quantize_static``, only slower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path, library_prints_to_log
from .calibration import CalibrationReader

log = logging.getLogger(__name__)

# threads building histograms: each holds up to three copies of one tensor's values over every image while it works
# (ONNX Runtime's collector stacks, flattens and takes absolute values), 1 GB for GoogLeNet's first layer on 100 crops at
# 224 px; two keep that bounded, and numpy's work between the GIL's releases gives little past two
WORKERS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
# quantize_static's own table (onnxruntime/quantization/quantize.py, 1.32): its extra_options key -> the calibrator's
CALIBRATOR_OPTIONS = (("CalibTensorRangeSymmetric", "symmetric"), ("CalibMovingAverage", "moving_average"),
                      ("CalibMovingAverageConstant", "averaging_constant"), ("CalibMaxIntermediateOutputs", "max_intermediate_outputs"),
                      ("CalibPercentile", "percentile"))
# what a histogram calibrator must have for its run to be shared and its histograms built in threads
_HISTOGRAM_ATTRS = ("infer_session", "collector", "method", "symmetric", "num_bins", "num_quantized_bins", "percentile", "scenario")


class _Session:
    """An ``InferenceSession`` stand-in: everything but ``run`` is the wrapped session's."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class _Recording(_Session):
    """An ``InferenceSession`` that keeps each run's outputs by name, with the feed they answer."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.runs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def run(self, output_names: Any, feed: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> list[Any]:
        out = self.session.run(output_names, feed, *args, **kwargs)
        names = output_names if output_names is not None else [o.name for o in self.session.get_outputs()]
        self.runs.append((dict(feed), dict(zip(names, out, strict=True))))
        return out


class _Replay(_Session):
    """An ``InferenceSession`` that answers its n-th run with the recording's n-th outputs, when it is asked for the same
    input arrays and every output it has is recorded; otherwise it runs its own session."""

    def __init__(self, session: Any, runs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> None:
        super().__init__(session)
        self.runs, self.served, self.ran = runs, 0, 0
        self._names = [o.name for o in session.get_outputs()]
        self._i = 0

    def run(self, output_names: Any, feed: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> list[Any]:
        names = output_names if output_names is not None else self._names
        recorded = self.runs[self._i] if self._i < len(self.runs) else None
        self._i += 1
        if (recorded is not None and recorded[0].keys() == feed.keys() and all(recorded[0][k] is feed[k] for k in feed)
                and all(n in recorded[1] for n in names)):
            self.served += 1
            return [recorded[1][n] for n in names]
        self.ran += 1
        return self.session.run(output_names, feed, *args, **kwargs)


class _PerTensor:
    """A ``HistogramCollector`` whose ``collect`` builds each tensor's histogram on a thread of its own (up to
    ``workers`` at once), in ONNX Runtime's own code; everything else is the collector's."""

    def __init__(self, collector: Any, workers: int) -> None:
        self._collector, self._workers = collector, workers

    def collect(self, name_to_arr: dict[str, Any]) -> None:
        # the order one call would leave the histograms in (compute_collection_result follows it): those it had before in
        # their places, then the new ones in the order given
        order = list(dict.fromkeys([*self._collector.histogram_dict, *name_to_arr]))
        biggest_first = sorted(name_to_arr, key=lambda k: -_nbytes(name_to_arr[k]))
        with ThreadPoolExecutor(self._workers, thread_name_prefix="calibrate") as pool:
            list(pool.map(lambda k: self._collector.collect({k: name_to_arr[k]}), biggest_first))
        made = self._collector.histogram_dict
        self._collector.histogram_dict = {k: made[k] for k in order if k in made}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)


def ort_output_to_log() -> contextlib.AbstractContextManager[None]:
    """ONNX Runtime's quantization tools print their progress (the histogram collectors, once a tensor here); within the
    block it goes to the debug log instead (:func:`~edge_inception.fileio.library_prints_to_log`)."""
    return library_prints_to_log("onnxruntime.quantization")


def _nbytes(value: Any) -> int:
    return sum(_nbytes(v) for v in value) if isinstance(value, list | tuple) else int(getattr(value, "nbytes", 0))


def calibrator_options(extra_options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``quantize_static`` gives its calibrator, from the ``extra_options`` it was given."""
    return {key: extra_options[name] for name, key in CALIBRATOR_OPTIONS if name in extra_options}


def _shareable(calibrator: Any) -> bool:
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    return isinstance(calibrator, HistogramCalibrater) and all(hasattr(calibrator, a) for a in _HISTOGRAM_ATTRS)


def calibrate(model: Path, input_name: str, batches: Sequence[np.ndarray], caches: Mapping[Any, Path], extra_options: Mapping[str, Any],
              *, on_batch: Callable[[], None] | None = None, workers: int = WORKERS) -> dict[str, int]:
    """Write ONNX Runtime's calibration cache for each method of ``caches`` ({``CalibrationMethod``: path}; existing files
    are kept) from ``batches`` (``input_name``'s values, N x 3 x H x W float32, as ``quantize_static``'s reader would
    give them) and ``extra_options`` (those passed to ``quantize_static``). ``model``: the ONNX file ``quantize_static`` is
    given. Each file is written whole or not at all. Returns {"runs": batches the augmented models ran, "served": batches
    a histogram method was served from another's run}. Raises what ONNX Runtime's calibrators raise."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import HistogramCollector, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    todo = [m for m, path in caches.items() if not path.is_file()]
    counts = {"runs": 0, "served": 0}
    if not todo:
        return counts
    # quantize_static's default op types (it is given none): every type either quantizer knows
    op_types = list(set(list(QLinearOpsRegistry.keys()) + list(QDQRegistry.keys())))
    options = calibrator_options(extra_options)
    # the histogram methods first, so that the recording is made before a replay can be served, and let go before min-max
    histogram = {CalibrationMethod.Entropy, CalibrationMethod.Percentile, CalibrationMethod.Distribution}
    todo.sort(key=lambda m: m not in histogram)
    to_serve = sum(m in histogram for m in todo) - 1  # histogram methods that can be served a recorded run
    recording: _Recording | None = None
    with tempfile.TemporaryDirectory(prefix="edge-inception-calibrate-") as tmp, ort_output_to_log():
        for method in todo:
            calibrator = create_calibrator(model, op_types, augmented_model_path=str(Path(tmp) / f"augmented.{method.name}.onnx"),
                                           calibrate_method=method, extra_options=options)
            if _shareable(calibrator):
                if recording is not None:
                    calibrator.infer_session = _Replay(calibrator.infer_session, recording.runs)
                    to_serve -= 1
                elif to_serve > 0:
                    recording = calibrator.infer_session = _Recording(calibrator.infer_session)
                if workers > 1:
                    calibrator.collector = _PerTensor(HistogramCollector(
                        method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
                        num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile, scenario=calibrator.scenario),
                        workers)
            calibrator.collect_data(CalibrationReader(input_name, list(batches), on_batch))
            ranges = calibrator.compute_data()
            replay = calibrator.infer_session if isinstance(calibrator.infer_session, _Replay) else None
            counts["served"] += replay.served if replay else 0
            counts["runs"] += replay.ran if replay else len(batches)
            with atomic_path(caches[method]) as part:
                save_tensors_data(ranges, part)
            del calibrator
            if recording is not None and to_serve <= 0:  # no method left to serve: the outputs are let go
                recording.runs.clear()
            log.debug("calibrated with %s on %d batch(es)%s", method.name, len(batches),
                      f" ({replay.served} served from the recorded run)" if replay else "")
    return counts
