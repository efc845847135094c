"""An ONNX file: loading it, its edge-inception metadata (``metadata_props``), the facts every command needs
(input size, classes, precision), and the one ONNX Runtime session factory the whole package uses."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError
from ..fileio import require_file
from ..limits import MAX_CLASSES, MAX_IMAGE_SIZE, LimitError, check_image_size
from ..vocab import MIN_IMAGE_SIZE


def load_onnx(path: str | Path, *, with_weights: bool = True):  # -> onnx.ModelProto
    import onnx
    from google.protobuf.message import DecodeError

    p = require_file(path, "ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=with_weights)
    except onnx.checker.ValidationError as exc:  # e.g. external data that points outside the model's folder
        raise ModelFileError(f"{p}: refused ({_first_line(exc)})") from exc
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ModelFileError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node:
        raise ModelFileError(f"{p}: not a readable ONNX model (empty graph)")
    return model


def ort_session(model: str | Path | bytes, *, threads: int = 0, optimize: bool = True, save_optimized_to: Path | None = None,
                providers: list[tuple[str, dict[str, Any]]] | None = None,
                profile_prefix: Path | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session, the same way everywhere: warnings only, ``threads`` intra-op threads (0: ORT's default),
    one inter-op thread, sequential execution.

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
    return ort.InferenceSession(src, opts, providers=providers or [("CPUExecutionProvider", {})])


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
    existing.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
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


def model_class_names(meta: dict[str, str], num_classes: int) -> list[str]:
    """The model's own class names where its metadata holds a list of the right length, else the defaults."""
    from ..model.labels import class_names

    try:
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
    except ValueError:
        names = None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = None
    return class_names(num_classes, names)


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


def model_facts(model, where: str = "model") -> OnnxFacts:
    require_classifier(model, where)
    meta = get_metadata(model)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    try:
        n = int(meta.get("num_classes") or (dims[-1].dim_value if dims else 0))
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_CLASSES:
        raise ModelFileError(f"{where}: cannot tell the number of classes (metadata num_classes {meta.get('num_classes', 'missing')!r}, "
                             f"output width {dims[-1].dim_value if dims else '?'}); expected 1 to {MAX_CLASSES}")
    return OnnxFacts(model_image_size(model), n, model_class_names(meta, n), meta.get("precision") or graph_precision(model),
                     fixed_batch(model), meta)


def onnx_facts(path: str | Path) -> OnnxFacts:
    """:func:`model_facts` of a file, read without its weights."""
    return model_facts(load_onnx(path, with_weights=False), str(path))
