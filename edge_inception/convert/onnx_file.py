"""Reading ONNX files and their edge-inception metadata (``metadata_props``)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from ..fileio import require_file


def load_onnx(path: str | Path, *, with_weights: bool = True):  # -> onnx.ModelProto
    import onnx
    from google.protobuf.message import DecodeError

    p = require_file(path, "ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=with_weights)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ModelFileError(f"{p}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    if not model.graph.node:
        raise ModelFileError(f"{p}: not a readable ONNX model (empty graph)")
    return model


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


def model_image_size(model, default: int = 224) -> int:
    meta = get_metadata(model)
    if "image_size" in meta:
        return int(meta["image_size"])
    dims = _dims(model.graph.input[0])
    return int(dims[-1]) if dims and isinstance(dims[-1], int) else default


def model_class_names(meta: dict[str, str], num_classes: int) -> list[str]:
    from ..model.labels import class_names

    names = json.loads(meta["class_names"]) if "class_names" in meta else None
    return class_names(num_classes, names)
