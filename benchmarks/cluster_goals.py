"""The cluster goals: what Ray costs `eval`, and whether `fleet bench` reports what `bench` measures on the board.

    python benchmarks/cluster_goals.py eval ARTIFACT [--images 2000] [--out benchmarks/results/cluster]
    python benchmarks/cluster_goals.py fleet BUNDLE ARTIFACT --cluster HOST:PORT [--out DIR]   # RAY_AUTH_TOKEN set

eval: plain `eval` vs `eval --cluster local` at 1 and 2 workers on >= 2,000 labelled images (the demo photos cropped
  afresh at 64 px, or --data DIR), each in a fresh process. Recorded: predictions identical (per image top-5), the
  cluster's start-up (seconds to a usable cluster, not in the rate), the steady-state images/s, and the peak resident
  memory of every process of the run (sampled from /proc every 0.2 s).
  Goals: identical predictions; steady state >= 0.8 x plain eval's images/s at the same worker count; start-up <= 30 s.
fleet: `fleet bench BUNDLE` on the cluster's boards vs `bench ARTIFACT` run directly here (ARTIFACT: the bundle built for
  this machine). Goal: per-board p50 within 10 % of direct `bench` (meaningful where the board is this machine).

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
        res = {"images": r.images, "top1": r.top1, "seconds": r.seconds, "startup_s": 0.0, "top": top}
    else:
        from edge_inception.cluster.evaluate import evaluate_on_cluster
        r = evaluate_on_cluster(artifact, data, "local", workers=workers, batch_size=16)
        res = {"images": r.images, "top1": r.top1, "seconds": r.seconds, "startup_s": r.startup_s, "top": r.top}
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
    return res


def eval_goals(args: argparse.Namespace) -> dict[str, Any]:
    from edge_inception.data.demo_data import make_demo_dataset
    from edge_inception.evaluate.cpu import cpu_info

    tmp = Path(tempfile.mkdtemp(prefix="cluster-goals-"))
    data = args.data or make_demo_dataset(tmp / "data", train_per_class=0, val_per_class=max(1, args.images // 10), crop_px=64, seed=3) / "val"
    record: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info().model, "simd": cpu_info().simd, "load_before": load()}
    plain = run_one(args.artifact, data, 0, tmp)
    runs = {}
    for workers in (1, 2):
        runs[workers] = run_one(args.artifact, data, workers, tmp)
    record["load_after"] = load()
    record["plain"] = {k: v for k, v in plain.items() if k != "top"}
    record["cluster"] = {}
    for w, r in runs.items():
        record["cluster"][w] = {**{k: v for k, v in r.items() if k != "top"}, "identical": r["top"] == plain["top"],
                                "ratio_vs_plain": r["images_per_s"] / plain["images_per_s"],
                                "goal_steady_state": r["images_per_s"] >= 0.8 * plain["images_per_s"], "goal_startup": r["startup_s"] <= 30}
    return record


def fleet_goals(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cluster-goals-"))
    record: dict[str, Any] = {"command": " ".join(sys.argv), "load_before": load()}
    cli = [sys.executable, "-m", "edge_inception"]
    subprocess.run([*cli, "bench", args.artifact, "--baseline", "none", "--iterations", "30", "--rounds", "2", "--json", str(tmp / "b.json")],
                   check=True)
    subprocess.run([*cli, "fleet", "bench", args.bundle, "--cluster", args.cluster, "--iterations", "30", "--rounds", "2",
                    "--json", str(tmp / "f.json")], check=True)
    direct = json.loads((tmp / "b.json").read_text())["results"][0]["latency_ms"]["p50"]
    rows = json.loads((tmp / "f.json").read_text())["boards"]
    record["direct_p50_ms"] = direct
    record["boards"] = [{"board": r["board"], "status": r["status"], "p50_ms": (r.get("bench") or [{}])[0].get("latency_ms", {}).get("p50"),
                         "within_10pct": bool(r.get("bench")) and abs(r["bench"][0]["latency_ms"]["p50"] / direct - 1) <= 0.10} for r in rows]
    record["load_after"] = load()
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval")
    e.add_argument("artifact")
    e.add_argument("--images", type=int, default=2000)
    e.add_argument("--data", type=Path)
    f = sub.add_parser("fleet")
    f.add_argument("bundle")
    f.add_argument("artifact")
    f.add_argument("--cluster", required=True)
    for p in (e, f):
        p.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster"))
    args = ap.parse_args()
    rec = Record()
    with rec.round(args.what):  # the CPU's name and ISA flags, and whether anything else ran meanwhile
        record = eval_goals(args) if args.what == "eval" else fleet_goals(args)
    record["record"] = rec.as_dict()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cluster_goals_{args.what}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
