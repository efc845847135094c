"""``--workers`` is the actor count of ``--cluster``: without ``--cluster`` it was ignored in silence (one process ran
the evaluation while the user asked for several). Now a usage error on every command that takes it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app


@pytest.mark.parametrize("command", [
    ["eval", "{model}", "--data", "{data}"],
    ["quantize", "{model}", "--precision", "fp16", "--eval", "{data}"],
    ["pipeline", "--eval", "{data}", "--output", "{out}"],
])
def test_workers_without_a_cluster_is_a_usage_error_before_any_work(tmp_path, command):
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    (tmp_path / "val" / "class0").mkdir(parents=True)
    args = [a.format(model=model, data=tmp_path / "val", out=tmp_path / "out") for a in command]
    r = CliRunner().invoke(app, [*args, "--workers", "3"])
    assert r.exit_code == 2, r.output
    assert ("--workers': 3 workers run on a Ray cluster: add --cluster local (this machine) or --cluster HOST:PORT"
            in " ".join(r.output.split()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "val"]  # nothing was written
    ok = CliRunner().invoke(app, [*args, "--workers", "1"])  # the default, said or not, is no error of this kind
    assert "Ray cluster" not in ok.output
