"""What a new user meets first: help text, usage errors, output flags, and commands on what a bundle carries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
    from edge_inception.onnx_file import load_onnx, set_metadata

    model = load_onnx(trained.onnx)
    set_metadata(model, {"fp32_source": "gone.onnx"})  # as in a bundle: the FP32 source of a quantized model is not carried
    copy = tmp_path / "deployed.onnx"
    import onnx

    onnx.save(model, str(copy))
    args = ["bench", str(copy), "--baseline", "ort-default", "--iterations", "2", "--rounds", "1", "--warmup", "0", "--no-peak"]
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


HEAVY_OR_OURS = ("torch", "skimage", "scikit_image", "onnxsim", "edge_inception", "__editable__", "_edge_inception", "nvidia", "triton")


def _runtime_only_venv(tmp_path: Path) -> Path:
    """A fresh virtual environment that sees this environment's runtime dependencies but not PyTorch, scikit-image,
    onnxsim or edge-inception itself: what a device has before the bundle's wheel is installed."""
    venv = tmp_path / "device-venv"
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    deps = tmp_path / "device-deps"
    deps.mkdir()
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    for entry in site.iterdir():
        if not entry.name.lower().startswith(HEAVY_OR_OURS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site / "device-deps.pth").write_text(str(deps) + "\n")
    return venv


@pytest.mark.slow
def test_device_install_from_the_bundle_alone(trained, tmp_path):
    """`sh build.sh` in a venv without edge-inception installs the bundle's wheel offline, builds and checks; then
    predict, bench and quantize --calib run there, none of them with PyTorch or scikit-image."""
    out = tmp_path / "demo.bundle"
    made = runner.invoke(app, ["bundle", str(trained.onnx), "--target", "cpu", "-o", str(out)])
    assert made.exit_code == 0, made.output
    assert [p.name for p in (out / "wheels").iterdir()] == ["edge_inception-0.1.0-py3-none-any.whl"]
    venv = _runtime_only_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the folders of an activated virtual environment (this checkout's, with its own edge-inception) leave PATH: build.sh
    # must find no edge-inception but the one it installs
    venvs = [sys.prefix] if sys.prefix != sys.base_prefix else []  # never a system Python's /usr/bin
    others = {str(Path(p) / "bin") for p in (*venvs, os.environ.get("VIRTUAL_ENV")) if p}
    path = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d.rstrip("/") not in others)
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{path}", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               EDGE_INCEPTION_CACHE=str(tmp_path / "cache"))
    # run outside the checkout: `python -c` puts the working folder first on sys.path
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import edge_inception"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode == 1  # not there before build.sh
    r = subprocess.run(["sh", str(out / "build.sh")], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout and "installing edge-inception from wheels/" in r.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import edge_inception, importlib.util as u; print(edge_inception.__file__);"
                            "print([m for m in ('torch', 'skimage') if u.find_spec(m)])"], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert where.stdout.splitlines() == [str(next((venv / "lib").glob("python3*/site-packages")) / "edge_inception" / "__init__.py"), "[]"]

    def device(*args: str) -> str:
        done = subprocess.run([str(venv / "bin" / "edge-inception"), *args], capture_output=True, text=True, env=env, timeout=600, cwd=out)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
        return done.stdout

    photo = sorted((trained.data / "val" / "cat").glob("*.png"))[0]
    assert "cat" in device("predict", "build", str(photo), "--top-k", "1")
    assert "ort-default" in device("bench", "build", "--iterations", "3", "--rounds", "1", "--warmup", "1", "--no-peak")
    device("quantize", "demo.onnx", "--precision", "int8", "--calib", str(trained.data / "train"), "--calib-method", "minmax",
           "--calib-size", "40", "--criterion", "agreement", "--min-agreement", "0.5", "-o", str(tmp_path / "demo.int8.onnx"))


