"""The pure decision functions against answers worked out by hand (issue 41), never by calling the product again.

These are the fast unit tests `make mutate` runs mutmut with: the runtime choice (engines/choose.py), the verdict's
confidence bound (evaluate/verdict.py), the accuracy guard's ranking and bisection (convert/guard.py), the bounds
(limits.py), the name and label rules (names.py), the preprocessing geometry (data/images.py) and fileio's publish,
replace and sweep rules. Every expected value below is a literal, with the arithmetic beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_inception import fileio
from edge_inception.convert.guard import GuardResult, rank, run_guard, smallest
from edge_inception.data.images import reference_geometry, resize_size_for
from edge_inception.engines.choose import Availability, BackendTime, Choice, backends_to_measure, choose, fastest_backend
from edge_inception.engines.targets import Target, get_target
from edge_inception.errors import BackendUnavailableError, ModelFileError, OutputPathError
from edge_inception.evaluate.verdict import Verdict, images_needed, wilson_lower_bound
from edge_inception.evaluate.verify import Parity
from edge_inception.limits import (
    LimitError,
    check_batch,
    check_batch_memory,
    check_image_size,
    check_num_classes,
    check_range,
    check_threads,
    max_threads,
)
from edge_inception.names import UnsafeNameError, check_labels, check_name, check_text, is_number, printable
from edge_inception.vocab import Backend, Precision

TRT, CUDA = "TensorrtExecutionProvider", "CUDAExecutionProvider"
NO_TRT = "TensorRT is not installed"
NO_ORT_TRT = "libnvinfer.so.10: cannot open shared object file"
NO_CUDA = "no CUDAExecutionProvider"
ALL = Availability(None, None, None)
NO_NATIVE = Availability(NO_TRT, None, None)
CUDA_ONLY = Availability(NO_TRT, NO_ORT_TRT, None)
NOTHING = Availability(NO_TRT, NO_ORT_TRT, NO_CUDA)


def gpu_target(backends: tuple[str, ...] = ("tensorrt", "ort")) -> Target:
    return Target(name="jet", description="", device="cuda", backend=backends[0], backends=backends, default_precision="fp16",
                  precisions=("fp32", "fp16", "int8"))


# --- engines/choose.py -------------------------------------------------------------------------------------------------

def test_choose_cpu_takes_the_targets_backend_or_the_asked_one():
    cpu = get_target("cpu")  # backend "ort" in engines/targets/cpu.toml
    assert choose(cpu, Precision.int8, None, NOTHING) == Choice(Backend.ort, (), "ort on the CPU")
    assert choose(cpu, Precision.fp32, Backend.openvino, NOTHING) == Choice(Backend.openvino, (), "openvino on the CPU")


def test_choose_gpu_order_of_preference_with_literal_lines():
    g = gpu_target()
    assert choose(g, Precision.fp16, None, ALL) == Choice(Backend.tensorrt, (), "native TensorRT")
    assert choose(g, Precision.fp16, None, NO_NATIVE) == Choice(
        Backend.ort, (TRT, CUDA), f"ONNX Runtime with {TRT} then {CUDA} (not native TensorRT: {NO_TRT})")
    assert choose(g, Precision.int8, None, CUDA_ONLY) == Choice(
        Backend.ort, (CUDA,), f"ONNX Runtime with {CUDA} (not native TensorRT: {NO_TRT}; not ONNX Runtime's TensorRT provider: {NO_ORT_TRT})")
    # ONNX Runtime's TensorRT provider without native TensorRT and without its own libraries: CUDA alone
    assert choose(g, Precision.fp16, None, Availability(NO_TRT, NO_ORT_TRT, None)).providers == (CUDA,)
    # only the CUDA provider missing: TensorRT's provider alone
    assert choose(g, Precision.fp16, None, Availability(NO_TRT, None, NO_CUDA)) == Choice(
        Backend.ort, (TRT,), f"ONNX Runtime with {TRT} (not native TensorRT: {NO_TRT}; not ONNX Runtime's CUDA provider: {NO_CUDA})")


def test_choose_strict_fp32_skips_the_tensorrt_provider_unless_tf32_allowed():
    g = gpu_target()
    strict = "ONNX Runtime's TensorRT provider: it cannot turn TF32 off, and this FP32 build is strict (--allow-tf32 permits it)"
    assert choose(g, Precision.fp32, None, NO_NATIVE) == Choice(
        Backend.ort, (CUDA,), f"ONNX Runtime with {CUDA} (not native TensorRT: {NO_TRT}; not {strict})")
    assert choose(g, Precision.fp32, None, NO_NATIVE, allow_tf32=True).providers == (TRT, CUDA)
    assert choose(g, Precision.fp16, None, NO_NATIVE).providers == (TRT, CUDA)  # only FP32 is strict
    assert choose(g, Precision.int8, None, NO_NATIVE).providers == (TRT, CUDA)
    # native TensorRT is not touched by the TF32 rule
    assert choose(g, Precision.fp32, None, ALL).backend is Backend.tensorrt


def test_choose_requested_backends():
    g = gpu_target()
    with pytest.raises(BackendUnavailableError) as e:
        choose(g, Precision.fp16, Backend.tensorrt, CUDA_ONLY)
    assert str(e.value) == NO_TRT
    assert choose(g, Precision.fp16, Backend.tensorrt, ALL) == Choice(Backend.tensorrt, (), "native TensorRT")
    # --backend ort: no "(not ...)" explanation, since the user chose; native TensorRT is not used even when present
    assert choose(g, Precision.fp16, Backend.ort, NO_NATIVE) == Choice(Backend.ort, (TRT, CUDA), f"ONNX Runtime with {TRT} then {CUDA}")
    assert choose(g, Precision.fp16, Backend.ort, ALL) == Choice(Backend.ort, (TRT, CUDA), f"ONNX Runtime with {TRT} then {CUDA}")
    assert choose(g, Precision.fp16, Backend.openvino, NOTHING) == Choice(Backend.openvino, (), "openvino (as asked)")


def test_choose_target_without_tensorrt_uses_cuda_only_and_says_nothing_skipped():
    g = gpu_target(("ort",))
    assert choose(g, Precision.fp16, None, ALL) == Choice(Backend.ort, (CUDA,), f"ONNX Runtime with {CUDA}")
    assert choose(g, Precision.fp16, None, NO_NATIVE) == Choice(Backend.ort, (CUDA,), f"ONNX Runtime with {CUDA}")


def test_choose_nothing_usable_names_every_reason():
    with pytest.raises(BackendUnavailableError) as e:
        choose(gpu_target(), Precision.fp16, None, NOTHING)
    assert str(e.value) == (f"target 'jet' needs a GPU runtime and none is usable here: native TensorRT: {NO_TRT}; "
                            f"ONNX Runtime's TensorRT provider: {NO_ORT_TRT}; ONNX Runtime's CUDA provider: {NO_CUDA}")
    with pytest.raises(BackendUnavailableError) as e:
        choose(gpu_target(("ort",)), Precision.fp16, None, NOTHING)
    assert str(e.value) == f"target 'jet' needs a GPU runtime and none is usable here: ONNX Runtime's CUDA provider: {NO_CUDA}"


CPU_BOTH = {Backend.ort: None, Backend.openvino: None}
NO_OV = "OpenVINO is not installed: pip install 'edge-inception[openvino]'"


def test_backends_to_measure_only_when_two_run_and_none_was_asked():
    cpu = get_target("cpu")  # backends ort, openvino
    assert backends_to_measure(cpu, None, CPU_BOTH) == (Backend.ort, Backend.openvino)
    assert backends_to_measure(cpu, Backend.ort, CPU_BOTH) == ()  # --backend: nothing to measure
    assert backends_to_measure(cpu, None, {Backend.ort: None, Backend.openvino: NO_OV}) == ()  # one runs here
    assert backends_to_measure(cpu, None, {Backend.ort: None}) == ()  # a backend not probed counts as missing
    assert backends_to_measure(gpu_target(), None, {Backend.tensorrt: None, Backend.ort: None}) == ()  # GPUs: the preference order


def test_fastest_backend_by_hand():
    cpu = get_target("cpu")
    src = "measured now"
    # the figures: ONNX Runtime 4.60 ms, OpenVINO 2.61 ms on the same INT8 model: OpenVINO, both figures stated
    times = [BackendTime(Backend.ort, 4.6), BackendTime(Backend.openvino, 2.61)]
    assert fastest_backend(cpu, Precision.int8, None, CPU_BOTH, times, source=src, noise=0.03) == Choice(
        Backend.openvino, (), "openvino on the CPU: the fastest for int8 on this CPU (p50 at batch 1: openvino 2.61 ms, ort 4.60 ms; measured now)")
    # 2.60 vs 2.53: 2.60 <= 2.53 * 1.03 = 2.6059, a tie: the target's first (ort) keeps it
    tie = [BackendTime(Backend.ort, 2.60), BackendTime(Backend.openvino, 2.53)]
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, tie, source=src, noise=0.03).line == (
        "ort on the CPU: within 3% of the fastest (a tie) and first in the target's list for fp32 on this CPU "
        "(p50 at batch 1: openvino 2.53 ms, ort 2.60 ms; measured now)")
    # 2.61 > 2.6059: no longer a tie
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, [BackendTime(Backend.ort, 2.61), BackendTime(Backend.openvino, 2.53)],
                           source=src, noise=0.03).backend is Backend.openvino
    # with no noise allowance the strictly faster one
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, tie, source=src, noise=0.0).backend is Backend.openvino
    # a backend that failed its build's judge is not a candidate, however fast
    failed = [BackendTime(Backend.ort, 4.6), BackendTime(Backend.openvino, None, "logits differ")]
    assert fastest_backend(cpu, Precision.int8, None, CPU_BOTH, failed, source=src, noise=0.03) == Choice(
        Backend.ort, (), "ort on the CPU: the fastest for int8 on this CPU (p50 at batch 1: ort 4.60 ms; measured now); "
                         "openvino not judged: logits differ")
    # --backend wins over any figure
    assert fastest_backend(cpu, Precision.int8, Backend.ort, CPU_BOTH, times, source=src, noise=0.03) == Choice(
        Backend.ort, (), "ort on the CPU (as asked: --backend ort)")


def test_fastest_backend_with_one_or_no_backend_here():
    cpu = get_target("cpu")
    one = {Backend.ort: None, Backend.openvino: NO_OV}
    assert fastest_backend(cpu, Precision.int8, None, one, [], source="", noise=0.03) == Choice(
        Backend.ort, (), f"ort on the CPU: the only one of target 'cpu''s backends that runs here (not openvino: {NO_OV})")
    # times for a backend that is not installed do not count
    assert fastest_backend(cpu, Precision.int8, None, one, [BackendTime(Backend.openvino, 1.0)], source="", noise=0.03).backend is Backend.ort
    assert fastest_backend(cpu, Precision.int8, None, CPU_BOTH, [], source="", noise=0.03) == Choice(
        Backend.ort, (), "ort on the CPU: the target's first; no backend could be measured")
    with pytest.raises(BackendUnavailableError) as e:
        fastest_backend(cpu, Precision.int8, None, {Backend.ort: "no onnxruntime", Backend.openvino: NO_OV}, [], source="", noise=0.03)
    assert str(e.value) == f"target 'cpu': none of its backends runs here (not ort: no onnxruntime; not openvino: {NO_OV})"



def test_fastest_backend_messages_by_hand():
    cpu = get_target("cpu")
    # a backend the probe never answered for is not usable, and the line says so
    assert fastest_backend(cpu, Precision.int8, None, {Backend.ort: None}, [], source="", noise=0.03).line == (
        "ort on the CPU: the only one of target 'cpu''s backends that runs here (not openvino: not probed)")
    assert backends_to_measure(cpu, None, {Backend.ort: None}) == ()
    # a target of one backend: nothing else to name, no empty brackets
    solo = Target(name="solo", description="", device="cpu", backend="ort", backends=("ort",), default_precision="fp32",
                  precisions=("fp32",))
    assert fastest_backend(solo, Precision.fp32, None, {Backend.ort: None}, [], source="", noise=0.03).line == (
        "ort on the CPU: the only one of target 'solo''s backends that runs here")
    # every measurement failed: the first, with each failure named in the target's order, '; ' between them
    both_failed = [BackendTime(Backend.ort, None, "no model"), BackendTime(Backend.openvino, None, "logits differ")]
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, both_failed, source="", noise=0.03).line == (
        "ort on the CPU: the target's first; no backend could be measured (ort not judged: no model; openvino not judged: logits differ)")
    # figures from the fastest up, not by name (ort before openvino here); a time for a backend that is not usable here
    # (TensorRT on a CPU target) and one without a figure are not candidates
    times = [BackendTime(Backend.openvino, 3.0), BackendTime(Backend.ort, 2.0), BackendTime(Backend.tensorrt, 1.0),
             BackendTime(Backend.ort, None)]
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, times[:3], source="s", noise=0.0, batch=8).line == (
        "ort on the CPU: the fastest for fp32 on this CPU (p50 at batch 8: ort 2.00 ms, openvino 3.00 ms; s)")
    assert fastest_backend(cpu, Precision.fp32, None, CPU_BOTH, [times[0], times[3]], source="s", noise=0.0).backend is Backend.openvino

# --- evaluate/verdict.py -----------------------------------------------------------------------------------------------

Z2 = 2.705543454095413  # 1.6448536269514722 ** 2


def test_wilson_bound_more_hand_worked_counts():
    # 5 of 10: p 0.5; centre 0.5 + 2.70554/20 = 0.635277; half-width 1.64485 * sqrt(0.025 + 2.70554/400) = 0.293152;
    # (0.635277 - 0.293152) / (1 + 0.270554) = 0.269272
    assert wilson_lower_bound(5, 10) == pytest.approx(0.269272, abs=1e-6)
    # 9 of 10: centre 0.9 + 0.135277 = 1.035277; half-width 1.64485 * sqrt(0.009 + 0.00676386) = 0.206505 -> 0.652281
    assert wilson_lower_bound(9, 10) == pytest.approx(0.652281, abs=1e-6)
    assert wilson_lower_bound(99, 100) == pytest.approx(0.956418, abs=1e-6)
    # none of 10: centre z^2/20 equals the half-width z * sqrt(z^2/400): the bound is exactly 0, not below
    assert wilson_lower_bound(0, 10) == 0.0
    # 50 of 50: n / (n + z^2) = 50 / 52.705543 = 0.948667
    assert wilson_lower_bound(50, 50) == pytest.approx(50 / (50 + Z2)) == pytest.approx(0.948667, abs=1e-6)
    # two-sided 95 % (z = 1.959964) for 95 of 100: 0.888250
    assert wilson_lower_bound(95, 100, z=1.959964) == pytest.approx(0.888250, abs=1e-6)
    assert wilson_lower_bound(3, -1) == 0.0
    assert wilson_lower_bound(10, 10) < 1.0
    with pytest.raises(ValueError):
        wilson_lower_bound(-0.5, 10)
    assert wilson_lower_bound(10, 10) > 0.787 and wilson_lower_bound(0.0, 1) == 0.0


def test_images_needed_hand_worked():
    # every image agreeing: n / (n + z^2) >= t  <=>  n >= t * z^2 / (1 - t)
    assert images_needed(0.95) == 52  # 0.95 * 2.70554 / 0.05 = 51.4
    assert images_needed(0.99) == 268  # 267.85
    assert images_needed(0.5) == 3  # 2.71: 3 / 5.71 = 0.525 >= 0.5, 2 / 4.71 = 0.425 < 0.5
    assert images_needed(0.9, observed=0.95) == 98
    assert images_needed(0.95, observed=0.95) is None  # observed must exceed the target
    assert images_needed(0.99, observed=0.5) is None


def test_verdict_uses_distinct_images_and_states_it():
    v = Verdict("top-1 agreement with FP32", 1.0, 300, 10, 0.99, "bundled photos")
    assert v.lower_bound == pytest.approx(10 / (10 + Z2))  # n = 10 photos, not 300 crops: 0.787058
    assert not v.met and not v.missed
    assert v.explain() == ("top-1 agreement with FP32 100.0% on 300 image(s) of 10 distinct photo(s) (bundled photos); 95% lower bound 78.7% "
                           "< 99.0%: the evidence is too thin to claim 99%; judging on at least 268 distinct photos would be needed at this "
                           "top-1 agreement with FP32 (--holdout DIR, or a larger --calib folder)")
    few = Verdict("top-1 accuracy", 1.0, 5, 50, 0.5, "x")  # fewer samples than images: n = 5
    assert few.lower_bound == pytest.approx(5 / (5 + Z2))
    assert few.met and few.explain().endswith(">= 50.0%: criterion met")
    missed = Verdict("top-1 accuracy", 0.98, 1000, 1000, 0.99, "holdout")
    assert missed.missed and not missed.met
    assert missed.explain().endswith(": below 99.0%, the criterion is missed")
    exact = Verdict("m", 0.99, 100, 100, 0.99, "s")  # the point estimate equal to the criterion: not missed, not met
    assert not exact.missed and not exact.met
    assert exact.explain().endswith("< 99.0%: the evidence is too thin to claim 99%")  # no number of photos can show it
    d = v.as_dict()
    assert d["distinct_images"] == 10 and d["samples"] == 300 and d["met"] is False and d["confidence"] == 0.95
    assert d["lower_bound"] == pytest.approx(0.787058, abs=1e-6) and d["criterion"] == 0.99 and d["explanation"] == v.explain()
    assert d["measure"] == "top-1 agreement with FP32" and d["value"] == 1.0 and d["source"] == "bundled photos"
    met_at_bound = Verdict("m", 1.0, 268, 268, 0.99, "s")
    assert met_at_bound.met and not Verdict("m", 1.0, 267, 267, 0.99, "s").met


# --- convert/guard.py ----------------------------------------------------------------------------------------------

def test_guard_rank_by_damage_or_damage_per_parameter():
    sens = {"a": 0.1, "b": 0.2, "c": 0.05}
    params = {"a": 0, "b": 90_000, "c": 0}
    # weight-only fallback: damage alone, largest first
    assert rank(sens, params, True) == ["b", "a", "c"]
    # all-float fallback: damage / (params + 10000): a 1e-5, b 2e-6, c 5e-6
    assert rank(sens, params, False) == ["a", "c", "b"]
    # a stage missing from params counts 10000
    assert rank({"x": 0.3, "y": 0.2}, {"y": 0}, False) == ["x", "y"]


def test_guard_smallest_is_a_bisection_for_the_first_true():
    for first in range(1, 9):
        calls: list[int] = []

        def ok(k: int, first: int = first, calls: list[int] = calls) -> bool:
            calls.append(k)
            return k >= first

        assert smallest(1, 8, ok) == first
        assert len(calls) <= 3  # log2(8): a bisection, not a scan
    assert smallest(3, 3, lambda k: False) == 3  # ok(hi) is given
    assert smallest(2, 5, lambda k: k >= 4) == 4


class _Mixer:
    """A pure stand-in for how a mixed model is made: each stage adds a known error unless it is kept at the fallback."""

    def __init__(self, damage: dict[str, float], weight_only: bool, tmp: Path, params: dict[str, int] | None = None):
        self.stages = {s: [f"{s}/conv"] for s in damage}
        self.stage_params = params or {s: 1000 for s in damage}
        self.weight_only_fallback = weight_only
        self.damage = damage
        self.tmp = tmp
        self.built: dict[Path, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.names: list[str] = []
        self.probe_sizes: list[int] = []

    def build(self, name, fallback, float_stages=()):
        path = self.tmp / f"{name}.onnx"
        self.names.append(name)
        self.built[path] = (tuple(fallback), tuple(float_stages))
        return path


PARITY = Parity(4, 0.0, 0.0, 1.0, 1.0, 1.0)


def _guard(damage, weight_only, tmp, passes, params=None, samples=4):
    mixer = _Mixer(damage, weight_only, tmp, params)
    ref = np.eye(4)[np.arange(samples) % 4] * 10.0 + 1.0  # samples x 4 classes

    def logits(path, batches):
        fallback, _ = mixer.built[path]
        x = np.concatenate(batches)
        mixer.probe_sizes.append(len(x))
        noise = sum(d for s, d in damage.items() if s not in fallback)
        return x + noise * np.arange(x.size).reshape(x.shape)

    def judge(path):
        fallback, floats = mixer.built[path]
        return passes(set(fallback), set(floats)), PARITY

    result = run_guard(mixer, logits, [ref], ref, judge)
    assert all(re.fullmatch(r"only_s\d|mixed_\d_\d", n) for n in mixer.names), mixer.names
    assert sorted(n for n in mixer.names if n.startswith("only_")) == [f"only_{s}" for s in sorted(damage)]
    return result, mixer


def test_guard_keeps_the_fewest_most_damaging_stages(tmp_path):
    damage = {"s1": 0.01, "s2": 0.5, "s3": 0.0, "s4": 0.2}
    # the judge accepts once s2 and s4 (the two worst) are kept
    r, mixer = _guard(damage, True, tmp_path, lambda kept, floats: {"s2", "s4"} <= kept)
    assert isinstance(r, GuardResult)
    assert r.kept == ["s2", "s4"] and r.float_weights == []
    assert r.candidate == tmp_path / "mixed_2_0.onnx" and r.parity is PARITY
    assert all(not floats for fallback, floats in mixer.built.values())  # no weights went float: nothing needed it
    assert "mixed_4_0" in mixer.names  # all stages kept tried first
    assert max(r.sensitivity, key=lambda s: r.sensitivity[s]) == "s2"
    assert r.sensitivity["s3"] == pytest.approx(0.0, abs=1e-12)  # 1 - cosine of identical logits
    assert r.sensitivity["s1"] > 0.0


def test_guard_probes_32_images_and_ranks_weight_only_by_damage_alone(tmp_path):
    damage = {"s1": 0.01, "s2": 0.5, "s3": 0.05, "s4": 0.2}
    params = {"s1": 10, "s2": 10_000_000, "s3": 10, "s4": 10}  # per parameter, s2 would rank last
    r, mixer = _guard(damage, True, tmp_path, lambda kept, floats: "s2" in kept, params=params, samples=40)
    assert mixer.probe_sizes[:4] == [32, 32, 32, 32]  # the sensitivity probe: the first 32 held-out images
    assert r.kept == ["s2"]
    r, _ = _guard(damage, False, tmp_path, lambda kept, floats: "s1" in kept, params=params)
    assert r.kept == ["s4", "s3", "s1"]  # all-float fallback: damage per parameter (s4, s3, s1, then s2); s1 needs the first three


def test_guard_turns_weights_float_when_activations_alone_miss(tmp_path):
    damage = {"s1": 0.01, "s2": 0.5, "s3": 0.05, "s4": 0.2}
    # never enough with INT8 weights; s2's weights float and s2, s4 kept is enough
    r, _ = _guard(damage, True, tmp_path, lambda kept, floats: "s2" in floats and {"s2", "s4"} <= kept)
    assert r.float_weights == ["s2"] and r.kept == ["s2", "s4"]
    assert r.candidate == tmp_path / "mixed_2_1.onnx"
    # nothing passes: everything at the fallback with float weights, the last resort
    r, _ = _guard(damage, True, tmp_path, lambda kept, floats: False)
    assert r.kept == ["s2", "s4", "s3", "s1"] and r.float_weights == ["s2", "s4", "s3", "s1"]
    assert r.candidate == tmp_path / "mixed_4_4.onnx"
    # an all-float fallback: the kept stages are the float ones, and no float-weight search is made
    r, _ = _guard(damage, False, tmp_path, lambda kept, floats: {"s2"} <= kept)
    assert r.kept == ["s2"] and r.float_weights == ["s2"]
    r, mixer = _guard(damage, False, tmp_path, lambda kept, floats: bool(floats))
    assert r.kept == ["s2", "s4", "s3", "s1"] and r.candidate == tmp_path / "mixed_4_0.onnx"
    assert all(not floats for fallback, floats in mixer.built.values())


def test_guard_rank_tie_breaks_by_hand():
    # a stage missing from params costs exactly 10000: 1.00005 / 10000 > 1.0 / (0 + 10000)
    assert rank({"x": 1.00005, "y": 1.0}, {"y": 0}, False) == ["x", "y"]
    # the fixed cost is exactly 10000: 1 / 10000 > 1.99995 / 20000 (with 10001 the order flips)
    assert rank({"x": 1.0, "y": 1.99995}, {"x": 0, "y": 10_000}, False) == ["x", "y"]


def test_best_calibration_by_hand():
    from edge_inception.convert.guard import CalibrationTrial as T
    from edge_inception.convert.guard import best_calibration
    from edge_inception.vocab import CalibMethod as M

    # meeting the criterion comes first: minmax and entropy meet it, percentile (closer on the worst photo) does not;
    # of the two, minmax's worst photo is closer (0.97 > 0.95), whatever the means say
    assert best_calibration({M.percentile: T(False, 0.999, 0.999), M.entropy: T(True, 0.95, 0.99), M.minmax: T(True, 0.97, 0.98)}) is M.minmax
    # none meets it: still the closest on the worst photo
    assert best_calibration({M.percentile: T(False, 0.90, 0.99), M.entropy: T(False, 0.92, 0.95)}) is M.entropy
    # the worst photos tie: the higher mean cosine
    assert best_calibration({M.entropy: T(True, 0.97, 0.990), M.minmax: T(True, 0.97, 0.995)}) is M.minmax
    # a full tie: the first tried
    assert best_calibration({M.entropy: T(True, 0.97, 0.99), M.percentile: T(True, 0.97, 0.99)}) is M.entropy
    assert best_calibration({M.minmax: T(False, 0.5, 0.5)}) is M.minmax
    with pytest.raises(ValueError, match=r"^no calibration method was tried$"):
        best_calibration({})

# --- limits.py -----------------------------------------------------------------------------------------------------

def test_limits_are_inclusive_and_named():
    assert check_range("--x", 0, 0, 5) == 0 and check_range("--x", 5, 0, 5) == 5
    for bad, msg in ((6, "--x must be in [0, 5], got 6"), (-1, "--x must be in [0, 5], got -1"),
                     (True, "--x must be an integer in [0, 5], got True"), (2.0, "--x must be an integer in [0, 5], got 2.0"),
                     ("3", "--x must be an integer in [0, 5], got '3'")):
        with pytest.raises(LimitError) as e:
            check_range("--x", bad, 0, 5)
        assert str(e.value) == msg
    assert check_image_size(1024) == 1024 and check_num_classes(32_768) == 32_768 and check_batch(1024) == 1024
    assert check_batch(1) == 1 and check_num_classes(1) == 1 and check_threads(0) == 0
    for fn, bad, name in ((check_image_size, 1025, "--image-size"), (check_num_classes, 32_769, "--num-classes"),
                          (check_batch, 1025, "--batch"), (check_batch, 0, "--batch"), (check_num_classes, 0, "--num-classes"),
                          (check_threads, max_threads() + 1, "--threads"), (check_threads, -1, "--threads")):
        with pytest.raises(LimitError, match=f"^{name} must be in "):
            fn(bad)
    assert check_threads(max_threads()) == max_threads()


def test_max_threads_is_four_per_core_by_hand(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert max_threads() == 12
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: as one core
    assert max_threads() == 4
    with pytest.raises(LimitError, match=r"^--size must be in \[1, 1024\]"):
        check_batch(2000, name="--size")


def test_batch_memory_refuses_what_cannot_fit():
    # 1024 x 1024 px at batch 1024: 4 B * 1024 * (3 * 1024^2 + 10.5 M * (1024/224)^2) = 0.9 TB, more than twice any test machine's memory
    with pytest.raises(LimitError, match=r"^--batch 1024 at 1024 px needs about 8\d\d\.\d GiB; .* GiB is available \(at most \d+ fits\)$"):
        check_batch_memory(1024, 1024)
    check_batch_memory(1, 224)  # 42 MB


# --- names.py ------------------------------------------------------------------------------------------------------

def test_names_pattern_by_hand():
    for good in ("a", "A0", "0", "a" * 64, "my-jetson_v1.2", "x.onnx"):
        assert check_name(good, "name") == good
    for bad in ("", "a" * 65, "-rf", ".hidden", "_x", "a..b", "a/b", "a b", "a;b", "é", "a\n", None, 3):
        with pytest.raises(UnsafeNameError):
            check_name(bad, "name")
    with pytest.raises(UnsafeNameError) as e:
        check_name(7, "target name")
    assert str(e.value).startswith("target name int is not a safe name: ")
    with pytest.raises(UnsafeNameError) as e:
        check_name("x" * 100, "model")
    assert str(e.value).startswith(f"model '{'x' * 79} is not a safe name")  # repr cut at 80 characters: a quote and 79 x


def test_text_and_labels_by_hand():
    assert check_text("a" * 1024, "d") == "a" * 1024
    with pytest.raises(UnsafeNameError, match=r"^d is 1025 characters long, more than 1024$"):
        check_text("a" * 1025, "d")
    assert check_text("x" * 10, "d", 10) == "x" * 10
    with pytest.raises(UnsafeNameError, match=r"^d is 11 characters long, more than 10$"):
        check_text("x" * 11, "d", 10)
    with pytest.raises(UnsafeNameError, match=r"^d holds the control character U\+001B at position 2$"):
        check_text("ab\x1b[31m", "d")
    with pytest.raises(UnsafeNameError, match=r"U\+202E at position 0"):
        check_text("\u202eevil", "d")  # a bidirectional override (Cf)
    with pytest.raises(UnsafeNameError, match=r"^d must be a string, got int$"):
        check_text(5, "d")
    assert check_text("tench, Tinca tinca", "d") == "tench, Tinca tinca"
    assert check_labels(["a", "b c"], "labels", 2) == ["a", "b c"]
    assert check_labels(("a",), "labels") == ["a"]
    with pytest.raises(UnsafeNameError, match=r"^labels has 2 entries, expected 3$"):
        check_labels(["a", "b"], "labels", 3)
    with pytest.raises(UnsafeNameError, match=r"^labels\[1\] is empty$"):
        check_labels(["a", "  "], "labels")
    with pytest.raises(UnsafeNameError, match=r"^labels must be a list of strings, got str$"):
        check_labels("ab", "labels")
    assert check_labels(["x" * 256], "l") == ["x" * 256]
    with pytest.raises(UnsafeNameError, match=r"^l\[0\] is 257 characters long, more than 256$"):
        check_labels(["x" * 257], "l")


def test_printable_and_is_number_by_hand():
    assert printable("a\x1bb") == "a\\x1bb"
    assert printable("a\nb\u202e") == "a\\nb\\u202e"
    assert printable("abcdef", 3) == "abc..."
    assert printable("abc", 3) == "abc"
    assert printable("é ü") == "é ü"
    for yes in ("0", "12", "0042"):
        assert is_number(yes)
    for no in ("", "²", "٣", "８", "1.5", "-1", " 1"):
        assert not is_number(no)


# --- data/images.py: the geometry ----------------------------------------------------------------------------------

def test_resize_size_and_geometry_for_other_sizes_by_hand():
    assert [resize_size_for(s) for s in (224, 112, 160, 299, 384)] == [256, 128, 183, 342, 439]  # 182.86 -> 183, 341.71 -> 342, 438.86 -> 439
    # 500 x 375 at 299: short side 342, long int(342 * 500 / 375) = 456; left round(78.5) = 78 (half to even), top round(21.5) = 22
    g = reference_geometry(500, 375, 299)
    assert g.resized == (456, 342) and g.box == (78, 22, 377, 321)
    # 375 x 500 at 224: width 256, height int(256 * 500 / 375) = int(341.33) = 341; top round(58.5) = 58 (half to even)
    g = reference_geometry(375, 500)
    assert g.resized == (256, 341) and g.box == (16, 58, 240, 282)
    # 305 x 256: width int(256 * 305 / 256) = 305, left round(40.5) = 40 (half to even), not 41
    assert reference_geometry(305, 256).box == (40, 16, 264, 240)
    # 307 x 256: left round(41.5) = 42 (half to even)
    assert reference_geometry(307, 256).box == (42, 16, 266, 240)
    # square: both sides 256, crop at 16
    assert reference_geometry(900, 900) == reference_geometry(256, 256)
    assert reference_geometry(900, 900).resized == (256, 256) and reference_geometry(900, 900).box == (16, 16, 240, 240)
    # the short side exactly the crop: 224 x 300 at 224 -> 256 x int(256 * 300 / 224) = int(342.86) = 342
    assert reference_geometry(224, 300).resized == (256, 342) and reference_geometry(224, 300).box == (16, 59, 240, 283)


# --- fileio: publish, replace and sweep rules ----------------------------------------------------------------------

UMASK_SCRIPT = """
import os, sys
os.umask(int(sys.argv[1], 8))
from pathlib import Path
from edge_inception.fileio import atomic_dir, write_text_atomic
out = Path(sys.argv[2])
write_text_atomic(out / "f.txt", "x")
with atomic_dir(out / "d", replace=False) as tmp:
    (tmp / "inner").write_text("y")
