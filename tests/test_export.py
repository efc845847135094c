import hashlib
import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.convert.export import export_model
from edge_inception.data.images import bundled_photos, load_batch
from edge_inception.errors import VerificationError
from edge_inception.model.checkpoints import load_model
from edge_inception.vocab import Variant

from .conftest import seeded_state_dict

runner = CliRunner()


def ort_logits(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": batch})[0]


def rel_err(ref, out):
    return float(np.abs(ref - out).max() / np.abs(ref).max())


def inputs(size, n):
    photos = bundled_photos()
    rng = np.random.default_rng(7)
    return [rng.standard_normal((n, 3, size, size)).astype(np.float32), load_batch(photos[:n], size)]


@pytest.mark.parametrize("variant", list(Variant))
def test_exported_and_simplified_match_pytorch(tmp_path, variant):
    ckpt = tmp_path / "w.pth"
    torch.save(seeded_state_dict(variant, num_classes=1000, seed=3), ckpt)
    raw = export_model(ckpt, tmp_path / "raw.onnx", image_size=160, simplify=False)
    sim = export_model(ckpt, tmp_path / "sim.onnx", image_size=160, simplify=True)
    assert [s.step for s in raw.steps] == ["export"] and [s.step for s in sim.steps] == ["export", "simplify"]
    model = load_model(ckpt).model.eval()
    for n in (1, 4):
        for batch in inputs(160, n):
            with torch.no_grad():
                ref = model(torch.from_numpy(batch)).numpy()
            for path in (raw.path, sim.path):
                out = ort_logits(path, batch)
                assert out.shape == (n, 1000)
                assert rel_err(ref, out) < 1e-4
                assert (out.argmax(1) == ref.argmax(1)).all()
    graph = onnx.load(str(sim.path)).graph
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and "Dropout" not in ops
    assert not any("aux" in node.name or any("aux" in i for i in node.input) for node in graph.node)
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    if variant == "paper":
        assert sum(node.op_type == "LRN" for node in graph.node) == 2


def test_transform_input_is_inside_the_graph(tmp_path):
    ckpt = tmp_path / "tv.pth"
    torch.save(seeded_state_dict("torchvision", seed=2), ckpt)
    loaded = load_model(ckpt)
    assert loaded.transform_input
    result = export_model(ckpt, tmp_path / "tv.onnx", image_size=128)
    batch = inputs(128, 2)[1]
    with torch.no_grad():
        ref = loaded.model.eval()(torch.from_numpy(batch)).numpy()
        plain = load_model(ckpt, transform_input=False).model.eval()(torch.from_numpy(batch)).numpy()
    out = ort_logits(result.path, batch)
    assert rel_err(ref, out) < 1e-4
    assert rel_err(ref, plain) > 1e-2  # the re-mapping matters, so the graph must carry it
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node if n.op_type != "Constant"]
    assert ops[:2] == ["Mul", "Add"]


def test_fixed_and_dynamic_batch_and_info_metadata(tmp_path):
    fixed, dynamic = tmp_path / "b1.onnx", tmp_path / "dyn.onnx"
    r1 = runner.invoke(app, ["export", "--variant", "paper", "--num-classes", "10", "--image-size", "96", "--batch", "1", "-o", str(fixed)])
    r2 = runner.invoke(app, ["export", "--variant", "paper", "--num-classes", "10", "--image-size", "96", "--dynamic-batch", "-o", str(dynamic)])
    assert r1.exit_code == 0, r1.output
    assert r2.exit_code == 0, r2.output
    assert "not meaningful" in r1.stderr
    x1 = np.zeros((1, 3, 96, 96), np.float32)
    x3 = np.zeros((3, 3, 96, 96), np.float32)
    assert ort_logits(fixed, x1).shape == (1, 10)
    assert ort_logits(dynamic, x3).shape == (3, 10)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        ort_logits(fixed, x3)

    info = runner.invoke(app, ["info", str(dynamic), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    meta = data["metadata"]
    assert meta["variant"] == "paper" and meta["num_classes"] == "10" and meta["image_size"] == "96"
    assert meta["batch"] == "dynamic" and meta["seeded_weights"] == "true"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["edge_inception_version"] and meta["checkpoint_sha256"].startswith("none")
    assert data["inputs"][0][2] == ["batch", 3, 96, 96] and data["outputs"][0][2] == ["batch", 10]
    assert data["opset"] == 17 and data["parameters"] > 5_900_000
    text = runner.invoke(app, ["info", str(fixed)])
    assert "input  input: float32 [1 x 3 x 96 x 96]" in text.stdout


def test_checkpoint_sha_in_metadata(tmp_path):
    ckpt = tmp_path / "w.pth"
    torch.save(seeded_state_dict("torchvision", num_classes=5), ckpt)
    out = export_model(ckpt, tmp_path / "m.onnx", image_size=64)
    meta = {p.key: p.value for p in onnx.load(str(out.path)).metadata_props}
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert json.loads(meta["class_names"]) == [f"class_{i}" for i in range(5)]


def _fails_cleanly(result, needle):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1], result.stderr
    assert "Traceback" not in result.output


def test_export_bad_input(tmp_path):
    out = tmp_path / "out.onnx"
    _fails_cleanly(runner.invoke(app, ["export", "-w", str(tmp_path / "missing.pth"), "-o", str(out)]), "not found")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "vgg.pth")
    _fails_cleanly(runner.invoke(app, ["export", "-w", str(tmp_path / "vgg.pth"), "-o", str(out)]), "not a GoogLeNet")
    small = runner.invoke(app, ["export", "--image-size", "16", "-o", str(out)])
    assert small.exit_code == 2 and "'--image-size'" in small.stderr.strip().splitlines()[-1]  # a usage error: the option's range
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    _fails_cleanly(runner.invoke(app, ["export", "--image-size", "64", "-o", str(blocker / "sub" / "m.onnx")]), "cannot create output folder")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "vgg.pth"]


