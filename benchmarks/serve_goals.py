"""The serving goals of issue 25, measured in one run: the INT8 CPU artifact in-process against the same artifact behind
a real tritonserver (nvidia-pytriton's, Python backend, loopback gRPC), through MLPerf LoadGen.

    python benchmarks/serve_goals.py [--artifact INT8_ARTIFACT] [--out benchmarks/results/serve] [--min-duration-ms 10000]

Goals:
- Offline throughput through the server >= 0.8 x in-process Offline throughput;
- SingleStream p90 through the server <= in-process p90 + 2 ms;
- outputs through the server equal in-process outputs (max abs difference <= 1e-6), through the gRPC messages and through
  system shared memory;
- many clients (issue 35): LoadGen's Server scenario with --clients (32) requests in flight over gRPC against the
  server: no request failed (Triton's failure count unchanged, and the run completes) and its p99 latency recorded.

Without --artifact, GoogLeNet at 224 px with seeded weights (timings do not depend on weight values) is exported,
quantized to INT8 (minmax calibration on the bundled photos) and built for the cpu target. Writes results.json and
results.md into --out, with the command and `uptime` before and after. The server rounds send their tensors through
Triton's system shared memory (``--shared-memory system``, as perf_analyzer does for a server on the same machine);
``--shared-memory none`` sends them in the gRPC messages. One server configuration per scenario, as MLPerf submissions
have: Offline and the many clients on a dynamic batcher that waits up to ``--max-queue-delay-us`` (500) for more
requests, SingleStream on one that does not wait (``--single-stream-queue-delay-us`` 0: with one query in flight the
wait is added to each query's latency, 0.5 ms at p50 measured).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def int8_artifact(work: Path) -> Path:
    from edge_inception.convert.export import export_model
    from edge_inception.convert.quantize import quantize_model
    from edge_inception.data.images import bundled_photos_dir
    from edge_inception.engines.build import build
    from edge_inception.vocab import CalibMethod, Criterion, Precision

    fp32 = export_model(None, work / "googlenet.onnx").path
    q = quantize_model(fp32, Precision.int8, output=work / "googlenet.int8.onnx", calib=bundled_photos_dir(), calib_size=14,
                       calib_method=CalibMethod.minmax, criterion=Criterion.agreement, min_agreement=0.01)
    return build(q.path, "cpu", output_dir=work / "cpu").artifact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve")
    parser.add_argument("--min-duration-ms", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--clients", type=int, default=32, help="requests in flight for the many-clients Server scenario")
    parser.add_argument("--max-queue-delay-us", type=int, default=500,
                        help="Offline and many clients: the dynamic batcher's max_queue_delay_microseconds")
    parser.add_argument("--single-stream-queue-delay-us", type=int, default=0,
                        help="SingleStream: the dynamic batcher's max_queue_delay_microseconds (a wait adds to every query)")
    parser.add_argument("--shared-memory", choices=["none", "system"], default="system",
                        help="the server rounds' tensors: Triton's system shared memory (default) or in the gRPC messages")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (the record still says how busy it was)")
    args = parser.parse_args(argv)
    rec = Record()
    if not args.no_wait:
        rec.wait_for_quiet()

    from edge_inception.data.images import bundled_photos, load_batch
    from edge_inception.engines.registry import artifact_info, open_runner
    from edge_inception.report import Rendered, write_report
    from edge_inception.serve.client import TritonClient, TritonRunner
    from edge_inception.serve.config import ServeKind
    from edge_inception.serve.loadgen import Scenario, ScenarioConfig, ScenarioReport, markdown, run_scenarios
    from edge_inception.serve.repository import ExportOptions, export_repository
    from edge_inception.serve.server import TritonServer
    from edge_inception.vocab import SharedMemory

    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="serve-goals-") as tmp:
        work = Path(tmp)
        artifact = args.artifact or int8_artifact(work)
        info = artifact_info(artifact)
        # one configuration per scenario, as MLPerf submitters do: Offline and the many clients on a dynamic batcher that
        # waits --max-queue-delay-us for more requests (throughput); SingleStream, one request at a time, on one that
        # does not wait (--single-stream-queue-delay-us, 0: a wait there is added to every query's latency)
        repos = {}
        for name, delay in (("throughput", args.max_queue_delay_us), ("latency", args.single_stream_queue_delay_us)):
            repos[name] = work / f"repo-{name}"
            export_repository(artifact, repos[name], ExportOptions(kind=ServeKind.python, name="googlenet", max_queue_delay_us=delay))
        shm = SharedMemory(args.shared_memory)
        reports: dict[str, ScenarioReport] = {}
        with rec.round("in-process"):
            reports["in-process"] = run_scenarios(str(artifact), ScenarioConfig((Scenario.offline, Scenario.single_stream), short=False,
                                                                                batch=args.batch, min_duration_ms=args.min_duration_ms))
        with TritonServer(repos["throughput"], http_port=0, grpc_port=0, metrics_port=0) as server:
            assert server.endpoints is not None
            target = f"grpc://{server.endpoints.grpc}/googlenet"
            x = load_batch(bundled_photos(), info.image_size)
            with open_runner(artifact) as local, TritonRunner(target, timeout_s=60) as remote:
                want = local.run(x)
                max_abs = float(np.abs(want - remote.run(x)).max())
                remote.client.use_shared_memory(len(x), 1)  # the same through system shared memory
                max_abs = max(max_abs, float(np.abs(want - remote.run(x)).max()))
            with rec.round("server"):  # the server is ours: its CPU time is not 'other processes'
                reports["server"] = run_scenarios(target, ScenarioConfig((Scenario.offline,), short=False, batch=args.batch,
                                                                         concurrency=args.concurrency, min_duration_ms=args.min_duration_ms,
                                                                         shared_memory=shm))

            def failures() -> int:  # Triton's count of failed inferences of the model
                with TritonClient(target, timeout_s=60) as client:
                    return client.failures()

            failed_before = failures()
            with rec.round("many-clients"):
                reports["many-clients"] = run_scenarios(target, ScenarioConfig((Scenario.server,), short=False, batch=1,
                                                                               concurrency=args.clients, min_duration_ms=args.min_duration_ms))
            failed = failures() - failed_before
        with TritonServer(repos["latency"], http_port=0, grpc_port=0, metrics_port=0) as server:
            assert server.endpoints is not None
            with rec.round("server-single-stream"):
                reports["server-single-stream"] = run_scenarios(f"grpc://{server.endpoints.grpc}/googlenet", ScenarioConfig(
                    (Scenario.single_stream,), short=False, batch=args.batch, min_duration_ms=args.min_duration_ms, shared_memory=shm))
    load_after = uptime()

    def metric(name: str, scenario: str) -> float:
        return next(r.metric_value for r in reports[name].results if r.scenario == scenario)

    off_ratio = metric("server", "Offline") / metric("in-process", "Offline")
    ss_delta = metric("server-single-stream", "SingleStream") - metric("in-process", "SingleStream")
    goals = {
        "offline_server_over_in_process": {"value": off_ratio, "goal": ">= 0.8", "met": off_ratio >= 0.8},
        "single_stream_p90_server_minus_in_process_ms": {"value": ss_delta, "goal": "<= 2.0", "met": ss_delta <= 2.0},
        "max_abs_difference_server_vs_in_process": {"value": max_abs, "goal": "<= 1e-6", "met": max_abs <= 1e-6},
        f"server_{args.clients}_clients_failed_requests": {"value": failed, "goal": "== 0", "met": failed == 0},
        f"server_{args.clients}_clients_p99_ms": {"value": metric("many-clients", "Server"), "goal": "recorded",
                                                  "met": metric("many-clients", "Server") > 0},
    }
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    data = {"command": command, "load_before": load_before, "load_after": load_after,
            "artifact": str(args.artifact or "GoogLeNet 224 px INT8 (seeded)"), "precision": info.precision, "goals": goals,
            "reports": {k: v.as_dict() for k, v in reports.items()}, "record": rec.as_dict()}
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Serving goals (issue 25)", "", f"- command: `{command}`", f"- load before: `{load_before}`", f"- load after: `{load_after}`",
             f"- artifact: {data['artifact']} ({info.precision}, {info.image_size} px, {info.backend})", *rec.header(), "",
             "| goal | value | target | met |", "|---|---:|---|---|"]
    lines += [f"| {k} | {v['value']:.3g} | {v['goal']} | {rec.met(v['met'])} |" for k, v in goals.items()]
    for name, rep in reports.items():
        lines += ["", f"## {name}", "", markdown(rep).split("\n", 2)[2]]
    write_report(Rendered(data, "\n".join(lines) + "\n"), json=args.out / "results.json", markdown=args.out / "results.md")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
