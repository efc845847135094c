"""The cluster goals: what Ray costs `eval`, and whether `fleet bench` reports what `bench` measures on the board.

    python benchmarks/cluster_goals.py eval ARTIFACT [--images 2000] [--repeats 3] [--out benchmarks/results/cluster]
    python benchmarks/cluster_goals.py fleet BUNDLE [--iterations 200] [--rounds 2] [--repeats 3] [--out DIR]

eval: plain `eval` vs `eval --cluster local` at 1 and 2 workers on >= 2,000 labelled images (the demo photos cropped
  afresh at 64 px, or --data DIR), each in a fresh process, in --repeats passes that alternate them (plain, 1, 2,
  plain, 1, 2, ...: a ratio is taken against the plain run of its own pass, so that the machine's drift hits both),
  each run a round of the record. Recorded: predictions identical (per image top-5), the cluster's start-up (seconds to
  a usable cluster) and the workers' (until the first batch began: Ray Data's plan, actors started, each opening the
  model), neither in the steady-state images/s (plain eval's rate leaves out its model load alike), the whole pass's
  images/s beside it, and the peak resident memory of every process of the run (sampled from /proc every 0.2 s).
  Goals: identical predictions; steady state >= 0.8 x plain eval's images/s at the same worker count; start-up <= 30 s.
fleet: starts a head and three "boards" (Ray nodes labelled board-a/b/c, one CPU each, token auth, 127.0.0.2) on this
  machine, and compares `fleet bench BUNDLE` on each board alone with `bench` run directly here on the same artifact (the
  bundle built here for the cpu preset) with the same settings; then all three boards at once (recorded, not a goal:
  simulated boards share this machine's cores). Every process it starts is killed by PID at the end.
  Goal: per-board p50 within 10 % of direct `bench`.

Writes cluster_goals.json and .md into --out with the command, load averages before/after and the CPU's ISA flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record  # noqa: E402


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _session(sid: int) -> list[Path]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                out.append(d)
        except (OSError, ValueError, IndexError):
            continue
    return out


def _session_rss_mb(sid: int) -> float:
    total = 0
    for d in _session(sid):
        try:
            total += sum(int(line.split()[1]) for line in (d / "status").read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


RUNNER = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    artifact, data, workers, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if workers == 0:
        from edge_inception.evaluate.predict import evaluate, predict
        r = evaluate(artifact, data, 16)
        top = {str(__import__("pathlib").Path(p.image).resolve()): [i for i, _, _ in p.top]
               for p in predict(artifact, [data], top_k=5, batch_size=16).predictions}
        res = {"images": r.images, "top1": r.top1, "seconds": r.seconds, "startup_s": 0.0, "workers_s": 0.0, "top": top}
    else:
        from edge_inception.cluster.evaluate import evaluate_on_cluster
        r = evaluate_on_cluster(artifact, data, "local", workers=workers, batch_size=16)
        res = {"images": r.images, "top1": r.top1, "seconds": r.seconds, "startup_s": r.startup_s, "workers_s": r.workers_s, "top": r.top}
    res["wall_s"] = time.perf_counter() - t0
    json.dump(res, open(out, "w"))
""")


