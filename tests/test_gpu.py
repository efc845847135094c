"""GPU targets: the runtime choice, provider options and TF32 policy as plain functions (everywhere), and the real
thing through ONNX Runtime's CUDA provider where one is usable."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.engines.build import build, judge
from edge_inception.engines.choose import Availability, choose
from edge_inception.engines.manifest import canonical_sha256, manifest_path
from edge_inception.engines.ort import CPU, CUDA, TENSORRT, captures_graph, provider_chain, provider_missing, require_providers, without_graph
from edge_inception.engines.targets import get_target
from edge_inception.engines.tensorrt import plan_build
from edge_inception.errors import BackendUnavailableError, VerificationError
from edge_inception.evaluate.verify import Parity
from edge_inception.vocab import Backend, Precision

runner = CliRunner()
ALL = Availability(None, None, None)
NO_NATIVE = Availability("TensorRT is not installed", None, None)
CUDA_ONLY = Availability("TensorRT is not installed", "libnvinfer.so.10: cannot open shared object file", None)
NOTHING = Availability("TensorRT is not installed", "no TensorrtExecutionProvider", "no CUDAExecutionProvider")


# --- the choice ----------------------------------------------------------------------------------------------------

def test_cpu_targets_probe_nothing_and_use_their_backend():
    cpu = get_target("cpu")
    assert choose(cpu, Precision.int8, None, NOTHING).backend is Backend.ort
    assert choose(cpu, Precision.int8, Backend.openvino, NOTHING).backend is Backend.openvino


def test_gpu_prefers_native_tensorrt_then_its_provider_then_cuda():
    gpu = get_target("gpu")
    assert choose(gpu, Precision.fp16, None, ALL).backend is Backend.tensorrt
    c = choose(gpu, Precision.fp16, None, NO_NATIVE)
    assert c.backend is Backend.ort and c.providers == (TENSORRT, CUDA) and "native TensorRT: TensorRT is not installed" in c.line
    c = choose(gpu, Precision.int8, None, CUDA_ONLY)
    assert c.providers == (CUDA,) and "libnvinfer.so.10" in c.line  # the line says why the TensorRT provider was passed over


def test_strict_fp32_never_uses_the_tensorrt_provider():
    gpu = get_target("gpu")
    c = choose(gpu, Precision.fp32, None, NO_NATIVE)
    assert c.providers == (CUDA,) and "TF32" in c.line
    assert choose(gpu, Precision.fp32, None, NO_NATIVE, allow_tf32=True).providers == (TENSORRT, CUDA)


def test_forced_and_missing_backends_fail_with_the_reason():
    gpu = get_target("gpu")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        choose(gpu, Precision.fp16, Backend.tensorrt, CUDA_ONLY)
    assert choose(gpu, Precision.fp16, Backend.ort, ALL).backend is Backend.ort  # --backend ort wins over native TensorRT
    with pytest.raises(BackendUnavailableError) as err:
        choose(gpu, Precision.fp16, None, NOTHING)
    assert all(why in str(err.value) for why in ("TensorRT is not installed", "no TensorrtExecutionProvider", "no CUDAExecutionProvider"))


# --- provider options and the TF32 policy ------------------------------------------------------------------------------

def test_provider_chain_options(tmp_path):
    gpu, orin = get_target("gpu"), get_target("jetson-agx-orin")
    chain = provider_chain(gpu, Precision.fp32, (CUDA,), tmp_path)
    assert [n for n, _ in chain] == [CUDA, CPU]  # the CPU last, for nodes a GPU provider lacks
    assert chain[0][1] == {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": 0}
    assert provider_chain(gpu, Precision.fp32, (CUDA,), tmp_path, allow_tf32=True)[0][1]["use_tf32"] == 1
    graphed = provider_chain(gpu, Precision.fp16, (CUDA,), tmp_path, cuda_graph=True)
    assert graphed[0][1]["enable_cuda_graph"] == 1 and captures_graph(graphed)
    assert without_graph(graphed) == provider_chain(gpu, Precision.fp16, (CUDA,), tmp_path)  # what profile and the fallback use
    assert not captures_graph(without_graph(graphed))
    trt = dict(provider_chain(orin, Precision.int8, (TENSORRT, CUDA), tmp_path / "cache"))[TENSORRT]
    assert trt["trt_int8_enable"] and trt["trt_fp16_enable"] and trt["trt_dla_enable"] and trt["trt_dla_core"] == 0
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache") and trt["trt_max_workspace_size"] == 4096 << 20
    fp32 = dict(provider_chain(orin, Precision.fp32, (TENSORRT,), tmp_path))[TENSORRT]
    assert not fp32["trt_fp16_enable"] and not fp32["trt_int8_enable"] and "trt_dla_enable" not in fp32  # DLA runs FP16/INT8 only


def test_tensorrt_clears_tf32_for_strict_fp32():
    gpu = get_target("gpu")
    assert plan_build(gpu, "fp32", "10.13.0", 224).cleared_flags == ("TF32",)
    assert plan_build(gpu, "fp32", "10.13.0", 224, allow_tf32=True).cleared_flags == ()
    assert plan_build(gpu, "fp16", "10.13.0", 224).cleared_flags == ()


def test_judge_by_device_and_tf32():
    def parity(rel, cos=1.0):
        return Parity(8, rel, rel, 1.0, 1.0, cos)

    judge(parity(5e-6), Precision.fp32, "a", "s")
    with pytest.raises(VerificationError, match="1e-05"):
        judge(parity(5e-5), Precision.fp32, "a", "s")
    judge(parity(5e-5), Precision.fp32, "a", "s", device="cuda")  # cuDNN's summation orders
    with pytest.raises(VerificationError, match="0.0001"):
        judge(parity(7e-4), Precision.fp32, "a", "s", device="cuda")  # TF32's error is refused when strict ...
    judge(parity(7e-4, cos=0.9999), Precision.fp32, "a", "s", device="cuda", tf32=True)  # ... and judged by cosine when allowed


# --- on this machine -----------------------------------------------------------------------------------------------------

def test_provider_probe_here():
    import onnxruntime as ort

    assert provider_missing(CPU) is None
    if CUDA not in ort.get_available_providers():
        why = provider_missing(CUDA)
        assert why and "onnxruntime-gpu" in why
        with pytest.raises(BackendUnavailableError, match="this artifact runs on CUDAExecutionProvider"):
            require_providers([(CUDA, {}), (CPU, {})])


def test_the_choice_is_one_line_and_no_banner(built_fp32, trained, tmp_path):
    """On a machine without a usable GPU runtime, a GPU build fails in one line naming what is missing; where one is
    usable, the build names the runtime it chose. Either way ONNX Runtime's fallback banner never reaches the user."""
    code = ("import sys; from edge_inception.__main__ import main; sys.argv = ['edge-inception', 'build', sys.argv[1], '--target', 'gpu', "
            "'-o', sys.argv[2]]; main()")
    r = subprocess.run([sys.executable, "-c", code, str(trained.onnx), str(tmp_path / "gpu")], capture_output=True, text=True, timeout=900)
    assert "EP Error" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    if r.returncode == 0:
        assert r.stdout.startswith("runtime: ")
    else:
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_artifact_for_a_missing_provider_is_refused(built_fp32, trained, tmp_path):
    import onnxruntime as ort

    if CUDA in ort.get_available_providers() and provider_missing(CUDA) is None:
        pytest.skip("the CUDA provider is usable here: nothing to refuse")
    art = tmp_path / built_fp32.name
    art.write_bytes(built_fp32.read_bytes())
    data = json.loads(manifest_path(built_fp32).read_text())
    data["options"]["providers"] = [[CUDA, {"use_tf32": 0}], [CPU, {}]]
    data["device"] = "cuda"
    data["manifest_sha256"] = canonical_sha256(data)  # a manifest as a GPU build writes it
    manifest_path(art).write_text(json.dumps(data))
    r = runner.invoke(app, ["predict", str(art), str(next((trained.data / "val" / "cat").glob("*.png")))])
    assert r.exit_code == 1 and "this artifact runs on CUDAExecutionProvider" in r.stderr  # not silently on the CPU


