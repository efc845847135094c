"""INT8 (static, calibrated, explicit Q/DQ) and FP16 quantization, with an accuracy report and guard.

INT8 uses ONNX Runtime's static quantizer in QDQ format with per-channel weights: the form both ONNX Runtime
and TensorRT 10/11 consume. The scheme follows the target:

* ``cpu`` without VNNI (AVX2 only, like this machine): unsigned activations, signed weights with reduced
  (7-bit) range, so the u8 x s8 multiply-add of AVX2 cannot saturate;
* ``cpu`` with VNNI (or Arm): the same, full range;
* ``gpu``/``tensorrt``: symmetric signed INT8 for both (TensorRT only takes symmetric scales).

The accuracy guard compares the quantized model with FP32 on held-out images; when INT8 falls below
``min_agreement`` the stages that hurt most (measured by quantizing one stage at a time) keep float
activations until the guard holds, or the run fails and nothing is written. On this machine's demo net the
damage comes from activation rounding compounding through 57 convolutions (weights alone in INT8 keep cosine
> 0.9999), so a kept stage keeps INT8 weights (weight-only) where the runtime can use them: the file stays at a
quarter of FP32 whatever the guard keeps.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import find_images, load_batch
from ..errors import EdgeInceptionError, ImageError, VerificationError
from ..evaluate.cpu import cpu_info
from ..evaluate.flops import stage_of
from ..evaluate.verify import Parity, compare, onnx_session, run_onnx
from ..fileio import atomic_path, write_json_atomic
from .onnx_file import get_metadata, load_onnx, model_image_size, set_metadata

log = logging.getLogger(__name__)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantTarget(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    tensorrt = "tensorrt"


@dataclass(frozen=True)
class Int8Scheme:
    activation: str  # "uint8" | "int8"
    weight: str
    reduce_range: bool
    symmetric_activations: bool
    reason: str
    # what the guard keeps a sensitive stage in: INT8 weights with float activations (ONNX Runtime runs the
    # dequantized weights in float; the file stays small), or all float (TensorRT builds INT8 kernels only
    # where both a conv's input and its weights carry Q/DQ, so weight-only stages buy nothing there)
    weight_only_fallback: bool = True


def int8_scheme(target: QuantTarget) -> Int8Scheme:
    if target is not QuantTarget.cpu:
        return Int8Scheme("int8", "int8", False, True, f"{target.value}: symmetric signed INT8 (TensorRT takes symmetric scales only)",
                          weight_only_fallback=target is QuantTarget.gpu)
    cpu = cpu_info()
    if cpu.vnni:
        return Int8Scheme("uint8", "int8", False, False, f"cpu ({cpu.model}) has VNNI/dot-product: u8 activations, s8 weights, full range")
    return Int8Scheme("uint8", "int8", True, False,
                      f"cpu ({cpu.model}) has no VNNI: u8 activations, s8 weights with reduced range (avoids AVX2 saturation)")


@dataclass
class ImageSets:
    calibration: list[Path]
    holdout: list[Path]
    skipped: int
    source: str
    warning: str | None = None


def select_images(calib: Path | None, holdout: Path | None, calib_size: int, holdout_size: int = 100) -> ImageSets:
    """Calibration and held-out image lists that never overlap."""
    if calib is None:
        from ..data.demo_data import default_demo_dir, make_demo_dataset

        demo = make_demo_dataset(default_demo_dir())
        calib_scan = find_images([demo / "train"])
        hold = find_images([holdout]) if holdout else find_images([demo / "val"])
        warning = "calibrating on the bundled demo photos; calibration on your own images (--calib DIR) gives better INT8 scales"
        return ImageSets(_spread(calib_scan.images, calib_size), _spread(hold.images, holdout_size), 0, "bundled photos (scikit-image)", warning)
    if not calib.exists():
        raise ImageError(f"calibration folder not found: {calib}")
    scan = find_images([calib], check=True)
    if not scan.images:
        raise ImageError(f"{calib}: no readable images (jpg/png/bmp/webp); {len(scan.skipped)} other file(s) skipped")
    if holdout is not None:
        hold_scan = find_images([holdout], check=True)
        held = hold_scan.images
        held_set = set(held)
        calib_images = [p for p in scan.images if p not in held_set]
        skipped = len(scan.skipped) + len(hold_scan.skipped)
    else:
        # every 5th image is held out for the accuracy report, the rest calibrates
        held = scan.images[4::5] or scan.images[-1:]
        held_set = set(held)
        calib_images = [p for p in scan.images if p not in held_set] or scan.images
        skipped = len(scan.skipped)
    if len(calib_images) == len(scan.images) and holdout is None:
        log.warning("only one image: the accuracy report reuses a calibration image")
    return ImageSets(_spread(calib_images, calib_size), _spread(held, holdout_size), skipped, str(calib))


def _spread(items: list[Path], n: int) -> list[Path]:
    """Up to ``n`` items spread evenly over the (sorted, class-ordered) list."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed images, with an optional progress bar."""

    def __init__(self, input_name: str, batches: list[np.ndarray], on_batch: Callable[[], None] | None = None) -> None:
        self.input_name, self.batches, self.on_batch = input_name, batches, on_batch
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        if self.on_batch:
            self.on_batch()
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_int8(src: Path, dst: Path, calib_batches: list[np.ndarray], scheme: Int8Scheme, method: CalibMethod, *,
                  exclude: Sequence[str] = (), weight_only: Sequence[str] = (), cache: Path | None = None,
                  on_batch: Callable[[], None] | None = None) -> None:
    """Static INT8 in Q/DQ form. ``exclude``: nodes left in float; ``weight_only``: nodes whose activations stay
    float but whose weights are stored as INT8. With ``cache`` the calibrated ranges are computed once and reused."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {CalibMethod.minmax: CalibrationMethod.MinMax, CalibMethod.entropy: CalibrationMethod.Entropy,
               CalibMethod.percentile: CalibrationMethod.Percentile}
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    model = load_onnx(src, with_weights=False)
    reader = _Reader(model.graph.input[0].name, calib_batches, on_batch)
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=scheme.reduce_range,
        activation_type=qtype[scheme.activation],
        weight_type=qtype[scheme.weight],
        calibrate_method=methods[method],
        nodes_to_exclude=[*exclude, *weight_only],
        extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
                       "CalibMovingAverage": method is CalibMethod.minmax},
        calibration_cache_path=cache,
    )
    if weight_only:
        qmodel = onnx.load(str(dst))
        int8_weights(qmodel, set(weight_only))
        onnx.save(qmodel, str(dst))


def prepare_for_quantization(src: Path, dst: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference and basic graph optimisation, which keeps node names)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def int8_weights(model, nodes: set[str]) -> int:
    """Store the weights of the named Conv/Gemm nodes as per-channel symmetric INT8 behind a DequantizeLinear.

    Compute stays float (no Q/DQ on activations), so the full 8-bit range is safe even without VNNI.
    Returns how many weights were converted.
    """
    from onnx import helper, numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    dq_nodes = []
    for node in model.graph.node:
        if node.name not in nodes or node.op_type not in ("Conv", "Gemm") or node.input[1] not in init:
            continue
        weight = init[node.input[1]]
        if users[weight.name] != 1 or weight.data_type != 1:  # shared or not float32: leave as is
            continue
        w = numpy_helper.to_array(weight)
        axis = 0
        if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
            axis = 1  # Gemm weight (K, N): output channels along axis 1
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.maximum(np.abs(w).max(axis=reduce), 1e-12) / 127.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = f"{weight.name}_w8"
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{base}_quantized"), numpy_helper.from_array(scale, f"{base}_scale"),
                                        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"], [weight.name],
                                         name=f"{node.name}_weight_DequantizeLinear", axis=axis))
    if dq_nodes:
        nodes_in_order = dq_nodes + list(model.graph.node)  # weight DQs read only initializers: first is topological
        del model.graph.node[:]
        model.graph.node.extend(nodes_in_order)
    return len(dq_nodes)


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(src)
    # Inputs/outputs stay float32; LRN's power of a sum of squares overflows fp16's 65504 range easily, so
    # it (and softmax, if present) keeps float32 compute.
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["LRN", "Softmax"])
    toposort(fp16.graph)  # the converter appends its input Casts last; the checker and shape inference need order
    onnx.save(fp16, str(dst))


def toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise EdgeInceptionError(f"graph has a cycle or a missing input at node {rest[0].name or rest[0].op_type}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


@dataclass
class AccuracyReport:
    holdout_images: int
    top1_agreement: float
    top5_overlap: float
    mean_cosine: float
    max_abs_error: float
    fp32_size_bytes: int
    size_bytes: int
    labelled: dict[str, float] | None = None  # top-1/top-5 accuracy of both, with --eval

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.fp32_size_bytes


@dataclass
class QuantizeResult:
    path: Path
    report_path: Path
    precision: Precision
    target: QuantTarget
    scheme: str
    accuracy: AccuracyReport
    calibration_images: int = 0
    skipped_files: int = 0
    calibration_source: str = ""
    kept_float: list[str] = field(default_factory=list)  # stages the guard keeps with float activations
    float_weights: list[str] = field(default_factory=list)  # of those, the ones whose weights stay float too
    sensitivity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["report_path"] = str(self.path), str(self.report_path)
        d["precision"], d["target"] = self.precision.value, self.target.value
        d["accuracy"]["size_ratio"] = self.accuracy.size_ratio
        return d


def _logits(path: Path | bytes, batches: list[np.ndarray]) -> np.ndarray:
    session = onnx_session(path)
    return np.concatenate([run_onnx(session, b) for b in batches])


def _batches(paths: list[Path], size: int, batch: int = 16) -> list[np.ndarray]:
    return [load_batch(paths[i : i + batch], size) for i in range(0, len(paths), batch)]


def _median_latency_ms(path: Path, x: np.ndarray, runs: int = 15) -> float:
    """Batch latency of ``path`` as ``build`` runs it on the CPU: weight-only INT8 stages folded to float once."""
    from ..engines.ort import cpu_model

    session = onnx_session(cpu_model(path)[0])
    for _ in range(3):
        run_onnx(session, x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run_onnx(session, x)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def node_stages(model) -> dict[str, list[str]]:
    """Every named node by Table 1 stage: convs, but also the pools and concats whose activations get Q/DQ."""
    stages: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name and node.op_type != "Constant":
            stages.setdefault(stage_of(node.name), []).append(node.name)
    return stages


def quantize_model(
    model: str | Path,
    precision: Precision | str,
    *,
    output: str | Path | None = None,
    calib: str | Path | None = None,
    calib_size: int = 100,
    calib_method: CalibMethod | str = CalibMethod.minmax,
    target: QuantTarget | str = QuantTarget.cpu,
    holdout: str | Path | None = None,
    eval_dir: str | Path | None = None,
    min_agreement: float = 0.99,
    progress: Callable[[int, str], Any] | None = None,
) -> QuantizeResult:
    """Quantize an FP32 ONNX model; writes ``output`` and ``<output>.report.json`` only if the guard holds."""
    import onnx

    src = Path(model)
    source = load_onnx(src)
    precision, target, calib_method = Precision(precision), QuantTarget(target), CalibMethod(calib_method)
    if precision is Precision.fp32:
        raise EdgeInceptionError("--precision must be int8 or fp16 (the source model is the fp32 one)")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in source.graph.node):
        raise EdgeInceptionError(f"{src} is already quantized; quantize the FP32 model")
    if not 0.0 < min_agreement <= 1.0:
        raise EdgeInceptionError("--min-agreement must be in (0, 1]")
    out = Path(output) if output is not None else src.with_name(f"{src.stem}.{precision.value}.onnx")
    size = model_image_size(source)
    sets = select_images(Path(calib) if calib else None, Path(holdout) if holdout else None, calib_size)
    hold_batches = _batches(sets.holdout, size)
    reference = _logits(src, hold_batches)
    result_warnings = [sets.warning] if sets.warning else []

    with tempfile.TemporaryDirectory(prefix="edge-inception-q-") as work_dir:
        work = Path(work_dir)
        guard = GuardResult(candidate=work / "int8.onnx", parity=None)
        if precision is Precision.fp16:
            candidate = work / "fp16.onnx"
            convert_fp16(src, candidate)
            scheme_text = "fp16 weights and compute, fp32 inputs/outputs; LRN/Softmax in fp32"
            parity = compare(reference, _logits(candidate, hold_batches))
        else:
            scheme = int8_scheme(target)
            scheme_text = scheme.reason
            calib_batches = _batches(sets.calibration, size, batch=1)  # histogram calibrators need equal shapes
            bar = progress(len(calib_batches), "calibrating") if progress else None
            candidate = work / "int8.onnx"
            cache = work / "calibration.json"  # ranges from this one calibration serve every mix the guard tries
            prepared = prepare_for_quantization(src, work / "prepared.onnx")
            quantize_int8(prepared, candidate, calib_batches, scheme, calib_method, cache=cache, on_batch=(lambda: bar.update(1)) if bar else None)
            if bar is not None:
                bar.close()
            parity = compare(reference, _logits(candidate, hold_batches))
            if parity.top1_agreement < min_agreement:
                guard = _guard(_Mixer(prepared, work, source, calib_batches, scheme, calib_method, cache), hold_batches, reference,
                               min_agreement, parity)
                candidate, parity = guard.candidate, guard.parity or parity
                x = hold_batches[0][:1]
                guard.latency_ms = {"fp32": _median_latency_ms(src, x), "int8_all": _median_latency_ms(work / "int8.onnx", x),
                                    "int8_mixed": _median_latency_ms(candidate, x)}
        if parity.top1_agreement < min_agreement:
            raise VerificationError(
                f"{precision.value} top-1 agreement {parity.top1_agreement:.1%} is below --min-agreement {min_agreement:.1%} "
                "even with every stage kept in float; nothing written"
            )
        qmodel = onnx.load(str(candidate))
        set_metadata(qmodel, {**get_metadata(source), "precision": precision.value, "quantization": scheme_text, "quant_target": target.value,
                              "kept_float": guard.kept, "float_weights": guard.float_weights, "fp32_source": str(src.resolve())})
        accuracy = _accuracy(parity, src, candidate, qmodel)
        if eval_dir is not None:
            accuracy.labelled = _labelled_accuracy(Path(eval_dir), src, qmodel, size)
        with atomic_path(out) as tmp:
            onnx.save(qmodel, str(tmp))
        accuracy.size_bytes = out.stat().st_size
    result = QuantizeResult(
        path=out, report_path=out.with_suffix(".report.json"), precision=precision, target=target, scheme=scheme_text,
        accuracy=accuracy, calibration_images=len(sets.calibration) if precision is Precision.int8 else 0,
        skipped_files=sets.skipped, calibration_source=sets.source, kept_float=guard.kept, float_weights=guard.float_weights,
        sensitivity=guard.sensitivity, latency_ms=guard.latency_ms, warnings=result_warnings,
    )
    write_json_atomic(result.report_path, result.as_dict())
    return result


def _accuracy(parity: Parity, src: Path, candidate: Path, qmodel) -> AccuracyReport:
    return AccuracyReport(
        holdout_images=parity.samples, top1_agreement=parity.top1_agreement, top5_overlap=parity.top5_overlap,
        mean_cosine=parity.mean_cosine, max_abs_error=parity.max_abs_error, fp32_size_bytes=src.stat().st_size,
        size_bytes=qmodel.ByteSize(),
    )


def _stage_params(source, stages: dict[str, list[str]]) -> dict[str, int]:
    from ..evaluate.flops import count_graph_model

    per_node = {n.name: n.params for n in count_graph_model(source).nodes}
    return {stage: sum(per_node.get(name, 0) for name in names) for stage, names in stages.items()}


@dataclass
class _Mixer:
    """Builds INT8 models where chosen Table 1 stages keep higher precision, from one calibration (cached ranges)."""

    src: Path
    work: Path
    source: Any
    calib_batches: list[np.ndarray]
    scheme: Int8Scheme
    method: CalibMethod
    cache: Path

    def __post_init__(self) -> None:
        self.stages = node_stages(self.source)

    def build(self, name: str, fallback: Sequence[str], float_stages: Sequence[str] = ()) -> Path:
        """``fallback`` stages get the scheme's fallback (INT8 weights, float activations, or all float);
        ``float_stages`` are all float."""
        full_float = [n for s in float_stages for n in self.stages[s]]
        rest = [n for s in fallback if s not in float_stages for n in self.stages[s]]
        dst = self.work / f"{name}.onnx"
        if self.scheme.weight_only_fallback:
            quantize_int8(self.src, dst, self.calib_batches, self.scheme, self.method, exclude=full_float, weight_only=rest, cache=self.cache)
        else:
            quantize_int8(self.src, dst, self.calib_batches, self.scheme, self.method, exclude=full_float + rest, cache=self.cache)
        return dst


@dataclass
class GuardResult:
    candidate: Path
    parity: Parity | None
    kept: list[str] = field(default_factory=list)
    float_weights: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)


def _guard(mixer: _Mixer, hold_batches: list[np.ndarray], reference: np.ndarray, min_agreement: float, full_parity: Parity,
           probe_images: int = 32) -> GuardResult:
    """Keep the stages that hurt most in higher precision until top-1 agreement reaches ``min_agreement``.

    Sensitivity: quantize one stage at a time (the rest at the fallback precision) and measure the logits'
    cosine loss on a probe subset of the held-out images. Stages then fall back in order of damage (per
    parameter, where the fallback is float and so costs file size); the smallest prefix that meets the guard is
    found by bisection. If every stage at the fallback still misses it, weights go float too, in the same order.
    """
    stages = list(mixer.stages)
    probe = np.concatenate(hold_batches)[:probe_images]
    probe_ref = reference[: len(probe)]
    sensitivity = {}
    for stage in stages:
        trial = mixer.build(f"only_{stage}", [s for s in stages if s != stage])
        sensitivity[stage] = 1.0 - compare(probe_ref, _logits(trial, [probe])).mean_cosine
    params = _stage_params(mixer.source, mixer.stages)
    cost = (lambda s: params.get(s, 0) + 10_000) if not mixer.scheme.weight_only_fallback else (lambda s: 1)
    ranked = sorted(stages, key=lambda s: sensitivity[s] / cost(s), reverse=True)
    log.info("INT8 sensitivity by stage: %s", ", ".join(f"{s} {sensitivity[s]:.2e}" for s in ranked))

    tried: dict[tuple[int, int], tuple[Path, Parity]] = {}

    def attempt(k: int, f: int = 0) -> tuple[Path, Parity]:
        if (k, f) not in tried:
            path = mixer.build(f"mixed_{k}_{f}", ranked[:k], ranked[:f])
            tried[k, f] = path, compare(reference, _logits(path, hold_batches))
            log.info("higher precision for %d stage(s) (%d all float): top-1 agreement %.3f", k, f, tried[k, f][1].top1_agreement)
        return tried[k, f]

    def ok(k: int, f: int = 0) -> bool:
        return attempt(k, f)[1].top1_agreement >= min_agreement

    n = len(ranked)
    k, f = n, 0
    if ok(n):
        k = _smallest(1, n, ok)
    elif mixer.scheme.weight_only_fallback:
        f = _smallest(1, n, lambda j: ok(n, j)) if ok(n, n) else n
    path, parity = attempt(k, f)
    return GuardResult(candidate=path, parity=parity, kept=ranked[:k], float_weights=ranked[:f] if mixer.scheme.weight_only_fallback
                       else ranked[:k], sensitivity=sensitivity)


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Smallest k in [lo, hi] with ok(k), given ok(hi) holds and ok is (close to) monotone."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _labelled_accuracy(eval_dir: Path, src: Path, qmodel, size: int) -> dict[str, float]:
    from ..data.datasets import eval_batches, scan_image_folder

    folder = scan_image_folder(eval_dir)
    fp32, quant = onnx_session(src), onnx_session(qmodel.SerializeToString())
    hits = {"fp32_top1": 0, "fp32_top5": 0, "quantized_top1": 0, "quantized_top5": 0}
    for batch, labels in eval_batches(folder, size, 32):
        for name, session in (("fp32", fp32), ("quantized", quant)):
            top5 = np.argsort(-run_onnx(session, batch), axis=1)[:, :5]
            hits[f"{name}_top1"] += int((top5[:, 0] == labels).sum())
            hits[f"{name}_top5"] += int((top5 == labels[:, None]).any(axis=1).sum())
    return {k: v / len(folder.samples) for k, v in hits.items()}