print(oct(os.stat(out / "f.txt").st_mode & 0o777), oct(os.stat(out / "d").st_mode & 0o777))
"""


@pytest.mark.parametrize("umask,file_mode,dir_mode", [("077", "0o600", "0o700"), ("002", "0o664", "0o775"), ("022", "0o644", "0o755")])
def test_published_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """A fresh process per umask: fileio caches the umask per process (reading it means setting it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", UMASK_SCRIPT, umask, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [file_mode, dir_mode]


SHA_1 = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"  # sha256 of b"1" (sha256sum)
SHA_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256 of b"abc" (FIPS 180-2's example)


def test_safe_relative_by_hand():
    for ok in ("a", "a/b.txt", "x" * 1024, "a b/c"):
        assert fileio.safe_relative(ok) == ok
    for bad in ("", "/a", "a/", "a//b", "./a", "a/./b", "a/..", "../a", "a\\b", "a\0b", "x" * 1025, 5, None, b"a"):
        assert fileio.safe_relative(bad) is None, bad


def _index(folder: Path, doc: object) -> None:
    (folder / fileio.OUTPUT_INDEX).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_read_output_index_refuses_what_is_not_an_index_of_ours(tmp_path):
    assert fileio.read_output_index(tmp_path) is None  # none
    (tmp_path / fileio.OUTPUT_INDEX).symlink_to(tmp_path / "elsewhere.json")
    assert fileio.read_output_index(tmp_path) is None  # a link is no index
    (tmp_path / fileio.OUTPUT_INDEX).unlink()
    good = {"edge_inception_version": "1", "files": {"a/b.txt": SHA_1}, "folders": ["a"]}
    _index(tmp_path, good)
    assert fileio.read_output_index(tmp_path) == good
    where = f"{tmp_path / fileio.OUTPUT_INDEX}: "
    bad = [
        ("[1,", r"^output index .*: not valid JSON \("),
        ([good], re.escape(where) + r"not an index written by edge-inception \(no 'files' map\)$"),
        ({"files": {}}, "no 'files' map"),  # no version
        ({"edge_inception_version": "1", "files": []}, "no 'files' map"),
        ({**good, "files": {"../x": SHA_1}}, re.escape(where) + r"file name '\.\./x' is not a path inside the folder$"),
        ({**good, "files": {fileio.OUTPUT_INDEX: SHA_1}}, "file name 'edge-inception.json' is not a path inside the folder$"),
        ({**good, "files": {"a": SHA_1[:63]}}, re.escape(where) + r"the sha256 of 'a' is not 64 hex digits$"),
        ({**good, "files": {"a": SHA_1.upper()}}, "the sha256 of 'a' is not 64 hex digits$"),
        ({**good, "files": {"a": "X" * 64}}, "the sha256 of 'a' is not 64 hex digits$"),
        ({**good, "files": {"a": 5}}, "the sha256 of 'a' is not 64 hex digits$"),
        ({**good, "files": {"/" + "y" * 99: SHA_1}}, "file name '/" + "y" * 79 + r"\.\.\.' is not a path"),  # 80 characters shown
    ]
    for doc, message in bad:
        _index(tmp_path, doc)
        with pytest.raises(ModelFileError, match=message):  # the error the caller names
            fileio.read_output_index(tmp_path, error=ModelFileError)
        with pytest.raises(OutputPathError):  # and OutputPathError by default
            fileio.read_output_index(tmp_path)


def test_walk_folder_and_index_files_by_hand(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c").mkdir()
    (tmp_path / "b" / "c" / "d.txt").write_text("1")
    (tmp_path / "a.txt").write_text("abc")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (tmp_path / "link").symlink_to(outside)  # a link to a folder: listed, never entered
    _index(tmp_path, {"any": "thing"})
    walked = list(fileio.walk_folder(tmp_path))
    assert [rel for rel, _ in walked] == ["a.txt", "b", "edge-inception.json", "link", "b/c", "b/c/d.txt"]
    kinds = [fileio._kind(st.st_mode) if not stat.S_ISLNK(st.st_mode) else "a link" for _, st in walked]
    assert kinds == ["a file", "a folder", "a file", "a link", "a folder", "a file"]
    # regular files only, the index left out, each by its sha256
    assert fileio.index_files(tmp_path) == {"a.txt": SHA_ABC, "b/c/d.txt": SHA_1}
    monkeypatch.setattr(fileio, "MAX_TREE_ENTRIES", 6)  # exactly at the bound: walked; one more entry: refused
    assert len(list(fileio.walk_folder(tmp_path))) == 6
    (tmp_path / "b" / "e").write_text("")
    with pytest.raises(OutputPathError, match=r"more than 6 entries; not a folder of ours$"):
        list(fileio.walk_folder(tmp_path))


def test_sha256_file_by_hand(tmp_path, monkeypatch):
    (tmp_path / "abc").write_bytes(b"abc")
    assert fileio.sha256_file(tmp_path / "abc") == SHA_ABC
    assert fileio.sha256_file(tmp_path / "abc", "model") == SHA_ABC
    big = b"\x5a" * ((1 << 20) + 3)  # more than one 1 MiB chunk
    (tmp_path / "big").write_bytes(big)
    import hashlib  # the standard library's own answer for the whole bytes at once

    assert fileio.sha256_file(tmp_path / "big") == hashlib.sha256(big).hexdigest()
    with pytest.raises(ModelFileError, match=r"^file not found: "):
        fileio.sha256_file(tmp_path / "missing")
    with pytest.raises(ModelFileError, match=r"^model .*: is a folder, not a regular file"):
        fileio.sha256_file(tmp_path, "model")
    monkeypatch.setattr(fileio, "MAX_HASHED_BYTES", 2)
    with pytest.raises(ModelFileError, match=r"^file .*abc: 3 bytes, more than the 2 "):
        fileio.sha256_file(tmp_path / "abc")


def test_foreign_entries_by_hand(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "d.txt").write_text("1")  # its folders a, a/b and a/b/c are ours
    (tmp_path / "d.txt").write_text("1")
    (tmp_path / "e").mkdir()  # an empty folder the index lists
    _index(tmp_path, "{}")
    index = {"files": {"a/b/c/d.txt": SHA_1, "d.txt": SHA_1}, "folders": ["e", "../x"]}
    assert fileio.foreign_entries(tmp_path, index) == []
    (tmp_path / "f").mkdir()  # an empty folder it does not list
    (tmp_path / "g.txt").write_text("user's")
    (tmp_path / "link").symlink_to(tmp_path / "d.txt")
    os.mkfifo(tmp_path / "p")
    (tmp_path / "a" / "z.txt").write_text("user's, below a listed folder")
    assert fileio.foreign_entries(tmp_path, index) == ["a/z.txt", "f (a folder)", "g.txt", "link (a link)", "p (a FIFO)"]
    # without the index's folder list only the folders that hold listed files are ours
    assert fileio.foreign_entries(tmp_path, {"files": index["files"]}) == [
        "a/z.txt", "e (a folder)", "f (a folder)", "g.txt", "link (a link)", "p (a FIFO)"]
    # the index's name below the top is a file like any other
    (tmp_path / "a" / fileio.OUTPUT_INDEX).write_text("{}")
    assert "a/edge-inception.json" in fileio.foreign_entries(tmp_path, index)


def test_check_replaceable_by_hand(tmp_path, monkeypatch):
    assert fileio._check_replaceable(tmp_path / "missing", replace=True) is False
    (tmp_path / "empty").mkdir()
    assert fileio._check_replaceable(tmp_path / "empty", replace=False) is False
    ours = tmp_path / "ours"
    with fileio.atomic_dir(ours, replace=False) as tmp:
        (tmp / "x").write_text("1")
    assert fileio._check_replaceable(ours, replace=True) is True
    (ours / "y").write_text("user's")
    with pytest.raises(OutputPathError, match=r"it holds 1 entry edge-inception did not write \(y\); move it or choose another folder$"):
        fileio._check_replaceable(ours, replace=True)
    # seven entries: five named (80 characters of each), the rest counted
    for i in range(6):
        (ours / f"{i}{'n' * 90}").write_text("user's")
    with pytest.raises(OutputPathError) as e:
        fileio._check_replaceable(ours, replace=True)
    first = ", ".join(f"{i}{'n' * 79}..." for i in range(5))
    assert str(e.value) == (f"refusing to replace {ours}: it holds 7 entries edge-inception did not write ({first} and 2 more); "
                            "move them or choose another folder")
    (ours / "y").unlink()
    (ours / f"5{'n' * 90}").unlink()
    with pytest.raises(OutputPathError, match=r"it holds 5 entries .*n\.\.\.\); move them"):  # all five named, no "and 0 more"
        fileio._check_replaceable(ours, replace=True)
    for i in range(5):
        (ours / f"{i}{'n' * 90}").unlink()

    # the check is made once on a folder that stays as it is; again while another writer swaps the folder for another
    # between the looks (it appeared, or was replaced): CHECK_TRIES times in all, the last one's answer standing
    calls = []
    real = fileio._check_replaceable

    def counted(path, *, replace):
        calls.append(path)
        return real(path, replace=replace)

    monkeypatch.setattr(fileio, "_check_replaceable", counted)
    (ours / "y").write_text("user's")
    with pytest.raises(OutputPathError, match=r"\(y\)"):
        fileio.check_replaceable(ours, replace=True)
    assert len(calls) == 1
    (ours / "y").unlink()
    clean = tmp_path / "clean"
    shutil.copytree(ours, clean)  # a folder the product wrote, as the last look finds it
    calls.clear()
    last_look_clean = [True]

    def swapped(path, *, replace):
        calls.append(path)
        other = tmp_path / f"other{len(calls)}"  # made while the old one stands: another inode
        if len(calls) == fileio.CHECK_TRIES and last_look_clean[0]:
            shutil.copytree(clean, other)
        else:
            other.mkdir()
            (other / "y").write_text("another writer's")
        shutil.rmtree(path, ignore_errors=True)
        os.rename(other, path)
        return real(path, replace=replace)

    monkeypatch.setattr(fileio, "_check_replaceable", swapped)
    shutil.rmtree(ours)  # missing at the first look: the folder appears during the check
    assert fileio.check_replaceable(ours, replace=True) is True
    assert len(calls) == fileio.CHECK_TRIES == 20
    calls.clear()
    last_look_clean[0] = False  # a swap at every look: the refusal from the 20th, not a 21st or 22nd
    with pytest.raises(OutputPathError, match=r"it holds files edge-inception did not write"):
        fileio.check_replaceable(ours, replace=True)
    assert len(calls) == 20


def test_the_folder_moved_aside_is_a_hidden_temporary_beside_the_output(tmp_path, monkeypatch):
    """Named as sweep_stale finds it after a killed run (hidden, the writer's pid), in the output's own folder (a rename,
    never a copy across file systems); checked once more there before it is deleted."""
    d = tmp_path / "d"
    with fileio.atomic_dir(d, replace=False) as tmp:
        (tmp / "x").write_text("1")
    seen = []
    real = fileio.check_replaceable

    def recording(path, *, replace):
        seen.append(path)
        return real(path, replace=replace)

    monkeypatch.setattr(fileio, "check_replaceable", recording)
    with fileio.atomic_dir(d, replace=True) as tmp:
        (tmp / "y").write_text("2")
    assert seen[0] == d and len(seen) == 2  # before any work, then on the folder moved aside
    aside = seen[1]
    assert aside.name == "d" and aside.parent.parent == tmp_path
    assert re.fullmatch(rf"\.d\.old\.edge-tmp-{os.getpid()}-[a-z0-9_]{{8}}", aside.parent.name), aside.parent.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and sorted(p.name for p in d.iterdir()) == [fileio.OUTPUT_INDEX, "y"]


def test_outputs_through_this_process_descriptors_are_refused(tmp_path):
    """/dev/stdout is a link to /proc/self/fd/1 and /dev/fd/1 lies below the link /dev/fd: an open file of this process,
    whatever it is now (a file when pytest captures it), never a file to replace."""
    (tmp_path / "out").symlink_to("/dev/stdout")
    (tmp_path / "rel").symlink_to("out")  # a relative link, read from its own folder
    (tmp_path / "fd").symlink_to("/dev/fd/1")
    for name, to in (("out", "/proc/self/fd/1"), ("rel", "/proc/self/fd/1"), ("fd", "/dev/fd/1")):
        with pytest.raises(OutputPathError, match=rf"^refusing to replace {re.escape(str(tmp_path / name))}: it is a link to {to}, "
                                                  r"an open file of this process"):
            fileio.output_target(tmp_path / name)
    with pytest.raises(OutputPathError, match=r"^output '-': this output is written to a file, not to stdout"):
        fileio.ensure_parent(Path("-"))

def test_output_target_rules(tmp_path):
    f = tmp_path / "f.txt"
    assert fileio.output_target(f) == f  # missing: itself
    f.write_text("x")
    assert fileio.output_target(f) == f
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    assert fileio.output_target(link) == f  # a link to a regular file: its final target
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(OutputPathError, match="symbolic link to .*missing, a loop or not a file"):
        fileio.output_target(dangling)
    with pytest.raises(OutputPathError, match=r"refusing to replace /dev/null: it is a character device, not a regular file$"):
        fileio.output_target(Path("/dev/null"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputPathError, match="it is a FIFO, not a regular file"):
        fileio.output_target(tmp_path / "fifo")
    with pytest.raises(OutputPathError, match="it is a folder, not a regular file"):
        fileio.output_target(tmp_path)
    assert fileio.output_target(tmp_path, folder=True) == tmp_path
    with pytest.raises(OutputPathError, match="it is a file, not a folder"):
        fileio.output_target(f, folder=True)
    with pytest.raises(OutputPathError, match="is a file: a file of that name is in the way"):
        fileio.output_target(f / "below")
    to_dev = tmp_path / "to_dev"
    to_dev.symlink_to("/dev/null")
    with pytest.raises(OutputPathError, match=r"\(a link to /dev/null\): it is a character device"):
        fileio.output_target(to_dev)


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".a.bin.edge-tmp-{dead_pid}-x1.tmp").write_text("half")
    (tmp_path / f".b.edge-tmp-{dead_pid}-x2.tmp").mkdir()
    (tmp_path / f".c.edge-tmp-{os.getpid()}-x3.tmp").write_text("mine, running")
    (tmp_path / f".d.edge-tmp-{dead_pid}x4.tmp").write_text("not our pattern")
    (tmp_path / f"e.edge-tmp-{dead_pid}-x5.tmp").write_text("not hidden: not ours")
    (tmp_path / "keep.txt").write_text("user file")
    assert fileio.sweep_stale(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".c.edge-tmp-{os.getpid()}-x3.tmp", f".d.edge-tmp-{dead_pid}x4.tmp", f"e.edge-tmp-{dead_pid}-x5.tmp", "keep.txt"])
    assert fileio.sweep_stale(tmp_path / "missing") == 0
    assert fileio._pid_alive(os.getpid()) and fileio._pid_alive(1) and not fileio._pid_alive(dead_pid)


def test_atomic_writes_leave_nothing_on_failure_and_refuse_non_empty_folders(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError), fileio.atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("1")
    for replace in (False, True):  # a folder the product did not write is never replaced, --force or not
        with pytest.raises(OutputPathError, match=r"it holds files edge-inception did not write"), fileio.atomic_dir(d, replace=replace):
            pass
    assert [p.name for p in d.iterdir()] == ["x"]
    (d / "x").unlink()
    with fileio.atomic_dir(d, replace=False) as tmp:  # an empty folder is taken
        (tmp / "x").write_text("1")
    with pytest.raises(OutputPathError, match=r"already exists and is not empty \(use --force to replace it\)$"), \
            fileio.atomic_dir(d, replace=False):
        pass
    with fileio.atomic_dir(d, replace=True) as tmp:  # one the product wrote is replaced with --force
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == [fileio.OUTPUT_INDEX, "y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out.txt"]  # the old folder is gone too
    empty = tmp_path / "empty"
    empty.mkdir()
    with fileio.atomic_dir(empty, replace=False) as tmp:  # an empty folder is not refused
        (tmp / "z").write_text("3")
    assert sorted(p.name for p in empty.iterdir()) == [fileio.OUTPUT_INDEX, "z"]
    with pytest.raises(RuntimeError), fileio.atomic_dir(tmp_path / "new", replace=False) as tmp:
        raise RuntimeError("interrupted")
    # another run filled the folder while this one built: without replace it is refused at the end too, and kept
    with pytest.raises(OutputPathError, match=r"new already exists and is not empty \(use --force to replace it\)$"), \
            fileio.atomic_dir(tmp_path / "new", replace=False) as tmp:
        (tmp / "mine").write_text("1")
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / "theirs").write_text("2")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["theirs"]
    shutil.rmtree(tmp_path / "new")
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d", "empty", "out.txt"]


def test_read_bounds_accept_the_bound_and_refuse_one_byte_more(tmp_path):
    f = tmp_path / "f.json"
    f.write_text('{"a": 1}')  # 8 bytes
    assert fileio.read_regular(f, 8) == b'{"a": 1}'
    with pytest.raises(ModelFileError, match=r"^file .*f.json: 8 bytes, more than the 7 such a file may have$"):
        fileio.read_regular(f, 7)
    assert fileio.read_json(f, 8) == {"a": 1}
    with pytest.raises(ModelFileError, match="not UTF-8 text"):
        (tmp_path / "b").write_bytes(b"\xff\xfe")
        fileio.read_text(tmp_path / "b", 10)
    assert fileio._json_depth('{"a": [1, {"b": "[[[["}]}') == 3  # brackets inside strings do not count
    assert fileio._json_depth('"[" ]') == 0
    deep = "[" * 32 + "]" * 32
    assert fileio.parse_json(deep, "w") == eval(deep)  # 32 levels: the bound itself
    with pytest.raises(ModelFileError, match=r"^w: JSON nested 33 levels deep, more than 32$"):
        fileio.parse_json("[" * 33 + "]" * 33, "w")
    with pytest.raises(ModelFileError, match=r"^w: not valid JSON \(NaN is not a JSON number\)$"):
        fileio.parse_json('{"a": NaN}', "w")
    assert stat.S_ISREG(os.stat(f).st_mode)


# --- what mutmut's first run left alive (see README, "Testing") ----------------------------------------------------

GIB = 1 << 30


def test_batch_memory_by_hand(monkeypatch):
    from edge_inception import limits

    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 4 * GIB)  # half of it, 2 GiB, may go to one batch
    # at 224 px one image needs 4 B * (3 * 224 * 224 + 10,500,000) = 42,602,112 B: 2 GiB / that = 50.4, so 50 fit
    limits.check_batch_memory(50, 224)
    with pytest.raises(LimitError) as e:
        limits.check_batch_memory(51, 224)
    assert str(e.value) == "--batch 51 at 224 px needs about 2.0 GiB; 4.0 GiB is available (at most 50 fits)"
    with pytest.raises(LimitError) as e:
        limits.check_batch_memory(64, 224, name="--size")
    assert str(e.value) == "--size 64 at 224 px needs about 2.5 GiB; 4.0 GiB is available (at most 50 fits)"  # 2,726,535,168 B
    # at 448 px: 4 B * (3 * 448 * 448 + 10,500,000 * 4) = 170,408,448 B an image: 12.6, so 12 fit
    limits.check_batch_memory(12, 448)
    with pytest.raises(LimitError, match=r"^--batch 13 at 448 px needs about 2\.1 GiB; 4\.0 GiB is available \(at most 12 fits\)$"):
        limits.check_batch_memory(13, 448)
    # even one image too many: "at most 1" rather than 0
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 40_000_000)
    with pytest.raises(LimitError, match=r"\(at most 1 fits\)$"):
        limits.check_batch_memory(2, 224)
    # exactly half the memory is allowed: 50 images of 42,602,112 B in 2 x 2,130,105,600 B
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 2 * 2_130_105_600)
    limits.check_batch_memory(50, 224)
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: None)  # unknown: no check
    limits.check_batch_memory(1024, 1024)


