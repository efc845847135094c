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

A bundle proves its own integrity: :func:`verify_bundle` (run by ``check`` and by anything else that reads a bundle)
checks every file against ``bundle.json``'s sha256 list, and ``preprocess.json`` and ``labels.txt`` against the
bundled model's own preprocessing and class names, before any of them is used. ``bundle.json`` itself is not signed:
its sha256, printed by ``bundle`` and by ``check``, is what to compare with the workstation's to trust a copy.

Every name that reaches a file name or ``build.sh`` (the model's, the preset's) is a safe name
(:func:`edge_inception.names.check_name`), and every word of ``build.sh`` is quoted with :func:`shlex.quote`.

Reference data works as Polygraphy's ``--save-inputs``/``--save-outputs``: ``edge-inception check`` replays it on the
device through any artifact, ours or one ``trtexec`` built.
"""

from __future__ import annotations

import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import EdgeInceptionError, ModelFileError
from ..fileio import OUTPUT_INDEX, atomic_dir, parse_json, read_json, read_text, sha256_file, walk_folder, write_json_atomic, write_text_atomic
from ..names import UnsafeNameError, check_labels, check_name
from ..onnx_file import OnnxFacts, graph_precision, load_onnx, model_facts, ort_session, run_session
from ..vocab import IMAGENET_MEAN, IMAGENET_STD
from .wheel import write_wheel

REFERENCE_IMAGES = 8


@dataclass
class BundleResult:
    folder: Path
    files: list[str]
    build_commands: list[str]
    bundle_sha256: str = ""  # of bundle.json, which lists every other file's


def make_bundle(model: str | Path, target: str, output: str | Path | None = None, *, force: bool = False,
                references: int = REFERENCE_IMAGES) -> BundleResult:
    """Write the bundle folder for ``model`` and ``target`` (atomically: complete, or not at all)."""
    from ..data.images import bundled_photos, load_batch
    from ..engines.targets import get_target, target_text
    from ..engines.tensorrt import plan_build, trtexec_command

    src = Path(model)
    check_name(src.name, "the model's file name")  # it becomes a word of build.sh and a file of the bundle
    onnx_model = load_onnx(src)
    facts = model_facts(onnx_model, str(src))
    tgt = get_target(target)
    check_name(tgt.name, f"target {tgt.source or ''} name")
    tgt.check_precision(facts.precision)
    out = Path(output) if output is not None else src.parent / f"{src.stem}.{tgt.name}.bundle"
    if not 1 <= references <= 64:
        raise EdgeInceptionError(f"--references must be in [1, 64], got {references}")
    spec = preprocess_spec(onnx_model, facts)
    input_name = spec["input_name"]
    photos = bundled_photos()
    picks = [photos[i % len(photos)] for i in range(references)]
    inputs = load_batch(picks, facts.image_size)
    session = ort_session(src)
    outputs = np.concatenate([run_session(session, inputs[i : i + 1]) for i in range(len(inputs))])
    import onnxruntime

    with atomic_dir(out, replace=force, index={"what": "bundle"}) as work:
        shutil.copyfile(src, work / src.name)
        report = src.with_suffix(".report.json")
        if report.is_file():
            shutil.copyfile(report, work / "report.json")
        write_json_atomic(work / "preprocess.json", spec)
        write_text_atomic(work / "labels.txt", "\n".join(facts.class_names) + "\n")
        write_text_atomic(work / "target.toml", target_text(tgt))
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
        commands = [_sh(build_argv(src.name, tgt.name))]
        trt_line = ""
        if "tensorrt" in tgt.backends and tgt.tensorrt_version:
            plan = plan_build(tgt, facts.precision, tgt.tensorrt_version, facts.image_size, graph_batch=facts.fixed_batch)
            engine = f"build/{src.stem}.engine"
            trt_line = _sh(trtexec_command(plan, tgt.tensorrt_version, src.name, engine, input_name=input_name,
                                           timing_cache="build/timing.cache"))
        (work / WHEELS).mkdir()
        wheel = write_wheel(work / WHEELS)  # the toolkit itself, for a device without a package index
        write_text_atomic(work / "build.sh", _build_sh(src.name, tgt.name, trt_line, wheel.name, sha256_file(wheel)))
        (work / "build.sh").chmod(0o755)
        write_text_atomic(work / "README.md", _readme(src.name, tgt, facts.precision, trt_line))
        files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        write_json_atomic(work / "bundle.json", {"edge_inception_version": __version__, "target": tgt.name, "model": src.name,
                                                  "files": {f: sha256_file(work / f) for f in files}})
    return BundleResult(out, [*files, "bundle.json"], [*commands, trt_line] if trt_line else commands, sha256_file(out / "bundle.json"))


def preprocess_spec(onnx_model: Any, facts: OnnxFacts) -> dict[str, Any]:
    """``preprocess.json``: how to feed the model from any code, all of it read from the model itself (so that
    :func:`verify_bundle` can recompute it and refuse an edited one)."""
    meta = facts.metadata

    def triple(key: str, default: tuple[float, ...]) -> list[float]:
        value = parse_json(meta[key], f"the model's metadata '{key}'") if key in meta else list(default)
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ModelFileError(f"the model's metadata '{key}' must be a list of 3 numbers, got {meta[key][:60]!r}")
        return value

    return {
        "image_size": facts.image_size, "resize_shorter_side_to": round(facts.image_size * 256 / 224), "crop": "centre",
        "color": "RGB", "layout": "NCHW", "dtype": "float32", "scale": "1/255",
        "mean": triple("mean", IMAGENET_MEAN), "std": triple("std", IMAGENET_STD),
        "transform_input": "inside the graph" if meta.get("transform_input") == "true" else "none",
        "input_name": onnx_model.graph.input[0].name, "output_name": onnx_model.graph.output[0].name,
        "num_classes": facts.num_classes, "precision": facts.precision,
    }


def build_argv(model: str, target: str) -> list[str]:
    """The ``edge-inception build`` command of ``build.sh``, as argv."""
    return ["edge-inception", "build", model, "--target", target, "-o", "build"]


def check_argv(artifact: str, target: str | None = None) -> list[str]:
    """The ``edge-inception check`` command of ``build.sh``, as argv (``target``: for an engine trtexec built)."""
    return ["edge-inception", "check", artifact, "--reference", "reference", *(["--target", target] if target else [])]


def _sh(argv: list[str]) -> str:
    """One shell command line whose words are exactly ``argv`` (each quoted)."""
    return " ".join(shlex.quote(a) for a in argv)


WHEELS = "wheels"
BUILD_DIR = "build"  # where build.sh builds, inside the bundle: the device's own output, not part of the bundle


def install_sh(wheel: str, sha256: str) -> list[str]:
    """build.sh's lines that install the runtime from the bundle's own wheel where edge-inception is not installed yet:
    that file, by name, once its sha256 is the one the bundle wrote (a wheel of a higher version dropped into wheels/
    would otherwise be the one pip picks); pip takes the dependencies from the environment (JetPack's NumPy and ONNX
    Runtime, say) or from wheels the user puts in wheels/."""
    path = shlex.quote(f"{WHEELS}/{wheel}")
    return ["if ! command -v edge-inception >/dev/null 2>&1; then",
            f'  echo "build.sh: installing edge-inception from {WHEELS}/ (no package index needed)" >&2',
            f'  echo "{sha256}  "{path} | sha256sum -c --status - || {{ echo "build.sh: {WHEELS}/{wheel} differs from the one '
            'the bundle wrote (sha256); copy the bundle again" >&2; exit 1; }',
            f'  "${{PYTHON:-python3}}" -m pip install --no-index --find-links {WHEELS} {path}',
            "fi"]


def _build_sh(model: str, target: str, trtexec: str, wheel: str, wheel_sha256: str) -> str:
    lines = ["#!/bin/sh", "# Build the engine for this device, then prove it gives the workstation's answers.", "set -e",
             'cd "$(dirname "$0")"', f"mkdir -p {BUILD_DIR}", "",
             f"# The toolkit on the device: the one installed, else the runtime wheel in {WHEELS}/ (no PyTorch needed)",
             *install_sh(wheel, wheel_sha256), "",
             _sh(build_argv(model, target)), _sh(check_argv("build"))]
    if trtexec:
        lines += ["", "# or with JetPack's trtexec alone (then let edge-inception adopt the engine once it passes the check):",
                  f"# {trtexec}", f"# {_sh(check_argv(f'build/{Path(model).stem}.engine', target))}"]
    return "\n".join(lines) + "\n"


def _readme(model: str, target, precision: str, trtexec: str) -> str:
    lines = [f"# {model} for {target.name}", "", f"{target.description}; {precision} graph.", "",
             "On the device:", "", "```sh",
             f"sh build.sh      # installs edge-inception from {WHEELS}/ if needed (offline), builds, then checks against reference/",
             "```", "",
             f"The runtime wheel in `{WHEELS}/` needs ONNX Runtime, NumPy, onnx, Pillow, Typer, tqdm, matplotlib and sympy: pip takes",
             "them from the environment (JetPack's, a virtual environment's) or from wheels you add to `" + WHEELS + "/`",
             "(`pip download -d wheels --platform manylinux2014_aarch64 --only-binary=:all: onnxruntime numpy ...` on a",
             "machine with network access); no PyTorch, no scikit-image.", "",
             "`edge-inception check ARTIFACT --reference reference` replays the saved inputs through the artifact and compares",
             "its logits with the workstation's at the precision's tolerance (see reference/reference.json).", ""]
    if trtexec:
        lines += ["With `trtexec` only (TensorRT " + str(target.tensorrt_version) + "):", "", "```sh", "mkdir -p build", trtexec,
                  "```", "", "then `" + _sh(check_argv("build/<engine>", target.name)) + "` adopts it:",
                  "it writes the engine's manifest once the comparison passes.", ""]
    lines += ["`preprocess.json` says how to feed the model from your own code; `labels.txt` names its outputs."]
    return "\n".join(lines) + "\n"


BUNDLE_FILE = "bundle.json"
MAX_BUNDLE_JSON_BYTES = 1 << 20
MAX_SMALL_FILE_BYTES = 4 << 20  # preprocess.json, labels.txt (ImageNet-21k's names fit in under 1 MB)
REQUIRED_FILES = ("preprocess.json", "labels.txt", "target.toml", "build.sh", "reference/inputs.npy", "reference/outputs.npy",
                  "reference/reference.json")


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files all match ``bundle.json`` and whose preprocessing and labels are its model's own."""

    folder: Path
    model: Path
    model_sha256: str
    facts: OnnxFacts
    precision: str  # what the model's graph holds (Q/DQ nodes, FP16 weights): the tolerance it is judged at
    labels: list[str]
    bundle_sha256: str  # of bundle.json: compare with what 'bundle' printed on the workstation
    added_wheels: tuple[str, ...] = ()  # wheels/ files bundle.json does not list: dependencies the user added on the device


