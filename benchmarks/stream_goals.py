"""Issue 26's goals, measured in one process on this machine: what the user waits for (decode + preprocess +
inference) against the engine alone, and the fast preprocessing's agreement with the reference.

    python benchmarks/stream_goals.py ARTIFACT [--out benchmarks/results/stream] [--agreement-images 300] [--jpegs 24]
                                      [--video-frames 150]

ARTIFACT: the INT8 CPU artifact (``edge-inception build MODEL.int8.onnx --target cpu``) of a classifier whose answers
depend on the picture (a trained one; seeded random weights answer one class for everything).

A. Agreement: >= 300 JPEGs at phone and camera sizes (random crops of scikit-image's bundled photos, upscaled), each
   through ``--preprocess exact`` (the reference transform) and ``fast``: top-1 agreement and logits cosine.
B. A folder of 12-megapixel JPEGs: engine-only images/s at batch 1 (one preprocessed tensor, run repeatedly) against
   end-to-end images/s of ``stream`` on the folder (producer thread, batch 1), ``predict`` (fast, batch 8), and the
   reference path decoded in line (``exact``, as before issue 26).
C. A 1080p H.264 video made here (pans and zooms over the bundled photos, libx264 through PyAV): ``stream`` FPS and
   end-to-end p90 against engine-only FPS.

Writes results.json and results.md into --out with the command, the CPU and the 1-minute load before and after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record  # noqa: E402

PHONE_SIZES = [(4032, 3024), (3024, 4032), (4000, 3000), (3264, 2448), (2448, 3264), (1920, 1080), (1080, 1920), (2048, 1536),
               (1600, 1200), (1280, 960), (1000, 667), (640, 427), (427, 640), (3000, 2000)]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def engine_only(runner, tensor: np.ndarray, seconds: float = 8.0) -> dict:
    """Batch-1 inferences on one preprocessed tensor for ``seconds``: images/s and latency percentiles (ms)."""
    for _ in range(5):
        runner.run(tensor[None])
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        runner.run(tensor[None])
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return {"images_per_s": round(1e3 / a.mean(), 2), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "runs": len(times)}


def make_photos(folder: Path, count: int, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    from PIL import Image

    from edge_inception.data.images import bundled_photos, load_image

    rng = np.random.default_rng(seed)
    photos = [load_image(p) for p in bundled_photos()]
    out = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.45, 1.0)), int(h * rng.uniform(0.45, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = sizes[int(rng.integers(0, len(sizes)))]
        path = folder / f"{i:04d}.jpg"
        im.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch)).save(path, quality=int(rng.integers(82, 96)))
        out.append(path)
    return out


def part_agreement(artifact: str, work: Path, n: int) -> dict:
    from edge_inception.data.images import load_tensor
    from edge_inception.engines.registry import artifact_info, open_runner
    from edge_inception.vocab import PreprocessMode

    size = artifact_info(artifact).image_size
    folder = work / "agreement"
    folder.mkdir()
    paths = make_photos(folder, n, PHONE_SIZES, seed=26)
    with open_runner(artifact) as runner:
        ref, fast = [], []
        for p in paths:
            ref.append(runner.run(load_tensor(p, size, PreprocessMode.exact)[None])[0])
            fast.append(runner.run(load_tensor(p, size, PreprocessMode.fast)[None])[0])
    a, b = np.stack(ref), np.stack(fast)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"images": n, "sizes": "phone/camera sizes 0.27-12.2 MP, random crops of the 14 bundled photos, JPEG q82-95",
            "top1_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 4), "classes_seen": len(set(a.argmax(1).tolist())),
            "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}


def part_jpeg_folder(artifact: str, work: Path, n: int) -> dict:
    from edge_inception.data.images import load_tensor
    from edge_inception.engines.registry import artifact_info, open_runner
    from edge_inception.evaluate.predict import predict
    from edge_inception.stream.run import run_stream
    from edge_inception.vocab import PreprocessMode

    size = artifact_info(artifact).image_size
    folder = work / "jpeg12mp"
    folder.mkdir()
    paths = make_photos(folder, n, [(4000, 3000), (3000, 4000)], seed=12)
    res: dict = {"images": n, "size": "4000 x 3000 (12 MP) JPEG"}
    with open_runner(artifact) as runner:
        res["engine_only_batch1"] = engine_only(runner, load_tensor(paths[0], size))
        t0 = time.perf_counter()
        for p in paths:  # the reference path in line: decode, preprocess, infer (what predict did before)
            runner.run(load_tensor(p, size, PreprocessMode.exact)[None])
        res["exact_inline_images_per_s"] = round(n / (time.perf_counter() - t0), 2)
    s = run_stream(artifact, str(folder))
    res["stream_fast"] = {"images_per_s": round(s.fps, 2), **{k: {"p50": round(v.p50, 1), "p90": round(v.p90, 1)} for k, v in s.stages.items()}}
    run = predict(artifact, [folder], top_k=1)
    res["predict_fast_batch8_images_per_s"] = round(run.images_per_s, 2)
    eng = res["engine_only_batch1"]["images_per_s"]
    res["ratio_stream_vs_engine"] = round(s.fps / eng, 3)
    res["ratio_predict_vs_engine"] = round(run.images_per_s / eng, 3)
    res["ratio_exact_inline_vs_engine"] = round(res["exact_inline_images_per_s"] / eng, 3)
    return res


def part_video(artifact: str, work: Path, frames: int) -> dict:
    from edge_inception.data.images import crop_resize
    from edge_inception.engines.registry import artifact_info, open_runner
    from edge_inception.stream.run import run_stream
    from edge_inception.vocab import PreprocessMode
    from tests.stream_media import make_video, pan_zoom_frames

    size = artifact_info(artifact).image_size
    t0 = time.perf_counter()
    video = make_video(work / "pan_zoom_1080p.mp4", pan_zoom_frames(1920, 1080, frames), fps=30, options={"preset": "veryfast", "crf": "23"})
    made = time.perf_counter() - t0
    from PIL import Image

    first = next(pan_zoom_frames(1920, 1080, 1))
    with open_runner(artifact) as runner:
        eng = engine_only(runner, crop_resize(Image.fromarray(first), None, size))
    s = run_stream(artifact, str(video))
    fast_top1: list[int] = []
    exact_top1: list[int] = []
    run_stream(artifact, str(video), top_k=1, on_frame=lambda r: fast_top1.append(r.top[0][0]))
    run_stream(artifact, str(video), top_k=1, mode=PreprocessMode.exact, on_frame=lambda r: exact_top1.append(r.top[0][0]))
    agree = float(np.mean([a == b for a, b in zip(fast_top1, exact_top1)]))
    return {"top1_agreement_fast_vs_exact": round(agree, 4), "classes_seen": len(set(exact_top1)),
            "video": f"1920 x 1080 H.264 (libx264 veryfast crf 23), {frames} frames at 30 FPS, {video.stat().st_size / 1e6:.1f} MB, "
                     f"encoded in {made:.0f} s", "engine_only_batch1": eng, "stream_fps": round(s.fps, 2), "frames": s.frames,
            "ratio_stream_vs_engine": round(s.fps / eng["images_per_s"], 3),
            "ms": {k: {"p50": round(v.p50, 2), "p90": round(v.p90, 2)} for k, v in s.stages.items()}, "dropped": s.dropped, "corrupt": s.corrupt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stream")
    parser.add_argument("--agreement-images", type=int, default=300)
    parser.add_argument("--jpegs", type=int, default=24)
    parser.add_argument("--video-frames", type=int, default=150)
    parser.add_argument("--parts", default="agreement,jpeg,video")
    parser.add_argument("--update", action="store_true", help="keep the other parts of an existing results.json in --out")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (the record still says how busy it was)")
    args = parser.parse_args(argv)
    rec = Record()
    if not args.no_wait:
        rec.wait_for_quiet()

    from edge_inception.engines.registry import artifact_info
    from edge_inception.evaluate.cpu import cpu_info
    from edge_inception.fileio import write_json_atomic, write_text_atomic

    command = "python benchmarks/stream_goals.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    info = artifact_info(args.artifact)
    report: dict = {"command": command, "artifact": f"{Path(args.artifact).name} ({info.precision}, {info.backend}, {info.image_size} px)",
                    "machine": cpu_info().model, "cores": os.cpu_count(), "parts": {}}
    if args.update and (args.out / "results.json").is_file():
        old = json.loads((args.out / "results.json").read_text())
        report["parts"] = old.get("parts", {})
        report["command"] = f"{old.get('command')}; then {command}"
    parts = {"agreement": lambda w: part_agreement(args.artifact, w, args.agreement_images),
             "jpeg": lambda w: part_jpeg_folder(args.artifact, w, args.jpegs),
             "video": lambda w: part_video(args.artifact, w, args.video_frames)}
    with tempfile.TemporaryDirectory(prefix="stream-goals-") as tmp:
        for name in args.parts.split(","):
            before = load()
            t0 = time.monotonic()
            with rec.round(name):
                result = parts[name](Path(tmp))
            result["load_1min_before"], result["load_1min_after"], result["seconds"] = before, load(), round(time.monotonic() - t0, 1)
            report["parts"][name] = result
            print(name, json.dumps(result), flush=True)
    report["record"] = rec.as_dict()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", report)
    write_text_atomic(args.out / "results.md", markdown(report) + "\n".join(rec.header()) + "\n")
    print(f"wrote {args.out}/results.json and results.md")
    return 0


def markdown(r: dict) -> str:
    lines = ["# Stream and end-to-end goals (issue 26)\n", f"`{r['command']}`\n", f"Artifact: {r['artifact']}; {r['machine']}, "
             f"{r['cores']} cores. Loads are the 1-minute load average before / after each part (the machine was shared).\n"]
    p = r["parts"]
    if "agreement" in p:
        a = p["agreement"]
        lines += ["## A. Fast preprocessing against the reference\n", f"{a['images']} JPEGs ({a['sizes']}): top-1 agreement "
                  f"**{a['top1_agreement']:.2%}** (goal >= 99.5 %), logits cosine mean {a['cosine_mean']}, min {a['cosine_min']}; "
                  f"{a['classes_seen']} classes among the answers. Load {a['load_1min_before']} / {a['load_1min_after']}.\n"]
    if "jpeg" in p:
        j = p["jpeg"]
        e = j["engine_only_batch1"]
        lines += ["## B. A folder of 12 MP JPEGs\n", "| path | images/s | x engine-only |", "|---|---|---|",
                  f"| engine only, batch 1 | {e['images_per_s']} | 1 |",
                  f"| `stream` folder (fast, producer thread, batch 1) | {j['stream_fast']['images_per_s']} | **{j['ratio_stream_vs_engine']}** |",
                  f"| `predict` (fast, batch 8) | {j['predict_fast_batch8_images_per_s']} | {j['ratio_predict_vs_engine']} |",
                  f"| reference path in line (exact, before) | {j['exact_inline_images_per_s']} | {j['ratio_exact_inline_vs_engine']} |", "",
                  "stream stage ms (p50 / p90): " + ", ".join(f"{k} {v['p50']} / {v['p90']}" for k, v in j["stream_fast"].items()
                                                                if isinstance(v, dict)),
                  f"\nGoal: end-to-end >= 0.5 x engine-only. Load {j['load_1min_before']} / {j['load_1min_after']}.\n"]
    if "video" in p:
        v = p["video"]
        lines += ["## C. 1080p H.264 video\n", f"{v['video']}: stream **{v['stream_fps']} FPS** against engine-only "
                  f"{v['engine_only_batch1']['images_per_s']} images/s at batch 1 = **{v['ratio_stream_vs_engine']} x** (goal >= 0.8 x); "
                  f"{v['frames']} frames, dropped {v['dropped']}, corrupt {v['corrupt']}. Top-1 of the fast path (full-size RGB, only the crop "
                  f"resampled) against the reference (the whole frame resized): {v['top1_agreement_fast_vs_exact']:.2%} "
                  f"({v['classes_seen']} classes among the answers).\n",
                  "stage ms (p50 / p90): " + ", ".join(f"{k} {s['p50']} / {s['p90']}" for k, s in v["ms"].items()),
                  f"\nLoad {v['load_1min_before']} / {v['load_1min_after']}.\n"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
