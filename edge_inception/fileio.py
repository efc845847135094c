"""Atomic artifact writes: write to a temporary file in the destination folder, then rename.

A failed or interrupted run leaves no half-written file, and an existing file is replaced only once the new
one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModelFileError, OutputPathError


def ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"output folder {folder} is not writable")


def ensure_parent(path: Path) -> None:
    ensure_folder(path.parent)
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a folder, expected a file name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure delete it."""
    dest = Path(path)
    ensure_parent(dest)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place when complete.

    With ``replace`` an existing folder is swapped out only after the new one is complete; without it an
    existing non-empty folder is refused.
    """
    dest = Path(path)
    if dest.exists() and any(dest.iterdir()) and not replace:
        raise OutputPathError(f"{dest} already exists and is not empty (use --force to replace it)")
    ensure_folder(dest.parent)  # not dest itself: an interrupted first run leaves no folder behind
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staging_dir(folder: str | os.PathLike[str], label: str) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (the same filesystem, so moving a file out of it is an atomic rename),
    removed with whatever is left in it when the block ends, successfully or not."""
    dest = Path(folder)
    ensure_folder(dest)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{label}.", suffix=".tmp", dir=dest))
    except OSError as exc:
        raise OutputPathError(f"cannot write to {dest}: {exc.strerror or exc}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_files(files: list[Path], folder: Path) -> list[Path]:
    """Move ``files`` (in a :func:`staging_dir` of ``folder``) into ``folder``, in the order given: each is an atomic
    rename over any file of that name. Put the file that vouches for the others (a manifest) last."""
    placed = []
    for f in files:
        dest = folder / f.name
        os.replace(f, dest)
        placed.append(dest)
    return placed


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise ModelFileError(f"file not found: {path}") from exc
    return h.hexdigest()


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{what} not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"{what} is not a file: {p}")
    return p