def _listed_path(name: object, where: str) -> str:
    """A file name from bundle.json: one or two safe names joined by '/', never leaving the bundle."""
    parts = name.split("/") if isinstance(name, str) else [name]
    if not 1 <= len(parts) <= 2:
        raise ModelFileError(f"{where}: file {str(name)[:80]!r} is not a file of a bundle")
    for part in parts:
        check_name(part, f"{where}: file")
    return "/".join(parts)  # type: ignore[arg-type]


def verify_bundle(folder: str | Path) -> VerifiedBundle:
    """Check a bundle before anything in it is used: every file listed in ``bundle.json`` (the required ones must be
    listed) has the sha256 listed; ``preprocess.json`` equals what the bundled model's own metadata gives, and
    ``labels.txt`` its class names. Raises :class:`ModelFileError` naming the first file that differs."""
    root = Path(folder)
    index = root / BUNDLE_FILE
    where = str(index)
    data = read_json(index, MAX_BUNDLE_JSON_BYTES, "bundle index")
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ModelFileError(f"{where}: not a bundle index written by 'edge-inception bundle' (no 'files' list)")
    try:
        model_name = check_name(data.get("model"), f"{where}: field 'model'")
        listed = {_listed_path(name, where): digest for name, digest in files.items()}
    except UnsafeNameError as exc:
        raise ModelFileError(str(exc)) from None
    missing = [f for f in (model_name, *REQUIRED_FILES) if f not in listed]
    if missing:
        raise ModelFileError(f"{where}: does not list {missing[0]}; not a complete bundle")
    added_wheels = _unlisted_wheels(root, set(listed))
    for name, digest in listed.items():
        if not isinstance(digest, str) or sha256_file(root / name, "bundle file") != digest:
            raise ModelFileError(f"{root / name}: does not match {BUNDLE_FILE} (sha256 differs: edited or replaced); copy the bundle again")
    model = root / model_name
    onnx_model = load_onnx(model, with_weights=False)
    facts = model_facts(onnx_model, str(model))
    spec = read_json(root / "preprocess.json", MAX_SMALL_FILE_BYTES, "preprocessing file")
    expected = preprocess_spec(onnx_model, facts)
    if not isinstance(spec, dict):
        raise ModelFileError(f"{root / 'preprocess.json'}: expected a JSON object")
    differs = next((k for k in sorted(set(spec) | set(expected)) if spec.get(k) != expected.get(k)), None)
    if differs is not None:
        raise ModelFileError(f"{root / 'preprocess.json'}: field '{differs}' is {spec.get(differs)!r:.60}, but {model_name} "
                             f"takes {expected.get(differs)!r:.60}; the bundle was edited")
    try:
        labels = check_labels(read_text(root / "labels.txt", MAX_SMALL_FILE_BYTES, "labels file").splitlines(), "labels.txt")
    except UnsafeNameError as exc:
        raise ModelFileError(f"{root / 'labels.txt'}: {exc}") from None
    if labels != facts.class_names:
        first = next((i for i, (a, b) in enumerate(zip(labels, facts.class_names)) if a != b), min(len(labels), facts.num_classes))
        raise ModelFileError(f"{root / 'labels.txt'}: line {first + 1} differs from {model_name}'s class names; the bundle was edited")
    return VerifiedBundle(root, model, listed[model_name], facts, graph_precision(onnx_model), labels, sha256_file(index), added_wheels)


