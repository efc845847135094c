"""Bias correction of a Q/DQ model: what quantization shifts in each layer's output mean, folded back into its bias.

Rounding weights and activations to INT8 moves the expected output of a layer: E[y_q] - E[y] = E[(W_q - W) x] + ... is
not zero per channel (Nagel et al., *Data-Free Quantization Through Weight Equalization and Bias Correction*, ICCV
2019, section 4.2), and the shift compounds through the network. OpenVINO's NNCF corrects it by default after
post-training quantization ("fast bias correction"), measuring each layer alone. So does :func:`correct_biases`, on the
calibration images: every Conv (and Gemm) with a bias is run as the Q/DQ model computes it beside the FP32 layer, both
fed the FP32 model's input to it; the per-channel difference of their output means that the images support
(:func:`significant_shift`) is subtracted from the bias (an INT32 bias behind a DequantizeLinear is re-quantized at its
own scale).

Pure ONNX graph work with onnx and ONNX Runtime (no torch). Layers are matched by tensor name: the Q/DQ model is made
from the FP32 model by ONNX Runtime's quantizer, which keeps node and output names (where it drops a Relu after a layer,
the layer's output takes the Relu's name: :func:`_fp32_output`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..onnx_file import producers

log = logging.getLogger(__name__)

SHRINK_Z = 2.0  # standard errors of the mean a shift must exceed to be corrected (see significant_shift)
STAT_IMAGES = 32  # calibration images the means are taken over (a per-channel mean over N x H x W is stable well before)
CORRECTED_OPS = ("Conv", "Gemm")


@dataclass
class BiasCorrection:
    """What was corrected: per layer, the largest per-channel shift removed (|delta|, in units of that layer's output)."""

    layers: dict[str, float] = field(default_factory=dict)
    images: int = 0

    def summary(self) -> str:
        if not self.layers:
            return "bias correction: no layer with a bias"
        worst = max(self.layers, key=lambda k: self.layers[k])
        return (f"bias correction: {len(self.layers)} layers' per-channel output means matched to FP32 on {self.images} calibration "
                f"images (largest shift {self.layers[worst]:.3g}, at {worst})")


def sample_means(model, batches: list[np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Per-sample, per-channel means (N x C: over the spatial axes) of the tensors ``outputs`` of ``model`` (a ModelProto)
    over ``batches``; each tensor is made a graph output for the run."""
    import onnx

    from ..onnx_file import ort_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in outputs:
        if name not in present:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort_session(m.SerializeToString())
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    if fixed is not None:  # a model exported with --batch N takes N images a call: chunks of N, the last one padded
        images = np.concatenate(batches)
        batches = [images[i:i + fixed] for i in range(0, len(images), fixed)]
    rows: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for batch in batches:
        n = len(batch)
        if fixed is not None and n < fixed:
            batch = np.concatenate([batch, np.repeat(batch[-1:], fixed - n, axis=0)])
        for name, t in zip(outputs, session.run(outputs, {inp.name: np.ascontiguousarray(batch, dtype=np.float32)})):
            t = np.asarray(t, dtype=np.float64)[:n]
            rows[name].append(t.reshape(t.shape[0], t.shape[1], -1).mean(axis=2))
    return {name: np.concatenate(r) for name, r in rows.items()}


def output_means(model, batches: list[np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Per-channel means (over batch and spatial axes) of the tensors ``outputs`` of ``model`` over ``batches``."""
    return {k: v.mean(axis=0) for k, v in sample_means(model, batches, outputs).items()}


def significant_shift(q: np.ndarray, ref: np.ndarray, z: float = SHRINK_Z) -> np.ndarray:
    """The per-channel shift of ``q`` from ``ref`` (N x C per-sample means of the same samples) that the samples support:
    the mean difference soft-thresholded by ``z`` standard errors (a shift within the noise of the samples is not
    corrected; a larger one is corrected by its part beyond the noise), so that a correction fitted on few photos
    does not chase what is particular to them."""
    d = q - ref
    delta = d.mean(axis=0)
    se = d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros_like(delta)
    return np.sign(delta) * np.maximum(np.abs(delta) - z * se, 0.0)


@dataclass
class _Index:
    """A graph's tensors by name, looked up once per pass rather than once per layer: the node producing each tensor and
    the initializers (the TensorProtos themselves, so an edit through it is an edit of the model)."""

    producers: dict
    inits: dict

    @classmethod
    def of(cls, model) -> _Index:
        return cls(producers(model.graph), {t.name: t for t in model.graph.initializer})


def _bias_of(node, index: _Index):
    """(kind, tensors) of ``node``'s bias: ("float", b) for a float initializer; ("int32", q, scale, zero_point) behind a
    DequantizeLinear; None for no bias or another form. ``index``: the model's (:class:`_Index`)."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return None
    inits = index.inits
    name = node.input[2]
    if name in inits:
        return ("float", inits[name])
    producer = index.producers.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear" and all(i in inits for i in producer.input[:2]):
        q = inits[producer.input[0]]
        zp = numpy_helper.to_array(inits[producer.input[2]]) if len(producer.input) > 2 and producer.input[2] in inits else np.zeros(1, np.int32)
        return ("int32", q, numpy_helper.to_array(inits[producer.input[1]]), zp)
    return None


def _shift_bias(node, delta: np.ndarray, index: _Index) -> bool:
    """Subtract ``delta`` (per output channel) from ``node``'s bias in place (the model ``index`` is of); False if it has
    none this can edit."""
    from onnx import numpy_helper

    found = _bias_of(node, index)
    if found is None:
        return False
    if found[0] == "float":
        t = found[1]
        b = numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(numpy_helper.from_array((b - delta).astype(np.float32), t.name))
        return True
    _, t, scale, zp = found
    q = numpy_helper.to_array(t).astype(np.int64)
    value = (q - zp.astype(np.int64)) * scale.astype(np.float64) - delta
    new = np.clip(np.round(value / scale) + zp, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    t.CopyFrom(numpy_helper.from_array(new, t.name))
    return True


def _fp32_output(ref_model, node, index: _Index | None = None) -> str | None:
    """The FP32 model's tensor that ``node`` (a Q/DQ model's Conv/Gemm) computes: its output, or, where the quantizer
    dropped a Relu/Clip after the layer (a uint8 QuantizeLinear clips at zero itself) and the Q/DQ layer's output took
    the activation's name, the activation's input (the pre-activation output). None if it is not there. ``index``:
    ``ref_model``'s (:class:`_Index`), if at hand."""
    producers = (index or _Index.of(ref_model)).producers
    found = producers.get(node.output[0])
    if found is None:
        return None
    if found.op_type == node.op_type:
        return node.output[0]
    if found.op_type in ("Relu", "Clip") and producers.get(found.input[0]) is not None and producers[found.input[0]].op_type == node.op_type:
        return found.input[0]
    return None


def _shadow(probe, node, tag: str, index: _Index, fp32_tensors: set[str]) -> str | None:
    """Append to ``probe`` (a copy of the FP32 graph) ``node`` as the Q/DQ model (``index``) computes it, fed the FP32 model's
    input to it: its input's QuantizeLinear/DequantizeLinear and its weights' and bias's DequantizeLinear are copied with
    their initializers, renamed with ``tag``. Returns the copy's output name; None where ``node``'s float input is not a
    tensor of the FP32 graph. ``index``: the Q/DQ model's (:class:`_Index`); ``fp32_tensors``: the FP32 graph's tensor
    names."""
    import onnx

    producers, inits = index.producers, index.inits
    qdq = ("QuantizeLinear", "DequantizeLinear")
    added: list = []
    renamed: dict[str, str] = {}

    def follow(name: str) -> str:
        if name in renamed:
            return renamed[name]
        src = producers.get(name)
        if name in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = f"{name}{tag}"
            probe.graph.initializer.append(t)
            renamed[name] = t.name
        elif src is not None and src.op_type in qdq:
            n = onnx.NodeProto()
            n.CopyFrom(src)
            n.name = f"{src.name}{tag}"
            del n.input[:]
            n.input.extend(follow(i) if i else "" for i in src.input)
            del n.output[:]
            n.output.extend(f"{o}{tag}" for o in src.output)
            added.append(n)
            renamed.update({o: f"{o}{tag}" for o in src.output})
        elif name in fp32_tensors:
            renamed[name] = name
        else:
            raise KeyError(name)
        return renamed[name]

    try:
        inputs = [follow(i) if i else "" for i in node.input]
    except KeyError:
        return None
    shadow = onnx.NodeProto()
    shadow.CopyFrom(node)
    shadow.name = f"{node.name}{tag}"
    del shadow.input[:]
    shadow.input.extend(inputs)
    del shadow.output[:]
    shadow.output.append(f"{node.output[0]}{tag}")
    probe.graph.node.extend([*added, shadow])
    return shadow.output[0]


def correct_biases(fp32: Path | bytes, qdq: Path, dst: Path, batches: list[np.ndarray], *, stat_images: int = STAT_IMAGES,
                   z: float = SHRINK_Z) -> BiasCorrection:
    """Write ``qdq`` with its Conv/Gemm biases corrected to ``dst`` (may be ``qdq``); ``fp32`` is the model it was quantized
    from (same node and tensor names), ``batches`` calibration images (N x 3 x H x W float32). Returns what changed.

    Each layer's own shift, as NNCF's fast bias correction measures it: the layer as the Q/DQ model computes it (input
    Q/DQ, INT8 weights, its bias) runs beside the FP32 layer on the FP32 model's input to it, all layers in one pass over
    the images; the shift the images support (:func:`significant_shift`) is subtracted from the bias. Every layer
    removes the shift it adds, so none is removed twice. Measured on the trained demo net (64 px, six calibration photos,
    eight other photos): correcting each layer instead by the whole Q/DQ model's shift, level by level (Nagel et al.'s
    empirical correction), matched the calibration photos exactly and raised the shift on the other photos 2.6-fold;
    the per-layer shift generalises. A layer whose FP32 output or input is not found, or whose bias is neither a float
    initializer nor an INT32 initializer behind DequantizeLinear, is left as it is."""
    import onnx

    from ..onnx_file import load_onnx

    images = np.concatenate(batches)[:stat_images]
    stat = [images[i : i + 8] for i in range(0, len(images), 8)]
    ref_model = load_onnx(fp32) if isinstance(fp32, Path) else onnx.load_from_string(fp32)
    model = onnx.load(str(qdq))
    result = BiasCorrection(images=len(images))
    index = _Index.of(model)
    for n, means in _own_means(ref_model, model, stat, index):
        delta = significant_shift(means[1], means[0], z)
        if _shift_bias(n, delta, index):
            result.layers[n.name or n.output[0]] = float(np.abs(delta).max())
    onnx.save(model, str(dst))
    log.info("%s", result.summary())
    return result


def own_shifts(fp32_model, model, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each corrected-kind layer's own per-channel output shift (mean over ``batches``; Q/DQ layer minus FP32 layer, both
    fed the FP32 model's input to it), by node name: what :func:`correct_biases` removes."""
    return {n.name: m[1].mean(axis=0) - m[0].mean(axis=0) for n, m in _own_means(fp32_model, model, batches)}


def _own_means(ref_model, model, batches: list[np.ndarray], index: _Index | None = None) -> list:
    """[(Q/DQ layer node, (FP32 per-sample means, shadow per-sample means))] for every Conv/Gemm with a bias. ``index``:
    ``model``'s (:class:`_Index`), if at hand."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(ref_model)
    index, ref_index = index or _Index.of(model), _Index.of(ref_model)
    # the FP32 graph's tensors, before any shadow is added (a shadow's tensors carry its tag: no Q/DQ name reaches them)
    fp32_tensors = set(ref_index.producers) | {i.name for i in ref_model.graph.input}
    pairs: list[tuple[object, str, str]] = []  # the Q/DQ layer, its FP32 output, its shadow's output
    for i, n in enumerate(model.graph.node):
        if n.op_type in CORRECTED_OPS and _bias_of(n, index) is not None:
            fp32_out = _fp32_output(ref_model, n, ref_index)
            out = _shadow(probe, n, f"__bc{i}", index, fp32_tensors) if fp32_out else None
            if fp32_out and out:
                pairs.append((n, fp32_out, out))
    if not pairs:
        return []
    means = sample_means(probe, batches, [x for _, ref_out, out in pairs for x in (ref_out, out)])
    return [(n, (means[ref_out], means[out])) for n, ref_out, out in pairs]
