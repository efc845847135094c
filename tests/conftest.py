from __future__ import annotations

import os

# The pytest-xdist workers share the cores (Makefile: three on two): an engine's idle threads sleep instead of
# spinning, or each worker's spin burns the cores the others compute on. Set before PyTorch's OpenMP starts; the CLI runs, servers and
# Ray workers the tests start inherit it. ONNX Runtime through the product's own setting (README, "Testing").
os.environ.setdefault("EDGE_INCEPTION_ORT_SPINNING", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenVINO's and NNCF's usage telemetry (openvino_telemetry: on unless a consent file in ~/intel says no) sends each
# event from a forked process: 40 s of the suite's CPU in a py-spy profile of make test, forks of workers that hold
# PyTorch and ONNX Runtime, all to fail with no network. Both turn it off in a CI job by their own rule (CI=true:
# openvino_telemetry's OptInChecker._run_in_ci, disable_in_ci=True in ovc and NNCF), which .ci/run may set or not; the
# suite sets it so that a run here costs what it costs there. Nothing of ours reads CI.
os.environ.setdefault("CI", "true")

import signal  # noqa: E402

# The signal tests send Ctrl-C (SIGINT) to the commands they start and expect its exit status (130). A shell without job
# control starts a background job with SIGINT ignored, and an ignored signal stays ignored across fork and exec, so every
# command the suite started ignored Ctrl-C too (as nohup means it to): eight signal tests failed on timeouts when the
# suite ran as `make test &`. The suite's commands get Ctrl-C's default; the product keeps honouring an ignored SIGINT.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import functools  # noqa: E402

import typer.main  # noqa: E402
import typer.testing  # noqa: E402

# Typer's CliRunner builds the whole command tree (every command's parameters from its signature and annotations) at
# each invoke: 50-70 ms, some hundreds of times a run (a py-spy profile of make test: about 24 core-s). The tree of an
# app does not change between invokes, so each worker builds it once; the commands the suite starts as processes still
# build theirs as a user's do.
typer.testing._get_command = functools.cache(typer.main.get_command)

import hashlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from edge_inception.evaluate.cpu import CpuInfo  # noqa: E402
from edge_inception.model.googlenet import GoogLeNet, init_weights  # noqa: E402

TRAIN_IMAGE_SIZE = 64
TRAIN_STEPS = 200


# pytest-xdist (`make pytest` runs `-n 3 --dist loadgroup`): each test file runs whole on one worker, the files that
# start Ray clusters together on one (tests/xdist_groups.py says how and why). Serial runs ignore it.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from .xdist_groups import make_scheduler

    return make_scheduler(config, log)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _load_owner_mark_kept_in_its_test():
    """``mark_ours()`` (called by benchmarks' ``_record.Record``) puts the benchmark's mark in ``os.environ``, so that
    every process started afterwards counts as ours. In a test it must not outlive the test: a later test's stand-in
    for another user's process, started by the same worker, carried the mark and was counted as ours (a CI failure of
    test_bench's under-load round: others 0.05 of a core while the outsider spun a full core)."""
    from edge_inception.evaluate.load import OWNER_ENV

    before = os.environ.get(OWNER_ENV)
    yield
    if before is None:
        os.environ.pop(OWNER_ENV, None)
    else:
        os.environ[OWNER_ENV] = before


def seeded_state_dict(variant: str = "torchvision", num_classes: int = 1000, aux: bool = True, seed: int = 1) -> dict:
    return init_weights(GoogLeNet(variant, num_classes, aux_logits=aux), seed).state_dict()


def ort_only_target(folder: Path, precisions: tuple[str, ...]) -> Path:
    """A target file of ONNX Runtime alone on the CPU with ``precisions`` (written into ``folder``): the cheapest pipeline,
    for tests whose assertions do not depend on the backends it builds."""
    listed = ", ".join(f'"{p}"' for p in precisions)
    path = folder / "cpu-ort.toml"
    path.write_text('name = "cpu-ort"\ndescription = "ONNX Runtime alone"\ndevice = "cpu"\nbackends = ["ort"]\n'
                    f'default_precision = "fp32"\nprecisions = [{listed}]\nthreads = 0\nbatch = {{ min = 1, opt = 1, max = 32 }}\n')
    return path


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The demo data set where the product keeps it (``demo-data``'s default folder under the cache folder): made once for
    all workers and runs (its builders' lock; the pipeline's verify stage reads the same folder), never written by a test."""
    from edge_inception.data.demo_data import default_demo_dir, make_demo_dataset

    return make_demo_dataset(default_demo_dir())


@dataclass
class Trained:
    checkpoint: Path
    onnx: Path
    data: Path
    result: object


TRAIN_CONFIG = {"max_steps": TRAIN_STEPS, "batch_size": 16, "image_size": TRAIN_IMAGE_SIZE, "lr": 0.03, "threads": 2}


def _train_and_export(folder: Path, data: Path) -> dict:
    """Train on ``data`` and export into ``folder``: demo.pth (+ its .json sidecar) and demo.onnx; the TrainResult as JSON."""
    import dataclasses

    from edge_inception.convert.export import export_model
    from edge_inception.model.train import TrainConfig, train

    torch.set_num_threads(TRAIN_CONFIG["threads"])
    cfg = {k: v for k, v in TRAIN_CONFIG.items() if k != "threads"}
    result = train(TrainConfig(data=data / "train", val=data / "val", output=folder / "demo.pth", **cfg))
    assert result.checkpoint is not None
    export_model(result.checkpoint, folder / "demo.onnx")
    return {**dataclasses.asdict(result), "checkpoint": result.checkpoint.name}


def _point_at_checkpoint(model: Path, checkpoint: Path) -> None:
    """The export records the absolute path of the checkpoint it came from (the PyTorch baseline reloads it); a cached
    export was made in the cache's building folder, so its record is set to this session's copy (same bytes, same
    sha256 in the metadata)."""
    import onnx

    m = onnx.load(str(model))
    props = {p.key: p for p in m.metadata_props}
    props["checkpoint"].value = str(checkpoint)
    onnx.save(m, str(model))


@pytest.fixture(scope="session")
def trained(demo_data, tmp_path_factory) -> Trained:
    """A GoogLeNet briefly trained on the demo crops, and its verified ONNX export.

    A randomly initialised net gives every image the same class, so fidelity checks need this one. Built once and kept
    between runs while nothing that determines it changes (tests/build_cache.py: training's and export's source, the
    demo crops, the settings, the library versions, the CPU's instruction set); any edit to them trains afresh.
    """
    from edge_inception.model.train import EpochStats, TrainResult

    from .build_cache import cached_build, source_digest, tree_digest, versions

    out = tmp_path_factory.mktemp("trained")
    fields = {"config": TRAIN_CONFIG, "sources": source_digest("edge_inception.model.train", "edge_inception.convert.export"),
              "data": tree_digest([demo_data / "train", demo_data / "val"], demo_data),
              "versions": versions("numpy", "pillow", "onnx", "onnxruntime", "onnxsim")}
    got = cached_build("trained", fields, lambda folder: _train_and_export(folder, demo_data), out, code=(_train_and_export,))
    result = TrainResult(**{**got, "checkpoint": out / got["checkpoint"], "history": [EpochStats(**e) for e in got["history"]]})
    _point_at_checkpoint(out / "demo.onnx", out / "demo.pth")
    return Trained(out / "demo.pth", out / "demo.onnx", demo_data, result)


@pytest.fixture(scope="session")
def built_fp32_result(trained, tmp_path_factory):
    """The trained net built for the CPU target (ONNX Runtime): the BuildResult."""
    from edge_inception.engines.build import build

    return build(trained.onnx, "cpu", output_dir=tmp_path_factory.mktemp("built_fp32"))


@pytest.fixture(scope="session")
def built_fp32(built_fp32_result) -> Path:
    """The trained net built for the CPU target (ONNX Runtime)."""
    return built_fp32_result.artifact


def _quantize_into(folder: Path, src: Path, name: str, precision: str, options: dict) -> dict:
    """``quantize_model`` of ``src`` into ``folder / name`` (and its report), with ``options`` (JSON: the calibration and
    holdout folders as paths, a forced CPU as its fields); the QuantizeResult as JSON (``QuantizeResult.as_dict``)."""
    from edge_inception.convert.quantize import quantize_model
    from edge_inception.evaluate.cpu import CpuInfo

    cpu = options.get("cpu")
    kwargs = {**options, "cpu": CpuInfo(cpu["model"], cpu["arch"], cpu["cores"], frozenset(cpu["flags"])) if cpu else None}
    result = quantize_model(src, precision, output=folder / name, **kwargs).as_dict()
    # the sizes as built: re-pointing at a later session's checkpoint path changes them by that path's length
    return {**result, "built_sizes": {"model": (folder / name).stat().st_size, "source": src.stat().st_size}}


def cached_quantize(label: str, trained: Trained, dest: Path, name: str, precision: str, cpu=None, **options):
    """``quantize_model(trained.onnx, precision, output=dest / name, calib=..., holdout=..., cpu=cpu, **options)``, kept
    between runs as :func:`trained` is (tests/build_cache.py) while nothing that determines it changes: the trained
    checkpoint's bytes, the source of quantization's import closure, the calibration and holdout folders' files, the
    options (a forced CPU among them: its INT8 scheme), this machine's CPU flags (its kernels), the library versions. Any edit to quantization's code
    (or to what it imports) quantizes afresh, so what the tests check is what the code makes now; the tests that call
    ``quantize_model`` with arguments of their own still run it.
    ``label`` names the cache entry (one per fixture). Returns the QuantizeResult, its paths in ``dest``, the model's
    recorded checkpoint this session's."""
    from edge_inception.convert.quantize import AccuracyReport, Precision, QuantizeResult, QuantTarget
    from edge_inception.evaluate.cpu import cpu_info

    from .build_cache import cached_build, source_digest, tree_digest, versions

    folders = {k: Path(v) for k, v in options.items() if k in ("calib", "holdout", "eval_dir") and v is not None}
    forced = None if cpu is None else {"model": cpu.model, "arch": cpu.arch, "cores": cpu.cores, "flags": sorted(cpu.flags)}
    json_options = {**{k: v for k, v in options.items() if k not in folders}, **{k: str(v) for k, v in folders.items()}, "cpu": forced}
    fields = {"precision": precision, "name": name, "options": {k: v for k, v in json_options.items() if k not in folders},
              # this CPU's flags also when a scheme is forced (options' "cpu"): it still runs on this CPU's INT8 kernels
              "cpu_flags": sorted(cpu_info().flags),
              "checkpoint": hashlib.sha256(trained.checkpoint.read_bytes()).hexdigest(),
              "sources": source_digest("edge_inception.convert.quantize", "edge_inception.convert.export"),
              "data": {k: tree_digest([v], v) for k, v in folders.items()},
              "versions": versions("numpy", "pillow", "onnx", "onnxruntime", "scikit-image")}  # the bundled photos: calibration, labels
    got = cached_build(f"quantize-{label}", fields, lambda folder: _quantize_into(folder, trained.onnx, name, precision, json_options), dest,
                       code=(_quantize_into,))
    _point_at_checkpoint(dest / name, trained.checkpoint)
    # The report's sizes are of the files as quantization saw them; both record the checkpoint's absolute path, which
    # this session's differs from in length (pytest-999 vs pytest-1000), so each size moves by its file's measured change.
    built = got.pop("built_sizes")
    accuracy = {k: v for k, v in got["accuracy"].items() if k != "size_ratio"}
    accuracy["size_bytes"] += (dest / name).stat().st_size - built["model"]
    accuracy["fp32_size_bytes"] += trained.onnx.stat().st_size - built["source"]
    return QuantizeResult(**{**got, "path": dest / got["path"], "report_path": dest / got["report_path"], "precision": Precision(got["precision"]),
                             "target": QuantTarget(got["target"]), "accuracy": AccuracyReport(**accuracy)})


@pytest.fixture(scope="session")
def fp16_quantized(trained, tmp_path_factory):
    """The trained net in FP16 (QuantizeResult), judged on the demo crops (kept between runs: :func:`cached_quantize`)."""
    return cached_quantize("fp16", trained, tmp_path_factory.mktemp("fp16"), "demo.fp16.onnx", "fp16", calib=trained.data / "train",
                           holdout=trained.data / "val")


# INT8 tests run with the AVX2 scheme (no VNNI: u8 activations, reduced-range s8 weights) wherever they run, so that a VNNI
# machine cannot hide what that scheme does; the optimised kernels then run whatever the host has
AVX2 = CpuInfo("AVX2 without VNNI (forced)", "x86_64", 2, frozenset({"avx2", "fma"}))


@pytest.fixture(scope="session")
def int8_relaxed(trained, tmp_path_factory):
    """The trained net in pure INT8 (QuantizeResult): the AVX2 scheme, the guard relaxed to 50 % top-1 agreement, so no
    stage is kept in float, and one calibration method, min-max, the cheapest. An INT8 model to build, run and profile
    (tests/test_engines.py), and test_quantize.py's all-INT8 model: its size, its Q/DQ placement, better than chance; not a
    test of the guard nor of the method search (test_quantize.py has those). Kept between runs: :func:`cached_quantize`."""
    return cached_quantize("int8-avx2-full", trained, tmp_path_factory.mktemp("int8"), "demo.int8full.onnx", "int8", cpu=AVX2,
                           calib=trained.data / "train", holdout=trained.data / "val", min_agreement=0.5, criterion="agreement",
                           calib_method="minmax")


@pytest.fixture(scope="session")
def cpu_builds(trained, built_fp32_result, fp16_quantized, int8_relaxed, tmp_path_factory) -> dict:
    """{precision: (source ONNX, BuildResult for the cpu target)} for fp32, fp16 and int8, built once per session."""
    from edge_inception.engines.build import build

    out = tmp_path_factory.mktemp("cpu_builds")
    return {"fp32": (trained.onnx, built_fp32_result),
            **{p: (q.path, build(q.path, "cpu", output_dir=out)) for p, q in (("fp16", fp16_quantized), ("int8", int8_relaxed))}}
