"""Trust boundaries of the deploy path (issue 24), each kind attacked as a kind: names that reach a script or a path,
outputs that are not regular files, what decides an answer and is not hashed, files read on the device without bounds,
models the runtime cannot run, checkpoints PyTorch loads and we did not (and the reverse).

Small models are made here with onnx.helper (a convolution, a pool and a classifier: a bundle, a build and a check
take seconds), checkpoints from the seeded GoogLeNet of conftest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.deploy.bundle import build_argv, check_argv
from edge_inception.errors import EdgeInceptionError
from edge_inception.fileio import atomic_dir, read_json, write_text_atomic

from .conftest import seeded_state_dict
from .test_hostile import one_error_line, run

cli = CliRunner()


def invoke(*args: str):
    return cli.invoke(app, [str(a) for a in args])


def one_line(r, needle: str) -> str:
    """A CliRunner result that failed with exactly one ``error:`` line holding ``needle``."""
    assert r.exit_code == 1, (r.exit_code, r.output[-2000:])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def tiny_classifier(path: Path, *, opset: int = 17, ir: int | None = None, channels: int = 3, size: int | str = 64, classes: int = 10,
                    relu_domain: str = "", names: list[str] | None = None, seed: int = 0) -> Path:
    """An image classifier of this toolkit in five nodes: N x 3 x size x size -> Conv -> Relu -> pool -> Gemm -> N x classes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
             numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu", domain=relu_domain),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *([helper.make_opsetid(relu_domain, 1)] if relu_domain else [])])
    if ir is not None:
        model.ir_version = ir
    meta = {"num_classes": str(classes), **({"image_size": str(size)} if isinstance(size, int) and size <= 1024 else {}),
            **({"class_names": json.dumps(names)} if names is not None else {})}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def raise_bias(src: Path, dst: Path, cls: int = 3, by: float = 0.5) -> Path:
    """``src`` with one class's classifier bias raised (FP32 or FP16 weights alike)."""
    model = onnx.load(str(src))
    for t in model.graph.initializer:
        if t.name == "fc_b":
            a = numpy_helper.to_array(t).copy()
            a[cls] += by
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(model, str(dst))
    return dst


def rehash(bundle: Path) -> None:
    """What an attacker who edits a bundle does next: list the edited files' new sha256 in bundle.json."""
    index = bundle / "bundle.json"
    data = json.loads(index.read_text())
    data["files"] = {f: hashlib.sha256((bundle / f).read_bytes()).hexdigest() for f in data["files"]}
    index.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny.onnx", names=[f"kind {i}" for i in range(10)])


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny.bundle"
    r = invoke("bundle", model, "--target", "jetson-orin-nano", "-o", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    """A fresh copy of the bundle to attack."""
    return Path(shutil.copytree(bundle, tmp_path / "b"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "p.png"
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    r = invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", out)
    assert r.exit_code == 0, r.output
    return out / "tiny.ort.onnx"


# 1. names from files never reach a script or a path unchecked ---------------------------------------------------------------

def preset(folder: Path, name: str = "mine", **fields: object) -> Path:
    """A target TOML: the cpu preset's fields, with ``fields`` replacing or adding (a dict is a table)."""
    base: dict[str, object] = {"name": name, "description": "my board", "device": "cpu", "backend": "ort", "backends": ["ort"],
                               "default_precision": "fp32", "precisions": ["fp32", "fp16", "int8"], "batch": {"min": 1, "opt": 1, "max": 8}}
    base.update(fields)

    def toml(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)  # strings, numbers, lists: JSON's spelling is TOML's

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:8]}.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in base.items()))
    return path


@pytest.mark.parametrize("name", ["cpu$(touch${IFS}pwned)", "../../escape", "-rf", "a b", "cpu;id", "x" * 65, "ok..name", ""])
def test_hostile_preset_names_are_refused_in_one_line(model, tmp_path, name):
    toml = preset(tmp_path / "targets", name)
    one_line(invoke("bundle", model, "--target", toml, "-o", tmp_path / "out"), "not a safe name")
    one_line(invoke("build", model, "--target", toml), "not a safe name")
    one_line(invoke("targets", "--targets-dir", tmp_path / "targets"), "not a safe name")
    assert not (tmp_path / "out").exists() and not list(model.parent.parent.glob("escape*")) and not Path("pwned").exists()


