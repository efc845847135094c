"""Targets and artifacts: ``targets``, ``build``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    echo_table,
    handle_errors,
    progress,
    shown,
)
from ..cli_format import PlainTyper
from ..errors import EdgeInceptionError
from ..limits import max_threads
from ..vocab import (
    Backend,
    BackendOption,
    Precision,
    PrecisionOption,
)

app = PlainTyper()  # merged into the root app (no group of its own)


@app.command()
@handle_errors
def targets(
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra folder of target TOML files.")] = None,
) -> None:
    """List the device presets (shipped in the package, and your own from --targets-dir)."""
    from ..engines.targets import list_targets

    rows = [[t.name, t.backend, "/".join(t.backends), t.default_precision, ",".join(t.precisions),
             f"{t.batch_min}-{t.batch_opt}-{t.batch_max}", "-" if t.dla_core is None else str(t.dla_core), t.tensorrt_version or "-",
             t.description] for t in list_targets(targets_dir).values()]
    echo_table(rows, ["target", "backend", "backends", "default", "precisions", "batch min-opt-max", "DLA", "TensorRT", "device"])


@app.command()
@handle_errors
def build(
    model: Annotated[Path, typer.Argument(help="ONNX model (fp32, or fp16/int8 from quantize).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see 'targets') or a TOML file.")],
    backend: Annotated[BackendOption | None, typer.Option("--backend", help="Runtime (default on a CPU: the fastest installed for this "
                                                          "model on this CPU, measured once and remembered; on a GPU: the "
                                                          "target's preference); auto: every one of the target's that runs "
                                                          "here and every precision, measured, the fastest judged kept.")] = None,
    precision: Annotated[PrecisionOption | None, typer.Option("--precision", help="Expected precision of the graph; auto: every one the "
                                                              "target runs (quantized from FP32), measured, the fastest judged kept.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, max=max_threads(), help="CPU threads (default: the target's).")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Folder for the artifact and its manifest.")] = None,
    targets_dir: Annotated[Path | None, typer.Option("--targets-dir", help="Extra folder of target TOML files.")] = None,
    allow_tf32: Annotated[bool, typer.Option("--allow-tf32", help="Let FP32 run as TF32 on a GPU (judged then like FP16).")] = False,
    calib: Annotated[Path | None, typer.Option("--calib", help="With auto: calibration images for INT8 (default: bundled photos).")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="With auto: timed inferences per candidate per round.")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="With auto: benchmark rounds.")] = 3,
) -> None:
    """Build an artifact for a target, with a JSON manifest, verified against the source ONNX (auto: the fastest judged candidate)."""
    from ..engines.build import build as build_artifact
    from ..engines.targets import get_target

    tgt = get_target(target, targets_dir)
    if backend is BackendOption.auto or precision is PrecisionOption.auto:
        from ..autobuild import auto_build
        from ..onnx_file import graph_precision, load_onnx

        out = output_dir if output_dir is not None else model.parent / f"{model.stem}.{tgt.name}"
        # --precision auto without --backend: every backend too (what the pipeline ships); --backend auto alone: the graph's precision
        backends = None if backend in (BackendOption.auto, None) else [Backend(backend.value)]
        precisions = None if precision is PrecisionOption.auto else [
            Precision(precision.value if precision else graph_precision(load_onnx(model, with_weights=False)))]
        auto = auto_build(model, tgt, backends=backends, precisions=precisions, output_dir=out, calib=calib, iterations=iterations,
                          rounds=rounds, progress=progress)
        for v in auto.decision.verdicts:
            p50 = "-" if v.p50_ms is None else f"{v.p50_ms:.2f} ms"
            typer.echo(f"  {shown(v.name):<18} {p50:>10}  {v.status}" + (f": {shown(v.note)}" if v.note else ""))
        for s in auto.plan.skipped:
            typer.echo(f"  not a candidate: {shown(s.name)}: {shown(s.why)}")
        if auto.artifact is None:
            raise EdgeInceptionError(f"{auto.decision.why} (see {auto.report})")
        typer.echo(f"ship: {shown(auto.artifact.name)} ({shown(auto.decision.ship)}): {shown(auto.decision.why)}")
        typer.echo(f"wrote {shown(auto.artifact)}, its manifest and {shown(auto.report)}")
        return
    chosen = backend.value if backend else None
    pick = None
    if chosen is None and tgt.device == "cpu" and not allow_tf32:  # the fastest backend here, as the pipeline would ship it
        from ..autobuild import pick_backend

        pick = pick_backend(model, tgt, threads=threads, expect=precision.value if precision else None, progress=progress)
        chosen = pick.choice.backend.value
    result = build_artifact(model, tgt, backend=chosen, precision=precision.value if precision else None,
                            output_dir=output_dir, threads=threads, allow_tf32=allow_tf32)
    if pick is not None:  # said once the build succeeded: a refused build stays one error line
        typer.echo(f"backend: {shown(pick.choice.line)}", err=True)
    m, p = result.manifest, result.parity
    typer.echo(f"runtime: {shown(result.note)}")
    typer.echo(f"{m.backend} / {shown(m.target)} / {m.precision} on {shown(m.device)}: max rel error {p.max_rel_error:.2e}, "
               f"top-1 agreement {p.top1_agreement:.1%} vs {shown(model.name)}")
    typer.echo(f"wrote {shown(result.artifact)} and {shown(result.artifact.name)}.manifest.json")
