import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.build import build
from edge_inception.evaluate.bench import BenchResult, add_speedups, latency_stats, scenarios
from edge_inception.evaluate.flops import count_graph

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
    assert report["machine"]["matmul_peak_macs_per_s"] > 0 and report["machine"]["cores"] >= 1
    per_image = count_graph(trained.onnx).total_macs
    p50 = {(row["engine"], row["batch"]): row["latency_ms"]["p50"] for row in report["results"]}
    for row in report["results"]:
        lat = row["latency_ms"]
        assert lat["count"] == 10 and len(row["samples_ms"]) == 10  # 5 iterations x 2 rounds
        assert lat["p50"] == pytest.approx(float(np.median(row["samples_ms"]))) and lat["min"] == min(row["samples_ms"])
        assert row["macs"] == row["batch"] * per_image  # the flops counter's figure, times the batch
        assert row["macs_per_s"] == pytest.approx(row["macs"] / (lat["p50"] / 1e3))
        assert row["throughput_ips"] == pytest.approx(row["batch"] / (lat["p50"] / 1e3))
        for base in ("torch-eager", "ort-default"):
            assert row["speedup_vs"][base] == pytest.approx(p50[(base, row["batch"])] / lat["p50"])
        line = next(x for x in r.stdout.splitlines() if x.startswith(row["engine"] + " ") and f" {row['batch']} " in x)
        assert f"{lat['p50']:.2f}" in line
    assert files[1].read_text().startswith("# edge-inception bench") and files[2].read_bytes()[:4] == b"\x89PNG"


def test_bench_duration_and_like_with_like(trained, tmp_path):
    from edge_inception.convert.export import export_model

    art = build(trained.onnx, "cpu", output_dir=tmp_path / "a").artifact
    r = runner.invoke(app, ["bench", str(art), "--baseline", "none", "--iterations", "1", "--duration", "1.0", "--rounds", "1", "--warmup", "0",
                            "--no-peak", "--json", str(tmp_path / "d.json"), "--markdown", str(tmp_path / "d.md")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "d.json").read_text())
    samples = doc["results"][0]["samples_ms"]
    assert len(samples) > 1 and sum(samples) >= 900  # timed for the whole second, not for one iteration
    # --no-peak: no matmul probe, so no '% CPU peak' figure, and the console and the report say why
    assert doc["machine"]["matmul_peak_macs_per_s"] == 0 and doc["results"][0]["peak_fraction"] is None and doc["config"]["peak"] is False
    assert "FP32 matmul peak not probed (--no-peak)" in r.stdout
    assert "- FP32 matmul peak (probe): not probed (--no-peak)" in (tmp_path / "d.md").read_text()

    other = export_model(None, tmp_path / "m96.onnx", num_classes=10, image_size=96).path
    r = runner.invoke(app, ["bench", str(art), str(other), "--baseline", "none", "--iterations", "1", "--rounds", "1", "--no-peak"])
    assert r.exit_code == 1 and "different input sizes ([64, 96])" in r.stderr


SPIN = "import time\nt = time.time()\nwhile time.time() - t < 30: pass"


def _outsider() -> int:
    """A spinning process that is not ours: started by a child that exits at once (so it is re-parented away from us),
    without our load mark in its environment (another user's process would not carry it)."""
    import os
    import subprocess
    import sys

    from edge_inception.evaluate.load import OWNER_ENV

    code = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {SPIN!r}], stdin=subprocess.DEVNULL, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint(p.pid)")
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, env=env)
    return int(out.stdout.strip())


def _cpu_s(pid: int) -> float:
    """CPU seconds the process ``pid`` has used: utime + stime from /proc/PID/stat (proc(5): fields 14 and 15)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_round_under_load_is_marked_disturbed():
    import os
    import signal
    import time

    from edge_inception.evaluate.load import DISTURBED_CORES, LoadMeter

    hog = _outsider()
    try:
        # spinning before the round starts (a Python start-up on a loaded machine can take a while): 0.2 s of its CPU seen
        deadline = time.monotonic() + 30
        while _cpu_s(hog) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with LoadMeter(0) as meter:
            before = _cpu_s(hog)
            time.sleep(1.5)  # we idle; the other process spins
            hog_used = _cpu_s(hog) - before
    finally:
        os.kill(hog, signal.SIGKILL)
    r = meter.result
    # the outsider's CPU in the round is other processes' time (how much it got depends on what else the machine ran:
    # 0.37 of a core beside the suite's other worker), and it alone is enough to mark the round disturbed
    assert hog_used > DISTURBED_CORES * r.seconds
    assert r.others_cores is not None and r.others_cores * r.seconds >= hog_used - 0.05 and r.disturbed
    assert r.loadavg_before is not None and r.seconds >= 1.5


def test_the_cpu_time_of_processes_we_started_is_ours():
    """A server or worker we started, alive across the round, is not 'other processes': its CPU time counts as our own
    (before, only reaped children did, so a running tritonserver or Ray worker marked every round disturbed)."""
    import subprocess
    import sys
    import time

    from edge_inception.evaluate.load import OwnCpu

    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        # the meter a round uses, read by its thread: two one-off readings would lose the time of any process of ours
        # that ended meanwhile unreaped by us (an earlier test's grandchild, reaped by init), and could go backwards
        meter = OwnCpu(interval_s=0.05).start()
        child0 = _cpu_s(child.pid)
        t_end = time.monotonic() + 60
        while _cpu_s(child.pid) - child0 < 0.3 and time.monotonic() < t_end:  # until the child itself has spun 0.3 s of CPU
            time.sleep(0.05)
        child_used = _cpu_s(child.pid) - child0
        own_used = meter.stop()
    finally:
        child.kill()
        child.wait()
    assert child_used >= 0.3
    assert own_used >= child_used - 0.05  # the child's time is in ours (a tick of slack between the two reads)


def test_a_worker_that_crashes_is_named(tmp_path, monkeypatch):
    """A native crash in an engine (seen: a segmentation fault loading a compiled package) leaves no Python error; the line
    says which signal ended the engine's process instead of 'no output'."""
    import sys

    from edge_inception.errors import EdgeInceptionError
    from edge_inception.evaluate.bench import _worker

    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))
    with pytest.raises(EdgeInceptionError, match="benchmark of m.onnx failed: the engine's process died of SIGSEGV"):
        _worker({"kind": "artifact", "path": "m.onnx"})


def test_machine_facts_name_pytorch_without_importing_it_where_no_gpu_can_be_asked(tmp_path):
    """The report's libraries give PyTorch's version; on a machine where no GPU driver shows a device, PyTorch could
    find no GPU, so it is not imported (about 2 s of CPU per bench) for the GPU line; where a device node is, it is."""
    import subprocess
    import sys

    import torch

    from edge_inception.evaluate.bench import GPU_NODES, gpu_node_visible

    node = tmp_path / "nvidiactl"
    assert not gpu_node_visible([str(node)])
    node.write_text("")
    assert gpu_node_visible([str(tmp_path / "none"), str(node)])
    code = ("import sys; from edge_inception.evaluate.bench import machine_info; m = machine_info(0); "
            "print(m.libraries.get('torch'), 'torch' in sys.modules, m.gpu)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    version, imported, gpu = got[0], got[1] == "True", got[2]
    assert version == torch.__version__
    if gpu_node_visible(GPU_NODES):
        assert imported  # asked about its GPU
    else:
        assert not imported and gpu == "None"
