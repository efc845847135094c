"""Faults found by a hostile review of ``stream`` and ``serve``: each test fails without its fix.

No server is started here: every input is refused before one would be (a tritonserver process would be a fault).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("tritonclient.grpc", reason="the [serve] extra is not installed")
pytest.importorskip("mlperf_loadgen", reason="the [serve] extra is not installed")

from edge_inception.cli import app  # noqa: E402
from edge_inception.errors import DatasetError, EdgeInceptionError, ServeError, StreamError  # noqa: E402
from edge_inception.evaluate.predict import folder_labels  # noqa: E402
from edge_inception.model.labels import imagenet_folder_index  # noqa: E402
from edge_inception.names import is_number  # noqa: E402
from edge_inception.serve.client import parse_target  # noqa: E402
from edge_inception.serve.config import ServeKind, check_model_name  # noqa: E402
from edge_inception.serve.loadgen import Estimate, Scenario, ScenarioConfig, check_target_qps  # noqa: E402
from edge_inception.serve.repository import ExportOptions, export_repository, validate_repository  # noqa: E402
from edge_inception.serve.server import Endpoints, check_host  # noqa: E402
from edge_inception.stream.sources import open_source  # noqa: E402

from .stream_media import tiny_classifier  # noqa: E402


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[-1]


# --- str.isdigit takes '²' (int() refuses it: a traceback) and '٣' (int() reads 3): numbers from users are ASCII ------

@pytest.mark.parametrize("text", ["²", "٣", "８００１", "", "1a"])
def test_is_number_is_ascii_digits_only(text: str) -> None:
    assert not is_number(text)
    assert is_number("8001")


@pytest.mark.parametrize("url", ["grpc://h:²/m", "grpc://h:٣/m", "grpc://h:８００１/m", "grpc://h:1/m/²", "grpc://h:1/m/٣",
                                 "grpc://h:1/m\n", "grpc://h\n:1/m", "grpc://h:1/m\n/1"])
def test_grpc_urls_with_unicode_digits_or_a_final_newline_are_refused(url: str) -> None:
    with pytest.raises(ServeError, match="expected grpc://HOST:PORT/MODEL"):
        parse_target(url)


def test_predict_grpc_superscript_port_is_one_error_line() -> None:
    code, err = cli("predict", "grpc://127.0.0.1:²/m", "x.png")
    assert code == 1
    assert "expected grpc://HOST:PORT/MODEL" in one_error_line(err)


def test_class_folders_with_unicode_digits_are_not_numbers() -> None:
    assert imagenet_folder_index("²") is None
    with pytest.raises(DatasetError):
        folder_labels(["²"], None, 10)


@pytest.mark.parametrize("uri", ["²", "٣", "/dev/video٣", "csi://", "csi://x"])
def test_stream_camera_forms_take_ascii_numbers_only(uri: str) -> None:
    with pytest.raises(StreamError, match="no such file, folder or camera"):
        open_source(uri)


# --- names: "$" matches before a final newline, so MODEL_NAME_RE.match took "abc\n" ------------------------------------

def test_model_name_with_a_final_newline_is_refused() -> None:
    with pytest.raises(ServeError):
        check_model_name("abc\n")


# --- serve run --host: "" bound every interface in the port check, a long non-ASCII name was a UnicodeError traceback --

@pytest.mark.parametrize("host", ["", "ü" * 70, "a b", "h\n", "-x", "127.0.0.1 --model-control-mode=explicit"])
def test_bad_host_is_refused(host: str) -> None:
    with pytest.raises(ServeError, match="--host"):
        check_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "my-board.local"])
def test_good_host_is_kept(host: str) -> None:
    assert check_host(host) == host


def test_serve_run_bad_host_is_one_error_line(tmp_path: Path) -> None:
    code, err = cli("serve", "run", str(tmp_path), "--host", "ü" * 70)
    assert code == 1
    assert "--host" in one_error_line(err)


def test_ipv6_grpc_endpoint_is_bracketed() -> None:
    # "::1:8001" is not an address gRPC can dial: the ready wait would have run to its timeout
    assert Endpoints("::1", 1, 2, 3).grpc == "[::1]:2"
    assert Endpoints("127.0.0.1", 1, 2, 3).grpc == "127.0.0.1:2"


# --- a hostile repository: model folder names and label_filename are checked before they reach a terminal or Triton ---

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("review")
    model = tiny_classifier(base / "tiny.onnx")
    out = base / "repo"
    export_repository(model, out, ExportOptions(kind=ServeKind.python, name="tiny"))
    return out


def _hostile_copy(repo: Path, dest: Path) -> Path:
    shutil.copytree(repo, dest)
    (dest / "edge-inception.json").unlink()  # the hash manifest is optional: a hand-made repository has none
    return dest


def test_repository_model_folder_with_control_characters_is_refused(repo: Path, tmp_path: Path) -> None:
    hostile = _hostile_copy(repo, tmp_path / "r")
    (hostile / "tiny").rename(hostile / "x\x1b[2J")
    with pytest.raises(ServeError, match="model name"):
        validate_repository(hostile)
    code, err = cli("serve", "run", str(hostile))
    assert code == 1 and "\x1b" not in err
    one_error_line(err)


def test_repository_label_filename_leaving_its_folder_is_refused(repo: Path, tmp_path: Path) -> None:
    hostile = _hostile_copy(repo, tmp_path / "r")
    cfg = hostile / "tiny" / "config.pbtxt"
    text = cfg.read_text(encoding="utf-8")
    assert 'label_filename: "labels.txt"' in text
    cfg.write_text(text.replace('label_filename: "labels.txt"', 'label_filename: "../../../etc/passwd"'), encoding="utf-8")
    with pytest.raises(ServeError, match="label_filename"):
        validate_repository(hostile)


# --- bench --scenario: an absurd --target-qps made LoadGen generate millions of samples (GBs, hours, deaf to SIGTERM) --

def test_target_qps_far_beyond_the_measured_rate_is_refused() -> None:
    est = Estimate(single_s=0.01, batch_s=0.08, multi_s=0.08, batch=8)  # 100 samples/s
    cfg = ScenarioConfig((Scenario.offline,), short=True, target_qps=9e6)
    with pytest.raises(EdgeInceptionError, match="--target-qps"):
        check_target_qps(cfg, est)
    check_target_qps(ScenarioConfig((Scenario.offline,), target_qps=500.0), est)
    check_target_qps(ScenarioConfig((Scenario.server,), target_qps=4000.0, concurrency=4), est)


def test_bench_absurd_target_qps_is_one_error_line(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    code, err = cli("bench", str(model), "--scenario", "offline", "--short", "--target-qps", "9000000")
    assert code == 1
    assert "--target-qps" in one_error_line(err)


def test_target_qps_out_of_range_says_the_range() -> None:
    code, err = cli("bench", "x.onnx", "--scenario", "offline", "--short", "--target-qps", "1e12")
    assert code == 1
    assert "must be in (0, 1e7)" in one_error_line(err)


# --- a glob matching a FIFO stopped the whole run with "no such image or folder" (a folder skips it) ----------------------

def test_glob_matching_a_fifo_skips_it(tmp_path: Path) -> None:
    import os

    from PIL import Image

    from edge_inception.data.images import find_images
    from edge_inception.errors import ImageError

    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    scan = find_images([str(tmp_path / "*.png")])
    assert scan.images == [tmp_path / "a.png"] and scan.skipped == [tmp_path / "b.png"]
    with pytest.raises(ImageError, match="not a regular file"):
        find_images([tmp_path / "b.png"])
    src = open_source(str(tmp_path / "*.png"), 64)
    with src:
        assert [f.name for f in src.frames()] == [str(tmp_path / "a.png")]
