"""Serving: Triton model repositories checked with Triton's schema, a real tritonserver (nvidia-pytriton's, Python backend)
on 127.0.0.1, the gRPC client, MLPerf LoadGen scenarios, and no server or backend process left behind.

Every server here binds loopback only, on free ports, is bounded in seconds (ready timeout) and requests, and is
stopped by the test also on failure (its process group killed); each test that starts one checks afterwards that no
tritonserver or triton_python_backend_stub of its repository runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tritonclient.grpc", reason="the [serve] extra is not installed")
pytest.importorskip("mlperf_loadgen", reason="the [serve] extra is not installed")

from edge_inception.cli import app  # noqa: E402
from edge_inception.data.demo_data import DEMO_CLASSES  # noqa: E402
from edge_inception.errors import ServeError  # noqa: E402
from edge_inception.serve import config as tc  # noqa: E402
from edge_inception.serve.repository import ExportOptions, ServedArtifact, classifier_spec, export_repository, validate_repository  # noqa: E402
from edge_inception.serve.server import REPOSITORY_ENV, TritonServer, find_tritonserver  # noqa: E402
from edge_inception.vocab import Backend  # noqa: E402

READY_S = 90.0


def _has_server() -> bool:
    try:
        find_tritonserver()
    except ServeError:
        return False
    return True


needs_server = pytest.mark.skipif(not _has_server(), reason="no tritonserver (make setup installs nvidia-pytriton in .venv/triton-site)")


def pids_of(repo: Path) -> dict[int, str]:
    """Running tritonserver and triton_python_backend_stub processes serving ``repo``: named on their command line
    (--trust-repository serves it in place), or in their environment (serve run serves a private copy of it and tells
    them which repository that is, in EDGE_INCEPTION_REPOSITORY). pid -> command line."""
    key = str(repo.resolve()).encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not (b"tritonserver" in cmd or b"triton_python_backend_stub" in cmd):
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if key in cmd or f"{REPOSITORY_ENV}={repo.resolve()}".encode() in env:
            found[int(pid)] = cmd.replace(b"\0", b" ").decode(errors="replace")[:300]
    return found


def processes_of(repo: Path) -> list[str]:
    """Command lines of running processes serving ``repo`` (tritonserver and its Python stubs)."""
    return list(pids_of(repo).values())


@contextlib.contextmanager
def stub_regions_seen(repo: Path):
    """The /dev/shm regions of the Python backend stubs serving ``repo`` while the block runs (a stub's second argument),
    polled every 0.1 s: a set filled in as they are seen."""
    import threading

    seen: set[str] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.1):
            for cmd in processes_of(repo):
                argv = cmd.split(" ")
                if argv[0].endswith("triton_python_backend_stub") and len(argv) > 2:
                    seen.add(argv[2])

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(timeout=5)


def assert_none_left(repo: Path, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while processes_of(repo) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(repo) == []


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[-1]


def kind_name(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.ModelInstanceGroup.Kind.Name(kind))


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


@dataclass
class Tiny:
    onnx: Path
    artifact: Path  # built for the cpu target (ONNX Runtime), with its manifest
    data: Path  # the demo data: val/<class>/*.png, labelled with the model's class names


@pytest.fixture(scope="module")
def tiny(demo_data, tmp_path_factory) -> Tiny:
    """A small real classifier (conv, ReLU, pool, dense; 64 px in, the 10 demo classes out) built for the cpu target: the
    serving paths do not depend on which network it is, and it builds in seconds where GoogLeNet's export takes minutes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_inception.engines.build import build

    rng = np.random.default_rng(0)
    weights = {"w": (8, 3, 3, 3), "b": (8,), "fw": (len(DEMO_CLASSES), 8), "fb": (len(DEMO_CLASSES),)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name) for name, shape in weights.items()]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(DEMO_CLASSES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"image_size": "64", "num_classes": str(len(DEMO_CLASSES)), "class_names": json.dumps(list(DEMO_CLASSES))}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    folder = tmp_path_factory.mktemp("tiny")
    onnx.save(model, folder / "demo.onnx")
    return Tiny(folder / "demo.onnx", build(folder / "demo.onnx", "cpu", output_dir=folder / "cpu").artifact, demo_data)


# ---------------------------------------------------------------------------------------------------------------------
# Repositories


