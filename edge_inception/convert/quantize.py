"""INT8 (static, calibrated, explicit Q/DQ) and FP16 quantization, with an accuracy report and guard.

INT8 uses ONNX Runtime's static quantizer in QDQ format with per-channel weights: the form both ONNX Runtime
and TensorRT 10/11 consume. Its placement is changed in two places, as NNCF and TensorRT place Q/DQ: the logits stay
float (8-bit logits were the demo net's largest single loss) and a Concat's inputs share its output's scale (one
rounding, not two). The scheme follows the target:

* ``cpu`` without VNNI (AVX2 only, like this machine): unsigned activations, signed weights with reduced
  (7-bit) range, so the u8 x s8 multiply-add of AVX2 cannot saturate;
* ``cpu`` with VNNI (or Arm): the same, full range;
* ``gpu``/``tensorrt``: symmetric signed INT8 for both (TensorRT only takes symmetric scales).

The accuracy guard compares the quantized model with FP32 on the selection images (no model is judged on a photo it
was calibrated or chose on: see :mod:`.calibration`); when INT8 falls below ``min_agreement`` the stages that hurt most
(measured by quantizing one stage at a time) keep float activations until the guard holds, or the run fails and
nothing is written. Every INT8 model built gets per-channel bias correction (:mod:`.bias_correction`). The written
model is calibrated on every photo; the report's figures come from the cross-fitted verdict (each photo judged by the
recipe calibrated without it), with a 95 % lower bound over distinct photos (:mod:`..evaluate.verdict`); the criterion
is claimed only when the bound clears it. On an AVX2-only CPU the
optimised kernels match the Q/DQ arithmetic done in float (reduced range avoids ``vpmaddubsw`` saturation; full range
does not): INT8's lost answers there come from calibration. On the demo net the damage comes from activation rounding
compounding through 57 convolutions (weights alone in INT8 keep cosine > 0.9999), so a kept stage keeps INT8 weights
(weight-only) where the runtime can use them: the file stays at a quarter of FP32 whatever the guard keeps.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeInceptionError, MissingDependencyError, VerificationError
from ..evaluate.cpu import CpuInfo, cpu_info
from ..evaluate.topk import TopKOnFiles, hits
from ..evaluate.verdict import Verdict, images_needed
from ..evaluate.verify import Parity, compare, topk_hits
from ..fileio import atomic_path, check_writable, link_path, sha256_file, staging_dir, write_json_atomic
from ..onnx_file import fixed_batch, get_metadata, load_onnx, model_facts, ort_session, run_session, set_metadata
from ..vocab import CalibMethod, Criterion, Precision, PreprocessMode, QuantTarget
from .bias_correction import BiasCorrection, correct_biases
from .calibration import VERDICT_SIZE, CalibrationReader, image_batches, iter_batches, rebatch, release_decoded, select_images
from .graph_ops import float_outputs, fold_for_cpu, int8_weights, node_stages, toposort, unify_concat_scales
from .guard import CalibrationTrial, GuardResult, best_calibration, run_guard
from .ort_calibrate import calibrate, calibrator_options, ort_output_to_log
from .ort_reuse import reused_weight_quantization

log = logging.getLogger(__name__)

# tried in this order by --calib-method auto; on ties the earlier wins
AUTO_METHODS = (CalibMethod.percentile, CalibMethod.entropy, CalibMethod.minmax)


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


def int8_scheme(target: QuantTarget, cpu: CpuInfo | None = None) -> Int8Scheme:
    """The INT8 scheme for ``target``; for the CPU target it depends on ``cpu`` (default: this machine's)."""
    if target is not QuantTarget.cpu:
        return Int8Scheme("int8", "int8", False, True, f"{target.value}: symmetric signed INT8 (TensorRT takes symmetric scales only)",
                          weight_only_fallback=target is QuantTarget.gpu)
    cpu = cpu or cpu_info()
    if cpu.vnni:
        return Int8Scheme("uint8", "int8", False, False, f"cpu ({cpu.model}) has VNNI/dot-product: u8 activations, s8 weights, full range")
    return Int8Scheme("uint8", "int8", True, False,
                      f"cpu ({cpu.model}) has no VNNI: u8 activations, s8 weights with reduced range (avoids AVX2 saturation)")


_ORT_METHODS = {CalibMethod.minmax: "MinMax", CalibMethod.entropy: "Entropy", CalibMethod.percentile: "Percentile"}


def _extra_options(scheme: Int8Scheme, method: CalibMethod) -> dict[str, Any]:
    """What ``quantize_static`` is given as ``extra_options`` (its calibrator's options among them)."""
    return {"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True, "CalibMovingAverage": method is CalibMethod.minmax}


def _calibration_input(src: Path, calib_batches: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
    """The model's input name and the batches ONNX Runtime's calibrators are fed (re-batched for a model exported at a
    fixed batch)."""
    model = load_onnx(src, with_weights=False)
    fixed = fixed_batch(model)
    return model.graph.input[0].name, rebatch(calib_batches, fixed) if fixed else calib_batches


def calibrate_methods(src: Path, calib_batches: list[np.ndarray], scheme: Int8Scheme, caches: dict[CalibMethod, Path], *,
                      on_batch: Callable[[], None] | None = None) -> None:
    """Each method's calibrated ranges on ``calib_batches``, written to its cache file (``caches``; existing files are
    kept), as :func:`quantize_int8` with that ``cache`` would compute them, in one run of the images for the histogram
    methods and on every core (:mod:`.ort_calibrate`)."""
    from onnxruntime.quantization import CalibrationMethod

    input_name, batches = _calibration_input(src, calib_batches)
    # methods whose calibrators get the same options share one call (the histogram methods: one run of the images)
    groups: dict[tuple[Any, ...], tuple[dict[str, Any], dict[Any, Path]]] = {}
    for method, path in caches.items():
        options = _extra_options(scheme, method)
        key = tuple(sorted(calibrator_options(options).items()))
        groups.setdefault(key, (options, {}))[1][CalibrationMethod[_ORT_METHODS[method]]] = path
    for options, ort_caches in groups.values():
        counts = calibrate(src, input_name, batches, ort_caches, options, on_batch=on_batch)
        log.debug("calibration with %s: %s", ", ".join(m.name for m in ort_caches), counts)


def quantize_int8(src: Path, dst: Path, calib_batches: list[np.ndarray], scheme: Int8Scheme, method: CalibMethod, *,
                  exclude: Sequence[str] = (), weight_only: Sequence[str] = (), cache: Path | None = None,
                  on_batch: Callable[[], None] | None = None) -> None:
    """Static INT8 in Q/DQ form. ``exclude``: nodes left in float; ``weight_only``: nodes whose activations stay
    float but whose weights are stored as INT8. With ``cache`` the calibrated ranges are computed once
    (:func:`calibrate_methods`) and reused. Two changes to ONNX Runtime's placement, as NNCF and TensorRT place them:
    the model's outputs (the logits) stay float, and each Concat's inputs share its output's scale (one rounding, not
    two; :mod:`.graph_ops`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if cache is not None and not cache.is_file():
        calibrate_methods(src, calib_batches, scheme, {method: cache}, on_batch=on_batch)
    reader = CalibrationReader(*_calibration_input(src, calib_batches), on_batch) if cache is None else None  # else: read from the cache
    with ort_output_to_log():
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=scheme.reduce_range,
            activation_type=qtype[scheme.activation],
            weight_type=qtype[scheme.weight],
            calibrate_method=CalibrationMethod[_ORT_METHODS[method]],
            nodes_to_exclude=[*exclude, *weight_only],
            extra_options=_extra_options(scheme, method),
            calibration_cache_path=cache,
        )
    qmodel = onnx.load(str(dst))
    if weight_only:
        int8_weights(qmodel, set(weight_only))
    outputs, concats = float_outputs(qmodel), unify_concat_scales(qmodel)
    log.debug("Q/DQ: %d output(s) kept float, %d Concat(s) at one scale", outputs, concats)
    onnx.save(qmodel, str(dst))


def require_int8_quantizer() -> None:
    """Refuse, before any work, an ONNX Runtime whose ``quantize_static`` cannot keep the calibrated ranges between the
    models one quantization builds (its ``calibration_cache_path``, ONNX Runtime 1.27 and later; a GPU stack may pin an
    older ``onnxruntime-gpu``: Torch-TensorRT's 1.24). Raises MissingDependencyError naming the version found."""
    import inspect

    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise MissingDependencyError(f"INT8 quantization needs onnxruntime 1.27 or later (quantize_static's calibration_cache_path); this is "
                                     f"{onnxruntime.__version__}: pip install -U onnxruntime (or onnxruntime-gpu)")


def prepare_for_quantization(src: Path, dst: Path) -> Path:
    """ONNX Runtime's pre-processing (ONNX shape inference and basic graph optimisation, which keeps node names).

    ONNX Runtime's symbolic shape inference is skipped: it needs sympy, which onnxruntime no longer depends on (1.32), and
    ONNX's own inference already gives every tensor of an image classifier its shape (the batch stays symbolic)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(src)
    # Inputs/outputs stay float32; LRN's power of a sum of squares overflows fp16's 65504 range easily, so
    # it (and softmax, if present) keeps float32 compute.
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["LRN", "Softmax"])
    toposort(fp16.graph)  # the converter appends its input Casts last; the checker and shape inference need order
    onnx.save(fp16, str(dst))


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
    max_rel_error: float = 0.0  # max |a - b| / max |a| of the logits

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
    holdout_source: str = ""
    criterion: str = ""  # the rule the result was judged by
    calibration_method: str = ""  # the one kept
    calibration_trials: dict[str, dict[str, Any]] = field(default_factory=dict)  # each method tried: meets, agreement, cosine
    kept_float: list[str] = field(default_factory=list)  # stages the guard keeps with float activations
    float_weights: list[str] = field(default_factory=list)  # of those, the ones whose weights stay float too
    sensitivity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_device: str = ""  # where latency_ms was measured: always this host's CPU
    warnings: list[str] = field(default_factory=list)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # calibration/selection/verdict: samples, distinct images, source
    claim: str = ""  # "met" (every applied verdict's lower bound clears its criterion), "evidence too thin", or "missed"
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # evaluate.verdict.Verdict.as_dict(): agreement (and accuracy)
    off_calibration: dict[str, Any] | None = None  # the same agreement on bundled photos that are not calibration images
    selection: dict[str, Any] = field(default_factory=dict)  # the kept model's parity on the selection images (what the guard met)
    photo_use: str = ""  # how the photos were used: calibration, choice, cross-fitted verdict
    bias_correction: str = ""  # what the bias correction did (INT8), or "off"
    holdout: dict[str, Any] | None = None  # the --holdout folder judged: photos, sha256 (calibration.Holdout.as_dict())
    verdict_folds: list[dict[str, Any]] = field(default_factory=list)  # each cross-fitted fold: its photos and the recipe judging them

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # names, not paths: the report lies beside the model, and a pipeline builds both in a staging folder it then renames
        d["path"], d["report_path"] = self.path.name, self.report_path.name
        d["precision"], d["target"] = self.precision.value, self.target.value
        d["accuracy"]["size_ratio"] = self.accuracy.size_ratio
        return d


def _logits(model: Path | bytes, batches: list[np.ndarray]) -> np.ndarray:
    session = ort_session(model)
    return np.concatenate([run_session(session, b) for b in batches])


def _median_latency_ms(path: Path, x: np.ndarray) -> float:
    """Batch latency of ``path`` on this host's CPU as ``build`` runs it there: weight-only INT8 stages folded to float once."""
    from ..evaluate.bench_worker import time_inferences

    session = ort_session(fold_for_cpu(path)[0])
    return float(np.median(time_inferences(lambda: run_session(session, x), warmup=3, iterations=15)))


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
    bias_correction: bool = True

    def __post_init__(self) -> None:
        self.corrected: BiasCorrection | None = None
        self.weight_only_fallback = self.scheme.weight_only_fallback

    # Computed when asked: only the guard and a build that keeps stages need them, and counting the source's parameters
    # took 0.09 s a mixer (ten of 25 s in a quantization with cross-fitted folds, none of which keeps a stage).
    @functools.cached_property
    def stages(self) -> dict[str, list[str]]:
        """{Table 1 stage: the source's node names in it} (:func:`.graph_ops.node_stages`)."""
        return node_stages(self.source)

    @functools.cached_property
    def stage_params(self) -> dict[str, int]:
        """{stage: its parameters}: what keeping it at higher precision costs (the guard's ranking)."""
        from ..evaluate.flops import count_graph_model

        per_node = {n.name: n.params for n in count_graph_model(self.source).nodes}
        return {stage: sum(per_node.get(name, 0) for name in names) for stage, names in self.stages.items()}

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
        if self.bias_correction and not name.startswith("only_"):  # the guard's one-stage probes rank damage: uncorrected
            self.corrected = correct_biases(self.src, dst, dst, self.calib_batches)
        return dst


@dataclass
class Labelled:
    """A labelled image set: accuracy of both models on it decides, by the MLPerf rule."""

    batches: list[np.ndarray]
    labels: np.ndarray
    source: str
    images: int  # distinct source photos (the demo crops come from one photo per class)
    paths: list[Path] = field(default_factory=list)  # the files, in the order of ``labels`` (for a TopKOnFiles)
    image_size: int = 224
    top_k: TopKOnFiles | None = None  # where the models run on ``paths`` (a Ray cluster); None: here, on ``batches``
    scratch: Path | None = None  # where a model held in memory is written for ``top_k``
    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the decoded batches and the labels: what a model's accuracy here depends on besides the model."""
        import hashlib

        h = hashlib.sha256()
        for b in self.batches:
            h.update(np.ascontiguousarray(b).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


@dataclass
class Judge:
    """The criterion a quantized model must meet on the selection images, and its measurement: top-1 agreement with FP32
    >= ``min_agreement`` (unless the user judges by accuracy alone) and, with labels, INT8 top-1 accuracy >= 99 % of FP32's
    (MLPerf's rule). Both apply by default: the accuracy rule alone lets many answers change while the count of right
    ones stays (a wrong answer turned right for one turned wrong)."""

    reference: np.ndarray  # FP32 logits on the selection images, N x classes
    hold_batches: list[np.ndarray]
    min_agreement: float
    labelled: Labelled | None = None
    fp32: tuple[float, float] | None = None  # FP32's top-1 and top-5 accuracy on ``labelled``
    by_agreement: bool = True

    @property
    def fp32_accuracy(self) -> float | None:
        return self.fp32[0] if self.fp32 else None

    @property
    def rule(self) -> str:
        parts = []
        if self.labelled is not None:
            parts.append(f"MLPerf: top-1 accuracy >= 99% of FP32's ({self.fp32_accuracy:.1%}) on {len(self.labelled.labels)} labelled images "
                         f"of {self.labelled.images} photo(s) ({self.labelled.source})")
        if self.by_agreement:
            parts.append(f"top-1 agreement with FP32 >= {self.min_agreement:.1%}")
        return ("; and " if len(parts) > 1 else "").join(parts) + f" (chosen on {len(self.reference)} selection images, judged on the verdict images)"

    def __call__(self, model: Path | bytes) -> tuple[bool, Parity]:
        return self.assess(model)[:2]

    def assess(self, model: Path | bytes) -> tuple[bool, Parity, np.ndarray]:
        """Whether ``model`` meets the criterion on the selection images, its parity there, and its logits (N x classes)."""
        logits = _logits(model, self.hold_batches)
        parity = compare(self.reference, logits)
        ok = parity.top1_agreement >= self.min_agreement or not self.by_agreement
        if self.labelled is not None and self.fp32_accuracy is not None:
            ok = ok and labelled_accuracy(model, self.labelled)[0] >= 0.99 * self.fp32_accuracy
        return ok, parity, logits


def worst_image_cosine(reference: np.ndarray, candidate: np.ndarray, groups: Sequence[object]) -> float:
    """The lowest, over source images, of the mean logit cosine of that image's samples (``groups``: each sample's image)."""
    cos = (reference * candidate).sum(1) / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1), 1e-30)
    keys = list(groups)
    return float(min(cos[[i for i, g in enumerate(keys) if g == key]].mean() for key in set(keys)))


def labelled_accuracy(model: Path | bytes, labelled: Labelled) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``model`` on ``labelled``: here on its decoded batches, or on its files through its
    ``top_k`` (a Ray cluster: the same preprocessing, ``exact``, and the same ONNX Runtime answers)."""
    if labelled.top_k is not None:
        if isinstance(model, bytes):
            if labelled.scratch is None:
                raise EdgeInceptionError("internal: a model in memory and no scratch folder to write it for the cluster")
            path = labelled.scratch / "labelled-accuracy.onnx"
            path.write_bytes(model)
        else:
            path = Path(model)
        top, failed = labelled.top_k(path, labelled.paths, image_size=labelled.image_size, mode=PreprocessMode.exact, k=5)
        if failed:
            raise EdgeInceptionError(f"{len(failed)} labelled image(s) did not decode on the cluster (first: {next(iter(failed.values()))[:200]})")
        try:
            top1, top5 = hits(top, labelled.paths, labelled.labels)
        except ValueError as exc:
            raise EdgeInceptionError(f"the cluster's answers: {exc}") from None
        return top1 / len(labelled.labels), top5 / len(labelled.labels)
    key = (_sha256_of(model), labelled.digest)
    if key in _ACCURACY_SEEN:  # the same graph bytes on the same decoded images: the same answers (quantize runs FP32 once per call)
        return _ACCURACY_SEEN[key]
    session = ort_session(model)
    top1 = top5 = 0
    for i, batch in enumerate(labelled.batches):
        hit1, hit5 = topk_hits(run_session(session, batch), labelled.labels[i * 32 : i * 32 + len(batch)])
        top1, top5 = top1 + hit1, top5 + hit5
    _ACCURACY_SEEN[key] = found = (top1 / len(labelled.labels), top5 / len(labelled.labels))
    while len(_ACCURACY_SEEN) > _ACCURACY_SEEN_MAX:
        _ACCURACY_SEEN.pop(next(iter(_ACCURACY_SEEN)))
    return found


_ACCURACY_SEEN: dict[tuple[str, str], tuple[float, float]] = {}  # (model sha256, images digest) -> (top-1, top-5), oldest first
_ACCURACY_SEEN_MAX = 8


def _sha256_of(model: Path | bytes) -> str:
    import hashlib

    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    # a model whose weights live in external data files: its .onnx names them by location, offset and length only, so a
    # rewritten weights file leaves the .onnx's bytes (and its sha256) as they were; those files' bytes count too
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from ..onnx_file import load_onnx

    digest = sha256_file(model)
    locations = {entry.value for t in _get_all_tensors(load_onnx(model, with_weights=False)) if uses_external_data(t)
                 for entry in t.external_data if entry.key == "location"}
    if not locations:  # the same key as the same bytes held in memory
        return digest
    h = hashlib.sha256(digest.encode())
    for location in sorted(locations):
        h.update(f"\0{location}\0{sha256_file(Path(model).parent / location)}".encode())
    return h.hexdigest()


def _labelled_set(eval_dir: Path | None, class_names: list[str], size: int, top_k: TopKOnFiles | None = None) -> Labelled | None:
    """``--eval DIR``; or, for a model trained on the demo classes, the demo set's held-out crops; else None."""
    from ..data.datasets import ImageCache, eval_batches, scan_image_folder
    from ..data.demo_data import DEMO_CLASSES, default_demo_dir, make_demo_dataset

    if eval_dir is None:
        if sorted(class_names) != sorted(DEMO_CLASSES) or len(class_names) != len(DEMO_CLASSES):
            return None
        if importlib.util.find_spec("skimage") is None:  # the device install has no bundled photos: judged by agreement
            log.info("no labelled demo crops (scikit-image is not installed): judged by top-1 agreement with FP32")
            return None
        # 50 held-out crops per class (the right 30 % of each photo, never calibrated on): 1 % of the accuracy is a few
        # images, not a fraction of one
        demo = make_demo_dataset(default_demo_dir().with_name(default_demo_dir().name + "-eval"), val_per_class=50)
        eval_dir, source, photos = demo / "val", "the demo photos' held-out crops, 50 per class", len(DEMO_CLASSES)
    else:
        source, photos = str(eval_dir), 0
    from ..evaluate.predict import folder_labels

    cache = ImageCache()  # the scan's decode of each image is the one used
    folder = scan_image_folder(eval_dir, cache=cache)
    mapping = np.array(folder_labels(folder.classes, class_names, len(class_names)))
    batches, labels = [], []
    for batch, lab in eval_batches(folder, size, 32, cache):
        batches.append(batch)
        labels.append(mapping[lab])
    return Labelled(batches, np.concatenate(labels), source, photos or len(folder.samples), [p for p, _ in folder.samples], size, top_k)


@dataclass
class FoldChoice:
    """Each calibration method's pure INT8 model for each verdict fold, calibrated on every photo outside the fold and
    scored on the fold's photos: evidence for the method where the selection role is one photo. One photo cannot choose
    (measured on the demo net and six photos, issue 39: on the one selection photo min-max had the best cosine, 0.99989
    against 0.9975; judged photo by photo on models calibrated without each photo its worst photo's cosine was 0.554
    against percentile's 0.984, and it kept 94 % of the demo's held-out answers against 99 %)."""

    selection: dict[CalibMethod, CalibrationTrial]  # each method on the selection photos
    fold_worst: dict[tuple[CalibMethod, int], float]  # (method, fold) -> the fold's worst photo's mean cosine
    references: list[np.ndarray]  # each fold's FP32 logits on its photos
    fold_logits: dict[tuple[CalibMethod, int], np.ndarray]  # (method, fold) -> its pure INT8 model's logits there
    folds: int
    stages: Callable[[CalibMethod], tuple[list[str], list[str]]] | None = None  # each method's kept and float stages

    def trials(self, without: int | None = None) -> dict[CalibMethod, CalibrationTrial]:
        """Each method's trial on the selection photos and every fold but ``without``: the criterion as on the selection
        photos, the worst photo over all of them."""
        return {m: CalibrationTrial(t.meets, min([t.worst_image_cosine, *(self.fold_worst[m, i] for i in range(self.folds) if i != without)]),
                                    t.mean_cosine) for m, t in self.selection.items()}

    def method_without(self, fold: int) -> CalibMethod:
        """The method chosen as the written model's is, without fold ``fold``'s photos: that fold's verdict recipe."""
        return best_calibration(self.trials(without=fold))


class _StagesFor:
    """The kept and float stages the procedure gives each method (a fold's verdict recipe may use another method than the
    written model): none where the method's selection trial met the criterion, else its own guard's on the selection
    photos (run once per method), so no fold's stages were chosen with a method chosen on that fold's photos."""

    def __init__(self, chosen: CalibMethod, chosen_stages: tuple[list[str], list[str]], results: dict[CalibMethod, tuple[Path, bool, Parity]],
                 mixer: Callable[[CalibMethod], Any], judge: Any, hold_batches: list[np.ndarray],
                 logits: Callable[[Path, list[np.ndarray]], np.ndarray] = _logits) -> None:
        self.known: dict[CalibMethod, tuple[list[str], list[str]]] = {chosen: chosen_stages}
        self.results, self.mixer, self.judge, self.hold_batches, self.logits = results, mixer, judge, hold_batches, logits

    def __call__(self, method: CalibMethod) -> tuple[list[str], list[str]]:
        if method not in self.known:
            if self.results[method][1]:
                self.known[method] = ([], [])
            else:
                mixer = self.mixer(method)
                guard = run_guard(mixer, self.logits, self.hold_batches, self.judge.reference, self.judge)
                self.known[method] = (guard.kept, guard.float_weights if mixer.weight_only_fallback else [])
                log.info("fold recipes with %s calibration keep %s at higher precision (its own guard)", method.value, guard.kept or "nothing")
        return self.known[method]


def _fold_choice(src: Path, prepared: Path, source: Any, sets: Any, size: int, work: Path, scheme: Int8Scheme,
                 selection: dict[CalibMethod, CalibrationTrial], bias_correction: bool) -> FoldChoice:
    """:class:`FoldChoice` for ``selection``'s methods: one pure INT8 model per method and fold."""
    worst: dict[tuple[CalibMethod, int], float] = {}
    references: list[np.ndarray] = []
    got: dict[tuple[CalibMethod, int], np.ndarray] = {}
    for i, fold in enumerate(sets.folds):
        calib = image_batches(fold.calibration.samples, size, batch=1)
        judged = image_batches(fold.verdict.samples, size)
        references.append(_logits(src, judged))
        caches = {m: work / f"calibration.fold{i}.{m.value}.json" for m in selection}
        calibrate_methods(prepared, calib, scheme, caches)  # every method's ranges on the fold's photos in one go
        for method in selection:
            mixer = _Mixer(prepared, work, source, calib, scheme, method, caches[method], bias_correction)
            got[method, i] = _logits(mixer.build(f"fold{i}.{method.value}", []), judged)
            worst[method, i] = worst_image_cosine(references[i], got[method, i], [s.path for s in fold.verdict.samples])
            log.info("INT8 with %s calibration, fold %d: worst photo's cosine %.5f", method.value, i + 1, worst[method, i])
    return FoldChoice(selection, worst, references, got, len(sets.folds))


def _cross_fitted_verdict(src: Path, candidate: Path, sets: Any, size: int, work: Path, recipe: tuple[Any, ...] | None,
                          bias_correction: bool, fold_choice: FoldChoice | None = None) -> tuple[Parity, list[dict[str, Any]]]:
    """The verdict's parity with FP32 (pooled). INT8 with folds: fold k's photos judged by the recipe (method, kept and
    float stages) calibrated on every photo outside fold k; with ``fold_choice`` fold k's method is the one chosen without
    fold k's photos (:meth:`FoldChoice.method_without`), its model's answers reused where nothing is kept in float. FP16
    (``recipe`` None, nothing calibrated) or --holdout: ``candidate`` on the verdict photos. Also returns each fold's
    photos and the recipe that judged them (none without folds)."""
    if recipe is None or not sets.folds:  # one pass, one batch decoded at a time: a --holdout folder may hold thousands of photos
        ref_session, got_session = ort_session(src), ort_session(candidate)
        refs, gots = [], []
        for b in iter_batches(sets.verdict.samples, size):
            refs.append(run_session(ref_session, b))
            gots.append(run_session(got_session, b))
        return compare(np.concatenate(refs), np.concatenate(gots)), []
    prepared, source, scheme, method, kept, float_stages = recipe
    refs, gots = [], []
    folds: list[dict[str, Any]] = []
    for i, fold in enumerate(sets.folds):
        fold_method = fold_choice.method_without(i) if fold_choice else method
        if fold_choice and fold_choice.stages:
            kept, float_stages = fold_choice.stages(fold_method)
        if fold_choice and not kept and not float_stages:  # the pure model the choice built and ran on these photos
            refs.append(fold_choice.references[i])
            gots.append(fold_choice.fold_logits[fold_method, i])
        else:
            mixer = _Mixer(prepared, work, source, image_batches(fold.calibration.samples, size, batch=1), scheme, fold_method,
                           work / f"calibration.fold{i}.{fold_method.value}.json", bias_correction)
            path = mixer.build(f"fold{i}", kept, float_stages)
            batches = image_batches(fold.verdict.samples, size)
            refs.append(_logits(src, batches))
            gots.append(_logits(path, batches))
        log.info("cross-fitting fold %d of %d: %d photo(s) judged by a model calibrated on %d other(s)", i + 1, len(sets.folds),
                 fold.verdict.images, fold.calibration.images)
        folds.append({"photos": fold.verdict.images, "samples": len(fold.verdict.samples), "calibrated_on": fold.calibration.images,
                      "method": fold_method.value, "kept_float": list(kept), "float_weights": list(float_stages)})
    return compare(np.concatenate(refs), np.concatenate(gots)), folds


def _one_quantization(fn: Callable[..., QuantizeResult]) -> Callable[..., QuantizeResult]:
    """``fn`` quantizes each weight once however many INT8 models it builds (:func:`.ort_reuse.reused_weight_quantization`),
    and lets go of those weights and of the photos it decoded when it ends, however it ends
    (:func:`.calibration.release_decoded`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> QuantizeResult:
        try:
            with reused_weight_quantization():
                return fn(*args, **kwargs)
        finally:
            release_decoded()

    return wrapper


@_one_quantization
def quantize_model(
    model: str | Path,
    precision: Precision | str,
    *,
    output: str | Path | None = None,
    calib: str | Path | None = None,
    calib_size: int = 100,
    calib_method: CalibMethod | str = CalibMethod.auto,
    target: QuantTarget | str = QuantTarget.cpu,
    holdout: str | Path | None = None,
    eval_dir: str | Path | None = None,
    min_agreement: float = 0.99,
    criterion: Criterion | str = Criterion.auto,
    progress: Callable[[int, str], Any] | None = None,
    cpu: CpuInfo | None = None,
    bias_correction: bool = True,
    top_k: TopKOnFiles | None = None,
) -> QuantizeResult:
    """Quantize an FP32 ONNX model; writes ``output`` and ``<output>.report.json`` only if the criterion holds.

    INT8: calibrated with each method (``auto``) or the one given; the best that meets the criterion is kept; if none
    does, the guard keeps the most sensitive stages at higher precision until one does, or nothing is written. Method and
    stages are chosen on the selection images; the reported figures, and whether the criterion is claimed (its 95 % lower
    bound clears it), come from the verdict images (see :mod:`.calibration` for the three roles). ``cpu``: the CPU whose
    INT8 scheme the ``cpu`` target gets (default: this machine's; tests force the AVX2 scheme with a CPU without VNNI).
    ``bias_correction``: correct each Conv/Gemm's per-channel output shift (:mod:`.bias_correction`) in every INT8 model
    built (trials, folds, the written one). The written INT8 model is calibrated on every photo; the verdict is
    cross-fitted by photo (see :mod:`.calibration`). ``top_k``: where the labelled accuracy's models run (``--cluster``: a
    Ray cluster, on the labelled files); default here, on tensors decoded once. The figures are the same either way.
    """
    import onnx

    src = Path(model)
    source = load_onnx(src)
    precision, target, calib_method = Precision(precision), QuantTarget(target), CalibMethod(calib_method)
    if precision is Precision.fp32:
        raise EdgeInceptionError("--precision must be int8 or fp16 (the source model is the fp32 one)")
    # by its graph (Q/DQ nodes, FP16 weights), or by what quantization recorded (a guarded INT8 whose every stage fell
    # back has no Q/DQ left)
    if (any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in source.graph.node)
            or any(t.data_type == onnx.TensorProto.FLOAT16 for t in source.graph.initializer)
            or get_metadata(source).get("precision") in (Precision.int8.value, Precision.fp16.value)):
        raise EdgeInceptionError(f"{src} is already quantized; quantize the FP32 model")
    if not 0.0 < min_agreement <= 1.0:
        raise EdgeInceptionError("--min-agreement must be in (0, 1]")
    if precision is Precision.int8:
        require_int8_quantizer()
    out = check_writable(Path(output) if output is not None else src.with_name(f"{src.stem}.{precision.value}.onnx"))
    facts = model_facts(source, str(src))  # also refuses what is not an image classifier
    size = facts.image_size
    sets = select_images(Path(calib) if calib else None, Path(holdout) if holdout else None, calib_size,
                         off_calibration_below=images_needed(min_agreement) or VERDICT_SIZE)
    hold_batches = image_batches(sets.selection.samples, size)
    criterion = Criterion(criterion)
    labelled = None if criterion is Criterion.agreement else _labelled_set(Path(eval_dir) if eval_dir else None, facts.class_names, size, top_k)
    if criterion is Criterion.accuracy and labelled is None:
        raise EdgeInceptionError("--criterion accuracy needs labelled images: --eval DIR (an ImageFolder of your classes)")
    judge = Judge(_logits(src, hold_batches), hold_batches, min_agreement, labelled, by_agreement=criterion is not Criterion.accuracy)
    if judge.labelled is not None:
        judge.fp32 = labelled_accuracy(src, judge.labelled)
    groups = [s.path for s in sets.selection.samples]
    result_warnings = list(sets.warnings) if precision is Precision.int8 else []  # FP16 calibrates nothing
    latency: dict[str, float] = {}
    trials: dict[str, dict[str, Any]] = {}
    chosen_method: CalibMethod | None = None

    # the work folder sits beside the output: a killed run's leftovers are removed by the next run writing there
    with staging_dir(out.parent, f"{out.name}.quantize") as work:
        if judge.labelled is not None:
            judge.labelled.scratch = work
        guard: GuardResult | None = None
        recipe: tuple[Any, ...] | None = None
        fold_choice: FoldChoice | None = None
        bias_text = ""
        if precision is Precision.fp16:
            candidate = work / "fp16.onnx"
            convert_fp16(src, candidate)
            scheme_text = "fp16 weights and compute, fp32 inputs/outputs; LRN/Softmax in fp32"
            met, parity = judge(candidate)
        else:
            scheme = int8_scheme(target, cpu)
            scheme_text = scheme.reason
            calib_batches = image_batches(sets.calibration.samples, size, batch=1)  # histogram calibrators need equal shapes
            prepared = prepare_for_quantization(src, work / "prepared.onnx")
            methods = list(AUTO_METHODS) if calib_method is CalibMethod.auto else [calib_method]
            bar = progress(len(calib_batches) * len(methods), "calibrating") if progress else None
            results: dict[CalibMethod, tuple[Path, bool, Parity]] = {}
            # every method's ranges in one go (one run of the images for the histogram methods), cached: the guard's mixes reuse them
            caches = {m: work / f"calibration.{m.value}.json" for m in methods}
            calibrate_methods(prepared, calib_batches, scheme, caches,
                              on_batch=(lambda: bar.update(1)) if bar else None)
            for method in methods:
                path = work / f"int8.{method.value}.onnx"
                quantize_int8(prepared, path, calib_batches, scheme, method, cache=caches[method])
                if bias_correction:
                    correct_biases(prepared, path, path, calib_batches)
                ok, p, got = judge.assess(path)
                worst = worst_image_cosine(judge.reference, got, groups)
                results[method] = path, ok, p
                trials[method.value] = {"meets": ok, "top1_agreement": p.top1_agreement, "mean_cosine": p.mean_cosine,
                                        "worst_image_cosine": worst}
                log.info("INT8 with %s calibration: agreement %.3f, cosine %.5f (worst image %.5f)", method.value, p.top1_agreement,
                         p.mean_cosine, worst)
            if bar is not None:
                bar.close()
            on_selection = {m: CalibrationTrial(results[m][1], trials[m.value]["worst_image_cosine"], results[m][2].mean_cosine) for m in results}
            if len(results) > 1 and sets.folds and sets.selection.images < 2:  # one selection photo: the folds' photos too
                fold_choice = _fold_choice(src, prepared, source, sets, size, work, scheme, on_selection, bias_correction)
                for m, trial in fold_choice.trials().items():
                    trials[m.value]["worst_image_cosine_with_folds"] = trial.worst_image_cosine
            chosen_method = best_calibration(fold_choice.trials() if fold_choice else on_selection)
            candidate, met, parity = results[chosen_method]
            pure = candidate
            if not met:
                mixer = _Mixer(prepared, work, source, calib_batches, scheme, chosen_method, caches[chosen_method],
                               bias_correction)
                guard = run_guard(mixer, _logits, hold_batches, judge.reference, judge)
                candidate, parity = guard.candidate, guard.parity
                met = judge(candidate)[0]
            if met:  # the chosen recipe (method, kept stages), calibrated on every photo: the model written
                kept_now, floats_now = (guard.kept, guard.float_weights) if guard else ([], [])
                float_stages = floats_now if scheme.weight_only_fallback else []
                final_batches = image_batches((sets.final or sets.calibration).samples, size, batch=1)
                final_mixer = _Mixer(prepared, work, source, final_batches, scheme, chosen_method, work / "calibration.final.json",
                                     bias_correction)
                candidate = final_mixer.build("final", kept_now, float_stages)
                bias_text = final_mixer.corrected.summary() if final_mixer.corrected else "off"
                recipe = (prepared, source, scheme, chosen_method, kept_now, float_stages)
                if fold_choice is not None:
                    def guard_mixer(m: CalibMethod) -> _Mixer:  # in a folder of its own: the guard names its models by stage, not method
                        (work / f"guard.{m.value}").mkdir(exist_ok=True)
                        return _Mixer(prepared, work / f"guard.{m.value}", source, calib_batches, scheme, m, caches[m],
                                      bias_correction)

                    fold_choice.stages = _StagesFor(chosen_method, (kept_now, float_stages), results, guard_mixer, judge, hold_batches)
            if target is QuantTarget.cpu:
                x = hold_batches[0][:1]
                latency = {"fp32": _median_latency_ms(src, x), "int8": _median_latency_ms(candidate, x)}
                if guard is not None:
                    latency["int8_all"] = _median_latency_ms(pure, x)
                if latency["int8"] >= latency["fp32"]:
                    pure_p = results[chosen_method][2]
                    result_warnings.append(
                        f"the INT8 model is no faster than FP32 on this CPU ({latency['int8']:.2f} vs {latency['fp32']:.2f} ms at batch 1)"
                        + (f"; pure INT8 would take {latency['int8_all']:.2f} ms at {pure_p.top1_agreement:.1%} agreement"
                           if "int8_all" in latency else ""))
        if not met:
            raise VerificationError(f"{precision.value} misses the criterion ({judge.rule}; top-1 agreement {parity.top1_agreement:.1%})"
                                    + (" even with every stage kept at higher precision" if precision is Precision.int8 else "")
                                    + "; nothing written")
        kept, float_weights = (guard.kept, guard.float_weights) if guard else ([], [])
        qmodel = onnx.load(str(candidate))
        set_metadata(qmodel, {**get_metadata(source), "precision": precision.value, "quantization": scheme_text, "quant_target": target.value,
                              "kept_float": kept, "float_weights": float_weights, "fp32_source": link_path(src, out.parent),
                              "calibration_method": chosen_method.value if chosen_method else "none"})
        # the verdict: photos no choice was made on, each judged by a model not calibrated on it; the figures are measured here
        vparity, verdict_folds = _cross_fitted_verdict(src, candidate, sets, size, work, recipe, bias_correction, fold_choice)
        verdicts = [Verdict("top-1 agreement with FP32", vparity.top1_agreement, vparity.samples, sets.verdict.images, min_agreement,
                            sets.verdict.source)]
        accuracy = AccuracyReport(
            holdout_images=vparity.samples, top1_agreement=vparity.top1_agreement, top5_overlap=vparity.top5_overlap,
            mean_cosine=vparity.mean_cosine, max_abs_error=vparity.max_abs_error, fp32_size_bytes=src.stat().st_size,
            size_bytes=qmodel.ByteSize(), max_rel_error=vparity.max_rel_error,
        )
        if judge.labelled is not None and judge.fp32 is not None:
            top1, top5 = labelled_accuracy(candidate, judge.labelled)  # qmodel is candidate's graph with metadata added
            accuracy.labelled = {"fp32_top1": judge.fp32[0], "fp32_top5": judge.fp32[1], "quantized_top1": top1, "quantized_top5": top5}
            verdicts.append(Verdict("top-1 accuracy", top1, len(judge.labelled.labels), judge.labelled.images, 0.99 * judge.fp32[0],
                                    judge.labelled.source))
            if top1 >= 0.99 * judge.fp32[0] and vparity.top1_agreement < min_agreement:
                result_warnings.append(f"MLPerf's accuracy rule holds ({top1:.1%} vs FP32 {judge.fp32[0]:.1%}) while "
                                       f"{1 - vparity.top1_agreement:.1%} of the verdict images' answers changed"
                                       + ("" if judge.by_agreement else " (--criterion accuracy: agreement not required)"))
        applied = verdicts if judge.by_agreement else verdicts[1:]
        claim = "met" if all(v.met for v in applied) else "missed" if any(v.missed for v in applied) else "evidence too thin"
        if claim != "met":
            result_warnings += [f"not claimed: {v.explain()}" for v in applied if not v.met]
        off = None
        if sets.off_calibration is not None:
            off_batches = image_batches(sets.off_calibration.samples, size)
            off_parity = compare(_logits(src, off_batches), _logits(candidate, off_batches))
            off = Verdict("top-1 agreement with FP32", off_parity.top1_agreement, off_parity.samples, sets.off_calibration.images,
                          min_agreement, sets.off_calibration.source)
            if off.missed:
                result_warnings.append(f"off your calibration photos: {off.explain()}")
        with atomic_path(out) as tmp:
            onnx.save(qmodel, str(tmp))
        accuracy.size_bytes = out.stat().st_size
    result = QuantizeResult(
        path=out, report_path=out.with_suffix(".report.json"), precision=precision, target=target, scheme=scheme_text,
        accuracy=accuracy, calibration_images=len((sets.final or sets.calibration).samples) if precision is Precision.int8 else 0,
        skipped_files=sets.skipped, calibration_source=(sets.final or sets.calibration).source if precision is Precision.int8 else "",
        holdout_source=sets.verdict.source, criterion=judge.rule, calibration_method=chosen_method.value if chosen_method else "",
        calibration_trials=trials, kept_float=kept, float_weights=float_weights, sensitivity=guard.sensitivity if guard else {},
        latency_ms=latency, warnings=result_warnings,
        latency_device=f"this host's CPU ({cpu_info().model}), ONNX Runtime" if latency else "",
        roles={"calibration": sets.calibration.as_dict(), "selection": sets.selection.as_dict(), "verdict": sets.verdict.as_dict(),
               "final_calibration": (sets.final or sets.calibration).as_dict()},
        photo_use=(sets.photo_use() + ("; the calibration method chosen on the selection photo and on each fold's photos, each judged by "
                                        "models calibrated without its fold (one selection photo cannot choose); fold k's recipe is the "
                                        "method chosen without fold k's photos, with that method's own guard's stages" if fold_choice else "")
                   if precision is Precision.int8 else ""), bias_correction=bias_text,
        claim=claim, verdicts=[v.as_dict() for v in verdicts], off_calibration=off.as_dict() if off else None,
        holdout=sets.holdout.as_dict() if sets.holdout else None, verdict_folds=verdict_folds,
        selection={"top1_agreement": parity.top1_agreement, "mean_cosine": parity.mean_cosine, "samples": parity.samples},
    )
    write_json_atomic(result.report_path, result.as_dict())
    return result
