"""README promises no other test ran (issue 41), each with the real components and the product's own answer:

the last chunk padded for a model exported with ``--batch N``; the size bounds of manifests, presets and bundle files
(accepted at the bound, one line naming the limit at the bound + 1 byte); the ``bundle.json`` sha256 that ``bundle``
and ``check`` print; ``check`` refusing class names that differ from ``labels.txt``; non-square inputs refused; an
unwritable output path for a user who is not root; two writers in one folder; ``predict`` over several images with
one unreadable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.fileio import OUTPUT_INDEX

from .stream_media import tiny_classifier

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "edge_inception"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _photos(folder: Path, n: int, size: tuple[int, int] = (80, 60), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same seeded GoogLeNet (10 classes, 64 px) exported twice: dynamic batch and fixed ``--batch 4``."""
    from edge_inception.convert.export import export_model

    d = tmp_path_factory.mktemp("promises")
    dynamic = export_model(None, d / "dyn.onnx", num_classes=10, image_size=64, seed=4).path
    fixed = export_model(None, d / "b4.onnx", num_classes=10, image_size=64, seed=4, batch=4).path
    return {"dir": d, "dynamic": dynamic, "fixed": fixed}


# --- the last chunk padded (--batch N) ---------------------------------------------------------------------------

def test_fixed_batch_model_pads_the_last_chunk_and_answers_as_the_dynamic_one(models, tmp_path):
    import onnx

    from edge_inception.engines.registry import open_runner
    from edge_inception.evaluate.predict import evaluate, predict

    assert onnx.load(str(models["fixed"])).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    x = np.random.default_rng(1).normal(0, 1, (6, 3, 64, 64)).astype(np.float32)  # 6 = 4 + 2: the last chunk padded by 2
    with open_runner(models["dynamic"]) as dyn, open_runner(models["fixed"]) as fix:
        want = dyn.run(x)
        got = fix.run(x)
        assert got.shape == want.shape == (6, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fix.run(x[:3]), want[:3], rtol=1e-4, atol=1e-4)  # fewer than N: one padded chunk
        np.testing.assert_allclose(fix.run(x[:4]), want[:4], rtol=1e-4, atol=1e-4)  # exactly N
    images = _photos(tmp_path / "imgs", 7, seed=2)  # predict's chunks of 8 hold 7: 4 + 3 padded by 1
    p_dyn = predict(models["dynamic"], [str(p) for p in images], top_k=10)
    p_fix = predict(models["fixed"], [str(p) for p in images], top_k=10)
    assert [p.image for p in p_fix.predictions] == [str(p) for p in images]
    for a, b in zip(p_dyn.predictions, p_fix.predictions):
        assert [i for i, _, _ in a.top] == [i for i, _, _ in b.top]
        np.testing.assert_allclose([s for *_, s in b.top], [s for *_, s in a.top], atol=1e-5)
    data = tmp_path / "data"
    for c in range(3):  # 3 classes x 3 images = 9 at --batch-size 16: chunks 4, 4 and 1 padded by 3
        _photos(data / str(c), 3, seed=10 + c)
    e_dyn = evaluate(models["dynamic"], data, 16)
    e_fix = evaluate(models["fixed"], data, 16)
    assert e_fix.images == e_dyn.images == 9
    assert (e_fix.top1, e_fix.top5) == (e_dyn.top1, e_dyn.top5)
    r = runner.invoke(app, ["predict", str(models["fixed"]), *map(str, images), "--json", "--top-k", "10"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 7 and [row["image"] for row in rows] == [str(p) for p in images]


# --- predict: several images, one unreadable ---------------------------------------------------------------------

def test_predict_skips_and_counts_an_unreadable_image_among_several(models, tmp_path):
    good = _photos(tmp_path, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = subprocess.run([*CLI, "predict", str(models["dynamic"]), str(good[0]), str(bad), str(good[1]), str(good[2]), "--json"],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["image"] for line in r.stdout.splitlines()] == [str(good[0]), str(good[1]), str(good[2])]
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    assert "3 images in" in r.stderr and "Traceback" not in r.stderr
    # the only image given, unreadable: an error in one line
    r = subprocess.run([*CLI, "predict", str(models["dynamic"]), str(bad)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 1 and "broken.jpg" in _one_error_line(r.stderr) and r.stdout == ""


# --- non-square inputs -------------------------------------------------------------------------------------------

def test_a_non_square_input_is_refused_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 0.1, (10, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "wide.onnx"
    onnx.save(model, str(path))
    img = _photos(tmp_path / "i", 1)[0]
    for args in (["predict", str(path), str(img)], ["stream", str(path), str(img.parent)],
                 ["bundle", str(path), "--target", "cpu", "-o", str(tmp_path / "b")]):
        r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=_env())
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert _one_error_line(r.stderr).endswith("its input is 64 x 96; this toolkit feeds square images")
    assert not (tmp_path / "b").exists()


# --- bundles: the printed sha256, labels, size bounds ------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    out = d / "b"
    r = subprocess.run([*CLI, "bundle", str(models["dynamic"]), "--target", "cpu", "-o", str(out), "--references", "2"],
                       capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr
    return {"folder": out, "stdout": r.stdout, "dir": d}


def _copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle["folder"], dst)
    return dst


def _check(folder: Path, artifact: Path | None = None) -> subprocess.CompletedProcess:
    model = artifact or next(folder.glob("*.onnx"))
    return subprocess.run([*CLI, "check", str(model), "--reference", str(folder / "reference")], capture_output=True, text=True,
                          timeout=300, env=_env())


def _rehash(folder: Path, name: str) -> None:
    """Record ``name``'s new sha256 in bundle.json, as someone editing a bundle thoroughly would."""
    index = json.loads((folder / "bundle.json").read_text())
    index["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "bundle.json").write_text(json.dumps(index, indent=2))


def test_bundle_and_check_print_the_sha256_of_bundle_json(bundle, tmp_path):
    digest = hashlib.sha256((bundle["folder"] / "bundle.json").read_bytes()).hexdigest()
    assert f"bundle.json sha256 {digest}" in bundle["stdout"]
    r = _check(bundle["folder"])
    assert r.returncode == 0, r.stderr
    assert f"(sha256 {digest}: compare with what 'bundle' printed)" in r.stdout
    # an edit that rewrote the hashes too changes the printed sha256
    copy = _copy(bundle, tmp_path)
    (copy / "build.sh").write_text((copy / "build.sh").read_text() + "# edited\n")
    _rehash(copy, "build.sh")
    r = _check(copy)
    assert r.returncode == 0, r.stderr
    edited = hashlib.sha256((copy / "bundle.json").read_bytes()).hexdigest()
    assert edited != digest and f"(sha256 {edited}:" in r.stdout


def test_check_refuses_class_names_that_differ_from_labels_txt(bundle, models, tmp_path):
    from edge_inception.engines.build import build
    from edge_inception.engines.manifest import canonical_sha256, manifest_path

    copy = _copy(bundle, tmp_path)
    labels = (copy / "labels.txt").read_text().splitlines()
    labels[2] = "a different class"
    (copy / "labels.txt").write_text("\n".join(labels) + "\n")
    _rehash(copy, "labels.txt")  # the hashes agree: only the comparison with the model's own names can catch it
    r = _check(copy)
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith("labels.txt: line 3 differs from dyn.onnx's class names; the bundle was edited")
    # a built artifact of the bundle's model whose (consistently hashed) manifest carries other class names
    art = build(bundle["folder"] / "dyn.onnx", "cpu", output_dir=tmp_path / "build").artifact
    m = manifest_path(art)
    data = json.loads(m.read_text())
    names = list(data["class_names"])
    names[0] = "renamed"
    data["class_names"] = names
    data["manifest_sha256"] = canonical_sha256(data)
    m.write_text(json.dumps(data, indent=2))
    r = _check(bundle["folder"], art)
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith("its manifest's class names differ from the bundle's labels.txt; rebuild it from the bundle")


def _pad_json(path: Path, size: int) -> None:
    """Pad a JSON file with trailing spaces (still the same JSON) to exactly ``size`` bytes."""
    body = path.read_bytes().rstrip()
    assert len(body) < size
    path.write_bytes(body + b" " * (size - len(body)))


def test_bundle_file_bounds_at_the_bound_and_one_byte_more(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    _pad_json(copy / "bundle.json", 1 << 20)
    r = _check(copy)
    assert r.returncode == 0, r.stderr  # 1 MiB exactly: accepted
    _pad_json(copy / "bundle.json", (1 << 20) + 1)
    r = _check(copy)
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith("bundle.json: 1,048,577 bytes, more than the 1,048,576 such a file may have")
    copy2 = tmp_path / "c2"
    shutil.copytree(bundle["folder"], copy2)
    with open(copy2 / "labels.txt", "ab") as f:  # 4 MiB + 1: refused by size before its content is compared
        f.write(b"x" * ((4 << 20) + 1 - (copy2 / "labels.txt").stat().st_size))
    _rehash(copy2, "labels.txt")
    r = _check(copy2)
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith("labels.txt: 4,194,305 bytes, more than the 4,194,304 such a file may have")


def test_manifest_bound_at_the_bound_and_one_byte_more(models, tmp_path):
    from edge_inception.engines.build import build
    from edge_inception.engines.manifest import manifest_path

    art = build(models["dynamic"], "cpu", output_dir=tmp_path / "build").artifact
    img = _photos(tmp_path / "i", 1)[0]
    m = manifest_path(art)
    _pad_json(m, 4 << 20)  # whitespace: the canonical JSON, and so manifest_sha256, is unchanged
    r = subprocess.run([*CLI, "predict", str(art), str(img)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    _pad_json(m, (4 << 20) + 1)
    r = subprocess.run([*CLI, "predict", str(art), str(img)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith(".manifest.json: 4,194,305 bytes, more than the 4,194,304 such a file may have")


def test_preset_bound_at_the_bound_and_one_byte_more(tmp_path):
    base = (REPO / "edge_inception" / "engines" / "targets" / "cpu.toml").read_text().replace('name = "cpu"', 'name = "padded"')
    preset = tmp_path / "padded.toml"

    def padded(size: int) -> None:
        text = base.rstrip("\n") + "\n#"
        preset.write_text(text + "x" * (size - len(text.encode()) - 1) + "\n")
        assert preset.stat().st_size == size

    padded(64 << 10)
    r = subprocess.run([*CLI, "targets", "--targets-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("padded ") for line in r.stdout.splitlines())
    padded((64 << 10) + 1)
    r = subprocess.run([*CLI, "targets", "--targets-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 1
    assert _one_error_line(r.stderr).endswith("padded.toml: 65,537 bytes, more than the 65,536 such a file may have")


# --- an unwritable output path, not as root ----------------------------------------------------------------------

def test_an_unwritable_output_is_one_line_for_a_user_who_is_not_root(tmp_path):
    """We run as root here, where every path is writable: the command runs as ``nobody`` (setpriv) in a folder of its own."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root to switch to an unprivileged user (setpriv); as a user, the folder below is unwritable already")
    top = Path(tempfile.mkdtemp(prefix="ei-nobody-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)  # nobody reads the model and images, writes nothing here
        model = tiny_classifier(top / "tiny.onnx")
        frames = _photos(top / "frames", 2, size=(64, 64))
        for p in [top / "frames", *frames, model]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        scratch = Path(tempfile.mkdtemp(prefix="ei-nobody-home-", dir="/tmp"))
        os.chmod(scratch, 0o777)
        env = {**_env(), "HOME": str(scratch), "MPLCONFIGDIR": str(scratch)}
        base = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, "stream", str(model), str(top / "frames")]
        for out, says in ((top / "out.jsonl", f"error: output folder {top} is not writable"),
                          (top / "sub" / "out.jsonl", f"error: cannot create output folder {top / 'sub'}: Permission denied")):
            r = subprocess.run([*base, "--json-lines", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=scratch)
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert _one_error_line(r.stderr) == says
            assert not out.exists()
        r = subprocess.run([*base, "--json-lines", str(scratch / "ok.jsonl")], capture_output=True, text=True, timeout=300, env=env, cwd=scratch)
        assert r.returncode == 0, r.stderr  # the same user, a writable folder: it runs (the refusal above is the folder's)
        assert len((scratch / "ok.jsonl").read_text().splitlines()) == 2
        assert sorted(p.name for p in top.iterdir()) == ["frames", "tiny.onnx"]
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


# --- two writers in one folder -----------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edge_inception.fileio import atomic_dir, write_json_atomic
    me, out, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    blob = [me * 64] * 4000  # ~260 KB: a write takes long enough to overlap the other writer's
    for i in range(rounds):
        write_json_atomic(out / "report.json", {"writer": me, "round": i, "blob": blob})
        with atomic_dir(out / "artifact", replace=True) as tmp:
            (tmp / "model.bin").write_text(me * 10000)
            (tmp / "manifest.json").write_text(me)
    print("done", me)
""")


def test_two_writers_in_one_folder_both_finish_and_leave_a_whole_result(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, who, str(tmp_path), "150"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for who in ("a", "b", "c")]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.split()[0] == "done"
    report = json.loads((tmp_path / "report.json").read_text())  # whole: one writer's complete JSON
    assert report["writer"] in ("a", "b", "c") and report["round"] == 149 and report["blob"] == [report["writer"] * 64] * 4000
    art = tmp_path / "artifact"
    who = (art / "manifest.json").read_text()
    assert who in ("a", "b", "c") and (art / "model.bin").read_text() == who * 10000  # the folder is one writer's, not a mix
    assert sorted(p.name for p in art.iterdir()) == sorted([OUTPUT_INDEX, "manifest.json", "model.bin"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "report.json"]  # no temporary file or folder left
