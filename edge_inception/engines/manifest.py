"""An artifact's manifest: what was built, from what, with which libraries, and the hashes that tie them together.

``<artifact>.manifest.json`` sits beside the artifact. It is untrusted input when read back: :func:`read_manifest`
validates every field's type and range, refuses a file name with path parts, checks ``manifest_sha256`` (the sha256
of the manifest's own canonical JSON, every field but itself: class names, input shapes, device, precision,
options...), and checks the sha256 of the artifact and of every companion file (an OpenVINO ``.bin``, say) before
anything is loaded. Everything in it that can change an answer is thus covered by a hash that is checked before use. This module knows no
backend: the registry checks that a backend's name fits its file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ManifestError
from ..fileio import read_json, sha256_file, write_json_atomic
from ..limits import MAX_BATCH, LimitError, check_image_size, check_num_classes, check_threads
from ..names import UnsafeNameError, check_labels, check_name
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
    manifest_sha256: str = ""  # sha256 of the canonical JSON of every other field (see canonical_sha256); set on writing

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


def canonical_sha256(data: dict[str, Any]) -> str:
    """sha256 of ``data`` without its ``manifest_sha256``, as canonical JSON (sorted keys, no spaces, ASCII)."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")).hexdigest()


def write_manifest(artifact: Path, manifest: Manifest) -> Path:
    data = asdict(manifest)
    manifest.manifest_sha256 = data["manifest_sha256"] = canonical_sha256(data)
    return write_json_atomic(manifest_path(artifact), data)


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
    if not isinstance(data.get("source_onnx", ""), str):
        raise bad("source_onnx", "must be a string")
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
    try:
        check_name(data["target"], "field 'target'")
        if data.get("class_names") is not None:
            check_labels(data["class_names"], "field 'class_names'", data["num_classes"])
    except UnsafeNameError as exc:
        raise ManifestError(f"{where}: {exc}; rebuild the artifact") from None
    shapes = data.get("input_shapes", {})
    size = data["image_size"]
    if not isinstance(shapes, dict) or not set(shapes) <= {"min", "opt", "max"} or not all(
        isinstance(v, list) and len(v) == 4 and all(isinstance(d, int) and not isinstance(d, bool) for d in v)
        and 1 <= v[0] <= MAX_BATCH and v[1:] == [3, size, size] for v in shapes.values()
    ):
        raise bad("input_shapes", f"must map min/opt/max to [batch 1-{MAX_BATCH}, 3, {size}, {size}]")
    if "min" in shapes and "max" in shapes and shapes["min"][0] > shapes["max"][0]:
        raise bad("input_shapes", "has a min batch above its max")
    for name in ("libraries", "gpu"):
        value = data.get(name, {}) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise bad(name, "must map names to strings")
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(_plain_name(k) and _sha(v) for k, v in files.items()):
        raise bad("files", "must map plain file names to sha256 digests")
    for name in ("edge_inception_version", "created"):
        if not isinstance(data.get(name, ""), str):
            raise bad(name, "must be a string")
    if not _sha(data.get("manifest_sha256")):
        raise bad("manifest_sha256", "is missing or not a sha256 hex digest (a manifest from before it covered its own fields)")
    if canonical_sha256(data) != data["manifest_sha256"]:
        raise ManifestError(f"{where}: its fields do not match its manifest_sha256 (edited: class names, shapes, device or "
                            "precision changed after the build); rebuild the artifact")
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
    data = read_json(mpath, MAX_MANIFEST_BYTES, "manifest", error=ManifestError)
    manifest = validate(data, str(mpath))
    if manifest.artifact != art.name:
        raise ManifestError(f"{mpath}: describes '{manifest.artifact}', not {art.name}; rebuild the artifact")
    if sha256_file(art, "artifact") != manifest.artifact_sha256:
        raise ManifestError(f"{art}: does not match its manifest (sha256 differs: edited or replaced); rebuild it")
    for name, digest in manifest.files.items():
        companion = art.with_name(name)
        if not companion.is_file():
            raise ManifestError(f"{art}: its {name} is missing; rebuild it")
        if sha256_file(companion, "companion file") != digest:
            raise ManifestError(f"{art}: {name} does not match its manifest (sha256 differs: edited or replaced); rebuild it")
    return manifest
