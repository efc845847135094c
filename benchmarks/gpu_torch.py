"""GoogLeNet in PyTorch on a CUDA GPU: latency, throughput and FP16 fidelity of the model file itself.

    python benchmarks/gpu_torch.py [--out benchmarks/results/gpu] [--batch 1,8,32,128] [--iterations 100]
                                   [--weights CKPT --inputs TENSORS.pt]

Needs only torch with CUDA (no onnx, onnxruntime or TensorRT), so it runs on a bare GPU machine. It times the
eager model (seeded weights: timings do not depend on weight values) in FP32 and FP16 (``.half()``), NCHW and
channels-last, and FP16 channels-last replayed from a CUDA graph (no per-kernel launch cost from Python).
Fidelity: FP16 logits against FP32 of the checkpoint given with --weights on the preprocessed images saved in
--inputs (a tensor file; without them, seeded weights on smooth random fields, where agreement is trivial).
Writes gpu.json and gpu.md (with the exact command) into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _inputs(batch: int, size: int, seed: int):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 3, size // 16, size // 16, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 1.5  # normalised-image scale


def _time(model, x, iterations: int, warmup: int = 20) -> dict[str, float]:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    return {"p50": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "mean": statistics.fmean(times)}


def _graphed(model, x):
    """The model captured once into a CUDA graph; calling it replays the graph on the captured input."""
    import torch

    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_y = model(static_x)

    def replay(_x):
        graph.replay()
        return static_y

    return replay


def main(argv: list[str] | None = None) -> int:
    import torch

    from edge_inception.model.googlenet import GoogLeNet, init_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu")
    parser.add_argument("--batch", default="1,8,32,128")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", type=Path, help="checkpoint for the FP16 fidelity check")
    parser.add_argument("--inputs", type=Path, help="preprocessed images (N x 3 x H x W tensor file) for the fidelity check")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1

    torch.backends.cudnn.benchmark = True
    fp32 = init_weights(GoogLeNet("torchvision", 1000, aux_logits=False), seed=1).eval().cuda()
    variants = {
        "fp32": (fp32, torch.float32, torch.contiguous_format),
        "fp32-channels-last": (init_weights(GoogLeNet("torchvision", 1000, aux_logits=False), seed=1).eval().cuda()
                               .to(memory_format=torch.channels_last), torch.float32, torch.channels_last),
        "fp16": (init_weights(GoogLeNet("torchvision", 1000, aux_logits=False), seed=1).eval().cuda().half(), torch.float16,
                 torch.contiguous_format),
        "fp16-channels-last": (init_weights(GoogLeNet("torchvision", 1000, aux_logits=False), seed=1).eval().cuda().half()
                               .to(memory_format=torch.channels_last), torch.float16, torch.channels_last),
    }
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        x = _inputs(batch, args.size, seed=batch).cuda()
        for name, (model, dtype, fmt) in variants.items():
            t = _time(model, x.to(dtype=dtype, memory_format=fmt), args.iterations)
            rows.append({"engine": f"torch-cuda-{name}", "batch": batch, "latency_ms": t,
                         "throughput_ips": batch * 1000.0 / t["p50"]})
            print(f"batch {batch:4d} {name:20s} p50 {t['p50']:7.3f} ms  {batch * 1000.0 / t['p50']:9.0f} img/s", flush=True)
        model, dtype, fmt = variants["fp16-channels-last"]
        xg = x.to(dtype=dtype, memory_format=fmt)
        t = _time(_graphed(model, xg), xg, args.iterations)
        rows.append({"engine": "torch-cuda-fp16-channels-last-cudagraph", "batch": batch, "latency_ms": t,
                     "throughput_ips": batch * 1000.0 / t["p50"]})
        print(f"batch {batch:4d} fp16-cl-cudagraph    p50 {t['p50']:7.3f} ms  {batch * 1000.0 / t['p50']:9.0f} img/s", flush=True)

    # FP16 fidelity against FP32
    if args.weights and args.inputs:
        from edge_inception.model.checkpoints import load_model

        ref_model = load_model(args.weights).model.eval().cuda()
        half_model = load_model(args.weights).model.eval().cuda().half()
        x = torch.load(args.inputs, weights_only=True).cuda()
        source = f"{args.weights.name} on {len(x)} preprocessed images from {args.inputs.name}"
    else:
        ref_model, half_model = fp32, variants["fp16"][0]
        x = _inputs(256, args.size, seed=0).cuda()
        source = "seeded weights on smooth random fields (agreement is trivial: seeded weights favour one class)"
    with torch.inference_mode():
        ref = ref_model(x).float()
        half = half_model(x.half()).float()
    cos = torch.nn.functional.cosine_similarity(ref, half, dim=1)
    fidelity = {"source": source, "images": len(x), "top1_agreement": float((ref.argmax(1) == half.argmax(1)).float().mean()),
                "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "max_abs_error": float((ref - half).abs().max())}
    print("fp16 vs fp32:", fidelity)

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
        "image_size": args.size, "iterations": args.iterations, "results": rows, "fp16_fidelity": fidelity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# GoogLeNet, PyTorch eager on {report['device']}", "",
             f"`{report['command']}` — torch {report['torch']}, CUDA {report['cuda']}, cuDNN {report['cudnn']}, {args.size} px, "
             f"{args.iterations} timed runs after 20 warm-up (CUDA events).", "",
             "| engine | batch | p50 ms | p90 ms | images/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['batch']} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p90']:.3f} | {r['throughput_ips']:.0f} |"
              for r in rows]
    lines += ["", f"FP16 vs FP32 ({fidelity['source']}): top-1 agreement {fidelity['top1_agreement']:.2%}, "
                  f"mean cosine {fidelity['mean_cosine']:.6f}, min cosine {fidelity['min_cosine']:.6f}, "
                  f"max abs logit error {fidelity['max_abs_error']:.4f}.", ""]
    (args.out / "gpu.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
