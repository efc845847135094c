"""What the suite builds at length (the briefly trained net and its ONNX export), kept between runs where nothing that
determines it has changed (issue 33).

An entry is a folder under ``$EDGE_INCEPTION_CACHE/test-builds/`` (default ``~/.cache/edge-inception``) named by a
sha256 of everything that determines what is built: the build's own settings, the source of every module of
edge-inception it can import (the import closure, found by test_architecture's walker, imports inside functions
included), the content of its input files, the versions of the libraries that compute it, and the CPU's instruction
set as PyTorch sees it. Any edit to training, the model, the data or the export therefore builds afresh, and the tests
that use the build check that build. The folder is written atomically by the product's own ``fileio.atomic_dir``, with
an index of every file's sha256; it is read only when the index names this key and every file still has its sha256
(a missing, truncated or altered entry is built again). A lock file makes concurrent sessions (pytest-xdist workers,
two runs) build it once; the others wait and read it.

``EDGE_INCEPTION_TEST_CACHE=0`` turns the cache off (every session builds afresh).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edge_inception.errors import EdgeInceptionError
from edge_inception.fileio import atomic_dir, index_files, read_output_index

PACKAGE = Path(__file__).resolve().parents[1] / "edge_inception"
STALE_AFTER_S = 7 * 24 * 3600  # entries of the same build not used for a week are removed when another is written


def enabled() -> bool:
    return os.environ.get("EDGE_INCEPTION_TEST_CACHE", "1") != "0"


def cache_root() -> Path:
    return Path(os.environ.get("EDGE_INCEPTION_CACHE", Path.home() / ".cache" / "edge-inception")) / "test-builds"


def import_closure(*roots: str) -> list[str]:
    """Every edge_inception module ``roots`` can import (at module level or inside a function), with their packages."""
    from .test_architecture import imports, modules

    found = modules()
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in found:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imports(name, found[name], top_level_only=False)
    return sorted(seen)


def _module_file(name: str) -> Path:
    base = PACKAGE.parent / Path(*name.split("."))  # a package's __init__.py, else the module (engines/targets.py beside
    return base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")  # its folder of presets)


def tree_digest(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names and bytes of ``paths`` (files, or folders walked in sorted order)."""
    h = hashlib.sha256()
    files: list[Path] = []
    for p in paths:
        files += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def source_digest(*roots: str) -> dict[str, str]:
    """The import closure of ``roots`` and the sha256 of its source files."""
    names = import_closure(*roots)
    return {"modules": ",".join(names), "sha256": tree_digest([_module_file(n) for n in names], PACKAGE.parent)}


def versions(*distributions: str) -> dict[str, str]:
    import torch

    return {"python": sys.version.split()[0], "machine": platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{d: importlib.metadata.version(d) for d in distributions}}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, also when the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _valid(folder: Path, key: str) -> dict[str, Any] | None:
    """The entry's index when it is whole: it names ``key`` and every file has the sha256 it lists (no file more or less)."""
    try:
        index = read_output_index(folder)
        if index is None or index.get("key") != key or index.get("files") != index_files(folder):
            return None
    except (EdgeInceptionError, OSError, ValueError):
        return None
    return index


def _prune(name: str, keep: Path) -> None:
    for old in cache_root().glob(f"{name}-*"):
        if old.is_dir() and old != keep and time.time() - old.stat().st_mtime > STALE_AFTER_S:
            shutil.rmtree(old, ignore_errors=True)
            old.with_suffix(".lock").unlink(missing_ok=True)


def cached_build(name: str, fields: dict[str, Any], build: Callable[[Path], dict[str, Any]], dest: Path, *,
                 code: tuple[Callable[..., Any], ...] = ()) -> dict[str, Any]:
    """Copy the entry for ``fields`` into ``dest`` (a new folder) and return what ``build`` returned when it was made.

    ``build(folder)`` writes the files into ``folder`` and returns a JSON-able dict; ``code`` are the functions it runs
    from the tests (their source is part of the key, as is this module's).
    """
    fields = {**fields, "build": [inspect.getsource(c) for c in code], "cache_code": Path(__file__).read_text(encoding="utf-8")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    entry = cache_root() / f"{name}-{key[:24]}"
    if not enabled():
        dest.mkdir(parents=True, exist_ok=True)
        return build(dest)
    with _locked(entry.with_suffix(".lock")):
        index = _valid(entry, key)
        if index is None:
            if entry.exists():
                shutil.rmtree(entry)  # missing, altered or extra files: built again from nothing
            info: dict[str, Any] = {"key": key, "fields": {k: v for k, v in fields.items() if k not in ("build", "cache_code")}}
            with atomic_dir(entry, replace=True, index=info) as tmp:
                info["result"] = build(tmp)
            index = _valid(entry, key)
            assert index is not None, f"{entry}: written but not readable as a whole entry"
            _prune(name, entry)
        os.utime(entry)  # used: not pruned as stale
        shutil.copytree(entry, dest, ignore=shutil.ignore_patterns("edge-inception.json"), dirs_exist_ok=True)
    return index["result"]