def test_native_repositories_for_each_backend(tiny, tmp_path):
    artifact = tiny.artifact
    """ORT and OpenVINO artifacts: Triton's native configuration, parsed with Triton's schema, files under Triton's names."""
    from edge_inception.engines.manifest import read_manifest

    manifest = read_manifest(artifact)
    code, out, err = cli("serve", "export", str(artifact), "-o", str(tmp_path / "ort"), "--preferred-batch", "4,8", "--instances", "2")
    assert code == 0, err
    cfg = parse_config(tmp_path / "ort" / "demo_fp32" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == manifest.batch_range[1]
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, manifest.image_size, manifest.image_size])]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [("logits", [manifest.num_classes], "labels.txt")]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8] and cfg.instance_group[0].count == 2
    assert kind_name(cfg.instance_group[0].kind) == "KIND_CPU"  # the manifest's device
    assert cfg.model_warmup[0].inputs["input"].zero_data
    labels = (tmp_path / "ort" / "demo_fp32" / "labels.txt").read_text().splitlines()
    assert labels == manifest.class_names
    assert (tmp_path / "ort" / "demo_fp32" / "1" / "model.onnx").read_bytes() == artifact.read_bytes()

    pytest.importorskip("openvino")
    from edge_inception.engines.build import build

    ir = build(tiny.onnx, "cpu", backend="openvino", output_dir=tmp_path / "ov-build").artifact
    result = export_repository(ir, tmp_path / "ov", ExportOptions(name="demo_ov"))
    cfg = parse_config(tmp_path / "ov" / "demo_ov" / "config.pbtxt")
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.xml" and result.runtime == "openvino"
    assert {p.name for p in (tmp_path / "ov" / "demo_ov" / "1").iterdir()} == {"model.xml", "model.bin"}
    assert validate_repository(tmp_path / "ov") == ["demo_ov"]


def test_labels_rewritten_with_the_index_are_refused_by_the_manifest(tiny, tmp_path):
    """Found by an attack: labels.txt edited and its sha256 rewritten in the index (which is not a signature) was served,
    astronaut photos answered as 'cat'. Each labels.txt must name the classes the artifact's hashed manifest names."""
    import json

    from edge_inception.serve.repository import copy_verified

    repo = tmp_path / "repo"
    assert cli("serve", "export", str(tiny.artifact), "-o", str(repo), "--kind", "python")[0] == 0
    for dest in ("ok", "forged"):
        (tmp_path / dest).mkdir()
    copy_verified(repo, tmp_path / "ok")  # the clean export passes
    labels = repo / "demo_fp32" / "labels.txt"
    names = labels.read_text().splitlines()
    labels.write_text("\n".join(["cat", *names[1:]]) + "\n")
    index = json.loads((repo / "edge-inception.json").read_text())
    index["files"]["demo_fp32/labels.txt"] = hashlib.sha256(labels.read_bytes()).hexdigest()
    (repo / "edge-inception.json").write_text(json.dumps(index))
    with pytest.raises(ServeError, match="demo_fp32/labels.txt line 1 differs from the class names the artifact's manifest holds"):
        copy_verified(repo, tmp_path / "forged")


