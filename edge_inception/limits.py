"""Bounds on every number a user, a file header or a manifest can hand us, in one place.

Each bound is checked where the number enters (an option, a manifest field, an image header), and the message
gives the allowed range. Values are generous for GoogLeNet on edge devices and small enough that a hostile value
cannot exhaust memory, threads or disk before it is refused.
"""

from __future__ import annotations

import os

from .errors import EdgeInceptionError
from .vocab import MIN_IMAGE_SIZE

MAX_IMAGE_SIZE = 1024  # network input side: 21x the multiply-adds of 224, ~1 GB of activations at batch 8
MAX_CLASSES = 32_768  # ImageNet-21k has 21,841


class LimitError(EdgeInceptionError):
    """A number outside the range this toolkit accepts."""


def max_threads() -> int:
    """A small multiple of the cores: more threads than that only contend."""
    return 4 * (os.cpu_count() or 1)


def check_range(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], else a :class:`LimitError` naming the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise LimitError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_image_size(value: object, name: str = "--image-size") -> int:
    return check_range(name, value, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def check_num_classes(value: object, name: str = "--num-classes") -> int:
    return check_range(name, value, 1, MAX_CLASSES)


def check_threads(value: object, name: str = "--threads") -> int:
    """0 means the runtime's default."""
    return check_range(name, value, 0, max_threads())
