"""An ONNX file: loading it, its edge-inception metadata (``metadata_props``), the facts every command needs
(input size, classes, precision), and the one ONNX Runtime session factory the whole package uses."""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeInceptionError, ModelFileError
from .fileio import json_text, require_file
from .limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, LimitError, check_image_size
from .vocab import MIN_IMAGE_SIZE


def load_onnx(path: str | Path, *, with_weights: bool = True):  # -> onnx.ModelProto
    import onnx
    from google.protobuf.message import DecodeError

    p = require_file(path, "ONNX model")
    try:
        # protobuf whatever the file is called: onnx.load picks a JSON or text parser from a .json/.txt ending
        model = onnx.load(str(p), format="protobuf", load_external_data=with_weights)
    except onnx.checker.ValidationError as exc:  # e.g. external data that points outside the model's folder
        raise ModelFileError(f"{p}: refused ({_first_line(exc)})") from exc
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ModelFileError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node:
        raise ModelFileError(f"{p}: not a readable ONNX model (empty graph)")
    require_text(model, str(p))
    return model


def require_text(model, where: str = "model") -> None:
    """Refuse a model with a string field that is not UTF-8 text, wherever it is (metadata, names, op types and domains,
    attribute names, shapes' ``dim_param``, subgraphs): protobuf hands such a field over as ``bytes``, which every
    library reading it as text (ONNX's helpers, ONNX Runtime, our reports) trips on. Raises :class:`ModelFileError`
    naming the field."""
    from google.protobuf.descriptor import FieldDescriptor

    stack: list[tuple[Any, str]] = [(model, "model")]
    while stack:
        message, path = stack.pop()
        for fd, value in message.ListFields():
            if fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
                continue  # numbers and bytes (a tensor's float_data may hold millions): nothing to decode
            items = list(enumerate(value)) if _repeated(fd) else [(None, value)]
            if fd.type == FieldDescriptor.TYPE_STRING:
                for i, text in items:
                    if not isinstance(text, str):
                        where_in = f"{path}.{fd.name}" + ("" if i is None else f"[{i}]")
                        raise ModelFileError(f"{where}: refused: {where_in} is not UTF-8 text ({ascii(bytes(text)[:40])})")
            else:
                stack.extend((item, f"{path}.{fd.name}" + ("" if i is None else f"[{i}]")) for i, item in items)


def _repeated(fd: Any) -> bool:
    """Whether a protobuf field is repeated (``is_repeated`` in protobuf >= 5.28, ``label`` before)."""
    flag = getattr(fd, "is_repeated", None)
    if flag is None:
        return bool(fd.label == fd.LABEL_REPEATED)
    return bool(flag() if callable(flag) else flag)


SPINNING_ENV = "EDGE_INCEPTION_ORT_SPINNING"  # "0": ONNX Runtime's pool threads sleep when idle instead of spinning


def ort_spinning() -> bool:
    """Whether ONNX Runtime's intra- and inter-op threads spin while they wait for work (ORT's default, the lowest
    latency on a machine of one's own) or sleep: ``$EDGE_INCEPTION_ORT_SPINNING`` ``1`` (default) or ``0`` (a machine
    shared with other work: the spin burns cores the others need). Raises EdgeInceptionError on any other value."""
    value = os.environ.get(SPINNING_ENV, "1").strip()
    if value not in ("0", "1"):
        raise EdgeInceptionError(f"{SPINNING_ENV}={value[:20]!r}: give 0 (ONNX Runtime's threads sleep when idle) or 1 (they spin, the default)")
    return value == "1"


