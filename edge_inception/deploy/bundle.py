"""``edge-inception bundle``: one folder to copy to the device, with what it takes to build the engine there and to
prove it still gives the workstation's answers.

::

    bundle/
      <model>.onnx          the (quantized) ONNX, as built on the workstation
      preprocess.json       input size, resize, mean/std, layout, tensor names, classes: enough to feed it anywhere
      labels.txt            one class name per line
      target.toml           the device preset it was bundled for
      report.json           the accuracy report of quantize, where there is one
      reference/            inputs.npy (real photos, preprocessed), outputs.npy (this ONNX's logits for them, ONNX
                            Runtime on the workstation's CPU), reference.json (what they are, and the tolerance)
      build.sh              `edge-inception build` for the preset, and the equivalent `trtexec` for its TensorRT version
      README.md             the commands on the board
      bundle.json           sha256 of every file

Reference data works as Polygraphy's ``--save-inputs``/``--save-outputs``: ``edge-inception check`` replays it on the
device through any artifact, ours or one ``trtexec`` built.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..convert.onnx_file import load_onnx, model_facts, ort_session, run_session
from ..errors import EdgeInceptionError
from ..fileio import atomic_dir, sha256_file, write_json_atomic, write_text_atomic
from ..vocab import IMAGENET_MEAN, IMAGENET_STD

REFERENCE_IMAGES = 8


@dataclass
class BundleResult:
    folder: Path
    files: list[str]
    build_commands: list[str]


def make_bundle(model: str | Path, target: str, output: str | Path | None = None, *, force: bool = False,
                references: int = REFERENCE_IMAGES) -> BundleResult:
    """Write the bundle folder for ``model`` and ``target`` (atomically: complete, or not at all)."""
    from ..data.images import bundled_photos, load_batch
    from ..engines.targets import get_target
    from ..engines.tensorrt import plan_build, trtexec_command

    src = Path(model)
    onnx_model = load_onnx(src)
    facts = model_facts(onnx_model, str(src))
    tgt = get_target(target)
    tgt.check_precision(facts.precision)
    out = Path(output) if output is not None else src.parent / f"{src.stem}.{tgt.name}.bundle"
    if not 1 <= references <= 64:
        raise EdgeInceptionError(f"--references must be in [1, 64], got {references}")
    meta = facts.metadata
    input_name = onnx_model.graph.input[0].name
    output_name = onnx_model.graph.output[0].name
    photos = bundled_photos()
    picks = [photos[i % len(photos)] for i in range(references)]
    inputs = load_batch(picks, facts.image_size)
    session = ort_session(src)
    outputs = np.concatenate([run_session(session, inputs[i : i + 1]) for i in range(len(inputs))])
    import onnxruntime

    with atomic_dir(out, replace=force) as work:
        shutil.copyfile(src, work / src.name)
        report = src.with_suffix(".report.json")
        if report.is_file():
            shutil.copyfile(report, work / "report.json")
        write_json_atomic(work / "preprocess.json", {
            "image_size": facts.image_size, "resize_shorter_side_to": round(facts.image_size * 256 / 224), "crop": "centre",
            "color": "RGB", "layout": "NCHW", "dtype": "float32", "scale": "1/255",
            "mean": json.loads(meta["mean"]) if "mean" in meta else list(IMAGENET_MEAN),
            "std": json.loads(meta["std"]) if "std" in meta else list(IMAGENET_STD),
            "transform_input": "inside the graph" if meta.get("transform_input") == "true" else "none",
            "input_name": input_name, "output_name": output_name, "num_classes": facts.num_classes, "precision": facts.precision,
        })
        write_text_atomic(work / "labels.txt", "\n".join(facts.class_names) + "\n")
        write_text_atomic(work / "target.toml", Path(tgt.source).read_text(encoding="utf-8") if tgt.source and Path(tgt.source).is_file()
                          else f'name = "{tgt.name}"\n')
        ref = work / "reference"
        ref.mkdir()
        np.save(ref / "inputs.npy", inputs, allow_pickle=False)
        np.save(ref / "outputs.npy", outputs.astype(np.float32), allow_pickle=False)
        write_json_atomic(ref / "reference.json", {
            "model": src.name, "model_sha256": sha256_file(src), "precision": facts.precision, "images": [p.name for p in picks],
            "inputs": list(inputs.shape), "outputs": list(outputs.shape),
            "produced_by": f"ONNX Runtime {onnxruntime.__version__} on the CPU, edge-inception {__version__}",
            "tolerance": "fp32: max relative error 1e-5 on a CPU, 1e-4 on a GPU; fp16, int8 and TF32: mean cosine of the logits >= 0.99",
        })
        commands = [f"edge-inception build {shlex.quote(src.name)} --target {tgt.name} -o build"]
        trt_line = ""
        if "tensorrt" in tgt.backends and tgt.tensorrt_version:
            plan = plan_build(tgt, facts.precision, tgt.tensorrt_version, facts.image_size, graph_batch=facts.fixed_batch)
            engine = f"build/{src.stem}.engine"
            trt_line = " ".join(shlex.quote(a) for a in trtexec_command(plan, tgt.tensorrt_version, src.name, engine, input_name=input_name,
                                                                       timing_cache="build/timing.cache"))
        write_text_atomic(work / "build.sh", _build_sh(src.name, tgt.name, trt_line))
        (work / "build.sh").chmod(0o755)
        write_text_atomic(work / "README.md", _readme(src.name, tgt, facts.precision, trt_line))
        files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        write_json_atomic(work / "bundle.json", {"edge_inception_version": __version__, "target": tgt.name, "model": src.name,
                                                  "files": {f: sha256_file(work / f) for f in files}})
    return BundleResult(out, [*files, "bundle.json"], [*commands, trt_line] if trt_line else commands)


def _build_sh(model: str, target: str, trtexec: str) -> str:
    lines = ["#!/bin/sh", "# Build the engine for this device, then prove it gives the workstation's answers.", "set -e",
             'cd "$(dirname "$0")"', "mkdir -p build", "",
             "# with edge-inception on the device (pip install edge-inception; no PyTorch needed):",
             f"edge-inception build {shlex.quote(model)} --target {target} -o build",
             "edge-inception check build --reference reference"]
    if trtexec:
        lines += ["", "# or with JetPack's trtexec alone (then let edge-inception adopt the engine once it passes the check):",
                  f"# {trtexec}", f"# edge-inception check build/{Path(model).stem}.engine --reference reference --target {target}"]
    return "\n".join(lines) + "\n"


def _readme(model: str, target, precision: str, trtexec: str) -> str:
    lines = [f"# {model} for {target.name}", "", f"{target.description}; {precision} graph.", "",
             "On the device:", "", "```sh", "pip install edge-inception            # the runtime: no PyTorch, no scikit-image",
             "sh build.sh                           # build, then check against reference/", "```", "",
             "`edge-inception check ARTIFACT --reference reference` replays the saved inputs through the artifact and compares",
             "its logits with the workstation's at the precision's tolerance (see reference/reference.json).", ""]
    if trtexec:
        lines += ["With `trtexec` only (TensorRT " + str(target.tensorrt_version) + "):", "", "```sh", "mkdir -p build", trtexec,
                  "```", "", "then `edge-inception check build/<engine> --reference reference --target " + target.name + "` adopts it:",
                  "it writes the engine's manifest once the comparison passes.", ""]
    lines += ["`preprocess.json` says how to feed the model from your own code; `labels.txt` names its outputs."]
    return "\n".join(lines) + "\n"
