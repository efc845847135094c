"""No command overwrites what it reads (found by an attack on the finished serve/stream work): an output that is the
command's input (the same name, a link or a hard link to it, a file of an input folder, an artifact's manifest) or an
output named twice is refused in one line before anything runs, and the input is left as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app

from .stream_media import make_video, pan_zoom_frames, tiny_classifier

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("av")
    d = tmp_path_factory.mktemp("inputs")
    model = tiny_classifier(d / "tiny.onnx")
    built = d / "build"
    r = runner.invoke(app, ["build", str(model), "--target", "cpu", "--backend", "ort", "-o", str(built)])
    assert r.exit_code == 0, r.output
    artifact = next(p for p in built.iterdir() if p.suffix == ".onnx")
    return {"model": model, "video": make_video(d / "clip.mp4", list(pan_zoom_frames(96, 64, 6)), fps=10), "build": built,
            "artifact": artifact, "dir": d}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(args: list[str], keep: Path, says: str) -> None:
    before = _digest(keep)
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], r.output
    assert _digest(keep) == before


def test_stream_never_writes_over_its_source_or_one_output_over_the_other(files, tmp_path):
    video, model = files["video"], str(files["model"])
    _refused(["stream", model, str(video), "--save", str(video)], video, "an input of this command")
    _refused(["stream", model, str(video), "--json-lines", str(video)], video, "an input of this command")
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    _refused(["stream", model, str(video), "--save", str(link)], video, "an input of this command")
    hard = tmp_path / "hard.mp4"
    os.link(video, hard)
    _refused(["stream", model, str(video), "--json-lines", str(hard)], video, "an input of this command")
    _refused(["stream", model, str(video), "--json-lines", str(files["model"])], files["model"], "an input of this command")
    same = tmp_path / "same.mp4"
    r = runner.invoke(app, ["stream", model, str(video), "--save", str(same), "--json-lines", str(same)])
    assert r.exit_code == 1 and "named as two outputs" in r.output and not same.exists(), r.output


def test_bench_profile_and_conversions_never_write_over_their_inputs(files):
    art, manifest = files["artifact"], files["artifact"].with_name(files["artifact"].name + ".manifest.json")
    assert manifest.is_file()
    _refused(["bench", str(art), "--iterations", "1", "--rounds", "1", "--json", str(manifest)], manifest, "an input of this command")
    _refused(["bench", str(files["build"]), "--iterations", "1", "--rounds", "1", "--markdown", str(art)], art, "an input of this command")
    _refused(["profile", str(art), "--markdown", str(manifest)], manifest, "an input of this command")
    model = files["model"]
    _refused(["simplify", str(model), "-o", str(model)], model, "an input of this command")
    _refused(["quantize", str(model), "--precision", "fp16", "-o", str(model)], model, "an input of this command")


def test_an_output_named_for_another_format_is_refused_before_anything_runs(files, tmp_path):
    """Found by a new user's walk through the README: `train -o ck.json` wrote the checkpoint, then its sidecar
    (ck.json) over it; `quantize -o m.fp16.txt` replaced m.fp16.report.json, another model's report; `stream --save
    out.avi` and `bench --plot b.svg` wrote an MP4 and a PNG under those names. Every output of a fixed format must be
    named for it: one line, exit 1, nothing written, the other file kept."""
    model, video, art = str(files["model"]), str(files["video"]), str(files["artifact"])
    other = tmp_path / "m.fp16.report.json"
    other.write_text('{"theirs": true}')
    _refused(["quantize", model, "--precision", "fp16", "-o", str(tmp_path / "m.fp16.txt")], other, "must end in .onnx")
    assert not (tmp_path / "m.fp16.txt").exists()
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    _refused(["train", "--data", str(data), "-o", str(tmp_path / "ck.json")], other, "must end in .pth or .pt")
    _refused(["export", "-o", str(tmp_path / "g.pb")], other, "must end in .onnx")
    _refused(["simplify", model, "-o", str(tmp_path / "s.txt")], other, "must end in .onnx")
    _refused(["stream", model, video, "--save", str(tmp_path / "out.avi")], other, "must end in .mp4")
    _refused(["stream", model, video, "--summary-plot", str(tmp_path / "p.svg")], other, "must end in .png")
    _refused(["bench", art, "--iterations", "1", "--rounds", "1", "--plot", str(tmp_path / "b.txt")], other, "must end in .png")
    _refused(["profile", art, "--plot", str(tmp_path / "p.jpg")], other, "must end in .png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.fp16.report.json"]


def test_stdout_by_name_and_a_dash_are_refused_as_output_files(tmp_path):
    """`--summary-json /dev/stdout > log` made the atomic write rename the JSON over log (the link leads, through
    /proc/self/fd/1, to the regular file stdout was redirected to): the rest of stdout went to a deleted file. And
    `--summary-json -` wrote a file named '-'. Both are one line and exit 1 now, before the stream runs, and the
    redirected stdout keeps nothing but what the command printed."""
    import subprocess
    import sys

    model = tiny_classifier(tmp_path / "m.onnx")
    video = make_video(tmp_path / "v.mp4", list(pan_zoom_frames(96, 64, 4)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    for name in ("/dev/stdout", "/proc/self/fd/1", "-"):
        log = tmp_path / "log.txt"
        with open(log, "wb") as out:
            r = subprocess.run([sys.executable, "-m", "edge_inception", "stream", str(model), str(video), "--summary-json", name],
                               stdout=out, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, timeout=300)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (name, r.stderr)
        assert log.read_bytes() == b"" and not (tmp_path / "-").exists(), name
