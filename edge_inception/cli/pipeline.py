"""The whole job in one command: ``pipeline``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    SEEDED_NOTE,
    ClusterOpt,
    ImageSizeOpt,
    WeightsOpt,
    WorkersOpt,
    choices,
    cluster_top_k,
    echo_table,
    finite,
    handle_errors,
    int_list,
    note,
    progress,
    shown,
)
from ..cli_format import PlainTyper
from ..vocab import Precision

app = PlainTyper()  # merged into the root app (no group of its own)


@app.command()
@handle_errors
def pipeline(
    weights: WeightsOpt = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target preset.")] = "cpu",
    precisions: Annotated[str, typer.Option("--precisions", help="Comma-separated: fp32,fp16,int8.")] = "fp32,fp16,int8",
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration images for INT8 (default: bundled photos).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", min=1, max=10_000, help="Calibration samples (crops) drawn from them, "
                                            "for our INT8 and NNCF's (as quantize --calib-size).")] = 100,
    image_size: ImageSizeOpt = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", callback=finite, min=0.0, max=1.0,
                                                 help="Accuracy guard for quantized artifacts.")] = 0.99,
    batch: Annotated[str, typer.Option("--batch", help="Benchmark batch sizes (e.g. 1,8,32).")] = "1",
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="Timed inferences per engine per round.")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Benchmark rounds (each engine in a fresh process per round).")] = 3,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder (atomically).")] = False,
    ship_unproven: Annotated[bool, typer.Option("--ship-unproven", help="Also ship a candidate whose claim the evidence cannot carry "
                                                "(INT8 agreement whose 95% lower bound is below --min-agreement); the ship line says so.")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("runs/pipeline"),
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Labelled ImageFolder: the quantized models' accuracy verdict "
                                                  "(as quantize --eval; default: the demo crops for a demo-trained model).")] = None,
    holdout: Annotated[Path | None, typer.Option("--holdout", help="Photos you keep apart (a folder, flat or one sub-folder per class): "
                                                 "every candidate is judged on every distinct photo (INT8 by its agreement's 95% lower bound), "
                                                 "none is calibrated or chosen on. Default: the demo set's held-out crops.")] = None,
    cluster: ClusterOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Export, quantize, build, verify and benchmark in one step; writes a report folder."""
    from ..pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(output=output, weights=weights, target=target, precisions=choices(precisions, Precision, "--precisions"),
                         calib=calib, calib_size=calib_size, image_size=image_size, min_agreement=min_agreement, force=force,
                         bench_iterations=iterations, bench_rounds=rounds, batches=int_list(batch, "--batch"), ship_unproven=ship_unproven,
                         eval_dir=eval_dir, holdout=holdout)
    if weights is None:
        note(SEEDED_NOTE)
    started: dict[str, float] = {}

    def on_stage(name: str) -> None:
        import time

        started[name] = time.perf_counter()
        note(f"[{len(started)}] {name} ...")

    with cluster_top_k(cluster, workers) as cfg.top_k:
        result = run_pipeline(cfg, on_stage=on_stage, progress=progress)
    echo_table([[s.name, f"{s.seconds:.1f}", s.detail] for s in result.stages], ["stage", "seconds", "result"])
    ship = result.report["ship"]
    typer.echo(f"ship: {shown(ship['artifact'])} ({shown(ship['candidate'])}): {shown(ship['why'])}; judged on {shown(ship['judged_on'])}")
    typer.echo(f"wrote {shown(result.output)}/report.md, report.json, bench.png and artifacts/")
