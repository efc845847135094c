"""ONNX Runtime's weight quantization remembered within one quantization (edge_inception/convert/ort_reuse.py): a model
built inside the block is byte-for-byte the model built outside it, whatever changes between the calls."""

from __future__ import annotations

import numpy as np

from edge_inception.convert.ort_reuse import reused_weight_quantization
from edge_inception.convert.quantize import int8_scheme, quantize_int8
from edge_inception.evaluate.cpu import CpuInfo
from edge_inception.vocab import CalibMethod, QuantTarget

from .stream_media import tiny_classifier

VNNI = CpuInfo("VNNI (forced)", "x86_64", 2, frozenset({"avx2", "avx512_vnni"}))
AVX2 = CpuInfo("AVX2 without VNNI (forced)", "x86_64", 2, frozenset({"avx2", "fma"}))


def _batches(seed: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(n)]


def _net(path, seed: int):
    """tests/stream_media's tiny classifier with named nodes and a bias on each conv (ONNX Runtime quantizes a bias at
    its input's scale times its weight's, and widens a weight's scale where that INT32 bias would overflow)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_classifier(path, seed=seed)))
    rng = np.random.default_rng(seed + 100)
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type.lower()}{i}"
        if node.op_type == "Conv":
            out_channels = next(t for t in model.graph.initializer if t.name == node.input[1]).dims[0]
            model.graph.initializer.append(numpy_helper.from_array(rng.normal(0, 0.1, out_channels).astype(np.float32), f"bias{i}"))
            node.input.append(f"bias{i}")
    onnx.save(model, str(path))
    return path


def test_models_built_in_the_block_are_those_built_outside_it(tmp_path):
    from onnxruntime.quantization import qdq_quantizer

    original = (qdq_quantizer.QDQQuantizer._calc_initializer_quant_params, qdq_quantizer.quantize_onnx_initializer)
    nets = {seed: _net(tmp_path / f"net{seed}.onnx", seed) for seed in (0, 1)}
    # what changes between one quantization's calls: the calibration (ranges), the stages kept in float, the weights
    # (another net), the scheme (reduced range or not) and the method
    builds = [("a", 0, AVX2, CalibMethod.minmax, 0, ()), ("b", 0, AVX2, CalibMethod.minmax, 1, ()),
              ("c", 0, AVX2, CalibMethod.minmax, 0, ("first",)), ("d", 1, AVX2, CalibMethod.minmax, 0, ()),
              ("e", 0, VNNI, CalibMethod.entropy, 0, ()), ("a2", 0, AVX2, CalibMethod.minmax, 0, ())]

    def build(folder, name, seed, cpu, method, data, exclude):
        src = nets[seed]
        out = folder / f"{name}.onnx"
        quantize_int8(src, out, _batches(data), int8_scheme(QuantTarget.cpu, cpu), method,
                      exclude=["conv0"] if exclude else ())
        return out.read_bytes()

    (tmp_path / "outside").mkdir()
    (tmp_path / "inside").mkdir()
    outside = {b[0]: build(tmp_path / "outside", *b) for b in builds}
    with reused_weight_quantization() as reuse:
        inside = {b[0]: build(tmp_path / "inside", *b) for b in builds}
        with reused_weight_quantization() as inner:  # a nested block shares the outer one's memory
            assert inner is reuse
            assert build(tmp_path / "inside", "a3", *builds[0][1:]) == outside["a"]
    assert inside == outside
    assert reuse.installed and reuse.hits > 0 and reuse.misses > 0  # the weights were quantized once, then reused
    # the same weights under another scheme, or other weights, were computed, not served from memory
    assert outside["d"] != outside["a"] and outside["e"] != outside["a"]
    # the block leaves ONNX Runtime as it found it
    assert (qdq_quantizer.QDQQuantizer._calc_initializer_quant_params, qdq_quantizer.quantize_onnx_initializer) == original


def test_blocks_that_overlap_in_any_order_or_thread_leave_ort_as_it_was():
    """A block that ends before one opened after it (one thread's out-of-order exits, or two threads), or one that ends
    by an error: ONNX Runtime gets its own functions back once the last block ends, whichever it is."""
    import threading

    from onnxruntime.quantization import qdq_quantizer

    def current():
        return qdq_quantizer.QDQQuantizer._calc_initializer_quant_params, qdq_quantizer.quantize_onnx_initializer

    original = current()
    a, b = reused_weight_quantization(), reused_weight_quantization()
    first = a.__enter__()
    assert b.__enter__() is first and current() != original  # one memory for both, the wrappers in place
    a.__exit__(None, None, None)  # the first opened ends first
    assert current() != original  # the other is still open
    b.__exit__(None, None, None)
    assert current() == original

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        with reused_weight_quantization():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def thread_b():
        a_in.wait(10)
        with reused_weight_quantization():
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert a_out.is_set() and current() == original

    class Stop(Exception):
        pass

    try:
        with reused_weight_quantization():
            raise Stop
    except Stop:
        pass
    assert current() == original