def test_export_that_computes_something_else_is_refused(tmp_path, monkeypatch):
    """A real fault, really detected: the exporter writes another network (another seed) than the one it checks against;
    the real ONNX Runtime comparison refuses it and the previous file stays."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous artifact")
    import edge_inception.convert.export as exp

    real_export = exp.torch_to_onnx
    wrong = load_model(None, num_classes=10, seed=99).model.eval()

    def export_another_network(model, path, *args, **kwargs):
        real_export(wrong, path, *args, **kwargs)

    monkeypatch.setattr(exp, "torch_to_onnx", export_another_network)
    result = runner.invoke(app, ["export", "--image-size", "64", "--num-classes", "10", "-o", str(out)])
    _fails_cleanly(result, "beyond tolerance")
    assert out.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(VerificationError, match="export .* beyond tolerance"):
        exp.export_model(None, tmp_path / "x.onnx", num_classes=10, image_size=64)


def test_a_fixed_batch_model_goes_through_every_command(trained, tmp_path):
    """A model exported with --batch 1 takes one image per call; quantize (its calibration and held-out runs), predict
    and eval of several images, and the build's verification run it in chunks of its batch. Before, each of them passed
    16 images at once and ended in ONNX Runtime's traceback ("Got: 16 Expected: 1"); bench refuses other batch sizes."""
    b1 = tmp_path / "b1.onnx"
    r = runner.invoke(app, ["export", "--weights", str(trained.checkpoint), "--batch", "1", "-o", str(b1)])
    assert r.exit_code == 0, r.output
    images = [str(p) for p in sorted((trained.data / "val").rglob("*.png"))[:3]]
    plain = runner.invoke(app, ["predict", str(b1), *images, "--json"])
    assert plain.exit_code == 0, plain.output
    for precision in ("fp16", "int8"):  # one calibration method and 32 images: calibration runs image by image here
        q = runner.invoke(app, ["quantize", str(b1), "--precision", precision, "-o", str(tmp_path / f"b1.{precision}.onnx"),
                                "--calib", str(trained.data / "train"), "--holdout", str(trained.data / "val"), "--min-agreement", "0.5",
                                "--calib-method", "percentile", "--calib-size", "32"])
        assert q.exit_code == 0, q.output
    built = runner.invoke(app, ["build", str(tmp_path / "b1.int8.onnx"), "--target", "cpu", "--backend", "ort", "-o", str(tmp_path / "cpu")])
    assert built.exit_code == 0, built.output
    art = next((tmp_path / "cpu").glob("*.ort.onnx"))
    r = runner.invoke(app, ["predict", str(art), *images, "--json"])
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(got) == 3 and [g["image"] for g in got] == images  # every image answered, in order
    ev = runner.invoke(app, ["eval", str(art), "--data", str(trained.data / "val")])
    assert ev.exit_code == 0, ev.output
    if importlib.util.find_spec("openvino") is not None:  # OpenVINO compiles the fixed shape: only the runner's chunks reach it
        built = runner.invoke(app, ["build", str(b1), "--target", "cpu", "--backend", "openvino", "-o", str(tmp_path / "ov")])
        assert built.exit_code == 0, built.output
        r = runner.invoke(app, ["predict", str(tmp_path / "ov"), *images, "--json"])
        assert r.exit_code == 0, r.output
        assert [json.loads(line)["image"] for line in r.stdout.splitlines()] == images
    bench = runner.invoke(app, ["bench", str(art), "--batch", "1,4", "--iterations", "2", "--rounds", "1", "--no-peak"])
    assert bench.exit_code == 1 and "takes batches of 1 only" in bench.stderr and "Traceback" not in bench.stderr
