"""``stream``: a video, camera, network stream or image folder, frame by frame."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli_common import (
    PreprocessOpt,
    finite,
    handle_errors,
    progress,
    shown,
    write_outputs,
)
from ..cli_format import PlainTyper
from ..errors import EdgeInceptionError
from ..limits import max_threads
from ..vocab import PreprocessMode

app = PlainTyper()  # merged into the root app (no group of its own)


@app.command()
@handle_errors
def stream(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    source: Annotated[str, typer.Argument(help="Video file, image folder or glob, /dev/videoN or a camera index, csi://N, rtsp:// or http:// URL.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    save: Annotated[Path | None, typer.Option("--save", help="Write an MP4 with the top-1 label drawn on each frame.")] = None,
    json_lines: Annotated[str | None, typer.Option("--json-lines", help="One JSON line per frame: a file, or - for stdout.")] = None,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Stop after this many frames.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, max=max_threads(),
                                                help="Engine threads, forced (default: the split measured on this CPU, see README).")] = None,
    reconnect: Annotated[float, typer.Option("--reconnect", callback=finite, min=0, max=86400,
                                             help="Seconds a camera or network stream that breaks is reopened for (0: not).")] = 30.0,
    summary_json: Annotated[Path | None, typer.Option("--summary-json", help="Write the summary as JSON here.")] = None,
    summary_markdown: Annotated[Path | None, typer.Option("--summary-markdown", help="Write the summary as Markdown here.")] = None,
    summary_plot: Annotated[Path | None, typer.Option("--summary-plot", help="Write a PNG of each stage's p50/p90 ms here.")] = None,
) -> None:
    """Classify a video, camera, network stream or image folder frame by frame: JSON lines, an annotated MP4, a summary."""
    import signal

    from ..data.images import glob_paths, split_glob
    from ..fileio import MP4_FILE, PNG_FILE, atomic_path, check_outputs, json_text, require_suffix
    from ..stream.run import IN_STREAM, run_stream
    from ..stream.writer import JsonLinesWriter

    require_suffix(save, MP4_FILE)
    require_suffix(summary_plot, PNG_FILE)
    # a file or folder (a URL or camera is not overwritten); a glob: the files it matches
    split = None if Path(source).exists() or "://" in source else split_glob(source)
    local = [source] if Path(source).exists() else glob_paths(source) if split is not None else []
    check_outputs(save, None if json_lines in (None, "-") else Path(json_lines), summary_json, summary_markdown, summary_plot,
                  inputs=[artifact, *local])
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) is a failed write to report, not a signal that kills
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sink: JsonLinesWriter | None = None
    with contextlib.ExitStack() as stack:
        # a JSON-lines file is written as the frames come (a camera runs for hours) into a temporary file beside it,
        # moved into place when the stream ends, also after Ctrl-C / SIGTERM and after a failed write (its whole lines)
        if json_lines not in (None, "-"):
            sink = JsonLinesWriter(stack.enter_context(open(stack.enter_context(atomic_path(Path(json_lines))), "wb")), json_lines)

        def on_frame(r: Any) -> None:
            if json_lines == "-":
                typer.echo(json_text(r.as_dict()))
            elif sink is not None:
                sink.write(r.as_dict())

        summary = run_stream(artifact, source, top_k=top_k, mode=preprocess, save=save, max_frames=max_frames, on_frame=on_frame,
                             progress=progress, threads=threads, reconnect_s=reconnect)
    to_err = json_lines == "-"  # stdout carries the JSON lines
    st = summary.stages
    head, *rest = summary.headline()
    typer.echo(shown(head), err=to_err)  # the source's name, the split's remembered path: from outside
    for line in rest:
        typer.echo(f"  {shown(line)}", err=to_err)
    if st:
        typer.echo(f"  per stage, {IN_STREAM}:", err=to_err)
    for stage, s in st.items():
        typer.echo(f"  {stage:<11} p50 {s.p50:8.2f} ms  p90 {s.p90:8.2f} ms", err=to_err)
    typer.echo("summary: " + json_text(summary.as_dict()), err=to_err)
    for written in (summary.saved, None if json_lines in (None, "-") else json_lines):
        if written:
            typer.echo(f"wrote {shown(written)}", err=to_err)
    write_outputs(summary, json=summary_json, markdown=summary_markdown, png=summary_plot, inputs=[artifact, *local], err=to_err)
    if summary.output_error:
        kept = ([f"{summary.saved} ({summary.saved_frames} frames, to its last whole fragment)"] if summary.saved else []) \
            + ([f"{json_lines} ({sink.lines} whole lines)"] if sink is not None else [])
        raise EdgeInceptionError(f"cannot write {summary.output_error}; the stream stopped after {summary.frames} frames"
                                 + (f"; kept: {', '.join(kept)}" if kept else "; nothing was kept"))
    if summary.interrupted:
        typer.echo(f"{'terminated' if summary.interrupted == 'SIGTERM' else 'interrupted'}: the summary above covers the frames "
                   f"classified so far" + (", the video is closed and playable" if summary.saved else ""), err=True)
        raise typer.Exit(code=143 if summary.interrupted == "SIGTERM" else 130)
