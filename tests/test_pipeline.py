import json

from typer.testing import CliRunner

from edge_inception.cli import app

runner = CliRunner()


def test_pipeline_report_and_reruns(trained, tmp_path):
    out = tmp_path / "run"
    args = ["pipeline", "--weights", str(trained.checkpoint), "--batch", "1", "--iterations", "5", "--min-agreement", "0.9", "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["artifacts"]) == {"fp32", "fp16", "int8"}
    for rel in report["artifacts"].values():
        assert (out / rel).is_file() and (out / (rel + ".manifest.json")).is_file()
    p50 = report["latency_p50_ms_batch1"]
    eligible = {p: v for p, v in p50.items() if report["verification_vs_pytorch"][p]["top1_agreement"] >= 0.9}
    assert report["ship"]["precision"] == min(eligible, key=eligible.get)
    assert report["verification_vs_pytorch"]["fp32"]["max_rel_error"] < 1e-4
    md = (out / "report.md").read_text()
    assert "ship:" in md and "Compute budget" in md and (out / "bench.png").is_file()

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert json.loads((out / "report.json").read_text()) == report  # untouched
    forced = runner.invoke(app, args + ["--force"])
    assert forced.exit_code == 0, forced.output
    assert not list(tmp_path.glob(".run.*"))  # no temporary folders left behind


def test_pipeline_bad_precision(tmp_path):
    r = runner.invoke(app, ["pipeline", "--precisions", "fp32,int3", "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "int3" in r.stderr and not (tmp_path / "x").exists()
