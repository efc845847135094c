"""INT8 against its peers on the same photos and FP32 model: ours, ONNX Runtime's ``quantize_static`` defaults, NNCF's
``nncf.quantize`` defaults (issue 39).

    python benchmarks/int8_peers.py --model demo.onnx [--calib DIR] [--held-crops 300] [--out benchmarks/results/int8-peers]

``--model``: the FP32 ONNX of a net trained on the demo classes (without it the demo net is trained here first, 200 steps
at 64 px, as the tests do). ``--calib``: the calibration photos every quantizer gets (default: the first six bundled
photos, the issue's folder). Every quantizer calibrates on crops of those photos; each INT8 model is then compared with
FP32 on ``--held-crops`` crops of the *other* bundled photos, which no quantizer saw: top-1 agreement, mean cosine, and
the batch-1 p50 on this CPU (ONNX Runtime for the Q/DQ models, OpenVINO for NNCF's IR). Recorded with the CPU's model
and ISA flags and the load before and after: the figures move with the CPU and the load.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record  # noqa: E402

HELD_CROPS = 300
CALIB_SAMPLES = 100  # crops of the calibration photos every peer calibrates on (ours draws its own 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="FP32 ONNX of a demo-trained net (default: train one here)")
    parser.add_argument("--calib", type=Path, help="calibration photos (default: the first six bundled photos)")
    parser.add_argument("--held-crops", type=int, default=HELD_CROPS)
    parser.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES)
    parser.add_argument("--iterations", type=int, default=30, help="timed batch-1 inferences per model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8-peers")
    args = parser.parse_args(argv)
    command = "python benchmarks/int8_peers.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    doc = run(args.model, args.calib, args.held_crops, args.calib_samples, args.iterations)
    doc["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    from edge_inception.report import Rendered, write_report

    write_report(Rendered(doc, markdown(doc)), json=args.out / "results.json", markdown=args.out / "results.md")
    print(markdown(doc))
    return 0


def run(model: Path | None, calib: Path | None, held_crops: int, calib_samples: int, iterations: int, *,
        ours: dict[str, Any] | None = None) -> dict[str, Any]:
    """The comparison; returns the document written as results.json. ``ours``: extra options for our quantize_model (the
    test's tiny run: one calibration method, a low criterion)."""
    from edge_inception.convert.calibration import crops, image_batches
    from edge_inception.data.images import bundled_photos, find_images
    from edge_inception.evaluate.cpu import cpu_info
    from edge_inception.onnx_file import load_onnx, model_facts

    load_before = os.getloadavg()
    rec = Record()
    t0 = time.monotonic()
    bundled = bundled_photos()
    with tempfile.TemporaryDirectory(prefix="edge-inception-peers-") as tmp:
        work = Path(tmp)
        if calib is None:
            calib = work / "six"
            calib.mkdir()
            for p in bundled[:6]:
                shutil.copyfile(p, calib / p.name)
        photos = sorted(find_images([calib]).images)
        seen = {p.read_bytes() for p in photos}
        others = [p for p in bundled if p.read_bytes() not in seen]  # by content: no quantizer saw these
        if not others:
            raise SystemExit("error: every bundled photo is among the calibration photos; nothing is held out")
        model = model or train_demo_net(work)
        size = model_facts(load_onnx(model), str(model)).image_size
        held = crops(others, 0.0, 1.0, -(-held_crops // len(others)), random.Random(1))[:held_crops]
        held_batches = image_batches(held, size)
        calib_batches = image_batches(crops(photos, 0.0, 1.0, -(-calib_samples // len(photos)), random.Random(0))[:calib_samples], size, batch=1)
        reference = _ort_logits(model, held_batches)
        rows = [_row("fp32 (ONNX Runtime)", reference, reference, _ort_p50(model, size, iterations), 0.0)]
        for name, make in (("ours: quantize --precision int8", lambda: _ours(model, calib, work, ours or {})),
                           ("ONNX Runtime quantize_static defaults (QDQ, per-channel, min-max)", lambda: _ort_defaults(model, calib_batches, work)),
                           ("NNCF nncf.quantize defaults (OpenVINO IR)", lambda: _nncf(model, calib_batches, work))):
            started = time.monotonic()
            try:
                path, extra = make()
            except Exception as exc:  # a peer that cannot run here is recorded, not fatal
                rows.append({"quantizer": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            seconds = time.monotonic() - started
            with rec.round(name):
                if path.suffix == ".xml":
                    got, p50 = _ov_logits(path, held_batches), _ov_p50(path, size, iterations)
                else:
                    got, p50 = _ort_logits(path, held_batches), _ort_p50(path, size, iterations)
            rows.append({**_row(name, reference, got, p50, seconds), **extra})
        cpu = cpu_info()
        return {
            "cpu": cpu.model, "isa": cpu.simd, "vnni": cpu.vnni, "cores": cpu.cores, "load_before": load_before, "load_after": os.getloadavg(),
            "minutes": round((time.monotonic() - t0) / 60, 1), "calibration_photos": [p.name for p in photos],
            "held_photos": [p.name for p in others], "held_crops": len(held), "image_size": size, "rows": rows,
            "best_peer": max((r["agreement"] for r in rows[2:] if "agreement" in r), default=None),
            "ours": rows[1].get("agreement"), "record": rec.as_dict(), "record_header": rec.header(),
        }


def _row(name: str, reference, got, p50: float, seconds: float) -> dict[str, Any]:
    import numpy as np

    cos = (reference * got).sum(1) / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    return {"quantizer": name, "agreement": float((reference.argmax(1) == got.argmax(1)).mean()), "mean_cosine": float(cos.mean()),
            "p50_ms": p50, "seconds": round(seconds, 1)}


def _ours(model: Path, calib: Path, work: Path, options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    from edge_inception.convert.quantize import quantize_model

    r = quantize_model(model, "int8", calib=calib, output=work / "ours.int8.onnx", **{"criterion": "agreement", **options})
    return r.path, {"claim": r.claim, "method": r.calibration_method, "kept_float": r.kept_float, "photo_use": r.photo_use,
                    "bias_correction": r.bias_correction, "own_verdict": r.verdicts[0]["explanation"]}


def _ort_defaults(model: Path, calib_batches: list, work: Path) -> tuple[Path, dict[str, Any]]:
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge_inception.convert.calibration import CalibrationReader
    from edge_inception.onnx_file import load_onnx

    prepared = work / "ort.prepared.onnx"
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    out = work / "ort-defaults.int8.onnx"
    reader = CalibrationReader(load_onnx(model, with_weights=False).graph.input[0].name, calib_batches)
    quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True)
    return out, {}


def _nncf(model: Path, calib_batches: list, work: Path) -> tuple[Path, dict[str, Any]]:
    import nncf
    import openvino as ov

    ov_model = ov.convert_model(str(model))
    quantized = nncf.quantize(ov_model, nncf.Dataset(calib_batches), subset_size=len(calib_batches))
    out = work / "nncf.int8.xml"
    ov.save_model(quantized, str(out))
    return out, {"nncf": nncf.__version__}


def _ort_logits(path: Path, batches: list):
    import numpy as np

    from edge_inception.onnx_file import ort_session, run_session

    session = ort_session(path)
    return np.concatenate([run_session(session, b) for b in batches])


def _ov_logits(path: Path, batches: list):
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    return np.concatenate([compiled(b)[0] for b in batches])


def _ort_p50(path: Path, size: int, iterations: int) -> float:
    import numpy as np

    from edge_inception.evaluate.bench_worker import time_inferences
    from edge_inception.onnx_file import ort_session, run_session

    session = ort_session(path)
    x = np.zeros((1, 3, size, size), np.float32)
    return float(np.median(time_inferences(lambda: run_session(session, x), warmup=3, iterations=iterations)))


def _ov_p50(path: Path, size: int, iterations: int) -> float:
    import numpy as np
    import openvino as ov

    from edge_inception.evaluate.bench_worker import time_inferences

    compiled = ov.Core().compile_model(str(path), "CPU")
    x = np.zeros((1, 3, size, size), np.float32)
    return float(np.median(time_inferences(lambda: compiled(x), warmup=3, iterations=iterations)))


def train_demo_net(work: Path) -> Path:
    import torch

    from edge_inception.convert.export import export_model
    from edge_inception.data.demo_data import make_demo_dataset
    from edge_inception.model.train import TrainConfig, train

    torch.set_num_threads(2)
    demo = make_demo_dataset(work / "demo")
    result = train(TrainConfig(data=demo / "train", val=demo / "val", output=work / "demo.pth", max_steps=200, batch_size=16,
                               image_size=64, lr=0.03))
    if result.checkpoint is None:
        raise SystemExit("error: training wrote no checkpoint")
    return export_model(result.checkpoint, work / "demo.onnx").path


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# INT8 against its peers ({doc['cpu']}, {doc['cores']} cores; {', '.join(doc['isa'])})", "",
             f"`{doc.get('command', '')}`", "",
             f"Calibration photos: {', '.join(doc['calibration_photos'])}. Judged on {doc['held_crops']} crops of the other "
             f"{len(doc['held_photos'])} bundled photos at {doc['image_size']} px. Load (1/5/15 min) before "
             f"{tuple(round(x, 2) for x in doc['load_before'])}, after {tuple(round(x, 2) for x in doc['load_after'])}: "
             f"p50s are under that load. {doc['minutes']} min.", "", *doc.get("record_header", []), "",
             "| quantizer | top-1 agreement with FP32 (held-out photos) | mean cosine | p50 ms, batch 1 | seconds to quantize | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['quantizer']} | - | - | - | - | {r['error']} |")
            continue
        note = "; ".join(f"{k}: {v}" for k, v in r.items() if k in ("claim", "method", "kept_float", "bias_correction", "nncf") and v)
        lines.append(f"| {r['quantizer']} | {r['agreement']:.1%} | {r['mean_cosine']:.5f} | {r['p50_ms']:.2f} | {r['seconds']} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
