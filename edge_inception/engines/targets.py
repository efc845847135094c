"""Device presets: one TOML file per target, shipped inside the package (``engines/targets/*.toml``).

Users add their own with ``--targets-dir DIR`` or the ``EDGE_INCEPTION_TARGETS`` folder; theirs win on a name clash.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


def parse_target(path: Path | Traversable) -> Target:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{path}: not a valid target file ({exc})") from exc
    try:
        batch = data.pop("batch", {"min": 1, "opt": 1, "max": 1})
        known = {f for f in Target.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        # a preset names its backends in preference order (`backends = ["ort", "openvino"]`), or one (`backend = "ort"`,
        # the older form); `backend` is the preferred one, the first of the list unless it says otherwise
        backends = data["backends"] if "backends" in data else [data["backend"]]
        if not isinstance(backends, list) or not backends:
            raise TypeError("backends must be a non-empty list")
        target = Target(
            **{**fields, "backend": data.get("backend", backends[0]), "backends": tuple(backends), "precisions": tuple(data["precisions"])},
            batch_min=int(batch["min"]), batch_opt=int(batch["opt"]), batch_max=int(batch["max"]), source=str(path),
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TargetError(f"{path}: missing or invalid field ({exc})") from exc
    if target.backend not in BACKENDS or not set(target.backends) <= set(BACKENDS):
        raise TargetError(f"{path}: unknown backend (choose from {', '.join(BACKENDS)})")
    if target.backend not in target.backends:
        raise TargetError(f"{path}: backend '{target.backend}' is not among backends ({', '.join(target.backends)})")
    if not set(target.precisions) <= set(PRECISIONS) or target.default_precision not in target.precisions:
        raise TargetError(f"{path}: precisions must be among {', '.join(PRECISIONS)} and include default_precision")
    if not 1 <= target.batch_min <= target.batch_opt <= target.batch_max:
        raise TargetError(f"{path}: batch must satisfy 1 <= min <= opt <= max")
    return target


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