def test_tensorrt_and_fixed_batch_configs_from_manifest_facts():
    """Config generation alone (no TensorRT here): tensorrt_plan on the GPU from a manifest's facts; a fixed-batch artifact
    is not batched by Triton natively (max_batch_size 0, the batch in its dims), while the Python backend pads and batches."""
    art = ServedArtifact(Path("m.plan"), Backend.tensorrt, (Path("m.plan"),), 224, 1000, tuple(f"c{i}" for i in range(1000)), "cuda", "fp16",
                         (1, 16), None)
    spec = classifier_spec(art, "m", ExportOptions(preferred_batch_sizes=(8, 16)))
    cfg = tc.parse(tc.render(spec), "trt")
    tc.check(cfg, spec, "trt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan" and cfg.max_batch_size == 16
    assert kind_name(cfg.instance_group[0].kind) == "KIND_GPU"  # from the manifest's device
    fixed = ServedArtifact(Path("m.ort.onnx"), Backend.ort, (), 224, 10, tuple("abcdefghij"), "cpu", "fp32", (4, 4), 4)
    native = tc.parse(tc.render(classifier_spec(fixed, "f", ExportOptions())), "f")
    assert native.max_batch_size == 0 and list(native.input[0].dims) == [4, 3, 224, 224] and not native.HasField("dynamic_batching")
    python = tc.parse(tc.render(classifier_spec(fixed, "f", ExportOptions(kind=tc.ServeKind.python))), "f")
    assert python.max_batch_size == 4 and list(python.input[0].dims) == [3, 224, 224]
    with pytest.raises(ServeError, match="preferred"):
        classifier_spec(art, "m", ExportOptions(preferred_batch_sizes=(32,)))
    other = classifier_spec(art, "m", ExportOptions())
    wrong = tc.parse(tc.render(other).replace("dims: 1000", "dims: 999"), "edited")
    with pytest.raises(ServeError, match="output"):
        tc.check(wrong, other, "edited")


def test_repositories_that_do_not_validate_are_refused(tiny, tmp_path):
    artifact = tiny.artifact
    repo = tmp_path / "repo"
    assert cli("serve", "export", str(artifact), "-o", str(repo), "--kind", "python")[0] == 0
    config = repo / "demo_fp32" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text + "\nnot_a_field: 3\n")
    code, _, err = cli("serve", "run", str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
    assert code == 1 and "demo_fp32/config.pbtxt does not match edge-inception.json" in one_error_line(err)
    code, _, err = cli("serve", "run", str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--trust-repository")
    assert code == 1 and "not a valid Triton model configuration" in one_error_line(err)  # Triton's schema, also when trusted
    config.write_text(text)
    (repo / "demo_fp32" / "labels.txt").write_text("edited\n")
    with pytest.raises(ServeError, match="labels.txt does not match"):
        validate_repository(repo)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("serve", "run", str(empty), "--grpc-port", "0")
    assert code == 1 and "no edge-inception.json" in one_error_line(err)
    code, _, err = cli("serve", "run", str(empty), "--grpc-port", "0", "--trust-repository")
    assert code == 1 and "not a Triton model repository" in one_error_line(err)
    assert cli("serve", "export", str(artifact), "-o", str(tmp_path / "native"))[0] == 0
    if _has_server() and find_tritonserver().pytriton_dir is not None:  # nvidia-pytriton's server: Python backend only
        code, _, err = cli("serve", "run", str(tmp_path / "native"), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
        assert code == 1 and "needs Triton's onnxruntime_onnx backend" in one_error_line(err) and "--kind python" in err
    code, _, err = cli("serve", "export", str(artifact), "-o", str(repo))  # exists: refused, the old one kept
    assert code == 1 and "--force" in one_error_line(err) and (repo / "demo_fp32" / "1").is_dir()
    code, _, err = cli("serve", "export", str(artifact), "-o", str(tmp_path / "x"), "--name", "../evil")
    assert code == 1 and "model name" in one_error_line(err) and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------------
# A real server, shared by the tests below


@pytest.fixture(scope="module")
def python_repo(tiny, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("serve") / "repo"
    export_repository(tiny.artifact, repo, ExportOptions(kind=tc.ServeKind.python, name="demo", preprocess=True, max_queue_delay_us=20_000))
    return repo


@pytest.fixture(scope="module")
def server(python_repo):
    if not _has_server():
        pytest.skip("no tritonserver (make setup installs nvidia-pytriton in .venv/triton-site)")
    s = TritonServer(python_repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=READY_S)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        assert_none_left(python_repo)


@needs_server
def test_served_outputs_and_labels_equal_the_local_artifact(server, tiny):
    artifact = tiny.artifact
    from edge_inception.data.images import load_batch
    from edge_inception.engines.registry import open_runner
    from edge_inception.serve.client import TritonRunner

    assert server.host == "127.0.0.1" and set(server.models) == {"demo", "demo_preprocess", "demo_images"}
    photos = sorted((tiny.data / "val").rglob("*.png"))[:6]
    x = load_batch(photos, 64)
    with open_runner(artifact) as local, TritonRunner(f"grpc://{server.endpoints.grpc}/demo", timeout_s=30) as remote:
        assert np.abs(remote.run(x) - local.run(x)).max() <= 1e-6

    args = [*map(str, photos), "--top-k", "3", "--json"]
    # the classifier gets tensors made as local predict makes them (default: fast); the ensemble taking the files' bytes
    # applies the reference transform on the server, so it is compared with local predict --preprocess exact
    for model, mode in (("demo", "fast"), ("demo_images", "exact")):
        local_top = [json.loads(line) for line in cli("predict", str(artifact), *args, "--preprocess", mode)[1].splitlines()]
        code, out, err = cli("predict", f"grpc://{server.endpoints.grpc}/{model}", *args, "--preprocess", mode)
        assert code == 0, err
        served = [json.loads(line) for line in out.splitlines()]
        assert [[t["label"] for t in p["top"]] for p in served] == [[t["label"] for t in p["top"]] for p in local_top]
        for s, loc in zip(served, local_top):
            assert np.allclose([t["score"] for t in s["top"]], [t["score"] for t in loc["top"]], atol=1e-5)


@needs_server
def test_an_unreadable_image_is_skipped_by_the_served_models_as_locally(server, tiny, tmp_path):
    """Found by a new user's walk: `predict grpc://.../demo_images fake.png cat.png` failed the whole request on the
    server's decode ("0 of 2 images classified"), where local predict skips the file and counts it. Both served forms
    now skip it as local predict does, with its line, and classify the rest."""
    photos = sorted((tiny.data / "val").rglob("*.png"))[:2]
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png")
    for model in ("demo", "demo_images"):
        code, out, err = cli("predict", f"grpc://{server.endpoints.grpc}/{model}", str(fake), *map(str, photos), "--top-k", "1", "--json")
        assert code == 0, (model, err)
        assert [json.loads(line)["image"] for line in out.splitlines()] == [str(p) for p in photos], (model, out)
        assert "fake.png" in err and "Traceback" not in err, (model, err)
    code, _, err = cli("predict", f"grpc://{server.endpoints.grpc}/demo_images", str(fake))
    assert code == 1 and one_error_line(err).startswith("error: ") and "fake.png" in err


@needs_server
def test_concurrent_requests_are_batched(server, tiny):
    """16 single-image requests from 8 threads: Triton's statistics show fewer executions than inferences."""
    from edge_inception.data.images import load_batch
    from edge_inception.serve.client import TritonClient

    x = load_batch(sorted((tiny.data / "val").rglob("*.png"))[:1], 64)
    with TritonClient(f"grpc://{server.endpoints.grpc}/demo", timeout_s=30) as client:
        inferences0, executions0 = client.statistics()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: client.logits(x), range(16)))
        inferences, executions = client.statistics()
    assert all(r.shape == (1, len(DEMO_CLASSES)) for r in results)
    assert inferences - inferences0 == 16
    assert executions - executions0 < 16  # at least one execution ran a batch of more than one request


@needs_server
def test_loadgen_scenarios_short(server, tiny, tmp_path):
    artifact = tiny.artifact
    target = f"grpc://{server.endpoints.grpc}/demo"
    code, out, err = cli("bench", target, "--scenario", "single-stream,multi-stream,offline,server", "--short", "--batch", "4",
                         "--concurrency", "4", "--data", str(tiny.data / "val"), "--json", str(tmp_path / "s.json"),
                         "--markdown", str(tmp_path / "s.md"), "--plot", str(tmp_path / "s.png"))
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())
    rows = {r["scenario"]: r for r in report["loadgen"]}
    assert set(rows) == {"SingleStream", "MultiStream", "Offline", "Server"}
    for name, r in rows.items():
        assert r["samples_per_s"] > 0 and r["metric_value"] > 0 and r["query_count"] >= 1, name
        assert r["valid"] or r["invalid_reasons"], name  # INVALID always says why
        assert r["short"] and r["settings"]["min_duration_ms"] == 1000
    assert rows["SingleStream"]["metric"].startswith("p90") and rows["MultiStream"]["metric"].startswith("p99")
    assert rows["Server"]["settings"]["server_target_qps"] > 0 and rows["MultiStream"]["settings"]["multi_stream_samples_per_query"] == 8
    assert any("NOT MLPerf-compliant" in n for n in report["notes"]) and "NOT MLPerf-compliant" in err
    assert "| SingleStream |" in (tmp_path / "s.md").read_text() and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"

    # in-process, with LoadGen's accuracy mode: top-1 equals `eval` on the same labelled images
    code, out, err = cli("bench", str(artifact), "--scenario", "offline", "--short", "--accuracy", "--data", str(tiny.data / "val"),
                         "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    acc = json.loads((tmp_path / "a.json").read_text())["loadgen"][0]
    from edge_inception.evaluate.predict import evaluate

    expected = evaluate(artifact, tiny.data / "val")
    assert acc["accuracy_samples"] == expected.images and acc["top1"] == pytest.approx(expected.top1)


@needs_server
def test_system_shared_memory_carries_the_same_tensors_and_leaves_nothing(server, tiny, tmp_path):
    """--shared-memory system (Triton's shared-memory extension, as perf_analyzer's): the same scores as the gRPC
    messages carry, LoadGen's accuracy equal to `eval`'s, and afterwards no region registered with the server nor left
    in /dev/shm; a batch larger than the regions goes in the messages. Where it cannot apply, one line."""
    import tritonclient.grpc as grpcclient

    from edge_inception.serve.client import TritonClient
    from edge_inception.serve.shm import SHM_DIR

    target = f"grpc://{server.endpoints.grpc}/demo"
    x = np.random.default_rng(3).standard_normal((6, 3, 64, 64)).astype(np.float32)
    with TritonClient(target, timeout_s=30) as plain, TritonClient(target, timeout_s=30) as shared:
        shared.use_shared_memory(4, 2, prefix=f"edge-inception-test-{os.getpid()}")
        regions = sorted(p.name for p in SHM_DIR.glob(f"edge-inception-test-{os.getpid()}-*"))
        assert regions == [f"edge-inception-test-{os.getpid()}-{i}-{d}" for i in range(2) for d in ("in", "out")]
        assert all((SHM_DIR / r).stat().st_mode & 0o777 == 0o600 for r in regions)  # this user's alone
        for n in (1, 4, 6):  # 6 > the regions' 4: through the messages
            got = shared.logits(x[:n])
            assert np.array_equal(got, plain.logits(x[:n]))
            if n == 4:  # the scores came through one of the output regions
                written = [np.fromfile(SHM_DIR / r, dtype="<f4", count=got.size).reshape(got.shape) for r in regions if r.endswith("-out")]
                assert any(np.array_equal(w, got) for w in written)
    assert not any((SHM_DIR / r).exists() for r in regions)
    with contextlib.closing(grpcclient.InferenceServerClient(server.endpoints.grpc)) as raw:
        assert list(raw.get_system_shared_memory_status().regions) == []

    code, _, err = cli("bench", target, "--scenario", "offline,single-stream", "--short", "--accuracy", "--concurrency", "2", "--batch", "4",
                       "--data", str(tiny.data / "val"), "--shared-memory", "system", "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    from edge_inception.evaluate.predict import evaluate

    expected = evaluate(tiny.artifact, tiny.data / "val")
    for row in json.loads((tmp_path / "a.json").read_text())["loadgen"]:
        assert row["accuracy_samples"] == expected.images and row["top1"] == pytest.approx(expected.top1), row["scenario"]
    assert list(SHM_DIR.glob(f"edge-inception-shm-{os.getpid()}-*")) == []
    with contextlib.closing(grpcclient.InferenceServerClient(server.endpoints.grpc)) as raw:
        assert list(raw.get_system_shared_memory_status().regions) == []

    code, _, err = cli("bench", str(tiny.artifact), "--scenario", "offline", "--short", "--shared-memory", "system")
    assert code == 1 and "--shared-memory system is for a served model" in one_error_line(err)
    code, _, err = cli("bench", str(tiny.artifact), "--shared-memory", "system")
    assert code == 1 and "--shared-memory is for --scenario" in one_error_line(err)


@needs_server
def test_bad_targets_get_one_line(server, tmp_path):
    code, _, err = cli("predict", f"grpc://{server.endpoints.grpc}/nosuch", str(tmp_path / "x.png"))
    assert code == 1 and "model 'nosuch' is not ready" in one_error_line(err) and "demo" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code, _, err = cli("predict", f"grpc://127.0.0.1:{free}/demo", str(tmp_path / "x.png"))  # nothing listens
    assert code == 1 and "cannot reach a Triton server" in one_error_line(err)
    code, _, err = cli("predict", "grpc://127.0.0.1:99999/demo", str(tmp_path / "x.png"))
    assert code == 1 and "grpc://HOST:PORT/MODEL" in one_error_line(err)
    code, _, err = cli("serve", "run", str(server.repo), "--grpc-port", str(server.endpoints.grpc_port), "--http-port", "0", "--metrics-port", "0")
    assert code == 1 and f"port {server.endpoints.grpc_port} on 127.0.0.1 is in use" in one_error_line(err)

    from edge_inception.serve.client import TritonClient

    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers: bounded by the deadline
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="did not answer within 1 s"):
            TritonClient(f"grpc://127.0.0.1:{silent.getsockname()[1]}/demo", timeout_s=1).connect()
        # not a speed figure: a client that ignored its 1 s deadline would wait on the silent socket for ever; 20 x the
        # deadline leaves room for a loaded machine and still tells the two apart
        assert time.monotonic() - t0 < 20


# ---------------------------------------------------------------------------------------------------------------------
# serve run as a user starts it: SIGTERM, and a server that never gets ready


def _start_cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge_inception", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill_group(proc: subprocess.Popen[str], repo: Path | None = None) -> None:
    """Stop a serve run the test started, also when the test failed: SIGTERM (it stops its server), then SIGKILL to its
    group; tritonserver runs in a session of its own, so whatever still serves ``repo`` is killed by its group too."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in pids_of(repo) if repo is not None else {}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@needs_server
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_serve_run_stops_everything_on_sigterm(python_repo, tmp_path, sig):
    """SIGTERM: serve run stops tritonserver and its stubs, exit 143. SIGKILL (the OOM killer): serve run cannot act, but
    tritonserver was started to get SIGTERM when its parent dies (PR_SET_PDEATHSIG), so nothing serves on; the private
    copy it served from is removed by the next run that makes one."""
    import tempfile

    from edge_inception.fileio import private_tempdir

    python_repo = Path(shutil.copytree(python_repo, tmp_path / "repo"))  # its own copy: the module's server runs on the other
    proc = _start_cli(["serve", "run", str(python_repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-timeout",
                       str(READY_S)])
    try:
        lines = _read_until_ready(proc, "demo_preprocess")  # the last model line: ready, endpoints printed
        assert any("gRPC     127.0.0.1:" in ln for ln in lines), (lines, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        assert processes_of(python_repo)  # tritonserver and its Python stubs run
        copies = sorted(Path(tempfile.gettempdir()).glob(f"edge-inception-triton-{proc.pid}-*"))
        assert len(copies) == 1, copies
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
        assert_none_left(python_repo, within_s=20)  # before the clean-up below could kill anything
    finally:
        _kill_group(proc, python_repo)
    assert_none_left(python_repo, within_s=5)
    shutil.rmtree(private_tempdir("triton"))  # a new run's folder: making it sweeps the dead run's
    assert not copies[0].exists()


@needs_server
def test_a_server_that_never_gets_ready_is_stopped(tmp_path):
    """A Python model whose initialize sleeps: the bounded wait ends it, and nothing of it is left."""
    repo = tmp_path / "slow"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 1\ninput [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
                                                'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n')
    model = ("import os, sys, time\nsys.path[:0] = os.environ['EDGE_INCEPTION_SYS_PATH'].split(os.pathsep)  # NumPy for the stub\n\n"
             "class TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(600)\n")
    (repo / "slow" / "1" / "model.py").write_text(model)
    t0 = time.monotonic()
    with stub_regions_seen(repo) as regions:
        code, _, err = cli("serve", "run", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-timeout", "3",
                           "--trust-repository")
    assert code == 1 and "was not ready within 3 s" in one_error_line(err)
    # its stub's shared memory is not left in /dev/shm (the server, stopped before it was ready, would leave it)
    assert regions and not any((Path("/dev/shm") / r).exists() for r in regions)
    # the model takes 600 s to load: an answer well before that means --ready-timeout stopped the wait (not a speed figure;
    # the margin is for a loaded machine)
    assert time.monotonic() - t0 < 300
    assert_none_left(repo, within_s=5)


@needs_server
def test_a_backend_under_numpy_2_refuses_to_load(python_repo, tmp_path, monkeypatch):
    """nvidia-pytriton's stub answers zero bytes under NumPy 2: with a site folder holding the server but no NumPy 1.26,
    the model refuses to load and serve run says why in one line."""
    from edge_inception.serve.site import triton_site

    real = triton_site()
    site = tmp_path / "site"
    site.mkdir()
    for name in ("pytriton", "nvidia_pytriton.libs", *(p.name for p in real.glob("nvidia_pytriton-*.dist-info"))):
        (site / name).symlink_to(real / name)
    monkeypatch.setenv("EDGE_INCEPTION_TRITON_SITE", str(site))
    python_repo = Path(shutil.copytree(python_repo, tmp_path / "repo"))
    code, _, err = cli("serve", "run", str(python_repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-timeout", "60")
    assert code == 1 and "needs NumPy < 2" in one_error_line(err) and len(err.strip().splitlines()) == 1
    assert_none_left(python_repo, within_s=5)


@needs_server
def test_model_control_is_off(server):
    """What --host's warning says a network peer cannot do: load or unload models (Triton's model control mode NONE)."""
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    client = InferenceServerClient(server.endpoints.grpc)
    try:
        with pytest.raises(InferenceServerException):
            client.unload_model("demo", client_timeout=10)
        assert client.is_model_ready("demo", client_timeout=10)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------------------------
# serve run serves what serve export wrote, and only that (issue 38, kind 6); faults while serving (issue 35)

MARKER_MODEL = '''import os, sys
sys.path[:0] = os.environ.get("EDGE_INCEPTION_SYS_PATH", "").split(os.pathsep)  # NumPy for the stub
open({marker!r}, "w").write("ran")  # at import: the proof that this file ran as code


class TritonPythonModel:
    def execute(self, requests):
        return []
'''


def add_marker_model(repo: Path, marker: Path, name: str = "evil") -> None:
    """A model folder serve export did not write: a Python model whose model.py writes ``marker`` when the stub imports it."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\nmax_batch_size: 1\n'
                                              'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
                                              'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n')
    (repo / name / "1" / "model.py").write_text(MARKER_MODEL.format(marker=str(marker)))


