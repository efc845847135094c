"""Edits of ONNX graphs that several steps share: INT8 weights behind a DequantizeLinear, folding such weights back to
float for runtimes that would dequantize them on every run, the model's outputs kept float and one scale per Concat in a
Q/DQ graph, topological order, and nodes by Table 1 stage.

Functions take and change an in-memory ``onnx.ModelProto``/``GraphProto``; onnx is imported inside them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import EdgeInceptionError
from ..evaluate.flops import stage_of
from ..onnx_file import producers

log = logging.getLogger(__name__)


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


def _consumers(graph) -> dict[str, list]:
    """Each tensor name -> the nodes that read it (in graph order)."""
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def float_outputs(model) -> int:
    """Drop the QuantizeLinear -> DequantizeLinear pair on each of the model's outputs, so the logits leave the graph as
    their producer computed them (ONNX Runtime's ``quantize_static`` rounds them to 8 bits; NNCF and TensorRT give float
    outputs). ONNX Runtime still fuses the last Gemm into INT8 (``QGemm`` with a float output). On the demo net the
    rounded logits were the largest single loss: mean cosine with FP32 0.9983 with them, 0.9999 without. Returns how many
    outputs were freed."""
    import onnx

    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # a subgraph may read the renamed tensor by its old name: left as it is
    producer = producers(graph)
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    freed = 0
    for out in graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(users.get(q.output[0], [])) != 1 or q.output[0] in outputs:
            continue
        source = q.input[0]
        if source in outputs or source not in producer:  # a graph input, or another output
            continue
        before = producer[source]
        # the producer now writes the output's name; its other readers follow
        before.output[list(before.output).index(source)] = out.name
        for node in users.get(source, []):
            if node is not q:
                node.input[:] = [out.name if i == source else i for i in node.input]
        graph.node.remove(q)
        graph.node.remove(dq)
        freed += 1
    return freed


def unify_concat_scales(model) -> int:
    """Give every input of a quantized Concat the scale and zero point of the Concat's output.

    ONNX Runtime's ``quantize_static`` quantizes each branch at its own scale and the Concat's output again at another:
    two roundings, the second at the coarser scale. With one scale the Concat copies 8-bit values exactly, so each value
    is rounded once, as with NNCF's unified scales and TensorRT's Concat fusion (which needs equal input scales). Applies
    where every input comes from a per-tensor DequantizeLinear of the same type as the output's one QuantizeLinear; the
    quantized tensors' readers elsewhere see the same (coarser) scale. Concats are taken from the last back, so a Concat
    feeding another gets the outer one's scale throughout; a tensor that two Concats of different scales read keeps the
    later's, and the earlier one is not unified (a quantized tensor has one scale). Returns how many Concats were."""
    from onnx import numpy_helper

    graph = model.graph
    producer = producers(graph)
    users = _consumers(graph)
    init = {t.name: t for t in graph.initializer}

    def per_tensor(node) -> bool:
        return len(node.input) == 3 and all(i in init for i in node.input[1:]) and numpy_helper.to_array(init[node.input[1]]).size == 1

    unified = 0
    replaced: set[str] = set()
    claimed: set[int] = set()  # the QuantizeLinear nodes a later Concat has set
    for concat in reversed([n for n in graph.node if n.op_type == "Concat"]):  # nodes are in topological order
        after = [u for u in users.get(concat.output[0], []) if u.op_type == "QuantizeLinear"]
        dqs = [producer[i] for i in concat.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        qs = [producer[d.input[0]] for d in dqs if d.input[0] in producer and producer[d.input[0]].op_type == "QuantizeLinear"]
        if len(after) != 1 or not len(qs) == len(dqs) == len(concat.input) or not all(map(per_tensor, (after[0], *qs, *dqs))):
            continue
        scale, zero = after[0].input[1], after[0].input[2]
        if any(init[q.input[2]].data_type != init[zero].data_type for q in qs):
            continue
        if any(id(q) in claimed and q.input[1:] != after[0].input[1:] for q in qs):
            continue  # an input already at another Concat's scale
        for q in qs:
            for node in [q, *(u for u in users.get(q.output[0], []) if u.op_type == "DequantizeLinear")]:
                replaced.update(node.input[1:3])
                node.input[1], node.input[2] = scale, zero
            claimed.add(id(q))
        unified += 1
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}
    for name in replaced - used:
        graph.initializer.remove(init[name])
    return unified


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


