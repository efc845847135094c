"""benchmarks/bench_agreement.py and benchmarks/_record.py: the mechanism, never the figures (those depend on the CPU
and the load; the goals live in the benchmark's own results)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _record  # noqa: E402
import bench_agreement  # noqa: E402

from edge_inception.evaluate.load import OWNER_ENV, RoundLoad  # noqa: E402

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")


def _round(i: int, others: float, *, counted: bool = True) -> RoundLoad:
    return RoundLoad(i, 1.0, 0.1, 0.2, others, 0.0, others > 0.1, counted)


def test_record_verdict_by_hand():
    rec = _record.Record(max_load=0.5)
    rec.load_at_start = 0.2
    rec.add_rounds("A", [_round(0, 0.02), _round(1, 0.05)])
    assert rec.quotable and rec.met(True) == "yes" and rec.met(False) == "**no**"
    assert rec.header()[1].startswith("- record: quiet (2 round(s)")
    rec.add_rounds("B", [_round(2, 0.9, counted=False)])  # disturbed, but measured again: it does not count
    assert rec.quotable
    rec.add_rounds("C", [{**_round(3, 0.4).__dict__, "unknown": 1}])  # a BenchReport's JSON rounds too
    assert not rec.quotable and rec.as_dict()["disturbed_rounds"] == 1
    assert rec.met(True) == "yes (disturbed run: not quotable)"
    assert "NOT TO BE QUOTED as a goal met: 1 of 4 round(s) ran while other processes used more than 0.1 core (C: 0.4)" in rec.why()
    loaded = _record.Record(max_load=0.5)
    loaded.load_at_start = 0.5  # the bound itself is not quiet
    assert not loaded.quotable and "load average was 0.5 at the start (>= 0.5)" in loaded.why()
    assert rec.isa == rec.as_dict()["isa"] and rec.cpu and f"ISA: {_record.isa_text(rec.isa)}" in rec.header()[0]


def test_inside_make_bench_a_start_is_judged_by_the_others_not_by_our_own_load():
    """make bench judges its start by the load average; each later script by the rest of the machine, since the load
    average then mostly remembers make bench's previous script (ours)."""
    rec = _record.Record(max_load=0.5)
    rec.sequence_load, rec.others_before, rec.load_at_start = 0.3, 0.03, 2.5
    assert rec.quotable and "make bench started at load 0.3; other processes used 0.03 core" in rec.why()
    rec.others_before = 0.4  # someone else was busy before this script
    assert not rec.quotable and "not quiet at the start" in rec.why() and "0.4 core" in rec.why()
    rec.sequence_load, rec.others_before = 0.7, 0.0  # make bench itself did not start quiet
    assert not rec.quotable
    outside = _record.Record(max_load=0.5)
    outside.sequence_load, outside.load_at_start = None, 2.5  # a script run alone keeps the load rule
    assert not outside.quotable and "load average was 2.5 at the start" in outside.why()


def test_make_bench_waits_for_the_others_to_be_idle(monkeypatch):
    """Inside make bench, wait_for_quiet measures the rest of the machine over a window: idle now, so one window."""
    monkeypatch.setenv(_record.SEQUENCE_ENV, "0.2")
    monkeypatch.setattr(_record, "IDLE_WINDOW_S", 0.5)
    rec = _record.Record(max_load=0.5)
    assert rec.sequence_load == 0.2
    waited = rec.wait_for_quiet(limit_s=5.0)
    assert rec.others_before is not None and waited >= 0.5
    assert rec.as_dict()["bench_start_load"] == 0.2 and rec.as_dict()["others_cores_before"] == rec.others_before
    monkeypatch.setenv(_record.SEQUENCE_ENV, "not a number")
    assert _record.Record().sequence_load is None


def test_record_measures_again_while_disturbed():
    """A round disturbed by a process that is not ours is measured again; the first stays in the record, not counted."""
    rec = _record.Record()
    calls = []

    def fn() -> int:
        calls.append(1)
        if len(calls) == 1:  # the first attempt runs while a process that is not ours spins (re-parented away from us)
            spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
            code = (f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {spin!r}], stdin=subprocess.DEVNULL, "
                    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)")
            # without the benchmark's mark (Record() put it in os.environ): a process that carries it is ours wherever it
            # went, so a spinner started with it was counted as ours, and the round was found disturbed only when the rest
            # of the machine was busy (a quiet machine failed the test; the suite's other workers made it pass)
            outsider = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
            subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=outsider)
            time.sleep(1.5)
        return len(calls)

    assert rec.measure("x", fn, reruns=1) == 2
    assert [r["label"] for r in rec.rounds] == ["x", "x (again)"]
    assert rec.rounds[0]["disturbed"] and rec.rounds[0]["counted"] is False


def test_benchmark_app_parser_by_hand():
    assert bench_agreement.parse_benchmark_app("[ INFO ] Latency:\n[ INFO ]    Median:        12.16 ms\n[ INFO ]    Average: 12.5 ms") == 12.16
    assert bench_agreement.parse_benchmark_app("[ INFO ]    Median:        845.20 us\n") == pytest.approx(0.8452)
    with pytest.raises(ValueError):
        bench_agreement.parse_benchmark_app("[ INFO ] Throughput: 82.1 FPS")