def ort_session(model: str | Path | bytes, *, threads: int = 0, optimize: bool = True, save_optimized_to: Path | None = None,
                providers: list[tuple[str, dict[str, Any]]] | None = None,
                profile_prefix: Path | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session, the same way everywhere: warnings only, ``threads`` intra-op threads (0: ORT's default),
    one inter-op thread, sequential execution, idle threads spinning or not as :func:`ort_spinning` says.

    ``optimize=False`` loads a graph that was optimised at build time as it is; ``save_optimized_to`` applies every graph
    optimisation and writes the result there (the CPU build). ``providers`` default to the CPU. ``profile_prefix``
    turns ONNX Runtime's profiler on.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not ort_spinning():  # ONNX Runtime's session config keys (onnxruntime_session_options_config_keys.h)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if save_optimized_to is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(save_optimized_to)
    elif not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if providers and any(name != "CPUExecutionProvider" for name, _ in providers):
        # The CUDA provider logs its cuDNN frontend's fallbacks ("No execution plans support the graph", seen for INT8 Q/DQ
        # convolutions on an H100) at error level through ONNX Runtime's process-wide default logger. They are not
        # failures: the convolution runs on another cuDNN path. Only fatal messages pass; real failures still raise.
        ort.set_default_logger_severity(4)
        opts.log_severity_level = 4
    if profile_prefix is not None:  # ONNX Runtime's profiler: a JSON trace of every node's kernel time
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=providers or [("CPUExecutionProvider", {})])
    except Exception as exc:  # ONNX Runtime's own exception types (Fail, InvalidGraph, ...) derive from Exception only
        where = "the model" if isinstance(model, bytes) else str(model)
        raise ModelFileError(f"{where}: ONNX Runtime {ort.__version__} cannot load it: {ort_reason(exc)}") from exc


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's message without its prefix and C++ source location: the sentence that says why."""
    text = _first_line(exc)
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^\S+\.(?:cc|h|cpp):\d+ .*?\) (?=[A-Z])", "", text)  # "/src/model.cc:256 onnxruntime::Model::Model(...) "
    text = re.sub(r"^Load model from .*? failed:", "", text)
    return text[:300]


