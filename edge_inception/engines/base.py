"""The runner interface, artifact manifests, and dispatch to backends."""

from __future__ import annotations

import abc
import datetime
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import EdgeInceptionError, ManifestError
from ..fileio import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
BUILT_SUFFIXES = (".ort.onnx", ".engine", ".plan", ".xml")  # what `build` writes; these always need a manifest


class Runner(abc.ABC):
    """One loaded model: ``with Runner(...) as r: logits = r.infer(batch)``."""

    name = "runner"

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abc.abstractmethod
    def activate(self) -> None: ...

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x num_classes float32 logits."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class Manifest:
    backend: str
    target: str
    precision: str
    artifact: str  # file name, beside the manifest
    artifact_sha256: str
    source_onnx: str
    source_sha256: str
    image_size: int
    num_classes: int
    input_shapes: dict[str, list[int]]  # min / opt / max
    libraries: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, str] | None = None
    class_names: list[str] | None = None
    edge_inception_version: str = __version__
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    REQUIRED = ("backend", "target", "precision", "artifact", "artifact_sha256", "source_sha256", "image_size", "num_classes")


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def write_manifest(artifact: Path, manifest: Manifest) -> Path:
    return write_json_atomic(manifest_path(artifact), asdict(manifest))


def read_manifest(artifact: str | Path) -> Manifest:
    """The manifest beside ``artifact``, checked: present, complete, and matching the artifact's bytes."""
    art = Path(artifact)
    if not art.is_file():
        raise ManifestError(f"artifact not found: {art}")
    mpath = manifest_path(art)
    if not mpath.is_file():
        raise ManifestError(f"{art}: manifest {mpath.name} is missing; rebuild with 'edge-inception build'")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{mpath}: not valid JSON ({exc})") from exc
    missing = [k for k in Manifest.REQUIRED if k not in data] if isinstance(data, dict) else list(Manifest.REQUIRED)
    if missing:
        raise ManifestError(f"{mpath}: field '{missing[0]}' is missing; rebuild the artifact")
    known = set(Manifest.__dataclass_fields__)
    manifest = Manifest(**{k: v for k, v in data.items() if k in known})
    if sha256_file(art) != manifest.artifact_sha256:
        raise ManifestError(f"{art}: does not match its manifest (sha256 differs: edited or replaced); rebuild it")
    return manifest


def open_runner(artifact: str | Path, *, threads: int | None = None) -> Runner:
    """A runner for a built artifact (manifest checked) or for a plain ONNX file (ONNX Runtime defaults)."""
    art = Path(artifact)
    if art.suffix == ".onnx" and not art.name.endswith(BUILT_SUFFIXES) and not manifest_path(art).exists():
        from .ort import OrtRunner

        if not art.is_file():
            raise ManifestError(f"model not found: {art}")
        return OrtRunner(art, threads=threads or 0, optimized=False)
    manifest = read_manifest(art)
    if manifest.backend == "ort":
        from .ort import open_ort

        return open_ort(art, manifest, threads=threads)
    if manifest.backend == "openvino":
        from .openvino import OpenVinoRunner

        return OpenVinoRunner(art, threads=threads if threads is not None else manifest.options.get("threads", 0))
    if manifest.backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(art, manifest)
    raise ManifestError(f"{art}: unknown backend '{manifest.backend}' in its manifest")


def artifact_info(artifact: str | Path) -> dict[str, Any]:
    """Image size, classes and precision of an artifact or plain ONNX model."""
    art = Path(artifact)
    if manifest_path(art).exists():
        m = read_manifest(art)
        return {"image_size": m.image_size, "num_classes": m.num_classes, "class_names": m.class_names, "precision": m.precision,
                "backend": m.backend, "target": m.target}
    from ..convert.onnx_file import get_metadata, load_onnx, model_class_names, model_image_size

    model = load_onnx(art, with_weights=False)
    meta = get_metadata(model)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    n = int(meta.get("num_classes") or (dims[-1].dim_value if dims else 0))
    if not n:
        raise EdgeInceptionError(f"{art}: cannot tell the number of classes")
    return {"image_size": model_image_size(model), "num_classes": n, "class_names": model_class_names(meta, n),
            "precision": meta.get("precision", "fp32"), "backend": "ort", "target": "plain"}