def test_available_memory_reads_kib_from_meminfo():
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    kib = int(line.split()[1])
    from edge_inception.limits import available_memory_bytes

    got = available_memory_bytes()
    assert got is not None and abs(got - kib * 1024) <= 64 * 1024 * 1024  # 1 KiB = 1024 B (the figure moves while we read)
    assert got % 1024 == 0


def test_wilson_edges_by_hand():
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(1, 1) == pytest.approx(1 / (1 + Z2))  # 0.269866: one trial is a trial
    with pytest.raises(ValueError, match=r"^successes must be in \[0, 10\], got 11$"):
        wilson_lower_bound(11, 10)
    assert images_needed(0.2) == 1  # 1 / 3.7055 = 0.27 >= 0.2 with one image
    assert images_needed(0.95, z=1.959964) == 73  # two-sided: 0.95 * 3.84146 / 0.05 = 72.99


def test_check_text_names_the_first_bad_character():
    with pytest.raises(UnsafeNameError, match=r"U\+001B at position 1$"):
        check_text("a\x1bb\x1b", "d")


def test_more_fileio_rules(tmp_path, monkeypatch):
    import socket

    # files and folders get 0666 / 0777 less this process's umask (the other umasks: the subprocess test above)
    mask = fileio._umask()
    fileio.write_text_atomic(tmp_path / "deep" / "er" / "f.txt", "x")  # missing folders are made, parents too
    with fileio.atomic_dir(tmp_path / "d", replace=False) as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE(os.stat(tmp_path / "deep" / "er" / "f.txt").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~mask
    # what each kind of file is called
    assert [fileio._kind(m) for m in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK, 0)] == [
        "a file", "a folder", "a character device", "a block device", "a FIFO", "a socket", "neither a file nor a folder"]
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        with pytest.raises(OutputPathError, match="it is a socket, not a regular file$"):
            fileio.output_target(tmp_path / "s")
    finally:
        sock.close()
    # a file on the way is named: the nearest existing ancestor that is not a folder
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputPathError) as e:
        fileio.output_target(f / "a" / "b")
    assert str(e.value) == f"cannot write {f / 'a' / 'b'}: {f} is a file: a file of that name is in the way"
    with pytest.raises(OutputPathError) as e:
        fileio.ensure_parent(tmp_path / "deep")
    assert str(e.value) == f"output path {tmp_path / 'deep'} is a folder, expected a file name"
    # each reader names what it reads and raises the error it is given
    (tmp_path / "j.json").write_text("[1]")
    for reader in (fileio.read_regular, fileio.read_text, fileio.read_json):
        with pytest.raises(ModelFileError, match=r"^file .*j\.json: 3 bytes, more than the 2 "):
            reader(tmp_path / "j.json", 2)
        with pytest.raises(OutputPathError, match=r"^bundle index .*j\.json: 3 bytes, more than the 2 "):
            reader(tmp_path / "j.json", 2, "bundle index", error=OutputPathError)
    (tmp_path / "b.txt").write_bytes(b"\xff")
    with pytest.raises(OutputPathError, match=r"^labels .*b\.txt: not UTF-8 text"):
        fileio.read_text(tmp_path / "b.txt", 10, "labels", error=OutputPathError)
    with pytest.raises(OutputPathError, match=r"^preset .*b\.txt: not UTF-8 text"):
        fileio.read_json(tmp_path / "b.txt", 10, "preset", error=OutputPathError)
    (tmp_path / "bad.json").write_text("[1,")
    with pytest.raises(OutputPathError, match=r"^preset .*bad\.json: not valid JSON \("):
        fileio.read_json(tmp_path / "bad.json", 10, "preset", error=OutputPathError)
    with pytest.raises(OutputPathError, match=r"^w: JSON nested 33 levels"):
        fileio.parse_json("[" * 33 + "]" * 33, "w", error=OutputPathError)
    # the depth of brackets, closing ones counted down by one
    assert [fileio._json_depth(t) for t in ("[][][]", "[[]][[]]", "[[][[]]]", "{}", "")] == [1, 2, 3, 1, 0]


