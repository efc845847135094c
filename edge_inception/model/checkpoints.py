"""Checkpoints in, GoogLeNet out.

Reads ``.pth``/``.pt`` (a plain state_dict, or a training checkpoint holding one under ``state_dict`` or
``model``, with or without a ``module.`` prefix) and ``.safetensors``. Never unpickles arbitrary objects:
``torch.load`` runs with ``weights_only=True``. The variant and ``num_classes`` are inferred from the tensors,
aux-head weights are dropped, and anything that is not one of our two layouts is refused with a message
naming the first missing/unexpected key or mismatched shape.

Without a checkpoint the model is initialised from a seed; :attr:`LoadedModel.seeded` says so, and every
command that uses such a model warns that its outputs are not meaningful.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, require_modules
from ..fileio import read_json, sha256_file
from ..limits import LimitError, check_image_size, check_num_classes
from ..names import UnsafeNameError, check_labels
from ..vocab import IMAGENET_MEAN, IMAGENET_STD, Variant
from .labels import class_names as default_class_names

if TYPE_CHECKING:
    from .googlenet import GoogLeNet

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
SIDECAR_SUFFIX = ".json"  # class names and training settings stored beside a fine-tuned checkpoint


@dataclass
class LoadedModel:
    model: GoogLeNet
    variant: Variant
    num_classes: int
    transform_input: bool
    class_names: list[str]
    source: str  # checkpoint path, or "seed:N"
    sha256: str | None
    seeded: bool
    image_size: int | None = None  # from a fine-tuning sidecar, if any
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(SIDECAR_SUFFIX)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read the tensors of a checkpoint file, refusing anything that is not a mapping of names to tensors."""
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"weights path is not a file: {p}")
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{p}: unsupported weights format '{p.suffix}' (expected one of {', '.join(CHECKPOINT_SUFFIXES)})")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
            raise CheckpointError(f"{p}: not a readable safetensors file ({_first_line(exc)})") from exc
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, pickle refused by weights_only, not a torch file at all
            raise CheckpointError(f"{p}: {_explain_torch_load_error(p, exc)}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{p}: does not hold a state_dict (found {type(obj).__name__})")
    state: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{p}: entry {str(key)[:80]!r} is a {type(value).__name__}, not a tensor")
        name = strip_wrappers(key)
        if name in state:
            raise CheckpointError(f"{p}: '{name}' appears twice once wrapper prefixes are stripped ('{key}')")
        state[name] = value
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"{p}: {bad}; the weights are unusable (a training that diverged?)")
    return state