@needs_openvino
def test_benchmark_app_parser_on_real_output(tmp_path):
    """benchmark_app run for real on a tiny IR: its JSON report and its printed Median line give the same median."""
    from edge_inception.convert.export import export_model
    from edge_inception.engines.build import build

    src = export_model(None, tmp_path / "m.onnx", num_classes=10, image_size=64).path
    b = build(src, "cpu", backend="openvino", output_dir=tmp_path / "ov")
    m = b.manifest
    e = bench_agreement.Engine("openvino-fp32", "openvino", "fp32", b.artifact, m.image_size, 0, dict(m.options))
    folder = tmp_path / "report"
    folder.mkdir()
    args = bench_agreement.benchmark_app_args(e, 2, 3, folder)
    assert args[args.index("-data_shape") + 1] == "[2,3,64,64]" and args[args.index("-infer_precision") + 1] == "f32"
    assert "-nireq" not in args and args[args.index("-hint") + 1] == "latency" and args[args.index("-api") + 1] == "sync"
    proc = subprocess.run([*bench_agreement.benchmark_app(), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_json = bench_agreement.parse_benchmark_app("", folder / "benchmark_report.json")
    from_line = bench_agreement.parse_benchmark_app(proc.stdout + proc.stderr)
    assert from_json > 0 and from_line == pytest.approx(from_json, abs=0.01)
    report = json.loads((folder / "benchmark_report.json").read_text())
    assert report["cmd_options"]  # the tool's own record of the settings it ran with


@needs_openvino
@pytest.mark.slow
def test_the_script_gives_every_backend_both_figures_and_a_ratio(trained, int8_relaxed, tmp_path):
    out = tmp_path / "out"
    # the session's INT8 model of the trained net (--int8), not one more quantization of it
    rc = bench_agreement.main(["--model", str(trained.onnx), "--int8", str(int8_relaxed.path), "--image-size", "64", "--num-classes", "10",
                               "--rounds", "1", "--iterations", "2", "--warmup", "1",
                               "--batch", "1,2", "--rerun-disturbed", "0", "--no-wait", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    rows = {(r["engine"], r["batch"]): r for r in doc["rows"]}
    assert set(rows) == {(f"{b}-{p}", n) for b in ("ort", "openvino") for p in ("fp32", "int8") for n in (1, 2)}
    for (engine, _), r in rows.items():
        assert r["bench_p50_ms"] > 0 and r["tool_median_ms"] > 0 and r["ratio"] == pytest.approx(r["bench_p50_ms"] / r["tool_median_ms"])
        assert r["tool"] == ("benchmark_app" if engine.startswith("openvino") else "InferenceSession.run loop"
                             if not shutil.which("onnxruntime_perf_test") else "onnxruntime_perf_test")
        assert len(r["rounds"]) == 1 and r["rounds"][0]["load_before"] is not None and "others_cores" in r["rounds"][0]
        assert "--no-peak" in r["commands"]["bench"]  # bench's matmul probe is not what is compared: not run
    assert doc["record"]["cpu"] and isinstance(doc["record"]["isa"], list) and len(doc["record"]["rounds"]) == 8
    text = (out / "results.md").read_text()
    assert "ISA:" in text and text.count("| openvino-int8 |") == 2 and "- record: " in text
    with pytest.raises(SystemExit) as refused:  # an INT8 model without the FP32 model it came from: a usage error, nothing run
        bench_agreement.main(["--int8", str(int8_relaxed.path), "--out", str(tmp_path / "none")])
    assert refused.value.code == 2 and not (tmp_path / "none").exists()


def test_the_script_refuses_models_it_cannot_compare_in_one_line(trained, int8_relaxed, tmp_path, capsys):
    """--model and --int8 are checked before anything is built: missing, not ONNX, not INT8 (the FP32 model given twice
    measured FP32 twice and said nothing), or an INT8 model of another net; each one line, exit 1, no results written."""
    from edge_inception.onnx_file import load_onnx, set_metadata

    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    other = tmp_path / "other.int8.onnx"  # the INT8 model of a net of 7 classes (the demo's have 10): not of --model
    model = load_onnx(int8_relaxed.path)
    set_metadata(model, {"num_classes": "7"})  # what the checks read first (then the output's width)
    import onnx

    onnx.save(model, str(other))
    cases = [(["--model", str(tmp_path / "missing.onnx")], "not found"),
             (["--model", str(trained.onnx), "--int8", str(text)], "notes.onnx"),
             (["--model", str(trained.onnx), "--int8", str(trained.onnx)], "a fp32 model, not an INT8 one"),
             (["--model", str(int8_relaxed.path)], "a int8 model; give the FP32 one"),
             (["--model", str(trained.onnx), "--int8", str(other)], "7 classes")]
    for args, needle in cases:
        assert bench_agreement.main([*args, "--no-wait", "--out", str(tmp_path / "out")]) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
    assert not (tmp_path / "out").exists()


def test_a_benchmark_script_says_what_the_product_refuses_in_one_line(tmp_path, capsys):
    """Every benchmark script runs its main() through _record.run_main: the product's refusal (here onnx_facts of a file
    that is not there) is one printable line and exit 1; anything else is not swallowed."""
    from edge_inception.onnx_file import onnx_facts

    missing = tmp_path / "no\x1bmodel.onnx"
    assert _record.run_main(lambda: onnx_facts(missing) and 0) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not found" in err[0] and "\\x1b" in err[0] and "\x1b" not in err[0]
    with pytest.raises(ZeroDivisionError):
        _record.run_main(lambda: 1 // 0)
