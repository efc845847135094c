"""The CPU benchmark suite: build FP32, FP16 and INT8 from scratch and measure them against the baselines, on a quiet
machine, with the load of every round on record.

    python benchmarks/run_suite.py [--weights FILE | --fp32 FP32.onnx [--int8 INT8.onnx]] [--demo-checkpoint DEMO.pth]
                                   [--out benchmarks/results] [--iterations 30] [--rounds 3] [--batch 1,8]

Three parts, each engine in its own process, rounds interleaved:

A. GoogLeNet at 224 px (seeded weights unless --weights: timings do not depend on the weight values): ONNX Runtime
   FP32/FP16/INT8 (seeded: min-max calibration on the bundled photos) and OpenVINO on the same INT8 model, against PyTorch eager
   and a plain ONNX Runtime session.
B. The demo net, briefly trained on the bundled photos' crops (64 px, 10 classes): its INT8 as the guard ships it
   (judged by accuracy on labelled held-out crops), against FP32.
C. The pipeline on that trained net with a folder of six photos as the user's calibration set: what it ships.

Inputs made elsewhere (`make bench`'s prepare step makes them once for every script that takes them):
--fp32 FP32.onnx: part A's GoogLeNet (224 px, FP32) instead of exporting one here; FP16 is still made here from it.
--int8 INT8.onnx: with --fp32, its INT8 model instead of quantizing one here (its calibration is what its
   ``.report.json`` beside it says, recorded as googlenet_224_int8; `make bench` gives the one it also gives
   bench_agreement.py and serve_goals.py, min-max on 100 crops of the bundled photos).
--demo-checkpoint DEMO.pth: the demo net already trained on the demo data (`edge-inception train --data demo/train
   --val demo/val --image-size 64`; its sidecar DEMO.json lists the demo's classes) instead of training one here; parts
   B and C still export and quantize it. Its validation accuracy (demo_net_val_accuracy) is the sidecar's, else null.
Each is checked before anything is made (missing, not ONNX or not a checkpoint, FP32/INT8 of different nets, another
input size, another set of classes: one line, exit 1); --int8 without --fp32, or --fp32 with --weights, is a usage error.
results.json says where each model came from (googlenet_224_source, demo_net_source) besides the command.

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
    parser.add_argument("--weights", type=Path, help="part A: GoogLeNet checkpoint to export (default: seeded weights)")
    parser.add_argument("--fp32", type=Path, help="part A: GoogLeNet FP32 ONNX at 224 px, instead of exporting one here")
    parser.add_argument("--int8", type=Path, help="with --fp32: its INT8 ONNX, instead of quantizing it here")
    parser.add_argument("--demo-checkpoint", type=Path, help="parts B and C: the demo net trained on the demo data, instead of training it here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--rerun-disturbed", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=0.5, help="wait (up to 10 min) for the 1-minute load average to fall below this")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (the record still says how busy it was)")
    args = parser.parse_args(argv)
    if args.int8 is not None and args.fp32 is None:
        parser.error("--int8 needs --fp32, the FP32 model it was quantized from")
    if args.fp32 is not None and args.weights is not None:
        parser.error("--fp32 and --weights: give one (--weights is exported here; --fp32 is already exported)")
    check_inputs(args.fp32, args.int8, args.demo_checkpoint)  # before waiting for quiet or making anything

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
        # A: GoogLeNet at 224 px (--fp32/--int8: made by the caller, make bench's prepare step)
        fp32 = args.fp32 or export_model(args.weights, work / "googlenet.fp32.onnx").path
        fp16 = quantize_model(fp32, "fp16", output=work / "googlenet.fp16.onnx").path
        # the seeded net: min-max calibration, the method bench_agreement.py and serve_goals.py use (its timings do not depend on the
        # method, and trying every method, ``auto``, took 143 of this script's 456 s on an AVX2-only EPYC: ONNX Runtime's
        # histogram calibrators); --weights and the trained demo net below: every method, as the product does by default
        if args.int8 is not None:
            int8_path, int8_record = args.int8, _quant_file(args.int8)
        else:
            made = quantize_model(fp32, "int8", output=work / "googlenet.int8.onnx", calib_method="auto" if args.weights else "minmax")
            int8_path, int8_record = made.path, _quant(made.as_dict())
        # named by precision, whatever the given files are called (two of them may share a name)
        artifacts = [build(p, "cpu", output_dir=work / "cpu", name=f"googlenet.{prec}").artifact
                     for prec, p in (("fp32", fp32), ("fp16", fp16), ("int8", int8_path))]
        artifacts.append(build(int8_path, "cpu", backend="openvino", output_dir=work / "ov", name="googlenet.int8").artifact)
        part_a = run_bench([str(a) for a in artifacts], cfg)

        # B: the demo net (trained here, or --demo-checkpoint) and its INT8 as the guard ships it
        demo = make_demo_dataset(work / "demo")
        checkpoint: Path | None
        val_accuracy: float | None
        if args.demo_checkpoint is not None:
            checkpoint, val_accuracy = args.demo_checkpoint, _sidecar_accuracy(args.demo_checkpoint)
        else:
            trained = train(TrainConfig(data=demo / "train", val=demo / "val", output=work / "demo.pth", max_steps=200, batch_size=16,
                                        image_size=64, lr=0.03))
            checkpoint, val_accuracy = trained.checkpoint, trained.best_val_acc
        demo_fp32 = export_model(checkpoint, work / "demo.fp32.onnx").path
        demo_int8 = quantize_model(demo_fp32, "int8", output=work / "demo.int8.onnx", calib=demo / "train")
        demo_artifacts = [build(p, "cpu", output_dir=work / "demo-cpu").artifact for p in (demo_fp32, demo_int8.path)]
        part_b = run_bench([str(a) for a in demo_artifacts], BenchConfig(batches=(1,), iterations=args.iterations * 3, rounds=args.rounds,
                                                                         rerun_disturbed=args.rerun_disturbed))

        # C: the pipeline on the trained net, six photos as the user's calibration folder
        photos = work / "my-photos"
        photos.mkdir()
        for p in bundled_photos()[:6]:
            (photos / p.name).write_bytes(p.read_bytes())
        pipeline = run_pipeline(PipelineConfig(output=work / "pipeline", weights=checkpoint, calib=photos, bench_iterations=args.iterations,
                                               bench_rounds=args.rounds))
        pipeline_bench = work / "pipeline" / "bench.json"
        rec.add_rounds("C pipeline", json.loads(pipeline_bench.read_text()).get("rounds", []) if pipeline_bench.is_file() else [])
    rec.add_rounds("A googlenet 224", part_a.rounds)
    rec.add_rounds("B demo net 64", part_b.rounds)

    g_source, d_source = googlenet_source(args), demo_source(args)
    data = {"command": command, "seconds": round(time.monotonic() - t0, 1), "load_at_start": start_load, "waited_for_quiet_s": waited,
            "googlenet_224_source": g_source, "demo_net_source": d_source,
            "googlenet_224": part_a.as_dict(), "googlenet_224_int8": int8_record,
            "demo_net_64": part_b.as_dict(), "demo_net_int8": _quant(demo_int8.as_dict()), "demo_net_val_accuracy": val_accuracy,
            "pipeline": {"ship": pipeline.report["ship"], "latency_p50_ms_batch1": pipeline.report["latency_p50_ms_batch1"],
                         "quantization": pipeline.report["quantization"], "calibration_folder": "six bundled photos (scikit-image)"},
            "record": rec.as_dict()}
    header = (f"Command: `{command}` ({data['seconds']:.0f} s; 1-minute load average {start_load:.2f} at the start"
              + (f", after waiting {waited:.0f} s for quiet" if waited else "") + ")\n\n" + "\n".join(rec.header()) + "\n"
              + f"- GoogLeNet 224 px: FP32 {g_source['fp32']}; INT8 {g_source['int8']}\n- demo net: {d_source}\n")
    write_report(Rendered(data, "# CPU benchmark suite\n\n" + header + "\n## A. GoogLeNet, 224 px\n\n" + markdown(part_a, title=False)
                          + "\n## B. The trained demo net, 64 px\n\n" + markdown(part_b, title=False), part_a.as_figure()),
                 json=args.out / "results.json", markdown=args.out / "results.md", png=args.out / "results.png")
    write_report(Rendered(None, goals(data, rec) + "\n" + header), markdown=args.out / "goals.md")
    print((args.out / "goals.md").read_text())
    return 0


QUANT_FIELDS = ("criterion", "calibration_method", "calibration_trials", "calibration_source", "holdout_source", "kept_float",
                "float_weights", "latency_ms", "warnings", "accuracy")


def _quant(d: dict) -> dict:
    """What the results keep of a quantization (:meth:`QuantizeResult.as_dict`, or the ``.report.json`` quantize writes)."""
    return {k: d.get(k) for k in QUANT_FIELDS}


def _quant_file(int8: Path) -> dict:
    """An INT8 model made elsewhere: what the quantize report beside it (``<model>.report.json``) says, else what its own
    metadata says (the calibration method, the stages kept float)."""
    from edge_inception.errors import EdgeInceptionError
    from edge_inception.fileio import read_json
    from edge_inception.onnx_file import get_metadata, load_onnx

    report = int8.with_suffix(".report.json")
    if report.is_file():
        try:
            doc = read_json(report, 64 << 20, "quantize report")
        except EdgeInceptionError:
            doc = None
        if isinstance(doc, dict):
            return {**_quant(doc), "model": str(int8), "from": str(report)}
    meta = get_metadata(load_onnx(int8, with_weights=False))
    return {**{k: meta.get(k) for k in QUANT_FIELDS}, "model": str(int8), "from": f"{int8}'s metadata (no quantize report beside it)"}


def _sidecar_accuracy(checkpoint: Path) -> float | None:
    """The validation accuracy the training sidecar beside ``checkpoint`` recorded (``edge-inception train`` writes it
    with the checkpoint it keeps), else None."""
    from edge_inception.model.checkpoints import read_sidecar

    value = read_sidecar(checkpoint).get("val_accuracy")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def googlenet_source(args: argparse.Namespace) -> dict[str, str]:
    """Where part A's models came from."""
    if args.fp32 is None:
        fp32 = f"exported here from {args.weights}" if args.weights else "exported here (seeded weights)"
    else:
        fp32 = f"given: --fp32 {args.fp32}"
    if args.int8 is not None:
        int8 = f"given: --int8 {args.int8}"
    else:
        int8 = "quantized here from it (" + ("every calibration method" if args.weights else "min-max") + ", 100 crops of the bundled photos)"
    return {"fp32": fp32, "int8": int8}


