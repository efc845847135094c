"""Build the standard CPU set (FP32, FP16, INT8) from scratch and benchmark it against the baselines.

    python benchmarks/run_suite.py [--weights FILE] [--out benchmarks/results] [--iterations 50] [--rounds 5]

Writes results.json, results.md, results.png and goals.md (where each performance goal of the benchmark issue
stands) into --out, together with the exact command that produced them. Runs on seeded weights unless
--weights is given: timings do not depend on the weight values, agreement figures are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", default="1,8")
    args = parser.parse_args(argv)

    from edge_inception.convert.export import export_model
    from edge_inception.convert.quantize import quantize_model
    from edge_inception.engines.build import build
    from edge_inception.evaluate.bench import BenchConfig, markdown, plot, run_bench
    from edge_inception.fileio import write_json_atomic, write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-inception-suite-") as tmp:
        work = Path(tmp)
        fp32 = export_model(args.weights, work / "googlenet.fp32.onnx").path
        fp16 = quantize_model(fp32, "fp16", output=work / "googlenet.fp16.onnx").path
        # a speed run: the accuracy guard is not the point here
        int8 = quantize_model(fp32, "int8", output=work / "googlenet.int8.onnx", min_agreement=0.01).path
        artifacts = [build(p, "cpu", output_dir=work / "cpu").artifact for p in (fp32, fp16, int8)]
        artifacts.append(build(int8, "cpu", backend="openvino", output_dir=work / "ov").artifact)
        batches = tuple(int(b) for b in args.batch.split(","))
        report = run_bench([str(a) for a in artifacts], BenchConfig(batches=batches, iterations=args.iterations, rounds=args.rounds))
    data = report.as_dict()
    data["command"] = "python benchmarks/run_suite.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    write_json_atomic(args.out / "results.json", data)
    write_text_atomic(args.out / "results.md", markdown(report) + f"\nCommand: `{data['command']}`\n")
    plot(report, args.out / "results.png")
    write_text_atomic(args.out / "goals.md", goals(data))
    print((args.out / "goals.md").read_text())
    return 0


def goals(report: dict) -> str:
    """Where each performance goal stands (batch 1, p50, measured side by side in this run)."""
    r = {x["engine"]: x for x in report["results"] if x["batch"] == 1}
    p50 = {k: v["latency_ms"]["p50"] for k, v in r.items()}
    candidates = {k: v for k, v in p50.items() if k not in ("torch-eager", "ort-default") and (r[k]["agreement"] or 0) >= 0.99}
    best = min(candidates, key=candidates.get) if candidates else min((k for k in p50 if k not in ("torch-eager", "ort-default")), key=p50.get)
    peak = report["machine"]["matmul_peak_macs_per_s"]
    ov = p50.get("openvino-int8")
    rows = [
        ("best CPU engine <= 0.5 x plain ORT FP32 p50", f"{best}: {p50[best]:.2f} ms vs {p50['ort-default']:.2f} ms = "
         f"{p50[best] / p50['ort-default']:.2f} x", p50[best] <= 0.5 * p50["ort-default"]),
        ("best CPU engine <= 0.15 x PyTorch eager p50", f"{p50[best] / p50['torch-eager']:.2f} x", p50[best] <= 0.15 * p50["torch-eager"]),
        ("ours <= 0.9 x OpenVINO (same INT8 Q/DQ model)", "n/a" if ov is None else f"ort-int8 {p50.get('ort-int8', 0):.2f} ms vs openvino "
         f"{ov:.2f} ms = {p50.get('ort-int8', 0) / ov:.2f} x", ov is not None and p50.get("ort-int8", 1e9) <= 0.9 * ov),
        ("FP32 engine > 70 % of matmul peak", f"{r['ort-fp32']['macs_per_s'] / peak:.0%} of {peak / 1e9:.1f} GMAC/s",
         r["ort-fp32"]["macs_per_s"] > 0.7 * peak),
        ("INT8 MAC/s >= 2 x FP32 MAC/s", f"{r['ort-int8']['macs_per_s'] / r['ort-fp32']['macs_per_s']:.2f} x",
         r["ort-int8"]["macs_per_s"] >= 2 * r["ort-fp32"]["macs_per_s"]),
    ]
    lines = ["# Performance goals (batch 1, p50, one run)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {'yes' if ok else '**no**'} |" for g, m, ok in rows]
    return "\n".join(lines) + "\n\n" + json.dumps({"p50_ms": p50}, indent=1) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
