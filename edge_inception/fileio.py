"""Atomic artifact writes: write to a temporary file or folder beside the destination, then rename.

A failed or interrupted run leaves no half-written file, and an existing file is replaced only once the new one is
complete. Temporary names carry a tag and the writer's process id (``.<name>.edge-tmp-<pid>-<random>``): a run
killed outright (SIGKILL, power loss) cannot remove its own, so the next run that writes to the same folder removes
those whose process is gone. Finished files get the permissions the umask gives, not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModelFileError, OutputPathError

log = logging.getLogger(__name__)

TMP_TAG = "edge-tmp"
_TMP_RE = re.compile(rf"^\..*\.{TMP_TAG}-(\d+)-")


def _tmp_prefix(label: str) -> str:
    return f".{label}.{TMP_TAG}-{os.getpid()}-"


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, folder: bool = False) -> None:
    """0666 (files) or 0777 (folders) less the umask, as if the file had been created in place."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: Path) -> int:
    """Remove temporary files and folders of ours in ``folder`` whose writing process no longer runs; returns how many."""
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", removed, folder)
    return removed


def ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputPathError(f"cannot create output folder {folder}: a file of that name is in the way") from exc
    except OSError as exc:
        raise OutputPathError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    if not folder.is_dir():
        raise OutputPathError(f"cannot create output folder {folder}: a file of that name is in the way")
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
    sweep_stale(dest.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(dest.name), suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish_mode(tmp)
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


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output file whose folder cannot be created or written, or that is a folder."""
    dest = Path(path)
    ensure_parent(dest)
    return dest


def check_outputs(*paths: str | os.PathLike[str] | None) -> None:
    """:func:`check_writable` for each output a command was given (None: not asked for)."""
    for path in paths:
        if path is not None:
            check_writable(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place when complete.

    With ``replace`` an existing folder is swapped out only after the new one is complete; without it an
    existing non-empty folder is refused.
    """
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise OutputPathError(f"{dest} is a file, expected a folder")
    if dest.exists() and any(dest.iterdir()) and not replace:
        raise OutputPathError(f"{dest} already exists and is not empty (use --force to replace it)")
    ensure_folder(dest.parent)  # not dest itself: an interrupted first run leaves no folder behind
    sweep_stale(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name), suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        _publish_mode(tmp, folder=True)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name + ".old"), dir=dest.parent))
            os.replace(dest, old / dest.name)
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
    sweep_stale(dest)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(label), suffix=".tmp", dir=dest))
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
        _publish_mode(f)
        os.replace(f, dest)
        placed.append(dest)
    return placed


def write_failure(folder: Path, exc: BaseException) -> str:
    """Why a library (ONNX Runtime, PyTorch) that reports only its own error could not write into ``folder``."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < (64 << 20):
            return f"No space left on device ({free >> 20} MB free in {folder})"
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise ModelFileError(f"file not found: {path}") from exc
    return h.hexdigest()


def link_path(target: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """How a file written into folder ``base`` (a manifest, a model's metadata) names ``target``: relative to ``base``, so
    a folder moved as a whole (the pipeline publishes its report folder from a staging folder) still finds it; absolute
    where no relative path exists."""
    try:
        return os.path.relpath(Path(target).resolve(), Path(base).resolve())
    except ValueError:  # another drive
        return str(Path(target).resolve())


def resolve_link(ref: str, base: str | os.PathLike[str]) -> Path:
    """A path recorded by :func:`link_path` in a file in folder ``base``. Absolute paths stay as they are; a relative one
    written by an older version (relative to the folder it ran in) is read that way only where that file exists and
    the one beside ``base`` does not."""
    p = Path(ref)
    if p.is_absolute():
        return p
    beside = Path(base) / p
    return beside if beside.exists() or not p.exists() else p


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{what} not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"{what} is not a file: {p}")
    return p
