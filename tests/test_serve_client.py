"""The client side of serving (issues 38 and 35): a server's answers are input, nothing it sends reaches the terminal raw,
a server that dies, hangs or restarts is said in one bounded line (or retried), and the served model holds 32 clients.

Lies are told by a fake KServe-v2 gRPC server built from tritonclient's own protos (tests/fake_kserve.py, on 127.0.0.1,
one per module); faults and load use the real tritonserver (nvidia-pytriton's), started as tests/test_serve.py starts
it. Time bounds here detect hangs only (generous, on a loaded machine); speed is measured in benchmarks/serve_goals.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.grpc", reason="the [serve] extra is not installed")

from edge_inception.cli_common import echo_table, shown  # noqa: E402
from tests import fake_kserve as _fake  # noqa: E402
from tests import test_serve as _serve  # noqa: E402
from tests.test_serve import READY_S, assert_none_left, cli, needs_server, one_error_line  # noqa: E402

# the shared fixtures: one fake server, and test_serve's tiny classifier, repository and real tritonserver, per module
fake_kserve, tiny, python_repo, server = _fake.fake_kserve, _serve.tiny, _serve.python_repo, _serve.server

RAW = ("\x1b", "\u202e", "\u202d", "\u2066", "\x07")  # what must never reach the terminal as such


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def assert_clean(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)


def bounded_cli(*args: str, within_s: float = 60.0) -> tuple[int, str, str]:
    t0 = time.monotonic()
    result = cli(*args)
    assert time.monotonic() - t0 < within_s, f"took {time.monotonic() - t0:.1f} s"
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Kind 1: a server's answers are input


def test_an_honest_fake_server_is_classified_as_the_client_computes(fake_kserve, photos):
    fake_kserve.reset()
    code, out, err = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"), "--top-k", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("p00.png") and len(lines) == 6  # the image and exactly five classes
    # the fake scores class c as c: softmax over 0..9, highest first, labels from the classification extension
    p = np.exp(np.arange(10) - 9.0) / np.exp(np.arange(10) - 9.0).sum()
    assert [ln.split()[1] for ln in lines[1:]] == [f"class{c}" for c in (9, 8, 7, 6, 5)]
    assert lines[1].strip().startswith(f"{p[9]:.2%}")
    code, out, _ = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"), "--top-k", "50")  # more than C: C lines
    assert code == 0 and len(out.splitlines()) == 11


META_LIES = [
    ({"image_size": 100_000}, "100000 x 100000 px"),
    ({"image_size": 8}, "8 x 8 px"),
    ({"classes": 10**9}, "1 to 32,768 classes"),
    ({"classes": 0}, "1 to 32,768 classes"),
    ({"max_batch_size": 10**6}, "max_batch_size 1000000"),
    ({"max_batch_size": -3}, "max_batch_size -3"),
    ({"meta": {"output_shape": [-1, 2**40]}}, "1 to 32,768 classes"),
    ({"meta": {"input_shape": [-1, 3, 2**40, 2**40]}}, "px"),
    ({"meta": {"input_shape": [8, 3, 32, 32]}}, "variable batch"),
    ({"meta": {"input_datatype": "INT8"}}, "takes INT8"),
    ({"meta": {"output_datatype": "BYTES"}}, "gives BYTES"),
    ({"meta": {"name": "other\x1b[2J"}}, "metadata for model 'other\\x1b[2J'"),
    ({"meta": {"inputs": 2}}, "one input and one output"),
    ({"meta": {"platform": "p" * 5000}}, "platform of 5000 characters"),
]


@pytest.mark.parametrize(("fake", "said"), META_LIES, ids=[str(i) for i in range(len(META_LIES))])
def test_metadata_that_lies_is_one_line(fake_kserve, photos, fake, said):
    """Absurd sizes are refused from the metadata, before a tensor is made or a byte of output read."""
    fake_kserve.reset(**fake)
    code, out, err = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"))
    line = one_error_line(err)
    assert code == 1 and out == "" and said in line and fake_kserve.url in line, line
    assert fake_kserve.calls.get("ModelInfer", 0) == 0  # nothing was asked of a model described wrongly
    assert_clean(err)


REPLY_LIES = [
    ("shape", "output shape [8, 11], expected [8, 10]"),
    ("datatype", "output datatype INT32, expected FP32"),
    ("huge_dims", "output shape [1099511627776, 1099511627776]"),
    ("short_bytes", "bytes of scores, expected 320"),
    ("oversize", "larger than the 4,194,304 bytes"),
    ("nan", "non-finite score(s) (nan for image 1 of the batch, class 3)"),
    ("inf", "non-finite score(s) (inf"),
    ("model_name", "a reply from model 'other'"),
    ("bad_index", "an index in [0, 10)"),
    ("few", "9 classification entries, expected 10"),
    ("many", "more than the 10 classification entries"),
]


@pytest.mark.parametrize(("lie", "said"), REPLY_LIES, ids=[lie for lie, _ in REPLY_LIES])
def test_replies_that_lie_are_one_line(fake_kserve, photos, lie, said):
    """Each lie in a ModelInfer reply: one error line naming the server and what was wrong; the images done before
    the lie (the labels and the first batch are honest) stay printed and are counted."""
    fake_kserve.reset(reply=lie, after=0 if lie in ("bad_index", "few", "many") else 2)
    code, out, err = bounded_cli("predict", fake_kserve.target(), str(photos))
    line = one_error_line(err)
    assert code == 1 and said in line and fake_kserve.url in line, line
    assert "nan%" not in out and "Traceback" not in err
    if lie in ("bad_index", "few", "many"):  # the labels' reply: nothing classified yet
        assert out == "" and "(0 of 20 images classified before it)" in line
    else:  # the labels and the first batch of 8 were honest
        assert out.count(".png") == 8 and "(8 of 20 images classified before it, shown above)" in line


def test_the_client_checks_without_the_cli(fake_kserve):
    """The library raises ServeError (never a NumPy or protobuf error) for a lying reply, and keeps memory bounded: a
    16 MiB reply is refused by gRPC's receive limit, set from the model's own output size."""
    from edge_inception.errors import ServeError
    from edge_inception.serve.client import TritonClient

    fake_kserve.reset(reply="oversize")
    with TritonClient(fake_kserve.target(), timeout_s=5) as client:
        assert client.reply_limit == 4 << 20  # max(4 MiB, what 8 x 10 scores or 10 labels need)
        with pytest.raises(ServeError, match="larger than"):
            client.logits(np.zeros((1, 3, 32, 32), np.float32))
        with pytest.raises(ServeError, match="a batch of 9 images; this model takes 1 to 8"):
            client.logits(np.zeros((9, 3, 32, 32), np.float32))
    fake_kserve.reset()
    with TritonClient(fake_kserve.target(), timeout_s=5) as client:
        assert client.class_names() == [f"class{i}" for i in range(10)]
        assert client.classify(np.zeros((2, 3, 32, 32), np.float32), 3)[1][0][1:] == (9, "class9")


# ---------------------------------------------------------------------------------------------------------------------
# Kind 2: nothing another party controls reaches the terminal raw

HOSTILE_LABEL = "cat\x1b[2J\x1b]0;owned\x07\u202eevil\u2066x\nerror: forged"


def test_labels_names_and_messages_from_a_server_are_escaped(fake_kserve, photos):
    labels = [f"class{i}" for i in range(9)] + [HOSTILE_LABEL]
    fake_kserve.reset(labels=labels)
    code, out, err = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"), "--top-k", "2")
    assert code == 0, err
    assert_clean(out)
    assert len(out.splitlines()) == 3 and "\\x1b[2J" in out and "\\u202e" in out and "\\n" in out
    assert not any(ln.startswith("error:") for ln in out.splitlines())
    code, out, _ = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"), "--json")  # JSON escapes itself, keeps the text
    assert code == 0 and json.loads(out.splitlines()[0])["top"][0]["label"] == HOSTILE_LABEL
    assert_clean(out)

    # a model name with a newline in the repository index (a model that is not ready lists them)
    fake_kserve.reset(ready=False, index_names=["good", "evil\nerror: forged line\x1b[31m"])
    code, _, err = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "evil\\nerror: forged line\\x1b[31m" in one_error_line(err)
    assert_clean(err)

    # an error message with a right-to-left override, an escape sequence and a newline
    fake_kserve.reset(reply="error")
    code, _, err = bounded_cli("predict", fake_kserve.target(), str(photos / "p00.png"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "the server says: model failed \\u202eevil\\u202c \\x1b[2J\\nerror: forged line" in one_error_line(err)
    assert_clean(err)


def test_local_predict_escapes_file_names(tiny, tmp_path):
    """A file name with an escape sequence and a bidirectional override (a folder someone else filled)."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = next((tiny.data / "val").rglob("*.png"))
    shutil.copy(source, folder / "a\x1b[2J\u202egnp.png")
    code, out, err = cli("predict", str(tiny.artifact), str(folder))
    assert code == 0, err
    assert_clean(out + err)
    assert "a\\x1b[2J\\u202egnp.png" in out


