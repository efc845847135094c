"""Multiply-adds and parameters of an ONNX graph, per node and per stage of the paper's Table 1.

Works from inferred shapes, for any input size and batch, on any of our graphs (FP32, simplified, FP16,
QDQ INT8): weights are followed through DequantizeLinear/Cast to their initializers, so a quantized graph
reports the multiply-adds and parameters of its FP32 source. Multiply-adds (Conv, Gemm, MatMul) are counted
apart from other arithmetic (pooling, LRN, elementwise, softmax, Q/DQ). A graph that is not GoogLeNet still
gets per-node totals, with its nodes in stage "unknown".
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..limits import check_batch, check_image_size
from ..model.paper_table import BUDGET_MACS, KNOWN_DIFFERENCES, PAPER_TABLE, STAGES
from ..onnx_file import get_metadata, load_onnx, model_image_size, producers

MAC_OPS = {"Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"}
PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "QuantizeLinear"}

# ONNX node names carry the PyTorch module path (/inception3a/branch2/...); map module -> Table 1 stage.
_STAGE_OF_MODULE = {
    "conv1": "conv1",
    "maxpool1": "maxpool1",
    "lrn1": "maxpool1",
    "conv2": "conv2",
    "conv3": "conv2",
    "lrn2": "conv2",
    "maxpool2": "maxpool2",
    "maxpool3": "maxpool3",
    "maxpool4": "maxpool4",
    "avgpool": "avgpool",
    "fc": "fc",
    "Flatten": "avgpool",
    "Mul": "input",  # transform_input re-mapping
    "Add": "input",
}
_MODULE_RE = re.compile(r"^/?(inception\d[a-e]|conv\d|maxpool\d|lrn\d|avgpool|fc|Flatten|Mul|Add)(?:[/_]|$)")


@dataclass
class NodeCount:
    name: str
    op: str
    stage: str
    macs: int
    other_ops: int
    params: int


@dataclass
class StageCount:
    name: str
    macs: int = 0
    other_ops: int = 0
    params: int = 0
    paper_macs: int | None = None
    paper_params: int | None = None

    @property
    def macs_diff(self) -> float | None:
        return None if not self.paper_macs else self.macs / self.paper_macs - 1


@dataclass
class FlopReport:
    model: str
    image_size: int
    batch: int
    variant: str | None
    total_macs: int
    total_other_ops: int
    total_params: int
    stages: list[StageCount]
    nodes: list[NodeCount] = field(default_factory=list)
    budget_macs: int = BUDGET_MACS
    notes: tuple[str, ...] = KNOWN_DIFFERENCES

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "image_size": self.image_size,
            "batch": self.batch,
            "variant": self.variant,
            "total_macs": self.total_macs,
            "total_other_ops": self.total_other_ops,
            "total_params": self.total_params,
            "budget_macs": self.budget_macs,
            "budget_fraction": self.total_macs / self.batch / self.budget_macs,
            "stages": [
                {**asdict(s), "macs_diff": s.macs_diff} for s in self.stages
            ],
            "notes": list(self.notes),
        }


# Graph optimisers prefix the names of nodes they insert or rewrite (ONNX Runtime's "InsertedPrecisionFreeCast_",
# "ReorderInput_"...) and keep the module path after it: found anywhere after a "/".
_INNER_MODULE_RE = re.compile(r"/(inception\d[a-e]|conv\d|maxpool\d|lrn\d|avgpool|fc)(?:[/_]|$)")


def stage_of(node_name: str) -> str:
    m = _MODULE_RE.match(node_name) or _INNER_MODULE_RE.search(node_name)
    if not m:
        return "unknown"
    module = m.group(1)
    if module.startswith("inception"):
        return f"inception_{module[-2:]}"
    return _STAGE_OF_MODULE.get(module, "unknown")


def _with_input_shape(model, batch: int, image_size: int | None):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        dims[0].dim_value = batch
        if image_size is not None:
            dims[2].dim_value = image_size
            dims[3].dim_value = image_size
    # shapes recorded at export time describe the old size: drop them and infer afresh
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def count_graph(path: str | Path, *, image_size: int | None = None, batch: int = 1) -> FlopReport:
    """Count multiply-adds, other arithmetic and parameters of an ONNX model at ``batch`` x ``image_size``."""
    return count_graph_model(load_onnx(path), image_size=image_size, batch=batch, name=str(path))


def count_graph_model(raw, *, image_size: int | None = None, batch: int = 1, name: str = "model") -> FlopReport:
    """:func:`count_graph` on an in-memory ``onnx.ModelProto``."""
    if image_size is not None:
        check_image_size(image_size)
    check_batch(batch)
    meta = get_metadata(raw)
    if image_size is None:
        image_size = model_image_size(raw)
    model = _with_input_shape(raw, batch, image_size)
    shapes = _shapes(model)
    producer = producers(model.graph)
    constants = {i.name for i in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}

    def weight_source(name: str) -> str | None:
        """Follow a node input through Q/DQ/Cast to the initializer it comes from."""
        seen = 0
        while name not in constants and seen < 4:
            node = producer.get(name)
            if node is None or node.op_type not in PASS_THROUGH:
                return None
            name = node.input[0]
            seen += 1
        return name if name in constants else None

    # Parameters are counted per consuming node, not per unique initializer: exporters deduplicate identical
    # tensors (all-zero biases of a fresh model, say), which would otherwise hide parameters.
    nodes: list[NodeCount] = []
    for node in model.graph.node:
        op = node.op_type
        out_shape = shapes.get(node.output[0]) if node.output else None
        out_elems = math.prod(out_shape) if out_shape else 0
        macs, other, params = 0, 0, 0
        if op in MAC_OPS:
            macs = _macs(node, shapes, out_shape)
            weight_inputs = node.input[1:] if op not in ("QLinearConv", "QLinearMatMul") else [node.input[3]] + list(node.input[8:9])
            for weight in weight_inputs:
                src = weight_source(weight) if weight else None
                if src:
                    params += math.prod(shapes.get(src, [0]))
        elif op == "BatchNormalization":
            other = 2 * out_elems
            for weight in node.input[1:3]:  # scale and bias are parameters; running mean/var are buffers
                src = weight_source(weight)
                if src:
                    params += math.prod(shapes.get(src, [0]))
        elif op in ("MaxPool", "AveragePool"):
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [1, 1])
            other = out_elems * math.prod(kernel)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
            in_shape = shapes.get(node.input[0])
            other = math.prod(in_shape) if in_shape else out_elems
        elif op == "LRN":
            size = next((a.i for a in node.attribute if a.name == "size"), 5)
            other = out_elems * (size + 3)  # sum of squares over the window, scale, pow, divide
        elif op == "Softmax":
            other = 3 * out_elems
        elif op in ("Relu", "Add", "Mul", "Sub", "Div", "Sigmoid", "Clip", "QuantizeLinear", "DequantizeLinear", "Pow", "Sqrt"):
            other = out_elems
        nodes.append(NodeCount(node.name or op, op, stage_of(node.name), macs, other, params))

    stages = _group(nodes)
    return FlopReport(
        model=name,
        image_size=image_size,
        batch=batch,
        variant=meta.get("variant"),
        total_macs=sum(n.macs for n in nodes),
        total_other_ops=sum(n.other_ops for n in nodes),
        total_params=sum(n.params for n in nodes),
        stages=stages,
        nodes=nodes,
    )


def _macs(node, shapes: dict[str, list[int]], out_shape: list[int] | None) -> int:
    op = node.op_type
    if not out_shape:
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(node.input[3] if op == "QLinearConv" else node.input[1])
        if not w:
            return 0
        return math.prod(out_shape) * math.prod(w[1:])  # each output: Cin/groups x kh x kw multiply-adds
    if op == "Gemm":
        a = shapes.get(node.input[0])
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        if not a:
            return 0
        k = a[0] if trans_a else a[1]
        return math.prod(out_shape) * k
    a = shapes.get(node.input[0])  # MatMul family
    return math.prod(out_shape) * a[-1] if a else 0


def _group(nodes: list[NodeCount]) -> list[StageCount]:
    paper = {row.stage: row for row in PAPER_TABLE}
    used = {n.stage for n in nodes}
    googlenet = any(s.startswith("inception_") for s in used)
    order = (["input"] if "input" in used else []) + (list(STAGES) if googlenet else []) + (["unknown"] if "unknown" in used or not googlenet else [])
    stages = {name: StageCount(name) for name in order}
    for name, stage in stages.items():
        if name in paper and googlenet:
            stage.paper_macs, stage.paper_params = paper[name].macs, paper[name].params
    for n in nodes:
        stage = stages[n.stage if n.stage in stages else "unknown"] if googlenet else stages["unknown"]
        stage.macs += n.macs
        stage.other_ops += n.other_ops
        stage.params += n.params
    return list(stages.values())
