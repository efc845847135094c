"""``serve export``: a Triton model repository for an artifact, built aside, validated, then moved into place.

::

    REPO/
      <name>/config.pbtxt        native: platform onnxruntime_onnx / tensorrt_plan, or backend openvino; --kind python:
                                 backend python running the toolkit's own runner
      <name>/labels.txt          the classes, as label_filename: Triton's classification extension returns top-k labels
      <name>/1/                  model.onnx | model.plan | model.xml + model.bin; or (python) model.py, the artifact and
                                 its manifest (checked again when the backend loads it)
      <name>/sys_path.json       python kind: the import path of the toolkit that exported it (the backend's embedded
                                 Python does not read PYTHONPATH; ``serve run`` passes its own path instead)
      <name>_preprocess/         --preprocess: Python model, encoded image bytes (TYPE_STRING) -> N x 3 x S x S, the
                                 toolkit's preprocessing (data/images.py)
      <name>_images/             --preprocess: the ensemble, image bytes in, logits (and labels) out
      edge-inception.json        sha256 of every file, the source artifact and its manifest's hash
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..engines.manifest import manifest_path, read_manifest
from ..engines.registry import artifact_info, is_plain_onnx, resolve_artifact
from ..errors import ManifestError, ServeError
from ..fileio import (
    MAX_HASHED_BYTES,
    MAX_TREE_ENTRIES,
    OUTPUT_INDEX,
    atomic_dir,
    json_text,
    printable_name,
    read_output_index,
    safe_relative,
    sha256_file,
)
from ..limits import MAX_BATCH
from ..names import is_number, printable
from ..vocab import Backend
from . import config as tc
from .config import INPUT_NAME, LABELS_FILE, OUTPUT_NAME, Batching, InstanceKind, ModelSpec, ServeKind, Tensor
from .site import backend_sys_path

log = logging.getLogger(__name__)

REPO_MANIFEST = OUTPUT_INDEX  # edge-inception.json: every file's sha256 (fileio.atomic_dir writes it)
SYS_PATH_FILE = "sys_path.json"
VERSION = "1"
ROLE = "edge_inception_role"

# The Python backend's model.py: sets the import path, then hands over to edge_inception.serve.backend_model.
MODEL_PY = '''"""Triton Python backend model written by `edge-inception serve export`: see edge_inception.serve.backend_model."""

import json
import os
import sys


def _import_path():
    # Triton's Python backend stub does not read PYTHONPATH: the toolkit's import path comes from the server's
    # environment (`edge-inception serve run` sets EDGE_INCEPTION_SYS_PATH), else from sys_path.json written at export.
    text = os.environ.get("EDGE_INCEPTION_SYS_PATH")
    if text is None:
        try:
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "sys_path.json"), encoding="utf-8") as f:
                text = os.pathsep.join(str(p) for p in json.load(f))
        except (OSError, ValueError, TypeError):
            text = ""
    for entry in reversed([p for p in text.split(os.pathsep) if os.path.isabs(p) and os.path.isdir(p)]):
        if entry not in sys.path:
            sys.path.insert(0, entry)


_import_path()
from edge_inception.serve.backend_model import TritonPythonModel  # noqa: E402,F401
'''


@dataclass(frozen=True)
class ServedArtifact:
    """What a repository is made from: an artifact (manifest checked) or a plain ONNX model, and its facts."""

    path: Path
    backend: Backend
    files: tuple[Path, ...]  # the artifact, its companions, its manifest (none for a plain ONNX file)
    image_size: int
    num_classes: int
    class_names: tuple[str, ...]
    device: str
    precision: str
    batch_range: tuple[int, int] | None
    fixed_batch: int | None
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    artifact_sha256: str = ""


@dataclass(frozen=True)
class ExportOptions:
    kind: ServeKind = ServeKind.native
    name: str | None = None  # default: from the artifact's file name
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instances: int = 1
    instance_kind: InstanceKind = InstanceKind.auto
    warmup: bool = True
    preprocess: bool = False
    force: bool = False


@dataclass
class ExportResult:
    repository: Path
    kind: ServeKind
    models: list[str]  # model names, the one a client asks for first
    runtime: str  # what Triton runs the classifier with
    notes: list[str] = field(default_factory=list)


def _onnx_names(path: Path) -> tuple[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ServeError(f"{path}: expected one input and one output, found {len(inputs)} and {len(model.graph.output)}")
    return inputs[0], model.graph.output[0].name


def describe_source(source: str | Path) -> ServedArtifact:
    """The artifact behind ``source``: a built artifact (its manifest and companions checked), a build folder holding
    one, a bundle folder (its ONNX model) or a plain ONNX file."""
    src = Path(source)
    if src.is_dir() and (src / "bundle.json").is_file():
        onnx_files = sorted(p for p in src.glob("*.onnx") if p.is_file())
        if len(onnx_files) != 1:
            raise ServeError(f"{src}: a bundle holds one ONNX model, found {len(onnx_files)}")
        src = onnx_files[0]
    art = resolve_artifact(src)
    if not art.is_file():
        raise ManifestError(f"artifact not found: {art}")
    info = artifact_info(art)
    if is_plain_onnx(art):
        names = _onnx_names(art)
        return ServedArtifact(art, Backend.ort, (art,), info.image_size, info.num_classes, tuple(info.class_names), "cpu", info.precision,
                              None, info.fixed_batch, *names, sha256_file(art))
    manifest = read_manifest(art)  # every hash checked
    backend = Backend(manifest.backend)
    names = _onnx_names(art) if art.suffix == ".onnx" else (INPUT_NAME, OUTPUT_NAME)
    files = (art, *(art.with_name(n) for n in manifest.files), manifest_path(art))
    return ServedArtifact(art, backend, files, info.image_size, info.num_classes, tuple(info.class_names), manifest.device,
                          manifest.precision, manifest.batch_range, manifest.fixed_batch, *names, manifest.artifact_sha256)


def default_name(art: ServedArtifact) -> str:
    stem = art.path.name.split(".")[0] or "model"
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    return f"{safe}_{art.precision}"


def classifier_spec(art: ServedArtifact, name: str, opts: ExportOptions) -> ModelSpec:
    """The classifier's configuration: pure, from the artifact's facts (a test may give facts no file has, e.g. TensorRT)."""
    max_batch, prefix = tc.batch_settings(art.batch_range, art.fixed_batch, kind=opts.kind)
    for b in opts.preferred_batch_sizes:
        if not 1 <= b <= max(max_batch, 1) or max_batch == 0:
            raise ServeError(f"--preferred-batch {b}: the model takes batches of 1..{max_batch}" if max_batch else
                             f"--preferred-batch: the artifact takes batches of {art.fixed_batch} only; Triton does not batch it")
    runtime = tc.PYTHON if opts.kind is ServeKind.python else tc.NATIVE[art.backend]
    params = ({ROLE: "classifier", "artifact": art.path.name, "input_name": art.input_name, "output_name": art.output_name}
              if opts.kind is ServeKind.python else {})
    return ModelSpec(
        name=name, runtime=runtime, max_batch_size=max_batch,
        inputs=(Tensor(art.input_name, "TYPE_FP32", (*prefix, 3, art.image_size, art.image_size)),),
        outputs=(Tensor(art.output_name, "TYPE_FP32", (*prefix, art.num_classes), LABELS_FILE),),
        instance_kind=tc.instance_kind(opts.instance_kind, art.device), instances=opts.instances,
        batching=Batching(tuple(sorted(set(opts.preferred_batch_sizes))), opts.max_queue_delay_us) if max_batch else None,
        warmup_batch=1 if opts.warmup else None, parameters=params)


def preprocess_specs(art: ServedArtifact, classifier: ModelSpec, opts: ExportOptions) -> tuple[ModelSpec, ModelSpec]:
    """The ensemble's two models: encoded images -> the classifier's input (Python backend), and the ensemble itself."""
    if classifier.max_batch_size == 0:
        raise ServeError("--preprocess needs a model Triton can batch; this artifact takes one batch size only (use --kind python)")
    image = Tensor(tc.IMAGE_NAME, "TYPE_STRING", (1,))
    pre = ModelSpec(name=f"{classifier.name}_preprocess", runtime=tc.PYTHON, max_batch_size=classifier.max_batch_size, inputs=(image,),
                    outputs=(Tensor(art.input_name, "TYPE_FP32", classifier.inputs[0].dims),), instance_kind="KIND_CPU",
                    instances=opts.instances, batching=Batching((), opts.max_queue_delay_us),
                    parameters={ROLE: "preprocess", "image_size": str(art.image_size), "output_name": art.input_name})
    ensemble = ModelSpec(name=f"{classifier.name}_images", runtime=None, max_batch_size=classifier.max_batch_size, inputs=(image,),
                         outputs=(Tensor(art.output_name, "TYPE_FP32", classifier.outputs[0].dims, LABELS_FILE),),
                         steps=((pre.name, {tc.IMAGE_NAME: tc.IMAGE_NAME}, {art.input_name: "preprocessed"}),
                                (classifier.name, {art.input_name: "preprocessed"}, {art.output_name: art.output_name})))
    return pre, ensemble


def _labels_text(names: tuple[str, ...]) -> str:
    for n in names:
        if "\n" in n or "\r" in n:
            raise ServeError(f"class name {n[:40]!r} holds a line break; labels.txt takes one name per line")
    return "".join(f"{n}\n" for n in names)


def _write_model(root: Path, spec: ModelSpec, labels: str | None) -> None:
    folder = root / spec.name
    (folder / VERSION).mkdir(parents=True)
    (folder / "config.pbtxt").write_text(tc.render(spec), encoding="utf-8")
    if labels is not None:
        (folder / LABELS_FILE).write_text(labels, encoding="utf-8")
    if spec.runtime is tc.PYTHON:
        (folder / VERSION / "model.py").write_text(MODEL_PY, encoding="utf-8")
        (folder / SYS_PATH_FILE).write_text(json_text(backend_sys_path(), indent=2) + "\n", encoding="utf-8")


def _place_artifact(art: ServedArtifact, folder: Path, kind: ServeKind) -> None:
    """The artifact's files into the version folder: as they are (python kind; the manifest is checked again when the
    backend loads them) or under Triton's file names (native)."""
    if kind is ServeKind.python:
        for f in art.files:
            shutil.copyfile(f, folder / f.name)
        return
    native = tc.NATIVE[art.backend]
    shutil.copyfile(art.path, folder / native.model_file)
    for suffix, name in native.companions:
        shutil.copyfile(art.path.with_suffix(suffix), folder / name)
    if sha256_file(folder / native.model_file) != art.artifact_sha256:
        raise ServeError(f"{art.path}: changed while it was copied; run serve export again")


