"""Triton's system shared memory for a client on the server's machine (Triton's shared-memory extension; perf_analyzer's
``--shared-memory system``): a request's input tensor and its output are written to POSIX shared-memory regions that
the server maps, instead of travelling through the gRPC stream (a 224 px batch of 8 is 4.8 MB: serialised,
framed, parsed and copied on each side, on the cores the model needs).

A region is a file of ``/dev/shm`` (what ``shm_open`` makes on Linux) created here with ``O_EXCL``, mode 0600 (only this
user's processes can map it: the server runs as the same user, as ``serve run`` starts it) and its bytes reserved
(``posix_fallocate``: a full /dev/shm is an error here, not a SIGBUS later), named ``<prefix>-<slot>-in`` / ``-out``
with a prefix of :func:`new_prefix` (``edge-inception-shm-<pid>-<16 random hex digits>``: nobody can take the name
first), registered with the server under the same name, and unregistered and removed on :meth:`Slots.close`. What a
run that ended otherwise left is cleaned by whoever comes next: ``bench --scenario`` for its LoadGen child however it
ended (its files, and their registration on the server), and any new :class:`Slots` for the files of processes that
are gone (:func:`remove_stale_regions`).

Memory: ``slots`` x (the input batch's bytes + its output's), at most :data:`MAX_BYTES` in all.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ServeError

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
MAX_BYTES = 1 << 30  # every region of one client together
UNREGISTER_S = 2.0  # Triton answers "in use" while a finished request's reference is still held: retried this long, all regions together
PREFIX = "edge-inception-shm-"
_PREFIX_RE = re.compile(re.escape(PREFIX) + r"(\d+)-[0-9a-f]{16}")


def new_prefix() -> str:
    """A fresh prefix for one client's regions: this process's id (for :func:`remove_stale_regions`) and 64 random bits."""
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def prefix_of_dead_process(name: str) -> bool:
    """Whether ``name`` (a region's) has a :func:`new_prefix` prefix whose process is gone."""
    m = _PREFIX_RE.match(name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


@dataclass
class Region:
    name: str  # the file's name in /dev/shm and Triton's name for the region
    size: int  # bytes
    view: mmap.mmap

    @property
    def key(self) -> str:
        """The POSIX shared-memory key the server opens (``shm_open``): the name with a leading slash."""
        return "/" + self.name


def create_region(name: str, size: int) -> Region:
    """A new region of ``size`` bytes, mode 0600; never an existing file (``O_EXCL``, no symbolic link followed)."""
    path = SHM_DIR / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ServeError(f"cannot create shared memory {path}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)  # the pages exist now, or ENOSPC here (not a SIGBUS at the first write)
        view = mmap.mmap(fd, size)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ServeError(f"cannot make {size:,} bytes of shared memory at {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return Region(name, size, view)


def remove_stale_regions() -> int:
    """Remove this user's /dev/shm regions of :func:`new_prefix` form whose process is gone (killed before it could
    close them); returns how many."""
    removed = 0
    for path in SHM_DIR.glob(f"{PREFIX}*"):
        if prefix_of_dead_process(path.name):
            removed += remove_own_file(path)
    return removed


def remove_own_file(path: Path) -> int:
    """Remove ``path`` if it is a regular file of this user's (never a link): 1 if removed, else 0; never raises."""
    try:
        if path.is_file() and not path.is_symlink() and path.stat().st_uid == os.getuid():
            path.unlink()
            return 1
    except OSError:
        pass
    return 0


def remove_regions(prefix: str) -> int:
    """Remove this user's ``/dev/shm`` files named ``<prefix>-*`` (regions a killed client left); returns how many."""
    return sum(remove_own_file(path) for path in SHM_DIR.glob(f"{prefix}-*"))


class Slots:
    """``count`` pairs of regions (input, output), registered with a server; :meth:`slot` lends one to a request, so
    ``count`` requests can be in flight at once (one per LoadGen worker thread).

    ``register(name, key, size)`` and ``unregister(name)`` are the client's calls (Triton's
    ``RegisterSystemSharedMemory`` / ``UnregisterSystemSharedMemory``). Raises :class:`ServeError` when the regions
    would exceed :data:`MAX_BYTES` or cannot be made or registered (nothing is left behind then)."""

    def __init__(self, prefix: str, count: int, in_bytes: int, out_bytes: int, register: Callable[[str, str, int], None],
                 unregister: Callable[[str], None]) -> None:
        total = count * (in_bytes + out_bytes)
        if total > MAX_BYTES:
            raise ServeError(f"shared memory for {count} request(s) in flight of {in_bytes:,} + {out_bytes:,} bytes is {total:,} bytes; "
                             f"at most {MAX_BYTES:,} (give a smaller --batch or --concurrency)")
        self.in_bytes, self.out_bytes, self.unregister = in_bytes, out_bytes, unregister
        self.regions: list[Region] = []  # every region made, in order
        self.registered: list[str] = []
        self.free: queue.SimpleQueue[tuple[Region, Region]] = queue.SimpleQueue()
        remove_stale_regions()
        try:
            for i in range(count):
                for kind, size in (("in", in_bytes), ("out", out_bytes)):
                    self.regions.append(create_region(f"{prefix}-{i}-{kind}", size))
                    register(self.regions[-1].name, self.regions[-1].key, size)
                    self.registered.append(self.regions[-1].name)
                self.free.put((self.regions[-2], self.regions[-1]))
        except BaseException:
            self.close()
            raise

    @contextmanager
    def slot(self) -> Iterator[tuple[Region, Region]]:
        pair = self.free.get()
        try:
            yield pair
        finally:
            self.free.put(pair)

    @staticmethod
    def write(region: Region, batch: np.ndarray) -> int:
        """``batch`` (float32, C order) into ``region``; returns its byte count."""
        n = batch.nbytes
        np.copyto(np.frombuffer(region.view, dtype=batch.dtype, count=batch.size).reshape(batch.shape), batch)
        return n

    @staticmethod
    def clear(region: Region, count: int) -> None:
        """NaN in the first ``count`` float32 values: scores a server claims but never wrote fail the finite check."""
        np.frombuffer(region.view, dtype="<f4", count=count)[:] = np.nan

    @staticmethod
    def read(region: Region, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the float32 ``shape`` the server wrote at the region's start."""
        return np.frombuffer(region.view, dtype="<f4", count=int(np.prod(shape))).reshape(shape).copy()

    def close(self) -> None:
        """Unregister every region from the server (retried while it says "in use", for :data:`UNREGISTER_S` in all; a
        server that does not answer is not asked again), then unmap and remove them."""
        deadline = time.monotonic() + UNREGISTER_S
        for name in self.registered:
            if not self._unregister(name, deadline):
                break
        self.registered = []
        for region in self.regions:
            try:
                region.view.close()
            except BufferError:  # an array still views it: the file is removed all the same
                pass
            remove_own_file(SHM_DIR / region.name)
        self.regions = []

    def _unregister(self, name: str, deadline: float) -> bool:
        """False where the rest should not be tried (the server did not answer, or the time is up)."""
        while True:
            try:
                self.unregister(name)
                return True
            except ServeError as exc:
                if "in use" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                log.debug("shared memory region %s was not unregistered: %s", name, exc)
                return False
