"""Atomic artifact writes: write to a temporary file or folder beside the destination, then rename.

A failed or interrupted run leaves no half-written file, and an existing file is replaced only once the new one is
complete. Temporary names carry a tag and the writer's process id (``.<name>.edge-tmp-<pid>-<random>``): a run
killed outright (SIGKILL, power loss) cannot remove its own, so the next run that writes to the same folder removes
those whose process is gone. Finished files get the permissions the umask gives, not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EdgeInceptionError, ModelFileError, OutputPathError
from .names import printable

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


PRIVATE_PREFIX = "edge-inception-"


def private_tempdir(label: str) -> Path:
    """A folder only this user can enter (mode 0700, ``mkdtemp``) in the system's temporary folder, named
    ``edge-inception-<label>-<pid>-XXXX``; those of the same label left by a process that is gone (killed by SIGKILL,
    say) are removed first. For what a child program writes by itself (tritonserver's repository copy, LoadGen's logs)."""
    tmp_root = Path(tempfile.gettempdir())
    for old in tmp_root.glob(f"{PRIVATE_PREFIX}{label}-*-*"):
        pid = old.name[len(PRIVATE_PREFIX) + len(label) + 1:].split("-", 1)[0]
        if pid.isascii() and pid.isdigit() and not _pid_alive(int(pid)) and old.is_dir() and not old.is_symlink() \
                and old.stat().st_uid == os.getuid():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{label}-{os.getpid()}-"))


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


@contextlib.contextmanager
def builders_lock(folder: Path) -> Iterator[None]:
    """One builder at a time in ``folder`` (created if missing): an exclusive ``flock`` on the folder itself, held for
    the block, released when it ends or the process dies. For a shared folder that processes fill on first use (the
    cache folder): check for the complete entry, take this lock, check again, and only then build and move it into
    place, so that a complete entry another process is reading is never replaced by a copy built beside it. No lock
    file is left behind. Raises :class:`OutputPathError` when the folder cannot be created or opened."""
    import fcntl

    ensure_folder(folder)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputPathError(f"cannot open {folder}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "neither a file nor a folder"


def _lstat_output(path: Path) -> os.stat_result | None:
    """``lstat`` of an output path: None where nothing is there; :class:`OutputPathError` where it cannot be (a file
    where a folder on the way should be) or cannot be looked at."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:  # a folder on the way is a file
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputPathError(f"cannot write {path}: {blocker} is a file: a file of that name is in the way") from exc
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from exc


def output_target(path: Path, *, folder: bool = False) -> Path:
    """Where an output named ``path`` really goes, or :class:`OutputPathError` if writing there would replace something
    that is not ours to replace.

    A missing path is itself. An existing one must be a regular file (``folder``: a folder); anything else (a character
    device such as ``/dev/null``, a FIFO, a socket, a folder where a file is expected) is refused, never replaced by
    the rename that finishes an atomic write. A symbolic link is followed: the new file replaces the link's final target,
    atomically, and the link stays; a link to something that is missing or not a regular file (``/dev/stdout`` is a link
    to ``/proc/self/fd/1``) is refused."""
    st = _lstat_output(path)
    if st is None:
        return path
    target = path
    if stat.S_ISLNK(st.st_mode):
        via_proc = _link_through_proc(path)
        if via_proc is not None:  # /dev/stdout, /proc/self/fd/N: an open file of this process, whatever it is now
            raise OutputPathError(f"refusing to replace {path}: it is a link to {via_proc}, an open file of this process (stdout, stderr "
                                  "or another descriptor), not a file to write: name a file")
        try:
            target = Path(os.path.realpath(path, strict=True))
            st = os.stat(target)
        except (OSError, RuntimeError) as exc:
            raise OutputPathError(f"refusing to replace {path}: it is a symbolic link to {os.readlink(path)!r:.80}, which is missing, "
                                  "a loop or not a file") from exc
    wanted, kind = (stat.S_ISDIR, "a folder") if folder else (stat.S_ISREG, "a regular file")
    if not wanted(st.st_mode):
        via = f" (a link to {target})" if target != path else ""
        raise OutputPathError(f"refusing to replace {path}{via}: it is {_kind(st.st_mode)}, not {kind}")
    return target