def non_finite(state: Mapping[str, Any]) -> str | None:
    """None when every floating tensor of ``state`` holds only finite numbers; else which does not, in a few words
    (the first such tensor and how many NaN / infinite values it holds)."""
    import torch

    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                return f"tensor '{str(name)[:80]}' holds {int((~finite).sum()):,} NaN or infinite value(s)"
    return None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def strip_wrappers(key: str) -> str:
    """``key`` without the prefixes wrappers add, however many and in whatever order (``_orig_mod.module.`` is
    torch.compile of a DataParallel model)."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def infer_variant(state: Mapping[str, Any], source: str = "checkpoint") -> tuple[Variant, int]:
    """The variant and number of classes a GoogLeNet state_dict was saved from."""
    if "conv1.conv.weight" not in state or "fc.weight" not in state:
        missing = "conv1.conv.weight" if "conv1.conv.weight" not in state else "fc.weight"
        first = ", ".join(list(state)[:3])
        raise CheckpointError(f"{source}: not a GoogLeNet checkpoint: missing key '{missing}' (found {first}, ...)")
    if "conv1.bn.running_mean" in state:
        variant = Variant.torchvision
    elif "conv1.conv.bias" in state:
        variant = Variant.paper
    else:
        raise CheckpointError(f"{source}: GoogLeNet layout not recognised: neither 'conv1.bn.running_mean' nor 'conv1.conv.bias' present")
    fc = state["fc.weight"]
    if fc.ndim != 2 or fc.shape[1] != 1024:
        raise CheckpointError(f"{source}: 'fc.weight' has shape {tuple(fc.shape)}, expected (num_classes, 1024)")
    try:
        check_num_classes(int(fc.shape[0]), "the classes of 'fc.weight'")
    except LimitError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return variant, int(fc.shape[0])


def load_into(model: GoogLeNet, state: Mapping[str, Any], source: str) -> None:
    """Strict load that explains the first problem in one line."""
    expected = {k: v for k, v in model.state_dict().items()}
    given = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))} if model.aux1 is None else dict(state)
    # PyTorch's strict load accepts a state_dict without BatchNorm's num_batches_tracked (older versions wrote none):
    # BatchNorm fills it in (torch.nn.modules.batchnorm._NormBase._load_from_state_dict), so do we.
    missing = [k for k in expected if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing key '{missing[0]}' ({len(missing)} missing) for the {model.variant.value} GoogLeNet")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected) for the {model.variant.value} GoogLeNet")
    for key, want in expected.items():
        if key not in given:
            continue
        got = given[key]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    model.load_state_dict(given, strict=True)


MAX_SIDECAR_BYTES = 4 << 20  # ImageNet-21k class names fit in under 1 MB


def read_sidecar(checkpoint: Path, num_classes: int | None = None) -> dict[str, Any]:
    """The fine-tuning sidecar beside ``checkpoint`` (``{}`` if there is none), its fields checked: ``classes`` a list of
    ``num_classes`` printable labels, ``image_size`` within limits.py, ``transform_input`` a boolean."""
    side = sidecar_path(checkpoint)
    if not os.path.lexists(side):
        return {}
    data = read_json(side, MAX_SIDECAR_BYTES, "class-names file", error=CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{side}: expected a JSON object")
    try:
        if "classes" in data:
            check_labels(data["classes"], "field 'classes'", num_classes)
        if "image_size" in data:
            check_image_size(data["image_size"], "field 'image_size'")
    except (LimitError, UnsafeNameError) as exc:
        raise CheckpointError(f"{side}: {exc}") from None
    if not isinstance(data.get("transform_input", False), bool):
        raise CheckpointError(f"{side}: field 'transform_input' must be true or false")
    return data


def load_model(
    weights: str | Path | None = None,
    *,
    variant: Variant | str | None = None,
    num_classes: int | None = None,
    transform_input: bool | None = None,
    aux_logits: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Build GoogLeNet from a checkpoint, or from ``seed`` when ``weights`` is None.

    ``variant``/``num_classes`` given with a checkpoint must agree with what its tensors say.
    ``transform_input`` defaults to True for a 1000-class torchvision-layout checkpoint (the ported ImageNet
    weights need it), else to what a fine-tuning sidecar recorded, else False.
    """
    require_modules("loading a GoogLeNet", "torch")
    from .googlenet import GoogLeNet, init_weights

    if weights is None:
        v = Variant(variant or Variant.torchvision)
        n = 1000 if num_classes is None else check_num_classes(num_classes)
        model = init_weights(GoogLeNet(v, n, transform_input=bool(transform_input), aux_logits=aux_logits), seed)
        log.info("no checkpoint given: GoogLeNet initialised from seed %d", seed)
        return LoadedModel(model, v, n, bool(transform_input), default_class_names(n), f"seed:{seed}", None, True)

    path = Path(weights)
    side = read_sidecar(path)  # small and bounded: checked before the tensors are read
    state = read_state_dict(path)
    found_variant, found_classes = infer_variant(state, str(path))
    if variant is not None and Variant(variant) is not found_variant:
        raise CheckpointError(f"{path}: holds the {found_variant.value} layout, not {Variant(variant).value}")
    if num_classes is not None and num_classes != found_classes:
        raise CheckpointError(f"{path}: has {found_classes} classes, not {num_classes}")
    if len(side.get("classes", [])) not in (0, found_classes):
        raise CheckpointError(f"{sidecar_path(path)}: field 'classes' has {len(side['classes'])} entries, the checkpoint {found_classes} classes")
    if transform_input is None:
        transform_input = bool(side.get("transform_input", found_variant is Variant.torchvision and found_classes == 1000))
    has_aux = any(k.startswith("aux1.") for k in state)
    model = GoogLeNet(found_variant, found_classes, transform_input=transform_input, aux_logits=aux_logits and has_aux)
    if aux_logits and not has_aux:
        # fine-tuning from weights without aux heads (torchvision's published file): fresh aux heads
        model = GoogLeNet(found_variant, found_classes, transform_input=transform_input, aux_logits=True)
        init_weights(model, seed)
        aux_free = GoogLeNet(found_variant, found_classes, transform_input=transform_input, aux_logits=False)
        load_into(aux_free, state, str(path))
        model.load_state_dict(aux_free.state_dict(), strict=False)
    else:
        load_into(model, state, str(path))
    names = side.get("classes")
    return LoadedModel(
        model=model,
        variant=found_variant,
        num_classes=found_classes,
        transform_input=transform_input,
        class_names=default_class_names(found_classes, names if isinstance(names, list) else None),
        source=str(path),
        sha256=sha256_file(path),
        seeded=False,
        image_size=side.get("image_size"),
        extra={k: v for k, v in side.items() if k not in ("classes",)},
    )


def _explain_torch_load_error(path: Path, exc: BaseException) -> str:
    import zipfile

    if not zipfile.is_zipfile(path):
        return "not a PyTorch checkpoint (not a torch.save zip archive, or truncated)"
    if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
        return "holds pickled objects other than tensors; refusing to unpickle them (weights_only=True)"
    return f"not a readable PyTorch checkpoint ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
