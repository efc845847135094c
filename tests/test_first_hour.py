"""What a new user meets first: help text, usage errors, output flags, and commands on what a bundle carries."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.runner import NodeTime, Timings
from edge_inception.evaluate.flops import count_graph
from edge_inception.evaluate.profile import attribute, markdown

runner = CliRunner()

# Typer's own descriptors, which plain Click help never shows
INTERNAL = re.compile(r"\{[a-z_]+\}|<list\[|<(path|int|float|str|int range|float range)>")


def _commands(group, prefix=()):
    import typer

    click_group = typer.main.get_command(group)
    for name, command in click_group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            for sub in command.commands:
                yield (*prefix, name, sub)


@pytest.mark.parametrize("args", [(), *_commands(app)])
def test_help_shows_plain_metavars(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert not INTERNAL.search(result.output), result.output
    assert "Usage: edge-inception" in result.output


def test_predict_help_names_arguments():
    out = runner.invoke(app, ["predict", "--help"]).output
    assert "Usage: edge-inception predict [OPTIONS] ARTIFACT IMAGES..." in out
    assert "--top-k INTEGER" in out


def test_conflicting_options_are_usage_errors():
    for args in (["export", "--batch", "4", "--dynamic-batch"], ["--quiet", "--verbose", "targets"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "exclude each other" in result.output


def test_url_is_named_as_given(trained):
    result = runner.invoke(app, ["predict", str(trained.onnx), "https://example.com/x.jpg"])
    assert result.exit_code == 1
    assert "https://example.com/x.jpg is a URL" in result.output and "Traceback" not in result.output


def test_quiet_drops_notes(trained, tmp_path):
    from edge_inception.convert.onnx_file import load_onnx, set_metadata

    model = load_onnx(trained.onnx)
    set_metadata(model, {"fp32_source": "gone.onnx"})  # as in a bundle: the FP32 source of a quantized model is not carried
    copy = tmp_path / "deployed.onnx"
    import onnx

    onnx.save(model, str(copy))
    args = ["bench", str(copy), "--baseline", "ort-default", "--iterations", "2", "--rounds", "1", "--warmup", "0"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    assert "no baselines: the FP32 model" in loud.output  # a bench without the source runs, and says why it has no baseline
    quiet = runner.invoke(app, ["--quiet", *args])
    assert quiet.exit_code == 0, quiet.output
    assert "no baselines" not in quiet.output and "onnx-fp32" in quiet.output


def test_profile_never_reports_negative_unassigned_time(trained):
    flops = count_graph(trained.onnx)
    nodes = [NodeTime("/conv1/conv/Conv", "Conv", 3.0), NodeTime("/inception3a/Concat", "Concat", 3.0)]
    report = attribute(Timings(nodes, [5.0, 5.0, 5.0], "made up"), flops, artifact="x", backend="ort", precision="fp32", device="cpu",
                       batch=1, iterations=3)  # the nodes add up to 6 ms in 5 ms runs: they overlapped
    text = markdown(report)
    assert "ran in parallel" in text and "not assigned to a node -" not in text
    ok = attribute(Timings(nodes, [7.0, 6.0, 8.0], "made up"), flops, artifact="x", backend="ort", precision="fp32", device="cpu",
                   batch=1, iterations=3)
    assert ok.end_to_end_ms == 7.0 and "not assigned to a node 1.000 ms" in markdown(ok)  # the mean, like the nodes' times


def test_tf32_on_a_cpu_target_is_refused(trained, tmp_path):
    result = runner.invoke(app, ["build", str(trained.onnx), "--target", "cpu", "--allow-tf32", "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "--allow-tf32 is for GPU targets" in result.output
    assert not (tmp_path / "b").exists()