def run_in_batches(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Logits of any number of images through ``infer``, which takes batches of ``lo`` to ``hi`` images: in chunks of
    ``hi``, the last one padded to ``lo`` by repeating its final image (a model exported with ``--batch N`` takes N only)."""
    if lo <= len(batch) <= hi:
        return infer(batch)
    out = []
    for i in range(0, len(batch), hi):
        chunk = batch[i : i + hi]
        n = len(chunk)
        if n < lo:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
        out.append(infer(chunk)[:n])
    return np.concatenate(out)


def run_session(session, batch: np.ndarray) -> np.ndarray:
    """Logits of N x 3 x H x W images (a fixed-batch model runs them in chunks of its batch)."""
    inp = session.get_inputs()[0]
    x = np.ascontiguousarray(batch, dtype=np.float32)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def run(b: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {inp.name: b})[0])

    return run(x) if fixed is None else run_in_batches(run, x, fixed, fixed)


def get_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model, meta: dict[str, Any]) -> None:
    existing = get_metadata(model)
    existing.update({k: v if isinstance(v, str) else json_text(v) for k, v in meta.items()})
    del model.metadata_props[:]
    for key, value in existing.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _dims(value_info) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


@dataclass
class OnnxInfo:
    path: str
    opset: int
    inputs: list[tuple[str, str, list[int | str]]]
    outputs: list[tuple[str, str, list[int | str]]]
    nodes: int
    parameters: int
    op_counts: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def onnx_info(path: str | Path) -> OnnxInfo:
    import onnx

    model = load_onnx(path)
    initializer_names = {t.name for t in model.graph.initializer}

    def io(values) -> list[tuple[str, str, list[int | str]]]:
        return [
            (v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name, _dims(v))
            for v in values
            if v.name not in initializer_names
        ]

    params = sum(int(_numel(t.dims)) for t in model.graph.initializer)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxInfo(
        path=str(path),
        opset=opset,
        inputs=io(model.graph.input),
        outputs=io(model.graph.output),
        nodes=len(model.graph.node),
        parameters=params,
        op_counts=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        metadata=get_metadata(model),
        size_bytes=Path(path).stat().st_size,
    )


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def model_image_size(model, default: int = 224) -> int:
    """The square input size: the metadata's, else the graph's fixed width, else ``default``; bounded."""
    meta = get_metadata(model)
    if "image_size" in meta:
        try:
            return check_image_size(int(meta["image_size"]), "image_size in the model's metadata")
        except (ValueError, LimitError) as exc:
            raise ModelFileError(f"model metadata: image_size {meta['image_size'][:20]!r} is not a size in [{MIN_IMAGE_SIZE}, "
                                 f"{MAX_IMAGE_SIZE}]") from exc
    dims = _dims(model.graph.input[0]) if model.graph.input else []
    if dims and isinstance(dims[-1], int) and dims[-1] > 0:
        return check_image_size(dims[-1], "the model's input width")
    return default


def model_class_names(meta: dict[str, str], num_classes: int, where: str = "model") -> list[str]:
    """The model's own class names where its metadata holds a list of the right length, else the defaults. Names that
    would rewrite the terminal or split ``labels.txt`` (control characters, newlines) are refused."""
    from .fileio import parse_json
    from .model.labels import class_names
    from .names import UnsafeNameError, check_labels

    try:
        names = parse_json(meta["class_names"], f"{where}: metadata class_names") if "class_names" in meta else None
    except ModelFileError:
        names = None
    if not (isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names)):
        names = None
    try:
        return check_labels(class_names(num_classes, names), f"{where}: metadata class_names")
    except UnsafeNameError as exc:
        raise ModelFileError(str(exc)) from None


def graph_precision(model) -> str:
    """fp32, fp16 or int8, from what the graph holds (Q/DQ nodes, FP16 initializers)."""
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):  # TensorProto.FLOAT16
        return "fp16"
    return "fp32"


def fixed_batch(model) -> int | None:
    """The input's batch dimension if the graph fixes it, else None (dynamic)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


@dataclass(frozen=True)
class OnnxFacts:
    image_size: int
    num_classes: int
    class_names: list[str]
    precision: str
    fixed_batch: int | None
    metadata: dict[str, str]


def require_classifier(model, where: str = "model") -> None:
    """One N x 3 x H x W float input and one N x classes output, as every command here expects; else one line saying
    what the model has instead."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelFileError(f"{where}: not an image classifier of this toolkit: it has {len(inputs)} input(s) and "
                             f"{len(model.graph.output)} output(s), expected one N x 3 x H x W image input and one N x classes output")
    shape, out_shape = _dims(inputs[0]), _dims(model.graph.output[0])
    elem = inputs[0].type.tensor_type.elem_type
    image_like = len(shape) == 4 and (shape[1] == 3 or isinstance(shape[1], str))  # a named dim may be anything
    if not image_like or elem != 1:  # 1: TensorProto.FLOAT
        raise ModelFileError(f"{where}: not an image classifier of this toolkit: input '{inputs[0].name}' is "
                             f"[{' x '.join(map(str, shape))}] (element type {elem}), expected float32 N x 3 x H x W")
    if len(out_shape) not in (0, 2):
        raise ModelFileError(f"{where}: not an image classifier of this toolkit: output '{model.graph.output[0].name}' has "
                             f"{len(out_shape)} dimensions, expected N x classes")


@functools.cache
def ort_limits() -> tuple[str, int, dict[str, int], frozenset[tuple[str, str]]]:
    """What the installed ONNX Runtime reads: its version, the newest IR version (asked of ONNX Runtime itself, with a
    probe model of an impossible IR version, whose refusal names the maximum), the newest opset of each operator domain
    and every (domain, operator) it has a schema for (its operator registry)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    opsets: dict[str, int] = {}
    ops: set[tuple[str, str]] = set()
    for schema in state.get_all_operator_schema():
        domain = "" if schema.domain == "ai.onnx" else schema.domain
        opsets[domain] = max(opsets.get(domain, 0), schema.since_version)
        ops.add((domain, schema.name))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    probe.ir_version = 1 << 20
    max_ir = int(onnx.IR_VERSION)
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's exception types derive from Exception only
        found = re.search(r"max supported IR version: (\d+)", str(exc))
        max_ir = int(found.group(1)) if found else max_ir
    return ort.__version__, max_ir, opsets, frozenset(ops)


MAX_INITIALIZER_VALUES = 1 << 28  # one weight tensor: 1 GB of float32; GoogLeNet's largest has 1 M values


def require_runnable(model, where: str = "model") -> None:
    """Refuse, in one line naming the cause, a model the installed ONNX Runtime cannot run, before a session is made:
    an IR version or opset newer than it reads, an operator of a domain or name it does not implement (a custom
    operator, unless the model defines it as a local function), a first convolution whose input channels contradict
    the declared input, a dimension or weight beyond the bounds of ``limits.py``."""
    version, max_ir, opsets, ops = ort_limits()
    runtime = f"ONNX Runtime {version}"
    if model.ir_version > max_ir:
        raise ModelFileError(f"{where}: IR version {model.ir_version} is newer than {runtime} reads (up to {max_ir})")
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in opsets and imp.version > opsets[domain]:
            name = "ai.onnx" if not domain else domain
            raise ModelFileError(f"{where}: opset {imp.version} of {name} is newer than {runtime} implements (up to {opsets[domain]})")
    local = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) not in ops and (node.domain, node.op_type) not in local:
            known_domain = domain in opsets
            kind = f"operator {node.op_type} (domain '{domain or 'ai.onnx'}')" if known_domain else f"custom-domain operator {domain}:{node.op_type}"
            raise ModelFileError(f"{where}: node '{node.name}' is a {kind}, which {runtime} does not implement")
    for t in model.graph.initializer:
        if any(d < 0 for d in t.dims) or _numel(t.dims) > MAX_INITIALIZER_VALUES:
            raise ModelFileError(f"{where}: weight '{t.name}' has dimensions {list(t.dims)}, beyond {MAX_INITIALIZER_VALUES:,} values")
    inits = {t.name: t for t in model.graph.initializer}
    first_conv = next((n for n in model.graph.node if n.op_type in ("Conv", "ConvInteger", "QLinearConv")), None)
    weight_index = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
    if first_conv is not None and len(first_conv.input) > weight_index[first_conv.op_type]:
        name = first_conv.input[weight_index[first_conv.op_type]]
        w = inits.get(name) or inits.get(_dequantized_weight(model, name) or "")
        group = next((a.i for a in first_conv.attribute if a.name == "group"), 1)
        if w is not None and len(w.dims) == 4 and w.dims[1] * group != 3:
            raise ModelFileError(f"{where}: the first convolution '{first_conv.name}' takes {w.dims[1] * group} input channels, "
                                 f"but the model declares 3 (RGB)")


