"""An artifact's manifest: what was built, from what, with which libraries, and the hashes that tie them together.

``<artifact>.manifest.json`` sits beside the artifact. It is untrusted input when read back: :func:`read_manifest`
validates every field's type and range, refuses a file name with path parts, and checks the sha256 of the
artifact and of every companion file (an OpenVINO ``.bin``, say) before anything is loaded. This module knows no
backend: the registry checks that a backend's name fits its file.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ManifestError
from ..fileio import sha256_file, write_json_atomic
from ..limits import LimitError, check_image_size, check_num_classes, check_threads
from ..vocab import Backend, Precision

MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST_BYTES = 4 << 20  # ImageNet-21k class names fit in well under 1 MB


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
    files: dict[str, str] = field(default_factory=dict)  # companion files beside the artifact (name -> sha256)
    device: str = "cpu"  # where it computes: "cpu" or "cuda"
    edge_inception_version: str = __version__
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    REQUIRED = ("backend", "target", "precision", "artifact", "artifact_sha256", "source_sha256", "image_size", "num_classes")

    @property
    def threads(self) -> int:
        return int(self.options.get("threads", 0))

    @property
    def batch_range(self) -> tuple[int, int] | None:
        """The batch sizes the artifact was built for (min, max), if its manifest says."""
        shapes = self.input_shapes
        return (int(shapes["min"][0]), int(shapes["max"][0])) if "min" in shapes and "max" in shapes else None

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size the artifact takes, if its range is a single size."""
        r = self.batch_range
        return r[0] if r and r[0] == r[1] else None

    @property
    def providers(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, dict(opts)) for name, opts in self.options.get("providers", [])]


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def write_manifest(artifact: Path, manifest: Manifest) -> Path:
    return write_json_atomic(manifest_path(artifact), asdict(manifest))


def _sha(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _plain_name(value: object) -> bool:
    return isinstance(value, str) and bool(value) and value not in (".", "..") and Path(value).name == value and "\\" not in value


def validate(data: object, where: str) -> Manifest:
    """Every field of a manifest's JSON checked for type and range; the first problem raises :class:`ManifestError`."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object; rebuild the artifact")
    missing = [k for k in Manifest.REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"{where}: field '{missing[0]}' is missing; rebuild the artifact")

    def bad(name: str, why: str) -> ManifestError:
        return ManifestError(f"{where}: field '{name}' {why}; rebuild the artifact")

    if data["backend"] not in {b.value for b in Backend}:
        raise bad("backend", f"is {data['backend']!r}, not one of {', '.join(b.value for b in Backend)}")
    if data["precision"] not in {p.value for p in Precision}:
        raise bad("precision", f"is {data['precision']!r}, not one of {', '.join(p.value for p in Precision)}")
    if data.get("device", "cpu") not in ("cpu", "cuda"):
        raise bad("device", f"is {data.get('device')!r}, not cpu or cuda")
    for name in ("target", "source_onnx"):
        if not isinstance(data.get(name, ""), str):
            raise bad(name, "must be a string")
    if not _plain_name(data["artifact"]):
        raise bad("artifact", f"must be a file name without folders, got {data['artifact']!r}")
    for name in ("artifact_sha256", "source_sha256"):
        if not _sha(data[name]):
            raise bad(name, "must be a sha256 hex digest")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise bad("options", "must be an object")
    try:
        check_image_size(data["image_size"], "field 'image_size'")
        check_num_classes(data["num_classes"], "field 'num_classes'")
        check_threads(options.get("threads", 0), "field 'options.threads'")
    except LimitError as exc:
        raise ManifestError(f"{where}: {exc}; rebuild the artifact") from None
    providers = options.get("providers", [])
    if not isinstance(providers, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict) for p in providers
    ):
        raise bad("options.providers", "must be a list of [name, {options}] pairs")
    names = data.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != data["num_classes"] or not all(isinstance(n, str) for n in names)):
        raise bad("class_names", f"must be a list of {data['num_classes']} strings")
    shapes = data.get("input_shapes", {})
    if not isinstance(shapes, dict) or not all(isinstance(v, list) and all(isinstance(d, int) and d > 0 for d in v) for v in shapes.values()):
        raise bad("input_shapes", "must map min/opt/max to lists of positive integers")
    for name in ("libraries", "gpu"):
        value = data.get(name, {}) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise bad(name, "must map names to strings")
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(_plain_name(k) and _sha(v) for k, v in files.items()):
        raise bad("files", "must map plain file names to sha256 digests")
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in data.items() if k in known})


def read_manifest(artifact: str | Path) -> Manifest:
    """The manifest beside ``artifact``, checked: present, well-formed, and matching the bytes of every file it names."""
    art = Path(artifact)
    if not art.is_file():
        raise ManifestError(f"artifact not found: {art}")
    mpath = manifest_path(art)
    if not mpath.is_file():
        raise ManifestError(f"{art}: manifest {mpath.name} is missing; rebuild with 'edge-inception build'")
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{mpath}: larger than {MAX_MANIFEST_BYTES >> 20} MB, not a manifest of ours")
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{mpath}: not valid JSON ({str(exc).splitlines()[0][:200]})") from exc
    manifest = validate(data, str(mpath))
    if manifest.artifact != art.name:
        raise ManifestError(f"{mpath}: describes '{manifest.artifact}', not {art.name}; rebuild the artifact")
    if sha256_file(art) != manifest.artifact_sha256:
        raise ManifestError(f"{art}: does not match its manifest (sha256 differs: edited or replaced); rebuild it")
    for name, digest in manifest.files.items():
        companion = art.with_name(name)
        if not companion.is_file():
            raise ManifestError(f"{art}: its {name} is missing; rebuild it")
        if sha256_file(companion) != digest:
            raise ManifestError(f"{art}: {name} does not match its manifest (sha256 differs: edited or replaced); rebuild it")
    return manifest
