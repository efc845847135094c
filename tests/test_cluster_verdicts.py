"""``quantize --eval DIR --cluster``: the accuracy verdict's models run on a real Ray cluster and give the figures the
in-process path gives. Every way of joining a cluster (eval, quantize and pipeline --cluster, fleet) refuses, in one
line and within seconds,
an address that is not a Ray head (closed port, a listener that says nothing, one that speaks something else, a gRPC
server that is not Ray's GCS) or a head that refuses the token.

One head for the module (token auth, 127.0.0.1: joined in Ray's single-node mode, which keeps a loopback address), in a
session of its own, killed by PID at the end also on failure; the module ends by checking that nothing it started is
alive."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from tests import ray_procs
from tests.conftest import ort_only_target

pytest.importorskip("ray")

HOST = "127.0.0.1"
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = secrets.token_hex(32)
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
UP_TIMEOUT_S = 400  # hang detection only: a head is up in ~10 s on an idle machine
RUN_TIMEOUT_S = 600
REFUSE_TIMEOUT_S = 120  # hang detection: each refusal takes seconds (the product's own bound is 5 s per step)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[str]:
    """HOST:PORT of a Ray head with 2 CPUs, token auth, listening on 127.0.0.1 only."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-t-", dir="/tmp")  # short: Ray's socket paths; not the shared /tmp/ray
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    proc = ray_procs.start([RAY, "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(port), "--include-dashboard=false",
                            "--num-cpus", "2", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--temp-dir", temp_dir],
                           log, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **RAY_ENV)
    try:
        address = f"{HOST}:{port}"
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            r = ray_procs.run([sys.executable, "-m", "edge_inception", "fleet", "status", address], 120, **RAY_ENV)
            if r.returncode == 0:
                break
            assert proc.poll() is None, f"the head did not start: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"head not up: {r.stderr[-2000:]}"
            time.sleep(3)
        yield address
    finally:
        ray_procs.kill_session(proc.pid)
        proc.wait(timeout=30)
        left = ray_procs.kill_marked()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes left running: {left}"


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "edge_inception", *map(str, args)]


