"""Issue 34's preprocessing goal: ``--preprocess fast`` against ``exact``.

    python benchmarks/preprocess_fast_exact.py [ARTIFACT] [--jpegs 48] [--rounds 7] [--out DIR]

A. Cost of exactness on full-size images (no model needed): per format and size, decode + preprocess through the fast
   path (now the reference transform itself) against the crop-only resampling it used before (Pillow's
   ``resize(box=...)``, within one level of the reference), in alternating rounds; medians in ms.
B. With ARTIFACT (a classifier whose answers depend on the picture): fast against exact on ``--jpegs`` JPEG crops of the
   bundled photos at phone and camera sizes (decoded at reduced scale), in colour and the same crops in greyscale:
   top-1 agreement, max |dp| in a class probability, largest input difference. And on the same crops saved as PNG:
   identical tensors (max |dp| 0).

Prints a Markdown table; with --out writes results.json and results.md there with the CPU and the 1-minute load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COST_CASES = [("png", (640, 480)), ("png", (1920, 1080)), ("png", (4000, 3000)), ("bmp", (1920, 1080)), ("bmp", (4000, 3000)),
              ("tif", (1920, 1080)), ("tif", (3000, 4000))]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def part_cost(work: Path, rounds: int) -> list[dict]:
    from PIL import Image

    from edge_inception.data.images import bundled_photos, crop_resize, decode_for, load_image, load_tensor

    photos = bundled_photos()
    rows = []
    for i, (ext, size) in enumerate(COST_CASES):
        path = work / f"cost{i}.{ext}"
        load_image(photos[i % len(photos)]).resize(size, Image.Resampling.BICUBIC).save(path)
        times: dict[str, list[float]] = {"fast (= exact)": [], "crop only (before)": []}
        for _ in range(rounds):  # alternating, so a change in the machine's load hits both alike
            t0 = time.perf_counter()
            load_tensor(path)
            times["fast (= exact)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            image, full = decode_for(path)
            crop_resize(image, full)
            times["crop only (before)"].append(time.perf_counter() - t0)
        med = {k: round(1e3 * float(np.median(v)), 1) for k, v in times.items()}
        rows.append({"format": ext, "size": list(size), **med,
                     "extra_ms": round(med["fast (= exact)"] - med["crop only (before)"], 1), "load": load()})
    return rows


def part_agreement(artifact: str, work: Path, n: int) -> dict:
    from PIL import Image

    from edge_inception.engines.registry import artifact_info, open_runner
    from edge_inception.evaluate.preprocess_agreement import fast_exact_agreement, photo_jpegs

    size = artifact_info(artifact).image_size
    colour = photo_jpegs(work, n)
    grey, png = [], []
    for p in colour:
        with Image.open(p) as im:
            g = p.with_name(p.stem + "-grey.jpg")
            im.convert("L").save(g, quality=90)
            grey.append(g)
            q = p.with_suffix(".png")
            im.save(q)
            png.append(q)
    out = {}
    with open_runner(artifact) as runner:
        for name, paths in (("colour JPEG", colour), ("greyscale JPEG", grey), ("PNG (same crops)", png)):
            out[name] = fast_exact_agreement(runner, paths, size).as_dict() | {"load": load()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", help="a built artifact or ONNX model (part B)")
    ap.add_argument("--jpegs", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    res: dict = {"command": " ".join(sys.argv), "cpu": platform.processor() or platform.machine(), "load_before": load()}
    with tempfile.TemporaryDirectory() as tmp:
        res["cost"] = part_cost(Path(tmp), args.rounds)
        if args.artifact:
            res["agreement"] = part_agreement(args.artifact, Path(tmp), args.jpegs)
    res["load_after"] = load()
    lines = ["| format | size | fast (= exact) ms | crop only (before) ms | cost of exactness ms | load |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['format']} | {r['size'][0]}x{r['size'][1]} | {r['fast (= exact)']} | {r['crop only (before)']} | {r['extra_ms']} | {r['load']} |"
              for r in res["cost"]]
    if "agreement" in res:
        lines += ["", "| images | compared | decoded at reduced scale | top-1 agreement | max abs dp | max abs input | load |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {a['images']} | {a['decoded_at_reduced_scale']} | {a['top1_agreement']:.2%} | {a['max_abs_dp']:.3g} | "
                  f"{a['max_abs_input']:.3g} | {a['load']} |" for k, a in res["agreement"].items()]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "results.md").write_text(f"`{res['command']}` on {res['cpu']}, load {res['load_before']} -> {res['load_after']}\n\n" + md)


if __name__ == "__main__":
    main()
