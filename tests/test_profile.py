"""Where the time goes: node names map to Table 1 stages through export and graph optimisation, and the profile's
accounting adds up."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.build import build
from edge_inception.engines.runner import NodeTime, Timings
from edge_inception.evaluate.flops import count_graph, stage_of
from edge_inception.evaluate.profile import OTHER, attribute

runner = CliRunner()
MAC_OPS = {"Conv", "QLinearConv", "FusedConv", "NchwcConv", "Gemm", "QGemm", "MatMul", "ConvInteger", "FusedGemm"}


@pytest.fixture(scope="module")
def artifacts(cpu_builds):
    return {p: src for p, (src, _) in cpu_builds.items()}, {p: result.artifact for p, (_, result) in cpu_builds.items()}


def test_every_multiply_add_node_maps_to_a_stage(artifacts):
    sources, built = artifacts
    for graphs in (sources, built):  # exported, quantized and ONNX Runtime-optimised graphs alike
        for precision, path in graphs.items():
            nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type in MAC_OPS]
            assert len(nodes) >= 58, (precision, path.name, len(nodes))
            unmapped = [n.name for n in nodes if stage_of(n.name) in ("unknown", "input")]
            assert not unmapped, (precision, path.name, unmapped[:3])


def test_attribution_on_made_up_timings(trained):
    flops = count_graph(trained.onnx)
    nodes = [NodeTime("/conv1/conv/Conv_token_3", "Conv", 1.0), NodeTime("/inception3a/branch1/conv/Conv + /inception3a/branch1/Relu", "layer", 2.0),
             NodeTime("/inception3a/Concat", "Concat", 0.5), NodeTime("ReorderOutput", "ReorderOutput", 0.25),
             NodeTime("input_QuantizeLinear", "Q", 0.25), NodeTime("logits", "FullyConnected", 0.5)]
    report = attribute(Timings(nodes, [4.5, 5.0, 5.5], "made up"), flops, {"logits": "fc"}, artifact="x", backend="ort", precision="int8",
                       device="cpu", batch=1, iterations=3)
    stages = {s.stage: s for s in report.stages}
    assert set(stages) == {"conv1", "inception_3a", "fc", OTHER}  # "logits": named after its output tensor
    assert stages["inception_3a"].ms == 2.5 and stages[OTHER].ms == 0.5 and stages[OTHER].nodes == 2
    assert report.end_to_end_ms == 5.0 and report.nodes_ms == 4.5 and report.unassigned_ms == 0.5 and report.unassigned_share == 0.1
    conv1 = next(s for s in flops.stages if s.name == "conv1")
    assert stages["conv1"].macs == conv1.macs and stages["conv1"].time_share == 0.2
    assert stages["conv1"].gmacs_per_s == pytest.approx(conv1.macs / 1e-3 / 1e9)
    assert stages["conv1"].macs_share == pytest.approx(conv1.macs / flops.total_macs)


@pytest.mark.parametrize("backend", ["ort", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="OpenVINO (optional extra) is not installed"))])
def test_profile_command_adds_up(artifacts, trained, tmp_path, backend):
    sources, built = artifacts
    for precision in ("fp32", "int8"):
        art = built[precision] if backend == "ort" else build(sources[precision], "cpu", backend="openvino", output_dir=tmp_path / "ov").artifact
        r = runner.invoke(app, ["profile", str(art), "--iterations", "5", "--json", "--plot", str(tmp_path / f"{backend}-{precision}.png")])
        assert r.exit_code == 0, r.output
        data = json.loads(r.stdout)
        stages = {s["stage"]: s for s in data["stages"]}
        expected = {s.name for s in count_graph(trained.onnx).stages if s.macs}
        assert expected <= set(stages), (backend, precision, [n for n in stages])  # every stage that computes shows up
        assert sum(s["ms"] for s in data["stages"]) == pytest.approx(data["nodes_ms"])
        assert data["unassigned_ms"] == pytest.approx(data["end_to_end_ms"] - data["nodes_ms"])
        assert all(s["ms"] >= 0 for s in data["stages"]) and data["end_to_end_ms"] > 0
        assert (tmp_path / f"{backend}-{precision}.png").read_bytes()[:4] == b"\x89PNG"
