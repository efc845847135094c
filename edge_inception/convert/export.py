"""PyTorch -> ONNX, verified against PyTorch, then simplified and verified again.

The exported graph has one input ``input`` (N x 3 x H x W float32, RGB normalised with the ImageNet mean/std)
and one output ``logits`` (N x num_classes). Aux classifiers are never exported: the model is built without
them and runs in eval mode. For torchvision-layout ImageNet weights, the ``transform_input`` re-mapping is
inside the graph, so one preprocessing serves both variants.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..errors import EdgeInceptionError, require_modules
from ..evaluate.verify import Parity, StepReport, parity_over, require, verification_inputs
from ..fileio import atomic_path, ensure_parent
from ..limits import MAX_OPSET, MIN_OPSET, check_batch, check_image_size, check_num_classes, check_range
from ..onnx_file import ort_session, run_session, set_metadata
from ..vocab import Variant

if TYPE_CHECKING:
    from ..model.checkpoints import LoadedModel
    from ..model.googlenet import GoogLeNet

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = Path("export") / "output"
DEFAULT_OPSET = 17
EXPORT_REL_TOL = 1e-4


@dataclass
class ExportResult:
    path: Path
    loaded: LoadedModel
    steps: list[StepReport] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def default_output(variant: Variant, image_size: int, directory: Path = DEFAULT_OUTPUT_DIR) -> Path:
    return directory / f"googlenet_{variant.value}_{image_size}.onnx"


def model_metadata(loaded: LoadedModel, image_size: int, batch: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "producer": "edge-inception",
        "edge_inception_version": __version__,
        "architecture": "googlenet",
        "variant": loaded.variant.value,
        "num_classes": str(loaded.num_classes),
        "image_size": str(image_size),
        "batch": "dynamic" if batch is None else str(batch),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "transform_input": "true" if loaded.transform_input else "false",
        "checkpoint": loaded.source,
        "checkpoint_sha256": loaded.sha256 or "none (seeded weights)",
        "seeded_weights": "true" if loaded.seeded else "false",
        "class_labels": "imagenet-1k" if loaded.num_classes == 1000 and not loaded.extra.get("classes_from_training") else "checkpoint",
    }
    if loaded.num_classes != 1000 or loaded.extra.get("classes_from_training"):
        meta["class_names"] = loaded.class_names
    return meta


def torch_to_onnx(model: GoogLeNet, path: Path, image_size: int, batch: int | None, opset: int, fold_batchnorm: bool = True) -> None:
    """Trace ``model`` (eval mode, no aux heads) to ``path``; BatchNorm is folded into the convs unless told not to."""
    import torch

    model.eval()
    dummy = torch.zeros(batch or 1, 3, image_size, image_size)
    dynamic_axes = None if batch is not None else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, but it is the one that maps our
        # LRN to ONNX's LRN op and gives TensorRT a plain static graph; silence its notices.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=fold_batchnorm,
            # EVAL fuses Conv+BatchNorm while tracing; PRESERVE on an eval-mode model keeps them apart
            training=torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE,
        )


def check_against_torch(model: GoogLeNet, onnx_path: Path, inputs: list[np.ndarray]) -> Parity:
    import torch

    session = ort_session(onnx_path)

    def torch_logits(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(model(torch.from_numpy(batch)).numpy())

    return parity_over(inputs, torch_logits, lambda b: run_session(session, b))


def export_model(
    weights: str | Path | None = None,
    output: str | Path | None = None,
    *,
    variant: Variant | str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    simplify: bool = True,
    seed: int = 0,
    transform_input: bool | None = None,
    loaded: LoadedModel | None = None,
    fold_batchnorm: bool = True,
) -> ExportResult:
    """Export GoogLeNet to ONNX, verify it against PyTorch, simplify and verify again, then write ``output``.

    ``batch=None`` gives a dynamic batch dimension. ``fold_batchnorm=False`` (which implies no simplification,
    since onnxsim folds them) keeps BatchNormalization nodes, e.g. to count parameters as PyTorch does.
    Nothing is written if a step fails verification.
    """
    require_modules("export", "torch", *(["onnxsim"] if simplify and fold_batchnorm else []))
    import onnx

    from ..model.checkpoints import load_model

    if image_size is not None:
        check_image_size(image_size)
    if num_classes is not None:
        check_num_classes(num_classes)
    if batch is not None:
        check_batch(batch)
    check_range("--opset", opset, MIN_OPSET, MAX_OPSET)
    if loaded is None:
        loaded = load_model(weights, variant=variant, num_classes=num_classes, transform_input=transform_input, seed=seed)
    size = image_size if image_size is not None else (loaded.image_size or 224)
    out = Path(output) if output is not None else default_output(loaded.variant, size)
    ensure_parent(out)
    model = loaded.model.eval()
    if model.aux1 is not None or model.aux2 is not None:
        raise EdgeInceptionError("internal: export needs the aux-free model")

    meta = model_metadata(loaded, size, batch)
    inputs = verification_inputs(size, batch, seed)
    result = ExportResult(path=out, loaded=loaded, metadata=meta)
    with atomic_path(out) as tmp:
        torch_to_onnx(model, tmp, size, batch, opset, fold_batchnorm)
        onnx_model = onnx.load(str(tmp))
        set_metadata(onnx_model, meta)
        onnx.checker.check_model(onnx_model, full_check=True)
        onnx.save(onnx_model, str(tmp))
        parity = check_against_torch(model, tmp, inputs)
        require(parity, rel_tol=EXPORT_REL_TOL, step="export (PyTorch vs ONNX Runtime)")
        result.steps.append(StepReport("export", "pytorch", parity, sorted({b.shape[0] for b in inputs})))
        log.info("export verified: max rel error %.2e", parity.max_rel_error)
        if simplify and fold_batchnorm:
            from .simplify import simplify_onnx

            simplified, step = simplify_onnx(onnx_model, inputs)
            result.steps.append(step)
            onnx.save(simplified, str(tmp))
    return result
