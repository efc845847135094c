"""Triton model configurations (``config.pbtxt``): built from what an artifact's manifest says, written in Triton's
protobuf text format, and read back and checked with Triton's own schema (tritonclient's ``model_config_pb2``).

Field names are model_config.proto's (``max_batch_size``, ``dynamic_batching``, ``instance_group``, ``model_warmup``,
``label_filename``, ``ensemble_scheduling``). This module decides; :mod:`.repository` writes files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ServeError
from ..vocab import Backend, Choice

# Triton's model names become folder names and URL path parts: a conservative subset of what Triton accepts.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # used with fullmatch: "$" also matches before a final newline
MAX_CONFIG_BYTES = 1 << 20  # a config.pbtxt of ours is a few KB; labels live in labels.txt
DEFAULT_MAX_BATCH = 32  # for a model with a dynamic batch and no manifest range (a plain ONNX file)
LABELS_FILE = "labels.txt"


class ServeKind(Choice):
    """How Triton runs the classifier: its native backend for the artifact, or the Python backend with the toolkit's runner."""

    native = "native"
    python = "python"


class InstanceKind(Choice):
    """model_config.proto's ``ModelInstanceGroup.Kind``, lower-cased (``auto``: from the manifest's device)."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class NativeBackend:
    """How Triton runs one of our backends' artifacts natively: ``platform`` or ``backend``, and its model file names."""

    field: str  # "platform" or "backend" (model_config.proto field)
    value: str
    model_file: str  # Triton's default_model_filename for it
    companions: tuple[tuple[str, str], ...] = ()  # (artifact suffix, name in the version folder), e.g. OpenVINO's .bin


# Triton's names for our runtimes; these backends ship in NGC's tritonserver containers (not in nvidia-pytriton).
NATIVE: dict[Backend, NativeBackend] = {
    Backend.ort: NativeBackend("platform", "onnxruntime_onnx", "model.onnx"),
    Backend.tensorrt: NativeBackend("platform", "tensorrt_plan", "model.plan"),
    Backend.openvino: NativeBackend("backend", "openvino", "model.xml", ((".bin", "model.bin"),)),
}
PYTHON = NativeBackend("backend", "python", "model.py")
ENSEMBLE_PLATFORM = "ensemble"

# Tensor names the toolkit's export gives every model (ONNX, and the IR/engines built from it); the ensemble's image input.
INPUT_NAME, OUTPUT_NAME, IMAGE_NAME = "input", "logits", "IMAGE"


@dataclass(frozen=True)
class Tensor:
    """One model_config.proto ``ModelInput``/``ModelOutput``: dims exclude the batch dimension when max_batch_size > 0."""

    name: str
    data_type: str  # "TYPE_FP32", "TYPE_STRING"
    dims: tuple[int, ...]
    label_filename: str | None = None


