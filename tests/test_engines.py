import importlib.util
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.data.images import bundled_photos, load_batch
from edge_inception.engines.build import MIN_COSINE, build
from edge_inception.engines.manifest import Manifest, read_manifest
from edge_inception.engines.registry import open_runner
from edge_inception.engines.targets import get_target, list_targets
from edge_inception.engines.tensorrt import check_engine_compat, plan_build
from edge_inception.errors import ManifestError, TargetError
from edge_inception.evaluate.verify import compare
from edge_inception.onnx_file import ort_session, run_session
from edge_inception.vocab import PreprocessMode

runner = CliRunner()


@pytest.fixture(scope="module")
def built(cpu_builds):
    return cpu_builds


def test_cpu_builds_match_their_source(built):
    photos = load_batch(bundled_photos()[:4], 64)
    for prec, (src, result) in built.items():
        assert result.manifest.precision == prec and result.manifest.backend == "ort"
        ref = run_session(ort_session(src), photos)
        with open_runner(result.artifact) as r:
            got = r.infer(photos)
        p = compare(ref, got)
        if prec == "fp32":
            assert p.max_rel_error <= 1e-5
        assert p.top1_agreement == 1.0
        m = json.loads(result.artifact.with_name(result.artifact.name + ".manifest.json").read_text())
        assert m["source_sha256"] and m["libraries"]["onnxruntime"] and m["input_shapes"]["max"] == [32, 3, 64, 64]
    assert built["int8"][1].manifest.options["folded_weight_dequantize"] == 0  # INT8 compute keeps its INT8 weights


def test_cpu_build_folds_weight_only_int8_once(trained, tmp_path):
    import onnx

    from edge_inception.convert.graph_ops import int8_weights

    model = onnx.load(str(trained.onnx))
    layers = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    assert int8_weights(model, layers) == len(layers)  # INT8 weights, float compute: what the guard keeps
    onnx.save(model, str(tmp_path / "w8.onnx"))
    result = build(tmp_path / "w8.onnx", "cpu", output_dir=tmp_path / "cpu")
    assert result.manifest.options["folded_weight_dequantize"] == len(layers)
    assert result.parity.max_rel_error < 1e-5  # the same arithmetic, done once at build time
    artifact = onnx.load(str(result.artifact))
    assert not [n for n in artifact.graph.node if n.op_type == "DequantizeLinear"]


