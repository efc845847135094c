"""``bench TARGET --scenario ...``: MLPerf Inference scenarios through MLPerf's own load generator (mlcommons-loadgen).

The target is an artifact run in this process or a model on a Triton server (``grpc://``). LoadGen drives a
SystemUnderTest (``issue_queries``/``flush_queries``) over a QuerySampleLibrary of preprocessed images held in memory,
and judges the run: VALID or INVALID with its reasons, from its own log (``mlperf_log_detail.txt``). Each scenario
reports MLPerf's metric: SingleStream the 90th percentile latency, MultiStream and Server the 99th, Offline samples
per second. ``accuracy`` adds LoadGen's AccuracyOnly mode (every sample once, the answers logged in
``mlperf_log_accuracy.json``), scored as top-1 on labelled images.

Results are not MLPerf submissions: those need the benchmark's reference model and data set, mlperf.conf's rules (600 s
runs, minimum query counts) and an audit. ``short`` shrinks the run for tests and says so in the report.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, EdgeInceptionError, ServeError
from ..fileio import write_json_atomic, write_text_atomic
from ..limits import MAX_BATCH
from ..vocab import Choice

log = logging.getLogger(__name__)

MAX_SAMPLES = 1024  # images held in memory as the QuerySampleLibrary
MAX_ACCURACY_LOG_BYTES = 256 << 20


class Scenario(Choice):
    """MLPerf Inference's scenarios (LoadGen's ``TestScenario``)."""

    single_stream = "single-stream"
    multi_stream = "multi-stream"
    offline = "offline"
    server = "server"


@dataclass(frozen=True)
class ScenarioRule:
    loadgen: str  # mlperf_loadgen.TestScenario member
    metric: str  # what MLPerf reports for it
    percentile: str | None  # the latency percentile key of the metric, from the detail log
    short_queries: int  # min_query_count in short mode


RULES: dict[Scenario, ScenarioRule] = {
    Scenario.single_stream: ScenarioRule("SingleStream", "p90 latency (ms)", "90.00", 64),
    Scenario.multi_stream: ScenarioRule("MultiStream", "p99 latency (ms)", "99.00", 32),
    Scenario.offline: ScenarioRule("Offline", "samples/s", None, 1),
    Scenario.server: ScenarioRule("Server", "p99 latency (ms)", "99.00", 128),
}
SHORT_DURATION_MS = 1000
SHORT_MAX_DURATION_MS = 30_000
SHORT_NOTE = ("short mode: min_duration {ms} ms and small min_query_count; NOT MLPerf-compliant (MLPerf's rules need 600 s and its "
              "minimum query counts), for tests and quick looks only")


@dataclass
class ScenarioConfig:
    scenarios: tuple[Scenario, ...]
    short: bool = False
    accuracy: bool = False  # also LoadGen's AccuracyOnly mode: top-1 on labelled images (data: an ImageFolder)
    data: Path | None = None  # images (a folder; an ImageFolder for accuracy); default: scikit-image's bundled photos
    batch: int = 8  # most samples one inference takes (Offline and Server queries are split into such batches)
    concurrency: int = 1  # inferences in flight (worker threads): >1 lets a Triton server batch
    target_qps: float | None = None  # Server: server_target_qps; Offline: offline_expected_qps (default: estimated)
    target_latency_ms: float | None = None  # Server: server_target_latency_ns (default: estimated)
    samples_per_query: int = 8  # MultiStream (MLPerf: 8)
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    threads: int = 0  # in-process engine threads
    timeout_s: float = 10.0  # per request to a server
    log_dir: Path | None = None  # keep LoadGen's logs here (one folder per scenario); default: a temporary folder


@dataclass
class ScenarioResult:
    target: str
    engine: str
    scenario: str  # LoadGen's name: SingleStream, ...
    valid: bool
    invalid_reasons: list[str]
    metric: str
    metric_value: float
    samples_per_s: float
    latency_ms: dict[str, float]
    query_count: int
    settings: dict[str, Any]
    short: bool
    top1: float | None = None
    accuracy_samples: int = 0
    log_dir: str | None = None


@dataclass
class ScenarioReport:
    machine: Any  # evaluate.bench.MachineInfo
    config: ScenarioConfig
    results: list[ScenarioResult]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["scenarios"] = [s.value for s in self.config.scenarios]
        cfg["data"] = None if self.config.data is None else str(self.config.data)
        cfg["log_dir"] = None if self.config.log_dir is None else str(self.config.log_dir)
        return {"machine": asdict(self.machine), "config": cfg, "loadgen": [asdict(r) for r in self.results], "notes": self.notes}


# ------------------------------------------------------------------------------------------------------------------
# The samples

@dataclass
class Samples:
    images: np.ndarray  # N x 3 x S x S float32
    labels: np.ndarray | None  # N class indices of the model, where the images are labelled
    source: str


def load_samples(data: Path | None, image_size: int, class_names: list[str], num_classes: int, *, labelled: bool) -> Samples:
    """The QuerySampleLibrary's images, preprocessed as ``predict`` does; labelled (an ImageFolder) for accuracy."""
    from ..data.images import bundled_photos, find_images, load_batch

    if labelled:
        from ..data.datasets import scan_image_folder
        from ..evaluate.predict import folder_labels

        if data is None:
            raise DatasetError("--accuracy needs labelled images: --data FOLDER with one sub-folder per class")
        folder = scan_image_folder(data, min_classes=1)
        mapping = folder_labels(folder.classes, class_names, num_classes)
        chosen = folder.samples[:MAX_SAMPLES]
        images = load_batch([p for p, _ in chosen], image_size)
        return Samples(images, np.array([mapping[label] for _, label in chosen], dtype=np.int64), str(data))
    paths = find_images([data]).images if data is not None else bundled_photos()
    if not paths:
        raise DatasetError(f"no images in {data}")
    return Samples(load_batch(paths[:MAX_SAMPLES], image_size), None, str(data) if data else "scikit-image's bundled photos")


