"""Device presets: one TOML file per target, shipped inside the package (``engines/targets/*.toml``).

Users add their own with ``--targets-dir DIR`` or the ``EDGE_INCEPTION_TARGETS`` folder; theirs win on a name clash.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..vocab import Backend, Precision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKENDS = tuple(b.value for b in Backend)
PRECISIONS = tuple(p.value for p in Precision)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    device: str  # "cpu" | "cuda"
    backend: str
    backends: tuple[str, ...]
    default_precision: str
    precisions: tuple[str, ...]
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 1
    threads: int = 0
    workspace_mb: int = 1024
    builder_optimization_level: int = 3
    dla_core: int | None = None
    jetpack: str | None = None
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, backend: str, precision: str) -> None:
        if backend not in self.backends:
            raise TargetError(f"target '{self.name}' cannot use backend '{backend}' (it supports {', '.join(self.backends)})")
        self.check_precision(precision)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise TargetError(f"target '{self.name}' cannot run {precision} (it supports {', '.join(self.precisions)})")


def user_target_dirs(extra: Path | None = None) -> list[Path]:
    """The user's folders, in priority order: ``--targets-dir``, then ``$EDGE_INCEPTION_TARGETS``."""
    named = [(extra, "--targets-dir")] if extra else []
    if os.environ.get("EDGE_INCEPTION_TARGETS"):
        named.append((Path(os.environ["EDGE_INCEPTION_TARGETS"]), "EDGE_INCEPTION_TARGETS"))
    for folder, source in named:
        if not folder.is_dir():
            raise TargetError(f"{source} {folder}: no such folder")
    return [folder for folder, _ in named]


def packaged_target_files() -> Iterator[Traversable]:
    """The presets that ship inside the package (read through importlib.resources: wheel, zip or source tree alike)."""
    folder = resources.files("edge_inception.engines").joinpath("targets")
    return iter(sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name))


MAX_TARGET_BYTES = 64 << 10
MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: more than any device has
MAX_DLA_CORE = 15
_VERSION = r"\d{1,3}(\.\d{1,4}){1,3}"  # "10.3", "8.6.1", "6.2"


def _field_checks() -> dict[str, Callable[[str, object], object]]:
    """Each preset field's type and range: name -> check(field, value) returning the value or raising."""
    from ..limits import check_range, check_threads
    from ..names import check_name, check_text

    def choice(options: tuple[str, ...]) -> Callable[[str, object], object]:
        def check(name: str, v: object) -> object:
            if v not in options:
                raise TargetError(f"field '{name}': unknown {name} {str(v)[:40]!r} (choose from {', '.join(options)})")
            return v
        return check

    def choices(options: tuple[str, ...]) -> Callable[[str, object], object]:
        def check(name: str, v: object) -> object:
            if not isinstance(v, list) or not v or any(x not in options for x in v):
                raise TargetError(f"field '{name}' must be a non-empty list among {', '.join(options)}, got {str(v)[:60]}")
            return tuple(v)
        return check

    def version(name: str, v: object) -> object:
        if not isinstance(v, str) or not re.fullmatch(_VERSION, v):
            raise TargetError(f"field '{name}' must be a version string such as \"10.3\", got {v!r:.40}")
        return v

    def integer(lo: int, hi: int) -> Callable[[str, object], object]:
        return lambda name, v: check_range(f"field '{name}'", v, lo, hi)

    return {
        "name": lambda name, v: check_name(v, f"field '{name}'"),
        "description": lambda name, v: check_text(v, f"field '{name}'", 200),
        "device": choice(("cpu", "cuda")),
        "backend": choice(BACKENDS),
        "backends": choices(BACKENDS),
        "default_precision": choice(PRECISIONS),
        "precisions": choices(PRECISIONS),
        "threads": lambda name, v: check_threads(v, f"field '{name}'"),
        "workspace_mb": integer(1, MAX_WORKSPACE_MB),
        "builder_optimization_level": integer(0, 5),  # TensorRT's range
        "dla_core": integer(0, MAX_DLA_CORE),
        "jetpack": version,
        "tensorrt_version": version,
        "compute_capability": version,
    }


