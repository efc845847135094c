"""Triton system shared memory, the client's side (edge_inception/serve/shm.py): regions made whole or not at all,
never someone else's file, every one removed however construction or closing goes; tests/test_serve.py and
tests/test_loadgen.py run it against a real tritonserver."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_inception.errors import ServeError
from edge_inception.serve import shm


def _prefix() -> str:
    return shm.new_prefix()


def _mine(prefix: str) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"{prefix}-*"))


def test_a_prefix_is_unguessable_and_names_its_process():
    a, b = shm.new_prefix(), shm.new_prefix()
    assert a != b and a.startswith(f"edge-inception-shm-{os.getpid()}-") and len(a.rsplit("-", 1)[1]) == 16
    assert not shm.prefix_of_dead_process(a + "-0-in")  # this process is alive
    assert not shm.prefix_of_dead_process("triton_python_backend_shm_region_x") and not shm.prefix_of_dead_process("edge-inception-shm-x")


def test_regions_are_private_reserved_and_never_an_existing_file(tmp_path, monkeypatch):
    prefix = _prefix()
    region = shm.create_region(f"{prefix}-0-in", 1 << 20)
    try:
        st = (shm.SHM_DIR / region.name).stat()
        assert st.st_mode & 0o777 == 0o600 and st.st_size == 1 << 20
        assert st.st_blocks * 512 >= 1 << 20  # reserved (posix_fallocate): a full /dev/shm fails here, not with SIGBUS later
        with pytest.raises(ServeError, match="File exists"):
            shm.create_region(region.name, 4096)
        target = tmp_path / "victim"
        target.write_text("x")
        os.symlink(target, shm.SHM_DIR / f"{prefix}-1-in")
        with pytest.raises(ServeError, match="File exists"):  # a link squatting the name is neither followed nor replaced
            shm.create_region(f"{prefix}-1-in", 4096)
        assert target.read_text() == "x"
        assert shm.remove_regions(prefix) == 1  # only the region: the link is not this run's file
        assert (shm.SHM_DIR / f"{prefix}-1-in").is_symlink() and target.read_text() == "x"
    finally:
        region.view.close()
        for p in shm.SHM_DIR.glob(f"{prefix}-*"):
            p.unlink()


def test_a_failed_construction_leaves_no_region_and_unregisters_what_it_registered():
    prefix = _prefix()
    registered, unregistered = [], []

    def register(name, key, size):
        if name.endswith("-1-out"):
            raise ServeError("the server says: no")
        assert key == "/" + name
        registered.append(name)

    with pytest.raises(ServeError, match="no"):
        shm.Slots(prefix, 2, 1000, 40, register, unregistered.append)
    assert registered == [f"{prefix}-0-in", f"{prefix}-0-out", f"{prefix}-1-in"] and unregistered == registered
    assert _mine(prefix) == []  # the -1-in region made just before the failure too


def test_closing_against_a_server_that_keeps_saying_in_use_is_bounded():
    prefix = _prefix()
    tries = []

    def in_use(name):
        tries.append(name)
        raise ServeError(f"the server says: Cannot unregister shared memory region '{name}', it is currently in use.")

    slots = shm.Slots(prefix, 8, 4096, 64, lambda *a: None, in_use)
    t0 = time.monotonic()
    slots.close()
    assert time.monotonic() - t0 < shm.UNREGISTER_S + 1.0  # in all, not per region (16 regions)
    assert _mine(prefix) == [] and tries


def test_a_server_that_does_not_answer_is_asked_once():
    prefix = _prefix()
    tries = []

    def gone(name):
        tries.append(name)
        raise ServeError("cannot reach a Triton server at 127.0.0.1:1: Connection refused")

    shm.Slots(prefix, 4, 4096, 64, lambda *a: None, gone).close()
    assert len(tries) == 1 and _mine(prefix) == []


def test_unwritten_scores_read_as_nan_and_written_ones_as_written():
    prefix = _prefix()
    slots = shm.Slots(prefix, 1, 4 * 2 * 3, 4 * 2 * 5, lambda *a: None, lambda n: None)
    try:
        with slots.slot() as (region_in, region_out):
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            assert slots.write(region_in, x) == x.nbytes and np.array_equal(slots.read(region_in, (2, 3)), x)
            slots.clear(region_out, 10)
            assert np.isnan(slots.read(region_out, (2, 5))).all()  # a server that claims scores but wrote none: not finite
    finally:
        slots.close()


def test_too_much_shared_memory_is_refused_before_any_is_made():
    prefix = _prefix()
    with pytest.raises(ServeError, match="is 2,482,634,752 bytes; at most 1,073,741,824"):
        shm.Slots(prefix, 64, 64 * 3 * 224 * 224 * 4, 64 * 4000, lambda *a: None, lambda n: None)
    assert _mine(prefix) == []


def test_the_regions_of_a_process_that_is_gone_are_swept_and_no_others():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = f"edge-inception-shm-{int(child.stdout)}-{'0' * 16}"
    alive = _prefix()
    for name in (f"{dead}-0-in", f"{alive}-0-in"):
        (shm.SHM_DIR / name).write_bytes(b"x")
    try:
        assert shm.prefix_of_dead_process(f"{dead}-0-in")
        shm.remove_stale_regions()
        assert not (shm.SHM_DIR / f"{dead}-0-in").exists() and (shm.SHM_DIR / f"{alive}-0-in").exists()
    finally:
        for name in (f"{dead}-0-in", f"{alive}-0-in"):
            (shm.SHM_DIR / name).unlink(missing_ok=True)
