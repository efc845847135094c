import importlib.util
import json

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.convert.onnx_file import ort_session, run_session
from edge_inception.convert.quantize import quantize_model
from edge_inception.data.images import bundled_photos, load_batch
from edge_inception.engines.build import build
from edge_inception.engines.manifest import Manifest, read_manifest
from edge_inception.engines.registry import open_runner
from edge_inception.engines.targets import get_target, list_targets
from edge_inception.engines.tensorrt import check_engine_compat, plan_build
from edge_inception.errors import ManifestError, TargetError
from edge_inception.evaluate.verify import compare

runner = CliRunner()


@pytest.fixture(scope="module")
def built(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    fp16 = quantize_model(trained.onnx, "fp16", output=out / "demo.fp16.onnx", calib=trained.data / "train", holdout=trained.data / "val")
    int8 = quantize_model(trained.onnx, "int8", output=out / "demo.int8.onnx", calib=trained.data / "train", holdout=trained.data / "val",
                          min_agreement=0.5)
    sources = {"fp32": trained.onnx, "fp16": fp16.path, "int8": int8.path}
    return {p: (src, build(src, "cpu", output_dir=out / "cpu")) for p, src in sources.items()}


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
    r = runner.invoke(app, ["predict", str(artifact), str(trained.data / "val" / "cat"), "--json"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 10 and all(len(row["top"]) == 5 for row in rows)
    assert abs(sum(t["score"] for t in rows[0]["top"])) <= 1.0 + 1e-6


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


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not hasattr(__import__("tensorrt"), "Builder"),
                    reason="TensorRT is not installed (only its type stubs): native engine builds need an NVIDIA GPU machine")
def test_tensorrt_engine_build_and_run(built, tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    src, _ = built["fp16"]
    result = build(src, "gpu", output_dir=tmp_path)
    assert result.parity.top1_agreement >= 0.99


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO (optional extra) is not installed")
def test_openvino_build_matches(built, tmp_path):
    src, _ = built["int8"]
    result = build(src, "cpu", backend="openvino", output_dir=tmp_path)
    assert result.artifact.suffix == ".xml" and result.parity.top1_agreement >= 0.99




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