def test_quantize_eval_on_a_cluster_gives_the_in_process_verdict(trained, head, tmp_path):
    """FP16 judged by accuracy on the labelled demo crops: FP32's and FP16's top-1 / top-5, the verdicts and the claim
    are the in-process run's, and the cluster ran the three models (FP32, the candidate, the model written)."""
    base = ["quantize", str(trained.onnx), "--precision", "fp16", "--calib", str(trained.data / "train"), "--eval", str(trained.data / "val")]
    plain = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "plain.fp16.onnx")])
    assert plain.exit_code == 0, plain.output
    r = ray_procs.run(_cli(*base, "-o", tmp_path / "cluster.fp16.onnx", "--cluster", head, "--workers", "2"), RUN_TIMEOUT_S, **RAY_ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"note: cluster {head}: 2 worker(s), 3 accuracy pass(es)" in r.stderr
    want = json.loads((tmp_path / "plain.fp16.report.json").read_text())
    got = json.loads((tmp_path / "cluster.fp16.report.json").read_text())
    assert want["accuracy"]["labelled"] and got["accuracy"]["labelled"] == want["accuracy"]["labelled"]
    accuracy = [v for v in want["verdicts"] if v["measure"] == "top-1 accuracy"]
    assert accuracy and [v for v in got["verdicts"] if v["measure"] == "top-1 accuracy"] == accuracy
    assert got["claim"] == want["claim"] and got["criterion"] == want["criterion"]


@contextlib.contextmanager
def _listener(answer: bytes | None) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and then says nothing (``answer`` None) or sends ``answer``. Its thread
    polls a stop flag and is joined before the socket closes: closing a listening socket under a thread blocked in
    accept() let that thread take the next listener's connection (its number reused), which then reset it."""
    server = socket.create_server((HOST, 0))
    server.settimeout(0.1)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            if answer is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for c in conns:
            c.close()


@contextlib.contextmanager
def _grpc_server() -> Iterator[int]:
    """A gRPC server with no service at all: it speaks HTTP/2 as Ray's GCS does, but is not one."""
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def _closed_port() -> int:
    return _free_port()  # bound and released: nothing listens there


def _refused(args: list[str], port: int, **env: str) -> str:
    r = ray_procs.run(_cli(*args, "--cluster", f"{HOST}:{port}") if args[0] != "fleet" else _cli(*args, f"{HOST}:{port}"),
                      REFUSE_TIMEOUT_S, **{**RAY_ENV, **env})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


def test_an_address_that_is_not_a_ray_head_is_refused_in_one_line(tmp_path):
    """Each way the product joins a cluster (eval, quantize --eval, fleet status, fleet bench, pipeline) goes through the
    same check (cluster.connect.check_head), made before any other work: the model and the folder named here do not even
    exist. Each kind of wrong address is tried on one of them."""
    val = str(tmp_path / "val")
    eval_args = ["eval", str(tmp_path / "model.onnx"), "--data", val]
    port = _closed_port()
    assert "no Ray head answers at" in _refused(eval_args, port) and "Connection refused" in _refused(["fleet", "status"], port)
    with _listener(None) as port:
        assert "accepts connections but says nothing" in _refused(eval_args, port)
    with _listener(b"SSH-2.0-OpenSSH_9.6\r\n") as port:
        assert "answers, but not as a gRPC server" in _refused(eval_args, port)
        # checked before any quantization work: nothing written
        assert "answers, but not as a gRPC server" in _refused(["quantize", str(tmp_path / "model.onnx"), "--precision", "fp16",
                                                                 "--eval", val, "-o", str(tmp_path / "x.onnx")], port)
        assert not list(tmp_path.iterdir())
    with _grpc_server() as port:
        assert "speaks gRPC but is not a Ray head" in _refused(eval_args, port)


def test_a_head_that_refuses_the_token_is_said_so(head, tmp_path):
    port = int(head.rsplit(":", 1)[1])
    line = _refused(["eval", str(tmp_path / "model.onnx"), "--data", str(tmp_path)], port, RAY_AUTH_TOKEN="0" * 64)
    assert line.startswith(f"error: the Ray head at {head} refused the token")
    line = _refused(["fleet", "status"], port, RAY_AUTH_TOKEN="0" * 64)
    assert "refused the token" in line


def test_more_workers_than_the_joined_cluster_has_cpus_are_refused_once_joined(head, tmp_path):
    """The head has 2 CPUs: a third worker would never get one (Ray Data's actor pool runs with two, under "3 worker(s)"), so the
    count is checked against the cluster's CPUs once joined, in one line."""
    from edge_inception.data.images import bundled_photos, load_image
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    folder = tmp_path / "val" / "class0"
    folder.mkdir(parents=True)
    load_image(bundled_photos()[0]).resize((80, 64)).save(folder / "0.png")
    line = _refused(["eval", str(model), "--data", str(tmp_path / "val"), "--workers", "3"], int(head.rsplit(":", 1)[1]))
    assert line == f"error: --workers 3: the Ray cluster at {head} has 2 CPU(s) in all (ray status); at most 2 (each worker takes one)"


HOLD_CPU = """
import sys, time
from pathlib import Path
from edge_inception.cluster.connect import connect
with connect(sys.argv[1]):
    import ray
    holder = ray.remote(num_cpus=float(sys.argv[4]) if len(sys.argv) > 4 else 1)(type("Holder", (), {"ready": lambda self: True})).remote()
    ray.get(holder.ready.remote(), timeout=300)
    while ray.available_resources().get("CPU", 0) > float(sys.argv[3]):  # the head's view has caught up
        time.sleep(0.1)
    Path(sys.argv[2]).write_text("held")
    time.sleep(3600)  # until the test kills this job's session
"""


def test_workers_beyond_the_cpus_other_jobs_leave_free_are_refused_saying_total_and_free(head, tmp_path):
    """Another job holds one of the head's 2 CPUs: 2 workers fit the cluster's total, but Ray Data's actor pool would
    run one actor under "2 worker(s)" (tried: it did, on the code without this check). Refused once joined, in one line
    with both counts; 1 worker still runs."""
    from edge_inception.data.images import bundled_photos, load_image
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    folder = tmp_path / "val" / "class0"
    folder.mkdir(parents=True)
    load_image(bundled_photos()[0]).resize((80, 64)).save(folder / "0.png")
    held = tmp_path / "held"
    job = ray_procs.start([sys.executable, "-c", HOLD_CPU, head, str(held), "1"], tmp_path / "holder.log", **RAY_ENV)
    try:
        ray_procs.wait_for_file(held, job, tmp_path / "holder.log", time.monotonic() + UP_TIMEOUT_S, "the holding job taking its CPU")
        eval_args = ["eval", str(model), "--data", str(tmp_path / "val")]
        line = _refused([*eval_args, "--workers", "2"], int(head.rsplit(":", 1)[1]))
        assert line == (f"error: --workers 2: the Ray cluster at {head} has 2 CPU(s) in all, 1 free now (other jobs hold the rest: "
                        "ray status); at most 1 now, or wait for them (each worker takes one, and Ray would run fewer than asked)")
        r = ray_procs.run(_cli(*eval_args, "--cluster", head, "--workers", "1"), RUN_TIMEOUT_S, **RAY_ENV)
        assert r.returncode == 0 and "1 images: top-1" in r.stdout, r.stderr[-3000:]
    finally:
        ray_procs.kill_session(job.pid)
        job.wait(timeout=30)


TWO_PASSES = """
import sys, time
from pathlib import Path
from edge_inception.cluster.connect import ClusterError
from edge_inception.cluster.evaluate import ClusterTopK
from edge_inception.vocab import PreprocessMode
from edge_inception.cluster import evaluate
head, model, image, between, go = sys.argv[1:6]
with ClusterTopK(head, workers=2) as run:
    run(Path(model), [Path(image)], image_size=64, mode=PreprocessMode.fast, k=1)  # the product's bound: actors start in it
    Path(between).write_text("1")
    while not Path(go).exists():
        time.sleep(0.1)
    evaluate.NO_PROGRESS_TIMEOUT_S = 5  # shortened for the pass that cannot start: the product's bound, not Ray's default (30 min)
    try:
        run(Path(model), [Path(image)], image_size=64, mode=PreprocessMode.fast, k=1)
        print("ran")
    except ClusterError as exc:
        print(f"refused: {exc}")
"""


def test_a_later_pass_whose_cpus_another_job_took_is_refused_not_waited_for(head, tmp_path):
    """The free CPUs are checked at the first pass only (a later one would count our last pass's actors): a job that
    takes all the CPUs between two passes (quantize's FP32, FP16, INT8 verdicts on one cluster) left the second pass
    with no actor, waiting for Ray Data's no-progress guard (30 min), whose exception was not caught (a traceback). The
    product's bound on a pass that makes no progress (shortened here) now ends it in a ClusterError that says the
    count and the bound."""
    from edge_inception.data.images import bundled_photos, load_image
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    image = tmp_path / "0.png"
    load_image(bundled_photos()[0]).resize((80, 64)).save(image)
    between, go, held = tmp_path / "between", tmp_path / "go", tmp_path / "held"
    runner = ray_procs.start([sys.executable, "-c", TWO_PASSES, head, str(model), str(image), str(between), str(go)], tmp_path / "run.log",
                             **RAY_ENV)
    job = None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        ray_procs.wait_for_file(between, runner, tmp_path / "run.log", deadline, "the first pass")
        job = ray_procs.start([sys.executable, "-c", HOLD_CPU, head, str(held), "0", "2"], tmp_path / "holder.log", **RAY_ENV)
        ray_procs.wait_for_file(held, job, tmp_path / "holder.log", deadline, "the holding job taking the CPUs")
        go.write_text("1")
        runner.wait(RUN_TIMEOUT_S)  # hang detection only (it waited 30 min, Ray Data's guard)
        out = (tmp_path / "run.log").read_text()
        assert runner.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert (f"refused: --workers 2: the Ray cluster at {head} made no progress for 5 s: workers that get no CPU (other jobs "
                "hold them, or a node is gone: ray status) or a worker stuck (RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S sets this "
                "bound)") in out, out[-3000:]
    finally:
        for proc in (runner, job):
            if proc is not None:
                ray_procs.kill_session(proc.pid)
                proc.wait(timeout=30)


def test_pipeline_eval_on_a_cluster_gives_quantize_verdict(trained, head, tmp_path):
    """``pipeline --eval DIR --cluster``: the pipeline's FP16 accuracy verdict runs its models on the cluster and equals
    the one ``quantize --eval`` computes in this process for the FP32 model the pipeline exported."""
    out = tmp_path / "run"
    # ONNX Runtime alone (a target file of one backend): the verdict is the quantize stage's, whatever the backends built after it
    ort_only = ort_only_target(tmp_path, ("fp32", "fp16"))
    r = ray_procs.run(_cli("pipeline", "--weights", trained.checkpoint, "--target", ort_only, "--precisions", "fp32,fp16", "--eval",
                           trained.data / "val", "--batch", "1", "--iterations", "2", "--rounds", "1", "-o", out, "--cluster", head),
                      RUN_TIMEOUT_S, **RAY_ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"note: cluster {head}: 1 worker(s), " in r.stderr and "accuracy pass(es)" in r.stderr
    got = json.loads((out / "report.json").read_text())["quantization"]["fp16"]
    plain = CliRunner().invoke(app, ["quantize", str(out / "model.fp32.onnx"), "--precision", "fp16", "--eval", str(trained.data / "val"),
                                     "-o", str(tmp_path / "plain.fp16.onnx")])
    assert plain.exit_code == 0, plain.output
    want = json.loads((tmp_path / "plain.fp16.report.json").read_text())
    assert want["accuracy"]["labelled"] and got["accuracy"]["labelled"] == want["accuracy"]["labelled"]
    assert got["claim"] == want["claim"]


def test_a_token_ray_cannot_use_is_refused_before_ray_reads_it(tmp_path):
    """The token is checked as Ray would read it, before Ray's native loader reads it: a token file that is a FIFO
    (Ray's loader would wait on it for ever), one that is missing (Ray's client exited 1 without a word), one far too
    big, and a token that holds a newline (not a gRPC header value) are each one line naming the token's source."""
    import os

    eval_args = ["eval", str(tmp_path / "model.onnx"), "--data", str(tmp_path / "val")]
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big_token"
    big.write_text("a" * (1 << 20))
    with _grpc_server() as port:
        assert "not found" in _refused(["fleet", "status"], port, RAY_AUTH_TOKEN="", RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing"))
        assert "is a FIFO, not a regular file" in _refused(eval_args, port, RAY_AUTH_TOKEN="", RAY_AUTH_TOKEN_PATH=str(fifo))
        assert "more than the" in _refused(eval_args, port, RAY_AUTH_TOKEN="", RAY_AUTH_TOKEN_PATH=str(big))
        assert "RAY_AUTH_TOKEN: the Ray token holds characters" in _refused(eval_args, port, RAY_AUTH_TOKEN="abc\ndef")