def test_build_sh_runs_exactly_the_commands_shown(bundle, tmp_path):
    """`sh build.sh` with a stand-in `edge-inception` that records its argv: exactly the two commands the README shows,
    word for word; the trtexec alternative and its adoption are comments whose words are the planned commands."""
    shutil.copytree(bundle, tmp_path / "b")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    fake = bin_dir / "edge-inception"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {shlex.quote(str(log))}\necho "--end--" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    r = subprocess.run(["sh", str(tmp_path / "b" / "build.sh")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("--end--\n") if c.strip()]
    assert calls == [["build", "tiny.onnx", "--target", "jetson-orin-nano", "-o", "build"], ["check", "build", "--reference", "reference"]]
    assert build_argv("tiny.onnx", "jetson-orin-nano")[1:] == calls[0] and check_argv("build")[1:] == calls[1]
    comments = [shlex.split(line[2:]) for line in (tmp_path / "b" / "build.sh").read_text().splitlines() if line.startswith("# trtexec")
                or line.startswith("# edge-inception")]
    assert comments[0][0] == "trtexec" and "--onnx=tiny.onnx" in comments[0] and "--saveEngine=build/tiny.engine" in comments[0]
    assert comments[1] == check_argv("build/tiny.engine", "jetson-orin-nano")


def test_hostile_model_file_names_are_refused(model, tmp_path):
    for name in ("a$(id).onnx", "-o.onnx", "x y.onnx"):
        shutil.copyfile(model, tmp_path / name)
        one_line(invoke("bundle", tmp_path / name, "--target", "cpu", "-o", tmp_path / "out"), "not a safe name")
    assert not (tmp_path / "out").exists()


def test_labels_that_would_rewrite_the_terminal_are_refused(tmp_path, photo):
    evil = tiny_classifier(tmp_path / "evil.onnx", names=["cat\x1b[2J\x1b[31mdog", *[f"c{i}" for i in range(9)]])
    one_line(invoke("predict", evil, photo), "control character U+001B")
    split = tiny_classifier(tmp_path / "split.onnx", names=["two\nlines", *[f"c{i}" for i in range(9)]])
    one_line(invoke("bundle", split, "--target", "cpu", "-o", tmp_path / "out"), "control character U+000A")
    from edge_inception.data.datasets import scan_image_folder
    from edge_inception.errors import DatasetError

    for cls in ("ok", "bad\x1b]0;title\x07"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        shutil.copyfile(photo, tmp_path / "data" / cls / "a.png")
    with pytest.raises(DatasetError, match="control character"):
        scan_image_folder(tmp_path / "data")


# 2. outputs: never replace what is not a regular file ----------------------------------------------------------------------

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    fifo = _fifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "to-null").symlink_to("/dev/null")
    (tmp_path / "to-stdout").symlink_to("/proc/self/fd/1")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        cases = {"fifo": "a FIFO", "folder": "a folder", "to-null": "a character device", "to-stdout": "refusing to replace",
                 "dangling": "which is missing", "sock": "a socket"}
        for name, needle in cases.items():
            with pytest.raises(EdgeInceptionError, match=needle):
                write_text_atomic(tmp_path / name, "x")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)
        assert all((tmp_path / n).is_symlink() for n in ("to-null", "to-stdout", "dangling"))
    finally:
        sock.close()
    assert not [p for p in tmp_path.iterdir() if "edge-tmp" in p.name]