# ------------------------------------------------------------------------------------------------------------------
# The system under test

class _Sut:
    """LoadGen's SystemUnderTest over an inference function: each query's samples in batches of at most ``batch``, on
    ``workers`` threads (inline for one worker). Every issued sample is completed, also when inference fails (with
    no data), so that LoadGen never waits for ever; the first failure is raised after the test."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, batch: int, workers: int) -> None:
        self.infer, self.samples, self.batch = infer, samples, batch
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sut") if workers > 1 else None
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def issue(self, query_samples: Sequence[Any]) -> None:
        for start in range(0, len(query_samples), self.batch):
            chunk = list(query_samples[start:start + self.batch])
            if self.pool is None:
                self._run(chunk)
            else:
                self.pool.submit(self._run, chunk)

    def _run(self, chunk: list[Any]) -> None:
        import mlperf_loadgen as lg

        try:
            if self.error is not None:  # the server failed already: answer at once (no data), not one deadline per query
                raise self.error
            logits = self.infer(self.samples[[q.index for q in chunk]])
            top1 = np.ascontiguousarray(np.argmax(logits, axis=1).astype(np.int32))
            responses = [lg.QuerySampleResponse(q.id, top1[i:].ctypes.data, 4) for i, q in enumerate(chunk)]
            lg.QuerySamplesComplete(responses)
        except BaseException as exc:  # noqa: BLE001 - kept and raised after the test; LoadGen must get its answers
            with self.lock:
                self.error = self.error or exc
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in chunk])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------------------------
# LoadGen's settings and logs

@dataclass(frozen=True)
class Estimate:
    """Rough timings taken before the test, to set LoadGen's expected latency / QPS so it generates enough queries."""

    single_s: float  # one sample
    batch_s: float  # one batch of ``batch`` samples
    multi_s: float  # one MultiStream query
    batch: int

    @property
    def qps(self) -> float:
        return self.batch / self.batch_s