def _unlisted_wheels(root: Path, listed: set[str]) -> tuple[str, ...]:
    """Refuse (ModelFileError) what in the bundle ``bundle.json`` does not list: a file, a link (even to a listed file:
    what it points at can change after the check), a FIFO, a folder other than reference/ and wheels/. Allowed: the
    index files, build.sh's output folder build/, and dependency wheels the user added to wheels/ (returned, sorted;
    never a second edge_inception wheel: build.sh installs the bundle's own, by name and sha256)."""
    added = []
    for rel, st in walk_folder(root):
        parts = rel.split("/")
        if parts[0] == BUILD_DIR and (len(parts) > 1 or stat.S_ISDIR(st.st_mode)):
            continue
        if stat.S_ISDIR(st.st_mode) and rel in {WHEELS, "reference"}:
            continue
        if rel in listed and not stat.S_ISLNK(st.st_mode):  # a listed name that is not a regular file: its check below says so
            continue
        if stat.S_ISREG(st.st_mode):
            if rel in (BUNDLE_FILE, OUTPUT_INDEX):
                continue
            if len(parts) == 2 and parts[0] == WHEELS and rel.endswith(".whl") and not parts[1].lower().startswith("edge_inception"):
                added.append(rel)
                continue
        kind = "a link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "a file" if stat.S_ISREG(st.st_mode) \
            else "not a regular file"
        raise ModelFileError(f"{root / rel}: {kind} that {BUNDLE_FILE} does not list; the bundle was changed: remove it or copy the bundle again")
    return tuple(sorted(added))
