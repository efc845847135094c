"""``edge-inception build``: an ONNX model plus a target -> an artifact and its manifest, verified."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..convert.onnx_file import get_metadata, load_onnx, model_class_names, model_image_size
from ..errors import EdgeInceptionError, VerificationError
from ..evaluate.verify import Parity, compare, onnx_session, run_onnx, verification_inputs
from ..fileio import atomic_path, ensure_parent, sha256_file
from .base import Manifest, open_runner, write_manifest
from .targets import Target, get_target

log = logging.getLogger(__name__)

# FP32 artifacts must reproduce their source ONNX; reduced-precision ones are judged by agreement.
FP32_REL_TOL = 1e-5
MIN_COSINE = 0.99


def graph_precision(model) -> str:
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):  # TensorProto.FLOAT16
        return "fp16"
    return "fp32"


@dataclass
class BuildResult:
    artifact: Path
    manifest: Manifest
    parity: Parity


def build(model: str | Path, target: str | Target, *, backend: str | None = None, precision: str | None = None,
          output_dir: str | Path | None = None, threads: int | None = None) -> BuildResult:
    """Build ``model`` for ``target``; the artifact's outputs are checked against the source ONNX before it is kept."""
    src = Path(model)
    onnx_model = load_onnx(src)
    tgt = target if isinstance(target, Target) else get_target(target)
    be = backend or tgt.backend
    found = graph_precision(onnx_model)
    prec = precision or found
    if prec != found:
        raise EdgeInceptionError(f"{src} is a {found} graph; precision comes from the graph (run 'edge-inception quantize --precision {prec}' first)")
    tgt.check(be, prec)
    meta = get_metadata(onnx_model)
    size = model_image_size(onnx_model)
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    fixed_batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    num_classes = int(meta.get("num_classes") or onnx_model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)
    out_dir = Path(output_dir) if output_dir is not None else src.parent / f"{src.stem}.{tgt.name}"
    n_threads = tgt.threads if threads is None else threads
    libraries: dict[str, str] = {}
    options: dict[str, object] = {"threads": n_threads}
    gpu = None

    if be == "ort":
        import onnxruntime as ort

        from .ort import build_cpu, providers_for, require_providers

        name = f"{src.stem}.ort.onnx"
        chain = providers_for(tgt, prec, out_dir / "trt-cache")
        require_providers(chain)
        libraries["onnxruntime"] = ort.__version__
        options.update({"providers": chain, "offline_optimized": tgt.device == "cpu"})
        ensure_parent(out_dir / name)
        with atomic_path(out_dir / name) as tmp:
            if tgt.device == "cpu":
                options["folded_weight_dequantize"] = build_cpu(src, tmp, n_threads)
            else:
                shutil.copyfile(src, tmp)  # GPU providers optimise (and cache engines) at first load
            artifact = out_dir / name
    elif be == "openvino":
        from .openvino import build_ir, openvino_version

        libraries["openvino"] = openvino_version()
        name = f"{src.stem}.xml"
        ensure_parent(out_dir / name)
        build_ir(src, out_dir / name)  # IR is a pair (.xml + .bin); the manifest is written last and hashes the .xml
        artifact = out_dir / name
        options["bin_sha256"] = sha256_file(artifact.with_suffix(".bin"))
    elif be == "tensorrt":
        from .tensorrt import build_engine, cuda_device, plan_build, tensorrt_version

        version = tensorrt_version()
        gpu = cuda_device()
        plan = plan_build(tgt, prec, version, size, graph_batch=fixed_batch)
        libraries["tensorrt"] = version
        options.update({"plan": plan.__dict__})
        name = f"{src.stem}.engine"
        ensure_parent(out_dir / name)
        with atomic_path(out_dir / name) as tmp:
            build_engine(src, tmp, plan, timing_cache=out_dir / "timing.cache")
        artifact = out_dir / name
    else:
        raise EdgeInceptionError(f"unknown backend '{be}'")

    lo, opt, hi = (fixed_batch,) * 3 if fixed_batch else (tgt.batch_min, tgt.batch_opt, tgt.batch_max)
    manifest = Manifest(
        backend=be, target=tgt.name, precision=prec, artifact=artifact.name, artifact_sha256=sha256_file(artifact),
        source_onnx=str(src), source_sha256=sha256_file(src), image_size=size, num_classes=num_classes,
        input_shapes={k: [b, 3, size, size] for k, b in (("min", lo), ("opt", opt), ("max", hi))},
        libraries=libraries, options=options, gpu=gpu, class_names=model_class_names(meta, num_classes),
    )
    write_manifest(artifact, manifest)
    try:
        parity = verify_artifact(artifact, src, size, fixed_batch)
        if prec == "fp32" and not parity.max_rel_error <= FP32_REL_TOL:
            raise VerificationError(f"{artifact.name}: differs from {src.name} by {parity.max_rel_error:.2e} relative (> {FP32_REL_TOL:g})")
        # Reduced precision runs different kernels (another INT8 requantisation, FP16 accumulation): judge it by the
        # logits' cosine, which near-tied classes (a seeded model has many) cannot flip the way they flip top-1.
        if not parity.mean_cosine >= MIN_COSINE:
            raise VerificationError(f"{artifact.name}: logits differ from {src.name} (mean cosine {parity.mean_cosine:.4f} < {MIN_COSINE})")
    except BaseException:
        for f in (artifact, artifact.with_name(artifact.name + ".manifest.json"), artifact.with_suffix(".bin")):
            if f != src:
                f.unlink(missing_ok=True)
        raise
    return BuildResult(artifact, manifest, parity)


def verify_artifact(artifact: Path, source: Path, image_size: int, batch: int | None) -> Parity:
    session = onnx_session(source)
    parity: Parity | None = None
    with open_runner(artifact) as runner:
        for x in verification_inputs(image_size, batch):
            p = compare(run_onnx(session, x), runner.infer(x))
            parity = p if parity is None else parity.merge(p)
    assert parity is not None
    return parity


