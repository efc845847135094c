"""``edge-inception build``: an ONNX model plus a target -> an artifact and its manifest, verified.

An artifact is one unit (the artifact, its companion files, its manifest): the backend builds it in a temporary
folder beside the destination, it is verified there against the source ONNX, and only then moved into place, the
manifest last. A failed or interrupted build leaves the previous artifact as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, EdgeInceptionError, VerificationError
from ..evaluate.verify import Parity, parity_over, verification_inputs
from ..fileio import install_files, link_path, sha256_file, staging_dir
from ..onnx_file import graph_precision, load_onnx, model_facts, ort_session, run_session
from ..vocab import Backend, Precision
from .choose import choose, probe
from .manifest import Manifest, manifest_path, write_manifest
from .registry import BuildJob, open_runner, require_backend
from .targets import Target, get_target

log = logging.getLogger(__name__)

# FP32 artifacts must reproduce their source ONNX; reduced-precision ones are judged by agreement.
FP32_REL_TOL = 1e-5
FP32_REL_TOL_GPU = 1e-4
MIN_COSINE = 0.99


@dataclass
class BuildResult:
    artifact: Path
    manifest: Manifest
    parity: Parity
    note: str = ""


def build(model: str | Path, target: str | Target, *, backend: Backend | str | None = None, precision: Precision | str | None = None,
          output_dir: str | Path | None = None, threads: int | None = None, allow_tf32: bool = False, name: str | None = None,
          inference_precision: str | None = None, quantizer: str | None = None, calib: Path | None = None, calib_size: int = 100,
          holdout: Path | None = None) -> BuildResult:
    """Build ``model`` for ``target``; the artifact's outputs are checked against the source ONNX before it is kept.

    ``allow_tf32`` lets an FP32 artifact run its convolutions in TF32 on a GPU; it is then judged like FP16. ``name``
    is the artifact's file name before the backend's suffix (default: the model's stem), so that variants built from
    one model (TF32 beside strict FP32) do not replace each other. ``inference_precision`` (``"bf16"``): an FP32 model
    the backend computes in that reduced float (one of its ``inference_precisions``), judged like FP16. ``quantizer``
    (``"nncf"``): an INT8 artifact the backend's peer quantizer makes from the FP32 ``model``, calibrated on ``calib_size``
    crops of every photo of ``calib`` (None: the bundled photos; the crops ``quantize`` calibrates its written model on),
    judged against the FP32 model like any INT8; ``holdout``: photos kept apart, left out of that calibration.
    Raises EdgeInceptionError (BackendUnavailableError for a quantizer)
    when the backend offers neither.
    """
    src = Path(model)
    onnx_model = load_onnx(src)
    facts = model_facts(onnx_model, str(src))
    tgt = target if isinstance(target, Target) else get_target(target)
    found = Precision(graph_precision(onnx_model))
    prec = Precision(precision or (Precision.int8 if quantizer else found))
    if (quantizer or inference_precision) and found is not Precision.fp32:
        raise EdgeInceptionError(f"{src} is a {found.value} graph: {'a quantizer' if quantizer else 'an inference precision'} needs the FP32 model")
    if quantizer and prec is not Precision.int8:
        raise EdgeInceptionError(f"a quantizer ({quantizer}) makes INT8, not {prec.value}")
    if inference_precision and prec is not Precision.fp32:
        raise EdgeInceptionError(f"an inference precision ({inference_precision}) is for FP32 models, not {prec.value}")
    if prec is not found and not quantizer:
        raise EdgeInceptionError(f"{src} is a {found.value} graph; precision comes from the graph "
                                 f"(run 'edge-inception quantize --precision {prec.value}' first)")
    if allow_tf32 and tgt.device == "cpu":
        raise EdgeInceptionError(f"--allow-tf32 is for GPU targets: target {tgt.name} runs on the CPU, where FP32 is FP32")
    requested = Backend(backend) if backend else None
    if requested is not None:
        tgt.check(requested, prec)
    tgt.check_precision(prec)
    choice = choose(tgt, prec, requested, probe(tgt), allow_tf32=allow_tf32)
    tgt.check(choice.backend, prec)
    engine = require_backend(choice.backend)
    if inference_precision and inference_precision not in engine.inference_precisions:
        raise EdgeInceptionError(f"{engine.name.value} does not take inference precision '{inference_precision}' "
                                 f"(it takes: {', '.join(engine.inference_precisions) or 'none'})")
    if quantizer:
        offered = engine.quantizers()
        why = offered.get(quantizer, f"{engine.name.value} has no quantizer '{quantizer}' (it has: {', '.join(offered) or 'none'})")
        if why:
            raise BackendUnavailableError(why)
    out_dir = Path(output_dir) if output_dir is not None else src.parent / f"{src.stem}.{tgt.name}"
    n_threads = tgt.threads if threads is None else threads
    size, fixed = facts.image_size, facts.fixed_batch
    tf32 = allow_tf32
    log.info("building with %s", choice.line)

    stem = name or src.stem
    if "/" in stem or "\\" in stem or stem.startswith("."):
        raise EdgeInceptionError(f"artifact name '{stem}': a plain file name is needed")
    with staging_dir(out_dir, f"{stem}.build") as work:
        job = BuildJob(source=src, target=tgt, precision=prec, image_size=size, fixed_batch=fixed, threads=n_threads, work_dir=work,
                       cache_dir=out_dir, providers=choice.providers, allow_tf32=tf32, name=stem, inference_precision=inference_precision or "",
                       quantizer=quantizer or "", calib=calib, calib_size=calib_size, holdout=holdout)
        out = engine.build(job)
        lo, opt, hi = (fixed,) * 3 if fixed else (tgt.batch_min, tgt.batch_opt, tgt.batch_max)
        manifest = Manifest(
            backend=engine.name.value, target=tgt.name, precision=prec.value, artifact=out.artifact.name,
            artifact_sha256=sha256_file(out.artifact), source_onnx=link_path(src, out_dir), source_sha256=sha256_file(src), image_size=size,
            num_classes=facts.num_classes, input_shapes={k: [b, 3, size, size] for k, b in (("min", lo), ("opt", opt), ("max", hi))},
            libraries=out.libraries, options={"threads": n_threads, "tf32": tf32, **out.options}, gpu=out.gpu,
            class_names=facts.class_names, files={c.name: sha256_file(c) for c in out.companions}, device=tgt.device,
        )
        write_manifest(out.artifact, manifest)
        parity = verify_artifact(out.artifact, src, size, fixed)
        judge(parity, prec, out.artifact.name, src.name, device=tgt.device, tf32=tf32 or bool(inference_precision))
        install_files([*out.companions, out.artifact, manifest_path(out.artifact)], out_dir)
    return BuildResult(out_dir / out.artifact.name, manifest, parity, out.note or choice.line)


def judge(parity: Parity, precision: Precision, artifact: str, source: str, *, device: str = "cpu", tf32: bool = False) -> None:
    """FP32 must reproduce its source: to 1e-5 relative on a CPU, 1e-4 on a GPU (cuDNN picks other summation orders,
    never TF32's 1e-3). Reduced precision, and FP32 with TF32 allowed (``tf32``; also a bf16 inference precision), run other arithmetic (another INT8
    requantisation, FP16 or TF32 products), so they are judged by the logits' cosine, which near-tied classes (a seeded
    model has many) cannot flip the way they flip top-1."""
    tolerance = FP32_REL_TOL if device == "cpu" else FP32_REL_TOL_GPU
    if precision is Precision.fp32 and not tf32 and not parity.max_rel_error <= tolerance:
        raise VerificationError(f"{artifact}: differs from {source} by {parity.max_rel_error:.2e} relative (> {tolerance:g})")
    if not parity.mean_cosine >= MIN_COSINE:
        raise VerificationError(f"{artifact}: logits differ from {source} (mean cosine {parity.mean_cosine:.4f} < {MIN_COSINE})")


def verify_artifact(artifact: Path, source: Path, image_size: int, batch: int | None) -> Parity:
    """The artifact against its source ONNX in ONNX Runtime on the CPU, on random and real-photo batches."""
    session = ort_session(source)
    with open_runner(artifact) as runner:
        return parity_over(verification_inputs(image_size, batch), lambda b: run_session(session, b), runner.run)
