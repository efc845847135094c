"""``bench TARGET --scenario ...``: MLPerf Inference scenarios through MLPerf's own load generator (mlcommons-loadgen).

The target is an artifact run in this process or a model on a Triton server (``grpc://``). LoadGen drives a
SystemUnderTest (``issue_queries``/``flush_queries``) over a QuerySampleLibrary of preprocessed images held in memory,
and judges the run: VALID or INVALID with its reasons, from its own log (``mlperf_log_detail.txt``). Each scenario
reports MLPerf's metric: SingleStream the 90th percentile latency, MultiStream and Server the 99th, Offline samples
per second. ``accuracy`` adds LoadGen's AccuracyOnly mode (every sample once, the answers logged in
``mlperf_log_accuracy.json``), scored as top-1 on labelled images.

LoadGen runs in a child process (:mod:`.child`): ``StartTest`` blocks in C++, deaf to Ctrl-C and SIGTERM, so the
command waits on a pipe instead, stops the child on a signal, and bounds each run with a watchdog computed from its
settings. Every value that reaches LoadGen's ``TestSettings`` is checked before LoadGen starts. LoadGen's C++ opens its
log files itself, so it only ever writes into a private folder made for the run; ``--loadgen-logs`` gets copies,
installed with :mod:`..fileio`'s checks.

Results are not MLPerf submissions: those need the benchmark's reference model and data set, mlperf.conf's rules (600 s
runs, minimum query counts) and an audit. ``short`` shrinks the run for tests and says so in the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, EdgeInceptionError, OutputPathError, ServeError
from ..fileio import ensure_folder, install_files, output_target, private_tempdir, staging_dir
from ..limits import MAX_BATCH
from ..report import Axis, Bars, Figure, Series, md_text
from ..vocab import Choice, SharedMemory

log = logging.getLogger(__name__)

MAX_SAMPLES = 1024  # images held in memory as the QuerySampleLibrary
MAX_ACCURACY_LOG_BYTES = 256 << 20
MAX_CONCURRENCY = 64
MAX_DURATION_MS = 86_400_000  # --min-duration-ms: a day (MLPerf's runs take 600 s)
MAX_QUERY_COUNT = 10_000_000  # --min-query-count
MAX_GENERATED_SAMPLES = 10_000_000  # samples LoadGen generates up front (Offline's one query, Server's schedule): memory
MAX_TIMEOUT_S = 3600.0  # a request to a server
MAX_WATCHDOG_S = 7 * 86_400.0
MIN_TIME_S = 1e-6  # a measured time below a timer's resolution counts as this
WATCHDOG_FACTOR = 4.0
WATCHDOG_SLACK_S = 60.0
STARTUP_S = 600.0  # the child's start: imports, opening the target, loading up to MAX_SAMPLES images, the timed inferences
LOG_READ_S = 120.0
LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "mlperf_log_trace.json")  # what LoadGen writes


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
    shared_memory: SharedMemory = SharedMemory.none  # a server's tensors through system shared memory (serve/shm.py)
    log_dir: Path | None = None  # keep LoadGen's logs here (one folder per scenario); default: only the run's private folder
    watchdog_s: float | None = None  # each LoadGen run's wall-clock bound; default: from its settings (see watchdog())


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

    def as_markdown(self) -> str:
        return markdown(self)

    def as_figure(self) -> Figure:
        return figure(self)


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
    no data), so that LoadGen never waits for ever; the first failure goes to ``on_error`` at once (the parent process
    stops the run) and is raised after the test. A rule that would issue no request (``batch`` or ``workers`` below 1)
    is refused here, before LoadGen starts: LoadGen would wait for ever for its samples."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, batch: int, workers: int,
                 on_error: Callable[[EdgeInceptionError], None] | None = None) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise EdgeInceptionError(f"samples per request {batch!r}: not in [1, {MAX_BATCH}]; no query could be answered, refusing to start LoadGen")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_CONCURRENCY:
            raise EdgeInceptionError(f"inferences in flight {workers!r}: not in [1, {MAX_CONCURRENCY}]; refusing to start LoadGen")
        self.infer, self.samples, self.batch, self.on_error = infer, samples, batch, on_error
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sut") if workers > 1 else None
        self.error: EdgeInceptionError | None = None
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
        except BaseException as exc:  # noqa: BLE001 - kept and reported; LoadGen must get its answers
            err = exc if isinstance(exc, EdgeInceptionError) else ServeError(
                f"inference failed during the LoadGen run: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
            with self.lock:
                first = self.error is None
                self.error = self.error or err
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in chunk])
            if first and self.on_error is not None:
                self.on_error(err)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------------------------
# LoadGen's settings, their bounds, and the watchdog

@dataclass(frozen=True)
class Estimate:
    """Rough timings taken before the test, to set LoadGen's expected latency / QPS so it generates enough queries.
    Each time is at least :data:`MIN_TIME_S` (a timer's resolution), so no rate derived from them is infinite."""

    single_s: float  # one sample
    batch_s: float  # one batch of ``batch`` samples
    multi_s: float  # one MultiStream query
    batch: int

    @property
    def qps(self) -> float:
        return self.batch / max(self.batch_s, MIN_TIME_S)


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


def _check_number(name: str, value: object, hi: float) -> None:
    """``value`` a finite number in (0, hi), else one line naming ``name``: zero, a negative, NaN or infinity yields no query
    (or a schedule without end) in LoadGen."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < hi:
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise EdgeInceptionError(f"{name} must be in (0, {f'{hi:g}'.replace('e+0', 'e')}), got {shown}")


def check_config(cfg: ScenarioConfig) -> None:
    """Every value of ``cfg`` that reaches LoadGen's TestSettings, a request or the watchdog, checked before anything
    starts: counts are integers >= 1, rates, latencies and durations finite numbers > 0, each below its bound.
    Raises :class:`EdgeInceptionError` (one line, naming the option)."""
    from ..limits import check_range, check_threads

    if not cfg.scenarios:
        raise EdgeInceptionError("give at least one --scenario")
    check_range("--batch", cfg.batch, 1, MAX_BATCH)
    check_range("--concurrency", cfg.concurrency, 1, MAX_CONCURRENCY)
    check_range("--samples-per-query", cfg.samples_per_query, 1, MAX_BATCH)
    check_threads(cfg.threads)
    if cfg.min_duration_ms is not None:
        check_range("--min-duration-ms", cfg.min_duration_ms, 1, MAX_DURATION_MS)
    if cfg.min_query_count is not None:
        check_range("--min-query-count", cfg.min_query_count, 1, MAX_QUERY_COUNT)
    for name, value, hi in (("--target-qps", cfg.target_qps, 1e7), ("--target-latency-ms", cfg.target_latency_ms, 1e7),
                            ("--watchdog-s", cfg.watchdog_s, MAX_WATCHDOG_S)):
        if value is not None:
            _check_number(name, value, hi)
    _check_number("the request timeout", cfg.timeout_s, MAX_TIMEOUT_S)


def batch_rule(wanted: int, server_max: int | None, target: str) -> int:
    """Most samples per request: ``wanted``, at most a server's ``max_batch_size`` (None: in-process, no server). Triton's
    rule: 0 means the model takes no batch dimension (one sample per request); a negative value is no rule at all and is
    refused, as is any result outside [1, MAX_BATCH]: a batch of no samples would leave LoadGen waiting for ever."""
    if server_max is None:
        n = wanted
    elif isinstance(server_max, bool) or not isinstance(server_max, int) or server_max < 0:
        raise ServeError(f"{target}: the server's configuration says max_batch_size {server_max!r}; Triton's is 0 (no batching) or more; "
                         "no request size fits, refusing to start LoadGen")
    else:
        n = 1 if server_max == 0 else min(wanted, server_max)
    if not 1 <= n <= MAX_BATCH:
        raise ServeError(f"{target}: {n} samples per request, not in [1, {MAX_BATCH}]; refusing to start LoadGen")
    return n


def estimate(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, samples_per_query: int) -> Estimate:
    """Warm-up, then the median of a few timed inferences at batch 1, ``batch`` and ``samples_per_query``."""

    def timed(n: int, repeats: int) -> float:
        x = images[np.arange(n) % len(images)]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            infer(x)
            times.append(time.perf_counter() - t0)
        return max(MIN_TIME_S, float(np.median(times)))

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


def check_settings(scenario: Scenario, shown: dict[str, Any]) -> None:
    """The TestSettings of one run (as :func:`settings_for` shows them), checked before LoadGen starts: each count,
    duration, rate and latency a finite number > 0 (``max_duration_ms`` may be 0: LoadGen's "no maximum", the watchdog
    bounds the run), and the samples LoadGen generates up front (Offline: ``max(min_query_count, 1.1 x min_duration x
    offline_expected_qps)``, LoadGen's test_settings_internal.cc; Server: ``min_duration x server_target_qps``) at most
    :data:`MAX_GENERATED_SAMPLES`. Raises :class:`EdgeInceptionError`."""
    for name, value in shown.items():
        if name in ("scenario", "mode") or (name == "max_duration_ms" and value == 0):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise EdgeInceptionError(f"LoadGen setting {name} = {value!r} for {RULES[scenario].loadgen}: every count, duration, rate and latency "
                                     "must be a finite number > 0 (this one yields no query); refusing to start LoadGen")
    min_s = shown["min_duration_ms"] / 1000
    rate = shown.get("offline_expected_qps") or shown.get("server_target_qps")
    if rate is not None:
        generated = max(shown["min_query_count"], (1.1 if scenario is Scenario.offline else 1.0) * min_s * rate)
        if generated > MAX_GENERATED_SAMPLES:
            raise EdgeInceptionError(f"{RULES[scenario].loadgen}: LoadGen would generate {generated:,.0f} samples up front ({rate:g}/s for "
                                     f"{min_s:g} s), more than {MAX_GENERATED_SAMPLES:,}; lower --target-qps or --min-duration-ms")


def offline_rerun_qps(scenario: Scenario, cfg: ScenarioConfig, valid: bool, reasons: list[str], per_s: float,
                      shown: dict[str, Any]) -> float | None:
    """The ``offline_expected_qps`` to run Offline again with, or None. Offline issues one query of ``1.1 x min_duration
    x offline_expected_qps`` samples (LoadGen's test_settings_internal.cc); when the estimate (a few timed requests, one
    at a time) was below the rate the run reached with its requests in flight together, the query is served in less than
    the minimum duration and LoadGen calls the run INVALID and says to raise the expected QPS. Once, only for that
    reason, only where the user gave no ``--target-qps``, and only where :func:`check_settings` takes it: the measured
    rate x 1.1."""
    if scenario is not Scenario.offline or valid or cfg.target_qps is not None or per_s <= 0 or "first_run" in shown:
        return None
    if not reasons or any(r != "min duration not met" and not r.startswith("Increase expected QPS") for r in reasons):
        return None
    larger = 1.1 * per_s
    try:
        check_settings(scenario, {**shown, "offline_expected_qps": larger})
    except EdgeInceptionError:  # not finite, or more samples than LoadGen may generate: the first run's verdict stands
        return None
    return larger if larger > shown["offline_expected_qps"] else None


def expected_run_s(scenario: Scenario, shown: dict[str, Any], est: Estimate) -> float:
    """How long LoadGen's PerformanceOnly run with these settings should take at the measured rate (seconds): the
    minimum duration or the minimum query count, whichever takes longer (Offline: its one query of generated samples)."""
    min_s = shown["min_duration_ms"] / 1000
    queries = shown["min_query_count"]
    if scenario is Scenario.single_stream:
        t = max(min_s, queries * est.single_s)
    elif scenario is Scenario.multi_stream:
        t = max(min_s, queries * est.multi_s)
    elif scenario is Scenario.server:
        rate = shown["server_target_qps"]
        t = max(min_s, queries / rate, max(queries, min_s * rate) / est.qps)
    else:
        t = max(queries, 1.1 * min_s * shown["offline_expected_qps"]) / est.qps
    if shown["max_duration_ms"] and scenario is not Scenario.offline:
        t = min(t, shown["max_duration_ms"] / 1000)
    return t


def watchdog(expected_s: float, cfg: ScenarioConfig) -> tuple[float, str]:
    """The wall-clock bound of one LoadGen run and where it comes from: ``--watchdog-s`` if given, else
    :data:`WATCHDOG_FACTOR` x the expected time + :data:`WATCHDOG_SLACK_S` + one request's timeout. The factor covers a
    machine slower under load than during the few timed inferences; the slack LoadGen's start and its logs."""
    if cfg.watchdog_s is not None:
        return cfg.watchdog_s, "--watchdog-s"
    bound = WATCHDOG_FACTOR * expected_s + WATCHDOG_SLACK_S + cfg.timeout_s
    return bound, (f"the watchdog: {WATCHDOG_FACTOR:g} x the {expected_s:.0f} s its settings take at the measured rate + "
                   f"{WATCHDOG_SLACK_S + cfg.timeout_s:.0f} s; --watchdog-s sets it")


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
# LoadGen's log folder: private to the run, then moved into --loadgen-logs

def _log_layout(cfg: ScenarioConfig) -> list[tuple[str, str]]:
    modes = ["performance"] + (["accuracy"] if cfg.accuracy else [])
    return [(scenario.value, mode) for scenario in cfg.scenarios for mode in modes]


def _log_folder(path: Path, *, create: bool) -> Path:
    """A folder below ``--loadgen-logs`` that takes LoadGen's files: a real folder (a symbolic link, FIFO or file of that
    name is refused, never followed), or missing (made if ``create``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if create:
            try:
                path.mkdir()
            except OSError as exc:
                raise OutputPathError(f"cannot create {path}: {exc.strerror or exc}") from exc
        return path
    except OSError as exc:
        raise OutputPathError(f"cannot write LoadGen's logs into {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(f"refusing to write LoadGen's logs into {path}: it is a symbolic link; they go into real folders below --loadgen-logs")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"refusing to write LoadGen's logs into {path}: it is not a folder")
    return path


def _log_file(path: Path) -> None:
    """A LoadGen log's destination: missing or a regular file (replaced by a rename); a link, FIFO, device, socket or folder is refused."""
    if path.is_symlink():
        raise OutputPathError(f"refusing to replace {path}: it is a symbolic link; LoadGen's logs are written as real files")
    output_target(path)


def check_log_dir(log_dir: Path, cfg: ScenarioConfig) -> Path:
    """Before the run, nothing created: ``--loadgen-logs`` can take LoadGen's files. The folder itself follows fileio's rule
    for an output folder a user names (a link to a folder is followed; to anything else, refused); below it every folder
    and file LoadGen's logs would replace is checked by :func:`_log_folder` / :func:`_log_file`. Returns the real folder."""
    top = output_target(log_dir, folder=True)
    if not top.exists():
        parent = next((p for p in top.parents if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OutputPathError(f"cannot create --loadgen-logs {log_dir}: {parent} is not a writable folder")
        return top
    if not os.access(top, os.W_OK):
        raise OutputPathError(f"--loadgen-logs {log_dir} is not writable")
    for scenario, mode in _log_layout(cfg):
        for folder in (top / scenario, top / scenario / mode):
            _log_folder(folder, create=False)
        for name in LOG_FILES:
            if os.path.lexists(top / scenario / mode / name):
                _log_file(top / scenario / mode / name)
    return top


def keep_logs(private: Path, log_dir: Path, cfg: ScenarioConfig) -> None:
    """Move LoadGen's files from the run's private folder into ``--loadgen-logs/<scenario>/<mode>/``: each folder's files
    copied into a staging folder there, then each renamed over its name (fileio's :func:`install_files`: every
    destination checked first; a link, FIFO, device or socket refused, nothing outside the folder replaced)."""
    top = check_log_dir(log_dir, cfg)
    ensure_folder(top)
    for scenario, mode in _log_layout(cfg):
        src = private / scenario / mode
        files = [src / n for n in LOG_FILES if (src / n).is_file() and not (src / n).is_symlink()]
        if not files:
            continue
        dest = _log_folder(_log_folder(top / scenario, create=True) / mode, create=True)
        for f in files:
            _log_file(dest / f.name)
        with staging_dir(dest, "loadgen-logs") as stage:
            staged = []
            for f in files:
                shutil.copyfile(f, stage / f.name)
                staged.append(stage / f.name)
            _log_folder(dest, create=False)  # again, just before the renames: still a real folder, not a link swapped in
            install_files(staged, dest)


# ------------------------------------------------------------------------------------------------------------------
# Running: the parent checks and waits; a child process runs LoadGen

@dataclass
class _Target:
    name: str
    engine: str
    infer: Callable[[np.ndarray], np.ndarray]
    image_size: int
    num_classes: int
    class_names: list[str]
    close: Callable[[], None]
    max_batch: int | None  # a server's max_batch_size (None: in-process)


def _open(target: str, cfg: ScenarioConfig, shm_prefix: str | None = None) -> _Target:
    from .client import TritonRunner, is_remote

    if is_remote(target):
        runner = TritonRunner(target, timeout_s=cfg.timeout_s)
        runner.activate()
        model = runner.client.model
        if model is None:
            runner.deactivate()
            raise ServeError(f"{target}: the server described no model")
        if cfg.shared_memory is SharedMemory.system:
            in_flight = 1 if cfg.scenarios == (Scenario.single_stream,) else cfg.concurrency
            biggest = max(cfg.batch, cfg.samples_per_query if Scenario.multi_stream in cfg.scenarios else 1)
            try:
                runner.client.use_shared_memory(biggest, in_flight, shm_prefix)
            except BaseException:
                runner.deactivate()
                raise
        names = runner.client.class_names() if cfg.accuracy else [str(i) for i in range(model.num_classes)]

        def remote_infer(batch: np.ndarray) -> np.ndarray:
            """One request (or one per max_batch_size chunk) to the server, with its deadline: the remote SUT's call."""
            return runner.run(batch)

        return _Target(target, f"triton:{model.name} ({model.platform})", remote_infer, model.image_size, model.num_classes, names,
                       runner.deactivate, model.max_batch_size)
    from ..engines.registry import artifact_info, open_runner

    if cfg.shared_memory is not SharedMemory.none:
        raise EdgeInceptionError(f"--shared-memory {cfg.shared_memory.value} is for a served model (grpc://HOST:PORT/MODEL), not {target}")
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
        err, sut.error = sut.error, None
        raise err


def run_scenarios(target: str, cfg: ScenarioConfig, progress: Callable[[str], None] | None = None) -> ScenarioReport:
    """Each scenario of ``cfg`` against ``target`` (an artifact, or ``grpc://HOST:PORT/MODEL``), LoadGen judging.

    Every setting is checked first (:func:`check_config`; ``--loadgen-logs`` by :func:`check_log_dir`). LoadGen then runs
    in a child process (:mod:`.child`) that does the inference too, so that Ctrl-C / SIGTERM stop it at once
    (``KeyboardInterrupt`` here, the child killed) and each LoadGen run is bounded by its :func:`watchdog`
    (:class:`~.child.WatchdogError`). LoadGen's C++ writes its logs into a folder made for this run (``mkdtemp``: mode
    0700, nobody else's), removed at the end; with ``log_dir`` they are moved from it by :func:`keep_logs` once every
    run finished. Raises :class:`EdgeInceptionError` subclasses; on any failure nothing is written."""
    from ..evaluate.bench import machine_info
    from .child import run_in_child

    check_config(cfg)
    if cfg.log_dir is not None:
        check_log_dir(cfg.log_dir, cfg)
    private = private_tempdir("loadgen")
    from .shm import new_prefix

    shm_prefix = new_prefix()  # this process's: the child's regions are swept as this process's if both are killed
    try:
        results, notes = run_in_child(_child_run, (target, cfg, str(private), shm_prefix), what="LoadGen's process",
                                      startup_s=STARTUP_S, progress=progress)
        if cfg.log_dir is not None:
            keep_logs(private, cfg.log_dir, cfg)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if cfg.shared_memory is SharedMemory.system:  # what the child left, however it ended (stopped, killed, failed)
            _release_regions(target, shm_prefix)
    return ScenarioReport(machine_info(cfg.threads), cfg, results, notes)


def _release_regions(target: str, prefix: str) -> None:
    """The LoadGen child's shared-memory regions, after it ended: their registration on the server (a few seconds at
    most; a server that does not answer keeps them), then their files. Never raises: the run's own outcome stands."""
    from .client import TritonClient, is_remote
    from .shm import remove_regions

    try:
        if is_remote(target):
            client = TritonClient(target, timeout_s=3.0, retries=0)
            try:
                client.drop_regions(prefix)
            finally:
                client.close()
    except Exception as exc:  # a parsing or channel failure: the files still go
        log.debug("shared memory of %s not released on the server: %s", target, exc)
    finally:
        remove_regions(prefix)


def _child_run(chan: Any, target: str, cfg: ScenarioConfig, private: str, shm_prefix: str) -> tuple[list[ScenarioResult], list[str]]:
    """In the child process (:func:`.child.run_in_child`): open the target, load the samples, time them, check every
    run's settings, then run LoadGen for each scenario, each run under its watchdog."""
    t = _open(target, cfg, shm_prefix)
    try:
        samples = load_samples(cfg.data, t.image_size, t.class_names, t.num_classes, labelled=cfg.accuracy)
        batch = batch_rule(cfg.batch, t.max_batch, t.name)
        multi = batch_rule(cfg.samples_per_query, t.max_batch, t.name)
        est = estimate(t.infer, samples.images, batch, cfg.samples_per_query)
        check_target_qps(cfg, est)
        planned = []
        for scenario in cfg.scenarios:  # all checked before the first run starts
            settings, shown = settings_for(scenario, cfg, est, len(samples.images))
            check_settings(scenario, shown)
            planned.append((scenario, settings, shown))
        results = []
        for scenario, settings, shown in planned:
            chan.progress(f"LoadGen {RULES[scenario].loadgen} against {target}")
            split = multi if scenario is Scenario.multi_stream else batch
            results.append(_one(chan, scenario, cfg, t, samples, est, split, settings, shown, Path(private) / scenario.value))
    finally:
        t.close()
    notes = [f"samples: {len(samples.images)} images from {samples.source}"]
    if cfg.short:
        notes.append(SHORT_NOTE.format(ms=SHORT_DURATION_MS))
    else:
        notes.append("LoadGen's default settings unless given; an MLPerf submission needs the benchmark's model, data set and mlperf.conf rules")
    return results, notes


def _one(chan: Any, scenario: Scenario, cfg: ScenarioConfig, t: _Target, samples: Samples, est: Estimate, split: int, settings: Any,
         shown: dict[str, Any], outdir: Path) -> ScenarioResult:
    import mlperf_loadgen as lg

    rule = RULES[scenario]
    workers = 1 if scenario is Scenario.single_stream else cfg.concurrency
    sut = _Sut(t.infer, samples.images, split, workers, on_error=chan.fail)

    def performance(what: str) -> tuple[bool, list[str], dict[str, float], float, int]:
        bound, why = watchdog(expected_run_s(scenario, shown, est), cfg)
        chan.deadline(bound, what, why)
        shutil.rmtree(outdir / "performance", ignore_errors=True)  # a rerun's logs replace the first run's
        _run_test(sut, len(samples.images), settings, outdir / "performance")
        return result_from_detail(read_detail(outdir / "performance" / "mlperf_log_detail.txt"), scenario)

    try:
        valid, reasons, latency, per_s, count = performance(f"LoadGen's {rule.loadgen} run")
        larger = offline_rerun_qps(scenario, cfg, valid, reasons, per_s, shown)
        if larger is not None:  # LoadGen's own advice: "Increase expected QPS so the loadgen pre-generates a larger query"
            first = f"INVALID at offline_expected_qps {shown['offline_expected_qps']:.1f} ({'; '.join(reasons)}, {per_s:.1f} samples/s)"
            settings.offline_expected_qps = shown["offline_expected_qps"] = larger
            valid, reasons, latency, per_s, count = performance(f"LoadGen's {rule.loadgen} run again, with a larger query")
            shown["first_run"] = first
        top1, n_acc = None, 0
        if cfg.accuracy and samples.labels is not None:
            settings.mode = lg.TestMode.AccuracyOnly
            bound, why = watchdog(len(samples.images) / est.qps, cfg)
            chan.deadline(bound, f"LoadGen's {rule.loadgen} accuracy run", why)
            _run_test(sut, len(samples.images), settings, outdir / "accuracy")
            top1, n_acc = top1_from_accuracy_log(outdir / "accuracy" / "mlperf_log_accuracy.json", samples.labels)
        chan.deadline(LOG_READ_S, "reading LoadGen's logs", "its bound")
    finally:
        sut.close()
    value = per_s if rule.percentile is None else latency.get("p" + rule.percentile.rstrip("0").rstrip("."), float("nan"))
    return ScenarioResult(t.name, t.engine, rule.loadgen, valid, reasons, rule.metric, value, per_s, latency, count, shown, cfg.short, top1, n_acc,
                          str(cfg.log_dir / scenario.value) if cfg.log_dir is not None else None)


# ------------------------------------------------------------------------------------------------------------------
# Output

def markdown(report: ScenarioReport) -> str:
    from ..evaluate.bench import _gpu_line

    m = report.machine
    lines = ["# edge-inception bench: MLPerf LoadGen scenarios", "",
             f"- CPU: {md_text(m.cpu)} ({m.arch}, {m.cores} cores; {', '.join(m.simd)})", f"- GPU: {md_text(_gpu_line(m.gpu))}",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in m.libraries.items())}"]
    lines += [f"- note: {md_text(n, 2000)}" for n in report.notes]
    lines += ["", "| target | engine | scenario | result | metric | value | samples/s | p50 ms | p90 ms | p99 ms | queries | top-1 | settings |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.results:
        lat = r.latency_ms
        verdict = "VALID" if r.valid else "INVALID: " + md_text("; ".join(r.invalid_reasons), 2000)
        settings = md_text(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.settings.items()
                                     if k not in ("scenario", "mode")), 2000)
        lines.append(f"| {md_text(r.target)} | {md_text(r.engine)} | {r.scenario} | "
                     f"{verdict} | {r.metric} | {r.metric_value:.2f} | {r.samples_per_s:.1f} | "
                     f"{_ms(lat.get('p50'))} | {_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {r.query_count} | "
                     f"{'-' if r.top1 is None else f'{r.top1:.2%} ({r.accuracy_samples})'} | {settings} |")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def figure(report: ScenarioReport) -> Figure:
    """The plot: each scenario's p50/p90/p99 latency (ms), and its samples/s, with LoadGen's verdict in the label."""
    results = report.results
    labels = [f"{r.scenario}\n{'VALID' if r.valid else 'INVALID'}" for r in results]
    latency = Bars(f"LoadGen latency: {results[0].engine if results else ''}", labels,
                   [Series(key, [r.latency_ms.get(key, 0.0) for r in results]) for key in ("p50", "p90", "p99")], Axis("latency", "ms"))
    throughput = Bars("throughput" + (" (short mode: not MLPerf-compliant)" if any(r.short for r in results) else ""), labels,
                      [Series("samples/s", [r.samples_per_s for r in results])], Axis("throughput", "samples/s"))
    return Figure([latency, throughput], width=12, height=4.5)
