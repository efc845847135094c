"""Does `edge-inception bench` agree with the runtimes' own tools? Every CPU backend, the same artifact, the same settings.

    python benchmarks/bench_agreement.py [--model FP32.onnx [--int8 INT8.onnx]] [--out benchmarks/results/bench-agreement]
                                         [--rounds 3] [--iterations 50] [--batch 1,8] [--threads 0]

Without --model, GoogLeNet at 224 px with seeded weights (timings do not depend on the weight values) is exported and
quantized to INT8 (min-max calibration on the bundled photos; --int8 gives an INT8 model of --model's instead). Both
are built for the cpu target with every CPU backend (ONNX Runtime FP32 and INT8, OpenVINO FP32 IR and INT8 IR); each
artifact is then measured, at each batch size, by:

- `edge-inception bench ARTIFACT --batch B --rounds 1 --baseline none` (its own process per engine): its p50;
- the runtime's own tool on the same artifact, with the settings bench uses:
  OpenVINO: `benchmark_app -m ARTIFACT.xml -d CPU -hint latency -api sync -data_shape [B,3,S,S]` (one request,
  the LATENCY hint: one stream, as bench's runner; `-infer_precision f32` for an FP32 IR, as its manifest asks; the
  same `-nthreads`), read from its JSON statistics report (`-json_stats`), else from its "Median:" line;
  ONNX Runtime: a bare `InferenceSession.run` loop (the same intra-op threads, one inter-op thread, sequential
  execution, the graph loaded as built), its median; `onnxruntime_perf_test` where it is on PATH.
Rounds alternate which goes first. Goal: bench p50 <= 1.10 x the tool's median, every backend, batch 1 and 8.
Writes results.json and results.md into --out with the CPU's name and ISA flags and each round's load (benchmarks/_record.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record, refused  # noqa: E402

if TYPE_CHECKING:
    from edge_inception.onnx_file import OnnxFacts

T = TypeVar("T")

GOAL = 1.10  # bench p50 at most this many times the tool's median
BENCHMARK_APP_TIMEOUT_S = 600


@dataclass
class Engine:
    name: str  # ort-fp32, openvino-int8, ...
    backend: str
    precision: str
    path: Path
    image_size: int
    threads: int
    options: dict[str, Any]


# ------------------------------------------------------------------ benchmark_app's output

MEDIAN_LINE = re.compile(r"Median:\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|us)\b")


def parse_benchmark_app(stdout: str, report_json: Path | None = None) -> float:
    """benchmark_app's median latency in milliseconds: from its JSON statistics report (``-json_stats -report_folder``:
    ``execution_results["latency (ms)"]``, the median at the default 50th percentile), else from the "Median:" line it
    logs (which it prints in us below 1 ms). Raises ValueError when neither says."""
    if report_json is not None and report_json.is_file():
        try:
            results = json.loads(report_json.read_text()).get("execution_results", {})
            value = results.get("latency (ms)")
            if value is not None:
                return float(value)
        except (ValueError, AttributeError):
            pass
    found = MEDIAN_LINE.findall(stdout)
    if not found:
        raise ValueError("benchmark_app printed no 'Median:' latency")
    value, unit = found[0]  # the overall median comes first; per-shape-group medians follow
    return float(value) / (1000.0 if unit == "us" else 1.0)


def benchmark_app() -> list[str]:
    exe = Path(sys.executable).parent / "benchmark_app"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("benchmark_app")
    return [found] if found else [sys.executable, "-m", "openvino.tools.benchmark.main"]


def benchmark_app_args(e: Engine, batch: int, iterations: int, report_folder: Path) -> list[str]:
    """The command line that measures what bench measures: one synchronous request (``-api sync`` uses one; ``-nireq``
    is not given, since it would add a num-requests hint to the compiled model's configuration that bench does not set)
    with the LATENCY hint, the model kept dynamic (-data_shape, not -shape: bench compiles the IR as built), the IR's own
    inference precision and threads."""
    args = ["-m", str(e.path), "-d", "CPU", "-hint", "latency", "-api", "sync", "-niter", str(iterations),
            "-data_shape", f"[{batch},3,{e.image_size},{e.image_size}]", "-report_type", "no_counters", "-json_stats",
            "-report_folder", str(report_folder)]
    if isinstance(e.options.get("inference_precision"), str):
        args += ["-infer_precision", str(e.options["inference_precision"])]
    if e.threads:
        args += ["-nthreads", str(e.threads)]
    return args


def run_benchmark_app(e: Engine, batch: int, iterations: int, work: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="benchmark-app-", dir=work))
    cmd = [*benchmark_app(), *benchmark_app_args(e, batch, iterations, folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BENCHMARK_APP_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return {"tool": "benchmark_app", "median_ms": parse_benchmark_app(proc.stdout, folder / "benchmark_report.json"),
            "command": " ".join(shlex.quote(c) for c in cmd)}


# ------------------------------------------------------------------ ONNX Runtime's own timing

def ort_loop(path: str, batch: int, image_size: int, threads: int, optimized: bool, warmup: int, iterations: int) -> float:
    """A bare ``InferenceSession.run`` loop, with the session options bench's ONNX Runtime runner uses; median ms."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized:  # optimised at build time: loaded as it is, as the runner does
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        session.run(None, {name: x})
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


def run_ort_tool(e: Engine, batch: int, warmup: int, iterations: int) -> dict[str, Any]:
    """The bare loop in its own process (as bench measures each engine in its own); ``onnxruntime_perf_test`` is not
    part of the Python wheel and is used where it is on PATH."""
    perf_test = shutil.which("onnxruntime_perf_test")
    if perf_test:
        cmd = [perf_test, "-e", "cpu", "-m", "times", "-r", str(iterations), "-x", str(e.threads), "-y", "1", "-o", "0" if e.options.get(
            "offline_optimized") else "99", str(e.path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        m = re.search(r"P50 Latency:\s*([0-9.eE+-]+)\s*s", proc.stdout)
        if proc.returncode == 0 and m:
            return {"tool": "onnxruntime_perf_test", "median_ms": float(m.group(1)) * 1e3, "command": " ".join(cmd)}
    spec = json.dumps([str(e.path), batch, e.image_size, e.threads, bool(e.options.get("offline_optimized")), warmup, iterations])
    proc = subprocess.run([sys.executable, __file__, "--ort-loop", spec], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the ONNX Runtime loop failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return {"tool": "InferenceSession.run loop", "median_ms": float(proc.stdout.strip().splitlines()[-1]),
            "command": f"python benchmarks/bench_agreement.py --ort-loop '{spec}'"}


# ------------------------------------------------------------------ edge-inception bench

def run_bench_cli(e: Engine, batch: int, warmup: int, iterations: int, work: Path) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix="bench-", suffix=".json", dir=work)[1])
    cmd = [sys.executable, "-m", "edge_inception", "bench", str(e.path), "--batch", str(batch), "--warmup", str(warmup), "--iterations",
           str(iterations), "--rounds", "1", "--baseline", "none", "--no-peak", "--threads", str(e.threads), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"edge-inception bench failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    result = json.loads(out.read_text())["results"][0]
    return {"p50_ms": result["latency_ms"]["p50"], "command": "edge-inception " + " ".join(shlex.quote(c) for c in cmd[3:])}


# ------------------------------------------------------------------ the artifacts

def make_artifacts(model: Path | None, work: Path, image_size: int, num_classes: int, threads: int, int8: Path | None = None) -> list[Engine]:
    from edge_inception.convert.export import export_model
    from edge_inception.convert.quantize import quantize_model
    from edge_inception.data.images import bundled_photos_dir
    from edge_inception.engines.build import build
    from edge_inception.engines.targets import get_target
    from edge_inception.vocab import CalibMethod, Criterion, Precision

    fp32 = model or export_model(None, work / "googlenet.onnx", num_classes=num_classes, image_size=image_size).path
    int8 = int8 or quantize_model(fp32, Precision.int8, output=work / "googlenet.int8.onnx", calib=bundled_photos_dir(), calib_size=14,
                                  calib_method=CalibMethod.minmax, criterion=Criterion.agreement, min_agreement=0.01).path
    engines = []
    for backend in get_target("cpu").backends:  # every CPU backend the preset names
        for src in (fp32, int8):
            b = build(src, "cpu", backend=backend, output_dir=work / backend, threads=threads)
            m = b.manifest
            engines.append(Engine(f"{m.backend}-{m.precision}", m.backend, m.precision, b.artifact, m.image_size, m.threads, dict(m.options)))
    return engines


TOOLS = {"openvino": lambda e, b, warmup, it, work: run_benchmark_app(e, b, it, work),
         "ort": lambda e, b, warmup, it, work: run_ort_tool(e, b, warmup, it)}


def one_round(e: Engine, batch: int, order: tuple[str, str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """bench and the tool on one engine at one batch size, in ``order``."""
    got: dict[str, Any] = {"first": order[0]}
    for which in order:
        if which == "bench":
            got["bench"] = run_bench_cli(e, batch, args.warmup, args.iterations, work)
        else:
            got["tool"] = TOOLS[e.backend](e, batch, args.warmup, args.iterations, work)
    return got


def named(option: str, check: Callable[[], T]) -> T:
    """``check()``, its EdgeInceptionError (the product's message) prefixed with the option it is about, unless it names it."""
    from edge_inception.errors import EdgeInceptionError

    try:
        return check()
    except EdgeInceptionError as exc:
        if str(exc).startswith(option):
            raise
        raise EdgeInceptionError(f"{option}: {exc}") from None


def check_models(model: Path | None, int8: Path | None, model_option: str = "--model") -> OnnxFacts | None:
    """``--model`` an FP32 classifier, ``--int8`` an INT8 one of the same input size and classes (the product's own checks,
    :func:`~edge_inception.onnx_file.onnx_facts`), before anything is built; ``model_option``: the FP32 model's option in
    the messages (run_suite.py's ``--fp32``). Returns the FP32 model's facts (None without ``model``). Raises
    EdgeInceptionError."""
    from edge_inception.errors import EdgeInceptionError
    from edge_inception.onnx_file import onnx_facts

    if model is None:
        return None
    fp32 = named(model_option, lambda: onnx_facts(model))  # missing, not ONNX, not a classifier: refused
    if fp32.precision != "fp32":
        raise EdgeInceptionError(f"{model_option} {model}: a {fp32.precision} model; give the FP32 one (and its INT8 model with --int8)")
    if int8 is None:
        return fp32
    q = named("--int8", lambda: onnx_facts(int8))
    if q.precision != "int8":
        raise EdgeInceptionError(f"--int8 {int8}: a {q.precision} model, not an INT8 one (edge-inception quantize --precision int8 makes one)")
    if (q.image_size, q.num_classes) != (fp32.image_size, fp32.num_classes):
        raise EdgeInceptionError(f"--int8 {int8}: {q.image_size} px, {q.num_classes} classes; {model_option} {model} has {fp32.image_size} px, "
                                 f"{fp32.num_classes} classes: not an INT8 model of it")
    return fp32


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Record]:
    from edge_inception.evaluate.cpu import cpu_info

    rec = Record(max_load=args.max_load)
    if not args.no_wait:
        rec.wait_for_quiet()
    batches = [int(b) for b in args.batch.split(",")]
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp:
        work = Path(tmp)
        engines = make_artifacts(args.model, work, args.image_size, args.num_classes, args.threads, args.int8)
        engines = [e for e in engines if e.backend in TOOLS]
        for e in engines:
            for batch in batches:
                row: dict[str, Any] = {"engine": e.name, "backend": e.backend, "precision": e.precision, "batch": batch, "rounds": []}
                for r in range(args.rounds):
                    order = ("bench", "tool") if r % 2 == 0 else ("tool", "bench")  # alternate which goes first
                    got = rec.measure(f"{e.name} b{batch} r{r + 1}", functools.partial(one_round, e, batch, order, args, work),
                                      reruns=args.rerun_disturbed)
                    load = rec.rounds[-1]
                    got.update({"load_before": load["loadavg_before"], "load_after": load["loadavg_after"], "others_cores": load["others_cores"],
                                "disturbed": load["disturbed"]})
                    row["rounds"].append(got)
                    print(json.dumps({"engine": e.name, "batch": batch, "round": r + 1, "bench_p50_ms": got["bench"]["p50_ms"],
                                      "tool_median_ms": got["tool"]["median_ms"], "others_cores": load["others_cores"]}), flush=True)
                row["bench_p50_ms"] = _median([x["bench"]["p50_ms"] for x in row["rounds"]])
                row["tool_median_ms"] = _median([x["tool"]["median_ms"] for x in row["rounds"]])
                row["ratio"] = row["bench_p50_ms"] / row["tool_median_ms"]
                row["tool"] = row["rounds"][0]["tool"]["tool"]
                row["met"] = row["ratio"] <= GOAL
                row["commands"] = {"bench": row["rounds"][0]["bench"]["command"], "tool": row["rounds"][0]["tool"]["command"]}
                rows.append(row)
    cpu = cpu_info()
    return {"cpu": cpu.model, "isa": cpu.simd, "goal": f"bench p50 <= {GOAL} x the tool's median", "rows": rows,
            "all_met": all(r["met"] for r in rows) and rec.quotable, "seconds": round(time.monotonic() - t0, 1), "record": rec.as_dict(),
            "settings": {"rounds": args.rounds, "iterations": args.iterations, "warmup": args.warmup, "batches": batches,
                         "threads": args.threads or "default"}}, rec


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def markdown(doc: dict[str, Any], rec: Record) -> str:
    lines = ["# bench against the runtimes' own tools", "", f"- command: `{doc['command']}`", *rec.header(),
             f"- {doc['settings']['rounds']} round(s) per row, alternating which goes first; {doc['settings']['iterations']} timed inferences "
             f"per measurement; threads: {doc['settings']['threads']}; {doc['seconds']:.0f} s", "",
             f"| engine | batch | bench p50 ms | tool | tool median ms | ratio | goal <= {GOAL} x |", "|---|---:|---:|---|---:|---:|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['engine']} | {r['batch']} | {r['bench_p50_ms']:.2f} | {r['tool']} | {r['tool_median_ms']:.2f} | {r['ratio']:.3f} | "
                     f"{rec.met(r['met'])} |")
    lines += ["", "Per round (bench p50 / tool median ms; load before -> after; other processes' CPU use in cores):", ""]
    for r in doc["rows"]:
        lines.append(f"- {r['engine']} b{r['batch']}: " + "; ".join(
            f"{x['bench']['p50_ms']:.2f} / {x['tool']['median_ms']:.2f} ({x['first']} first; load {x['load_before']} -> {x['load_after']}, "
            f"others {x['others_cores']}{', disturbed' if x['disturbed'] else ''})" for x in r["rounds"]))
    lines += ["", "Commands (first round):", ""]
    for r in doc["rows"]:
        lines += [f"- {r['engine']} b{r['batch']}: `{r['commands']['bench']}`; `{r['commands']['tool']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ort-loop"]:  # the child that runs ONNX Runtime's bare loop
        print(ort_loop(*json.loads(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="FP32 ONNX (default: GoogLeNet at 224 px, seeded weights)")
    parser.add_argument("--int8", type=Path, help="with --model: its INT8 model (default: quantized from it, min-max on the bundled photos)")
    parser.add_argument("--image-size", type=int, default=224, help="without --model: the exported net's input size")
    parser.add_argument("--num-classes", type=int, default=1000, help="without --model: the exported net's classes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench-agreement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=0, help="0: each runtime's default (bench's default too)")
    parser.add_argument("--rerun-disturbed", type=int, default=1, help="measure a disturbed round again, up to this many times")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (the record still says how busy it was)")
    args = parser.parse_args(argv)
    if args.int8 is not None and args.model is None:
        parser.error("--int8 needs --model, the FP32 model it was quantized from")
    command = "python benchmarks/bench_agreement.py " + " ".join(shlex.quote(a) for a in argv)
    from edge_inception.errors import EdgeInceptionError

    try:
        check_models(args.model, args.int8)
        doc, rec = run(args)
    except EdgeInceptionError as exc:  # a model that is missing, not ONNX, not a classifier, of another kind: one line
        return refused(exc)
    doc["command"] = command
    from edge_inception.report import Rendered, write_report

    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(doc, rec)
    write_report(Rendered(doc, text), json=args.out / "results.json", markdown=args.out / "results.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
