"""Native TensorRT (optional extra ``tensorrt``): parse ONNX, build a serialized engine, run it with
``execute_async_v3`` on PyTorch CUDA tensors.

Precision comes from the graph: Q/DQ INT8 or FP16 ONNX from ``quantize``. On TensorRT >= 10 the network is
created strongly typed, so no precision flag is set (TensorRT 11 has neither implicit INT8 calibration nor
weakly typed networks). Builder precision flags are used only where a build needs them and the installed
version still has them: TensorRT 8/9, and DLA builds, which need a weakly typed network.

The decisions (network flags, precision flags, profile shapes, DLA settings, manifest checks) are plain
functions, tested without TensorRT; only :func:`build_engine` and :class:`TensorRTRunner` touch the library.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, EdgeInceptionError, ManifestError, TargetError
from ..fileio import atomic_path
from ..vocab import Backend
from .manifest import Manifest
from .registry import BuildJob, BuildOutput, NoPeerQuantizer
from .runner import NodeTime, Runner, Timings
from .targets import Target

log = logging.getLogger(__name__)


def parse_version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError as exc:
        raise EdgeInceptionError(f"cannot read TensorRT version '{text}'") from exc


@dataclass(frozen=True)
class BuildPlan:
    strongly_typed: bool
    explicit_batch_flag: bool  # required before TensorRT 10, deprecated after
    builder_flags: tuple[str, ...]
    dla_core: int | None
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min / opt / max input shapes
    workspace_bytes: int
    optimization_level: int
    cleared_flags: tuple[str, ...] = ()  # on by default, turned off: TF32 for a strict FP32 engine


def profile_shapes(target: Target, image_size: int, fixed: bool) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Optimisation profile for the dynamic batch; DLA engines are fixed-shape at the target's opt batch."""
    def shape(n: int) -> tuple[int, ...]:
        return (n, 3, image_size, image_size)

    if fixed:
        return shape(target.batch_opt), shape(target.batch_opt), shape(target.batch_opt)
    return shape(target.batch_min), shape(target.batch_opt), shape(target.batch_max)


def plan_build(target: Target, precision: str, trt_version: str, image_size: int, *, graph_batch: int | None = None,
               allow_tf32: bool = False) -> BuildPlan:
    """Everything a build decides, from the target, the model's precision and the installed TensorRT."""
    target.check("tensorrt", precision)
    major, _ = parse_version(trt_version)
    dla = target.dla_core is not None and precision in ("fp16", "int8")
    if dla and major >= 11:
        raise TargetError(f"target '{target.name}' uses DLA, which needs a weakly typed network: TensorRT {trt_version} has none")
    strongly_typed = major >= 10 and not dla
    flags: list[str] = []
    if not strongly_typed:
        if precision == "fp16":
            flags.append("FP16")
        elif precision == "int8":
            flags += ["INT8", "FP16"]  # Q/DQ layers in INT8; FP16 for layers without an INT8 kernel
        if dla:
            flags.append("GPU_FALLBACK")
    fixed = dla or graph_batch is not None
    profile = profile_shapes(target, image_size, fixed)
    if graph_batch is not None:
        profile = ((graph_batch, 3, image_size, image_size),) * 3
    return BuildPlan(
        strongly_typed=strongly_typed,
        explicit_batch_flag=major < 10,
        builder_flags=tuple(flags),
        dla_core=target.dla_core if dla else None,
        profile=profile,
        workspace_bytes=target.workspace_mb << 20,
        optimization_level=target.builder_optimization_level,
        # TensorRT computes FP32 convolutions in TF32 unless told not to (1e-3 relative): a strict FP32 engine clears it
        cleared_flags=("TF32",) if precision == "fp32" and not allow_tf32 else (),
    )