MAX_LINK_HOPS = 40  # as the kernel's own limit on a path's symbolic links


def _link_through_proc(path: Path) -> str | None:
    """The first hop of ``path``'s chain of symbolic links that lies in ``/proc`` or ``/dev/fd`` (a descriptor's magic
    link: ``/dev/stdout`` -> ``/proc/self/fd/1`` -> whatever stdout is now, a regular file when redirected), else None."""
    current = os.path.abspath(path)
    for _ in range(MAX_LINK_HOPS):
        if current.startswith(("/proc/", "/dev/fd/")):
            return current
        try:
            nxt = os.readlink(current)
        except OSError:
            return None
        current = os.path.abspath(os.path.join(os.path.dirname(current), nxt))
    return None


def ensure_parent(path: Path) -> Path:
    """The output file ``path`` really names (see :func:`output_target`), its folder created and writable. ``-`` is
    refused: a command that writes to stdout says so in its option, and a file named ``-`` is a trap."""
    if os.fspath(path) == "-":
        raise OutputPathError("output '-': this output is written to a file, not to stdout; name a file (a path such as ./out.json)")
    ensure_folder(path.parent)
    if path.is_dir() and not path.is_symlink():
        raise OutputPathError(f"output path {path} is a folder, expected a file name")
    target = output_target(path)
    if target != path:
        ensure_folder(target.parent)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure delete it."""
    dest = ensure_parent(Path(path))
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
        output_target(dest)  # again, just before the rename: nothing else may have taken the name meanwhile
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """The user's cache folder: ``$EDGE_INCEPTION_CACHE``, else ``~/.cache/edge-inception`` (not created here)."""
    return Path(os.environ.get("EDGE_INCEPTION_CACHE") or Path.home() / ".cache" / "edge-inception")


@contextlib.contextmanager
def library_prints_to_log(library: str) -> Iterator[None]:
    """What a library prints on stdout within the block (ONNX Runtime's quantization tools' progress, NNCF's progress
    bars) goes to the debug log under ``library``'s name instead, each distinct line once: library code does not print,
    and a command's stdout holds only what the command says (``-q`` included)."""
    import io

    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        yield
    lines = [line for line in dict.fromkeys(chatter.getvalue().splitlines()) if line.strip()]
    if lines:
        logging.getLogger(library).debug("%s: %s", library, " / ".join(lines))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def finite_json(obj: Any) -> Any:
    """``obj`` with every float that is NaN or infinite replaced by None (JSON's null), in dicts, lists and tuples at
    any depth: Python's json writes them as ``NaN`` / ``Infinity``, which is not JSON (strict parsers, and this product's
    own readers, refuse it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """The one way the product writes JSON (files, JSON lines, stdout): ``obj`` as JSON text, NaN and infinities
    written as null (:func:`finite_json`), never ``NaN``."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=False, allow_nan=False)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json_text(obj, indent=2) + "\n")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output file whose folder cannot be created or written, or that is a folder."""
    return ensure_parent(Path(path))


MAX_INPUT_FILES = 1000  # files of an input folder (a build folder) compared with the outputs


def _identity(path: Path) -> set[object]:
    """What makes two names one file: the resolved path, and (device, inode) where it exists (a hard link)."""
    keys: set[object] = {os.path.realpath(path)}
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    return keys


@dataclass(frozen=True)
class FileKind:
    """What a command writes to an output it is given, and the name endings that say so (``what``: a few words)."""

    what: str
    suffixes: tuple[str, ...]


ONNX_FILE = FileKind("an ONNX model", (".onnx",))
CHECKPOINT_FILE = FileKind("a PyTorch checkpoint (torch.save)", (".pth", ".pt"))
MP4_FILE = FileKind("an MP4 video", (".mp4",))
PNG_FILE = FileKind("a PNG image", (".png",))