@pytest.fixture(scope="module")
def plain_repo(tiny, tmp_path_factory) -> Path:
    """One Python-kind model (one stub): the repository the serve run tests below copy, change and start."""
    repo = tmp_path_factory.mktemp("plain") / "repo"
    export_repository(tiny.artifact, repo, ExportOptions(kind=tc.ServeKind.python, name="demo"))
    return repo


def _fresh(repo: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(repo, tmp_path / name, symlinks=True))


def test_serve_run_refuses_what_serve_export_did_not_write(plain_repo, tmp_path):
    """Each kind of foreign content is refused before tritonserver starts: one error line naming it (escaped, bounded),
    exit 1, nothing run (the extra model's model.py never imported: its marker file never appears), nothing left."""
    marker = tmp_path / "marker"
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]

    def refused(repo: Path, needle: str) -> str:
        t0 = time.monotonic()
        code, out, err = cli("serve", "run", str(repo), *ports)
        line = one_error_line(err)
        assert code == 1 and needle in line and len(err.strip().splitlines()) == 1, err
        # no FIFO read (that would block for ever) and no server waited for (--ready-timeout's default, 120 s): a bound that
        # tells those apart from a refusal on a loaded machine, not a speed figure
        assert time.monotonic() - t0 < 100
        assert not marker.exists() and processes_of(repo) == []
        return line

    repo = _fresh(plain_repo, tmp_path, "extra-model")
    add_marker_model(repo, marker)
    refused(repo, "1 entry not written by serve export (evil (a folder))")

    repo = _fresh(plain_repo, tmp_path, "link-out")
    (repo / "demo" / "labels.txt").unlink()
    (repo / "demo" / "labels.txt").symlink_to("/etc/passwd")
    line = refused(repo, "demo/labels.txt (a link)")
    assert "root:" not in line

    repo = _fresh(plain_repo, tmp_path, "fifo")
    os.mkfifo(repo / "demo" / "1" / "pipe")
    refused(repo, "demo/1/pipe (a FIFO)")

    repo = _fresh(plain_repo, tmp_path, "edited")
    with open(repo / "demo" / "1" / "model.py", "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    refused(repo, "demo/1/model.py does not match edge-inception.json")

    repo = _fresh(plain_repo, tmp_path, "missing")
    (repo / "demo" / "sys_path.json").unlink()
    refused(repo, "demo/sys_path.json is missing")

    repo = _fresh(plain_repo, tmp_path, "no-index")
    (repo / "edge-inception.json").unlink()
    refused(repo, "no edge-inception.json")

    repo = _fresh(plain_repo, tmp_path, "index-out")
    index = json.loads((repo / "edge-inception.json").read_text())
    index["files"]["../outside"] = "0" * 64
    (repo / "edge-inception.json").write_text(json.dumps(index))
    refused(repo, "is not a path inside the folder")

    repo = _fresh(plain_repo, tmp_path, "names")
    for i in range(20):
        (repo / f"x\x1b[2J\u202e{i:02d}").write_text("")
    line = refused(repo, "20 entries not written by serve export")
    assert "\x1b" not in line and "\u202e" not in line and "\\x1b[2J\\u202e00" in line and "and 12 more" in line and len(line) < 1000


def _read_until_ready(proc: subprocess.Popen[str], needle: str) -> list[str]:
    lines = []
    deadline = time.monotonic() + READY_S + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError((lines, proc.stderr.read() if proc.poll() is not None and proc.stderr else ""))


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """(local address, port) of every listening TCP socket the processes ``pids`` hold (their fds' socket inodes, looked up
    in /proc/net/tcp and tcp6; an IPv4-mapped IPv6 address as its IPv4 one)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN
                addr, port = fields[1].split(":")
                ip = (socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else
                      socket.inet_ntop(socket.AF_INET6, b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))))
                mapped = ipaddress.ip_address(ip)
                mapped = getattr(mapped, "ipv4_mapped", None) or mapped  # gRPC binds ::ffff:127.0.0.1, IPv4's loopback
                found.append((str(mapped), int(port, 16)))
    return found


@needs_server
def test_trust_repository_serves_as_triton_would_with_a_warning_and_ctrl_c_stops_it(plain_repo, tmp_path):
    """--trust-repository: one warning line, then Triton's own rules (the extra model loads: its model.py ran, which is
    what the warning says). While it runs, every listening socket of the server and its stubs is on 127.0.0.1. SIGINT
    (Ctrl-C): exit 130, nothing left."""
    repo = _fresh(plain_repo, tmp_path, "trusted")
    marker = tmp_path / "marker"
    add_marker_model(repo, marker)
    proc = _start_cli(["serve", "run", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-timeout",
                       str(READY_S), "--trust-repository"])
    try:
        lines = _read_until_ready(proc, "model    grpc://")
        while not any("/evil" in ln for ln in lines) or not any("/demo" in ln for ln in lines):
            lines.append(proc.stdout.readline() if proc.stdout else "")
        assert marker.read_text() == "ran"
        pids = list(pids_of(repo))
        assert len(pids) >= 3  # tritonserver and a stub per Python model
        sockets = listening(pids)
        ports = {int(ln.rsplit(":", 1)[1].split("/")[0]) for ln in lines if ln.strip().startswith(("HTTP", "gRPC", "metrics"))}
        assert {p for _, p in sockets} == ports and len(ports) == 3
        assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        err = proc.stderr.read() if proc.stderr else ""
        warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and "--trust-repository" in warnings[0] and "run as code" in warnings[0] and "Traceback" not in err
        assert "interrupted" in err
    finally:
        _kill_group(proc, repo)
    assert_none_left(repo, within_s=5)


@needs_server
@pytest.mark.parametrize("victim", ["stub", "tritonserver"])
def test_serve_run_exits_when_a_stub_or_its_server_dies(plain_repo, tmp_path, victim):
    """kill -9 of the Python backend stub, or of tritonserver: serve run says so in one line and exits 1 within 30 s
    (it watches both every 0.5 s; 30 s bounds a loaded machine), and nothing of it is left running."""
    repo = _fresh(plain_repo, tmp_path, "repo")
    proc = _start_cli(["serve", "run", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-timeout", str(READY_S)])
    try:
        _read_until_ready(proc, "model    grpc://")
        running = pids_of(repo)
        pick = [pid for pid, cmd in running.items() if ("triton_python_backend_stub" in cmd) == (victim == "stub")]
        assert len(pick) == 1, running
        os.kill(pick[0], signal.SIGKILL)
        # a serve run that missed the death would serve on until signalled: wait's timeout only guards against that hang
        code = proc.wait(timeout=120)
        assert code == 1
        err = proc.stderr.read() if proc.stderr else ""
        line = one_error_line(err)
        assert len(err.strip().splitlines()) == 1, err
        expected = "the Python backend stub of model demo" if victim == "stub" else "tritonserver exited on its own (killed by signal 9)"
        assert expected in line and (victim != "stub" or "died" in line)
    finally:
        _kill_group(proc, repo)
    assert_none_left(repo, within_s=5)


def test_host_other_than_loopback_warns_in_one_line(plain_repo):
    """--host 192.0.2.1 (TEST-NET-1, on no interface here: nothing is bound): the warning line says Triton has no
    authentication and what it exposes, before the bind fails in one error line."""
    from edge_inception.serve.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.com")
    code, _, err = cli("serve", "run", str(plain_repo), "--host", "192.0.2.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2 and lines[0].startswith("warning: --host 192.0.2.1: Triton has no authentication")
    assert all(word in lines[0] for word in ("inference", "HTTP", "gRPC", "metrics", "model control"))
    assert "cannot bind 192.0.2.1" in one_error_line(err)
    code, _, err = cli("serve", "run", str(plain_repo.parent / "nosuch"), "--host", "127.0.0.1")  # refused before any start
    assert code == 1 and "warning" not in err and "model repository not found" in one_error_line(err)