def test_a_live_process_is_alive_and_not_disturbed_by_the_question():
    """A live process that is not ours: alive, and not disturbed by the question (signal 0). Apart from the other fileio
    rules because it waits half a second: mutmut runs only the tests that reach a mutated function."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert fileio._pid_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.5)  # still running
    finally:
        child.kill()
        child.wait()


def test_preprocess_honours_its_size_mean_and_std():
    from PIL import Image

    from edge_inception.data.images import normalize, preprocess

    im = Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    assert preprocess(im, 112).shape == (3, 112, 112)
    raw = preprocess(im, 64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # plain ToTensor: [0, 1]
    assert raw.min() >= 0.0 and raw.max() <= 1.0 and raw.dtype == np.float32
    assert normalize(Image.new("RGB", (1, 1), (255, 0, 51)), (0.5, 0.5, 0.5), (0.5, 0.25, 0.1))[:, 0, 0].tolist() == pytest.approx(
        [1.0, -2.0, -3.0])  # (1 - 0.5) / 0.5, (0 - 0.5) / 0.25, (0.2 - 0.5) / 0.1


def test_tables_right_align_numbers_only_and_carry_no_trailing_spaces(capsys):
    """Numbers line up on the right, text on the left; a long text cell in the last column pads nothing (the pipeline's
    stage table printed 380-character rows, text right-aligned, before)."""
    from edge_inception.cli_common import echo_table, numeric_column

    assert numeric_column(["4.5", "59.1", "-", "12 %", "1.03x", "1,426"]) and not numeric_column(["4.5", "ort-fp32"])
    assert not numeric_column(["", "-"])  # nothing to align
    echo_table([["export", "4.5", "model.fp32.onnx"], ["quantize int8", "59.1", "x" * 50]], ["stage", "seconds", "result"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stage          seconds  result"
    assert lines[2] == "export             4.5  model.fp32.onnx"
    assert lines[3] == "quantize int8     59.1  " + "x" * 50
    assert all(line == line.rstrip() for line in lines)
