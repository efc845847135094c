"""Every command that reads the user's images or frames, given only unreadable ones: one ``error:`` line and exit 1,
never a report of nothing with exit 0 (issue 40's attack pass found ``stream`` doing that; ``stream`` itself is tested
in ``test_stream_faults.py``). The files are real: photos cut short (JPEG and PNG) and garbage named as images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from tests import ray_procs

from .stream_media import tiny_classifier, unreadable_images

runner = CliRunner()
RUN_TIMEOUT_S = 400  # hang detection only (a private Ray cluster is up in ~10 s)


def _one_error_line(result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("unreadable") / "tiny.onnx")


def test_predict_with_only_unreadable_images(model, tmp_path):
    n = unreadable_images(tmp_path / "photos")
    _one_error_line(runner.invoke(app, ["predict", str(model), str(tmp_path / "photos")]), f"none of the {n} images decoded")
    files = [str(p) for p in sorted((tmp_path / "photos").iterdir())]
    _one_error_line(runner.invoke(app, ["predict", str(model), *files]), f"none of the {n} images decoded")


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_eval_with_only_unreadable_images(model, tmp_path, mode):
    """Files that look like images (their names, a JPEG's or PNG's first bytes) and do not decode: found, tried, none
    read: one line, as for a folder with no image at all."""
    unreadable_images(tmp_path / "val" / "class0")
    unreadable_images(tmp_path / "val" / "class1")
    _one_error_line(runner.invoke(app, ["eval", str(model), "--data", str(tmp_path / "val"), "--preprocess", mode]),
                    f"{tmp_path / 'val'}: no readable images")


@pytest.fixture
def _no_ray_process_outlives_the_test():
    yield
    left = ray_procs.kill_marked()
    assert not left, f"processes left running: {left}"


@pytest.mark.usefixtures("_no_ray_process_outlives_the_test")
def test_eval_cluster_with_only_unreadable_images(model, tmp_path):
    """The workers try every file and read none: after the cluster's own note, one error line and exit 1."""
    pytest.importorskip("ray")
    unreadable_images(tmp_path / "val" / "class0")
    r = ray_procs.run([sys.executable, "-m", "edge_inception", "eval", str(model), "--data", str(tmp_path / "val"),
                       "--cluster", "local", "--workers", "1"], RUN_TIMEOUT_S)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"error: {tmp_path / 'val'}: no readable images" and sum(x.startswith("error:") for x in lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "top-1" not in r.stdout
    assert not ray_procs.marked()