def test_a_link_to_a_regular_file_is_written_through(tmp_path):
    """The chosen meaning: the new content replaces the link's target, atomically; the link itself stays a link."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    (tmp_path / "out-link").symlink_to(tmp_path / "real")  # a folder output never goes through a link (issue 38, kind 7)
    with pytest.raises(EdgeInceptionError, match="is a symbolic link"), atomic_dir(tmp_path / "out-link", replace=True) as work:
        (work / "f").write_text("x")
    assert (tmp_path / "out-link").is_symlink() and [p.name for p in (tmp_path / "real").iterdir()] == ["report.json"]


def test_every_output_option_refuses_a_non_regular_file(model, bundle, built, tmp_path):
    fifo = _fifo(tmp_path / "fifo")
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    for args in (["simplify", model, "-o", fifo], ["bench", built, "--json", tmp_path / "stdout", "--iterations", "1", "--rounds", "1"],
                 ["bench", built, "--markdown", fifo], ["bench", built, "--plot", fifo], ["profile", built, "--markdown", fifo],
                 ["quantize", model, "--precision", "fp16", "-o", fifo], ["bundle", model, "--target", "cpu", "-o", fifo]):
        one_line(invoke(*args), "refusing to replace")
    out = tmp_path / "build"
    out.mkdir()
    _fifo(out / "tiny.ort.onnx")
    one_line(invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", out), "refusing to replace")
    assert stat.S_ISFIFO(os.lstat(out / "tiny.ort.onnx").st_mode) and not (out / "tiny.ort.onnx.manifest.json").exists()
    assert (tmp_path / "stdout").is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


# 3. everything that decides an answer is covered by a checked hash -------------------------------------------------------

@pytest.mark.parametrize("edit", ["swap_class_names", "input_shapes", "device", "precision", "tf32"])
def test_manifest_fields_are_covered_by_its_own_hash(built, tmp_path, photo, edit):
    folder = Path(shutil.copytree(built.parent, tmp_path / "b"))
    path = folder / "tiny.ort.onnx.manifest.json"
    data = json.loads(path.read_text())
    if edit == "swap_class_names":
        data["class_names"][0], data["class_names"][1] = data["class_names"][1], data["class_names"][0]
    elif edit == "input_shapes":
        data["input_shapes"]["max"][0] = 1024
    elif edit == "device":
        data["device"] = "cuda"
    elif edit == "precision":
        data["precision"] = "int8"
    else:
        data["options"]["tf32"] = True
    path.write_text(json.dumps(data))
    one_line(invoke("predict", folder, photo), "do not match its manifest_sha256")


def test_manifest_without_its_own_hash_is_refused(built, tmp_path, photo):
    folder = Path(shutil.copytree(built.parent, tmp_path / "b"))
    path = folder / "tiny.ort.onnx.manifest.json"
    data = json.loads(path.read_text())
    del data["manifest_sha256"]
    path.write_text(json.dumps(data))
    one_line(invoke("predict", folder, photo), "manifest_sha256")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_check_refuses_a_model_with_one_bias_raised(tmp_path, precision):
    """The bundle's own model passes; the same model with one class's bias raised fails `check`, however the reference
    describes itself (reference.json claiming int8, whose cosine tolerance would let it pass, and bundle.json rehashed)."""
    src = tiny_classifier(tmp_path / "m.onnx")
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(src))
    b = tmp_path / "b"
    assert invoke("bundle", src, "--target", "cpu", "-o", b).exit_code == 0
    assert invoke("check", b / "m.onnx", "--reference", b / "reference").exit_code == 0
    ref = json.loads((b / "reference/reference.json").read_text())
    (b / "reference/reference.json").write_text(json.dumps({**ref, "precision": "int8"}))
    rehash(b)
    one_line(invoke("check", raise_bias(b / "m.onnx", tmp_path / "edited.onnx"), "--reference", b / "reference"), "not the bundle's model")


def test_the_tolerance_comes_from_the_artifact_not_the_reference(copy):
    """outputs.npy nudged by 0.1 % and reference.json claiming int8 (judged by cosine, it would pass): the FP32 model is
    still judged at FP32's 1e-5."""
    out = np.load(copy / "reference/outputs.npy")
    np.save(copy / "reference/outputs.npy", (out * 1.001).astype(np.float32))
    ref = json.loads((copy / "reference/reference.json").read_text())
    (copy / "reference/reference.json").write_text(json.dumps({**ref, "precision": "int8", "tolerance": "anything"}))
    rehash(copy)
    one_line(invoke("check", copy / "tiny.onnx", "--reference", copy / "reference"), "relative (> 1e-05)")


def test_bundle_files_are_verified_by_check(copy, built):
    """Every file of bundle.json is checked; preprocess.json and labels.txt also against the model's own, so an edit
    with bundle.json rehashed is refused too."""
    spec = json.loads((copy / "preprocess.json").read_text())
    (copy / "preprocess.json").write_text(json.dumps({**spec, "mean": [0.5, 0.5, 0.5]}))
    one_line(invoke("check", built, "--reference", copy / "reference"), "preprocess.json: does not match bundle.json")
    rehash(copy)
    one_line(invoke("check", built, "--reference", copy / "reference"), "field 'mean'")
    (copy / "preprocess.json").write_text(json.dumps(spec))
    labels = (copy / "labels.txt").read_text().splitlines()
    labels[0], labels[1] = labels[1], labels[0]
    (copy / "labels.txt").write_text("\n".join(labels) + "\n")
    rehash(copy)
    one_line(invoke("check", built, "--reference", copy / "reference"), "labels.txt: line 1 differs")