@dataclass(frozen=True)
class Batching:
    """``dynamic_batching``: the scheduler forms batches up to max_batch_size, preferring these sizes, waiting at most the delay."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100


@dataclass(frozen=True)
class ModelSpec:
    """Everything one config.pbtxt says, before it is text."""

    name: str
    runtime: NativeBackend | None  # None: an ensemble
    max_batch_size: int  # 0: the model takes exactly the dims given (no batching by Triton)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    instance_kind: str = "KIND_CPU"
    instances: int = 1
    batching: Batching | None = None
    warmup_batch: int | None = None  # a zero-data warm-up request of this batch size (model_warmup), None: none
    parameters: dict[str, str] = field(default_factory=dict)
    steps: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = ()  # ensemble: (model, input_map, output_map)


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ServeError(f"model name {name!r}: use letters, digits, '_', '.' or '-' (at most 128, starting with a letter or digit)")
    return name


def instance_kind(kind: InstanceKind, device: str) -> str:
    """``KIND_CPU``/``KIND_GPU``: the one asked for, else where the artifact computes (its manifest's device)."""
    if kind is InstanceKind.auto:
        return "KIND_GPU" if device == "cuda" else "KIND_CPU"
    return f"KIND_{kind.value.upper()}"


def batch_settings(batch_range: tuple[int, int] | None, fixed_batch: int | None, *, kind: ServeKind) -> tuple[int, tuple[int, ...]]:
    """(max_batch_size, input dims prefix). A native backend given an artifact built for one batch size only cannot take
    Triton's variable batches: it is served with max_batch_size 0 and the batch in its dims. The Python backend's runner
    pads any batch to what the artifact takes, so it batches either way."""
    if fixed_batch is not None and kind is ServeKind.native:
        return 0, (fixed_batch,)
    if batch_range is not None:
        return batch_range[1], ()
    return (fixed_batch or DEFAULT_MAX_BATCH), ()


def to_proto(spec: ModelSpec) -> Any:
    """The spec as a ``tritonclient.grpc.model_config_pb2.ModelConfig`` message."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.runtime is None:
        cfg.platform = ENSEMBLE_PLATFORM
    else:
        setattr(cfg, spec.runtime.field, spec.runtime.value)
        if spec.runtime is not PYTHON:
            cfg.default_model_filename = spec.runtime.model_file
    for t in spec.inputs:
        cfg.input.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=list(t.dims))
    for t in spec.outputs:
        out = cfg.output.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=list(t.dims))
        if t.label_filename:
            out.label_filename = t.label_filename
    if spec.runtime is not None:
        cfg.instance_group.add(count=spec.instances, kind=mc.ModelInstanceGroup.Kind.Value(spec.instance_kind))
    if spec.batching is not None and spec.max_batch_size > 0:
        cfg.dynamic_batching.preferred_batch_size.extend(spec.batching.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = spec.batching.max_queue_delay_us
    if spec.warmup_batch is not None:
        warm = cfg.model_warmup.add(name="zeros", batch_size=spec.warmup_batch if spec.max_batch_size > 0 else 1)
        for t in spec.inputs:
            warm.inputs[t.name].data_type = mc.DataType.Value(t.data_type)
            warm.inputs[t.name].dims.extend(t.dims)
            warm.inputs[t.name].zero_data = True
    for key, value in spec.parameters.items():
        cfg.parameters[key].string_value = value
    for model, inputs, outputs in spec.steps:
        step = cfg.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    return cfg


def render(spec: ModelSpec) -> str:
    """config.pbtxt text (protobuf text format) for ``spec``."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(to_proto(spec)))


def parse(text: str, where: str) -> Any:
    """A config.pbtxt's text parsed with Triton's schema; a field Triton does not know, or a wrong type, is a ServeError."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ServeError(f"{where}: larger than {MAX_CONFIG_BYTES >> 10} KB, not a model configuration of ours")
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ServeError(f"{where}: not a valid Triton model configuration ({exc})") from None


def check(cfg: Any, spec: ModelSpec, where: str) -> None:
    """Refuse a parsed configuration that says anything other than ``spec`` (what the manifest says) on the fields that
    change an answer or whether Triton can load it: runtime, batch size, tensor names/types/dims, labels, instances."""
    from tritonclient.grpc import model_config_pb2 as mc

    def bad(what: str, got: object, want: object) -> ServeError:
        return ServeError(f"{where}: {what} is {got!r}, the manifest says {want!r}")

    if cfg.name != spec.name:
        raise bad("name", cfg.name, spec.name)
    runtime = (("platform", ENSEMBLE_PLATFORM) if spec.runtime is None else (spec.runtime.field, spec.runtime.value))
    if getattr(cfg, runtime[0]) != runtime[1]:
        raise bad(runtime[0], getattr(cfg, runtime[0]), runtime[1])
    if cfg.max_batch_size != spec.max_batch_size:
        raise bad("max_batch_size", cfg.max_batch_size, spec.max_batch_size)
    for kind, got_list, want_list in (("input", cfg.input, spec.inputs), ("output", cfg.output, spec.outputs)):
        got = [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in got_list]
        want = [(t.name, t.data_type, t.dims) for t in want_list]
        if got != want:
            raise bad(kind, got, want)
    labels = [t.label_filename or None for t in cfg.output]
    if labels != [t.label_filename for t in spec.outputs]:
        raise bad("label_filename", labels, [t.label_filename for t in spec.outputs])
    if spec.runtime is not None:
        groups = [(mc.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in cfg.instance_group]
        if groups != [(spec.instance_kind, spec.instances)]:
            raise bad("instance_group", groups, [(spec.instance_kind, spec.instances)])
    if spec.max_batch_size and spec.batching is not None:
        preferred = tuple(cfg.dynamic_batching.preferred_batch_size)
        if any(not 1 <= b <= spec.max_batch_size for b in preferred):
            raise ServeError(f"{where}: preferred_batch_size {list(preferred)} outside 1..max_batch_size {spec.max_batch_size}")
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in cfg.ensemble_scheduling.step]
    if steps != [(m, dict(i), dict(o)) for m, i, o in spec.steps]:
        raise bad("ensemble_scheduling", steps, list(spec.steps))
