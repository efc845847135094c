import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.build import build
from edge_inception.evaluate.bench import BenchResult, add_speedups, latency_stats, scenarios

runner = CliRunner()


def test_latency_stats_on_known_samples():
    s = latency_stats([float(x) for x in range(1, 101)])  # 1..100 ms
    assert s["min"] == 1 and s["max"] == 100 and s["count"] == 100
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5) and s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert latency_stats([4.0])["std"] == 0.0


def _result(engine, batch, p50):
    return BenchResult(engine, "ort", "fp32", batch, {"p50": p50, "p90": p50 * 1.5}, batch / (p50 / 1e3), 1, 1.0, None)


def test_speedups_and_scenarios():
    results = [_result("torch-eager", 1, 40.0), _result("ort-default", 1, 20.0), _result("ort-int8", 1, 10.0), _result("ort-int8", 8, 40.0)]
    add_speedups(results)
    fast = results[2]
    assert fast.speedup_vs == {"torch-eager": 4.0, "ort-default": 2.0}
    sc = scenarios(results)
    assert sc["single_stream_p90_ms"]["ort-int8"] == 15.0
    assert sc["offline"]["ort-int8"] == {"throughput_ips": 200.0, "batch": 8}


def test_bench_cli_writes_consistent_outputs(trained, tmp_path):
    art = build(trained.onnx, "cpu", output_dir=tmp_path / "a").artifact
    files = [tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"]
    r = runner.invoke(app, ["bench", str(art), str(trained.onnx), "--iterations", "5", "--warmup", "2", "--rounds", "2", "--batch", "1,2",
                            "--json", str(files[0]), "--markdown", str(files[1]), "--plot", str(files[2])])
    assert r.exit_code == 0, r.output
    report = json.loads(files[0].read_text())
    engines = {x["engine"] for x in report["results"]}
    assert engines == {"ort-fp32", "onnx-fp32", "torch-eager", "ort-default"}
    assert {x["batch"] for x in report["results"]} == {1, 2}
    assert report["machine"]["matmul_peak_macs_per_s"] > 1e9 and report["machine"]["cores"] >= 1
    for row in report["results"]:
        assert row["latency_ms"]["count"] == 10 and row["latency_ms"]["min"] <= row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["macs"] == row["batch"] * report["results"][0]["macs"] // report["results"][0]["batch"]
        line = next(x for x in r.stdout.splitlines() if x.startswith(row["engine"] + " ") and f" {row['batch']} " in x)
        assert f"{row['latency_ms']['p50']:.2f}" in line
        if row["engine"] == "torch-eager":
            assert row["speedup_vs"]["torch-eager"] == pytest.approx(1.0)
    assert files[1].read_text().startswith("# edge-inception bench") and files[2].read_bytes()[:4] == b"\x89PNG"