def validate_repository(repo: str | Path, specs: dict[str, ModelSpec] | None = None) -> list[str]:
    """Check a model repository as Triton will read it: every model folder has a config.pbtxt that Triton's schema parses,
    names itself as its folder does, and has a version folder; with ``specs`` (at export), each equals what the manifest
    says; with our edge-inception.json, every file's sha256 matches. Returns the model names."""
    root = Path(repo)
    if not root.is_dir():
        raise ServeError(f"model repository not found: {root}")
    models = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        tc.check_model_name(folder.name)  # printed, in URLs, and handed to Triton: a name of ours, not a terminal escape
        where = f"{folder.name}/config.pbtxt"
        cfg_path = folder / "config.pbtxt"
        if not cfg_path.is_file():
            raise ServeError(f"{root}: model folder {folder.name} has no config.pbtxt")
        if cfg_path.stat().st_size > tc.MAX_CONFIG_BYTES:
            raise ServeError(f"{root}/{where}: larger than {tc.MAX_CONFIG_BYTES >> 10} KB, not a model configuration of ours")
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ServeError(f"{root}/{where}: not UTF-8 text") from None
        cfg = tc.parse(text, f"{root}/{where}")
        if cfg.name and cfg.name != folder.name:
            raise ServeError(f"{root}/{where}: names the model {cfg.name!r}, its folder is {folder.name!r}")
        for out in cfg.output:  # Triton reads it relative to the model folder: a plain file name there, never a path out of it
            if out.label_filename and (Path(out.label_filename).name != out.label_filename or out.label_filename in (".", "..")):
                raise ServeError(f"{root}/{where}: label_filename {out.label_filename[:80]!r} is not a file name in {folder.name}/")
        if not any(p.is_dir() and is_number(p.name) for p in folder.iterdir()):
            raise ServeError(f"{root}/{folder.name}: no version folder (such as {folder.name}/1/)")
        if specs is not None:
            if folder.name not in specs:
                raise ServeError(f"{root}: unexpected model folder {folder.name}")
            tc.check(cfg, specs[folder.name], f"{root}/{where}")
        models.append(folder.name)
    if not models:
        raise ServeError(f"{root}: no model folders with a config.pbtxt (not a Triton model repository)")
    _check_hashes(root)
    return models