def require_suffix(path: str | os.PathLike[str] | None, kind: FileKind) -> None:
    """Refuse an output (None: not asked for) whose name does not end as ``kind``'s files do: a PNG written to
    ``plot.svg``, an MP4 to ``out.avi``, a checkpoint to ``ck.json`` (its own sidecar's name: the checkpoint was lost) or an
    ONNX model to ``m.txt`` (its report, ``m.report.json``, replaced another model's). Raises OutputPathError."""
    if path is None or (os.path.lexists(path) and not Path(path).is_file()):  # a folder, a FIFO, a device: check_outputs says so
        return
    if Path(path).suffix.lower() not in kind.suffixes:
        raise OutputPathError(f"{path}: {kind.what} is written there, so its name must end in {' or '.join(kind.suffixes)}")


def check_outputs(*paths: str | os.PathLike[str] | None, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """:func:`check_writable` for each output a command was given (None: not asked for), after refusing an output
    named twice, or one that is a command's input: a file in ``inputs``, an artifact's ``.manifest.json`` beside it, a
    file in an input folder (a link or hard link to one counts), so that no run overwrites what it reads."""
    given = [Path(p) for p in paths if p is not None]
    seen: dict[object, Path] = {}
    for p in given:
        for key in _identity(p):
            if key in seen:
                raise OutputPathError(f"{p} is named as two outputs ({seen[key]} and {p}): name a file for each")
            seen[key] = p
    protected: dict[object, Path] = {}
    for entry in inputs:
        src = Path(os.path.abspath(entry))  # '.' has no name to put a manifest's beside
        files = [src, src.with_name(src.name + ".manifest.json")]
        if src.is_dir():
            files += [p for _, p in zip(range(MAX_INPUT_FILES), src.rglob("*"))]
        for f in files:
            for key in _identity(f):
                protected.setdefault(key, f)
    for p in given:
        hit = next((protected[k] for k in _identity(p) if k in protected), None)
        if hit is not None:
            raise OutputPathError(f"refusing to write {p}: it is {hit}, an input of this command; name another file")
    for p in given:
        check_writable(p)


# --------------------------------------------------------------------------------------------------------------------
# Output folders, and the one rule for replacing them (``--force``)

OUTPUT_INDEX = "edge-inception.json"  # in every output folder the product writes: what it wrote there, with sha256
MAX_INDEX_BYTES = 16 << 20
MAX_TREE_ENTRIES = 20_000  # a folder of ours holds a few hundred files (the demo data set: 500 crops)
MAX_LISTED = 5  # foreign names shown in one error line


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(printable(n, 80) for n in names[:MAX_LISTED]) + more


def safe_relative(rel: object) -> str | None:
    """``rel`` as a path inside a folder ('a/b.txt', '/'-separated, no '..', '.', empty part or backslash), else None."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024 or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return rel


def read_output_index(folder: Path, error: type[EdgeInceptionError] = OutputPathError) -> dict[str, Any] | None:
    """The index (:data:`OUTPUT_INDEX`) of an output folder the product wrote: a regular file (not a link) of JSON whose
    ``files`` maps each file's path inside the folder to its sha256. None where there is none (or it is a link);
    ``error`` where one is there but is not an index of ours."""
    path = folder / OUTPUT_INDEX
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    data = read_json(path, MAX_INDEX_BYTES, "output index", error=error)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not isinstance(data.get("edge_inception_version"), str):
        raise error(f"{path}: not an index written by edge-inception (no 'files' map)")
    for rel, digest in files.items():
        if safe_relative(rel) is None or rel == OUTPUT_INDEX:
            raise error(f"{path}: file name {printable_name(rel)} is not a path inside the folder")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise error(f"{path}: the sha256 of {printable_name(rel)} is not 64 hex digits")
    return data


def printable_name(name: object) -> str:
    """A name from outside, quoted and escaped for one line (names.printable), at most 80 characters of it."""
    return f"'{printable(str(name), 80)}'"


def walk_folder(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``folder`` as ('a/b', its lstat), links and special files not followed; at most
    :data:`MAX_TREE_ENTRIES` entries (:class:`OutputPathError` beyond)."""
    count = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(folder / rel if rel else folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise OutputPathError(f"{folder}: more than {MAX_TREE_ENTRIES:,} entries; not a folder of ours")
            sub = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            yield sub, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)


def foreign_entries(folder: Path, index: dict[str, Any]) -> list[str]:
    """What in ``folder`` its index does not account for: files not listed, links, FIFOs, devices, sockets, folders
    that hold nothing listed. Sorted paths inside the folder."""
    files = set(index["files"])
    folders = {str(Path(rel).parent).replace(os.sep, "/") for rel in files} - {"."}
    folders |= {"/".join(f.split("/")[:i]) for f in list(folders) for i in range(1, f.count("/") + 1)}
    listed = index.get("folders")
    folders |= {f for f in listed if safe_relative(f)} if isinstance(listed, list) else set()
    foreign = []
    for rel, st in walk_folder(folder):
        if rel == OUTPUT_INDEX and stat.S_ISREG(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode) and rel in folders:
            continue
        if stat.S_ISREG(st.st_mode) and rel in files:
            continue
        foreign.append(rel + ("" if stat.S_ISREG(st.st_mode) else f" ({_kind(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 'a link'})"))
    return sorted(foreign)


CHECK_TRIES = 20  # another writer replacing the same folder meanwhile: the check is made again on what is there now


def check_replaceable(path: Path, *, replace: bool) -> bool:
    """See :func:`_check_replaceable`; made again when the folder was swapped for another during the check (two runs
    writing the same output), so that a refusal is about one folder as it stood, never about a half-seen swap."""
    for _ in range(CHECK_TRIES - 1):
        try:
            before = os.lstat(path)
        except OSError:
            before = None
        try:
            return _check_replaceable(path, replace=replace)
        except (EdgeInceptionError, OSError):
            try:
                after = os.lstat(path)
            except OSError:
                after = None
            if before is not None and after is not None and (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev):
                raise
    return _check_replaceable(path, replace=replace)


def _check_replaceable(path: Path, *, replace: bool) -> bool:
    """The one rule for an output folder (``--force`` included), for every command that writes one: True when ``path``
    exists and is to be replaced, False when it is missing or an empty folder; otherwise :class:`OutputPathError` in
    one line.

    A folder is replaced only with ``replace`` (``--force``) and only when the product wrote it: its
    :data:`OUTPUT_INDEX` lists every file in it and nothing else is there (a file the user added, a link, a FIFO is
    kept, and the command refuses, naming it). A symbolic link is never followed to a folder elsewhere: an output folder
    that is a link is refused, and what it leads to is left as it is."""
    st = _lstat_output(path)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(f"refusing to write {path}: it is a symbolic link (to {printable_name(os.readlink(path))}); an output folder is "
                              "never a link, so that nothing it leads to is replaced: name a folder")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"refusing to replace {path}: it is {_kind(st.st_mode)}, not a folder")
    try:
        empty = not any(os.scandir(path))
    except OSError as exc:
        raise OutputPathError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if empty:
        return False
    index = read_output_index(path)
    if index is None:
        raise OutputPathError(f"refusing to replace {path}: it holds files edge-inception did not write (no {OUTPUT_INDEX}); "
                              "--force replaces only an empty folder or one the product wrote: choose another folder")
    foreign = foreign_entries(path, index)
    if foreign:
        raise OutputPathError(f"refusing to replace {path}: it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} edge-inception "
                              f"did not write ({_shown(foreign)}); move {'it' if len(foreign) == 1 else 'them'} or choose another folder")
    if not replace:
        raise OutputPathError(f"{path} already exists and is not empty (use --force to replace it)")
    return True


