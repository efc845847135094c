"""Hostile and clumsy input, as an attacker and a careless user would give it: real files, real processes, real signals.

Each case asserts the exit code, one ``error:`` line (or Click's usage error, exit 2), no traceback, the previous
artifact intact and no temporary files left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edge_inception.data.images import load_image
from edge_inception.engines.build import build
from edge_inception.engines.manifest import canonical_sha256, manifest_path, read_manifest
from edge_inception.errors import ImageError
from edge_inception.fileio import TMP_TAG, sha256_file
from edge_inception.limits import LimitError, check_batch_memory

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "edge_inception"]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO (optional extra) is not installed")


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(r: subprocess.CompletedProcess, needle: str, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, r.stderr
    assert needle in errors[0], errors[0]
    return errors[0]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TMP_TAG in p.name]


def snapshot(artifact: Path) -> dict[str, str]:
    files = [artifact, manifest_path(artifact), *[artifact.with_name(n) for n in read_manifest(artifact).files]]
    return {f.name: sha256_file(f) for f in files}


@pytest.fixture(scope="module")
def other_source(trained, tmp_path_factory) -> Path:
    """Another model with the same file name as trained.onnx (seeded weights): a rebuild from it would replace the artifact."""
    from edge_inception.convert.export import export_model

    folder = tmp_path_factory.mktemp("other")
    return export_model(None, folder / trained.onnx.name, num_classes=10, image_size=64, seed=5).path


@pytest.fixture(scope="module")
def built(built_fp32) -> Path:
    return built_fp32


def photo(trained) -> Path:
    return sorted((trained.data / "val" / "cat").glob("*.png"))[0]


# 1, 3, 4: an artifact is one unit; a rebuild that fails or is killed keeps the previous one -----------------------------

def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if list(folder.glob(pattern)):
            return
        time.sleep(0.005)
    raise AssertionError(f"{pattern} never appeared in {folder} (exit {proc.poll()})")


@pytest.mark.parametrize("backend", ["ort", pytest.param("openvino", marks=needs_openvino)])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_rebuild_keeps_the_previous_artifact(trained, other_source, tmp_path, backend, sig):
    out = tmp_path / "out"
    first = build(trained.onnx, "cpu", backend=backend, output_dir=out).artifact
    before = snapshot(first)
    proc = _start("build", str(other_source), "--target", "cpu", "--backend", backend, "-o", str(out))
    _wait_for(f".*{TMP_TAG}*/*", out, proc)  # mid-build: the new artifact is being written in its staging folder
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert snapshot(first) == before  # the previous artifact, its manifest and its .bin, untouched and still valid
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        # nothing can clean up after SIGKILL: the next build into the folder sweeps what the dead process left
        build(trained.onnx, "cpu", backend=backend, output_dir=out)
    else:
        assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
        assert "Traceback" not in err and "nothing half-written" in err
    assert not temporaries(out)


def test_rebuild_that_fails_verification_keeps_the_previous_artifact(trained, other_source, tmp_path, monkeypatch):
    """A real fault, really detected: the optimiser writes another network into the new artifact; the real comparison
    with the source refuses it, and the artifact already in the folder stays as it was."""
    import edge_inception.engines.ort as ort_backend
    from edge_inception.errors import VerificationError

    out = tmp_path / "out"
    first = build(trained.onnx, "cpu", output_dir=out).artifact
    before = snapshot(first)
    real_build_cpu = ort_backend.build_cpu
    monkeypatch.setattr(ort_backend, "build_cpu", lambda source, artifact, threads: real_build_cpu(other_source, artifact, threads))
    with pytest.raises(VerificationError, match="differs from demo.onnx"):
        build(trained.onnx, "cpu", output_dir=out)
    assert snapshot(first) == before and not temporaries(out)


def test_failed_rebuild_keeps_the_previous_artifact(built, tmp_path):
    """A rebuild from a corrupt source of the same name changes nothing."""
    before = snapshot(built)
    bogus = tmp_path / built.name.replace(".ort.onnx", ".onnx")
    bogus.write_bytes(b"\x08\x07garbage")
    r = run("build", str(bogus), "--target", "cpu", "-o", str(built.parent))
    one_error_line(r, "not a readable ONNX model")
    assert snapshot(built) == before and not temporaries(built.parent)


# 2: OpenVINO's weights are checked ---------------------------------------------------------------------------------------

@needs_openvino
def test_openvino_bin_is_checked(trained, tmp_path):
    art = build(trained.onnx, "cpu", backend="openvino", output_dir=tmp_path / "ov").artifact
    weights = art.with_suffix(".bin")
    assert read_manifest(art).files == {weights.name: sha256_file(weights)}
    good = weights.read_bytes()
    edited = bytearray(good)
    edited[len(edited) // 2 : len(edited) // 2 + 4096] = bytes(4096)  # zero 1 K weights: still loads, answers differ
    weights.write_bytes(bytes(edited))
    for args in (["predict", str(art), str(photo(trained))], ["eval", str(art), "--data", str(trained.data / "val")],
                 ["bench", str(art), "--baseline", "none", "--iterations", "1", "--rounds", "1", "--no-peak"]):
        one_error_line(run(*args), f"{weights.name} does not match its manifest")
    weights.write_bytes(good[:1000])
    one_error_line(run("predict", str(art), str(photo(trained))), "does not match its manifest")
    weights.unlink()
    one_error_line(run("predict", str(art), str(photo(trained))), f"its {weights.name} is missing")


# 4: temporary files of a killed export or quantize are recognisable and swept ----------------------------------------------

def test_killed_export_leaves_nothing_the_next_run_keeps(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    proc = _start("export", "--image-size", "64", "--num-classes", "5", "-o", str(out))
    _wait_for(f".m.onnx.{TMP_TAG}-*", tmp_path, proc)
    time.sleep(0.5)  # inside the export now
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert out.read_bytes() == b"previous"
    assert temporaries(tmp_path), "SIGKILL leaves the temporary file (nothing can remove it) ..."
    r = run("export", "--image-size", "64", "--num-classes", "5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert not temporaries(tmp_path)  # ... and the next export into the folder removes it


def test_terminated_quantize_leaves_no_temporary_files(trained, tmp_path):
    out = tmp_path / "q" / "m.int8.onnx"
    proc = _start("quantize", str(trained.onnx), "--precision", "int8", "--calib", str(trained.data / "train"), "-o", str(out))
    _wait_for(f"q/.m.int8.onnx.quantize.{TMP_TAG}-*/prepared.onnx", tmp_path, proc)  # calibrating now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert not out.exists() and not temporaries(tmp_path)


# 5, 6, 12: images ---------------------------------------------------------------------------------------------------------

def test_decompression_bomb_and_extreme_shapes(trained, built, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 48 KB on disk, 400 M pixels decoded
    assert bomb.stat().st_size < 100_000
    thin = tmp_path / "thin.png"
    Image.new("RGB", (200000, 1)).save(thin)  # a few hundred bytes; resizing its short side to 73 px would need 40 GB
    big = tmp_path / "big.png"
    Image.new("1", (9000, 9000)).save(big)  # under Pillow's own bomb limit, over ours
    for image, needle in ((bomb, "400 MP is more than the 64 MP"), (thin, "more elongated than 20:1"), (big, "81 MP")):
        one_error_line(run("predict", str(built), str(image)), needle)

    # in a calibration folder they are skipped and counted, as the README promises
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, p in enumerate(sorted((trained.data / "train").rglob("*.png"))[::40][:10]):
        Image.open(p).save(calib / f"{i}.png")
    for p in (bomb, thin):
        (calib / p.name).write_bytes(p.read_bytes())
    r = run("quantize", str(trained.onnx), "--precision", "fp16", "--calib", str(calib), "-o", str(tmp_path / "m.fp16.onnx"))
    assert r.returncode == 0, r.stderr
    assert "skipped 2 non-image or unreadable file(s)" in r.stderr and "Traceback" not in r.stderr

    # and in an evaluation folder too
    data = tmp_path / "eval" / "cat"
    data.mkdir(parents=True)
    (data / "ok.png").write_bytes(photo(trained).read_bytes())
    (data / bomb.name).write_bytes(bomb.read_bytes())
    r = run("eval", str(built), "--data", str(tmp_path / "eval"))
    assert r.returncode == 0 and "1 images" in r.stdout and "(1 files skipped)" in r.stdout, r.stderr


def test_an_image_between_pillows_two_bomb_limits_is_one_line_on_every_path(tmp_path):
    """Pillow warns (two lines naming its own source file) on a header over 89 MP and raises over 179 MP; ours refuses
    over 64 MP. Every reader (predict fast and exact, a stream over a folder) goes through data.images.opened_image:
    exactly one stderr line for each, whatever the claim, and in a stream folder the image is skipped without a word."""
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    warned = tmp_path / "warned.png"
    Image.new("1", (10000, 10000)).save(warned)  # 100 MP: over Pillow's warning limit, under its error limit
    refused = tmp_path / "refused.png"
    Image.new("1", (14000, 14000)).save(refused)  # 196 MP: over Pillow's error limit
    for image, claim in ((warned, "100 MP"), (refused, "196 MP")):
        for mode in ("fast", "exact"):
            r = run("predict", str(model), str(image), "--preprocess", mode)
            assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
            assert claim in r.stderr and "is more than the 64 MP this toolkit decodes" in r.stderr, r.stderr
    folder = tmp_path / "frames"
    folder.mkdir()
    for image in (warned, refused):
        (folder / image.name).write_bytes(image.read_bytes())
    Image.new("RGB", (80, 64), (200, 30, 30)).save(folder / "readable.png")  # a stream of nothing but skipped images is an error
    r = run("stream", str(model), str(folder))
    assert r.returncode == 0 and r.stderr == "" and "1 frames" in r.stdout and "skipped corrupt 2" in r.stdout, r.stderr


def _ico_holding(png: bytes) -> bytes:
    """An ICO whose one directory entry says 256 x 256 and holds ``png`` (Pillow decodes it when it opens the ICO)."""
    import struct

    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def test_a_picture_inside_an_image_is_held_to_the_same_bound(tmp_path):
    """An image whose header is small but that holds a larger picture (an ICO's PNG, which Pillow decodes while opening
    it, before any header check of ours): an ICO named .jpg whose PNG declares 9000 x 9000 (81 MP, its data cut) is
    refused for its size, in one line, before that picture is decoded (it was decoded first, and a real 13000 x 13000
    one, 0.5 MB on disk, took 674 MB); a harmless ICO whose PNG differs from its directory prints nothing extra."""
    import io
    import struct
    import zlib

    from tests.stream_media import tiny_classifier

    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)
    lying = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    lying += struct.pack(">I", 10) + b"IDAT" + b"\x78\x9c" + b"\x00" * 8
    (tmp_path / "icon.jpg").write_bytes(_ico_holding(lying))
    with pytest.raises(ImageError, match="81 MP is more than the 64 MP this toolkit decodes"):
        load_image(tmp_path / "icon.jpg")
    model = tiny_classifier(tmp_path / "m.onnx")
    one_error_line(run("predict", str(model), str(tmp_path / "icon.jpg")), "icon.jpg: 81 MP is more than the 64 MP")
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 30, 30)).save(buf, "PNG")
    (tmp_path / "small.jpg").write_bytes(_ico_holding(buf.getvalue()))
    r = run("predict", str(model), str(tmp_path / "small.jpg"))
    assert r.returncode == 0 and r.stderr.splitlines() == [r.stderr.splitlines()[0]] and "1 image in" in r.stderr, r.stderr


def test_an_image_under_the_bound_gives_no_pillow_warning(tmp_path):
    """Pillow's own limit is half ours for its warning: a 7000 x 7000 header (49 MP, a phone's photo size) must not
    print Pillow's DecompressionBombWarning, even where the warning filters were reset since the first image (a
    caller's ``warnings.catch_warnings``, as pytest does per test)."""
    import struct
    import warnings
    import zlib

    ihdr = struct.pack(">IIBBBBB", 7000, 7000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "big.png").write_bytes(png + struct.pack(">I", 10) + b"IDAT" + b"\x78\x9c" + b"\x00" * 8)
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    load_image(tmp_path / "small.png")  # the first image of the process
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="not a readable image"):  # its data is cut: refused for that, not its size
            load_image(tmp_path / "big.png")
    assert [str(w.message) for w in seen] == []