def _dequantized_weight(model, name: str) -> str | None:
    """The initializer behind ``name`` when it is a DequantizeLinear's output (a QDQ model's weight)."""
    return next((n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name), None)


def _require_bounded_io(model, where: str) -> None:
    """Every fixed dimension of the input and output within limits.py: batch <= MAX_BATCH, a square image of
    MIN_IMAGE_SIZE to MAX_IMAGE_SIZE, at most MAX_CLASSES classes (a dimension of 2**31 is refused here, not in the runtime)."""
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    n, _, h, w = _dims(inp)
    side = (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    bounds: tuple[tuple[str, int | str, int, int], ...] = (("batch", n, 1, MAX_BATCH), ("height", h, *side), ("width", w, *side))
    out = _dims(model.graph.output[0])
    if out:
        bounds += (("output batch", out[0], 1, MAX_BATCH), ("classes", out[1], 1, MAX_CLASSES))
    for name, value, lo, hi in bounds:
        if isinstance(value, int) and not lo <= value <= hi:
            raise ModelFileError(f"{where}: its {name} dimension is {value}, outside [{lo}, {hi}]")
    if isinstance(h, int) and isinstance(w, int) and h and w and h != w:
        raise ModelFileError(f"{where}: its input is {h} x {w}; this toolkit feeds square images")


def model_facts(model, where: str = "model") -> OnnxFacts:
    """What every command needs to know of a model, after refusing one that is not an image classifier of this toolkit
    (:func:`require_classifier`) or that the installed ONNX Runtime cannot run (:func:`require_runnable`)."""
    require_classifier(model, where)
    _require_bounded_io(model, where)
    require_runnable(model, where)
    meta = get_metadata(model)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    try:
        n = int(meta.get("num_classes") or (dims[-1].dim_value if dims else 0))
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_CLASSES:
        raise ModelFileError(f"{where}: cannot tell the number of classes (metadata num_classes {meta.get('num_classes', 'missing')!r}, "
                             f"output width {dims[-1].dim_value if dims else '?'}); expected 1 to {MAX_CLASSES}")
    size = model_image_size(model)
    width = _dims(model.graph.input[0])[-1]
    if isinstance(width, int) and width != size:
        raise ModelFileError(f"{where}: its metadata says {size} px images, but its input is {width} px wide")
    precision = meta.get("precision") or graph_precision(model)
    if precision not in ("fp32", "fp16", "int8"):
        raise ModelFileError(f"{where}: metadata precision {precision[:20]!r} is not fp32, fp16 or int8")
    return OnnxFacts(size, n, model_class_names(meta, n, where), precision, fixed_batch(model), meta)


def onnx_facts(path: str | Path) -> OnnxFacts:
    """:func:`model_facts` of a file, read without its weights."""
    return model_facts(load_onnx(path, with_weights=False), str(path))


def producers(graph) -> dict:
    """Each tensor name of an ONNX ``graph`` -> the node that writes it (its inputs and initializers have none): the one map
    the FLOP count, the Q/DQ edits and bias correction look a tensor's producer up in."""
    return {o: n for n in graph.node for o in n.output}