MAX_QPS_FACTOR = 10.0  # --target-qps may ask this many times the measured rate (x --concurrency), no more


def check_target_qps(cfg: ScenarioConfig, est: Estimate) -> None:
    """Refuse a ``--target-qps`` far beyond the measured rate: LoadGen generates ``target_qps x min_duration`` samples
    for Offline (and schedules as many queries for Server) up front, so 9e6 on a model doing 1000/s held gigabytes
    and ran for hours, with Ctrl-C unheard inside LoadGen's C++ loop. Raises :class:`EdgeInceptionError`."""
    if cfg.target_qps is None:
        return
    bound = MAX_QPS_FACTOR * est.qps * cfg.concurrency
    if cfg.target_qps > bound:
        raise EdgeInceptionError(f"--target-qps {cfg.target_qps:g} is more than {MAX_QPS_FACTOR:g} x the {est.qps:.1f} samples/s measured "
                                 f"(x --concurrency {cfg.concurrency}): LoadGen would generate queries for hours; give at most {bound:.0f}")


def estimate(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, samples_per_query: int) -> Estimate:
    """Warm-up, then the median of a few timed inferences at batch 1, ``batch`` and ``samples_per_query``."""

    def timed(n: int, repeats: int) -> float:
        x = images[np.arange(n) % len(images)]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            infer(x)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    timed(1, 3)  # warm-up
    return Estimate(timed(1, 5), timed(batch, 3), timed(samples_per_query, 3), batch)


def settings_for(scenario: Scenario, cfg: ScenarioConfig, est: Estimate, sample_count: int) -> tuple[Any, dict[str, Any]]:
    """LoadGen's TestSettings for a PerformanceOnly run, and the same as a plain dict for the report."""
    import mlperf_loadgen as lg

    rule = RULES[scenario]
    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, rule.loadgen)
    s.mode = lg.TestMode.PerformanceOnly
    s.performance_sample_count_override = sample_count
    if cfg.short:
        s.min_duration_ms = SHORT_DURATION_MS
        s.min_query_count = rule.short_queries
        s.max_duration_ms = SHORT_MAX_DURATION_MS
    if cfg.min_duration_ms is not None:
        s.min_duration_ms = cfg.min_duration_ms
    if cfg.min_query_count is not None:
        s.min_query_count = cfg.min_query_count
    s.single_stream_expected_latency_ns = max(1, int(est.single_s * 1e9))
    s.multi_stream_samples_per_query = cfg.samples_per_query
    s.multi_stream_expected_latency_ns = max(1, int(est.multi_s * 1e9))
    s.offline_expected_qps = cfg.target_qps or est.qps
    s.server_target_qps = cfg.target_qps or 0.5 * est.qps
    s.server_target_latency_ns = int((cfg.target_latency_ms or max(10.0, 10 * est.batch_s * 1e3)) * 1e6)
    names = ["min_duration_ms", "max_duration_ms", "min_query_count", "performance_sample_count_override"]
    names += {Scenario.single_stream: ["single_stream_expected_latency_ns"],
              Scenario.multi_stream: ["multi_stream_samples_per_query", "multi_stream_expected_latency_ns"],
              Scenario.offline: ["offline_expected_qps"],
              Scenario.server: ["server_target_qps", "server_target_latency_ns"]}[scenario]
    shown = {n: getattr(s, n) for n in names}
    shown.update(scenario=rule.loadgen, mode="PerformanceOnly", batch=cfg.batch,
                 concurrency=1 if scenario is Scenario.single_stream else cfg.concurrency)  # SingleStream: one query in flight
    return s, shown


