"""The one report writer: every report type's JSON, Markdown and plot go through ``report.write_report``, which
renders all that was asked before it writes anything, writes each rendering atomically and refuses an output that is an
input. No other module writes a report or draws a plot itself."""

from __future__ import annotations

import ast
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

import edge_inception
from edge_inception.cli import app
from edge_inception.errors import OutputPathError
from edge_inception.report import Axis, Bars, Boxes, Figure, Point, Points, Rendered, Report, Series, write_report
from edge_inception.stream.run import EngineAlone, StageStats, StreamSummary

PACKAGE = Path(edge_inception.__file__).parent
runner = CliRunner()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height in pixels


def _figure() -> Figure:
    return Figure([Boxes("spread", ["a", "b"], [[1.0, 2.0, 3.0], [2.0, 2.5]], Axis("latency", "ms", low=0)),
                   Points("trade-off", [Point(1.0, 99.0, "a"), Point(2.0, 100.0, "b")], Axis("p50", "ms"), Axis("agreement", "%", high=100)),
                   Bars("rate", ["x", "y", "z"], [Series("p50", [1, 2, 3]), Series("p90", [2, 3, 4])], Axis("latency", "ms"), horizontal=True)],
                  width=9, height=3, dpi=50)


def test_the_three_renderings_are_the_reports_own(tmp_path):
    data = {"b": [1, 2.5, None], "a": "ü"}  # the report's order of keys is kept, not sorted
    report = Rendered(data, "# title\n\n| a |\n", _figure())
    out = write_report(report, json=tmp_path / "r.json", markdown=tmp_path / "r.md", png=tmp_path / "r.png")
    assert out == [tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"]
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == json.dumps(data, indent=2) + "\n"
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "# title\n\n| a |\n"
    assert _png_size((tmp_path / "r.png").read_bytes()) == (9 * 50, 3 * 50)  # the figure's inches at its dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]  # no temporary file left
    assert write_report(report, markdown=tmp_path / "only.md") == [tmp_path / "only.md"]  # what was asked, nothing else
    assert not (tmp_path / "only.json").exists()


def test_a_failed_plot_writes_no_rendering_and_keeps_the_old_files(tmp_path):
    old = {tmp_path / "r.json": "old json\n", tmp_path / "r.md": "old md\n"}
    for path, text in old.items():
        path.write_text(text)
    broken = Rendered({"a": 1}, "new\n", Figure([Bars("t", ["x", "y"], [Series("s", [1.0, 2.0, 3.0])], Axis("v"))], width=4))  # 3 bars for 2
    with pytest.raises(ValueError):
        write_report(broken, json=tmp_path / "r.json", markdown=tmp_path / "r.md", png=tmp_path / "r.png")
    assert {p: p.read_text() for p in old} == old and not (tmp_path / "r.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]

    class NoData(Rendered):
        def as_dict(self):
            return {"not json": object()}

    with pytest.raises(TypeError):  # the JSON rendering fails: the Markdown, rendered fine, is not written either
        write_report(NoData(None, "new\n"), json=tmp_path / "n.json", markdown=tmp_path / "n.md")
    assert not (tmp_path / "n.json").exists() and not (tmp_path / "n.md").exists()


def test_a_plot_asked_of_a_report_without_one_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(OutputPathError, match="has no plot"):
        write_report(Rendered({"a": 1}, "md\n"), json=tmp_path / "r.json", png=tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_are_inputs_or_named_twice_are_refused(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"input")
    link = tmp_path / "link.json"
    link.symlink_to(source)
    report = Rendered({"a": 1}, "md\n", _figure())
    for kwargs in ({"json": source}, {"markdown": link}, {"png": source.with_name("model.onnx.manifest.json")}):
        with pytest.raises(OutputPathError, match="an input of this command"):
            write_report(report, inputs=[source], **kwargs)
    with pytest.raises(OutputPathError, match="named as two outputs"):
        write_report(report, json=tmp_path / "same", markdown=tmp_path / "same")
    assert source.read_bytes() == b"input" and sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "model.onnx"]


def test_every_report_type_is_a_report():
    from edge_inception.cluster.fleet import FleetReport
    from edge_inception.evaluate.bench import BenchReport
    from edge_inception.evaluate.profile import ProfileReport, Profiles
    from edge_inception.serve.loadgen import ScenarioReport

    for cls in (BenchReport, ScenarioReport, ProfileReport, Profiles, FleetReport, StreamSummary, Rendered):
        assert all(callable(getattr(cls, m, None)) for m in ("as_dict", "as_markdown", "as_figure")), cls
    assert isinstance(StreamSummary("s", "folder", "fast"), Report)


def _calls(tree: ast.AST) -> set[str]:
    """The names of the functions and methods a module calls (``x.savefig(...)`` -> savefig)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
    return out


# the artifact writers: files that are part of a model or a bundle (sidecars, manifests, bundle files), not reports; and
# autobuild's remembered backend measurement (a hashed cache record under the cache folder, read back by build)
# (measured-choice records in the cache folder go through fileio.write_record)
ARTIFACT_WRITERS = {"fileio.py", "model/train.py", "engines/manifest.py", "convert/quantize.py", "deploy/bundle.py"}


def test_no_module_but_the_writer_draws_a_plot_or_writes_a_report():
    """A second report writer is the fault this guards against: matplotlib, ``savefig`` and the JSON/text writers of
    fileio appear in report.py and in the artifact writers only."""
    seen_writer = False
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        calls = _calls(tree)
        if rel == "report.py":
            seen_writer = "savefig" in calls and any(m.startswith("matplotlib") for m in imported)
            continue
        assert not any(m.startswith("matplotlib") for m in imported), f"{rel} imports matplotlib: plots are drawn in report.py"
        assert "savefig" not in calls and "plot" not in calls, f"{rel} draws a plot itself"
        if rel not in ARTIFACT_WRITERS:
            assert not calls & {"write_json_atomic", "write_text_atomic"}, f"{rel} writes a report itself: use report.write_report"
    assert seen_writer


def test_stream_writes_its_summary_through_the_one_writer(tmp_path):
    pytest.importorskip("av")
    from .stream_media import make_video, pan_zoom_frames, tiny_classifier

    model = tiny_classifier(tmp_path / "tiny.onnx")
    video = make_video(tmp_path / "clip.mp4", list(pan_zoom_frames(96, 64, 6)), fps=10)
    out = {"--summary-json": tmp_path / "s.json", "--summary-markdown": tmp_path / "s.md", "--summary-plot": tmp_path / "s.png"}
    r = runner.invoke(app, ["stream", str(model), str(video), *[str(x) for kv in out.items() for x in kv]])
    assert r.exit_code == 0, r.output
    printed = json.loads(next(x for x in r.output.splitlines() if x.startswith("summary: "))[len("summary: "):])
    assert json.loads(out["--summary-json"].read_text()) == printed and printed["frames"] == 6  # the same data as printed
    md = out["--summary-markdown"].read_text()
    assert md.startswith("# edge-inception stream: ") and "- 6 frames in " in md
    table = {row[0]: [float(x) for x in row[1:]] for row in (line.strip("| ").split(" | ") for line in md.splitlines()[-len(printed["ms"]):])}
    assert list(table) == list(printed["ms"])  # every stage, in order, at the figures printed (to the table's 2 decimals)
    for stage, ms in printed["ms"].items():
        assert table[stage] == pytest.approx([ms["p50"], ms["p90"], ms["mean"]], abs=0.0051)
    assert _png_size(out["--summary-plot"].read_bytes())[0] > 0
    assert all(f"wrote {p}" in r.output for p in out.values())
    refused = runner.invoke(app, ["stream", str(model), str(video), "--summary-json", str(video)])
    assert refused.exit_code == 1 and "an input of this command" in refused.output and video.stat().st_size > 0


def test_a_stream_summary_renders_what_it_holds():
    s = StreamSummary("cam", "live", "fast", frames=30, seconds=2.0, stages={"inference": StageStats(4.0, 5.0, 4.0)}, dropped=3, reconnects=1,
                      lost=True, interrupted="SIGINT", engine_alone=EngineAlone(500.0, 2.0, 2.0, 30, 1, "measured alone after the stream"))
    md = s.as_markdown()
    assert "30 frames in 2.00 s: 15.0 FPS end to end (live, preprocess fast); dropped 3, skipped corrupt 0, reconnected 1 time, source lost" in md
    # the engine alone is the figure measured alone (500 FPS), not the 250 FPS its inference took inside the stream
    assert "the engine alone: 500.0 FPS, 2.00 ms a frame (measured alone after the stream); end to end is 3% of it" in md
    assert "ended by SIGINT" in md and "| inference | 4.00 | 5.00 | 4.00 |" in md
    fig = s.as_figure()
    bars = fig.panels[0]
    assert isinstance(bars, Bars) and list(bars.categories) == ["inference"] and [list(x.values) for x in bars.series] == [[4.0], [5.0]]


def test_outside_text_cannot_forge_a_line_or_send_an_escape_through_a_markdown_rendering(tmp_path):
    """A stream's source, a bench engine's file name, a board, an error: text from outside goes into Markdown through
    md_text (one line, controls shown, '|' escaped), and write_report shows any control character a renderer let
    through; `cat report.md` sends no escape sequence and the file holds no line the report did not write."""
    hostile = "clip\n# forged heading\x1b[2J\u202e| x |.mp4"
    s = StreamSummary(hostile, "file", "fast", frames=1, seconds=1.0, stages={"inference": StageStats(1.0, 1.0, 1.0)},
                      saved=hostile, output_error=hostile)
    md = s.as_markdown()
    assert "\x1b" not in md and "\u202e" not in md and "\n# forged" not in md
    assert md.splitlines()[0] == "# edge-inception stream: clip\\n# forged heading\\x1b[2J\\u202e\\| x \\|.mp4"
    out = write_report(Rendered({}, "# ok\n- \x1b]0;title\x07 \u202e\n"), markdown=tmp_path / "r.md")[0]
    assert out.read_text() == "# ok\n- \\x1b]0;title\\x07 \\u202e\n"


def test_the_writer_stands_on_the_lowest_floor():
    """report.py imports fileio, errors, names (the escaping of outside text) and the standard library at module level
    (matplotlib and numpy only where it draws), so that every floor can hand it a report and importing it costs nothing."""
    import sys

    tree = ast.parse((PACKAGE / "report.py").read_text(encoding="utf-8"))
    ours = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level}
    assert ours == {"errors", "fileio", "names"}, ours
    others = {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and not n.level}
    others |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert others - {"__future__"} <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)