def test_check_reads_only_the_reference_the_bundle_vouches_for(copy, built):
    """A second folder beside the bundle's reference/, with arrays of an attacker's choosing, is not a reference."""
    shutil.copytree(copy / "reference", copy / "evil")
    np.save(copy / "evil" / "outputs.npy", np.zeros((8, 10), np.float32))
    one_line(invoke("check", built, "--reference", copy / "evil"), "not the reference/ folder of a bundle")


def test_info_shows_escapes_not_control_characters(tmp_path):
    path = tiny_classifier(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = "note", "hi\x1b[2J\x1b]0;owned\x07"
    onnx.save(m, str(path))
    r = invoke("info", path)
    assert r.exit_code == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout and "hi\\x1b[2J" in r.stdout


def test_bundle_index_cannot_name_files_outside_the_bundle(copy, built):
    data = json.loads((copy / "bundle.json").read_text())
    data["files"]["../../../etc/passwd"] = "0" * 64
    (copy / "bundle.json").write_text(json.dumps(data))
    one_line(invoke("check", built, "--reference", copy / "reference"), "is not a file of a bundle")
    del data["files"]["../../../etc/passwd"]
    data["files"]["reference/$(id)"] = "0" * 64
    (copy / "bundle.json").write_text(json.dumps(data))
    one_line(invoke("check", built, "--reference", copy / "reference"), "not a safe name")
    del data["files"]["reference/$(id)"]
    del data["files"]["preprocess.json"]
    (copy / "bundle.json").write_text(json.dumps(data))
    one_line(invoke("check", built, "--reference", copy / "reference"), "does not list preprocess.json")
    (copy / "bundle.json").unlink()
    one_line(invoke("check", built, "--reference", copy / "reference"), "no bundle.json")


# 4. files read on the device are bounded before use --------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("case,needle", [
    ("truncated", "truncated or padded"),
    ("huge_claim", "expected a float32 array"),
    ("one_channel", "expected a float32 array of N x 3 x 64 x 64"),
    ("wrong_size", "expected a float32 array of N x 3 x 64 x 64"),
    ("float64", "expected a float32 array"),
    ("big_endian", "expected a float32 array"),
    ("pickle", "expected a float32 array"),
    ("garbage", "not a .npy array"),
    ("nan", "NaN"),
])
def test_reference_arrays_are_checked_before_loading(copy, built, case, needle):
    path = copy / "reference/inputs.npy"
    good = np.load(path)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "huge_claim":
        path.write_bytes(_npy_header((64, 3, 1024, 1024)) + b"\0" * 100)
    elif case == "one_channel":
        np.save(path, good[:, :1])
    elif case == "wrong_size":
        np.save(path, np.zeros((8, 3, 32, 32), np.float32))
    elif case == "float64":
        np.save(path, good.astype(np.float64))
    elif case == "big_endian":
        np.save(path, good.astype(">f4"))
    elif case == "pickle":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif case == "garbage":
        path.write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr'")
    else:
        bad = good.copy()
        bad[0, 0, 0, 0] = np.nan
        np.save(path, bad)
    rehash(copy)  # past the hash: the array's own checks must hold
    one_line(invoke("check", built, "--reference", copy / "reference"), needle)


def test_deeply_nested_and_non_regular_json_files(copy, built, tmp_path):
    (copy / "reference/reference.json").write_text("[" * 450_000 + "]" * 450_000)
    rehash(copy)
    one_line(invoke("check", built, "--reference", copy / "reference"), "nested 450000 levels")
    for name in ("reference/reference.json", "bundle.json"):
        target = copy / name
        target.unlink()
        _fifo(target)
        r = run("check", str(built), "--reference", str(copy / "reference"), timeout=120)  # would wait forever on the FIFO
        one_error_line(r, "is a FIFO, not a regular file")
    manifest = built.with_name(built.name + ".manifest.json")
    folder = Path(shutil.copytree(built.parent, tmp_path / "deep"))
    (folder / manifest.name).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    one_line(invoke("predict", folder, copy / "build.sh"), "nested 100000 levels")
    with pytest.raises(EdgeInceptionError, match="NaN is not a JSON number"):
        (tmp_path / "nan.json").write_text('{"x": NaN}')
        read_json(tmp_path / "nan.json", 100, "file")