def index_files(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` but its index, by '/'-separated path inside it."""
    return {rel: sha256_file(folder / rel) for rel, st in walk_folder(folder) if stat.S_ISREG(st.st_mode) and rel != OUTPUT_INDEX}


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool, index: dict[str, Any] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path`` and move it into place when complete, with its
    :data:`OUTPUT_INDEX` (``index``'s fields, filled in by the caller during the block, plus every file's sha256).

    What may be at ``path`` follows :func:`check_replaceable`, checked before the block (before any work) and again on
    the folder after it is moved aside, just before the new one takes its place (a file added meanwhile: the old folder
    is put back and the command refuses). The old folder is deleted only once the new one is in place.
    """
    from . import __version__

    dest = Path(path)
    check_replaceable(dest, replace=replace)
    ensure_folder(dest.parent)  # not dest itself: an interrupted first run leaves no folder behind
    sweep_stale(dest.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name), suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        fields = {"edge_inception_version": __version__, **(index or {})}
        fields["files"] = index_files(tmp)
        fields["folders"] = sorted(rel for rel, st in walk_folder(tmp) if stat.S_ISDIR(st.st_mode))
        (tmp / OUTPUT_INDEX).write_text(json_text(fields, indent=2) + "\n", encoding="utf-8")
        _publish_mode(tmp, folder=True)
        _swap_in(tmp, dest, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


SWAP_TRIES = 100


def _swap_in(tmp: Path, dest: Path, *, replace: bool = True) -> None:
    """Rename the complete folder ``tmp`` to ``dest``, moving a non-empty ``dest`` aside first and deleting it after
    (without ``replace``, a non-empty ``dest`` that another run made meanwhile is refused, as it would have been at the start).

    Another writer may be replacing ``dest`` at the same moment (two runs with the same output): the folder moved aside
    may already be gone, or a new one may have taken the name before our rename. Each is tried again; the last writer's
    folder stays, whole, and every folder moved aside is removed once :func:`check_replaceable` (checked again on it
    after the move, when nothing can be added to it) says the product wrote it; otherwise it is put back and the
    command refuses."""
    olds: list[Path] = []
    try:
        for _ in range(SWAP_TRIES):
            try:
                os.replace(tmp, dest)  # a missing or empty dest is replaced in one step
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not replace:
                    raise OutputPathError(f"{dest} already exists and is not empty (use --force to replace it)") from None
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name + ".old"), dir=dest.parent))
            olds.append(old)
            try:
                os.replace(dest, old / dest.name)
            except FileNotFoundError:  # another writer moved it aside first
                continue
            try:  # as it was when moved: nothing can be added to it now (check_replaceable's rule, once more)
                check_replaceable(old / dest.name, replace=True)
            except BaseException:
                os.replace(old / dest.name, dest)  # not ours to delete: put back as it was
                olds.remove(old)
                os.rmdir(old)
                raise
        raise OutputPathError(f"cannot replace {dest}: other writers replaced it {SWAP_TRIES} times meanwhile")
    finally:
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


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
    rename over any file of that name. Put the file that vouches for the others (a manifest) last.

    A file of the same name already in ``folder`` is replaced only if the product wrote it: the voucher there (the
    last file's name; a manifest) names it in its ``artifact`` or ``files``; a file nobody vouches for is the user's,
    and the command refuses in one line (the rule of :func:`check_replaceable`, for files)."""
    vouched = _vouched_names(folder / files[-1].name) if files else set()
    for f in files:  # every destination checked before the first rename: an artifact is installed whole or not at all
        dest = folder / f.name
        if output_target(dest) != dest:
            raise OutputPathError(f"refusing to replace {dest}: it is a symbolic link; an artifact's files are real files "
                                  "beside its manifest")
        if dest.exists() and f.name not in vouched:
            raise OutputPathError(f"refusing to replace {dest}: no manifest of edge-inception beside it names it (the user's file?); "
                                  "move it or choose another output folder")
    placed = []
    for f in files:
        dest = folder / f.name
        _publish_mode(f)
        os.replace(f, dest)
        placed.append(dest)
    return placed


def _vouched_names(voucher: Path) -> set[str]:
    """The file names a manifest of ours names (its ``artifact`` and ``files``), with its own; empty for anything else."""
    try:
        if not stat.S_ISREG(os.lstat(voucher).st_mode):
            return set()
        data = read_json(voucher, MAX_INDEX_BYTES, "manifest", error=OutputPathError)
    except (OSError, OutputPathError):
        return set()
    if not isinstance(data, dict) or not isinstance(data.get("artifact"), str) or not isinstance(data.get("files"), dict):
        return set()
    names = {data["artifact"], *(k for k in data["files"] if isinstance(k, str))}
    return {n for n in names if Path(n).name == n} | {voucher.name}


def write_failure(folder: Path, exc: BaseException) -> str:
    """Why a library (ONNX Runtime, PyTorch) that reports only its own error could not write into ``folder``."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < (64 << 20):
            return f"No space left on device ({free >> 20} MB free in {folder})"
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def open_regular(path: str | os.PathLike[str], what: str = "file", *, max_bytes: int | None = None,
                 error: type[EdgeInceptionError] = ModelFileError) -> Iterator[Any]:
    """``path`` opened for binary reading, only if it is a regular file (of at most ``max_bytes``), else ``error``.

    The file is opened without blocking and checked on the open descriptor (``fstat``), so a FIFO, a device or a socket
    is refused rather than read (reading a FIFO nobody writes waits forever), and nothing can be swapped in between
    the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise error(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path}: is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} {path}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file may have")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path: str | os.PathLike[str], max_bytes: int, what: str = "file", *,
                 error: type[EdgeInceptionError] = ModelFileError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`); anything else is ``error``."""
    with open_regular(path, what, max_bytes=max_bytes, error=error) as f:
        data: bytes = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since fstat
        raise error(f"{what} {path}: more than the {max_bytes:,} bytes such a file may have")
    return data


def read_text(path: str | os.PathLike[str], max_bytes: int, what: str = "file", *,
              error: type[EdgeInceptionError] = ModelFileError) -> str:
    """:func:`read_regular`, decoded as UTF-8 (anything else is ``error``)."""
    try:
        return read_regular(path, max_bytes, what, error=error).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


MAX_JSON_DEPTH = 32  # our JSON files nest 4 levels at most


def read_json(path: str | os.PathLike[str], max_bytes: int, what: str = "file", *,
              error: type[EdgeInceptionError] = ModelFileError) -> Any:
    """A JSON document from a regular file of at most ``max_bytes``, nested at most :data:`MAX_JSON_DEPTH` levels;
    anything else (a FIFO, a huge file, invalid or deeply nested JSON, NaN) is ``error`` in one line."""
    text = read_text(path, max_bytes, what, error=error)
    return parse_json(text, f"{what} {path}", error=error)


def record_digest(doc: dict[str, Any]) -> str:
    """The sha256 a cache record carries: over its canonical JSON (sorted keys), its own ``sha256`` field left out."""
    return hashlib.sha256(json.dumps({k: v for k, v in doc.items() if k != "sha256"}, sort_keys=True).encode()).hexdigest()


def write_record(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """A measured choice remembered in the cache folder: ``doc`` with its :func:`record_digest` added, written atomically.
    Raises what :func:`write_json_atomic` raises."""
    return write_json_atomic(path, {**doc, "sha256": record_digest(doc)})


def read_record(path: Path, key: str, max_bytes: int, what: str, fields_ok: Callable[[dict[str, Any]], bool],
                mismatch: str) -> dict[str, Any] | None:
    """A record :func:`write_record` wrote, or None (with one warning) when there is none or it does not check out: not
    JSON, more than ``max_bytes``, another ``key``, a sha256 that does not match its content, or fields that
    ``fields_ok`` refuses (``mismatch`` says so). The sha256 catches an edit, a truncation or a mix-up, not a forgery:
    whoever can write the cache folder can rewrite it, hence ``fields_ok``."""
    if not path.is_file():
        return None
    try:
        doc = read_json(path, max_bytes, what)
    except EdgeInceptionError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    if not (isinstance(doc, dict) and doc.get("key") == key and doc.get("sha256") == record_digest(doc) and fields_ok(doc)):
        log.warning("ignoring %s: %s", path, mismatch)
        return None
    return doc


def parse_json(text: str, where: str, *, error: type[EdgeInceptionError] = ModelFileError) -> Any:
    """``json.loads`` that refuses, as ``error``, what a hostile file can hand it: nesting deeper than
    :data:`MAX_JSON_DEPTH` (checked before parsing: the parser recurses), NaN/Infinity, invalid JSON."""
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested {depth} levels deep, more than {MAX_JSON_DEPTH}")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise error(f"{where}: not valid JSON ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from exc


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok in "]}":
            depth -= 1
    return deepest


MAX_HASHED_BYTES = 16 << 30  # an artifact or model: GoogLeNet is 27 MB in FP32


def sha256_file(path: str | os.PathLike[str], what: str = "file") -> str:
    """The sha256 of a regular file (a FIFO or device is refused: see :func:`open_regular`)."""
    h = hashlib.sha256()
    with open_regular(path, what, max_bytes=MAX_HASHED_BYTES) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
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