def test_sixteen_bit_and_exif_orientation(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    got = np.asarray(load_image(tmp_path / "g16.png"))[..., 0].astype(int)
    expected = np.round(ramp / 65535 * 255).astype(int)
    assert np.abs(got - expected).max() <= 1  # scaled, not clipped: before, 99.6 % of the pixels came out white
    assert (got == 255).mean() < 0.01

    # a phone photo: pixels stored landscape with "rotate 90 CW" in EXIF; viewers (and the model) must see it upright
    upright = Image.new("RGB", (20, 40), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 20, 20))  # red on top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.size == (20, 40)
    top, bottom = np.asarray(loaded)[5, 10], np.asarray(loaded)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_resource_bounds_at_the_options(built, trained):
    for args, option in ((["export", "--image-size", "10000"], "--image-size"), (["export", "--image-size", "0"], "--image-size"),
                         (["export", "--num-classes", "0"], "--num-classes"), (["export", "--num-classes", "-3"], "--num-classes"),
                         (["export", "--opset", "5"], "--opset"), (["export", "--opset", "99"], "--opset"),
                         (["flops", str(trained.onnx), "--image-size", "7"], "--image-size"),
                         (["flops", str(trained.onnx), "--image-size", "-5"], "--image-size"),
                         (["bench", str(built), "--threads", "10000"], "--threads"),
                         (["bench", str(built), "--batch", "100000"], "--batch")):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert option in r.stderr.strip().splitlines()[-1], (args, r.stderr)
    with pytest.raises(LimitError, match="at most"):
        check_batch_memory(1024, 1024)  # 1024 images of 1024 px: far beyond any machine's memory