def test_a_fifo_preset_does_not_hang_targets(tmp_path):
    folder = tmp_path / "targets"
    folder.mkdir()
    _fifo(folder / "board.toml")
    one_error_line(run("targets", "--targets-dir", str(folder), timeout=120), "is a FIFO, not a regular file")


@pytest.mark.parametrize("field,value,needle", [
    ("threads", 1000, "field 'threads' must be in [0,"),
    ("threads", "abc", "field 'threads' must be an integer"),
    ("tensorrt_version", 8, "field 'tensorrt_version' must be a version string"),
    ("tensorrt_version", "10.3; rm -rf ~", "field 'tensorrt_version' must be a version string"),
    ("dla_core", "zero", "field 'dla_core' must be an integer"),
    ("dla_core", -1, "field 'dla_core' must be in [0, 15]"),
    ("workspace_mb", -5, "field 'workspace_mb' must be in [1,"),
    ("batch", {"min": 1, "opt": 1, "max": 2**62}, "field 'batch.max' must be in [1, 1024]"),
    ("batch", {"min": 4, "opt": 2, "max": 8}, "min <= opt <= max"),
    ("batch", [1, 2], "field 'batch' must be a table"),
    ("description", "evil\x1b[2J", "control character U+001B"),
    ("description", "x" * 500, "more than 200"),
    ("device", "tpu", "field 'device': unknown device 'tpu' (choose from cpu, cuda)"),
    ("precisions", "fp32", "field 'precisions' must be a non-empty list"),
    ("builder_optimization_level", 9, "field 'builder_optimization_level' must be in [0, 5]"),
])
def test_target_presets_are_validated_like_manifests(tmp_path, field, value, needle):
    preset(tmp_path / "targets", **{field: value})
    one_line(invoke("targets", "--targets-dir", tmp_path / "targets"), needle)


