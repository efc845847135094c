"""Answers and numbers: ``predict``, ``eval``, ``bench``, ``profile``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..cli_common import (
    ClusterOpt,
    PreprocessOpt,
    RequestTimeoutOpt,
    WorkersOpt,
    choices,
    echo_table,
    finite,
    handle_errors,
    int_list,
    note,
    note_seeded,
    progress,
    shown,
    workers_need_cluster,
    write_outputs,
)
from ..cli_format import PlainTyper
from ..errors import EdgeInceptionError
from ..fileio import json_text
from ..limits import DEFAULT_AGREEMENT_SAMPLE, MAX_BATCH, max_threads
from ..vocab import (
    Baseline,
    FolderOrder,
    PreprocessMode,
    SharedMemory,
)

if TYPE_CHECKING:
    from ..evaluate.bench import BenchReport
    from ..serve.loadgen import ScenarioConfig, ScenarioReport

app = PlainTyper()  # merged into the root app (no group of its own)


ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, max=max_threads(), help="Threads per engine (0: each runtime's default).")]


@app.command()
@handle_errors
def predict(
    artifact: Annotated[str, typer.Argument(help="Built artifact or ONNX model, or a served model: grpc://HOST:PORT/MODEL.")],
    images: Annotated[list[str], typer.Argument(help="Images, folders or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    timeout: RequestTimeoutOpt = 10.0,
) -> None:
    """Classify images: top-k labels and scores, and the end-to-end rate (decode + preprocess + inference). Against a
    served model (grpc://) each image is printed as its batch completes, so a server failing midway leaves the results
    before it on screen and the error line says how many of the images were done."""
    from ..evaluate.predict import Prediction
    from ..evaluate.predict import predict as run_predict
    from ..serve.client import is_remote, predict_remote

    def show(p: Prediction) -> None:
        if as_json:
            typer.echo(json_text(p.as_dict()))  # JSON escapes control characters itself
            return
        typer.echo(shown(p.image))
        for index, label, score in p.top:
            typer.echo(f"  {score:7.2%}  {shown(label, 300)} ({index})")

    if is_remote(artifact):
        run = predict_remote(artifact, images, top_k=top_k, mode=PreprocessMode(preprocess), timeout_s=timeout, on_prediction=show)
    else:
        run = run_predict(Path(artifact), images, top_k=top_k, mode=preprocess)
        for p in run.predictions:
            show(p)
    for _path, why in run.failed:
        note(f"skipped: {why}")
    n = len(run.predictions)
    note(f"{n} image{'' if n == 1 else 's'} in {run.seconds:.2f} s: {run.images_per_s:.1f} images/s end to end "
          f"(decode + preprocess {PreprocessMode(preprocess).value} + inference)")
    note_seeded(getattr(run, "seeded", False))


@app.command("eval")
@handle_errors
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="Built artifact or ONNX model.")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder: class folders named by synset id, class index or class name.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH)] = 16,
    preprocess: PreprocessOpt = PreprocessMode.fast,
    folder_order: Annotated[FolderOrder, typer.Option("--folder-order", help="Integer class folders without class names: numeric (folder 10 "
                                                      "is output 10) or imagefolder (torchvision's string order).")] = FolderOrder.numeric,
    cluster: ClusterOpt = None,
    workers: WorkersOpt = 1,
    agreement_sample: Annotated[int, typer.Option("--agreement-sample", min=0, max=100_000,
                                                  help="--preprocess fast: also run this many images (evenly spread) through exact "
                                                  "preprocessing and report the agreement; 0: none.")] = DEFAULT_AGREEMENT_SAMPLE,
) -> None:
    """Top-1 / top-5 accuracy on a labelled folder, and the end-to-end rate; on a Ray cluster with --cluster."""
    from ..evaluate.predict import evaluate

    workers_need_cluster(cluster, workers)
    if cluster is None:
        r = evaluate(artifact, data, batch_size, progress=progress, mode=preprocess, order=folder_order, agreement_sample=agreement_sample)
    else:
        from ..cluster.evaluate import evaluate_on_cluster

        r = c = evaluate_on_cluster(artifact, data, cluster, workers=workers, batch_size=batch_size, mode=preprocess, order=folder_order)
        note(f"cluster {cluster}: {c.workers} worker(s), ready after {c.startup_s:.1f} s, the workers' engines open after "
             f"{c.workers_s:.1f} s more (neither in the rate below)")
    for warning in r.warnings:
        note(f"warning: {warning}")
    note_seeded(r.seeded)
    agreement = getattr(r, "preprocess_agreement", None)  # a cluster run does not compare
    typer.echo(f"{r.images} images: top-1 {r.top1:.2%}, top-5 {r.top5:.2%}" + (f" ({r.skipped} files skipped)" if r.skipped else "")
               + f"; {r.images_per_s:.1f} images/s end to end" + (f"; {agreement.line()}" if agreement is not None else ""))


@app.command()
@handle_errors
def bench(
    artifacts: Annotated[list[str], typer.Argument(help="Built artifacts and/or ONNX models (with --scenario: one, or grpc://HOST:PORT/MODEL).")],
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=100_000, help="Warm-up inferences.")] = 10,
    warmup_s: Annotated[float, typer.Option("--warmup-s", callback=finite, min=0, max=3600, help="Warm-up seconds (added to --warmup).")] = 0.0,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="Timed inferences per engine per round.")] = 50,
    duration: Annotated[float, typer.Option("--duration", callback=finite, min=0, max=3600,
                                            help="Timed seconds per engine per round (instead).")] = 0.0,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Rounds; engines are measured in turn in each.")] = 3,
    rerun_disturbed: Annotated[int, typer.Option("--rerun-disturbed", min=0, max=100,
                                                 help="Measure a round again when other processes used CPU during it, up to N times.")] = 0,
    threads: ThreadsOpt = 0,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Baselines, comma-separated: torch, ort-default, or none "
                                                 "(default: both, torch only where PyTorch is installed).")] = None,
    peak: Annotated[bool, typer.Option("--peak/--no-peak", help="Probe the CPU's FP32 matmul peak first, for the '% CPU peak' column "
                                       "(about 2 s, in its own process).")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
    scenario: Annotated[str | None, typer.Option("--scenario", help="MLPerf scenarios through LoadGen, comma-separated: single-stream, "
                                                 "multi-stream, offline, server (--batch: most samples per inference).")] = None,
    short: Annotated[bool, typer.Option("--short", help="--scenario: a short run (not MLPerf-compliant), for tests and quick looks.")] = False,
    accuracy: Annotated[bool, typer.Option("--accuracy", help="--scenario: also LoadGen's accuracy mode, top-1 on --data (labelled).")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="--scenario: images (an ImageFolder for --accuracy); default bundled photos.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="--scenario: inferences in flight, 1-64.")] = 1,
    target_qps: Annotated[float | None, typer.Option("--target-qps", callback=finite,
                                                     help="--scenario: Server's target / Offline's expected QPS.")] = None,
    target_latency_ms: Annotated[float | None, typer.Option("--target-latency-ms", callback=finite, help="--scenario server: latency bound.")] = None,
    samples_per_query: Annotated[int, typer.Option("--samples-per-query", help="--scenario multi-stream: samples per query (MLPerf: 8).")] = 8,
    min_duration_ms: Annotated[int | None, typer.Option("--min-duration-ms", help="--scenario: LoadGen's min_duration_ms (default: "
                                                        "LoadGen's, 1000 with --short).")] = None,
    min_query_count: Annotated[int | None, typer.Option("--min-query-count", help="--scenario: LoadGen's min_query_count.")] = None,
    watchdog_s: Annotated[float | None, typer.Option("--watchdog-s", callback=finite,
                                                     help="--scenario: stop each LoadGen run after this many seconds "
                                                     "(default: 4 x what its settings should take + 70 s; an Offline run that "
                                                     "LoadGen asks to repeat with a larger query is a second run).")] = None,
    loadgen_logs: Annotated[Path | None, typer.Option("--loadgen-logs", help="--scenario: keep LoadGen's logs in this folder.")] = None,
    timeout: RequestTimeoutOpt = 10.0,
    shared_memory: Annotated[SharedMemory, typer.Option("--shared-memory", help="--scenario against grpc://: tensors through Triton's "
                                                        "system shared memory (a server on this machine, as this user) instead "
                                                        "of the gRPC messages, as perf_analyzer's --shared-memory.")] = SharedMemory.none,
) -> None:
    """Latency and throughput per engine and batch size, against PyTorch eager and default ONNX Runtime; or MLPerf's
    scenarios through LoadGen (--scenario), in-process or against a Triton server (grpc://)."""
    from ..evaluate.bench import BenchConfig, run_bench
    from ..fileio import PNG_FILE, check_outputs, require_suffix

    # refuse an unwritable output, or one that is an input, now, not after the benchmark
    inputs = [a for a in artifacts if not a.startswith("grpc://")]
    require_suffix(plot_out, PNG_FILE)
    check_outputs(json_out, markdown_out, plot_out, inputs=inputs)
    if scenario is not None:
        from ..serve.loadgen import Scenario, ScenarioConfig

        cfg_s = ScenarioConfig(choices(scenario, Scenario, "--scenario"), short=short, accuracy=accuracy, data=data,
                               batch=max(int_list(batch, "--batch")), concurrency=concurrency, target_qps=target_qps,
                               target_latency_ms=target_latency_ms, samples_per_query=samples_per_query, min_duration_ms=min_duration_ms,
                               min_query_count=min_query_count, threads=threads, log_dir=loadgen_logs, watchdog_s=watchdog_s,
                               timeout_s=timeout, shared_memory=shared_memory)
        write_outputs(_bench_scenarios(artifacts, cfg_s), json=json_out, markdown=markdown_out, png=plot_out, inputs=inputs)
        return
    if any(a.startswith("grpc://") for a in artifacts):
        raise EdgeInceptionError("a served model (grpc://) is measured with --scenario (MLPerf's scenarios through LoadGen)")
    if shared_memory is not SharedMemory.none:
        raise EdgeInceptionError("--shared-memory is for --scenario against a served model (grpc://HOST:PORT/MODEL)")

    bases = None if baseline is None else () if baseline.strip() == "none" else choices(baseline, Baseline, "--baseline")
    cfg = BenchConfig(batches=int_list(batch, "--batch"), warmup=warmup, warmup_s=warmup_s, iterations=iterations if not duration else 0,
                      duration_s=duration, rounds=rounds, threads=threads, baselines=bases, rerun_disturbed=rerun_disturbed,
                      peak=peak)
    report = run_bench([str(a) for a in artifacts], cfg, progress=progress)
    _print_bench(report)
    write_outputs(report, json=json_out, markdown=markdown_out, png=plot_out, inputs=inputs)


def _bench_scenarios(targets: list[str], cfg: ScenarioConfig) -> ScenarioReport:
    """``bench TARGET --scenario ...``: LoadGen's verdict and MLPerf's metric per scenario, printed; the report returned."""
    from ..serve.loadgen import run_scenarios

    if len(targets) != 1:
        raise EdgeInceptionError(f"--scenario measures one target (an artifact or grpc://HOST:PORT/MODEL), got {len(targets)}")
    report = run_scenarios(targets[0], cfg, progress=lambda text: typer.echo(shown(text), err=True))
    for text in report.notes:
        typer.echo(f"note: {shown(text)}", err=True)
    rows = [[r.scenario, "VALID" if r.valid else "INVALID", f"{r.metric} {r.metric_value:.2f}", f"{r.samples_per_s:.1f}",
             f"{r.latency_ms.get('p90', float('nan')):.2f}", f"{r.latency_ms.get('p99', float('nan')):.2f}", str(r.query_count),
             "-" if r.top1 is None else f"{r.top1:.1%}"] for r in report.results]
    typer.echo(f"{shown(report.results[0].engine)}: {shown(targets[0])}")
    echo_table(rows, ["scenario", "result", "MLPerf metric", "samples/s", "p90 ms", "p99 ms", "queries", "top-1"])
    for r in report.results:
        if not r.valid:
            typer.echo(f"{r.scenario} INVALID: {shown('; '.join(r.invalid_reasons) or 'see LoadGen log')}")
    return report


def _print_bench(report: BenchReport) -> None:
    from ..evaluate.bench import ORT_DEFAULT_ENGINE, TORCH_ENGINE, peak_line, peak_text

    m = report.machine
    typer.echo(f"{shown(m.cpu)} ({m.cores} cores, {', '.join(m.simd)}); FP32 matmul peak {peak_line(m.matmul_peak_macs_per_s, 'GMAC/s')}")
    for text in report.notes:
        note(f"note: {text}")
    rows = []
    for r in report.results:
        lat, sp = r.latency_ms, r.speedup_vs
        rows.append([r.engine, r.device, str(r.batch), f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{lat['std']:.2f}",
                     f"{r.throughput_ips:.1f}", f"{r.macs_per_s / 1e9:.1f}", peak_text(r.peak_fraction),
                     f"{sp[TORCH_ENGINE]:.2f}x" if TORCH_ENGINE in sp else "-", f"{sp[ORT_DEFAULT_ENGINE]:.2f}x" if ORT_DEFAULT_ENGINE in sp else "-",
                     "-" if r.agreement is None else f"{r.agreement:.1%}"])
    echo_table(rows, ["engine", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "std", "img/s", "GMAC/s", "% CPU peak", "vs torch", "vs ort",
                       "agree"])


@app.command()
@handle_errors
def profile(
    artifact: Annotated[Path, typer.Argument(help="Built artifact, build folder, or ONNX model.")],
    batch: Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH)] = 1,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=10_000, help="Profiled inferences.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the table here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: share of time against share of multiply-adds.")] = None,
) -> None:
    """Time per Table 1 stage, from the backend's own profiler, beside the stage's multiply-adds (ours and the paper's)."""
    from ..evaluate.profile import markdown, profile_artifact
    from ..fileio import PNG_FILE, check_outputs, require_suffix

    require_suffix(plot_out, PNG_FILE)
    check_outputs(markdown_out, plot_out, inputs=[artifact])
    report = profile_artifact(artifact, batch=batch, iterations=iterations)
    if as_json:
        typer.echo(json_text(report.as_dict(), indent=2))
    else:
        typer.echo("\n".join(shown(line) for line in markdown(report).splitlines()))
    write_outputs(report, markdown=markdown_out, png=plot_out, inputs=[artifact], err=as_json)