def trtexec_command(plan: BuildPlan, trt_version: str, onnx_file: str, engine_file: str, *, input_name: str = "input",
                    timing_cache: str = "timing.cache") -> list[str]:
    """The ``trtexec`` command that builds what :func:`build_engine` builds from the same plan, in the flags the given
    TensorRT version has: ``--explicitBatch`` and ``--workspace`` on 8.x (``--memPoolSize`` from 8.4), ``--stronglyTyped``
    on 10.x (11 is always strongly typed and has no precision flags), ``--fp16``/``--int8`` where the network is weakly
    typed (8.x, DLA), ``--useDLACore`` with ``--allowGPUFallback``, ``--noTF32`` for a strict FP32 engine."""
    major, minor = parse_version(trt_version)
    shapes = ["x".join(map(str, s)) for s in plan.profile]
    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}",
           f"--minShapes={input_name}:{shapes[0]}", f"--optShapes={input_name}:{shapes[1]}", f"--maxShapes={input_name}:{shapes[2]}"]
    if plan.explicit_batch_flag:
        cmd.append("--explicitBatch")
    if plan.strongly_typed and major == 10:
        cmd.append("--stronglyTyped")
    flag_names = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback"}
    cmd += [flag_names[f] for f in plan.builder_flags if f in flag_names]
    if plan.dla_core is not None:
        cmd.append(f"--useDLACore={plan.dla_core}")
    if "TF32" in plan.cleared_flags and major < 11:
        cmd.append("--noTF32")
    workspace_mb = plan.workspace_bytes >> 20
    cmd.append(f"--workspace={workspace_mb}" if (major, minor) < (8, 4) else f"--memPoolSize=workspace:{workspace_mb}")
    if (major, minor) >= (8, 6):
        cmd.append(f"--builderOptimizationLevel={plan.optimization_level}")
    cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def check_engine_compat(manifest: Manifest, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Engines are tied to the TensorRT version and GPU they were built with: refuse anything else."""
    built = manifest.libraries.get("tensorrt", "unknown")
    if built != trt_version:
        raise ManifestError(f"engine built with TensorRT {built}, this machine has {trt_version}: rebuild it here with 'edge-inception build'")
    gpu = manifest.gpu or {}
    if gpu.get("compute_capability") != compute_capability:
        raise ManifestError(
            f"engine built for {gpu.get('name', 'another GPU')} (sm {gpu.get('compute_capability', '?')}), this is {gpu_name} "
            f"(sm {compute_capability}): rebuild it here with 'edge-inception build'"
        )


INSTALL_HINT = "TensorRT is not installed: pip install 'edge-inception[tensorrt]' on a machine with an NVIDIA GPU (JetPack ships it)"


@functools.cache
def tensorrt_missing() -> str | None:
    """Why the TensorRT Python bindings cannot be used here, or None. ``tensorrt-stubs`` alone leaves an importable,
    empty ``tensorrt`` namespace: only a module with the builder counts."""
    try:
        import tensorrt
    except ImportError:
        return INSTALL_HINT
    except Exception as exc:  # the wheel is there but its libraries are not (libnvinfer not found, and the like)
        return f"TensorRT's Python bindings fail to load ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): {INSTALL_HINT}"
    if not hasattr(tensorrt, "Builder"):
        return f"only an empty 'tensorrt' namespace was found (type stubs?), not TensorRT itself. {INSTALL_HINT}"
    return None


def _trt():  # -> module
    why = tensorrt_missing()
    if why:
        raise BackendUnavailableError(why)
    import tensorrt

    return tensorrt


def tensorrt_version() -> str:
    return str(_trt().__version__)


def cuda_device() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA GPU, and none is visible here")
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def build_engine(source: Path, artifact: Path, plan: BuildPlan, timing_cache: Path | None = None) -> None:
    """Parse ``source`` and write a serialized engine to ``artifact`` (the caller makes it atomic)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"node {err.node()} ({err.node_name()}, {err.node_operator()}): {err.desc()}")
        raise EdgeInceptionError(f"TensorRT could not parse {source}: " + "; ".join(errors or ["unknown error"]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    config.builder_optimization_level = plan.optimization_level
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise BackendUnavailableError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}, which this build needs")
        config.set_flag(flag)
    for name in plan.cleared_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:  # a version without the flag has nothing to clear
            config.clear_flag(flag)
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise TargetError(f"DLA core {plan.dla_core} requested, this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    profile.set_shape(input_name, trt.Dims(plan.profile[0]), trt.Dims(plan.profile[1]), trt.Dims(plan.profile[2]))
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeInceptionError(f"TensorRT failed to build an engine from {source} (see the log above)")
    artifact.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path, self.manifest = path, manifest
        self.context: Any = None
        self.engine: Any = None

    def activate(self) -> None:
        trt = _trt()
        device = cuda_device()
        check_engine_compat(self.manifest, str(trt.__version__), device["name"], device["compute_capability"])
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ManifestError(f"{self.path}: TensorRT could not deserialize the engine; rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EdgeInceptionError("TensorRT execution failed")
        stream.synchronize()
        return np.asarray(out.cpu().numpy())

    def deactivate(self) -> None:
        self.context = None
        self.engine = None


class TensorRTBackend(NoPeerQuantizer):
    """Native TensorRT: ``<name>.engine``, a serialized engine tied to this TensorRT version and GPU."""

    name = Backend.tensorrt
    suffix = ".engine"
    def available(self) -> str | None:
        return tensorrt_missing()

    def build(self, job: BuildJob) -> BuildOutput:
        version = tensorrt_version()
        gpu = cuda_device()
        plan = plan_build(job.target, job.precision, version, job.image_size, graph_batch=job.fixed_batch, allow_tf32=job.allow_tf32)
        artifact = job.work_dir / f"{job.stem}{self.suffix}"
        build_engine(job.source, artifact, plan, timing_cache=job.cache_dir / "timing.cache")
        return BuildOutput(artifact, {"tensorrt": version}, {"plan": asdict(plan)}, gpu=gpu, note=f"native TensorRT {version} on {gpu['name']}")

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None) -> Runner:
        if manifest is None:
            raise ManifestError(f"{artifact}: a TensorRT engine needs its manifest")
        return TensorRTRunner(artifact, manifest)

    def profile(self, artifact: Path, manifest: Manifest | None, x: np.ndarray, *, iterations: int, warmup: int) -> Timings:
        """TensorRT's IProfiler: each layer's time per ``execute_async_v3``, the layers' names as the engine inspector shows
        them (fused layers read ``a + b``)."""
        import time

        if manifest is None:
            raise ManifestError(f"{artifact}: a TensorRT engine needs its manifest")
        trt = _trt()
        totals: dict[str, float] = {}

        class LayerTimes(trt.IProfiler):  # type: ignore[misc, name-defined]
            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        runner = TensorRTRunner(artifact, manifest)
        runs: list[float] = []
        with runner:
            for _ in range(warmup):
                runner.infer(x)
            runner.context.profiler = LayerTimes()
            for _ in range(iterations):
                t0 = time.perf_counter()
                runner.infer(x)
                runs.append((time.perf_counter() - t0) * 1e3)
        return Timings([NodeTime(n, "layer", ms / iterations) for n, ms in totals.items()], runs, f"TensorRT {trt.__version__} IProfiler")


BACKEND = TensorRTBackend()
