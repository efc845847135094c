"""Backends by name, and opening any artifact through the backend its manifest names.

A backend is a module of this package that defines ``BACKEND``, an object with:

- ``name`` (a :class:`~edge_inception.vocab.Backend`) and ``suffix``, the file name ending of its artifacts;
- ``available() -> str | None``: ``None`` when it can build and run here, else one line saying why not and
  what to install (probed without side effects, cached where the probe is costly);
- ``build(job: BuildJob) -> BuildOutput``: write the artifact (and any companion files) into ``job.work_dir``;
- ``open(artifact, manifest, threads=None) -> Runner``; ``manifest=None`` (only for :data:`PLAIN_ONNX_BACKEND`) runs a
  plain ONNX file with the runtime's defaults;
- ``inference_precisions``: the reduced float precisions it can compute an FP32 model in (``("bf16",)``: OpenVINO);
- ``quantizers() -> {name: why missing or None}``: the peer INT8 quantizers it can build an artifact with from an FP32
  model and calibration photos (``{"nncf": None}``: OpenVINO with NNCF installed); ``quantize_peer(quantizer, source,
  artifact, batches) -> version`` writes such an artifact calibrated on ``batches`` (1 x 3 x S x S float32 each).

Adding a backend is one module plus one line in :data:`MODULES`; neither :func:`build` nor :func:`open_runner`
names a backend. Backend modules are imported only when used, so a missing runtime costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import BackendUnavailableError, EdgeInceptionError, ManifestError
from ..fileio import resolve_link
from ..vocab import Backend, Precision
from .manifest import MANIFEST_SUFFIX, Manifest, manifest_path, read_manifest
from .runner import Runner
from .targets import Target

MODULES: dict[Backend, str] = {
    Backend.ort: "edge_inception.engines.ort",
    Backend.openvino: "edge_inception.engines.openvino",
    Backend.tensorrt: "edge_inception.engines.tensorrt",
}

# A plain .onnx file without a manifest runs with this backend's defaults (what `predict model.onnx` means).
PLAIN_ONNX_BACKEND = Backend.ort


@dataclass(frozen=True)
class BuildJob:
    """Everything a backend needs to build one artifact; it writes only into ``work_dir``."""

    source: Path  # the ONNX model
    target: Target
    precision: Precision
    image_size: int
    fixed_batch: int | None  # the graph's batch if it is static
    threads: int
    work_dir: Path  # a temporary folder beside the destination: the artifact is moved out only once verified
    cache_dir: Path  # the destination folder: caches that outlive one build (TensorRT timing cache)
    providers: tuple[str, ...] = ()  # ONNX Runtime's GPU execution providers, in priority order (engines.choose)
    allow_tf32: bool = False  # FP32 may run as TF32 on the GPU (judged then like FP16)
    name: str = ""  # the artifact's file name before the backend's suffix (default: the source's stem)
    inference_precision: str = ""  # an FP32 model computed in this reduced float ("bf16"); one of the backend's inference_precisions
    quantizer: str = ""  # INT8 made from the FP32 source by this peer quantizer (one of the backend's quantizers())
    calib: Path | None = None  # the quantizer's calibration photos (None: the bundled photos), as `quantize --calib` takes them
    calib_size: int = 100  # calibration samples (crops) drawn from them, as `quantize --calib-size`
    holdout: Path | None = None  # photos kept apart (`--holdout`): never among the quantizer's calibration photos

    @property
    def stem(self) -> str:
        return self.name or self.source.stem


@dataclass
class BuildOutput:
    artifact: Path  # inside the job's work_dir
    libraries: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    companions: list[Path] = field(default_factory=list)  # other files the artifact needs, beside it
    gpu: dict[str, str] | None = None
    note: str = ""  # one line for the user: which runtime and why


class EngineBackend(Protocol):
    name: Backend
    suffix: str
    inference_precisions: tuple[str, ...]

    def available(self) -> str | None: ...

    def quantizers(self) -> dict[str, str | None]: ...

    def quantize_peer(self, quantizer: str, source: Path, artifact: Path, batches: list[Any]) -> str: ...

    def build(self, job: BuildJob) -> BuildOutput: ...

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None) -> Runner: ...


class NoPeerQuantizer:
    """For a backend that builds no INT8 artifact of its own from an FP32 model (ONNX Runtime, TensorRT): no peer
    quantizers, no reduced float precisions; :meth:`quantize_peer` raises BackendUnavailableError."""

    name: Backend
    inference_precisions: tuple[str, ...] = ()

    def quantizers(self) -> dict[str, str | None]:
        return {}

    def quantize_peer(self, quantizer: str, source: Path, artifact: Path, batches: list[Any]) -> str:
        raise BackendUnavailableError(f"{self.name.value} has no peer quantizer '{quantizer}'")


def get_backend(name: Backend | str) -> EngineBackend:
    try:
        key = Backend(name)
    except ValueError:
        raise EdgeInceptionError(f"unknown backend '{name}' (choose from {', '.join(b.value for b in Backend)})") from None
    backend: EngineBackend = importlib.import_module(MODULES[key]).BACKEND
    return backend


def require_backend(name: Backend | str) -> EngineBackend:
    """The backend, if it can run here; else :class:`BackendUnavailableError` with its reason."""
    backend = get_backend(name)
    why = backend.available()
    if why:
        raise BackendUnavailableError(why)
    return backend


def is_plain_onnx(path: Path) -> bool:
    """An ONNX model as ``export``/``quantize`` write it, not a built artifact (those always have a manifest)."""
    return path.suffix == ".onnx" and not manifest_path(path).exists() and not any(path.name.endswith(get_backend(b).suffix) for b in MODULES)


def resolve_artifact(path: str | Path) -> Path:
    """A file as it is; a build folder holding exactly one artifact (a file with a manifest) as that artifact. A folder
    with several says which, so the user can pick."""
    p = Path(path)
    if not p.is_dir():
        return p
    found = sorted(m.with_name(m.name[: -len(MANIFEST_SUFFIX)]) for m in p.glob(f"*{MANIFEST_SUFFIX}"))
    found = [f for f in found if f.is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ManifestError(f"{p}: no built artifact in this folder (run 'edge-inception build ... -o {p}')")
    raise ManifestError(f"{p} holds {len(found)} artifacts; name one: " + ", ".join(f.name for f in found))


def open_runner(artifact: str | Path, *, threads: int | None = None) -> Runner:
    """A runner for a built artifact (manifest checked), a build folder holding one, or a plain ONNX file (run with ONNX
    Runtime's defaults)."""
    art = resolve_artifact(artifact)
    if is_plain_onnx(art):
        if not art.is_file():
            raise ManifestError(f"model not found: {art}")
        return get_backend(PLAIN_ONNX_BACKEND).open(art, None, threads=threads)  # ONNX Runtime's run_session takes any batch
    manifest = read_manifest(art)
    backend = get_backend(manifest.backend)
    if not art.name.endswith(backend.suffix):
        raise ManifestError(f"{art}: its manifest says backend '{manifest.backend}', whose artifacts end in {backend.suffix}; rebuild it")
    runner = backend.open(art, manifest, threads=threads)
    runner.batch_range = manifest.batch_range
    return runner


@dataclass(frozen=True)
class ArtifactInfo:
    """What a caller needs to feed an artifact and read its answers."""

    image_size: int
    num_classes: int
    class_names: list[str]
    precision: str
    backend: str
    target: str  # "plain" for an ONNX file without a manifest
    source_onnx: str  # the ONNX the artifact was built from (itself, for a plain file)
    device: str = "cpu"  # where it computes: "cpu" or "cuda"
    fixed_batch: int | None = None  # the one batch size it takes, if it takes one only
    tf32: bool = False  # an FP32 artifact allowed to run its convolutions as TF32 on a GPU
    seeded: bool = False  # exported from seeded random weights (no --weights): its labels mean nothing
    variant: str = ""  # "bf16" (an FP32 model computed in bf16), "nncf" (INT8 made by NNCF): what its name adds


def artifact_info(artifact: str | Path) -> ArtifactInfo:
    """Image size, classes and precision of an artifact (from its checked manifest) or a plain ONNX model (its metadata)."""
    from ..onnx_file import onnx_facts

    art = resolve_artifact(artifact)
    if not is_plain_onnx(art):
        m = read_manifest(art)
        from ..model.labels import class_names

        source = resolve_link(m.source_onnx, art.parent)
        hint, quantizer = m.options.get("inference_precision"), m.options.get("quantizer")
        variant = "-".join(str(v) for v in (hint if hint not in (None, "", "f32") else None, quantizer) if v)
        return ArtifactInfo(m.image_size, m.num_classes, class_names(m.num_classes, m.class_names), m.precision, m.backend, m.target,
                            str(source), m.device, m.fixed_batch, bool(m.options.get("tf32", False)), seeded=_seeded(source), variant=variant)
    facts = onnx_facts(art)
    return ArtifactInfo(facts.image_size, facts.num_classes, facts.class_names, facts.precision, PLAIN_ONNX_BACKEND.value, "plain", str(art),
                        fixed_batch=facts.fixed_batch, seeded=facts.metadata.get("checkpoint", "").startswith("seed:"))


def _seeded(source: Path) -> bool:
    """Whether the ONNX an artifact was built from says it came from seeded weights (``checkpoint: seed:N`` in its
    metadata); False where the source is not at hand or unreadable: the note is a courtesy, not a check."""
    from ..errors import EdgeInceptionError
    from ..onnx_file import get_metadata, load_onnx

    try:
        return get_metadata(load_onnx(source, with_weights=False)).get("checkpoint", "").startswith("seed:")
    except (EdgeInceptionError, OSError):
        return False