def test_seeded_models_say_their_labels_mean_nothing(trained, tmp_path):
    import onnx

    from edge_inception.onnx_file import load_onnx, set_metadata

    photo = sorted((trained.data / "val" / "cat").glob("*.png"))[0]
    trained_run = runner.invoke(app, ["predict", str(trained.onnx), str(photo)])
    assert trained_run.exit_code == 0 and "not meaningful" not in trained_run.output
    model = load_onnx(trained.onnx)
    set_metadata(model, {"checkpoint": "seed:0"})  # what export writes without --weights
    seeded = tmp_path / "seeded.onnx"
    onnx.save(model, str(seeded))
    for args in (["predict", str(seeded), str(photo)], ["eval", str(seeded), "--data", str(trained.data / "val")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "labels are not meaningful" in result.output, (args, result.output)


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("args", [a for a in _commands(app)])
def test_readme_command_table_names_every_option(args):
    """The README's command table lists every option each command has (the rows for that command, together)."""
    import typer

    command = typer.main.get_command(app)
    for word in args:
        command = command.commands[word]
    if hasattr(command, "commands"):
        return  # a group: its commands have rows of their own
    prefix = "| `edge-inception " + " ".join(args) + " "
    rows = [line for line in README.read_text().splitlines() if line.startswith(prefix) or line.startswith(prefix.rstrip() + "`")]
    assert rows, f"no README row for {' '.join(args)}"
    text = " ".join(row.split("` |")[0] for row in rows)
    words = set(re.findall(r"(?<![\w-])(--?[\w-]+)", text))
    missing = [max(p.opts, key=len) for p in command.params if p.param_type_name == "option" and p.name != "help"
               and not words & {*p.opts, *p.secondary_opts}]  # any of its names: -o, --no-simplify
    assert not missing, f"{' '.join(args)}: README row lacks {missing}"


def test_profile_attributes_the_fp16_classifier(trained, tmp_path):
    """An FP16 graph ends in a Cast back to float32 that OpenVINO fuses into the classifier and names "logits": it is fc's."""
    from edge_inception.convert.quantize import convert_fp16
    from edge_inception.evaluate.profile import node_stage, tensor_stages

    fp16 = tmp_path / "m.fp16.onnx"
    convert_fp16(trained.onnx, fp16)
    assert node_stage("logits", tensor_stages(fp16)) == "fc" == node_stage("logits", tensor_stages(trained.onnx))


def test_a_model_file_is_read_as_protobuf_whatever_its_name(tmp_path):
    """onnx.load picks a JSON parser for a .json ending: a JSON file given as a model is one error line, not a traceback."""
    fake = tmp_path / "runs.json"
    fake.write_text('{"classes": ["a", "b"]}')
    for args in (["info", str(fake)], ["build", str(fake), "--target", "cpu", "-o", str(tmp_path / "b")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output and "not a readable ONNX model" in result.output, result.output


def test_a_pipeline_failing_before_any_output_leaves_nothing(tmp_path):
    result = runner.invoke(app, ["pipeline", "--weights", str(tmp_path / "nosuch.pth"), "-o", str(tmp_path / "p2")])
    assert result.exit_code == 1 and "weights file not found" in result.output and "earlier outputs kept" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no p2, no empty p2.failed


def _options(group=None, prefix=()):
    """(command words, click option) for every option of every command."""
    import typer

    command = typer.main.get_command(group or app)
    for name, sub in getattr(command, "commands", {}).items():
        if hasattr(sub, "commands"):
            for sub_name, leaf in sub.commands.items():
                yield from (((*prefix, name, sub_name), p) for p in leaf.params if p.param_type_name == "option")
        else:
            yield from (((*prefix, name), p) for p in sub.params if p.param_type_name == "option")


def test_every_float_option_refuses_nan_and_infinity():
    """Click's FloatRange lets NaN through its bounds; every float option has cli_common.finite as its callback, so
    `--lr nan` (which trained a checkpoint of NaNs) or `--timeout inf` is a usage error naming the option (exit 2), for
    every command. An option given on the command line is checked before the command's missing arguments."""
    floats = [(args, max(p.opts, key=len)) for args, p in _options()
              if p.type_descriptor is not None and p.type_descriptor.annotation in (float, float | None)]
    assert len(floats) >= 13, floats
    for args, opt in floats:
        for bad in ("nan", "inf", "-inf"):
            result = runner.invoke(app, [*args, opt, bad])
            assert result.exit_code == 2, (args, opt, bad, result.output)
            assert "Invalid value" in result.output and "Traceback" not in result.output, (args, opt, bad, result.output)
            assert opt in result.output, (args, opt, result.output)


def test_train_refuses_a_learning_rate_out_of_range(tmp_path):
    for lr in ("nan", "-1", "0", "1e30"):
        result = runner.invoke(app, ["train", "--data", str(tmp_path), "--lr", lr, "-o", str(tmp_path / "t.pth")])
        assert result.exit_code == 2, (lr, result.output)
        assert "--lr" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t.pth").exists()


def test_build_prints_a_hostile_model_name_escaped(tmp_path):
    """Found by a new user's walk: `build` printed the model's file name raw in its parity line, so an escape sequence
    and a newline in the name reached the terminal and split the line."""
    from .stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "esc\x1b[31mred\nnl.onnx")
    r = runner.invoke(app, ["build", str(model), "--target", "cpu", "--backend", "ort", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\\x1b[31mred\\nnl" in r.output, r.output
    assert not any(line.startswith("nl.") for line in r.output.splitlines()), r.output


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """Found by a new user's walk: `info m.onnx | head -1` printed 'error: Broken pipe' and exited 1. A closed stdout
    ends the command as any Unix tool ends: nothing on stderr, exit 141 (128 + SIGPIPE)."""
    from .stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    for args in (["info", str(model)], ["targets"]):
        proc = subprocess.Popen([sys.executable, "-m", "edge_inception", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        proc.stdout.close()  # the reader gone before the command writes (`| head -0`; `| head -1` once a pipe's buffer fills)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 141 and err == b"", (args, proc.returncode, err)


def test_a_list_option_gives_each_value_once():
    """Found by a new user's walk: `bench --batch 1,1` measured batch 1 twice and printed two rows."""
    from edge_inception.cli_common import int_list
    from edge_inception.vocab import Precision, parse_list

    assert int_list("8,1,8,1", "--batch") == (8, 1)
    assert parse_list("int8,fp32,int8", Precision, "--precisions") == (Precision.int8, Precision.fp32)
