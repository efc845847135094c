"""The suite's cache of long builds (tests/build_cache.py): read only when whole and for the same inputs, else built again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .build_cache import cache_root, cached_build, source_digest


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGE_INCEPTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGE_INCEPTION_TEST_CACHE", raising=False)
    return tmp_path


class Builder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, folder: Path) -> dict:
        self.calls += 1
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)
        return {"call": self.calls}


def test_an_entry_is_built_once_and_copied_whole(cache):
    build = Builder()
    first = cached_build("toy", {"steps": 3}, build, cache / "a", code=(Builder,))
    second = cached_build("toy", {"steps": 3}, build, cache / "b", code=(Builder,))
    assert build.calls == 1 and first == second == {"call": 1}
    assert (cache / "b" / "sub" / "weights.bin").read_bytes() == (cache / "a" / "sub" / "weights.bin").read_bytes()
    assert not (cache / "b" / "edge-inception.json").exists()  # the index stays in the cache
    entries = [p for p in cache_root().iterdir() if p.is_dir()]
    assert len(entries) == 1 and json.loads((entries[0] / "edge-inception.json").read_text())["fields"] == {"steps": 3}


def test_other_inputs_or_an_altered_entry_build_again(cache):
    build = Builder()
    cached_build("toy", {"steps": 3}, build, cache / "a", code=(Builder,))
    assert cached_build("toy", {"steps": 4}, build, cache / "b", code=(Builder,)) == {"call": 2}  # another key
    entry = next(p for p in cache_root().iterdir() if p.is_dir() and json.loads((p / "edge-inception.json").read_text())["fields"]["steps"] == 3)
    weights = entry / "sub" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # one byte changed: its sha256 no longer matches
    assert cached_build("toy", {"steps": 3}, build, cache / "c", code=(Builder,)) == {"call": 3}
    assert (cache / "c" / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 4
    weights.unlink()  # a file missing
    assert cached_build("toy", {"steps": 3}, build, cache / "d", code=(Builder,)) == {"call": 4}
    (entry / "stray.txt").write_text("not built")  # a file more
    assert cached_build("toy", {"steps": 3}, build, cache / "e", code=(Builder,)) == {"call": 5}
    assert not (cache / "e" / "stray.txt").exists()


def test_the_cache_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("EDGE_INCEPTION_TEST_CACHE", "0")
    build = Builder()
    cached_build("toy", {"steps": 3}, build, cache / "a", code=(Builder,))
    cached_build("toy", {"steps": 3}, build, cache / "b", code=(Builder,))
    assert build.calls == 2 and not cache_root().exists()


def test_the_key_follows_the_source_of_what_training_imports():
    digest = source_digest("edge_inception.model.train", "edge_inception.convert.export")
    modules = digest["modules"].split(",")
    assert {"edge_inception.model.train", "edge_inception.model.googlenet", "edge_inception.data.datasets", "edge_inception.convert.export",
            "edge_inception.evaluate.verify", "edge_inception.fileio"} <= set(modules)
    assert not any(m.startswith(("edge_inception.serve", "edge_inception.stream", "edge_inception.cli")) for m in modules)


def test_the_key_follows_the_source_of_what_quantization_imports():
    """The quantized fixtures' key (conftest.cached_quantize): every module quantization can reach, by its file, also a
    module that has a folder of data beside it (engines/targets.py and engines/targets/*.toml: the module is what runs)."""
    from .build_cache import _module_file

    modules = set(source_digest("edge_inception.convert.quantize", "edge_inception.convert.export")["modules"].split(","))
    assert {"edge_inception.convert.quantize", "edge_inception.convert.calibration", "edge_inception.convert.bias_correction",
            "edge_inception.convert.guard", "edge_inception.data.images", "edge_inception.evaluate.verify"} <= modules
    assert _module_file("edge_inception.engines.targets").name == "targets.py"
    assert _module_file("edge_inception.engines").name == "__init__.py"
    assert all(_module_file(m).is_file() for m in modules)