def read_detail(path: Path) -> dict[str, Any]:
    """LoadGen's ``mlperf_log_detail.txt``: each ``:::MLLOG {json}`` line's key and value (repeated keys as lists)."""
    if not path.is_file():
        raise ServeError(f"LoadGen wrote no {path.name} in {path.parent}")
    found: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        try:
            entry = json.loads(line[len(":::MLLOG "):])
        except ValueError:
            continue
        key, value = str(entry.get("key", "")), entry.get("value")
        if key in found:
            found[key] = (found[key] if isinstance(found[key], list) else [found[key]]) + [value]
        else:
            found[key] = value
    return found


def _first(value: Any) -> Any:
    return value[-1] if isinstance(value, list) else value


def result_from_detail(detail: dict[str, Any], scenario: Scenario) -> tuple[bool, list[str], dict[str, float], float, int]:
    """(valid, reasons, latency percentiles in ms, samples/s, query count) from LoadGen's detail log."""
    validity = _first(detail.get("result_validity"))
    if validity not in ("VALID", "INVALID"):
        raise ServeError("LoadGen's log holds no result (result_validity); the run did not finish")
    reasons: list[str] = []
    for key in ("result_invalid_reason", "error_runtime"):
        value = detail.get(key)
        reasons += [str(v).strip() for v in (value if isinstance(value, list) else [value]) if v]
    for key, what in (("result_min_duration_met", "min duration not met"), ("result_min_queries_met", "min queries not met"),
                      ("early_stopping_met", "early stopping not met"), ("result_perf_constraints_met", "latency constraint not met")):
        if detail.get(key) is False:
            reasons.append(what)
    latency = {}
    for key, value in detail.items():
        if key.startswith("result_") and key.endswith("_percentile_latency_ns") and isinstance(_first(value), (int, float)):
            latency["p" + key[len("result_"):-len("_percentile_latency_ns")].rstrip("0").rstrip(".")] = _first(value) / 1e6
    for name in ("min", "max", "mean"):
        value = _first(detail.get(f"result_{name}_latency_ns"))
        if isinstance(value, (int, float)):
            latency[name] = value / 1e6
    per_s = 0.0
    for key in ("result_samples_per_second", "result_completed_samples_per_sec", "result_qps_with_loadgen_overhead"):
        value = _first(detail.get(key))
        if isinstance(value, (int, float)) and value > 0:
            per_s = float(value)
            break
    mean_ns = _first(detail.get("result_mean_latency_ns"))
    if scenario is Scenario.multi_stream and not per_s and isinstance(mean_ns, (int, float)) and mean_ns > 0:
        per_s = float(_first(detail.get("effective_samples_per_query")) or 1) * 1e9 / mean_ns  # one query in flight at a time
    count = _first(detail.get("result_query_count")) or _first(detail.get("generated_query_count")) or 0
    return validity == "VALID", list(dict.fromkeys(reasons)), latency, per_s, int(count)


def top1_from_accuracy_log(path: Path, labels: np.ndarray) -> tuple[float, int]:
    """Top-1 from LoadGen's ``mlperf_log_accuracy.json``: each entry's ``data`` is our int32 answer, hex-encoded."""
    if not path.is_file() or path.stat().st_size > MAX_ACCURACY_LOG_BYTES:
        raise ServeError(f"LoadGen's accuracy log {path} is missing or too large")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        answers = {int(e["qsl_idx"]): int(np.frombuffer(bytes.fromhex(e["data"]), dtype=np.int32)[0]) for e in entries if e.get("data")}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ServeError(f"{path}: not an accuracy log LoadGen wrote ({exc})") from None
    if not answers:
        raise ServeError(f"{path}: no answers logged")
    hits = sum(answers[i] == int(labels[i]) for i in answers if 0 <= i < len(labels))
    return hits / len(answers), len(answers)


# ------------------------------------------------------------------------------------------------------------------
# Running

@dataclass
class _Target:
    name: str
    engine: str
    infer: Callable[[np.ndarray], np.ndarray]
    image_size: int
    num_classes: int
    class_names: list[str]
    close: Callable[[], None]
    max_batch: int | None