# --- on a GPU: through ONNX Runtime's CUDA provider -----------------------------------------------------------------------

def _cuda_usable() -> bool:
    try:
        return provider_missing(CUDA) is None
    except Exception:
        return False


needs_cuda = pytest.mark.skipif(not _cuda_usable(), reason="ONNX Runtime's CUDA provider is not usable here (onnxruntime-gpu and a GPU)")


@pytest.fixture(scope="module")
def gpu_sources(trained, tmp_path_factory):
    from edge_inception.convert.quantize import quantize_model

    out = tmp_path_factory.mktemp("gpu_q")
    fp16 = quantize_model(trained.onnx, "fp16", output=out / "demo.fp16.onnx", calib=trained.data / "train", holdout=trained.data / "val")
    int8 = quantize_model(trained.onnx, "int8", output=out / "demo.int8.onnx", calib=trained.data / "train", holdout=trained.data / "val",
                          target="gpu", min_agreement=0.9)
    return {"fp32": trained.onnx, "fp16": fp16.path, "int8": int8.path}


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_cuda_provider_builds_verifies_and_predicts(gpu_sources, trained, tmp_path, precision):
    from edge_inception.data.images import load_batch
    from edge_inception.engines.registry import open_runner

    result = build(gpu_sources[precision], "gpu", backend="ort", output_dir=tmp_path / "gpu")
    m = result.manifest
    assert m.device == "cuda" and m.providers[0][0] in (CUDA, TENSORRT) and m.options["tf32"] is False
    if precision == "fp32":
        assert result.parity.max_rel_error <= 1e-4  # strict FP32: no TF32
    x = load_batch(sorted((trained.data / "val").rglob("*.png"))[:8], 64)
    with open_runner(result.artifact) as gpu_run, open_runner(gpu_sources[precision]) as cpu_run:
        assert gpu_run.device == "cuda"
        got, ref = gpu_run.infer(x), cpu_run.infer(x)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.875
    r = runner.invoke(app, ["predict", str(result.artifact), str(next((trained.data / "val" / "cat").glob("*.png"))), "--json"])
    assert r.exit_code == 0, r.output


@needs_cuda
def test_cuda_bench_rows_name_their_device(trained, tmp_path):
    art = build(trained.onnx, "gpu", backend="ort", output_dir=tmp_path / "gpu").artifact
    r = runner.invoke(app, ["bench", str(art), "--iterations", "5", "--rounds", "1", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert {row["device"] for row in rows} == {"cuda"}  # the baselines run on the artifact's device too
    engines = {row["engine"] for row in rows}
    assert "ort-default" in engines
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            assert {"torch-eager", "torch-fp16-cl", "torch-fp16-cl-graph"} <= engines
    assert np.isfinite([row["latency_ms"]["p50"] for row in rows]).all()
