"""OpenVINO runtime (optional extra): x86 CPUs and Intel GPUs. The artifact is OpenVINO IR: ``<name>.xml`` (the graph,
hashed as the artifact) and ``<name>.bin`` (the weights, a companion whose hash the manifest also carries)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, OutputPathError
from ..fileio import library_prints_to_log
from ..limits import usable_cpus
from ..vocab import Backend, Precision
from .manifest import Manifest
from .registry import BuildJob, BuildOutput
from .runner import NodeTime, Runner, Timings

INSTALL_HINT = "OpenVINO is not installed: pip install 'edge-inception[openvino]'"
NNCF_HINT = "NNCF is not installed: pip install 'edge-inception[openvino]'"


def _ov():  # -> module
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(INSTALL_HINT) from exc
    return openvino


def openvino_version() -> str:
    return str(_ov().__version__)


def build_ir(source: Path, artifact: Path) -> None:
    """ONNX (including Q/DQ INT8) -> OpenVINO IR; weights go to the .bin beside the .xml."""
    ov = _ov()
    _save_ir(ov.convert_model(str(source)), source, artifact)


def _save_ir(model: Any, source: Path, artifact: Path) -> None:
    """``ov.save_model`` (FP32 weights kept), its failure one :class:`OutputPathError`: OpenVINO's C++ streams say
    "basic_ios::clear: iostream error", not why, so a folder with less room than the source model is named as full."""
    import shutil

    try:
        _ov().save_model(model, str(artifact), compress_to_fp16=False)
    except RuntimeError as exc:
        free = shutil.disk_usage(artifact.parent).free
        why = f"No space left on device ({free} bytes free)" if free < source.stat().st_size else f"OpenVINO's save_model: {exc}"
        raise OutputPathError(f"cannot write {artifact}: {why}") from exc


def nncf_quantize_ir(source: Path, artifact: Path, batches: list[np.ndarray]) -> str:
    """FP32 ONNX -> OpenVINO IR quantized to INT8 by NNCF's ``nncf.quantize`` with its defaults (mixed preset's
    performance default, symmetric per-channel weights, min-max ranges, fast bias correction) on ``batches`` (1 x 3 x S x S
    float32 each, the calibration crops our quantizer takes). Returns NNCF's version. Raises BackendUnavailableError
    without NNCF or OpenVINO."""
    ov = _ov()
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailableError(NNCF_HINT) from exc
    with library_prints_to_log("nncf"):  # its progress bars (rich) print on stdout, -q or not
        quantized = nncf.quantize(ov.convert_model(str(source)), nncf.Dataset(batches), subset_size=len(batches))
    _save_ir(quantized, source, artifact)
    return str(nncf.__version__)


def runtime_precision(artifact: Path, inference_precision: str | None) -> dict[str, str]:
    """What OpenVINO's CPU plugin says it computes ``artifact`` in (``INFERENCE_PRECISION_HINT`` read back from the compiled
    model: ``bf16`` or ``f32``) and the CPU's ``OPTIMIZATION_CAPABILITIES`` (``BF16``, ``INT8``, ...): its chosen kernels are
    not readable, these are."""
    ov = _ov()
    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    compiled = core.compile_model(str(artifact), "CPU", config)
    reported = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {"runtime_inference_precision": str(getattr(reported, "to_string", lambda: reported)()),
            "cpu_capabilities": ",".join(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}


def pins_threads(threads: int, usable: int) -> bool:
    """Whether OpenVINO may pin its inference threads to cores (``ENABLE_CPU_PINNING``): only when the engine takes
    every CPU this process may use (``threads`` 0, its default, or at least ``usable``). An engine given fewer shares
    the machine (two ``--cluster`` workers of one thread each, a stream's 1 decoder + 1 engine split), and each
    process's pinned threads go to the same first cores: measured on a 2-core EPYC, two single-thread processes of an
    INT8 GoogLeNet at 224 px ran 31 + 31 inferences/s pinned, 63 + 62 unpinned."""
    return threads <= 0 or threads >= usable


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: Path, *, threads: int = 0, hint: str = "LATENCY", device: str = "CPU", inference_precision: str | None = None,
                 perf_counters: bool = False) -> None:
        self.path, self.threads, self.hint, self.device = path, threads, hint, device
        self.inference_precision, self.perf_counters = inference_precision, perf_counters
        self.request: Any = None

    def activate(self) -> None:
        ov = _ov()
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if not pins_threads(self.threads, usable_cpus()):
            config["ENABLE_CPU_PINNING"] = False
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.perf_counters:
            config["PERF_COUNT"] = True
        compiled = ov.Core().compile_model(str(self.path), self.device, config)
        self.request = compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: the request reads the array in place (a sync call: it outlives the inference), no copy per call
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        return np.asarray(next(iter(result.values())))

    def deactivate(self) -> None:
        self.request = None


class OpenVinoBackend:
    name = Backend.openvino
    suffix = ".xml"
    inference_precisions: tuple[str, ...] = ("bf16",)

    def available(self) -> str | None:
        return None if importlib.util.find_spec("openvino") else INSTALL_HINT

    def quantizers(self) -> dict[str, str | None]:
        return {"nncf": None if importlib.util.find_spec("nncf") else NNCF_HINT}

    def quantize_peer(self, quantizer: str, source: Path, artifact: Path, batches: list[Any]) -> str:
        """``nncf``: :func:`nncf_quantize_ir`. Raises BackendUnavailableError for another name or without NNCF."""
        why = self.quantizers().get(quantizer, f"openvino has no peer quantizer '{quantizer}'")
        if why:
            raise BackendUnavailableError(why)
        return nncf_quantize_ir(source, artifact, batches)

    def build(self, job: BuildJob) -> BuildOutput:
        artifact = job.work_dir / f"{job.stem}{self.suffix}"
        libraries = {"openvino": openvino_version()}
        options: dict[str, Any] = {}
        if job.quantizer:  # INT8 by NNCF from the FP32 source, calibrated on the crops our quantizer calibrates on
            from ..convert.calibration import image_batches, release_decoded, select_images

            try:
                sets = select_images(job.calib, job.holdout, job.calib_size)  # a --holdout photo is never calibrated on
                final = sets.final or sets.calibration
                batches = image_batches(final.samples, job.image_size, batch=1)
            finally:
                release_decoded()  # the photos decoded for it are let go (calibration's decoded), as at a quantization's end
            libraries[job.quantizer] = self.quantize_peer(job.quantizer, job.source, artifact, batches)
            options |= {"quantizer": job.quantizer, "calibration": final.source, "calibration_sha256": final.as_dict()["sha256"]}
        else:
            build_ir(job.source, artifact)
        # OpenVINO's CPU plugin computes float layers in bf16 where the CPU has it (AVX512_BF16, AMX): an FP32 artifact
        # asks for f32, so that it computes what its source computes (or for the reduced float it was built for);
        # reduced-precision artifacts keep the plugin's choice
        if job.precision is Precision.fp32 and not job.quantizer:
            options["inference_precision"] = job.inference_precision or "f32"
        if job.target.device == "cpu":
            options |= runtime_precision(artifact, options.get("inference_precision"))
        return BuildOutput(artifact, libraries, options, companions=[artifact.with_suffix(".bin")])

    def open(self, artifact: Path, manifest: Manifest | None, *, threads: int | None = None, perf_counters: bool = False) -> Runner:
        n = threads if threads is not None else (manifest.threads if manifest else 0)
        precision = manifest.options.get("inference_precision") if manifest else None
        return OpenVinoRunner(artifact, threads=n, inference_precision=precision if isinstance(precision, str) else None,
                              perf_counters=perf_counters)

    def profile(self, artifact: Path, manifest: Manifest | None, x: np.ndarray, *, iterations: int, warmup: int) -> Timings:
        """OpenVINO's per-layer performance counters (``PERF_COUNT``), read after each of ``iterations`` inferences."""
        import time

        runner = self.open(artifact, manifest, perf_counters=True)
        totals: dict[str, float] = {}
        ops: dict[str, str] = {}
        runs: list[float] = []
        with runner:
            request = runner.request  # type: ignore[attr-defined]
            for i in range(warmup + iterations):
                t0 = time.perf_counter()
                runner.infer(x)
                if i < warmup:
                    continue
                runs.append((time.perf_counter() - t0) * 1e3)
                for layer in request.get_profiling_info():
                    totals[layer.node_name] = totals.get(layer.node_name, 0.0) + layer.real_time.total_seconds() * 1e3
                    ops[layer.node_name] = f"{layer.node_type}/{layer.exec_type}"
        nodes = [NodeTime(n, ops[n], ms / iterations) for n, ms in totals.items() if ms > 0]
        return Timings(nodes, runs, f"OpenVINO {openvino_version()} performance counters")


BACKEND = OpenVinoBackend()