def demo_source(args: argparse.Namespace) -> str:
    """Where parts B and C's demo net came from."""
    if args.demo_checkpoint is None:
        return "trained here: 200 steps at 64 px, batch 16, lr 0.03, on the demo data's train/ (validated on val/)"
    from edge_inception.model.checkpoints import read_sidecar

    side = read_sidecar(args.demo_checkpoint)
    steps = f"{side['steps']} steps" if isinstance(side.get("steps"), int) else "steps not recorded"
    return f"given: --demo-checkpoint {args.demo_checkpoint} ({steps} at {side.get('image_size', '?')} px, per its sidecar)"


def check_inputs(fp32: Path | None, int8: Path | None, demo_checkpoint: Path | None) -> None:
    """--fp32/--int8 (bench_agreement.py's checks: an FP32 classifier and an INT8 one of it) of GoogLeNet at 224 px, and
    --demo-checkpoint a GoogLeNet checkpoint of the demo's classes, with the product's own checks. Raises
    EdgeInceptionError (run_main prints it as one line, exit 1)."""
    from bench_agreement import check_models, named

    from edge_inception.errors import EdgeInceptionError

    facts = check_models(fp32, int8, model_option="--fp32")
    if facts is not None and facts.image_size != 224:
        raise EdgeInceptionError(f"--fp32 {fp32}: {facts.image_size} px; part A measures GoogLeNet at 224 px")
    if demo_checkpoint is not None:
        from edge_inception.data.demo_data import DEMO_CLASSES
        from edge_inception.model.checkpoints import load_model

        # missing, not a checkpoint, not GoogLeNet, a malformed sidecar: refused
        loaded = named("--demo-checkpoint", lambda: load_model(demo_checkpoint))
        if loaded.class_names != sorted(DEMO_CLASSES):
            raise EdgeInceptionError(f"--demo-checkpoint {demo_checkpoint}: not trained on the demo data (its classes "
                                     f"{', '.join(loaded.class_names[:4])}{', ...' if loaded.num_classes > 4 else ''}; "
                                     f"the demo's {', '.join(sorted(DEMO_CLASSES))}; its sidecar .json lists them)")
        if loaded.image_size != 64:
            raise EdgeInceptionError(f"--demo-checkpoint {demo_checkpoint}: trained at {loaded.image_size} px; parts B and C measure the "
                                     "demo net at 64 px")


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
