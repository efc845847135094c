"""The CPU benchmark suite: build FP32, FP16 and INT8 from scratch and measure them against the baselines, on a quiet
machine, with the load of every round on record.

    python benchmarks/run_suite.py [--weights FILE] [--out benchmarks/results] [--iterations 30] [--rounds 3] [--batch 1,8]

Three parts, each engine in its own process, rounds interleaved:

A. GoogLeNet at 224 px (seeded weights unless --weights: timings do not depend on the weight values): ONNX Runtime
   FP32/FP16/INT8 (seeded: min-max calibration on the bundled photos) and OpenVINO on the same INT8 model, against PyTorch eager
   and a plain ONNX Runtime session.
B. The demo net, briefly trained on the bundled photos' crops (64 px, 10 classes): its INT8 as the guard ships it
   (judged by accuracy on labelled held-out crops), against FP32.
C. The pipeline on that trained net with a folder of six photos as the user's calibration set: what it ships.

Writes results.json, results.md, results.png and goals.md into --out, with the command, the CPU's name and ISA flags,
and every round's load (benchmarks/_record.py): a round in which other processes used more than a tenth of a core is
measured again (--rerun-disturbed times); a file whose counted rounds were disturbed says it is not to be quoted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--rerun-disturbed", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=0.5, help="wait (up to 10 min) for the 1-minute load average to fall below this")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (the record still says how busy it was)")
    args = parser.parse_args(argv)

    from edge_inception.convert.export import export_model
    from edge_inception.convert.quantize import quantize_model
    from edge_inception.data.demo_data import make_demo_dataset
    from edge_inception.data.images import bundled_photos
    from edge_inception.engines.build import build
    from edge_inception.evaluate.bench import BenchConfig, markdown, run_bench
    from edge_inception.model.train import TrainConfig, train
    from edge_inception.pipeline import PipelineConfig, run_pipeline
    from edge_inception.report import Rendered, write_report

    rec = Record(max_load=args.max_load)
    waited = 0.0 if args.no_wait else rec.wait_for_quiet()
    start_load = rec.load_at_start or 0.0
    command = "python benchmarks/run_suite.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    batches = tuple(int(b) for b in args.batch.split(","))
    cfg = BenchConfig(batches=batches, iterations=args.iterations, rounds=args.rounds, rerun_disturbed=args.rerun_disturbed)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-inception-suite-") as tmp:
        work = Path(tmp)
        # A: GoogLeNet at 224 px
        fp32 = export_model(args.weights, work / "googlenet.fp32.onnx").path
        fp16 = quantize_model(fp32, "fp16", output=work / "googlenet.fp16.onnx").path
        # the seeded net: min-max calibration, the method bench_agreement.py and serve_goals.py use (its timings do not depend on the
        # method, and trying every method, ``auto``, took 143 of this script's 456 s on an AVX2-only EPYC: ONNX Runtime's
        # histogram calibrators); --weights and the trained demo net below: every method, as the product does by default
        int8 = quantize_model(fp32, "int8", output=work / "googlenet.int8.onnx", calib_method="auto" if args.weights else "minmax")
        artifacts = [build(p, "cpu", output_dir=work / "cpu").artifact for p in (fp32, fp16, int8.path)]
        artifacts.append(build(int8.path, "cpu", backend="openvino", output_dir=work / "ov").artifact)
        part_a = run_bench([str(a) for a in artifacts], cfg)

        # B: the demo net, trained here, and its INT8 as the guard ships it
        demo = make_demo_dataset(work / "demo")
        trained = train(TrainConfig(data=demo / "train", val=demo / "val", output=work / "demo.pth", max_steps=200, batch_size=16,
                                    image_size=64, lr=0.03))
        demo_fp32 = export_model(trained.checkpoint, work / "demo.fp32.onnx").path
        demo_int8 = quantize_model(demo_fp32, "int8", output=work / "demo.int8.onnx", calib=demo / "train")
        demo_artifacts = [build(p, "cpu", output_dir=work / "demo-cpu").artifact for p in (demo_fp32, demo_int8.path)]
        part_b = run_bench([str(a) for a in demo_artifacts], BenchConfig(batches=(1,), iterations=args.iterations * 3, rounds=args.rounds,
                                                                         rerun_disturbed=args.rerun_disturbed))

        # C: the pipeline on the trained net, six photos as the user's calibration folder
        photos = work / "my-photos"
        photos.mkdir()
        for p in bundled_photos()[:6]:
            (photos / p.name).write_bytes(p.read_bytes())
        pipeline = run_pipeline(PipelineConfig(output=work / "pipeline", weights=trained.checkpoint, calib=photos, bench_iterations=args.iterations,
                                               bench_rounds=args.rounds))
        pipeline_bench = work / "pipeline" / "bench.json"
        rec.add_rounds("C pipeline", json.loads(pipeline_bench.read_text()).get("rounds", []) if pipeline_bench.is_file() else [])
    rec.add_rounds("A googlenet 224", part_a.rounds)
    rec.add_rounds("B demo net 64", part_b.rounds)

    data = {"command": command, "seconds": round(time.monotonic() - t0, 1), "load_at_start": start_load, "waited_for_quiet_s": waited,
            "googlenet_224": part_a.as_dict(), "googlenet_224_int8": _quant(int8),
            "demo_net_64": part_b.as_dict(), "demo_net_int8": _quant(demo_int8), "demo_net_val_accuracy": trained.best_val_acc,
            "pipeline": {"ship": pipeline.report["ship"], "latency_p50_ms_batch1": pipeline.report["latency_p50_ms_batch1"],
                         "quantization": pipeline.report["quantization"], "calibration_folder": "six bundled photos (scikit-image)"},
            "record": rec.as_dict()}
    header = (f"Command: `{command}` ({data['seconds']:.0f} s; 1-minute load average {start_load:.2f} at the start"
              + (f", after waiting {waited:.0f} s for quiet" if waited else "") + ")\n\n" + "\n".join(rec.header()) + "\n")
    write_report(Rendered(data, "# CPU benchmark suite\n\n" + header + "\n## A. GoogLeNet, 224 px\n\n" + markdown(part_a, title=False)
                          + "\n## B. The trained demo net, 64 px\n\n" + markdown(part_b, title=False), part_a.as_figure()),
                 json=args.out / "results.json", markdown=args.out / "results.md", png=args.out / "results.png")
    write_report(Rendered(None, goals(data, rec) + "\n" + header), markdown=args.out / "goals.md")
    print((args.out / "goals.md").read_text())
    return 0


def _quant(result) -> dict:
    d = result.as_dict()
    return {k: d[k] for k in ("criterion", "calibration_method", "calibration_trials", "calibration_source", "holdout_source", "kept_float",
                              "float_weights", "latency_ms", "warnings", "accuracy")}


def goals(data: dict, rec: Record) -> str:
    """Where each performance goal stands (batch 1, p50, measured side by side in one run)."""
    a = {x["engine"]: x for x in data["googlenet_224"]["results"] if x["batch"] == 1}
    p50 = {k: v["latency_ms"]["p50"] for k, v in a.items()}
    ours = {k: v for k, v in p50.items() if not a[k]["baseline"] and (a[k]["agreement"] or 0) >= 0.99}
    best = min(ours, key=ours.get) if ours else None
    b = {x["engine"]: x["latency_ms"]["p50"] for x in data["demo_net_64"]["results"]}
    int8_agree = a["ort-int8"]["agreement"] or 0.0
    ship = data["pipeline"]["ship"]
    rows = [
        ("INT8 <= 0.55 x plain ORT FP32, with >= 99 % agreement", f"ort-int8 {p50['ort-int8']:.2f} ms vs ort-default {p50['ort-default']:.2f} ms = "
         f"{p50['ort-int8'] / p50['ort-default']:.2f} x, agreement {int8_agree:.1%}",
         p50["ort-int8"] <= 0.55 * p50["ort-default"] and int8_agree >= 0.99),
        ("best CPU engine <= 0.5 x plain ORT FP32", "none meets 99 % agreement" if best is None else
         f"{best} {p50[best]:.2f} ms = {p50[best] / p50['ort-default']:.2f} x", best is not None and p50[best] <= 0.5 * p50["ort-default"]),
        ("best CPU engine <= 0.15 x PyTorch eager", "-" if best is None or "torch-eager" not in p50 else
         f"{p50[best] / p50['torch-eager']:.2f} x ({p50['torch-eager']:.2f} ms)",
         best is not None and "torch-eager" in p50 and p50[best] <= 0.15 * p50["torch-eager"]),
        ("the trained demo net's guarded INT8 faster than its FP32", f"ort-int8 {b['ort-int8']:.2f} ms vs ort-fp32 {b['ort-fp32']:.2f} ms "
         f"({data['demo_net_int8']['criterion']}; calibration {data['demo_net_int8']['calibration_method']})", b["ort-int8"] < b["ort-fp32"]),
        ("the pipeline ships INT8 for the trained net calibrated on six user photos", f"ships {ship['precision']}: {ship['why']}",
         ship["precision"] == "int8"),
    ]
    lines = ["# Performance goals (batch 1, p50, one run)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {rec.met(ok)} |" for g, m, ok in rows]
    return "\n".join(lines) + "\n\n" + json.dumps({"p50_ms_224": p50, "p50_ms_demo_64": b}, indent=1) + "\n"


if __name__ == "__main__":
    raise SystemExit(run_main(main))
