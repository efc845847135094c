"""Deploying to a device: the bundle, the runtime install without PyTorch or scikit-image, `check` against the
workstation's reference outputs, the trtexec command per TensorRT version, build folders as arguments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.build import build
from edge_inception.engines.targets import get_target
from edge_inception.engines.tensorrt import plan_build, trtexec_command

from .device_env import device_pythonpath

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "demo.bundle"
    r = runner.invoke(app, ["bundle", str(trained.onnx), "--target", "jetson-orin-nano", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_bundle_holds_what_the_device_needs(bundle, trained):
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert {"demo.onnx", "preprocess.json", "labels.txt", "target.toml", "build.sh", "README.md", "bundle.json",
            "reference/inputs.npy", "reference/outputs.npy", "reference/reference.json"} <= names
    pre = json.loads((bundle / "preprocess.json").read_text())
    assert pre["image_size"] == 64 and pre["mean"] == [0.485, 0.456, 0.406] and pre["input_name"] == "input"
    assert (bundle / "labels.txt").read_text().split() == trained.result.classes
    inputs, outputs = np.load(bundle / "reference/inputs.npy"), np.load(bundle / "reference/outputs.npy")
    assert inputs.shape == (8, 3, 64, 64) and outputs.shape == (8, 10)
    import onnxruntime as ort

    ours = ort.InferenceSession(str(trained.onnx), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    assert np.abs(ours - outputs).max() < 1e-4  # the reference is this model's own answer
    listed = json.loads((bundle / "bundle.json").read_text())["files"]
    import hashlib

    assert all(hashlib.sha256((bundle / f).read_bytes()).hexdigest() == h for f, h in listed.items())
    sh = (bundle / "build.sh").read_text()
    assert "edge-inception build demo.onnx --target jetson-orin-nano -o build" in sh and "trtexec --onnx=demo.onnx" in sh
    assert "--stronglyTyped" in sh and "edge-inception check build --reference reference" in sh


def test_on_the_device_without_pytorch_or_scikit_image(bundle, trained, tmp_path):
    """The device install: a fresh process in which torch and skimage cannot be imported builds from the bundle's files,
    and check passes; a wrong artifact fails it with one line."""
    env = {**os.environ, "PYTHONPATH": device_pythonpath(tmp_path / "blocker")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edge_inception", *args], capture_output=True, text=True, env=env, timeout=600)

    assert cli("--version").returncode == 0
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode == 1
    r = cli("build", str(bundle / "demo.onnx"), "--target", "cpu", "--backend", "ort", "-o", str(bundle / "build"))
    assert r.returncode == 0, r.stderr
    r = cli("check", str(bundle / "build"), "--reference", str(bundle / "reference"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("check passed: demo.ort.onnx (fp32 on cpu) on 8 reference images")
    r = cli("predict", str(bundle / "build"), str(next((trained.data / "val" / "cat").glob("*.png"))), "--top-k", "1")
    assert r.returncode == 0 and "cat" in r.stdout, r.stderr

    # a model that is not the bundle's: refused by its provenance ...
    from edge_inception.convert.export import export_model

    other = export_model(None, tmp_path / "demo.onnx", num_classes=10, image_size=64, seed=9).path
    wrong = build(other, "cpu", output_dir=tmp_path / "wrong").artifact
    r = cli("check", str(wrong), "--reference", str(bundle / "reference"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "built from another model" in r.stderr and "Traceback" not in r.stderr
    # ... and a plain ONNX file by its sha256: only the bundle's own model is checked as a plain file
    r = cli("check", str(other), "--reference", str(bundle / "reference"))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "is not the bundle's model" in r.stderr


def test_reference_files_are_untrusted(bundle, tmp_path):
    """A reference outside a bundle is refused; inside one, an edited array is refused by bundle.json's sha256 (the
    array checks behind it: tests/test_trust.py)."""
    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "reference.json").write_text((bundle / "reference/reference.json").read_text())
    np.save(ref / "inputs.npy", np.zeros((2, 3, 64, 64), np.float32))
    np.save(ref / "outputs.npy", np.zeros((2, 10), np.float32))
    r = runner.invoke(app, ["check", str(bundle / "demo.onnx"), "--reference", str(ref)])
    assert r.exit_code == 1 and "no bundle.json beside it" in r.stderr
    copy = Path(shutil.copytree(bundle, tmp_path / "copy", ignore=shutil.ignore_patterns("build")))
    np.save(copy / "reference/inputs.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a pickle: never loaded
    r = runner.invoke(app, ["check", str(copy / "demo.onnx"), "--reference", str(copy / "reference")])
    assert r.exit_code == 1 and "inputs.npy: does not match bundle.json" in r.stderr and "Traceback" not in r.output


def test_a_bundle_holds_what_it_lists_and_nothing_else(bundle, tmp_path):
    """Found by an attack: a bundle with files bundle.json does not list (an edge_inception 99.0 wheel that pip would
    have picked over the bundle's own, a script, an extra reference array) or a link out of it was reported "bundle
    verified". Now each is refused in one line; build.sh's output folder and dependency wheels added to wheels/ (the
    README's way to install on a device without an index) are allowed, the wheels named in a note; and build.sh installs
    the bundle's own wheel by name once its sha256 is the one the bundle wrote."""
    import hashlib

    clean = Path(shutil.copytree(bundle, tmp_path / "clean", ignore=shutil.ignore_patterns("build")))
    own = next((clean / "wheels").glob("edge_inception-*.whl"))
    sh = (clean / "build.sh").read_text()
    assert f"{hashlib.sha256(own.read_bytes()).hexdigest()}  \"wheels/{own.name} | sha256sum -c" in sh.replace("'", "")
    assert f"--find-links wheels wheels/{own.name}" in sh

    def check(folder: Path):
        return runner.invoke(app, ["check", str(folder / "demo.onnx"), "--reference", str(folder / "reference")])

    assert check(clean).exit_code == 0
    (clean / "build").mkdir()
    (clean / "build" / "anything").write_text("the device's own output")
    (clean / "wheels" / "numpy-2.0.0-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(b"a dependency the user added")
    ok = check(clean)
    assert ok.exit_code == 0 and "bundle verified" in ok.stdout and "wheels/numpy-2.0.0" in ok.stderr, ok.output
    for i, (name, make) in enumerate([
        ("wheels/edge_inception-99.0-py3-none-any.whl", lambda p: p.write_bytes(b"PK a rogue toolkit")),
        ("evil.sh", lambda p: p.write_text("rm -rf ~")),
        ("reference/extra.npy", lambda p: p.write_bytes(b"x")),
        ("extra", lambda p: p.mkdir()),
        ("wheels/link.whl", lambda p: p.symlink_to("/etc/passwd")),
    ]):
        copy = Path(shutil.copytree(clean, tmp_path / f"c{i}", symlinks=True))
        make(copy / name)
        r = check(copy)
        assert r.exit_code == 1 and "Traceback" not in r.output, (name, r.output)
        assert r.stderr.count("\n") == 1 and f"{name}: " in r.stderr and "does not list" in r.stderr, (name, r.stderr)
    copy = Path(shutil.copytree(clean, tmp_path / "relinked", symlinks=True))
    (copy / "labels.txt").unlink()
    (copy / "labels.txt").symlink_to(clean / "labels.txt")  # the same bytes, through a link: what it points at can change
    r = check(copy)
    assert r.exit_code == 1 and "labels.txt: a link" in r.stderr, r.output


def test_build_folders_as_arguments(trained, tmp_path):
    out = tmp_path / "cpu"
    build(trained.onnx, "cpu", output_dir=out)
    photo = str(next((trained.data / "val" / "cat").glob("*.png")))
    r = runner.invoke(app, ["predict", str(out), photo])
    assert r.exit_code == 0, r.output
    (out / "copy.ort.onnx").write_bytes((out / "demo.ort.onnx").read_bytes())
    (out / "copy.ort.onnx.manifest.json").write_text((out / "demo.ort.onnx.manifest.json").read_text().replace('"demo.ort.onnx"', '"copy.ort.onnx"'))
    r = runner.invoke(app, ["predict", str(out), photo])
    assert r.exit_code == 1 and "artifacts; name one:" in r.stderr and "demo.ort.onnx" in r.stderr and "copy.ort.onnx" in r.stderr
    r = runner.invoke(app, ["predict", str(tmp_path), photo])
    assert r.exit_code == 1 and "no built artifact in this folder" in r.stderr


# --- the trtexec command, per TensorRT version, against the flags each version documents --------------------------------

def _cmd(target: str, precision: str, version: str | None = None) -> list[str]:
    t = get_target(target)
    v = version or t.tensorrt_version or "10.13"
    return trtexec_command(plan_build(t, precision, v, 224), v, "m.onnx", "m.engine")


def test_trtexec_8_2_jetson_nano():
    cmd = _cmd("jetson-nano", "fp16")
    assert "--explicitBatch" in cmd and "--fp16" in cmd and "--workspace=512" in cmd  # TensorRT 8.2: no --memPoolSize yet
    assert not any(a.startswith(("--memPoolSize", "--stronglyTyped", "--builderOptimizationLevel")) for a in cmd)
    assert "--minShapes=input:1x3x224x224" in cmd and "--maxShapes=input:4x3x224x224" in cmd
    assert "--noTF32" in _cmd("jetson-nano", "fp32") and "--fp16" not in _cmd("jetson-nano", "fp32")


def test_trtexec_8_5_xavier_dla():
    cmd = _cmd("jetson-xavier-nx", "int8")
    assert {"--explicitBatch", "--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:1024"} <= set(cmd)
    assert "--stronglyTyped" not in cmd and "--builderOptimizationLevel=3" not in cmd  # 8.6 brought that flag
    assert len({a.split(":", 1)[1] for a in cmd if a.startswith(("--minShapes", "--optShapes", "--maxShapes"))}) == 1  # DLA: one shape


def test_trtexec_10_strongly_typed():
    cmd = _cmd("jetson-orin-nano", "int8")
    assert "--stronglyTyped" in cmd and "--explicitBatch" not in cmd and "--builderOptimizationLevel=3" in cmd
    assert not {"--fp16", "--int8", "--workspace=1024"} & set(cmd)  # precision comes from the Q/DQ graph
    dla = _cmd("jetson-agx-orin", "int8")  # DLA needs a weakly typed network, even on 10.x
    assert {"--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback"} <= set(dla) and "--stronglyTyped" not in dla


def test_trtexec_11_has_no_precision_flags():
    cmd = _cmd("gpu", "fp16", "11.0")
    assert not {"--stronglyTyped", "--fp16", "--int8", "--explicitBatch", "--noTF32"} & set(cmd)
    assert "--memPoolSize=workspace:4096" in cmd and "--timingCacheFile=timing.cache" in cmd and "--saveEngine=m.engine" in cmd
