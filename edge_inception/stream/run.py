"""``edge-inception stream``: a source decoded and preprocessed in a producer thread, classified frame by frame.

The producer fills a bounded queue (decode + preprocess); the caller's thread runs inference, reports each frame and
writes the annotated video. The decoder is chosen from a table (hardware where the machine has it, the CPU's
otherwise: :func:`.plan.choose_decoder`), cuts the region the model's crop reads in its own pixel format and resamples
it as the exact path does (the fast path), and the cores are shared between the decode thread and the engine's threads:
on a CPU the split is measured on the source's first frames and remembered (:mod:`.calibrate`), elsewhere or with
``--threads`` it follows :func:`.plan.split_threads`.
After the stream the engine runs alone for a moment on the last frame, so the summary can say what the engine does
by itself, apart from the figures taken inside the stream. A live source keeps only the latest frame (stale ones dropped and counted); a file or
folder drops none. Ctrl-C and SIGTERM end the stream cleanly: the summary is returned with ``interrupted`` set and
the output video is closed, playable, in place (also while a network source is still opening or reading: the signal is
heard in the caller's thread at once, the reader is left to its timeout). An output that cannot be written (a full disk)
ends the stream too: ``output_error`` says why, and the outputs keep what was whole (see :mod:`.writer`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import crop_resize, normalize, preprocess
from ..engines.registry import artifact_info, open_runner
from ..errors import StreamError, Terminated
from ..evaluate.verify import softmax, top_classes
from ..limits import usable_cpus
from ..report import Axis, Bars, Figure, Series, md_text
from ..vocab import PreprocessMode
from .calibrate import CALIBRATION_FRAMES, CALIBRATION_MAX_S, CALIBRATION_WARMUP, SplitKey, calibrated_split
from .decoders import probe
from .plan import ThreadSplit, choose_decoder, split_candidates, split_threads
from .sources import RECONNECT_S, AvSource, FolderSource, Frame, LiveAvSource, VideoSource, Wanted, open_source
from .writer import OutputError, video_writer

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "end_to_end")
FILE_QUEUE = 4  # frames decoded ahead of inference for files and folders
JOIN_S = 2.0  # after a live stream ends, how long its reader may take to leave a blocking read before it is left behind
FILE_JOIN_S = 60.0  # a file's or folder's reader: it leaves after the frame it is decoding (bounded; never left behind)
ENGINE_ALONE_RUNS = 30  # after the stream: bare runs of the engine on the last frame (2 more to warm up, not counted)
ENGINE_ALONE_MAX_S = 3.0  # ... or fewer, where these take longer (at least 3)
IN_STREAM = "inside the stream: decode, preprocess and inference overlap on the same cores"


@dataclass
class StageTimes:
    """Milliseconds per stage for one frame; ``end_to_end`` runs from the start of its decode to the end of inference
    (so it includes time spent waiting in the queue)."""

    decode: float
    preprocess: float
    inference: float
    end_to_end: float


@dataclass
class FrameResult:
    index: int
    timestamp_s: float | None
    name: str | None
    top: list[tuple[int, str, float]]  # class index, name, probability
    ms: StageTimes

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "timestamp": None if self.timestamp_s is None else round(self.timestamp_s, 4)}
        if self.name is not None:
            d["image"] = self.name
        d["top"] = [{"index": i, "label": n, "score": round(s, 6)} for i, n, s in self.top]
        d["ms"] = {k: round(v, 3) for k, v in vars(self.ms).items()}
        return d


@dataclass
class StageStats:
    p50: float
    p90: float
    mean: float


@dataclass
class EngineAlone:
    """The engine by itself: ``runs`` bare runs at batch ``batch`` (ms per run: ``mean_ms``, ``p50_ms``), and ``how``
    the figure was taken."""

    fps: float
    mean_ms: float
    p50_ms: float
    runs: int
    batch: int
    how: str


def measure_engine_alone(runner: Any, tensor: np.ndarray, runs: int = ENGINE_ALONE_RUNS, max_s: float = ENGINE_ALONE_MAX_S) -> EngineAlone:
    """``runs`` bare runs of ``runner`` on ``tensor`` (3 x S x S, run at batch 1), after 2 to warm up, stopping early
    after ``max_s`` seconds (at least 3 runs): nothing else of the stream runs meanwhile."""
    batch = tensor[None]
    for _ in range(2):
        runner.run(batch)
    times: list[float] = []
    deadline = time.perf_counter() + max_s
    while len(times) < runs and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return EngineAlone(round(1e3 / float(a.mean()), 3), round(float(a.mean()), 3), round(float(np.percentile(a, 50)), 3), len(times), 1,
                       f"measured alone after the stream: {len(times)} bare runs at batch 1 on its last frame, decoding stopped")


@dataclass
class StreamSummary:
    """What a stream did: frames classified over ``seconds`` of wall time, per-stage latency percentiles (ms, taken
    inside the stream: :data:`IN_STREAM`), frames dropped (live sources), frames or files skipped (did not decode), how
    it ended, the decoder and the thread split used, and the engine measured alone after the stream (``engine_alone``;
    None where the stream was cut short by a signal or a failed write, or classified nothing)."""

    source: str
    kind: str
    preprocess: str
    frames: int = 0
    seconds: float = 0.0
    stages: dict[str, StageStats] = field(default_factory=dict)
    dropped: int = 0
    corrupt: int = 0
    truncated: bool = False
    interrupted: str | None = None  # "SIGINT" or "SIGTERM"
    saved: str | None = None
    saved_frames: int = 0  # frames in the saved video (after a failed write: those in its whole fragments)
    reconnects: int = 0  # a network source that stopped and was reopened
    lost: bool = False  # a network source that stopped and did not come back within its reconnect time
    output_error: str | None = None  # an output that could not be written (the stream stopped there)
    decoder: str = ""  # the decoder that read the source (plan.DECODERS' description)
    threads: ThreadSplit | None = None  # decoder threads / engine threads
    engine_alone: EngineAlone | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def inference_fps(self) -> float:
        """1000 / the mean inference ms measured inside this stream (under the decoder's load: not the engine alone)."""
        s = self.stages.get("inference")
        return 1e3 / s.mean if s and s.mean > 0 else 0.0

    @property
    def of_engine_alone(self) -> float | None:
        """End to end FPS / the engine alone's FPS (None where the engine was not measured alone)."""
        return self.fps / self.engine_alone.fps if self.engine_alone and self.engine_alone.fps > 0 else None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k not in ("stages", "threads", "engine_alone")}
        d["fps"] = round(self.fps, 3)
        d["seconds"] = round(self.seconds, 3)
        d["threads"] = asdict(self.threads) if self.threads else None
        d["engine_alone"] = asdict(self.engine_alone) if self.engine_alone else None
        ratio = self.of_engine_alone
        d["end_to_end_of_engine_alone"] = None if ratio is None else round(ratio, 4)
        d["ms_measured"] = IN_STREAM
        d["inference_in_stream_fps"] = round(self.inference_fps, 3)
        d["ms"] = {k: {"p50": round(s.p50, 3), "p90": round(s.p90, 3), "mean": round(s.mean, 3)} for k, s in self.stages.items()}
        return d

    def ended(self) -> list[str]:
        """What else happened, in words: drops, skips, a truncated input, reconnects, a lost source."""
        return ([f"dropped {self.dropped}", f"skipped corrupt {self.corrupt}"] + (["input truncated"] if self.truncated else [])
                + ([f"reconnected {self.reconnects} time{'s' if self.reconnects != 1 else ''}"] if self.reconnects else [])
                + (["source lost"] if self.lost else []))

    def why_nothing(self) -> str | None:
        """Why a source that ended with no frame classified is an error, in words: every frame or image failed to
        decode, the file ends before its first frame where its header counts some, or a live source was lost before its
        first frame. None where some frame was classified or nothing failed (a clip that holds no frame, as its header
        says: like FFmpeg's "Output file is empty, nothing was encoded", a warning, not an error)."""
        if self.frames:
            return None
        if self.corrupt:
            if self.kind == "folder":
                return f"none of its {self.corrupt} image{'s' if self.corrupt != 1 else ''} decoded; nothing was classified"
            return (f"no frame decoded ({self.corrupt} corrupt{', and the file ends early' if self.truncated else ''}); "
                    "nothing was classified")
        if self.truncated:
            return "no frame decoded: the file ends before its first frame (its header counts some); nothing was classified"
        if self.lost:
            return (f"no frame came before the source was lost (reopened {self.reconnects} time{'s' if self.reconnects != 1 else ''}); "
                    "nothing was classified")
        return None

    def headline(self) -> list[str]:
        """The summary's first lines, in words (the CLI prints them, the Markdown rendering lists them): frames and FPS
        end to end with what else happened, the decoder and the thread split, the engine measured alone."""
        lines = [f"{self.frames} frames in {self.seconds:.2f} s: {self.fps:.1f} FPS end to end ({self.kind}, preprocess {self.preprocess}); "
                 + ", ".join(self.ended()),
                 f"decoder: {self.decoder or 'unknown'}; threads: {self.threads.why if self.threads else 'default'}"]
        alone, ratio = self.engine_alone, self.of_engine_alone
        if alone is not None and ratio is not None:
            lines.append(f"the engine alone: {alone.fps:.1f} FPS, {alone.mean_ms:.2f} ms a frame ({alone.how}); end to end is {ratio:.0%} of it")
        return lines

    def as_markdown(self) -> str:
        lines = [f"# edge-inception stream: {md_text(self.source)}", ""] + [f"- {md_text(line, 2000)}" for line in self.headline()]
        lines += [f"- saved: {md_text(self.saved)} ({self.saved_frames} frames)"] if self.saved else []
        lines += [f"- ended by {self.interrupted}: the summary covers the frames classified so far"] if self.interrupted else []
        lines += [f"- output error: {md_text(self.output_error)}"] if self.output_error else []
        lines += ["", f"Per stage, {IN_STREAM}:", "", "| stage | p50 ms | p90 ms | mean ms |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {s.p50:.2f} | {s.p90:.2f} | {s.mean:.2f} |" for k, s in self.stages.items()]
        return "\n".join(lines) + "\n"

    def as_figure(self) -> Figure:
        """Each stage's p50 and p90 latency per frame (ms)."""
        return Figure([Bars(f"{self.kind}: {self.fps:.1f} FPS end to end", list(self.stages),
                            [Series(q, [getattr(s, q) for s in self.stages.values()]) for q in ("p50", "p90")], Axis("latency per frame", "ms"))],
                      width=6.5)


