"""``edge-inception check``: replay a bundle's reference inputs through an artifact and compare its logits with the
workstation's, at the precision's tolerance: the proof, on the device, that the engine still gives the same answers.

An engine ``trtexec`` built (no manifest yet) is adopted: once it passes, ``check`` writes its manifest, so that
``predict``, ``eval`` and ``bench`` take it like one ``edge-inception build`` made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.build import judge
from ..engines.manifest import Manifest, manifest_path, read_manifest, write_manifest
from ..engines.registry import is_plain_onnx, open_runner, resolve_artifact
from ..errors import ModelFileError, VerificationError
from ..evaluate.verify import Parity, compare
from ..fileio import link_path, open_regular, read_json, sha256_file
from ..vocab import Precision
from .bundle import VerifiedBundle, verify_bundle

MAX_REFERENCE_IMAGES = 64
MAX_REFERENCE_JSON_BYTES = 1 << 20


@dataclass
class Reference:
    inputs: np.ndarray
    outputs: np.ndarray
    model_sha256: str  # of the bundle's ONNX, whose answers the outputs are
    folder: Path
    bundle: VerifiedBundle


@dataclass
class CheckResult:
    artifact: Path
    parity: Parity
    precision: str
    device: str
    adopted: bool = False
    bundle_sha256: str = ""
    added_wheels: tuple[str, ...] = ()  # wheels/ files the bundle does not list (dependencies added on the device)


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A little-endian float32 C-order .npy of exactly ``shape`` (0 in ``shape``: any size up to
    :data:`MAX_REFERENCE_IMAGES`), checked from its header and its file size before a byte of data is read; no pickles,
    never a non-regular file."""
    with open_regular(path, "reference file") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found, fortran, dtype = read_header(f)  # the header only: the data is read once the shape is known to be sane
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise ModelFileError(f"{path}: not a .npy array ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from exc
        fits = len(found) == len(shape) and all(0 < n <= MAX_REFERENCE_IMAGES if w == 0 else n == w for n, w in zip(found, shape))
        if dtype != np.dtype("<f4") or fortran or not fits:
            want = " x ".join("N" if w == 0 else str(w) for w in shape)
            raise ModelFileError(f"{path}: expected a float32 array of {want} (N <= {MAX_REFERENCE_IMAGES}), found {dtype} {found}")
        data_start, data_bytes = f.tell(), int(np.prod(found)) * 4
        size = f.seek(0, 2)
        if size != data_start + data_bytes:
            raise ModelFileError(f"{path}: {size:,} bytes, but its header claims {data_bytes:,} bytes of data (truncated or padded)")
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)


def load_reference(folder: str | Path) -> Reference:
    """A bundle's ``reference/`` folder, the bundle around it verified first (:func:`verify_bundle`); the arrays must
    have the bundled model's input size and class count."""
    given = Path(os.path.abspath(folder))  # "." inside reference/ names it too
    if given.name != "reference" or not os.path.lexists(given.parent / "bundle.json"):
        raise ModelFileError(f"{given}: not the reference/ folder of a bundle (no bundle.json beside it); "
                             "check replays only what a bundle vouches for")
    bundle = verify_bundle(given.parent)
    ref = bundle.folder / "reference"  # the files bundle.json vouches for, and no others
    meta_path = ref / "reference.json"
    meta = read_json(meta_path, MAX_REFERENCE_JSON_BYTES, "reference description")
    if not isinstance(meta, dict) or meta.get("model_sha256") != bundle.model_sha256:
        raise ModelFileError(f"{meta_path}: does not describe the bundle's model {bundle.model.name} (model_sha256 differs)")
    size, n_classes = bundle.facts.image_size, bundle.facts.num_classes
    inputs = _load_array(ref / "inputs.npy", (0, 3, size, size))
    outputs = _load_array(ref / "outputs.npy", (0, n_classes))
    if inputs.shape[0] != outputs.shape[0]:
        raise ModelFileError(f"{ref}: {inputs.shape[0]} inputs but {outputs.shape[0]} outputs")
    if not (np.isfinite(inputs).all() and np.isfinite(outputs).all()):
        raise ModelFileError(f"{ref}: the reference arrays hold NaN or infinite values")
    return Reference(inputs, outputs, bundle.model_sha256, ref, bundle)