# 7: manifests are untrusted input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "needle"), [
    ("artifact", "../something", "without folders"),
    ("num_classes", 0, "num_classes"),
    ("num_classes", -5, "num_classes"),
    ("num_classes", 100000, "num_classes"),
    ("image_size", -1, "image_size"),
    ("image_size", 0, "image_size"),
    ("image_size", 10**9, "image_size"),
    ("image_size", "abc", "image_size"),
    ("class_names", ["a", "b"], "class_names"),
    ("options", None, "options"),
    ("options.providers", "CPUExecutionProvider", "providers"),
    ("options.threads", -1, "threads"),
    ("options.threads", 100000, "threads"),
    ("backend", "openvino", "artifacts end in .xml"),
    ("backend", "pytorch", "backend"),
    ("files", {"../../etc/passwd": "0" * 64}, "files"),
])
def test_manifest_fields_are_validated(built, trained, tmp_path, field, value, needle):
    art = tmp_path / built.name
    art.write_bytes(built.read_bytes())
    data = json.loads(manifest_path(built).read_text())
    if field.startswith("options."):
        data["options"][field.split(".")[1]] = value
    else:
        data[field] = value
    data["manifest_sha256"] = canonical_sha256(data)  # as a forger would: each field's own check must still hold
    manifest_path(art).write_text(json.dumps(data))
    one_error_line(run("predict", str(art), str(photo(trained))), needle)