@dataclass
class _Item:
    frame: Frame
    tensor: np.ndarray
    started: float  # perf_counter at the start of the frame's decode
    preprocess_ms: float


class _Producer(threading.Thread):
    """Decode + preprocess into the queue; a live source's stale frame is replaced by the newest."""

    def __init__(self, source: VideoSource, image_size: int, mode: PreprocessMode, q: queue.Queue, stop: threading.Event) -> None:
        super().__init__(name="stream-decode", daemon=True)
        self.source, self.image_size, self.mode, self.q, self.stop = source, image_size, mode, q, stop
        self.dropped = 0
        self.error: BaseException | None = None
        self.exhausted = False  # the source ended by itself (not stopped, not failed)

    def run(self) -> None:
        from PIL import Image

        try:
            for frame in self.source.frames():
                if self.stop.is_set():
                    break
                started = time.perf_counter() - frame.decode_ms / 1e3
                t0 = time.perf_counter()
                if frame.model_rgb is not None and self.mode == PreprocessMode.fast:  # the decoder cut and scaled the crop
                    tensor = normalize(frame.model_rgb)
                elif frame.rgb is None:
                    raise StreamError(f"{self.source.name}: the decoder gave no picture for frame {frame.index}")
                elif self.mode == PreprocessMode.exact:
                    tensor = preprocess(Image.fromarray(frame.rgb), self.image_size)
                else:
                    tensor = crop_resize(Image.fromarray(frame.rgb), frame.full_size, self.image_size)
                self._put(_Item(frame, tensor, started, (time.perf_counter() - t0) * 1e3))
            else:
                self.exhausted = not self.stop.is_set()
        except BaseException as exc:  # handed to the consumer, which raises it in the caller's thread
            self.error = exc
        finally:
            self._put(None)

    def _put(self, item: _Item | None) -> None:
        if self.source.live and item is not None:
            try:
                self.q.put_nowait(item)
            except queue.Full:
                try:
                    self.q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
                self.q.put_nowait(item)
            return
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


