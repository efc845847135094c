import json

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.convert.export import export_model
from edge_inception.evaluate.flops import count_graph
from edge_inception.model.googlenet import INCEPTION_CONFIG

runner = CliRunner()


def table_macs(size: int, kernel5: int, maxpool4_k: int) -> dict[str, int]:
    """Per-stage conv+fc multiply-adds from the layer table alone (no model, no ONNX)."""

    def out(n, k, s, p=0, ceil=False):
        v = (n + 2 * p - k) / s + 1
        return int(-(-(n + 2 * p - k) // s) + 1) if ceil else int(v)

    s1 = out(size, 7, 2, 3)
    s2 = out(s1, 3, 2, ceil=True)
    s3 = out(s2, 3, 2, ceil=True)
    s4 = out(s3, 3, 2, ceil=True)
    s5 = out(s4, maxpool4_k, 2, ceil=True)
    macs = {"conv1": s1 * s1 * 64 * 3 * 49, "conv2": s2 * s2 * (64 * 64 + 192 * 64 * 9)}
    spatial = {"3": s3, "4": s4, "5": s5}
    for name, (cin, c1, r3, c3, r5, c5, pp) in INCEPTION_CONFIG.items():
        hw = spatial[name[-2]] ** 2
        macs[f"inception_{name[-2:]}"] = hw * (cin * c1 + cin * r3 + r3 * c3 * 9 + cin * r5 + r5 * c5 * kernel5**2 + cin * pp)
    macs["fc"] = 1024 * 1000
    return macs


@pytest.fixture(scope="module")
def paper_onnx(tmp_path_factory):
    return export_model(None, tmp_path_factory.mktemp("f") / "paper.onnx", variant="paper").path


def test_paper_counts_match_the_layer_table(paper_onnx):
    report = count_graph(paper_onnx)
    expected = table_macs(224, kernel5=5, maxpool4_k=3)
    assert report.total_macs == 1_582_671_872 == sum(expected.values())
    stages = {s.name: s for s in report.stages}
    for name, macs in expected.items():
        assert stages[name].macs == macs, name
    assert stages["inception_3a"].paper_macs == 128_000_000 and stages["maxpool1"].macs == 0
    assert report.total_params == 6_998_552
    assert stages["conv1"].params == 64 * 3 * 49 + 64
    assert stages["maxpool1"].other_ops > 0  # pooling and LRN are counted apart from multiply-adds


def test_other_sizes_and_batches(paper_onnx):
    report = count_graph(paper_onnx, image_size=112, batch=3)
    assert report.total_macs == 3 * sum(table_macs(112, kernel5=5, maxpool4_k=3).values())


def test_torchvision_parameters_before_bn_folding(tmp_path):
    unfolded = export_model(None, tmp_path / "tv_bn.onnx", fold_batchnorm=False)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(unfolded.path)).graph.node)
    report = count_graph(unfolded.path)
    assert report.total_params == 6_624_904
    assert report.total_macs == sum(table_macs(224, kernel5=3, maxpool4_k=2).values())
    folded = count_graph(export_model(None, tmp_path / "tv.onnx").path)
    assert folded.total_macs == report.total_macs


def test_non_googlenet_graph_gets_node_totals(tmp_path):
    w = numpy_helper.from_array(__import__("numpy").ones((8, 3, 3, 3), "float32"), "w")
    fc = numpy_helper.from_array(__import__("numpy").ones((8 * 30 * 30, 5), "float32"), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="my_conv"), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"], name="head")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w, fc])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    report = count_graph(path)
    assert report.total_macs == 30 * 30 * 8 * 27 + 8 * 30 * 30 * 5
    assert [s.name for s in report.stages] == ["unknown"] and report.stages[0].paper_macs is None
    assert report.total_params == 8 * 27 + 8 * 30 * 30 * 5


def test_flops_cli_json_and_table(paper_onnx):
    r = runner.invoke(app, ["flops", str(paper_onnx), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["total_macs"] == 1_582_671_872 and data["budget_macs"] == 1_500_000_000
    assert {"name", "macs", "params", "paper_macs", "paper_params"} <= set(data["stages"][0])
    assert sum(s["macs"] for s in data["stages"]) == data["total_macs"]
    table = runner.invoke(app, ["flops", str(paper_onnx)])
    assert "105.5% of the paper's 1.5 G budget" in table.stdout and "conv1" in table.stdout and "3x3 instead of 5x5" in table.stdout
    bad = runner.invoke(app, ["flops", str(paper_onnx.parent / "missing.onnx")])
    assert bad.exit_code == 1 and "not found" in bad.stderr