# 8, 9, 10, 11: one-line errors for everything else ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def not_googlenet(tmp_path_factory) -> Path:
    """A valid ONNX model that is not an image classifier: one MatMul."""
    w = numpy_helper.from_array(np.ones((8, 5), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w])
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_non_classifier_onnx_in_every_command(not_googlenet, trained, tmp_path):
    for args in (["build", str(not_googlenet), "--target", "cpu", "-o", str(tmp_path / "b")],
                 ["predict", str(not_googlenet), str(photo(trained))],
                 ["quantize", str(not_googlenet), "--precision", "fp16", "-o", str(tmp_path / "q.onnx")],
                 ["simplify", str(not_googlenet), "-o", str(tmp_path / "s.onnx")]):
        one_error_line(run(*args), "not an image classifier")
    assert not list(tmp_path.rglob("*.onnx"))


def test_external_data_outside_the_folder_is_refused_in_one_line(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [w])
    onnx.save(helper.make_model(graph), str(sub / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(sub / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../../etc/passwd"
    onnx.save(model, str(sub / "evil.onnx"))
    for args in (["info", str(sub / "evil.onnx")], ["flops", str(sub / "evil.onnx")], ["build", str(sub / "evil.onnx"), "--target", "cpu"]):
        one_error_line(run(*args), "points outside the directory")


def test_clumsy_paths_and_options(trained, built, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_error_line(run("demo-data", "-o", str(blocker)), "is a file")
    one_error_line(run("targets", "--targets-dir", str(tmp_path / "missing")), "no such folder")
    # refused before benchmarking, not after: the benchmark asked for would warm up for an hour and then time 100 rounds of
    # a million inferences, so an answer at all (within run's timeout, which only guards against a hang) means it never began
    r = run("bench", str(built), "--warmup-s", "3600", "--iterations", "1000000", "--rounds", "100", "--baseline", "none",
            "--json", str(blocker / "b.json"), timeout=300)
    one_error_line(r, "a file of that name is in the way")
    assert "p50 ms" not in r.stdout  # no table: no engine was measured

    r = run("quantize", str(trained.onnx), "--precision", "fp16", "-o", str(tmp_path / "m.fp16.onnx"))
    assert r.returncode == 0 and "calibrating on the bundled" not in r.stderr  # FP16 calibrates nothing

    r = run("flops", str(trained.onnx), "--json")
    assert json.loads(r.stdout)["model"] == str(trained.onnx)  # not "fc.bias"
    assert run("flops", str(trained.onnx)).stdout.startswith(f"{trained.onnx}: ")


def test_finished_files_follow_the_umask(trained, tmp_path):
    old = os.umask(0o022)
    try:
        art = build(trained.onnx, "cpu", output_dir=tmp_path / "cpu").artifact
    finally:
        os.umask(old)
    for f in (art, manifest_path(art)):
        assert f.stat().st_mode & 0o777 == 0o644, (f, oct(f.stat().st_mode))


def test_ctrl_c_while_starting_exits_quietly():
    """SIGINT while the CLI is still importing its modules: exit 130, one line, no traceback. ``-X importtime`` makes
    the moment observable: Python reports each import as it completes, and the signal goes once typer's arrives."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *CLI[1:], "info", "nothing.onnx"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.split("|")[-1].strip().startswith("typer."):  # the CLI module is importing typer, module by module
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert any(line.split("|")[-1].strip().startswith("typer.") for line in seen), "typer's import was never reported"
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "interrupted while starting" in rest


def _fill(folder: Path) -> None:
    """Take what room is left on the filesystem of ``folder``."""
    with contextlib.suppress(OSError), open(folder / f"filler-{time.monotonic_ns()}", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _mount_full_filesystem(folder: Path) -> bool:
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


def test_full_disk_gives_one_line_and_keeps_the_old_file(trained, tmp_path):
    full = tmp_path / "full"
    if not _mount_full_filesystem(full):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights): the full-disk case is not exercised")
    try:
        (full / "demo.sim.onnx").write_bytes(b"previous")
        r = run("simplify", str(trained.onnx), "-o", str(full / "demo.sim.onnx"))  # 22 MB into 4 MB
        one_error_line(r, "No space left on device")
        assert (full / "demo.sim.onnx").read_bytes() == b"previous"
        assert not temporaries(full)
        r = run("build", str(trained.onnx), "--target", "cpu", "-o", str(full / "cpu"))
        one_error_line(r, "No space left on device")
        assert not temporaries(full)
        if importlib.util.find_spec("openvino") is not None:  # OpenVINO's writer says "iostream error", not why (seen in CI)
            r = run("build", str(trained.onnx), "--target", "cpu", "--backend", "openvino", "-o", str(full / "cpu"))
            one_error_line(r, "No space left on device")
            assert not temporaries(full)

        # each kind of output, over an existing file of that name, on a filesystem with no room left
        previous = {name: f"previous {name}".encode() for name in ("q.onnx", "b.json", "b.md", "t.pth")}
        for name, data in previous.items():
            (full / name).write_bytes(data)
        _fill(full)
        runs = {
            "q.onnx": ["quantize", str(trained.onnx), "--precision", "fp16", "--calib", str(trained.data / "train"), "-o", str(full / "q.onnx")],
            "b.json": ["bench", str(trained.onnx), "--baseline", "none", "--iterations", "1", "--rounds", "1", "--no-peak",
                       "--json", str(full / "b.json"), "--markdown", str(full / "b.md")],
            "t.pth": ["train", "--data", str(trained.data / "train"), "--val", str(trained.data / "val"), "--max-steps", "1", "--batch-size", "4",
                      "--image-size", "32", "-o", str(full / "t.pth")],
        }
        for name, args in runs.items():
            one_error_line(run(*args), "No space left on device")
            assert not temporaries(full), name
        assert {name: (full / name).read_bytes() for name in previous} == previous
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(full)], capture_output=True)
