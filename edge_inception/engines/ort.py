"""ONNX Runtime backend: the CPU with graph optimisations applied offline; NVIDIA GPUs through the CUDA execution
provider (and the TensorRT one, where its libraries really load).

GPU facts this module acts on (measured on an H100 with onnxruntime-gpu 1.30, see benchmarks/results/gpu/):

* ``get_available_providers()`` lists ``TensorrtExecutionProvider`` whenever the package was built with it, whether
  or not TensorRT's libraries are on the machine; a session then prints an "EP Error" banner and falls back. So a
  provider counts as usable only after a probe session, in a subprocess, actually ran on it (:func:`provider_missing`).
* The CUDA provider runs FP32 convolutions in TF32 by default (6.96e-04 relative error against the CPU). FP32
  artifacts ask for ``use_tf32=0`` unless built with ``--allow-tf32``; TensorRT's provider has no such switch, so a
  strict FP32 build does not use it.
* IO binding with the output kept on the device, and for fixed input shapes a captured CUDA graph, cut batch-1 latency
  from 2.2 to 1.6 ms; ``prefer_nhwc=1`` made every case slower, so it is not used.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.graph_ops import fold_for_cpu
from ..errors import BackendUnavailableError, EdgeInceptionError, ModelFileError
from ..fileio import write_failure
from ..onnx_file import ort_session, run_session
from ..vocab import Backend, Precision
from .manifest import Manifest
from .registry import BuildJob, BuildOutput, NoPeerQuantizer
from .runner import NodeTime, Runner, Timings
from .targets import Target

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_PACKAGES = {
    CUDA: "onnxruntime-gpu built for this machine's CUDA (pip install 'edge-inception[gpu]')",
    TENSORRT: "TensorRT's libraries where onnxruntime-gpu can load them (pip install 'edge-inception[gpu,tensorrt]')",
}

# The probe: one ReLU on a 1 x 3 x 8 x 8 tensor, run on the named provider alone, fallback off; prints the provider
# the session really got. In a subprocess, so that a provider that fails (or aborts) in C++ costs the caller nothing.
_PROBE = """
import sys
import onnxruntime as ort
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
o = ort.SessionOptions()
o.log_severity_level = 3
s = ort.InferenceSession(m.SerializeToString(), o, providers=[sys.argv[1]], enable_fallback=0)
import numpy as np
s.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
print("PROVIDER", s.get_providers()[0])
"""


@functools.cache
def provider_missing(name: str) -> str | None:
    """Why the execution provider ``name`` cannot run here, or None: listed by this onnxruntime build, and a probe
    session created on it alone really runs on it. Probed once per process."""
    import onnxruntime as ort

    if name == CPU:
        return None
    if name not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {name}: install {PROVIDER_PACKAGES.get(name, 'a build that has it')}"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, name], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{name} did not answer a probe within 300 s"
    if proc.returncode == 0 and f"PROVIDER {name}" in proc.stdout:
        return None
    lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    why = lines[-1][:200] if lines else f"exit code {proc.returncode}"
    return f"{name} is listed by onnxruntime {ort.__version__} but does not load here ({why}): install {PROVIDER_PACKAGES.get(name, '')}"


def provider_chain(target: Target, precision: Precision, providers: tuple[str, ...], cache_dir: Path, *, allow_tf32: bool = False,
                   cuda_graph: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The execution providers to ask for, in priority order, with their options. CPU comes last: it takes any node
    the GPU providers lack (a GoogLeNet has none)."""
    chain: list[tuple[str, dict[str, Any]]] = []
    for name in providers:
        if name == TENSORRT:
            options: dict[str, Any] = {
                "trt_fp16_enable": precision in (Precision.fp16, Precision.int8),
                "trt_int8_enable": precision is Precision.int8,
                "trt_max_workspace_size": target.workspace_mb << 20,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache_dir),
                "trt_builder_optimization_level": target.builder_optimization_level,
            }
            if target.dla_core is not None and precision is not Precision.fp32:
                options.update({"trt_dla_enable": True, "trt_dla_core": target.dla_core})
            if cuda_graph:
                options["trt_cuda_graph_enable"] = True
            chain.append((TENSORRT, options))
        elif name == CUDA:
            options = {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": 1 if allow_tf32 else 0}
            if cuda_graph:
                options["enable_cuda_graph"] = 1
            chain.append((CUDA, options))
    return [*chain, (CPU, {})]


def require_providers(chain: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse to run an artifact whose providers are not usable here, instead of running it somewhere else."""
    for name, _ in chain:
        why = provider_missing(name)
        if why:
            raise BackendUnavailableError(f"this artifact runs on {name}: {why}")


def build_cpu(source: Path, artifact: Path, threads: int) -> int:
    """Apply ONNX Runtime's full graph optimisation (fusions, QDQ -> QLinear, NCHWc layouts) and save the result.

    Weight-only INT8 stages are folded to float first (see :func:`~edge_inception.convert.graph_ops.fold_for_cpu`);
    returns how many.
    """
    model, folded = fold_for_cpu(source)
    try:
        ort_session(model, threads=threads, save_optimized_to=artifact)
    except ModelFileError as exc:  # the model ONNX Runtime refused (its reason), unless the disk filled while it wrote
        why = write_failure(artifact.parent, exc)
        if why.startswith("No space left"):
            raise EdgeInceptionError(f"ONNX Runtime could not write the optimised model: {why}") from exc
        raise ModelFileError(f"{source}: {str(exc).split(': ', 1)[1]}") from exc
    return folded


GRAPH_OPTIONS = ("enable_cuda_graph", "trt_cuda_graph_enable")  # the CUDA and TensorRT providers' CUDA graph switches


def captures_graph(chain: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether any provider of ``chain`` is asked to capture and replay a CUDA graph."""
    return any(o.get(key) for _, o in chain for key in GRAPH_OPTIONS)


def without_graph(chain: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``chain`` with every provider's CUDA graph switch removed."""
    return [(n, {k: v for k, v in o.items() if k not in GRAPH_OPTIONS}) for n, o in chain]


def gpu_session(artifact: Path, chain: list[tuple[str, dict[str, Any]]]):  # -> (onnxruntime.InferenceSession, chain used)
    """A session on the GPU providers of ``chain``. If a captured CUDA graph cannot be had (a node the GPU providers
    lack), the session is made again without it. Refuses a session that did not get the first provider it asked for."""
    try:
        session = ort_session(artifact, providers=chain)
    except Exception as exc:
        if not captures_graph(chain):
            raise BackendUnavailableError(f"ONNX Runtime could not create a session on {chain[0][0]}: {str(exc).splitlines()[0][:300]}") from exc
        log.warning("CUDA graph capture is not possible for this model (%s); running without it", str(exc).splitlines()[0][:200])
        chain = without_graph(chain)
        session = ort_session(artifact, providers=chain)
    got = session.get_providers()
    if not got or got[0] != chain[0][0]:
        raise BackendUnavailableError(f"ONNX Runtime gave this session {got[:1] or 'no provider'} instead of {chain[0][0]}")
    return session, [(n, o) for n, o in chain if n in got]


class OrtRunner(Runner):
    """One ONNX Runtime session. On a GPU the input is copied to the device through IO binding and the output stays
    there until read back; with a captured CUDA graph, the input's device buffer is updated in place and the graph
    replayed."""

    name = "ort"

    def __init__(self, path: Path, *, threads: int = 0, optimized: bool = True,
                 providers: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.path, self.threads, self.optimized = path, threads, optimized  # optimized: done at build time, load as is
        self.providers = providers or [(CPU, {})]
        self.session: Any = None
        self.binding: Any = None
        self.device = "cpu" if self.providers[0][0] == CPU else "cuda"
        self.graph = False  # replaying a CUDA graph: known once the session exists (activate)

    def activate(self) -> None:
        require_providers(self.providers)
        if self.device == "cpu":
            self.session = ort_session(self.path, threads=self.threads, optimize=not self.optimized, providers=self.providers)
            return
        self.session, self.providers = gpu_session(self.path, self.providers)
        self.input_name, self.output_name = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        self.binding = self.session.io_binding()
        self.graph = captures_graph(self.providers)
        self.device_input: Any = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return run_session(self.session, batch)
        import onnxruntime as ort

        x = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.graph:
            self.binding.bind_cpu_input(self.input_name, x)
            self.binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(self.binding)
            return np.asarray(self.binding.copy_outputs_to_cpu()[0])
        # a captured graph replays fixed device addresses: bind once, then update the input buffer in place
        if self.device_input is None or tuple(self.device_input.shape()) != x.shape:
            self.device_input = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            out_shape = [x.shape[0], *self.session.get_outputs()[0].shape[1:]]
            self.device_output = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", 0)
            self.binding.bind_ortvalue_input(self.input_name, self.device_input)
            self.binding.bind_ortvalue_output(self.output_name, self.device_output)
        else:
            self.device_input.update_inplace(x)
        self.session.run_with_iobinding(self.binding)
        return np.asarray(self.device_output.numpy())

    def deactivate(self) -> None:
        self.binding = self.session = None


class OrtBackend(NoPeerQuantizer):
    """ONNX Runtime: ``<name>.ort.onnx``, optimised offline for the CPU; for GPUs the source graph with provider options."""

    name = Backend.ort
    suffix = ".ort.onnx"
    def available(self) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else "ONNX Runtime is not installed: pip install onnxruntime"

    def build(self, job: BuildJob) -> BuildOutput:
        import onnxruntime as ort

        artifact = job.work_dir / f"{job.stem}{self.suffix}"
        libraries = {"onnxruntime": ort.__version__}
        if job.target.device == "cpu":
            folded = build_cpu(job.source, artifact, job.threads)
            return BuildOutput(artifact, libraries, {"providers": [(CPU, {})], "offline_optimized": True, "folded_weight_dequantize": folded})
        chain = provider_chain(job.target, job.precision, job.providers, job.cache_dir / "trt-cache", allow_tf32=job.allow_tf32,
                               cuda_graph=job.fixed_batch is not None)
        require_providers(chain)
        shutil.copyfile(job.source, artifact)  # GPU providers optimise (and cache TensorRT engines) when the session loads
        _, used = gpu_session(artifact, chain)  # what the session really got: the manifest records that, nothing else
        graph = captures_graph(used)
        return BuildOutput(artifact, libraries, {"providers": used, "offline_optimized": False, "cuda_graph": graph},
                           note=f"ONNX Runtime {ort.__version__} on {', '.join(n for n, _ in used if n != CPU)}"
                                + (", CUDA graph" if graph else ""))

    def profile(self, artifact: Path, manifest: Manifest | None, x: np.ndarray, *, iterations: int, warmup: int) -> Timings:
        """ONNX Runtime's profiler: each node's kernel time in the last ``iterations`` runs, and each run's duration."""
        import json
        import tempfile

        runner = self._runner(artifact, manifest, None)
        require_providers(runner.providers)
        # a replayed CUDA graph hides its nodes from the profiler (and needs device-bound inputs): profile without it
        providers = without_graph(runner.providers)
        with tempfile.TemporaryDirectory(prefix="edge-inception-profile-") as tmp:
            session = ort_session(artifact, threads=runner.threads, optimize=not runner.optimized, providers=providers,
                                  profile_prefix=Path(tmp) / "ort")
            for _ in range(warmup + iterations):
                run_session(session, x)
            events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-iterations:]
        totals: dict[str, float] = {}
        ops: dict[str, str] = {}
        for e in events:
            name = str(e.get("name", ""))
            if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
                continue
            if not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
                continue
            node = name[: -len("_kernel_time")]
            totals[node] = totals.get(node, 0.0) + e["dur"] / 1e3
            ops[node] = str(e.get("args", {}).get("op_name", ""))
        nodes = [NodeTime(n, ops[n], ms / len(runs)) for n, ms in totals.items()]
        return Timings(nodes, [r["dur"] / 1e3 for r in runs], f"ONNX Runtime {__import__('onnxruntime').__version__} profiler")

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None) -> Runner:
        return self._runner(artifact, manifest, threads)

    def _runner(self, artifact: Path, manifest: Manifest | None, threads: int | None) -> OrtRunner:
        if manifest is None:  # a plain ONNX file: ONNX Runtime's own defaults, as a user would run it
            return OrtRunner(artifact, threads=threads or 0, optimized=False)
        n = threads if threads is not None else manifest.threads
        return OrtRunner(artifact, threads=n, optimized=bool(manifest.options.get("offline_optimized", False)),
                         providers=manifest.providers or None)


BACKEND = OrtBackend()