def test_tables_and_error_lines_escape_every_field(capsys):
    echo_table([["ok\x1b[2J", "a\nb"], ["\u202eevil", "1"]], ["name\u2066", "value"])
    out = capsys.readouterr().out
    assert_clean(out)
    assert len(out.splitlines()) == 4 and "ok\\x1b[2J" in out and "a\\nb" in out and "\\u202eevil" in out
    assert shown("x" * 5000).endswith("...") and len(shown("x" * 5000)) == 4003

    from edge_inception.cli_common import handle_errors
    from edge_inception.errors import ServeError

    @handle_errors
    def failing() -> None:
        raise ServeError("bad \u202eresult\x1b[2J\nerror: forged")

    import typer

    with pytest.raises(typer.Exit):
        failing()
    err = capsys.readouterr().err
    assert err == "error: bad \\u202eresult\\x1b[2J\\nerror: forged\n"


def test_bench_against_a_server_escapes_its_platform(fake_kserve, tmp_path):
    """bench grpc:// prints the server's platform in its table heading: escaped."""
    pytest.importorskip("mlperf_loadgen")
    fake_kserve.reset(meta={"platform": "onnx\x1b[31m\u202eruntime"})
    code, out, err = bounded_cli("bench", fake_kserve.target(), "--scenario", "offline", "--short", "--json", str(tmp_path / "b.json"),
                                 within_s=120)
    assert code == 0, err
    assert_clean(out + err)
    assert "triton:fake (onnx\\x1b[31m\\u202eruntime)" in out