def test_predict_prints_labels(built, trained):
    artifact = built["int8"][1].artifact
    chelsea = [p for p in bundled_photos() if p.name == "chelsea.png"]
    r = runner.invoke(app, ["predict", str(artifact), str(chelsea[0]), "--top-k", "3"])
    assert r.exit_code == 0, r.output
    classes = trained.result.classes
    assert sum(1 for line in r.stdout.splitlines() if any(f"  {c} (" in line for c in classes)) == 3

    folder = trained.data / "val" / "cat"
    r = runner.invoke(app, ["predict", str(artifact), str(folder), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    files = sorted(folder.glob("*.png"))
    assert [row["image"] for row in rows] == [str(f) for f in files]
    with open_runner(artifact) as run:
        logits = run.infer(load_batch(files, 64, PreprocessMode.fast))  # what predict feeds by default
    for row, own in zip(rows, logits):
        scores = [t["score"] for t in row["top"]]
        assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        assert row["top"][0]["index"] == int(own.argmax()) and row["top"][0]["label"] == classes[int(own.argmax())]
        softmax = np.exp(own - own.max()) / np.exp(own - own.max()).sum()
        assert scores[0] == pytest.approx(float(softmax.max()), abs=1e-6)


def test_predict_globs_and_folders(built, trained, monkeypatch):
    artifact = built["fp32"][1].artifact
    monkeypatch.chdir(trained.data / "val")
    r = runner.invoke(app, ["predict", str(artifact), "cat/*_00[0-2].png", "coins", "--top-k", "1", "--json"])
    assert r.exit_code == 0, r.output
    images = [json.loads(line)["image"] for line in r.stdout.splitlines()]
    assert images == ["cat/cat_000.png", "cat/cat_001.png", "cat/cat_002.png"] + [f"coins/coins_{i:03d}.png" for i in range(10)]
    r = runner.invoke(app, ["predict", str(artifact), "nothing/*.png"])
    assert r.exit_code == 1 and "no such image or folder" in r.stderr


def test_eval_folders_by_synset_id_and_class_index(tmp_path, trained):
    """A 1000-class model: class folders named n01440764-style or 0-999 map to the right outputs."""
    from edge_inception.convert.export import export_model
    from edge_inception.model.labels import imagenet_classes

    model = export_model(None, tmp_path / "in1k.onnx", image_size=64).path
    photos = sorted((trained.data / "val" / "cat").glob("*.png"))[:4]
    with open_runner(model) as run:
        top = run.infer(load_batch(photos, 64)).argmax(1)
    # put each photo in the folder of the class the model gives it, half by synset id, half by index: 100 % by construction
    for i, (photo, cls) in enumerate(zip(photos, top)):
        name = imagenet_classes()[int(cls)].wnid if i % 2 else str(int(cls))
        (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name / photo.name).write_bytes(photo.read_bytes())
    r = runner.invoke(app, ["eval", str(model), "--data", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("4 images: top-1 100.00%, top-5 100.00%")
    (tmp_path / "data" / "not-a-class").mkdir()
    (tmp_path / "data" / "not-a-class" / "x.png").write_bytes(photos[0].read_bytes())
    r = runner.invoke(app, ["eval", str(model), "--data", str(tmp_path / "data")])
    assert r.exit_code == 1 and "class folder 'not-a-class' matches no class" in r.stderr


def test_eval_on_labelled_folder(built, trained):
    r = runner.invoke(app, ["eval", str(built["fp32"][1].artifact), "--data", str(trained.data / "val")])
    assert r.exit_code == 0, r.output
    top1 = float(r.stdout.split("top-1 ")[1].split("%")[0]) / 100
    assert top1 == pytest.approx(trained.result.best_val_acc, abs=0.011)


def test_manifest_errors(built, tmp_path):
    src, result = built["fp32"]
    art = result.artifact
    copy = tmp_path / art.name
    copy.write_bytes(art.read_bytes())
    with pytest.raises(ManifestError, match="manifest .* is missing"):
        read_manifest(copy)
    (tmp_path / (art.name + ".manifest.json")).write_text(art.with_name(art.name + ".manifest.json").read_text())
    read_manifest(copy)
    copy.write_bytes(art.read_bytes() + b"\0")
    r = runner.invoke(app, ["predict", str(copy), str(bundled_photos()[0])])
    assert r.exit_code == 1 and "does not match its manifest" in r.stderr and "Traceback" not in r.output


def test_bad_inputs(built, tmp_path):
    src = built["fp32"][0]
    r = runner.invoke(app, ["build", str(src), "--target", "mars"])
    assert r.exit_code == 1 and "unknown target 'mars'" in r.stderr
    r = runner.invoke(app, ["build", str(built["int8"][0]), "--target", "jetson-nano", "--backend", "tensorrt"])
    assert r.exit_code == 1 and "cannot run int8" in r.stderr
    (tmp_path / "x.jpg").write_text("not an image")
    r = runner.invoke(app, ["predict", str(built["fp32"][1].artifact), str(tmp_path / "x.jpg")])
    assert r.exit_code == 1 and "not a readable image" in r.stderr


def test_targets_listed_and_user_targets(tmp_path):
    names = set(list_targets())
    assert {"cpu", "gpu", "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"} <= names
    (tmp_path / "mine.toml").write_text('name = "mine"\ndescription = "x"\ndevice = "cpu"\nbackend = "ort"\ndefault_precision = "fp32"\n'
                                        'precisions = ["fp32"]\nbatch = { min = 1, opt = 2, max = 4 }\n')
    assert get_target("mine", tmp_path).batch_opt == 2
    (tmp_path / "bad.toml").write_text('name = "bad"\nbackend = "ort"\n')
    with pytest.raises(TargetError, match="bad.toml"):
        list_targets(tmp_path)


# --- TensorRT decisions: plain functions, no TensorRT needed -------------------------------------------------------

def test_trt_plan_by_version_and_target():
    gpu = get_target("gpu")
    p10 = plan_build(gpu, "int8", "10.13.0", 224)
    assert p10.strongly_typed and p10.builder_flags == () and not p10.explicit_batch_flag
    assert p10.profile == ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    assert plan_build(gpu, "fp16", "11.0.0", 224).builder_flags == ()
    nano = get_target("jetson-nano")
    p8 = plan_build(nano, "fp16", nano.tensorrt_version, 224)
    assert not p8.strongly_typed and p8.builder_flags == ("FP16",) and p8.explicit_batch_flag
    with pytest.raises(TargetError, match="cannot run int8"):
        plan_build(nano, "int8", "8.2", 224)


def test_trt_dla_plan_is_fixed_shape_with_gpu_fallback():
    agx = get_target("jetson-agx-orin")
    plan = plan_build(agx, "int8", agx.tensorrt_version, 224)
    assert plan.dla_core == 0 and plan.builder_flags == ("INT8", "FP16", "GPU_FALLBACK") and not plan.strongly_typed
    assert plan.profile[0] == plan.profile[1] == plan.profile[2] == (8, 3, 224, 224)
    assert plan_build(agx, "fp32", agx.tensorrt_version, 224).dla_core is None  # DLA runs fp16/int8 only
    with pytest.raises(TargetError, match="DLA"):
        plan_build(agx, "int8", "11.1", 224)


def test_trt_engine_compat_checks():
    m = Manifest("tensorrt", "gpu", "fp16", "m.engine", "0" * 64, "m.onnx", "1" * 64, 224, 1000, {}, {"tensorrt": "10.13.0"},
                 gpu={"name": "NVIDIA H100", "compute_capability": "9.0"})
    check_engine_compat(m, "10.13.0", "NVIDIA H100", "9.0")
    with pytest.raises(ManifestError, match="TensorRT 10.13.0, this machine has 10.3.0: rebuild"):
        check_engine_compat(m, "10.3.0", "NVIDIA H100", "9.0")
    with pytest.raises(ManifestError, match="sm 8.7.*rebuild"):
        check_engine_compat(m, "10.13.0", "Orin", "8.7")


def _tensorrt_skip_reason() -> str | None:
    """Each reason on its own: no TensorRT bindings (or only the stubs), or bindings but no CUDA device."""
    from edge_inception.engines.tensorrt import cuda_device, tensorrt_missing
    from edge_inception.errors import BackendUnavailableError

    missing = tensorrt_missing()
    if missing:
        return f"TensorRT is not usable here: {missing}"
    try:
        cuda_device()
    except BackendUnavailableError as exc:
        return f"TensorRT is installed but there is no CUDA device: {exc}"
    return None


@pytest.mark.skipif(_tensorrt_skip_reason() is not None, reason=str(_tensorrt_skip_reason()))
def test_tensorrt_engine_build_and_run(built, tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    src, _ = built["fp16"]
    result = build(src, "gpu", output_dir=tmp_path)
    assert result.parity.mean_cosine >= MIN_COSINE  # the build's rule for a reduced-precision artifact, as above


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO (optional extra) is not installed")
def test_openvino_build_matches(built, tmp_path):
    src, _ = built["int8"]
    result = build(src, "cpu", backend="openvino", output_dir=tmp_path)
    # the build's own rule for a reduced-precision artifact (what was kept passed it); top-1 agreement between two INT8
    # kernels depends on the CPU (VNNI or not) and the trained net's near-ties, so it is no promise
    assert result.artifact.suffix == ".xml" and result.parity.mean_cosine >= MIN_COSINE and result.parity.samples > 0


def test_openvino_pins_threads_only_when_it_takes_every_cpu(built, tmp_path):
    """Two engines of one thread each on one machine (two --cluster workers) pinned their threads to the same first core
    and ran at half speed: OpenVINO pins only an engine given every CPU this process may use."""
    from edge_inception.engines.openvino import OpenVinoRunner, pins_threads
    from edge_inception.limits import usable_cpus

    assert pins_threads(0, 2) and pins_threads(2, 2) and pins_threads(4, 2) and pins_threads(1, 1)
    assert not pins_threads(1, 2) and not pins_threads(3, 8)
    if importlib.util.find_spec("openvino") is None:
        return
    xml = build(built["fp32"][0], "cpu", backend="openvino", output_dir=tmp_path).artifact
    import openvino as ov

    def pinned(threads: int) -> bool:
        with OpenVinoRunner(xml, threads=threads) as runner:
            return runner.request.get_compiled_model().get_property("ENABLE_CPU_PINNING")

    # an engine on every CPU keeps OpenVINO's own choice; one thread of several is not pinned
    assert pinned(0) == ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY"}).get_property("ENABLE_CPU_PINNING")
    assert usable_cpus() == 1 or pinned(1) is False




@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU: the PyTorch runner on CUDA cannot run here")
def test_torch_runner_on_cuda_matches_cpu(trained):
    from edge_inception.engines.pytorch import TorchRunner

    x = load_batch(bundled_photos()[:4], 64)
    outputs = {}
    for device in ("cpu", "cuda"):
        with TorchRunner(trained.checkpoint, device=device) as r:
            outputs[device] = r.infer(x)
    d = compare(outputs["cpu"], outputs["cuda"])
    # cuDNN's convolution algorithms round differently from the CPU's (TF32 is off by default for convolutions)
    assert d.top1_agreement == 1.0 and d.max_rel_error < 1e-3


def test_build_without_backend_picks_the_fastest_measured_and_remembers(int8_relaxed, tmp_path, monkeypatch):
    """`build --target cpu` without --backend on a real INT8 model: every CPU backend installed is measured on this
    machine, the fastest (by the pure rule, on the recorded figures) is built, and stderr says which and why; the
    record is remembered (hash-checked: a tampered one is measured again); --backend forces one."""
    from edge_inception.engines.candidates import NOISE
    from edge_inception.engines.candidates import missing_backends as missing_of
    from edge_inception.engines.choose import BackendTime, fastest_backend
    from edge_inception.fileio import record_digest
    from edge_inception.vocab import Backend, Precision

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("one CPU backend only: nothing to choose between")
    monkeypatch.setenv("EDGE_INCEPTION_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.int8.onnx"  # a real Q/DQ INT8 graph from our quantizer (the session's, kept between runs: conftest)
    shutil.copyfile(int8_relaxed.path, src)
    r = runner.invoke(app, ["build", str(src), "--target", "cpu", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    records = list((tmp_path / "cache" / "backend-choice").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["sha256"] == record_digest(rec) and rec["precision"] == "int8" and {t["backend"] for t in rec["times"]} == {"ort", "openvino"}
    assert all(t["p50_ms"] > 0 for t in rec["times"])
    cpu = get_target("cpu")
    expected = fastest_backend(cpu, Precision.int8, None, missing_of(cpu),
                               [BackendTime(Backend(t["backend"]), t["p50_ms"], t["failure"]) for t in rec["times"]], source="", noise=NOISE)
    line = next(x for x in r.stderr.splitlines() if x.startswith("backend: "))
    assert line.startswith(f"backend: {expected.backend.value} on the CPU: ") and "measured now" in line and "ms" in line
    made = next((tmp_path / "a").glob("*.manifest.json"))
    assert json.loads(made.read_text())["backend"] == expected.backend.value

    again = runner.invoke(app, ["build", str(src), "--target", "cpu", "-o", str(tmp_path / "b")])
    assert again.exit_code == 0 and f"backend: {expected.backend.value} on the CPU: " in again.stderr and "remembered from" in again.stderr

    rec["times"] = [{**t, "p50_ms": 1e-3 if t["backend"] != expected.backend.value else 1e3} for t in rec["times"]]  # hash not updated
    records[0].write_text(json.dumps(rec))
    tampered = runner.invoke(app, ["build", str(src), "--target", "cpu", "-o", str(tmp_path / "c")])
    assert tampered.exit_code == 0 and "measured now" in tampered.stderr  # the forged figures were not believed

    for forced in ("ort", "openvino"):
        f = runner.invoke(app, ["build", str(src), "--target", "cpu", "--backend", forced, "-o", str(tmp_path / forced)])
        assert f.exit_code == 0, f.output
        assert "backend: " not in f.stderr  # nothing measured, nothing to explain
        assert json.loads(next((tmp_path / forced).glob("*.manifest.json")).read_text())["backend"] == forced


def test_a_backend_record_rewritten_with_its_hash_is_still_checked_field_by_field(tmp_path):
    """The record's sha256 is its own: whoever edits it can recompute it. So each field is still checked as
    pick_backend writes it before the record may choose a backend: a batch other than the one measured for the model
    (or absurd), a 'disturbed' that is not a bool, a backend listed twice, no times, a time and a failure both or
    neither, an unbounded text. Each such record is measured again (None); the record as written is taken."""
    from edge_inception.autobuild import read_pick_record
    from edge_inception.fileio import record_digest

    good = {"key": "k", "cpu": "c", "batch": 1, "measured_at": "2026-01-01 00:00:00 UTC", "disturbed": False,
            "times": [{"backend": "ort", "p50_ms": 0.5, "failure": None}, {"backend": "openvino", "p50_ms": None, "failure": "no"}]}
    path = tmp_path / "k.json"

    def read(doc: dict, batch: int | None = 1) -> dict | None:
        path.write_text(json.dumps({**doc, "sha256": record_digest(doc)}))
        return read_pick_record(path, "k", batch)

    assert read(good) is not None
    forged = [{**good, "batch": 10**30}, {**good, "disturbed": "yes"}, {**good, "times": []}, {**good, "measured_at": "x" * 100_000},
              {**good, "times": [good["times"][0], good["times"][0]]},
              {**good, "times": [{"backend": "ort", "p50_ms": 0.5, "failure": "both"}]},
              {**good, "times": [{"backend": "ort", "p50_ms": None, "failure": None}]}]
    for doc in forged:
        assert read(doc) is None, doc
    assert read({**good, "batch": 8}) is None and read({**good, "batch": 8}, batch=8) is not None  # the batch this model is measured at


def test_ort_spinning_is_the_users_choice(trained, monkeypatch):
    """EDGE_INCEPTION_ORT_SPINNING (README): 0 turns ONNX Runtime's idle spin off in the sessions the product opens, 1
    leaves ONNX Runtime's default (the key unset), any other value is one line naming the variable, no traceback."""
    monkeypatch.setenv("EDGE_INCEPTION_ORT_SPINNING", "0")
    opts = ort_session(trained.onnx).get_session_options()
    assert [opts.get_session_config_entry(f"session.{pool}.allow_spinning") for pool in ("intra_op", "inter_op")] == ["0", "0"]
    monkeypatch.setenv("EDGE_INCEPTION_ORT_SPINNING", "1")
    with pytest.raises(RuntimeError, match="allow_spinning"):  # ONNX Runtime's own default: the key is not set
        ort_session(trained.onnx).get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    photo = sorted((trained.data / "val" / "cat").glob("*.png"))[0]
    monkeypatch.setenv("EDGE_INCEPTION_ORT_SPINNING", "off")
    r = runner.invoke(app, ["predict", str(trained.onnx), str(photo)])
    assert r.exit_code == 1 and "EDGE_INCEPTION_ORT_SPINNING='off': give 0" in r.stderr and "Traceback" not in r.stderr, r.output
    # refused before any command runs: where the engines run in other processes (eval --cluster's Ray workers, Triton's
    # backend) the value would otherwise fail there, as Ray's traceback; `targets` opens no engine at all
    r = runner.invoke(app, ["targets"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "EDGE_INCEPTION_ORT_SPINNING='off'" in r.stderr, r.output