def _check_hashes(root: Path) -> None:
    index = read_output_index(root, error=ServeError)
    if index is None:
        return
    for rel, digest in index["files"].items():
        target = root / rel
        if not target.is_file():
            raise ServeError(f"{root}: {printable_name(rel)} is missing; export the repository again")
        if sha256_file(target) != digest:
            raise ServeError(f"{root}: {rel} does not match {REPO_MANIFEST} (sha256 differs: edited or replaced); export again")


MAX_FOREIGN_SHOWN = 8


def copy_verified(repo: str | Path, dest: Path) -> None:
    """Copy the model repository ``repo`` into the new folder ``dest`` (private, ours), checking it against the index
    ``serve export`` wrote (:data:`REPO_MANIFEST`): what ``serve run`` serves is this copy, so nothing that changes in
    ``repo`` after the check reaches tritonserver (the copy's bytes are the bytes hashed).

    Every entry is read through the folder above it (``openat`` with ``O_NOFOLLOW``): a symbolic link anywhere
    (``labels.txt`` -> ``/etc/passwd``), a FIFO, a device or a socket is never followed or opened. Refused, as
    :class:`ServeError` in one line: no index; an entry the index does not list (a file, a link, a model folder: the
    first :data:`MAX_FOREIGN_SHOWN` named, escaped); a file whose sha256 differs; a listed file that is missing.
    Rule: README, Serving (issue 38, kind 6)."""
    root = Path(repo)
    if not root.is_dir():
        raise ServeError(f"model repository not found: {root}")
    index = read_output_index(root, error=ServeError)
    if index is None:
        raise ServeError(f"{root}: no {REPO_MANIFEST} (the index serve export writes): refusing to serve a repository the toolkit did not "
                         "write (Triton would run any model.py in it as code); export it with serve export, or pass --trust-repository")
    files: dict[str, str] = index["files"]
    folders = {"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}
    listed = index.get("folders")  # those that hold no file (an ensemble's empty version folder)
    folders |= {f for f in listed if safe_relative(f)} if isinstance(listed, list) else set()
    foreign: list[str] = []
    differs: list[str] = []
    seen: set[str] = set()
    count = 0

    def walk(dir_fd: int, rel: str, out: Path) -> None:
        nonlocal count
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise ServeError(f"{root}: more than {MAX_TREE_ENTRIES:,} entries; not a repository serve export wrote")
            sub = f"{rel}/{entry.name}" if rel else entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode) and sub in folders:
                fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    (out / entry.name).mkdir(mode=0o700)
                    walk(fd, sub, out / entry.name)
                finally:
                    os.close(fd)
            elif stat.S_ISREG(mode) and (sub in files or sub == REPO_MANIFEST):
                if _copy_file(dir_fd, entry.name, out / entry.name) != files.get(sub, "") and sub != REPO_MANIFEST:
                    differs.append(sub)
                seen.add(sub)
            else:
                kind = ("a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                        else "a file" if stat.S_ISREG(mode) else "a device or socket")
                foreign.append(f"{sub} ({kind})")

    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ServeError(f"cannot read {root}: {exc.strerror or exc}") from None
    try:
        walk(root_fd, "", dest)
    except OSError as exc:  # an entry swapped for a link or removed while it was read
        raise ServeError(f"{root}: changed while it was read ({exc.strerror or exc}: {printable_name(exc.filename or '')}); "
                         "serve run again") from None
    finally:
        os.close(root_fd)
    if foreign:
        shown = ", ".join(printable(f, 120) for f in foreign[:MAX_FOREIGN_SHOWN])
        more = f" and {len(foreign) - MAX_FOREIGN_SHOWN} more" if len(foreign) > MAX_FOREIGN_SHOWN else ""
        raise ServeError(f"{root}: {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} not written by serve export ({shown}{more}): "
                         f"refusing to serve it (not in its {REPO_MANIFEST}; Triton would load them, a model.py as code); remove them, "
                         "or pass --trust-repository")
    if differs:
        raise ServeError(f"{root}: {printable(differs[0], 120)} does not match {REPO_MANIFEST} (sha256 differs: edited or replaced); "
                         "export again")
    missing = sorted(set(files) - seen)
    if missing:
        raise ServeError(f"{root}: {printable(missing[0], 120)} is missing; export the repository again")
    _check_labels(root, dest)


def _check_labels(root: Path, copy: Path) -> None:
    """Every ``labels.txt`` of the verified ``copy`` of ``root`` names the classes its artifact's manifest names (the
    manifest's own hashes checked): an index rewritten with an edited labels.txt (README: the index is not a signature)
    is refused, since Triton would answer with the edited names. Raises ServeError naming the file and line."""
    from ..engines.manifest import MANIFEST_SUFFIX, read_manifest
    from ..errors import ManifestError

    named: list[str] | None = None
    for mpath in sorted(copy.glob(f"*/*/*{MANIFEST_SUFFIX}")):
        try:
            manifest = read_manifest(mpath.with_name(mpath.name[: -len(MANIFEST_SUFFIX)]))
        except ManifestError as exc:
            raise ServeError(f"{root}: {printable(str(mpath.relative_to(copy)), 120)}: {exc}; export again") from None
        if manifest.class_names is not None:
            named = named or list(manifest.class_names)
    if named is None:
        return
    for labels in sorted(copy.glob(f"*/{LABELS_FILE}")):
        lines = labels.read_text(encoding="utf-8").splitlines()
        if lines != named:
            line = next((i for i, (a, b) in enumerate(zip(lines, named)) if a != b), min(len(lines), len(named)))
            raise ServeError(f"{root}: {printable(str(labels.relative_to(copy)), 120)} line {line + 1} differs from the class names "
                             "the artifact's manifest holds: edited; refusing to serve answers under other names; export again")


def _copy_file(dir_fd: int, name: str, dest: Path) -> str:
    """Copy the regular file ``name`` in ``dir_fd`` (never through a link, never a FIFO) to ``dest``; its sha256."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_HASHED_BYTES:
            raise ServeError(f"{printable_name(name)}: not a regular file of at most {MAX_HASHED_BYTES >> 30} GB")
        os.set_blocking(src.fileno(), True)
        h = hashlib.sha256()
        with open(dest, "xb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    return h.hexdigest()


def export_repository(source: str | Path, output: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Write a Triton model repository for ``source`` at ``output`` (complete and validated, or not at all)."""
    opts = options or ExportOptions()
    if not 1 <= opts.instances <= 64:
        raise ServeError(f"--instances must be in [1, 64], got {opts.instances}")
    if not 0 <= opts.max_queue_delay_us <= 10_000_000:
        raise ServeError(f"--max-queue-delay-us must be in [0, 10000000], got {opts.max_queue_delay_us}")
    if any(not 1 <= b <= MAX_BATCH for b in opts.preferred_batch_sizes):
        raise ServeError(f"--preferred-batch sizes must be in [1, {MAX_BATCH}]")
    art = describe_source(source)
    if opts.kind is ServeKind.native and art.backend not in tc.NATIVE:
        raise ServeError(f"no native Triton backend for {art.backend} artifacts (use --kind python)")
    name = tc.check_model_name(opts.name or default_name(art))
    classifier = classifier_spec(art, name, opts)
    specs = [classifier]
    if opts.preprocess:
        specs += list(preprocess_specs(art, classifier, opts))
    labels = _labels_text(art.class_names)
    out = Path(output)
    index = {"kind": opts.kind.value, "source": str(art.path.resolve()), "source_sha256": art.artifact_sha256, "backend": art.backend.value,
             "precision": art.precision, "models": [s.name for s in specs]}
    with atomic_dir(out, replace=opts.force, index=index) as tmp:  # the index: every file's sha256, what serve run checks
        for spec in specs:
            _write_model(tmp, spec, labels if any(t.label_filename for t in spec.outputs) else None)
        _place_artifact(art, tmp / name / VERSION, opts.kind)
        if opts.kind is ServeKind.python and len(art.files) > 1:
            read_manifest(tmp / name / VERSION / art.path.name)  # the copy checks out against its manifest
        validate_repository(tmp, {s.name: s for s in specs})
    runtime = classifier.runtime.value if classifier.runtime else tc.ENSEMBLE_PLATFORM
    notes = []
    if opts.kind is ServeKind.native:
        notes.append(f"the {runtime} backend ships in NGC's tritonserver containers; nvidia-pytriton's server has the Python backend only "
                     "(use --kind python there)")
    models = [name] + ([specs[2].name] if opts.preprocess else [])
    log.info("wrote Triton model repository %s (%s)", out, ", ".join(s.name for s in specs))
    return ExportResult(out, opts.kind, models, runtime, notes)