class _SignalGate:
    """SIGINT and SIGTERM held back while one frame goes to the outputs (``with gate.held():``), then raised as usual
    (KeyboardInterrupt / :class:`Terminated`), so that the video, the JSON lines and the count agree after Ctrl-C.
    Installed as the handlers for the stream's duration, in the main thread only (where Python runs handlers)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: KeyboardInterrupt | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.holding:
            self.pending = self.pending or exc
            return
        raise exc

    def __enter__(self) -> _SignalGate:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            raise self.pending


def _stats(values: list[float]) -> StageStats:
    if not values:
        return StageStats(0.0, 0.0, 0.0)
    a = np.asarray(values)
    return StageStats(float(np.percentile(a, 50)), float(np.percentile(a, 90)), float(a.mean()))


def run_stream(artifact: str | Path, uri: str | VideoSource, *, top_k: int = 5, mode: PreprocessMode = PreprocessMode.fast, save: Path | None = None,
               max_frames: int | None = None, on_frame: Callable[[FrameResult], None] | None = None,
               progress: Callable[[int, str], Any] | None = None, threads: int | None = None,
               reconnect_s: float = RECONNECT_S, split: ThreadSplit | None = None, engine_alone: bool = True,
               calibrate: bool = True, split_cache: Path | None = None, max_seconds: float | None = None,
               require_frames: bool = True) -> StreamSummary:
    """Classify every frame of ``uri`` (see :func:`~edge_inception.stream.sources.open_source`; or a source made by the
    caller, not yet opened) with ``artifact``.

    ``on_frame`` gets each :class:`FrameResult` as it is classified; ``progress(total, desc)`` (a tqdm-like bar) is used
    for sources of known length. ``reconnect_s``: how long a camera or network source that breaks is reopened for (0: not).
    ``threads``: the engine's threads (the decoder gets the cores left); ``split``: decoder and engine threads as given.
    Otherwise, for an engine and a decoder on the CPU (``calibrate``), the split measured for this CPU, model and source
    kind (each of :func:`.plan.split_candidates` streamed on the first frames of a file or folder, the fastest kept,
    remembered in ``split_cache``, default the cache folder's ``stream-split/``: :func:`.calibrate.calibrated_split`);
    else :func:`.plan.split_threads`. ``engine_alone``: run the engine alone after the stream (:func:`measure_engine_alone`).
    ``max_seconds``: stop after this many seconds of streaming (what bounds each calibration run).
    Returns the :class:`StreamSummary`, also after Ctrl-C / SIGTERM (``interrupted``) and after an output write failed
    (``output_error``; an :class:`~.writer.OutputError` raised by ``on_frame`` counts as one). Raises
    :class:`~edge_inception.errors.StreamError` for a source that cannot be opened, and (``require_frames``) for one that
    ended having given no frame because every frame failed (:meth:`StreamSummary.why_nothing`; a clip that holds no
    frame is only logged as a warning, as FFmpeg does), and what the runner raises.
    """
    info = artifact_info(artifact)
    names = info.class_names
    k = min(top_k, info.num_classes)
    source = open_source(uri, info.image_size) if isinstance(uri, str) else uri
    if isinstance(source, FolderSource):
        source.draft = mode == PreprocessMode.fast
    if isinstance(source, LiveAvSource):
        source.reconnect_s = reconnect_s
    # the decoder cuts the model's crop where it can (the fast path); the whole picture only where it is needed
    source.want = Wanted(info.image_size, model=mode == PreprocessMode.fast and isinstance(source, AvSource),
                         full=save is not None or mode == PreprocessMode.exact)
    summary = StreamSummary(source.name, source.kind, mode.value)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    source.open()
    producer: _Producer | None = None
    try:
        if source.media is not None:
            importable, present = probe()
            spec = choose_decoder(source.media, source.codec, importable, present)
        else:
            spec = None
        hardware = bool(spec and spec.hardware)
        if split is None and not threads and calibrate and info.device == "cpu" and not hardware and usable_cpus() > 1:
            try:
                split = _measured_split(artifact, uri, source, mode, split_cache)
            except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM while measuring: a summary of no frames, as at any other time
                summary.interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
                return summary
        summary.threads = split or split_threads(usable_cpus(), info.device, hardware, threads)
        source.use_decoder(spec, summary.threads.decoder)
        summary.decoder = spec.what if spec is not None else source.own_decoder
        log.info("%s: decoder %s; threads: %s", source.name, summary.decoder, summary.threads.why)
        with open_runner(artifact, threads=summary.threads.engine) as runner, video_writer(save, source.fps) as writer:
            producer = _Producer(source, info.image_size, mode, queue.Queue(maxsize=1 if source.live else FILE_QUEUE), threading.Event())
            last = _consume(producer, runner, writer, summary, times, names, k, max_frames, on_frame, progress, max_seconds)
            if require_frames and producer.exhausted and summary.frames == 0 and summary.interrupted is None and summary.output_error is None:
                why = summary.why_nothing()
                if why is not None:
                    raise StreamError(f"{source.name}: {why}")
                log.warning("%s: holds no frame; nothing was classified", source.name)
            if engine_alone and last is not None and summary.interrupted is None and summary.output_error is None:
                summary.engine_alone = measure_engine_alone(runner, last)
    finally:
        # the source is closed once its reader is out of it; a reader still blocked in a network read (bounded by
        # the read timeout) is left behind, a daemon thread that closes nothing more
        if producer is None or not producer.is_alive():
            source.close()
    if source.decoder is not None:  # a hardware decoder that failed at its start fell back to the CPU's
        summary.decoder = source.decoder.what
    if writer is not None and writer.kept and save is not None:
        summary.saved, summary.saved_frames = str(save), writer.kept
    return summary


def _measured_split(artifact: str | Path, uri: str | VideoSource, source: VideoSource, mode: PreprocessMode,
                    cache: Path | None) -> ThreadSplit:
    """The split for this CPU, model and source kind: remembered, or measured now on the first frames of the file or
    folder ``uri`` (read again from its start for each candidate; a live source or a source object is not re-read)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..engines.manifest import manifest_path
    from ..engines.registry import resolve_artifact
    from ..evaluate.cpu import cpu_info
    from ..fileio import cache_dir, sha256_file

    folder = cache or cache_dir() / "stream-split"
    again = uri if isinstance(uri, str) and not source.live else None
    if again is None and not (folder.is_dir() and any(folder.glob("*.json"))):  # nothing to look up: not worth hashing the model
        return calibrated_split(SplitKey("", (), 0, "", "", None, None, "", ()), (), None, folder)
    art = resolve_artifact(artifact)
    manifest = manifest_path(art)
    libraries = []
    for dist in ("onnxruntime", "openvino", "av", "pillow", "scipy"):
        try:
            libraries.append((dist, version(dist)))
        except PackageNotFoundError:
            continue
    cpu = cpu_info()
    key = SplitKey(cpu.model, tuple(sorted(cpu.flags)), usable_cpus(), sha256_file(manifest if manifest.is_file() else art),
                   source.media or source.kind, source.codec, source.frame_size, mode.value, tuple(libraries))

    def rate(pair: tuple[int, int | None]) -> float:
        stamps: list[float] = []
        s = run_stream(artifact, str(again), top_k=1, mode=mode, max_frames=CALIBRATION_FRAMES, max_seconds=CALIBRATION_MAX_S,
                       split=ThreadSplit(pair[0], pair[1], "calibrating"),
                       engine_alone=False, calibrate=False, require_frames=False, on_frame=lambda r: stamps.append(time.perf_counter()))
        if s.interrupted:
            raise Terminated() if s.interrupted == "SIGTERM" else KeyboardInterrupt()
        timed = stamps[CALIBRATION_WARMUP:] if len(stamps) >= CALIBRATION_WARMUP + 3 else stamps
        return (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) >= 2 and timed[-1] > timed[0] else s.fps

    return calibrated_split(key, split_candidates(usable_cpus()), rate if again is not None else None, folder)


def _consume(producer: _Producer, runner: Any, writer: Any, summary: StreamSummary, times: dict[str, list[float]], names: list[str], k: int,
             max_frames: int | None, on_frame: Callable[[FrameResult], None] | None, progress: Callable[[int, str], Any] | None,
             max_seconds: float | None = None) -> np.ndarray | None:
    """The caller's side of :func:`run_stream`: classify what the producer queues, until the source ends, ``max_frames``,
    ``max_seconds`` of streaming,
    a signal, or an output that fails. Returns the last tensor classified (None: none was)."""
    last: np.ndarray | None = None
    source, q, stop = producer.source, producer.q, producer.stop
    total = min(source.total, max_frames) if source.total and max_frames else (max_frames or source.total)
    bar = progress(total, "stream") if progress and total and not source.live else None
    t_start = time.perf_counter()
    producer.start()
    gate = _SignalGate()
    try:
        gate.__enter__()
        while (max_frames is None or summary.frames < max_frames) and (max_seconds is None or time.perf_counter() - t_start < max_seconds):
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                break
            t0 = time.perf_counter()
            logits = runner.run(item.tensor[None])
            t1 = time.perf_counter()
            probs, order = softmax(logits)[0], top_classes(logits[0], k)
            f = item.frame
            result = FrameResult(f.index, f.timestamp_s, f.name, [(int(i), names[i], float(probs[i])) for i in order],
                                 StageTimes(f.decode_ms, item.preprocess_ms, (t1 - t0) * 1e3, (t1 - item.started) * 1e3))
            last = item.tensor
            with gate.held():  # a frame is in every output and counted, or in none
                if writer is not None and f.rgb is not None:
                    i0, _, p0 = result.top[0]
                    writer.write(f.rgb, f"{names[i0]} {p0:.0%}")
                if on_frame is not None:
                    on_frame(result)
                for stage in STAGES:
                    times[stage].append(getattr(result.ms, stage))
                summary.frames += 1
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt as exc:
        summary.interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    except OutputError as exc:  # a full disk, a file-size limit: stop here, keep what is whole
        summary.output_error = str(exc)
    finally:
        gate.__exit__()
        summary.seconds = time.perf_counter() - t_start
        stop.set()
        if isinstance(source, LiveAvSource):
            source.stopping.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                break
        producer.join(timeout=JOIN_S if source.live else FILE_JOIN_S)  # a file's reader leaves after its current frame
        if bar is not None:
            bar.close()
    if producer.error is not None and summary.interrupted is None and summary.output_error is None:
        raise producer.error
    summary.dropped, summary.corrupt, summary.truncated = producer.dropped, source.corrupt, source.truncated
    if isinstance(source, LiveAvSource):
        summary.reconnects, summary.lost = source.reconnects, source.lost
    summary.stages = {s: _stats(v) for s, v in times.items()}
    return last