def node_stages(model) -> dict[str, list[str]]:
    """Every named node by Table 1 stage: convs, but also the pools and concats whose activations get Q/DQ."""
    stages: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name and node.op_type != "Constant":
            stages.setdefault(stage_of(node.name), []).append(node.name)
    return stages


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int = 1) -> np.ndarray:
    """DequantizeLinear's arithmetic: per tensor, or per channel along ``axis`` (a 1-D tensor, a bias, along its only axis)."""
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis % q.ndim] = -1
    return ((q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * scale.astype(np.float32).reshape(shape)).astype(np.float32)


def fold_weight_only_dequantize(model) -> int:
    """Turn INT8 weights that feed float compute (the quantization guard's weight-only stages) back into float initializers.

    ONNX Runtime does not constant-fold DequantizeLinear (it keeps Q/DQ pairs for its INT8 fusions), so such a stage
    would dequantize its weights on every run. An engine build folds them once, as TensorRT does: the artifact grows
    by those weights, the arithmetic is the same. Weights of INT8 compute (activation DQ beside them) are left alone.
    Returns how many were folded.
    """
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    producer = producers(model.graph)
    consumers = _consumers(model.graph)

    def int8_compute(node, weight_name: str) -> bool:
        # ORT fuses DQ(x) + DQ(w) -> Conv [-> Relu] -> Q into one INT8 kernel; without the Q after it, the op runs in
        # float from dequantized inputs (a weight-only stage behind an INT8 one)
        others = [producer.get(i) for i in node.input if i and i != weight_name]
        if not any(p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in init for p in others):
            return False
        if node.op_type == "Gemm":
            # DQ(x) + DQ(w) [+ DQ(int32 bias)] -> Gemm fuses into QGemm also without a Q after it (float logits); a float
            # bias (a stage the guard kept weight-only) does not fuse: DQ(w) would run on every call
            bias = node.input[2] if len(node.input) > 2 else ""
            return not bias or (bias in producer and producer[bias].op_type == "DequantizeLinear")
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
            after = consumers.get(after[0].output[0], [])
        return bool(after) and all(a.op_type == "QuantizeLinear" for a in after)

    folded = []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or not all(i in init for i in dq.input if i):
            continue
        users = consumers.get(dq.output[0], [])
        if not users or any(u.op_type not in ("Conv", "Gemm", "MatMul") or int8_compute(u, dq.output[0]) for u in users):
            continue
        q = numpy_helper.to_array(init[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(init[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        w = dequantize(q, scale, zero, next((a.i for a in dq.attribute if a.name == "axis"), 1))
        model.graph.initializer.append(numpy_helper.from_array(w, dq.output[0]))
        folded.append(dq)
    for dq in folded:
        model.graph.node.remove(dq)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return len(folded)


def fold_for_cpu(source: Path) -> tuple[str | bytes, int]:
    """``source`` as the CPU engine runs it: its path, or its bytes with weight-only INT8 folded; and how many were folded."""
    import onnx

    model = onnx.load(str(source))
    folded = fold_weight_only_dequantize(model)
    if not folded:
        return str(source), 0
    log.info("folded %d weight-only DequantizeLinear node(s) into float weights", folded)
    return model.SerializeToString(), folded


def with_fixed_batch(source: Path, dest: Path, batch: int) -> Path:
    """``source`` (an N x 3 x H x W classifier with a dynamic batch) with its input and output batch fixed to ``batch``,
    written atomically to ``dest``; weights, quantization and metadata unchanged. A fixed input shape lets ONNX Runtime
    capture and replay a CUDA graph. Intermediate shapes are dropped (the runtime infers them again). Raises
    :class:`EdgeInceptionError` for a graph that does not start with a batch dimension."""
    import onnx

    from ..fileio import atomic_path

    model = onnx.load(str(source))
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 2:
            raise EdgeInceptionError(f"{source}: {value.name} has no batch dimension to fix")
        dims[0].Clear()
        dims[0].dim_value = batch
    del model.graph.value_info[:]
    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return dest
