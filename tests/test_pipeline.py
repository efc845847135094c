import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.registry import artifact_info

from .conftest import ort_only_target

runner = CliRunner()


def test_pipeline_report_and_reruns(trained, tmp_path):
    out = tmp_path / "run"
    # 40 calibration crops of the bundled photos (ours and NNCF's), not 100: what this test checks does not depend on how many
    args = ["pipeline", "--weights", str(trained.checkpoint), "--calib-size", "40", "--batch", "1", "--iterations", "5", "--rounds", "1",
            "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    from edge_inception.engines.candidates import cpu_float_precisions
    from edge_inception.evaluate.cpu import cpu_info

    # every backend x precision, NNCF's INT8 (the [openvino] extra) and, on a CPU with AVX-512 BF16 or AMX, OpenVINO in bf16
    extras = {"openvino-int8-nncf"} | ({"openvino-fp32-bf16"} if cpu_float_precisions(cpu_info().flags) else set())
    assert set(report["artifacts"]) == {f"{b}-{p}" for b in ("ort", "openvino") for p in ("fp32", "fp16", "int8")} | extras
    for rel in report["artifacts"].values():
        assert (out / rel).is_file() and (out / (rel + ".manifest.json")).is_file()
    # one judge (tests/test_candidates.py): what shipped passed it; INT8 on the demo's 10 held-out photos cannot be proven
    # at 99 % (its 95 % bound is at most 10 / 12.7 = 79 %), so it is unproven or failed and not shipped without --ship-unproven
    judged = {c["name"]: c["judged"] for c in report["candidates"]}
    assert judged[report["ship"]["candidate"]] == "passed" and not report["ship"]["unproven"]
    assert report["verification_photos"] == 10
    assert {judged["ort-int8"], judged["openvino-int8"], judged["openvino-int8-nncf"]} <= {"unproven", "failed"}
    # the ship line says why a faster INT8 did not ship (its bound on 10 photos), where one ran faster
    p50 = {c["name"]: c["p50_ms"]["1"] for c in report["candidates"]}
    faster = [n for n in judged if "int8" in n and p50[n] < p50[report["ship"]["candidate"]]]
    assert all(f"{n} at {p50[n]:.2f} ms (" in report["ship"]["why"] for n in faster)
    nncf = next(c for c in report["candidates"] if c["name"] == "openvino-int8-nncf")
    assert nncf["quantizer"] == "nncf" and "bundled photos" in nncf["calibration"] and nncf["isa"] and nncf["runtime_precision"]
    assert report["verification_vs_pytorch"]["ort-fp32"]["max_rel_error"] < 1e-4
    md = (out / "report.md").read_text()
    assert "ship:" in md and "Compute budget" in md and (out / "bench.png").is_file()
    # what the INT8 model is for and what it was calibrated on, on the console and in the report (the bundled photos here)
    int8_scheme = report["quantization"]["int8"]["scheme"]
    assert f"int8: {int8_scheme}; calibrated on" in md and "bundled photos" in md and int8_scheme in r.output
    assert "Where the time goes" in md and (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    profiles = json.loads((out / "profile.json").read_text())
    assert [p["candidate"] for p in profiles] == list(report["artifacts"]) and all({"inception_3a", "fc"} <= {s["stage"] for s in p["stages"]}
                                                                                  for p in profiles)

    # published artifacts name their sources relative to themselves, not to the staging folder they were built in
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    int8 = moved / report["artifacts"]["ort-int8"]
    assert Path(artifact_info(int8).source_onnx).resolve() == (moved / "model.int8.onnx").resolve()
    r = runner.invoke(app, ["bench", str(int8), "--iterations", "2", "--rounds", "1", "--baseline", "ort-default", "--no-peak",
                            "--json", str(tmp_path / "b.json")])  # the matmul probe is test_bench's
    assert r.exit_code == 0, r.output
    assert {row["engine"] for row in json.loads((tmp_path / "b.json").read_text())["results"]} == {"ort-int8", "ort-default"}

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert json.loads((out / "report.json").read_text()) == report  # untouched
    (out / "notes-of-the-user.txt").write_text("x")  # --force never deletes a file the product did not write (issue 38, kind 7)
    refused = runner.invoke(app, args + ["--force"])
    assert refused.exit_code == 1 and "did not write (notes-of-the-user.txt)" in refused.stderr
    assert (out / "notes-of-the-user.txt").read_text() == "x"
    (out / "notes-of-the-user.txt").unlink()
    (out / "bench.md").write_text("edited")  # a file of the product's, edited: still the product's folder
    # FP32 alone on ONNX Runtime alone (the cheapest pipeline: a target file of one backend): what --force does to the
    # folder does not depend on what the run builds
    ort_only = ort_only_target(tmp_path, ("fp32",))
    forced = runner.invoke(app, [*args, "--precisions", "fp32", "--target", str(ort_only), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "bench.md").read_text() != "edited"  # --force replaces the folder, it does not merge into it
    assert (out / "report.json").is_file() and not (out / "model.int8.onnx").exists()  # nothing of the earlier run is left
    assert set(json.loads((out / "report.json").read_text())["artifacts"]) == {"ort-fp32"}  # the target file's one backend
    assert not list(tmp_path.glob(".run.*"))  # no temporary folders left behind


def test_pipeline_bad_precision(tmp_path):
    r = runner.invoke(app, ["pipeline", "--precisions", "fp32,int3", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "int3" in r.stderr and not (tmp_path / "x").exists()  # a usage error, as Click reports them


def test_failed_stage_is_named_and_earlier_outputs_kept(trained, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "photo.png").write_text("not an image")  # named as one: past the check before any stage, refused when decoded
    out = tmp_path / "run"
    r = runner.invoke(app, ["pipeline", "--weights", str(trained.checkpoint), "--precisions", "fp32,int8", "--calib", str(calib), "-o", str(out)])
    assert r.exit_code == 1
    assert "stage 'quantize int8' failed" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # the report folder is all or nothing
    kept = tmp_path / "run.failed"
    assert (kept / "model.fp32.onnx").is_file() and not (kept / "model.int8.onnx").exists()
    assert not [p for p in kept.iterdir() if p.name.startswith(".")]  # no temporary files among them


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_pipeline_interrupted_leaves_nothing_half_written(trained, tmp_path, sig, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edge_inception", "pipeline", "--weights", str(trained.checkpoint), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".run.*/model.fp32.onnx")):
        time.sleep(0.2)  # wait until the run is mid-way: the export is written, quantization is running
    assert list(tmp_path.glob(".run.*/model.fp32.onnx")), "the pipeline never reached its first artifact"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "nothing half-written" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))  # no report folder, no temporary folder