REQUIRED_FIELDS = ("name", "description", "device", "default_precision", "precisions")


def parse_target(path: Path | Traversable) -> Target:
    """A preset read from ``path`` and validated like a manifest: every field's type and range, the first problem a
    :class:`TargetError` naming the file and the field. The file must be a regular file of at most 64 KB."""
    from ..errors import EdgeInceptionError
    from ..fileio import read_text
    from ..limits import MAX_BATCH, LimitError, check_range

    try:
        text = read_text(path, MAX_TARGET_BYTES, "target file", error=TargetError) if isinstance(path, Path) else path.read_text("utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, RecursionError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{path}: not a valid target file ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from exc
    missing = [k for k in REQUIRED_FIELDS if k not in data] or (["backends"] if "backend" not in data and "backends" not in data else [])
    if missing:
        raise TargetError(f"{path}: field '{missing[0]}' is missing")
    # a preset names its backends in preference order (`backends = ["ort", "openvino"]`), or one (`backend = "ort"`, the older
    # form); `backend`, the preferred one, is the first of the list unless the preset says otherwise
    if "backends" not in data:
        data["backends"] = [data["backend"]]
    if "backend" not in data:
        if not isinstance(data["backends"], list) or not data["backends"]:
            raise TargetError(f"{path}: field 'backends' must be a non-empty list among {', '.join(BACKENDS)}")
        data["backend"] = data["backends"][0]
    checked: dict[str, Any] = {}
    try:
        for name, check in _field_checks().items():
            if name in data:
                checked[name] = check(name, data[name])
        batch = data.get("batch", {"min": 1, "opt": 1, "max": 1})
        if not isinstance(batch, dict) or set(batch) != {"min", "opt", "max"}:
            raise TargetError("field 'batch' must be a table { min = ..., opt = ..., max = ... }")
        sizes = {k: check_range(f"field 'batch.{k}'", batch[k], 1, MAX_BATCH) for k in ("min", "opt", "max")}
    except (EdgeInceptionError, LimitError) as exc:
        raise TargetError(f"{path}: {exc}") from None
    target = Target(**checked, batch_min=sizes["min"], batch_opt=sizes["opt"], batch_max=sizes["max"], source=str(path),
                    extra={k: v for k, v in data.items() if k not in Target.__dataclass_fields__ and k != "batch"})
    if target.backend not in target.backends:
        raise TargetError(f"{path}: field 'backends' must include the backend '{target.backend}'")
    if target.default_precision not in target.precisions:
        raise TargetError(f"{path}: field 'precisions' must include default_precision '{target.default_precision}'")
    if not target.batch_min <= target.batch_opt <= target.batch_max:
        raise TargetError(f"{path}: field 'batch' must satisfy min <= opt <= max")
    return target


def target_text(target: Target) -> str:
    """The TOML a preset was read from (what a bundle carries), read again within the same bounds."""
    from ..fileio import read_text

    source = Path(target.source)
    if source.is_file():
        return read_text(source, MAX_TARGET_BYTES, "target file", error=TargetError)
    packaged = next((f for f in packaged_target_files() if str(f) == target.source), None)
    if packaged is None:
        raise TargetError(f"target '{target.name}': its file {target.source} is gone")
    return packaged.read_text(encoding="utf-8")


def list_targets(extra_dir: Path | None = None) -> dict[str, Target]:
    found: dict[str, Target] = {}
    files: list[Path | Traversable] = [f for d in user_target_dirs(extra_dir) for f in sorted(d.glob("*.toml"))]
    for f in [*files, *packaged_target_files()]:
        t = parse_target(f)
        found.setdefault(t.name, t)  # earlier folders (the user's) win
    return found


def get_target(name_or_path: str, extra_dir: Path | None = None) -> Target:
    if name_or_path.endswith(".toml"):
        return parse_target(Path(name_or_path))
    targets = list_targets(extra_dir)
    if name_or_path not in targets:
        raise TargetError(f"unknown target '{name_or_path}' (known: {', '.join(sorted(targets)) or 'none found'})")
    return targets[name_or_path]