# ---------------------------------------------------------------------------------------------------------------------
# Issue 35: a server that stops answering, or is briefly unavailable


def test_a_server_that_never_answers_hits_the_deadline(fake_kserve, photos):
    fake_kserve.reset(reply="hang", after=2, hang_s=60)
    t0 = time.monotonic()
    code, out, err = cli("predict", fake_kserve.target(), str(photos), "--timeout", "1")
    elapsed = time.monotonic() - t0
    line = one_error_line(err)
    assert code == 1 and "did not answer within 1 s" in line and "(8 of 20 images classified before it, shown above)" in line
    assert out.count(".png") == 8
    assert elapsed < 20, elapsed  # a 1 s deadline; generous for a loaded machine, far below the fake's 60 s hang


def _user_cli(*args: str, within_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it (its own process: the logging set-up that says retries on stderr is main()'s)."""
    return subprocess.run([sys.executable, "-m", "edge_inception", *args], capture_output=True, text=True, timeout=within_s)


def test_unavailable_is_retried_with_backoff_and_said(fake_kserve, photos):
    fake_kserve.reset(unavailable=2)
    r = _user_cli("predict", fake_kserve.target(), str(photos / "p00.png"))
    assert r.returncode == 0, r.stderr
    retries = [ln for ln in r.stderr.splitlines() if "is unavailable" in ln]
    assert len(retries) == 2 and retries[0].startswith("warning: ") and "retry 1 of 3 in 0.5 s" in retries[0] and "retry 2 of 3 in 1 s" in retries[1]
    assert "the fake server is restarting" in retries[0] and r.stdout.count("class") == 5

    fake_kserve.reset(unavailable=100)  # never comes back: four tries, then one line
    t0 = time.monotonic()
    r = _user_cli("predict", fake_kserve.target(), str(photos / "p00.png"))
    assert r.returncode == 1 and "(tried 4 times over 3.5 s)" in one_error_line(r.stderr) and r.stdout == ""
    assert len([ln for ln in r.stderr.splitlines() if "is unavailable" in ln]) == 3
    assert 3.5 <= time.monotonic() - t0 < 60
    assert fake_kserve.calls == {"ServerLive": 4}


def test_bench_against_a_server_that_fails_midway_is_one_line(fake_kserve, tmp_path):
    """A server answering NaN after a few requests during `bench grpc:// --scenario offline`: LoadGen gets every
    answer (no hang), the queries after the failure are answered at once, then one error line and no report."""
    pytest.importorskip("mlperf_loadgen")
    fake_kserve.reset(reply="nan", after=30)  # the 14 of the estimate and a few of the LoadGen run honest
    code, out, err = bounded_cli("bench", fake_kserve.target(), "--scenario", "offline", "--short", "--json", str(tmp_path / "b.json"),
                                 within_s=120)
    assert code == 1 and "non-finite score(s)" in one_error_line(err) and fake_kserve.url in one_error_line(err)
    assert not (tmp_path / "b.json").exists()
    assert fake_kserve.calls["ModelInfer"] < 69  # an honest run asks 69: those after the failure were answered at once


# ---------------------------------------------------------------------------------------------------------------------
# Issue 35 with the real tritonserver: killed mid-run; 32 clients at once


@needs_server
def test_a_server_killed_mid_predict_is_one_line_and_the_done_images_kept(python_repo, tiny, tmp_path):
    """SIGKILL to tritonserver while `predict grpc://` runs over 400 images: the client says so in one line within a
    bound, exit 1, and what it classified before is printed and counted."""
    from edge_inception.serve.server import TritonServer

    repo = Path(shutil.copytree(python_repo, tmp_path / "repo"))  # its own server: the module's one keeps serving
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((tiny.data / "val").rglob("*.png"))
    for i in range(400):
        shutil.copy(sources[i % len(sources)], images / f"{i:03d}.png")
    s = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=READY_S)
    proc = None
    try:
        s.start()
        assert s.proc is not None and s.endpoints is not None
        proc = subprocess.Popen([sys.executable, "-m", "edge_inception", "predict", f"grpc://{s.endpoints.grpc}/demo", str(images),
                                 "--timeout", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each result reaches the pipe as it is printed
        watchdog = threading.Timer(180, os.killpg, (proc.pid, signal.SIGKILL))  # a hang fails the test, bounded
        watchdog.start()
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()  # the first result is printed: the run is under way
            assert first.endswith(".png\n"), (first, proc.stderr.read() if proc.poll() is not None else "")
            os.kill(s.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            out = proc.stdout.read()  # to the end: the client exits
            took = time.monotonic() - killed
            err = proc.stderr.read()
            proc.wait(timeout=30)
        finally:
            watchdog.cancel()
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        s.stop()
    assert_none_left(repo)
    line = one_error_line(err)
    done = (first + out).count(".png\n")
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"({done} of 400 images classified before it, shown above)" in line and 1 <= done < 400, line
    assert "cannot reach a Triton server" in line or "the server says" in line or "did not answer" in line, line
    assert took < 45, took  # retries (3.5 s) and at most one 10 s deadline, with room for a loaded machine


@needs_server
def test_32_concurrent_clients_in_loadgen_server_scenario(server, tiny, tmp_path):
    """LoadGen's Server scenario with 32 requests in flight against the real tritonserver: every request answered
    (a failed one fails the run), p99 recorded, and Triton's statistics count no failed inference."""
    from edge_inception.serve.client import TritonClient

    target = f"grpc://{server.endpoints.grpc}/demo"

    def failures() -> int:
        with TritonClient(target, timeout_s=30) as client:
            return client.failures()

    failed_before = failures()
    code, out, err = bounded_cli("bench", target, "--scenario", "server", "--short", "--batch", "1", "--concurrency", "32",
                                 "--data", str(tiny.data / "val"), "--json", str(tmp_path / "s.json"), within_s=300)
    assert code == 0, err
    row = json.loads((tmp_path / "s.json").read_text())["loadgen"][0]
    assert row["scenario"] == "Server" and row["settings"]["concurrency"] == 32
    assert row["query_count"] >= 128 and row["latency_ms"]["p99"] > 0 and row["metric_value"] == row["latency_ms"]["p99"]
    assert failures() == failed_before


@pytest.mark.parametrize("args", [["bench", "x.onnx", "--scenario", "offline\nError: forged\x1b[2J"],
                                  ["bench", "x.onnx", "--batch", "1\x1b[2J\nError: forged"],
                                  ["serve", "export", "x.onnx", "-o", "r", "--preferred-batch", "4\nError: forged"]])
def test_usage_errors_escape_the_value_they_quote(args):
    """Click quotes a refused value in its usage error: the value is escaped like every other printed field, so no second
    line can be forged and no escape sequence reaches the terminal."""
    from typer.testing import CliRunner

    from edge_inception.cli import app

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "\x1b" not in r.output and not any(line.startswith("Error: forged") for line in r.output.splitlines()), r.output