def run_one(artifact: str, data: Path, workers: int, tmp: Path) -> dict[str, Any]:
    out = tmp / f"r{workers}.json"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, artifact, str(data), str(workers), str(out)], start_new_session=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _session_rss_mb(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        rc = proc.wait(timeout=3600)
    finally:
        done.set()
        t.join()
        for d in _session(proc.pid):  # whatever the run left in its own session, by PID
            try:
                os.kill(int(d.name), 9)
            except OSError:
                pass
    if rc != 0:
        raise SystemExit(f"run with {workers} worker(s) failed ({rc})")
    res = json.loads(out.read_text())
    res["peak_rss_mb"] = round(peak, 1)
    res["images_per_s"] = res["images"] / res["seconds"]
    res["pass_images_per_s"] = res["images"] / (res["seconds"] + res["workers_s"])
    return res


def eval_goals(args: argparse.Namespace, rec: Record) -> dict[str, Any]:
    import statistics

    from edge_inception.data.demo_data import make_demo_dataset
    from edge_inception.evaluate.cpu import cpu_info

    tmp = Path(tempfile.mkdtemp(prefix="cluster-goals-"))
    data = args.data or make_demo_dataset(tmp / "data", train_per_class=0, val_per_class=max(1, args.images // 10), crop_px=64, seed=3) / "val"
    record: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info().model, "simd": cpu_info().simd, "load_before": load()}
    plain: list[dict[str, Any]] = []
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for i in range(args.repeats):  # alternating: plain, 1, 2, plain, 1, 2, ...
        for workers in (0, 1, 2):
            with rec.round(f"pass {i + 1}: {'plain' if workers == 0 else f'{workers} worker(s)'}"):
                r = run_one(args.artifact, data, workers, tmp)
            if workers == 0:
                plain.append(r)
            else:
                r["ratio_vs_plain"] = r["images_per_s"] / plain[-1]["images_per_s"]
                r["identical"] = r["top"] == plain[-1]["top"]
                runs[workers].append(r)
    record["load_after"] = load()
    record["repeats"] = args.repeats
    record["plain"] = {"images": plain[0]["images"], "images_per_s": statistics.median(p["images_per_s"] for p in plain),
                       "each_images_per_s": [round(p["images_per_s"], 1) for p in plain],
                       "peak_rss_mb": max(p["peak_rss_mb"] for p in plain),
                       "identical_across_passes": all(p["top"] == plain[0]["top"] for p in plain)}
    record["cluster"] = {}
    for w, rs in runs.items():
        ratio = statistics.median(r["ratio_vs_plain"] for r in rs)
        startup = max(r["startup_s"] + r["workers_s"] for r in rs)  # the cluster's and the workers' start, the worst pass
        record["cluster"][w] = {"images": rs[0]["images"], "images_per_s": statistics.median(r["images_per_s"] for r in rs),
                                "each_images_per_s": [round(r["images_per_s"], 1) for r in rs],
                                "pass_images_per_s": statistics.median(r["pass_images_per_s"] for r in rs),
                                "startup_s": max(r["startup_s"] for r in rs), "workers_s": max(r["workers_s"] for r in rs),
                                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "identical": all(r["identical"] for r in rs),
                                "ratio_vs_plain": ratio, "each_ratio_vs_plain": [round(r["ratio_vs_plain"], 3) for r in rs],
                                "goal_steady_state": ratio >= 0.8, "goal_startup": startup <= 30}
    return record


FLEET_HOST = "127.0.0.2"  # loopback, but an address Ray keeps as given in a multi-node cluster (see tests/test_cluster_fleet.py)
BOARDS = ("board-a", "board-b", "board-c")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill_sessions(procs: list[subprocess.Popen]) -> None:
    """Every process of each started session, by PID: SIGTERM, then SIGKILL what is left."""
    for sig, wait in ((15, 5.0), (9, 1.0)):
        for proc in procs:
            for d in _session(proc.pid):
                try:
                    os.kill(int(d.name), sig)
                except OSError:
                    pass
        time.sleep(wait)
    for proc in procs:
        proc.wait(timeout=30)


def _local_fleet(tmp: Path, env: dict[str, str]) -> tuple[str, list[subprocess.Popen]]:
    """A head (no CPU of its own) and three boards, one CPU each, on 127.0.0.2 with token auth; waits until all are up."""
    import secrets
    import socket

    ray = str(Path(sys.executable).with_name("ray"))
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    with socket.socket() as s:
        s.bind((FLEET_HOST, 0))
        port = s.getsockname()[1]
    address = f"{FLEET_HOST}:{port}"
    node = ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    procs = [_start([ray, "start", "--head", "--block", "--node-ip-address", FLEET_HOST, "--port", str(port), "--include-dashboard=false",
                     "--num-cpus", "0", *node], tmp / "head.log", env)]
    try:
        for i, name in enumerate(BOARDS, 1):
            procs.append(_start([ray, "start", "--block", "--address", address, "--node-ip-address", FLEET_HOST, "--num-cpus", "1", *node,
                                 "--labels", f"edge-inception-board={name},edge-inception-target=cpu"], tmp / f"{name}.log", env))
            deadline = time.monotonic() + 600
            while True:  # one board at a time: three raylets starting at once overload a small machine
                r = subprocess.run([sys.executable, "-m", "edge_inception", "fleet", "status", address], capture_output=True, text=True,
                                   env=env, timeout=300)
                if r.returncode == 0 and sum(" alive " in line for line in r.stdout.splitlines()) == i:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the local fleet did not come up: {r.stderr[-1000:]}")
                time.sleep(3)
    except BaseException:
        _kill_sessions(procs)
        raise
    return address, procs


def _p50s(report: dict[str, Any]) -> dict[str, float]:
    return {r["board"]: r["bench"][0]["latency_ms"]["p50"] for r in report["boards"] if r.get("status") == "ok" and r.get("bench")}


def fleet_goals(args: argparse.Namespace) -> dict[str, Any]:
    """`fleet bench` on three local boards (separate Ray nodes on this machine) vs `bench` run directly here on the same
    artifact (the bundle built here for the cpu preset, as each board builds it), with the boards' settings (warm-up 3,
    --iterations, --rounds, no baseline). Each board is measured alone (--boards NAME: the goal's comparison, one board
    per machine as in a real fleet), in --repeats passes that alternate direct and board runs (direct, a, direct, b,
    direct, c, ...), so that a board and the direct run it is compared with share the machine's state; a board's figure
    is the median of its passes' p50s over the median of the direct runs'. Then all three at once (recorded: they share
    this machine's cores, a real fleet does not)."""
    import statistics

    from edge_inception.deploy.bundle import verify_bundle
    from edge_inception.engines.build import build
    from edge_inception.evaluate.cpu import cpu_info

    tmp = Path(tempfile.mkdtemp(prefix="cluster-goals-"))
    cli = [sys.executable, "-m", "edge_inception"]
    timed = ["--iterations", str(args.iterations), "--rounds", str(args.rounds)]
    record: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info().model, "simd": cpu_info().simd, "cores": os.cpu_count(),
                              "load_before": load()}
    artifact = build(verify_bundle(Path(args.bundle)).model, "cpu", output_dir=tmp / "direct").artifact
    env = dict(os.environ)
    address, procs = _local_fleet(tmp, env)
    direct: list[float] = []
    alone: dict[str, list[float]] = {b: [] for b in BOARDS}
    try:
        record["fleet_up_load"] = load()
        for _ in range(args.repeats):
            for name in BOARDS:
                subprocess.run([*cli, "bench", str(artifact), "--baseline", "none", "--warmup", "3", *timed, "--json", str(tmp / "direct.json")],
                               check=True, env=env, stdout=subprocess.DEVNULL)
                direct.append(json.loads((tmp / "direct.json").read_text())["results"][0]["latency_ms"]["p50"])
                out = tmp / f"alone-{name}.json"
                subprocess.run([*cli, "fleet", "bench", args.bundle, "--cluster", address, "--boards", name, *timed, "--json", str(out)],
                               check=True, env=env, stdout=subprocess.DEVNULL)
                for board, p50 in _p50s(json.loads(out.read_text())).items():
                    alone[board].append(p50)
        subprocess.run([*cli, "fleet", "bench", args.bundle, "--cluster", address, *timed, "--json", str(tmp / "together.json")],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        together = _p50s(json.loads((tmp / "together.json").read_text()))
    finally:
        _kill_sessions(procs)
    record["load_after"] = load()
    record["direct_p50_ms"] = statistics.median(direct)
    record["direct_p50s_ms"] = direct
    record["boards"] = []
    for b in BOARDS:
        mid = statistics.median(alone[b]) if alone[b] else None
        ratio = mid / record["direct_p50_ms"] if mid else None
        record["boards"].append({"board": b, "alone_p50_ms": mid, "alone_p50s_ms": alone[b], "together_p50_ms": together.get(b),
                                 "ratio_alone_vs_direct": ratio, "goal_within_10pct": ratio is not None and abs(ratio - 1) <= 0.10})
    return record


def markdown(what: str, r: dict[str, Any]) -> str:
    lines = [f"# cluster goals: {what}", "", f"`{r['command']}`", "", f"CPU: {r['cpu']}; ISA: {' '.join(r['simd'])}; "
             f"1/5/15-min load before {r['load_before']}, after {r['load_after']}.", ""]
    if what == "eval":
        p = r["plain"]
        lines += [f"{r['repeats']} pass(es), each plain eval then 1 then 2 workers (medians; a ratio is against its own pass's plain run).", "",
                  "| run | images | start-up s | workers' start s | steady images/s (each) | vs plain (each) | whole pass images/s "
                  "| peak RSS MB | identical |", "|---|---|---|---|---|---|---|---|---|",
                  f"| plain eval | {p['images']} | - | - | {p['images_per_s']:.1f} ({', '.join(map(str, p['each_images_per_s']))}) | 1.00x | "
                  f"{p['images_per_s']:.1f} | {p['peak_rss_mb']} | - |"]
        for w, c in r["cluster"].items():
            lines.append(f"| --cluster local, {w} worker(s) | {c['images']} | {c['startup_s']:.1f} | {c['workers_s']:.1f} | "
                         f"{c['images_per_s']:.1f} ({', '.join(map(str, c['each_images_per_s']))}) | {c['ratio_vs_plain']:.2f}x "
                         f"({', '.join(f'{x:.2f}' for x in c['each_ratio_vs_plain'])}) | {c['pass_images_per_s']:.1f} | {c['peak_rss_mb']} | "
                         f"{c['identical']} |")
        lines += ["", "Goals: identical; steady state (from the first worker's first batch, as plain eval's rate starts after its model "
                  "load) >= 0.8x plain; start-up (cluster + workers) <= 30 s."]
    else:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        lines += [f"Direct `bench` p50 (batch 1), median of {len(r['direct_p50s_ms'])} runs alternating with the boards': "
                  f"{r['direct_p50_ms']:.3f} ms (each: {', '.join(ms(x) for x in r['direct_p50s_ms'])}).", "",
                  "| board | alone p50 ms (median) | each pass | vs direct | all three at once p50 ms | within 10 % |", "|---|--:|---|--:|--:|---|"]
        for b in r["boards"]:
            ratio = f"{b['ratio_alone_vs_direct']:.2f}x" if b["ratio_alone_vs_direct"] else "-"
            lines.append(f"| {b['board']} | {ms(b['alone_p50_ms'])} | {', '.join(ms(x) for x in b['alone_p50s_ms'])} | {ratio} | "
                         f"{ms(b['together_p50_ms'])} | {b['goal_within_10pct']} |")
        lines += ["", "The three boards are Ray nodes on this one machine (simulated boards): measured alone for the goal; at once "
                  "they share its cores."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval")
    e.add_argument("artifact")
    e.add_argument("--images", type=int, default=2000)
    e.add_argument("--data", type=Path)
    e.add_argument("--repeats", type=int, default=3, help="alternating passes (plain, 1 worker, 2 workers)")
    f = sub.add_parser("fleet")
    f.add_argument("bundle")
    f.add_argument("--iterations", type=int, default=200)
    f.add_argument("--rounds", type=int, default=2)
    f.add_argument("--repeats", type=int, default=3, help="passes over the boards, each board run after a direct run")
    for p in (e, f):
        p.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster"))
        p.add_argument("--no-wait", action="store_true", help="start at once, however busy the machine (the record then says so)")
    args = ap.parse_args()
    rec = Record()
    if not args.no_wait:
        rec.wait_for_quiet()  # up to 10 min for a quiet machine (the load rule; inside make bench, the others idle)
    if args.what == "eval":
        record = eval_goals(args, rec)  # a round per run
    else:
        with rec.round(args.what):  # the CPU's name and ISA flags, and whether anything else ran meanwhile
            record = fleet_goals(args)
    record["record"] = rec.as_dict()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cluster_goals_{args.what}.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / f"cluster_goals_{args.what}.md").write_text(markdown(args.what, record) + "\n" + "\n".join(rec.header()) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
