"""One quantization's weights, quantized once: ONNX Runtime's Q/DQ quantizer remembered across its calls.

``quantize_model`` calls ONNX Runtime's ``quantize_static`` once per INT8 model it builds: one per calibration method, per
guard probe, per cross-fitted fold and for the model written (13 for six photos with ``--calib-method auto``). Every call
quantizes the same FP32 weights with the same scheme, channel by channel in Python: the weights' scales and zero points
(``QDQQuantizer._calc_initializer_quant_params``) and their INT8 values (``quant_utils.quantize_onnx_initializer``) took
six of the 24 s of such a quantization, as much as all the calibration did. Only the activations' ranges differ from one
call to the next, and what depends on them (the activations' Q/DQ, the INT32 biases) is still computed each time.

:func:`reused_weight_quantization` remembers both results for the duration of a ``with`` block, keyed by everything they
read: the weight's bytes (name, shape, data), its quantization type, axis and scheme, and the settings of the quantizer
that computes them. A call with any other input computes afresh, so a model built inside the block is byte-for-byte the
model built outside it (tests/test_quantize.py checks it). The two functions are ONNX Runtime's internals (1.32); where
they are not found as expected the block changes nothing and quantization runs as it did, only slower.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_lock = threading.Lock()
_active: list[Reuse] = []  # the open blocks, outermost first; the patches are in place while it is not empty


@dataclass
class Reuse:
    """What one block remembered and how often it was asked again (``hits``) or had to compute (``misses``)."""

    params: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # per initializer
    weights: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    installed: bool = False


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=20).digest()


def _array_key(a: Any) -> tuple[Any, ...]:
    arr = np.ascontiguousarray(np.asarray(a))
    return (arr.dtype.str, arr.shape, _digest(arr.tobytes()))


def _settings_key(quantizer: Any) -> tuple[Any, ...] | None:
    """The quantizer's settings ``_calc_initializer_quant_params`` reads, or None where it reads what this does not know
    (per-tensor overrides)."""
    if getattr(quantizer, "tensor_quant_overrides", None) is None or len(quantizer.tensor_quant_overrides.overrides):
        return None
    return (quantizer.weight_qType, quantizer.activation_qType, quantizer.reduce_range, quantizer.min_real_range, quantizer.block_size,
            quantizer.is_activation_symmetric, quantizer.is_weight_symmetric(quantizer.weight_qType))


def _remembered_params(original: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """``_calc_initializer_quant_params`` tensor by tensor: each initializer's parameters depend on its bytes, its role
    (weight or not), its axis and the quantizer's settings alone, so a model that keeps other stages in float (the
    guard's mixes) still reuses those of every tensor computed before; the rest are computed by ONNX Runtime itself,
    given only them."""

    def calc(quantizer: Any) -> dict[str, Any]:
        reuse = _active[0] if _active else None
        settings = _settings_key(quantizer) if reuse is not None else None
        if reuse is None or settings is None:
            return original(quantizer)
        inits = {t.name: t for t in quantizer.model.initializer()}
        keys = {name: (settings, name, str(info.tensor_type), info.axis, _digest(inits[name].SerializeToString()))
                for name, info in quantizer.tensors_to_quantize.items() if name in inits}
        missing = {name: info for name, info in quantizer.tensors_to_quantize.items() if name in keys and keys[name] not in reuse.params}
        reuse.hits += len(keys) - len(missing)
        reuse.misses += len(missing)
        if missing:
            every = quantizer.tensors_to_quantize
            quantizer.tensors_to_quantize = missing
            try:
                computed = original(quantizer)
            finally:
                quantizer.tensors_to_quantize = every
            reuse.params.update({keys[name]: copy.deepcopy(p) for name, p in computed.items()})
        # in ONNX Runtime's order (the tensors to quantize); each caller gets its own copy: ONNX Runtime widens a weight's
        # scale in place where its INT32 bias would overflow
        return {name: copy.deepcopy(reuse.params[key]) for name, key in keys.items() if key in reuse.params}

    return calc


def _remembered_weights(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def quantize(*args: Any, **kwargs: Any) -> Any:
        reuse = _active[0] if _active else None
        if reuse is None:
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, _digest(v.SerializeToString()) if hasattr(v, "SerializeToString")
                     else _array_key(v) if isinstance(v, np.ndarray) else v) for name, v in bound.arguments.items())
        if key in reuse.weights:
            reuse.hits += 1
        else:
            reuse.misses += 1
            reuse.weights[key] = original(*args, **kwargs)
        made = type(reuse.weights[key])()
        made.CopyFrom(reuse.weights[key])
        return made

    return quantize


def _targets() -> tuple[Any, Any] | None:
    """(the quantizer class, the module whose ``quantize_onnx_initializer`` it calls), or None where they are not as expected."""
    try:
        from onnxruntime.quantization import qdq_quantizer
    except ImportError:
        return None
    cls = getattr(qdq_quantizer, "QDQQuantizer", None)
    if cls is None or not callable(getattr(cls, "_calc_initializer_quant_params", None)) or not callable(
            getattr(qdq_quantizer, "quantize_onnx_initializer", None)):
        return None
    return cls, qdq_quantizer


@contextlib.contextmanager
def reused_weight_quantization() -> Iterator[Reuse]:
    """Within the block, ONNX Runtime's Q/DQ quantizer quantizes each distinct weight once (see the module's text).
    Blocks may nest (the outermost one's memory serves); yields the outermost block's :class:`Reuse`."""
    with _lock:
        if _active:
            reuse = _active[0]
            _active.append(reuse)
            saved = None
        else:
            targets = _targets()
            reuse = Reuse(installed=targets is not None)
            saved = None
            if targets is None:
                log.debug("ONNX Runtime's quantizer is not as expected: its weights are quantized afresh by each call")
            else:
                cls, module = targets
                saved = (cls, cls._calc_initializer_quant_params, module, module.quantize_onnx_initializer)
                cls._calc_initializer_quant_params = _remembered_params(saved[1])
                module.quantize_onnx_initializer = _remembered_weights(saved[3])
            _active.append(reuse)
    try:
        yield reuse
    finally:
        with _lock:
            _active.pop()
            if not _active and saved is not None:
                cls, calc, module, quantize = saved
                cls._calc_initializer_quant_params = calc
                module.quantize_onnx_initializer = quantize
        if saved is not None:
            log.debug("weight quantization: %d computed, %d reused", reuse.misses, reuse.hits)
