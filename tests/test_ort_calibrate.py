"""Several calibration methods in one go (edge_inception/convert/ort_calibrate.py): each method's INT8 model is byte for
byte the one ONNX Runtime's quantize_static builds when it calibrates by itself, while the histogram methods share one
run of the images and build their histograms on several threads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_inception.convert.ort_calibrate import _Recording, _Replay, calibrate
from edge_inception.convert.quantize import _extra_options, calibrate_methods, int8_scheme, quantize_int8
from edge_inception.vocab import CalibMethod, QuantTarget

from .test_ort_reuse import AVX2, VNNI, _batches, _net


@pytest.mark.parametrize("cpu", [AVX2, VNNI], ids=["avx2", "vnni"])
def test_each_methods_model_is_the_one_quantize_static_builds_alone(tmp_path, cpu):
    src = _net(tmp_path / "net.onnx", 0)
    batches = _batches(3, n=5)
    scheme = int8_scheme(QuantTarget.cpu, cpu)
    methods = [CalibMethod.minmax, CalibMethod.entropy, CalibMethod.percentile]
    caches = {m: tmp_path / f"calibration.{m.value}.json" for m in methods}
    ticks: list[int] = []
    calibrate_methods(src, batches, scheme, caches, on_batch=lambda: ticks.append(1))
    assert all(p.is_file() for p in caches.values())
    assert len(ticks) == len(batches) * len(methods)  # a progress tick per batch and method, as before
    written = {m: p.read_bytes() for m, p in caches.items()}
    for m in methods:
        alone, shared = tmp_path / f"alone.{m.value}.onnx", tmp_path / f"shared.{m.value}.onnx"
        quantize_int8(src, alone, batches, scheme, m)  # quantize_static's own calibration
        quantize_int8(src, shared, batches, scheme, m, cache=caches[m])  # the ranges calibrated above
        assert shared.read_bytes() == alone.read_bytes(), m
        assert caches[m].read_bytes() == written[m]  # read, not recomputed
    # the methods' ranges differ (else the comparison above says little)
    ranges = {m: json.loads(written[m]) for m in methods}
    assert ranges[CalibMethod.minmax] != ranges[CalibMethod.entropy] != ranges[CalibMethod.percentile]


def test_histogram_methods_share_one_run_and_threads_change_nothing(tmp_path):
    from onnxruntime.quantization import CalibrationMethod

    src = _net(tmp_path / "net.onnx", 1)
    batches = _batches(5, n=4)
    options = _extra_options(int8_scheme(QuantTarget.cpu, AVX2), CalibMethod.entropy)
    made = {}
    for workers in (1, 3):
        caches = {m: tmp_path / f"w{workers}.{m.name}.json" for m in (CalibrationMethod.Entropy, CalibrationMethod.Percentile)}
        counts = calibrate(src, "input", batches, caches, options, workers=workers)
        assert counts == {"runs": len(batches), "served": len(batches)}  # the second method ran nothing
        made[workers] = {m: p.read_bytes() for m, p in caches.items()}
    assert made[1] == made[3]
    # an existing cache is kept, and nothing runs for it
    assert calibrate(src, "input", batches, {CalibrationMethod.Entropy: tmp_path / "w1.Entropy.json"}, options) == {"runs": 0, "served": 0}
    # one histogram method alone records nothing (nothing to serve) and runs once
    assert calibrate(src, "input", batches, {CalibrationMethod.Percentile: tmp_path / "alone.json"}, options) == {"runs": len(batches), "served": 0}
    assert (tmp_path / "alone.json").read_bytes() == made[1][CalibrationMethod.Percentile]


def test_a_replay_runs_its_own_session_for_inputs_it_was_not_recorded_with(tmp_path):
    from edge_inception.onnx_file import ort_session

    session = ort_session(_net(tmp_path / "net.onnx", 2))
    a, b = _batches(1, n=2)
    recording = _Recording(session)
    recorded = recording.run(None, {"input": a})
    replay = _Replay(session, recording.runs)
    # the same values in another array are not the recorded feed: computed afresh (and equal, the model being the same)
    got = replay.run(None, {"input": a.copy()})
    assert replay.ran == 1 and replay.served == 0 and np.array_equal(got[0], recorded[0])
    replay = _Replay(session, recording.runs)
    assert replay.run(None, {"input": a})[0] is recorded[0] and replay.served == 1
    # past the recording's end: computed
    other = replay.run(None, {"input": b})
    assert replay.ran == 1 and not np.array_equal(other[0], recorded[0])


def test_a_failed_calibration_leaves_no_cache(tmp_path):
    """A cache is written whole or not at all: a calibration that fails (here ONNX Runtime refuses a batch of the wrong
    shape, after the first method's cache was written) leaves no file a later call would read for the method that failed."""
    from onnxruntime.quantization import CalibrationMethod

    src = _net(tmp_path / "net.onnx", 3)
    bad = [*_batches(2, n=2), np.zeros((1, 4, 64, 64), np.float32)]
    with pytest.raises(Exception, match="(?i)channel|dimension|shape|invalid"):
        calibrate(src, "input", bad, {CalibrationMethod.MinMax: tmp_path / "c.json"}, {"CalibMovingAverage": True})
    assert not list(tmp_path.glob("c.json*")) and not list(tmp_path.glob("*.tmp"))


def test_threaded_collection_leaves_the_histograms_as_one_collect_call_does():
    """ONNX Runtime's HistogramCollector, called twice (the second call with a tensor it has and new ones), against the
    same calls through _PerTensor on three threads: the same histograms, in the same order (compute_collection_result
    follows it)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edge_inception.convert.ort_calibrate import _PerTensor

    rng = np.random.default_rng(0)
    first = {name: [rng.normal(0, 1, (1, 4, 8, 8)).astype(np.float32) for _ in range(2)] for name in ("b", "a", "c")}
    second = {name: [rng.normal(0, 2, (1, 4, 8, 8)).astype(np.float32)] for name in ("d", "a", "e")}
    plain = HistogramCollector("percentile", True, 64, 128, 99.9, "same")
    threaded = _PerTensor(HistogramCollector("percentile", True, 64, 128, 99.9, "same"), 3)
    for collector in (plain, threaded):
        collector.collect(first)
        collector.collect(second)
    assert list(threaded.histogram_dict) == list(plain.histogram_dict) == ["b", "a", "c", "d", "e"]
    for name, made in plain.histogram_dict.items():
        assert all(np.array_equal(x, y) for x, y in zip(made, threaded.histogram_dict[name], strict=True)), name
    assert threaded.compute_collection_result().keys() == plain.compute_collection_result().keys()
