"""Which thread split a stream uses on this CPU: each candidate of :func:`.plan.split_candidates` streamed briefly on the
source's first frames, the fastest kept (:func:`.plan.choose_split`, pure), and the measured rates remembered in the
user's cache folder for this CPU kind, model, source kind and preprocessing (``stream-split/<key>.json``, written
atomically with its own sha256, as ``build`` remembers its backend choice). A record whose hash, key or shape does not
check out is measured again and rewritten, never believed.

The measurement is given as a callable (``rate(pair) -> FPS``), so this module decides and remembers, and the stream
(:mod:`.run`) does the streaming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeInceptionError
from .plan import SplitRate, ThreadSplit, choose_split

log = logging.getLogger(__name__)

SPLIT_RECORD_VERSION = 1
MAX_SPLIT_RECORD_BYTES = 16 << 10
CALIBRATION_FRAMES = 40  # frames streamed per candidate split (the first CALIBRATION_WARMUP not timed)
CALIBRATION_WARMUP = 5
CALIBRATION_MAX_S = 3.0  # ... or fewer where they take longer (12 MP photos through the exact path)


@dataclass(frozen=True)
class SplitKey:
    """What a measured split is valid for: the CPU kind (``cpu`` model name and ISA ``flags``), the usable ``cores``, the
    model (``model_sha256``: its manifest or file), the source (``media``: video / photos, ``codec``, ``frame_size``),
    the ``preprocess`` mode and the runtimes' versions (``libraries``)."""

    cpu: str
    flags: tuple[str, ...]
    cores: int
    model_sha256: str
    media: str
    codec: str | None
    frame_size: tuple[int, int] | None
    preprocess: str
    libraries: tuple[tuple[str, str], ...]

    def digest(self) -> str:
        doc = {"v": SPLIT_RECORD_VERSION, "cpu": self.cpu, "flags": sorted(self.flags), "cores": self.cores, "model": self.model_sha256,
               "media": self.media, "codec": self.codec, "frame_size": list(self.frame_size) if self.frame_size else None,
               "preprocess": self.preprocess, "libraries": dict(sorted(self.libraries))}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _rate_ok(r: Any) -> bool:
    d, e, fps = (r.get("decoder"), r.get("engine"), r.get("fps")) if isinstance(r, dict) else (None, None, None)
    return (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 4096
            and (e is None or (isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= 4096))
            and isinstance(fps, (int, float)) and not isinstance(fps, bool) and math.isfinite(fps) and fps >= 0)


def read_split_record(path: Path, key: str) -> tuple[list[SplitRate], str] | None:
    """The rates remembered in ``path`` and when they were measured, or None when there is no record or it does not
    check out (another key, a hash that does not match its content, a field of the wrong type or range)."""
    from ..fileio import read_record

    doc = read_record(path, key, MAX_SPLIT_RECORD_BYTES, "thread split record",
                      lambda d: isinstance(d.get("rates"), list) and 1 <= len(d["rates"]) <= 16 and all(_rate_ok(r) for r in d["rates"]),
                      "not a thread split record for this CPU, model and source, or its hash does not match")
    if doc is None:
        return None
    return [SplitRate(r["decoder"], r["engine"], float(r["fps"])) for r in doc["rates"]], str(doc.get("measured_at", "?"))


def describe(chosen: SplitRate, rates: Sequence[SplitRate], how: str) -> str:
    """One line: the split used, how it was found (measured now / remembered) and the rates it was chosen from."""
    label = ThreadSplit(chosen.decoder, chosen.engine, "").label
    others = ", ".join(f"{ThreadSplit(r.decoder, r.engine, '').label} {r.fps:.1f}" for r in rates)
    return f"{label}, the fastest of the splits {how} (FPS: {others})"


def calibrated_split(key: SplitKey, candidates: Sequence[tuple[int, int | None]], rate: Callable[[tuple[int, int | None]], float] | None,
                     cache: Path) -> ThreadSplit:
    """The split to stream with: remembered in ``cache`` for ``key``, else each of ``candidates`` measured with
    ``rate(pair)`` (FPS; an exception or a non-positive rate: the split is not usable here) and remembered. ``rate``
    None (a live source, which is read once): a remembered split, else the runtimes' defaults, said so."""
    from ..fileio import write_record

    digest = key.digest()
    path = cache / f"{digest}.json"
    remembered = read_split_record(path, digest)
    if remembered is not None and any(r.fps > 0 for r in remembered[0]):
        known, when = remembered
        chosen = choose_split(known)
        return ThreadSplit(chosen.decoder, chosen.engine, describe(chosen, known, f"remembered from {path} (measured {when})"))
    if rate is None:
        return ThreadSplit(0, None, "runtimes' defaults: a live source is not measured (it is read once) and no split is "
                                    "remembered for this CPU, model and frame size (stream a file of the same kind once to measure one)")
    rates: list[SplitRate] = []
    for pair in candidates:
        try:
            fps = float(rate(pair))
        except EdgeInceptionError as exc:
            log.warning("thread split %s not usable here: %s", pair, exc)
            fps = 0.0
        rates.append(SplitRate(pair[0], pair[1], fps if math.isfinite(fps) else 0.0))
    if not any(math.isfinite(r.fps) and r.fps > 0 for r in rates):
        return ThreadSplit(0, None, "runtimes' defaults: no split could be measured here")
    chosen = choose_split(rates)
    doc: dict[str, Any] = {"key": digest, "cpu": key.cpu, "cores": key.cores, "media": key.media, "codec": key.codec,
                           "frame_size": list(key.frame_size) if key.frame_size else None, "preprocess": key.preprocess,
                           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "rates": [{"decoder": r.decoder, "engine": r.engine, "fps": round(r.fps, 3)} for r in rates]}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_record(path, doc)
        where = f"measured now on the first frames; remembered in {path}"
    except (EdgeInceptionError, OSError) as exc:  # an unwritable cache costs a measurement next time, not this stream
        log.warning("cannot remember the thread split: %s", exc)
        where = "measured now on the first frames; not remembered (the cache folder is not writable)"
    return ThreadSplit(chosen.decoder, chosen.engine, describe(chosen, rates, where))