def check_artifact(artifact: str | Path, reference: str | Path, *, target: str | None = None) -> CheckResult:
    """Replay the reference through ``artifact`` and judge it at the tolerance of the artifact's own precision (its
    hashed manifest's, or a plain ONNX file's graph), never at one the reference claims. A plain ONNX file must be the
    bundle's model, byte for byte; a built artifact must have been built from it (its manifest's source sha256) and
    carry its class names."""
    ref = load_reference(reference)
    art = resolve_artifact(artifact)
    if art.suffix in (".engine", ".plan") and not manifest_path(art).exists():
        return _adopt(art, ref, target)
    if is_plain_onnx(art):
        digest = sha256_file(art, "ONNX model")
        if digest != ref.model_sha256:
            raise VerificationError(f"{art.name} is not the bundle's model {ref.bundle.model.name} (sha256 {digest[:12]} vs "
                                    f"{ref.model_sha256[:12]}): edited or another model")
        precision = ref.bundle.precision  # the file is the bundle's model: its graph says its precision
        with open_runner(art) as runner:
            parity = compare(ref.outputs, runner.run(ref.inputs))
        judge(parity, Precision(precision), art.name, "the reference outputs")
        return CheckResult(art, parity, precision, "cpu", bundle_sha256=ref.bundle.bundle_sha256, added_wheels=ref.bundle.added_wheels)
    manifest = read_manifest(art)
    if manifest.source_sha256 != ref.model_sha256:
        raise VerificationError(f"{art.name} was built from another model than the reference's ({Path(manifest.source_onnx).name}, sha256 "
                                f"{manifest.source_sha256[:12]} vs {ref.model_sha256[:12]}); rebuild it from the bundle's ONNX")
    if manifest.image_size != ref.inputs.shape[2]:
        raise VerificationError(f"{art.name} takes {manifest.image_size} px images, the reference has {ref.inputs.shape[2]} px")
    if manifest.class_names is not None and manifest.class_names != ref.bundle.labels:
        raise VerificationError(f"{art.name}: its manifest's class names differ from the bundle's labels.txt; rebuild it from the bundle")
    with open_runner(art) as runner:
        parity = compare(ref.outputs, runner.run(ref.inputs))
    judge(parity, Precision(manifest.precision), art.name, "the reference outputs", device=manifest.device,
          tf32=bool(manifest.options.get("tf32")))
    return CheckResult(art, parity, manifest.precision, manifest.device, bundle_sha256=ref.bundle.bundle_sha256, added_wheels=ref.bundle.added_wheels)


def _adopt(engine: Path, ref: Reference, target: str | None) -> CheckResult:
    """A TensorRT engine without a manifest (``trtexec`` built it): run it, and write its manifest if it passes."""
    from ..engines.targets import get_target
    from ..engines.tensorrt import TensorRTRunner, cuda_device, tensorrt_version

    if target is None:
        target = str(ref.bundle.folder / "target.toml")  # verified against bundle.json
    tgt = get_target(target)
    size, n_classes = ref.inputs.shape[2], ref.outputs.shape[1]
    precision = Precision(ref.bundle.precision)  # trtexec built it from the bundle's model: its graph's precision
    manifest = Manifest(backend="tensorrt", target=tgt.name, precision=precision.value, artifact=engine.name,
                        artifact_sha256=sha256_file(engine, "engine"), source_onnx=link_path(ref.bundle.model, engine.parent),
                        source_sha256=ref.model_sha256, image_size=size, num_classes=n_classes, input_shapes={},
                        libraries={"tensorrt": tensorrt_version()}, options={"adopted": "trtexec"}, gpu=cuda_device(),
                        class_names=ref.bundle.labels, device="cuda")
    runner = TensorRTRunner(engine, manifest)
    with runner:
        shape = runner.engine.get_tensor_profile_shape(runner.input_name, 0) if runner.engine.num_optimization_profiles else None
        lo, hi = (shape[0][0], shape[2][0]) if shape else (len(ref.inputs), len(ref.inputs))
        runner.batch_range = (lo, hi)
        parity = compare(ref.outputs, runner.run(ref.inputs))
    judge(parity, precision, engine.name, "the reference outputs", device="cuda")
    manifest.input_shapes = {"min": [lo, 3, size, size], "opt": [hi, 3, size, size], "max": [hi, 3, size, size]}
    write_manifest(engine, manifest)
    return CheckResult(engine, parity, precision.value, "cuda", adopted=True, bundle_sha256=ref.bundle.bundle_sha256,
                       added_wheels=ref.bundle.added_wheels)