def _open(target: str, cfg: ScenarioConfig) -> _Target:
    from .client import TritonRunner, is_remote

    if is_remote(target):
        runner = TritonRunner(target, timeout_s=cfg.timeout_s)
        runner.activate()
        model = runner.client.model
        assert model is not None
        names = runner.client.class_names() if cfg.accuracy else [str(i) for i in range(model.num_classes)]
        return _Target(target, f"triton:{model.name} ({model.platform})", runner.run, model.image_size, model.num_classes, names,
                       runner.deactivate, model.max_batch_size or None)
    from ..engines.registry import artifact_info, open_runner

    info = artifact_info(target)
    local = open_runner(target, threads=cfg.threads or None)
    local.activate()
    return _Target(target, f"{info.backend}-{info.precision} (in-process)", local.run, info.image_size, info.num_classes, info.class_names,
                   local.deactivate, None)


def _run_test(sut: _Sut, samples: int, settings: Any, outdir: Path) -> None:
    import mlperf_loadgen as lg

    outdir.mkdir(parents=True, exist_ok=True)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.log_output.copy_summary_to_stdout = False
    lg_sut = lg.ConstructSUT(sut.issue, sut.flush)
    qsl = lg.ConstructQSL(samples, samples, lambda _: None, lambda _: None)  # the samples are in memory already
    try:
        lg.StartTestWithLogSettings(lg_sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(lg_sut)
    if sut.error is not None:
        err = sut.error
        sut.error = None
        if isinstance(err, EdgeInceptionError):
            raise err
        raise ServeError(f"inference failed during the LoadGen run: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


def run_scenarios(target: str, cfg: ScenarioConfig, progress: Callable[[str], None] | None = None) -> ScenarioReport:
    """Each scenario of ``cfg`` against ``target`` (an artifact, or ``grpc://HOST:PORT/MODEL``), LoadGen judging."""
    from ..evaluate.bench import machine_info
    from ..limits import check_threads

    if not cfg.scenarios:
        raise EdgeInceptionError("give at least one --scenario")
    if not 1 <= cfg.batch <= MAX_BATCH or not 1 <= cfg.concurrency <= 64 or not 1 <= cfg.samples_per_query <= MAX_BATCH:
        raise EdgeInceptionError(f"--batch and --samples-per-query must be in [1, {MAX_BATCH}], --concurrency in [1, 64]")
    check_threads(cfg.threads)
    for value, name in ((cfg.target_qps, "--target-qps"), (cfg.target_latency_ms, "--target-latency-ms")):
        if value is not None and not 0 < value < 1e7:
            raise EdgeInceptionError(f"{name} must be in (0, 1e7), got {value:g}")
    t = _open(target, cfg)
    try:
        samples = load_samples(cfg.data, t.image_size, t.class_names, t.num_classes, labelled=cfg.accuracy)
        batch = min(cfg.batch, t.max_batch or cfg.batch)
        est = estimate(t.infer, samples.images, batch, cfg.samples_per_query)
        check_target_qps(cfg, est)
        results = []
        with tempfile.TemporaryDirectory(prefix="edge-inception-loadgen-") as tmp:
            base = cfg.log_dir or Path(tmp)
            for scenario in cfg.scenarios:
                if progress:
                    progress(f"LoadGen {RULES[scenario].loadgen} against {target}")
                results.append(_one(scenario, cfg, t, samples, est, batch, base / scenario.value, keep=cfg.log_dir is not None))
    finally:
        t.close()
    notes = [f"samples: {len(samples.images)} images from {samples.source}"]
    if cfg.short:
        notes.append(SHORT_NOTE.format(ms=SHORT_DURATION_MS))
    else:
        notes.append("LoadGen's default settings unless given; an MLPerf submission needs the benchmark's model, data set and mlperf.conf rules")
    return ScenarioReport(machine_info(cfg.threads), cfg, results, notes)


def _one(scenario: Scenario, cfg: ScenarioConfig, t: _Target, samples: Samples, est: Estimate, batch: int, outdir: Path, *,
         keep: bool) -> ScenarioResult:
    import mlperf_loadgen as lg

    rule = RULES[scenario]
    workers = 1 if scenario is Scenario.single_stream else cfg.concurrency
    split = cfg.samples_per_query if scenario is Scenario.multi_stream else batch
    sut = _Sut(t.infer, samples.images, split, workers)
    try:
        settings, shown = settings_for(scenario, cfg, est, len(samples.images))
        _run_test(sut, len(samples.images), settings, outdir / "performance")
        valid, reasons, latency, per_s, count = result_from_detail(read_detail(outdir / "performance" / "mlperf_log_detail.txt"), scenario)
        top1, n_acc = None, 0
        if cfg.accuracy and samples.labels is not None:
            settings.mode = lg.TestMode.AccuracyOnly
            _run_test(sut, len(samples.images), settings, outdir / "accuracy")
            top1, n_acc = top1_from_accuracy_log(outdir / "accuracy" / "mlperf_log_accuracy.json", samples.labels)
    finally:
        sut.close()
    value = per_s if rule.percentile is None else latency.get("p" + rule.percentile.rstrip("0").rstrip("."), float("nan"))
    return ScenarioResult(t.name, t.engine, rule.loadgen, valid, reasons, rule.metric, value, per_s, latency, count, shown, cfg.short, top1, n_acc,
                          str(outdir) if keep else None)


# ------------------------------------------------------------------------------------------------------------------
# Output

def markdown(report: ScenarioReport) -> str:
    from ..evaluate.bench import _gpu_line

    m = report.machine
    lines = ["# edge-inception bench: MLPerf LoadGen scenarios", "",
             f"- CPU: {m.cpu} ({m.arch}, {m.cores} cores; {', '.join(m.simd)})", f"- GPU: {_gpu_line(m.gpu)}",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in m.libraries.items())}"]
    lines += [f"- note: {n}" for n in report.notes]
    lines += ["", "| target | engine | scenario | result | metric | value | samples/s | p50 ms | p90 ms | p99 ms | queries | top-1 | settings |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.results:
        lat = r.latency_ms
        verdict = "VALID" if r.valid else "INVALID: " + "; ".join(r.invalid_reasons)
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.settings.items() if k not in ("scenario", "mode"))
        lines.append(f"| {r.target} | {r.engine} | {r.scenario} | {verdict} | {r.metric} | {r.metric_value:.2f} | {r.samples_per_s:.1f} | "
                     f"{_ms(lat.get('p50'))} | {_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {r.query_count} | "
                     f"{'-' if r.top1 is None else f'{r.top1:.2%} ({r.accuracy_samples})'} | {settings} |")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(report: ScenarioReport, path: str | Path) -> None:
    """PNG: each scenario's p50/p90/p99 latency (ms), and its samples/s, with LoadGen's verdict in the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    results = report.results
    labels = [f"{r.scenario}\n{'VALID' if r.valid else 'INVALID'}" for r in results]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = np.arange(len(results))
    for i, key in enumerate(("p50", "p90", "p99")):
        ax.bar(xs + (i - 1) * 0.27, [r.latency_ms.get(key, 0.0) for r in results], width=0.27, label=key)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"LoadGen latency: {results[0].engine if results else ''}", fontsize=9)
    ax.legend()
    ax2.bar(xs, [r.samples_per_s for r in results])
    ax2.set_xticks(xs, labels, fontsize=8)
    ax2.set_ylabel("samples/s")
    ax2.set_title("throughput" + (" (short mode: not MLPerf-compliant)" if any(r.short for r in results) else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(report: ScenarioReport, json_path: str | Path | None, md_path: str | Path | None, png_path: str | Path | None = None) -> None:
    if json_path:
        write_json_atomic(json_path, report.as_dict())
    if md_path:
        write_text_atomic(md_path, markdown(report))
    if png_path:
        plot(report, png_path)
