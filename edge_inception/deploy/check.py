"""``edge-inception check``: replay a bundle's reference inputs through an artifact and compare its logits with the
workstation's, at the precision's tolerance: the proof, on the device, that the engine still gives the same answers.

An engine ``trtexec`` built (no manifest yet) is adopted: once it passes, ``check`` writes its manifest, so that
``predict``, ``eval`` and ``bench`` take it like one ``edge-inception build`` made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.build import judge
from ..engines.manifest import Manifest, manifest_path, read_manifest, write_manifest
from ..engines.registry import is_plain_onnx, open_runner, resolve_artifact
from ..errors import ManifestError, ModelFileError, VerificationError
from ..evaluate.verify import Parity, compare
from ..fileio import link_path, sha256_file
from ..limits import MAX_CLASSES, MAX_IMAGE_SIZE
from ..vocab import Precision

MAX_REFERENCE_IMAGES = 64


@dataclass
class Reference:
    inputs: np.ndarray
    outputs: np.ndarray
    precision: Precision
    model_sha256: str
    folder: Path


@dataclass
class CheckResult:
    artifact: Path
    parity: Parity
    precision: str
    device: str
    adopted: bool = False


def _load_array(path: Path, ndim: int, limits: tuple[int, ...]) -> np.ndarray:
    """A float32 .npy whose shape is checked from its header before its data is read; no pickles."""
    if not path.is_file():
        raise ModelFileError(f"reference file not found: {path}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)  # the header only: the data is read once the shape is known to be sane
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"{path}: not a .npy array ({exc})") from exc
    if dtype != np.float32 or len(shape) != ndim or fortran or any(not 0 < s <= hi for s, hi in zip(shape, limits)):
        raise ModelFileError(f"{path}: expected a float32 array of {ndim} dimensions within {limits}, found {dtype} {shape}")
    return np.load(path, allow_pickle=False)


def load_reference(folder: str | Path) -> Reference:
    ref = Path(folder)
    meta_path = ref / "reference.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.stat().st_size < 1 << 20 else None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{meta_path}: not a readable reference description ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("precision") not in {p.value for p in Precision}:
        raise ModelFileError(f"{meta_path}: not a reference description written by 'edge-inception bundle'")
    inputs = _load_array(ref / "inputs.npy", 4, (MAX_REFERENCE_IMAGES, 3, MAX_IMAGE_SIZE, MAX_IMAGE_SIZE))
    outputs = _load_array(ref / "outputs.npy", 2, (MAX_REFERENCE_IMAGES, MAX_CLASSES))
    if inputs.shape[0] != outputs.shape[0] or inputs.shape[2] != inputs.shape[3]:
        raise ModelFileError(f"{ref}: inputs {inputs.shape} and outputs {outputs.shape} do not belong together")
    return Reference(inputs, outputs, Precision(meta["precision"]), str(meta.get("model_sha256", "")), ref)


def check_artifact(artifact: str | Path, reference: str | Path, *, target: str | None = None) -> CheckResult:
    ref = load_reference(reference)
    art = resolve_artifact(artifact)
    if art.suffix in (".engine", ".plan") and not manifest_path(art).exists():
        return _adopt(art, ref, target)
    if is_plain_onnx(art):
        with open_runner(art) as runner:
            parity = compare(ref.outputs, runner.run(ref.inputs))
        judge(parity, ref.precision, art.name, "the reference outputs")
        return CheckResult(art, parity, ref.precision.value, "cpu")
    manifest = read_manifest(art)
    if ref.model_sha256 and manifest.source_sha256 != ref.model_sha256:
        raise VerificationError(f"{art.name} was built from another model than the reference's ({Path(manifest.source_onnx).name}, sha256 "
                                f"{manifest.source_sha256[:12]} vs {ref.model_sha256[:12]}); rebuild it from the bundle's ONNX")
    if manifest.image_size != ref.inputs.shape[2]:
        raise VerificationError(f"{art.name} takes {manifest.image_size} px images, the reference has {ref.inputs.shape[2]} px")
    with open_runner(art) as runner:
        parity = compare(ref.outputs, runner.run(ref.inputs))
    judge(parity, Precision(manifest.precision), art.name, "the reference outputs", device=manifest.device,
          tf32=bool(manifest.options.get("tf32")))
    return CheckResult(art, parity, manifest.precision, manifest.device)


def _adopt(engine: Path, ref: Reference, target: str | None) -> CheckResult:
    """A TensorRT engine without a manifest (``trtexec`` built it): run it, and write its manifest if it passes."""
    from ..engines.targets import get_target
    from ..engines.tensorrt import TensorRTRunner, cuda_device, tensorrt_version

    if target is None:
        bundle_target = ref.folder.parent / "target.toml"
        if not bundle_target.is_file():
            raise ManifestError(f"{engine} has no manifest; say which target it was built for with --target")
        target = str(bundle_target)
    tgt = get_target(target)
    size, n_classes = ref.inputs.shape[2], ref.outputs.shape[1]
    labels = ref.folder.parent / "labels.txt"
    names = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else None
    model = next(iter(ref.folder.parent.glob("*.onnx")), None)
    manifest = Manifest(backend="tensorrt", target=tgt.name, precision=ref.precision.value, artifact=engine.name,
                        artifact_sha256=sha256_file(engine), source_onnx=link_path(model, engine.parent) if model else "unknown",
                        source_sha256=ref.model_sha256 or "0" * 64,
                        image_size=size, num_classes=n_classes, input_shapes={}, libraries={"tensorrt": tensorrt_version()},
                        options={"adopted": "trtexec"}, gpu=cuda_device(), class_names=names if names and len(names) == n_classes else None,
                        device="cuda")
    runner = TensorRTRunner(engine, manifest)
    with runner:
        shape = runner.engine.get_tensor_profile_shape(runner.input_name, 0) if runner.engine.num_optimization_profiles else None
        lo, hi = (shape[0][0], shape[2][0]) if shape else (len(ref.inputs), len(ref.inputs))
        runner.batch_range = (lo, hi)
        parity = compare(ref.outputs, runner.run(ref.inputs))
    judge(parity, ref.precision, engine.name, "the reference outputs", device="cuda")
    manifest.input_shapes = {"min": [lo, 3, size, size], "opt": [hi, 3, size, size], "max": [hi, 3, size, size]}
    write_manifest(engine, manifest)
    return CheckResult(engine, parity, ref.precision.value, "cuda", adopted=True)
