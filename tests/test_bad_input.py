"""Every command, given what a clumsy user gives it: one `error:` line, exit 1, no traceback, nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app

runner = CliRunner()

ONNX_COMMANDS = {
    "info": lambda m, tmp, data: ["info", m],
    "flops": lambda m, tmp, data: ["flops", m],
    "simplify": lambda m, tmp, data: ["simplify", m, "-o", str(tmp / "out.onnx")],
    "quantize": lambda m, tmp, data: ["quantize", m, "--precision", "fp16", "-o", str(tmp / "out.onnx")],
    "build": lambda m, tmp, data: ["build", m, "--target", "cpu", "-o", str(tmp / "out")],
    "predict": lambda m, tmp, data: ["predict", m, str(next((data / "val" / "cat").glob("*.png")))],
    "eval": lambda m, tmp, data: ["eval", m, "--data", str(data / "val")],
    "bench": lambda m, tmp, data: ["bench", m, "--iterations", "1", "--rounds", "1"],
    "stream": lambda m, tmp, data: ["stream", m, str(data / "val" / "cat"), "--save", str(tmp / "out.mp4")],
}


def fails_cleanly(result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1


@pytest.mark.parametrize("command", sorted(ONNX_COMMANDS))
@pytest.mark.parametrize("corruption", ["garbage", "truncated", "missing", "folder", "not-utf8", "not-utf8-shape"])
def test_corrupt_onnx_in_every_command(command, corruption, trained, tmp_path):
    model = tmp_path / "model.onnx"
    if corruption == "not-utf8":  # a metadata key that is not UTF-8: protobuf hands it over as bytes
        import onnx

        proto = onnx.load(str(trained.onnx))
        proto.metadata_props.add(key="precQQion", value="fp32")
        model.write_bytes(proto.SerializeToString().replace(b"precQQion", b"prec\xff\xfeion"))
    elif corruption == "not-utf8-shape":  # the input's batch dimension named in bytes that are not UTF-8 (was a traceback)
        import onnx

        proto = onnx.load(str(trained.onnx))
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "dimQQparam"
        model.write_bytes(proto.SerializeToString().replace(b"dimQQparam", b"dim\xff\xfeparam"))
    elif corruption == "garbage":
        model.write_bytes(b"\x08\x07this is not protobuf" * 10)
    elif corruption == "truncated":
        model.write_bytes(trained.onnx.read_bytes()[: trained.onnx.stat().st_size // 3])
    elif corruption == "folder":
        model.mkdir()
    needle = {"garbage": "not a readable ONNX model", "truncated": "not a readable ONNX model", "missing": "not found",
              "folder": "not a file", "not-utf8": "].key is not UTF-8 text",
              "not-utf8-shape": "dim[0].dim_param is not UTF-8 text"}[corruption]
    if corruption == "folder" and command in ("predict", "eval", "bench", "stream"):
        needle = "no built artifact in this folder"  # these take a build folder: an empty one says so
    fails_cleanly(runner.invoke(app, ONNX_COMMANDS[command](str(model), tmp_path, trained.data)), needle)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out").exists() and not (tmp_path / "out.mp4").exists()


def test_eval_bad_data(trained, built_fp32, tmp_path):
    fails_cleanly(runner.invoke(app, ["eval", str(built_fp32), "--data", str(tmp_path / "missing")]), "data folder not found")
    (tmp_path / "flat").mkdir()
    fails_cleanly(runner.invoke(app, ["eval", str(built_fp32), "--data", str(tmp_path / "flat")]), "class folder")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images")
    fails_cleanly(runner.invoke(app, ["eval", str(built_fp32), "--data", str(tmp_path / "empty")]), "has no readable images")


def test_bench_bad_input(built_fp32, tmp_path):
    fails_cleanly(runner.invoke(app, ["bench", str(tmp_path / "missing.ort.onnx")]), "not found")
    r = runner.invoke(app, ["bench", str(built_fp32), "--baseline", "tensorflow"])
    assert r.exit_code == 2 and "tensorflow" in r.stderr
    r = runner.invoke(app, ["bench", str(built_fp32), "--batch", "1,x"])
    assert r.exit_code == 2 and "--batch" in r.stderr


def test_targets_bad_input(tmp_path):
    (tmp_path / "broken.toml").write_text("name = \n")
    fails_cleanly(runner.invoke(app, ["targets", "--targets-dir", str(tmp_path)]), "broken.toml: not a valid target file")
    (tmp_path / "broken.toml").write_text('name = "x"\nbackend = "tflite"\ndevice = "cpu"\nprecisions = ["fp32"]\ndefault_precision = "fp32"\n'
                                         'description = "x"\n')
    fails_cleanly(runner.invoke(app, ["targets", "--targets-dir", str(tmp_path)]), "unknown backend")
    fails_cleanly(runner.invoke(app, ["targets", "--targets-dir", str(tmp_path / "nope")]), "no such folder")


def test_demo_data_and_simplify_outputs(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails_cleanly(runner.invoke(app, ["demo-data", "-o", str(blocker)]), "is a file")
    fails_cleanly(runner.invoke(app, ["demo-data", "-o", str(blocker / "sub")]), "a file of that name is in the way")
    fails_cleanly(runner.invoke(app, ["simplify", str(trained.onnx), "-o", str(blocker / "s.onnx")]), "a file of that name is in the way")
    fails_cleanly(runner.invoke(app, ["simplify", str(trained.onnx), "-o", str(tmp_path)]), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_demo_data_reuses_only_a_whole_folder(tmp_path):
    """Found by a new user's walk: demo-data trusted its VERSION marker alone, so a folder with photos deleted or files
    added was reused as it stood ('wrote ...', exit 0). Now a folder is reused only when its index accounts for every
    file with its sha256; one of ours that lost a file is made again; one with a file of yours is refused (the --force
    rule's one line) and that file kept."""
    out = tmp_path / "demo"
    assert runner.invoke(app, ["demo-data", "-o", str(out)]).exit_code == 0
    first = sorted((out / "train" / "cat").iterdir())[0]
    first.unlink()
    assert runner.invoke(app, ["demo-data", "-o", str(out)]).exit_code == 0 and first.is_file()
    first.write_bytes(b"edited")
    assert runner.invoke(app, ["demo-data", "-o", str(out)]).exit_code == 0 and first.read_bytes() != b"edited"
    mine = out / "train" / "mine.txt"
    mine.write_text("mine")
    r = runner.invoke(app, ["demo-data", "-o", str(out)])
    fails_cleanly(r, "train/mine.txt")
    assert mine.read_text() == "mine"


def test_pipeline_checks_its_calibration_folder_before_any_stage(trained, tmp_path):
    """Found by a new user's walk: `pipeline --calib <empty folder>` was refused only after the export and the FP16 model,
    leaving a .failed folder. Now it is one line before anything is made."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    for calib, says in ((empty, "no readable images"), (tmp_path / "missing", "calibration folder not found")):
        r = runner.invoke(app, ["pipeline", "--weights", str(trained.checkpoint), "--calib", str(calib), "-o", str(tmp_path / "run")])
        fails_cleanly(r, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