def test_a_preset_missing_a_field_names_it(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.toml").write_text('name = "x"\n')
    one_line(invoke("targets", "--targets-dir", tmp_path / "t"), "field 'description' is missing")


# 5. models the runtime cannot run: one line naming the cause, before a session -----------------------------------------------

@pytest.mark.parametrize("kind,needle", [
    ("opset99", "opset 99 of ai.onnx is newer than ONNX Runtime"),
    ("ir99", "IR version 99 is newer than ONNX Runtime"),
    ("custom", "custom-domain operator my.ops:Relu"),
    ("channels", "takes 1 input channels, but the model declares 3"),
    ("dim2_31", "height dimension is 2147483648"),
    ("classes2_31", "classes dimension is 2147483648"),
])
def test_models_the_runtime_cannot_run(tmp_path, photo, kind, needle):
    args = {"opset99": {"opset": 99}, "ir99": {"ir": 99}, "custom": {"relu_domain": "my.ops"}, "channels": {"channels": 1},
            "dim2_31": {"size": 2**31}, "classes2_31": {}}[kind]
    path = tiny_classifier(tmp_path / "m.onnx", **args)
    if kind == "classes2_31":
        m = onnx.load(str(path))
        m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2**31
        del m.metadata_props[:]
        onnx.save(m, str(path))
    for cmd in (["predict", path, photo], ["build", path, "--target", "cpu", "-o", tmp_path / "out"], ["bundle", path, "--target", "cpu"]):
        one_line(invoke(*cmd), needle)
    assert not (tmp_path / "out").exists()


def test_a_session_onnx_runtime_refuses_is_one_line_with_its_reason(tmp_path, photo):
    """A graph our checks let through but ONNX Runtime refuses (a Gemm whose weight does not fit the pooled features):
    ONNX Runtime's own reason, not 'could not write the optimised model'."""
    path = tiny_classifier(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        if t.name == "fc_w":
            t.CopyFrom(numpy_helper.from_array(np.ones((10, 5), np.float32), "fc_w"))
    onnx.save(m, str(path))
    for cmd in (["build", path, "--target", "cpu", "-o", tmp_path / "out"], ["predict", path, photo]):
        line = one_line(invoke(*cmd), "ONNX Runtime")
        assert "cannot load it" in line and "could not write" not in line and ".cc:" not in line


# 6. checkpoints: what PyTorch's strict loading accepts, and nothing it refuses ------------------------------------------------

@pytest.fixture(scope="module")
def state() -> dict:
    return {k: v for k, v in seeded_state_dict(num_classes=10, aux=False).items()}


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "ok.pth"
    torch.save(state, path)
    return path


def test_classifier_bounds_are_one_line(state, tmp_path):
    torch.save(dict(state, **{"fc.weight": torch.zeros(0, 1024), "fc.bias": torch.zeros(0)}), tmp_path / "empty.pth")
    one_line(invoke("export", "--weights", tmp_path / "empty.pth", "-o", tmp_path / "e.onnx"), "must be in [1, 32768], got 0")
    torch.save(dict(state, **{"fc.weight": torch.zeros(10, 7)}), tmp_path / "wide.pth")
    one_line(invoke("export", "--weights", tmp_path / "wide.pth", "-o", tmp_path / "e.onnx"), "expected (num_classes, 1024)")
    assert not (tmp_path / "e.onnx").exists()


@pytest.mark.parametrize("sidecar,needle", [
    ({"image_size": -5}, "field 'image_size' must be in [32, 1024], got -5"),
    ({"image_size": 10}, "field 'image_size' must be in [32, 1024], got 10"),
    ({"image_size": "big"}, "field 'image_size' must be an integer"),
    ({"classes": ["\x1b[2J", *[f"c{i}" for i in range(9)]]}, "control character U+001B"),
    ({"classes": ["a", "b"]}, "field 'classes' has 2 entries, the checkpoint 10 classes"),
    ({"transform_input": "yes"}, "field 'transform_input' must be true or false"),
    ("[" * 100_000, "nested 100000 levels"),
])
def test_sidecar_fields_are_bounded(checkpoint, tmp_path, sidecar, needle):
    from edge_inception.model.checkpoints import load_model

    weights = Path(shutil.copyfile(checkpoint, tmp_path / "ok.pth"))
    (tmp_path / "ok.json").write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    with pytest.raises(EdgeInceptionError, match=re.escape(needle)):
        load_model(weights)


def test_sidecar_that_is_a_fifo_is_refused_not_read(checkpoint, tmp_path):
    weights = Path(shutil.copyfile(checkpoint, tmp_path / "ok.pth"))
    _fifo(tmp_path / "ok.json")
    one_error_line(run("export", "--weights", str(weights), "-o", str(tmp_path / "e.onnx"), timeout=300), "is a FIFO")
    assert not (tmp_path / "e.onnx").exists()


def _same_as_torch(loaded, state: dict) -> None:
    from edge_inception.model.googlenet import GoogLeNet

    ref = GoogLeNet("torchvision", 10, aux_logits=False)
    ref.load_state_dict(state, strict=True)  # PyTorch's own strict loading accepts this state_dict
    ours = loaded.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())


def test_missing_num_batches_tracked_loads_as_pytorch_loads_it(state, tmp_path):
    from edge_inception.model.checkpoints import load_model

    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(state)
    torch.save(old, tmp_path / "old.pth")
    _same_as_torch(load_model(tmp_path / "old.pth"), dict(old))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.module.", "module.module.", "module._orig_mod.module."])
def test_wrapper_prefixes_are_stripped_however_nested(state, tmp_path, prefix):
    from edge_inception.model.checkpoints import load_model

    torch.save({f"{prefix}{k}": v for k, v in state.items()}, tmp_path / "wrapped.pth")
    _same_as_torch(load_model(tmp_path / "wrapped.pth"), state)


def test_what_pytorch_refuses_stays_refused(state, tmp_path):
    from edge_inception.model.checkpoints import load_model

    torch.save({k: v for k, v in state.items() if k != "conv1.bn.running_var"}, tmp_path / "missing.pth")
    with pytest.raises(EdgeInceptionError, match="missing key 'conv1.bn.running_var'"):
        load_model(tmp_path / "missing.pth")
    torch.save({**state, **{f"module.{k}": v for k, v in state.items()}}, tmp_path / "twice.pth")
    with pytest.raises(EdgeInceptionError, match="appears twice"):
        load_model(tmp_path / "twice.pth")


def test_the_subprocess_cli_gives_one_line_for_a_hostile_bundle(copy, built):
    """The same refusal through the real entry point (no CliRunner): one line, no traceback."""
    (copy / "labels.txt").write_text("x\n")
    one_error_line(run("check", str(built), "--reference", str(copy / "reference")), "does not match bundle.json")


# 7. --force never destroys what the product did not make (issue 38, kind 7) -----------------------------------------------

def _users_folder(path: Path) -> dict[str, bytes]:
    """A folder of the user's files (one in a subfolder); what it holds, to compare with afterwards."""
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub" / "data.csv").write_text("1,2,3")
    return _contents(path)


def _contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def force_cases(tmp_path) -> dict[str, Path]:
    """The three things an output folder can be that are not the product's: a folder of the user's files, a link to such a
    folder elsewhere, and a link to an empty folder elsewhere."""
    mine = tmp_path / "mine"
    _users_folder(mine)
    elsewhere = tmp_path / "elsewhere"
    _users_folder(elsewhere)
    (tmp_path / "link").symlink_to(elsewhere)
    (tmp_path / "empty-elsewhere").mkdir()
    (tmp_path / "link-to-empty").symlink_to(tmp_path / "empty-elsewhere")
    return {"mine": mine, "link": tmp_path / "link", "link-to-empty": tmp_path / "link-to-empty"}


def _refused_and_intact(result, cases: dict[str, Path], name: str, before: dict[str, bytes]) -> None:
    needle = "did not write" if name == "mine" else "is a symbolic link"
    one_line(result, needle)
    target = cases[name].resolve()
    assert _contents(target) == (before if name != "link-to-empty" else {}), name
    assert cases[name].is_symlink() == (name != "mine")
    assert not [p for p in target.parent.iterdir() if "edge-tmp" in p.name]


@pytest.mark.parametrize("name", ["mine", "link", "link-to-empty"])
def test_force_refuses_what_the_product_did_not_write(model, tmp_path, force_cases, name):
    """bundle, serve export, pipeline and demo-data, each with --force (demo-data always replaces its own folder):
    one error line, the user's files and what a link leads to untouched."""
    before = _contents(force_cases[name].resolve())
    out = force_cases[name]
    _refused_and_intact(invoke("bundle", model, "--target", "cpu", "-o", out, "--force"), force_cases, name, before)
    _refused_and_intact(invoke("serve", "export", model, "-o", out, "--force"), force_cases, name, before)
    _refused_and_intact(invoke("demo-data", "-o", out), force_cases, name, before)
    # the pipeline refuses before its first stage (the checkpoint is not even read)
    _refused_and_intact(invoke("pipeline", "--weights", tmp_path / "none.pth", "--precisions", "fp32", "-o", out, "--force"), force_cases,
                        name, before)


def test_force_replaces_what_the_product_wrote_and_nothing_added_to_it(model, tmp_path):
    """A folder the product wrote is replaced with --force; one holding a file the user added, or whose file was replaced
    by a link or a FIFO, is refused and kept as it is (what the user added is named)."""
    out = tmp_path / "b"
    assert invoke("bundle", model, "--target", "cpu", "-o", out).exit_code == 0
    index = json.loads((out / "edge-inception.json").read_text())
    assert set(index["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"edge-inception.json"}
    (out / "labels.txt").write_text("edited by hand\n")  # a file of ours, edited: still ours to replace
    one_line(invoke("bundle", model, "--target", "cpu", "-o", out), "use --force")
    r = invoke("bundle", model, "--target", "cpu", "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert (out / "labels.txt").read_text() != "edited by hand\n" and not [p for p in tmp_path.iterdir() if "edge-tmp" in p.name]

    (out / "notes.txt").write_text("mine")
    one_line(invoke("bundle", model, "--target", "cpu", "-o", out, "--force"), "did not write (notes.txt)")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "labels.txt").unlink()
    (out / "labels.txt").symlink_to(tmp_path / "mine-elsewhere.txt")
    _fifo(out / "reference" / "fifo")
    line = one_line(invoke("serve", "export", model, "-o", out, "--force"), "2 entries edge-inception did not write")
    assert "labels.txt (a link)" in line and "reference/fifo (a FIFO)" in line and (out / "labels.txt").is_symlink()

    # serve export: a repository it wrote is replaced; pipeline's and demo-data's use the same rule (fileio.atomic_dir)
    repo = tmp_path / "repo"
    assert invoke("serve", "export", model, "-o", repo).exit_code == 0
    first = (repo / "edge-inception.json").read_text()
    r = invoke("serve", "export", model, "-o", repo, "--force", "--name", "other")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == ["edge-inception.json", "other"] and (repo / "edge-inception.json").read_text() != first


def test_demo_data_replaces_only_its_own_folder(tmp_path):
    from edge_inception.data.demo_data import make_demo_dataset

    out = make_demo_dataset(tmp_path / "demo", train_per_class=1, val_per_class=1, crop_px=32)
    make_demo_dataset(out, train_per_class=2, val_per_class=1, crop_px=32)  # another size: its own folder, replaced
    assert len(list((out / "train").rglob("*.png"))) == 20
    (out / "train" / "mine.txt").write_text("x")
    with pytest.raises(EdgeInceptionError, match=r"did not write \(train/mine.txt\)"):
        make_demo_dataset(out, train_per_class=1, val_per_class=1, crop_px=32)
    assert (out / "train" / "mine.txt").is_file() and len(list((out / "train").rglob("*.png"))) == 20


def test_demo_data_made_at_once_by_several_processes_is_made_once(tmp_path):
    """Commands that find the demo set missing at the same moment (two pipelines' first run on a fresh cache folder)
    make it once: the complete folder is never replaced by a copy another process built beside it, so a process that
    already reads it finds every file (CI: a pipeline's verify stage lost grass_007.png to a second builder's swap)."""
    import contextlib
    import sys
    import time

    out = tmp_path / "cache" / "demo"
    code = ("import sys\nfrom edge_inception.data.demo_data import make_demo_dataset\n"
            "make_demo_dataset(sys.argv[1], train_per_class=12, val_per_class=4, crop_px=48)")
    makers = [subprocess.Popen([sys.executable, "-c", code, str(out)]) for _ in range(3)]
    inodes, missing = set(), []
    try:
        deadline = time.monotonic() + 120
        while any(m.poll() is None for m in makers) and time.monotonic() < deadline:
            if (out / "VERSION").is_file():  # complete: from now on the folder must stay the one first completed
                with contextlib.suppress(FileNotFoundError):
                    inodes.add(out.stat().st_ino)
                    files = sorted((out / "val").rglob("*.png"))
                    missing += [f for f in files if not f.is_file()]
            time.sleep(0.005)
    finally:
        for m in makers:
            if m.poll() is None:
                m.kill()
            m.wait()
    assert [m.returncode for m in makers] == [0, 0, 0]
    inodes.add(out.stat().st_ino)
    assert len(inodes) == 1 and missing == []
    assert len(list((out / "train").rglob("*.png"))) == 12 * 10 and not [p for p in out.parent.iterdir() if p != out]  # no copy, no lock file


def test_build_replaces_only_files_an_artifact_manifest_names(model, tmp_path, force_cases):
    """build -o writes files into a folder, it does not replace the folder: a file of the artifact's name that no manifest
    of ours names is the user's and is refused; through a link, the folder it leads to keeps everything it held."""
    out = tmp_path / "build"
    out.mkdir()
    (out / "tiny.ort.onnx").write_text("the user's own file")
    one_line(invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", out), "no manifest of edge-inception beside it names it")
    assert (out / "tiny.ort.onnx").read_text() == "the user's own file" and not (out / "tiny.ort.onnx.manifest.json").exists()
    (out / "tiny.ort.onnx").unlink()
    assert invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", out).exit_code == 0
    r = invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", out)  # its own artifact: rebuilt in place
    assert r.exit_code == 0, r.output
    before = _contents(force_cases["link"].resolve())
    assert invoke("build", model, "--target", "cpu", "--backend", "ort", "-o", force_cases["link"]).exit_code == 0
    after = _contents(force_cases["link"].resolve())
    assert {k: v for k, v in after.items() if k in before} == before and set(after) - set(before) == {"tiny.ort.onnx", "tiny.ort.onnx.manifest.json"}
