"""The words every layer shares: the user's choices as ``str`` enums (Typer takes them as option types directly)
and the constants of the network's input.

This module imports nothing heavy: the CLI loads it at start-up, before it knows which command runs.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Smallest square input the stem and the four stride-2 pools reduce to at least 1 x 1.
MIN_IMAGE_SIZE = 32


class Choice(str, Enum):
    """A ``str`` enum that prints as its value (``f"{Precision.int8}"`` is ``int8`` on every Python)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Variant(Choice):
    """GoogLeNet layout: torchvision's (BatchNorm, 3x3 "5x5" branch) or the paper's Table 1."""

    torchvision = "torchvision"
    paper = "paper"


class Precision(Choice):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Backend(Choice):
    """Inference runtimes an artifact can be built for (see ``engines.registry``)."""

    ort = "ort"
    tensorrt = "tensorrt"
    openvino = "openvino"


class BackendOption(Choice):
    """``build --backend``: one runtime, or ``auto``: every backend of the target that runs here, the fastest judged kept."""

    auto = "auto"
    ort = "ort"
    tensorrt = "tensorrt"
    openvino = "openvino"


class PrecisionOption(Choice):
    """``build --precision``: the graph's own, or ``auto``: every precision of the target, the fastest judged kept."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class CalibMethod(Choice):
    auto = "auto"  # each of the others, keeping the best on the held-out images
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Criterion(Choice):
    """What a quantized model must keep: accuracy on labelled images (MLPerf's rule) or top-1 agreement with FP32."""

    auto = "auto"  # agreement, and accuracy too where labels are at hand (--eval, or the demo set for a demo-trained model)
    accuracy = "accuracy"
    agreement = "agreement"


class QuantTarget(Choice):
    """What an INT8 graph is made for: it picks the quantization scheme."""

    cpu = "cpu"
    gpu = "gpu"
    tensorrt = "tensorrt"


class Baseline(Choice):
    """Reference engines a benchmark measures beside the artifacts."""

    torch = "torch"  # the PyTorch model in eager mode
    ort_default = "ort-default"  # a plain ONNX Runtime session on the unoptimised FP32 export


# Engine names of the baselines in benchmark reports.
BASELINE_ENGINES = {Baseline.torch: "torch-eager", Baseline.ort_default: "ort-default"}


def parse_list(text: str, enum: type[E], option: str) -> tuple[E, ...]:
    """``"fp32,int8"`` -> ``(Precision.fp32, Precision.int8)``, each once in the order first given; unknown words raise
    ``ValueError`` naming the choices."""
    values: list[E] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            values.append(enum(word))
        except ValueError:
            raise ValueError(f"{option}: '{word}' is not one of {', '.join(str(m.value) for m in enum)}") from None
    if not values:
        raise ValueError(f"{option}: give at least one of {', '.join(str(m.value) for m in enum)}")
    return tuple(dict.fromkeys(values))


class PreprocessMode(Choice):
    """How an image file becomes the input tensor (``data.images.load_tensor``).

    ``exact``: the reference transform on the fully decoded image. ``fast``: JPEGs decoded at a reduced scale in the DCT
    domain (never below twice the resize size), then only the crop's pixels resampled; measured against ``exact`` in
    benchmarks/stream_goals.py and tests/test_stream.py.
    """

    exact = "exact"
    fast = "fast"


class SharedMemory(Choice):
    """How tensors reach a Triton server (Triton's shared-memory extension; perf_analyzer's ``--shared-memory``): in the
    gRPC messages (``none``) or through system shared memory (``system``: the server on this machine; serve/shm.py)."""

    none = "none"
    system = "system"


class FolderOrder(Choice):
    """How integer class folders (``0``, ``1``, ... ``11``) map to a model's outputs when it has no class names.

    ``numeric``: folder ``10`` is output 10. ``imagefolder``: torchvision's ImageFolder order, the folder names sorted as
    strings (``0, 1, 10, 11, 2, ...``), so folder ``10`` is output 2: what a model trained with ImageFolder learnt.
    """

    numeric = "numeric"
    imagefolder = "imagefolder"
