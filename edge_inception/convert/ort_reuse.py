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
model built outside it (tests/test_ort_reuse.py checks it). The two functions are ONNX Runtime's internals (1.32); where
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
# the open blocks in every thread: the patches are in place while there is one; ``_saved`` holds ONNX Runtime's own
# functions meanwhile, and whichever block ends last, in whatever order they end, puts them back
_open = 0
_current: Reuse | None = None
_saved: tuple[Any, Any, Any, Any] | None = None
# what a wrapper does when it cannot make a key of what it was given: ONNX Runtime's own function, as outside a block
_UNKEYABLE = (AttributeError, TypeError, ValueError)


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
    overrides = getattr(getattr(quantizer, "tensor_quant_overrides", None), "overrides", None)
    if not isinstance(overrides, dict) or overrides:
        return None
    return (quantizer.weight_qType, quantizer.activation_qType, quantizer.reduce_range, quantizer.min_real_range, quantizer.block_size,
            quantizer.is_activation_symmetric, quantizer.is_weight_symmetric(quantizer.weight_qType))


def _remembered_params(original: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """``_calc_initializer_quant_params`` tensor by tensor: each initializer's parameters depend on its bytes, its role
    (weight or not), its axis and the quantizer's settings alone, so a model that keeps other stages in float (the
    guard's mixes) still reuses those of every tensor computed before; the rest are computed by ONNX Runtime itself,
    given only them."""

    def calc(quantizer: Any) -> dict[str, Any]:
        reuse = _current
        if reuse is None:
            return original(quantizer)
        try:
            settings = _settings_key(quantizer)
            if settings is None:
                return original(quantizer)
            inits = {t.name: t for t in quantizer.model.initializer()}
            keys = {name: (settings, name, str(info.tensor_type), info.axis, _digest(inits[name].SerializeToString()))
                    for name, info in quantizer.tensors_to_quantize.items() if name in inits}
            hash(tuple(keys.values()))
        except _UNKEYABLE:  # not the quantizer this was written against: as outside a block
            return original(quantizer)
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


def _remembered_weights(original: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:

    def quantize(*args: Any, **kwargs: Any) -> Any:
        reuse = _current
        if reuse is None:
            return original(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = tuple((name, _digest(v.SerializeToString()) if hasattr(v, "SerializeToString")
                         else _array_key(v) if isinstance(v, np.ndarray) else v) for name, v in bound.arguments.items())
            hash(key)
        except _UNKEYABLE:  # arguments this does not know how to key: as outside a block
            return original(*args, **kwargs)
        if key in reuse.weights:
            reuse.hits += 1
        else:
            reuse.misses += 1
            reuse.weights[key] = original(*args, **kwargs)
        made = type(reuse.weights[key])()
        made.CopyFrom(reuse.weights[key])
        return made

    return quantize


def _targets() -> tuple[Any, Any, inspect.Signature] | None:
    """(the quantizer class, the module whose ``quantize_onnx_initializer`` it calls, that function's signature), or None
    where they are not there. A quantizer that lacks what the keys read (ONNX Runtime before 1.23 has no ``block_size``)
    is let through to ONNX Runtime's own function call by call."""
    try:
        from onnxruntime.quantization import qdq_quantizer
    except ImportError:
        return None
    cls = getattr(qdq_quantizer, "QDQQuantizer", None)
    calc, quantize = getattr(cls, "_calc_initializer_quant_params", None), getattr(qdq_quantizer, "quantize_onnx_initializer", None)
    if cls is None or not callable(calc) or not callable(quantize):
        return None
    try:
        signature = inspect.signature(quantize)
    except (TypeError, ValueError):  # a function whose parameters cannot be read: its calls cannot be keyed
        return None
    return cls, qdq_quantizer, signature


def _enter(entered: list[bool]) -> Reuse:
    """Count a block in; the first open one installs the wrappers (built before anything is replaced)."""
    global _open, _current, _saved
    with _lock:
        if _open == 0:
            targets = _targets()
            _current = Reuse(installed=targets is not None)
            if targets is None:
                log.debug("ONNX Runtime's quantizer is not as expected: its weights are quantized afresh by each call")
            else:
                cls, module, signature = targets
                originals = (cls, cls._calc_initializer_quant_params, module, module.quantize_onnx_initializer)
                calc, quantize = _remembered_params(originals[1]), _remembered_weights(originals[3], signature)
                _saved = originals
                cls._calc_initializer_quant_params = calc
                module.quantize_onnx_initializer = quantize
        reuse = _current or Reuse()
        _open += 1
        entered.append(True)
        return reuse


def _leave() -> None:
    """Count a block out; the last open one, whichever it is, puts ONNX Runtime's functions back and lets go of the memory."""
    global _open, _current, _saved
    with _lock:
        _open -= 1
        if _open == 0:
            if _saved is not None:
                cls, calc, module, quantize = _saved
                cls._calc_initializer_quant_params = calc
                module.quantize_onnx_initializer = quantize
                _saved = None
            if _current is not None:
                log.debug("weight quantization: %d computed, %d reused", _current.misses, _current.hits)
            _current = None


@contextlib.contextmanager
def reused_weight_quantization() -> Iterator[Reuse]:
    """Within the block, ONNX Runtime's Q/DQ quantizer quantizes each distinct weight once (see the module's text).
    Blocks may nest or overlap, in one thread or several: they share one memory, and ONNX Runtime is as it was once the
    last of them ends. Yields that memory's :class:`Reuse`."""
    entered: list[bool] = []
    try:
        yield _enter(entered)
    finally:
        if entered:  # counted in, even if interrupted on the way
            _leave()
