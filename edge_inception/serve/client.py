"""``grpc://HOST:PORT/MODEL[/VERSION]`` targets: a model on a Triton server, through Triton's gRPC client.

gRPC, not HTTP: tritonclient's HTTP client runs on gevent and hung when called from a thread pool (as LoadGen's
scenarios do); its gRPC client is thread-safe.

A server's answers are input (issue 38), checked as a file is before anything is made from them:

- metadata and configuration: one input and one output; FP32 images N x 3 x S x S (or BYTES encoded images) in, FP32
  scores N x C out; S, C and ``max_batch_size`` within :mod:`edge_inception.limits` (32-1024 px, 1-32,768 classes,
  batch 0 (not batched) to 1,024); the model's name is the one asked for;
- every reply: gRPC's maximum receive size is set from the largest output this model can give (its batch x classes
  x 4 bytes, or its labels), so the server cannot choose how much memory is taken; the output's name, datatype and
  shape are the ones asked for and its byte count matches them, before NumPy sees a byte; scores are finite;
  classification entries (Triton's ``score:index:label``) have finite scores, indexes in [0, C) and labels of at most
  :data:`~edge_inception.names.MAX_LABEL_CHARS` characters;
- a bad answer is one :class:`ServeError` naming the server and what was wrong. Text from the server (error messages,
  labels, names, platform) is kept as sent and escaped where printed (:func:`edge_inception.names.printable`).

Faults (issue 35): every request carries a deadline (``timeout_s``, default :data:`DEFAULT_TIMEOUT_S`); a server that
does not answer within it is one ServeError. gRPC's UNAVAILABLE (a server restarting, a dropped connection) is retried
:data:`RETRIES` times with a doubling backoff from :data:`BACKOFF_S`, each retry logged as a warning (stderr); so one
request waits at most ``(RETRIES + 1) x timeout_s + 3.5 s``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.runner import Runner
from ..errors import ImageError, ServeError
from ..limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE
from ..names import MAX_LABEL_CHARS, is_number, printable
from ..vocab import MIN_IMAGE_SIZE, PreprocessMode
from .config import MODEL_NAME_RE
from .shm import Slots, new_prefix, prefix_of_dead_process

log = logging.getLogger(__name__)

SCHEME = "grpc://"
DEFAULT_TIMEOUT_S = 10.0
RETRIES = 3  # UNAVAILABLE: retried this many times
BACKOFF_S = 0.5  # the first retry's wait, doubled for each next one (0.5, 1, 2 s)
MAX_NAME_CHARS = 256  # a tensor name or platform from the server
METADATA_REPLY_BYTES = 4 << 20  # metadata, configuration, index and statistics replies: a few KB for a classifier
REPLY_OVERHEAD_BYTES = 64 << 10  # a reply's framing beyond its output tensor (names, shape, parameters)
_ENTRY_BYTES = 4 + 48 + 4 * MAX_LABEL_CHARS  # a classification entry: its length, "score:index:", a label in UTF-8
_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}")  # fullmatch: "$" also matches before a final newline


def is_remote(target: str | Path) -> bool:
    return str(target).startswith(SCHEME)


@dataclass(frozen=True)
class GrpcTarget:
    host: str
    port: int
    model: str
    version: str = ""  # "" : the server's choice (latest)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.url}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_target(text: str) -> GrpcTarget:
    """``grpc://HOST:PORT/MODEL[/VERSION]``, every part checked; anything else is one ServeError line saying the form."""
    form = "expected grpc://HOST:PORT/MODEL[/VERSION]"
    if not text.startswith(SCHEME):
        raise ServeError(f"{text!r}: {form}")
    rest = text[len(SCHEME):]
    hostport, _, path = rest.partition("/")
    host, sep, port_text = hostport.rpartition(":")
    parts = [p for p in path.split("/") if p] if path else []
    if not sep or not host or not is_number(port_text) or not 1 <= int(port_text) <= 65535 or not _HOST_RE.fullmatch(host):
        raise ServeError(f"{text!r}: {form} (a host name or address, and a port in 1..65535)")
    if len(parts) not in (1, 2) or not MODEL_NAME_RE.fullmatch(parts[0]) or (len(parts) == 2 and not is_number(parts[1])):
        raise ServeError(f"{text!r}: {form} (a model name of letters, digits, '_', '.', '-'; a numeric version)")
    return GrpcTarget(host, int(port_text), parts[0], parts[1] if len(parts) == 2 else "")


@dataclass(frozen=True)
class RemoteModel:
    """What the server says about a model (its metadata and configuration), checked."""

    name: str
    input_name: str
    input_datatype: str  # "FP32" or "BYTES" (an ensemble taking encoded images)
    output_name: str
    image_size: int  # 0 for a model taking encoded images
    num_classes: int
    max_batch_size: int  # 0: not batched by Triton (the batch is in the dims)
    platform: str
    fixed_batch: int = 0  # a model not batched by Triton: the batch its input's dims fix (0: any)

    @property
    def takes_images(self) -> bool:
        return self.input_datatype == "BYTES"

    @property
    def largest_batch(self) -> int:
        """The most images one request may carry."""
        return self.max_batch_size if self.max_batch_size > 0 else max(1, self.fixed_batch)


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return str(status() or "") if callable(status) else ""


def _detail(exc: Exception) -> str:
    """The server's message, one line, at most 300 characters, escaped: it is the server's text."""
    message = getattr(exc, "message", None)
    text = str(message() if callable(message) else exc) or type(exc).__name__
    return printable(text.split("] ", 1)[-1] if text.startswith("[") else text, 300)


class TritonClient:
    """A gRPC client for one model, checked on connect: the server answers, the model is ready, it is a classifier of a
    size this toolkit takes. Every method raises :class:`ServeError` for a server that does not answer in time or
    answers something other than what was asked."""

    def __init__(self, target: GrpcTarget | str, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = RETRIES) -> None:
        self.target = parse_target(target) if isinstance(target, str) else target
        if not 0 < timeout_s <= 3600 or not 0 <= retries <= 10:
            raise ServeError(f"a request's timeout must be in (0, 3600] s and retries in [0, 10], got {timeout_s:g} and {retries}")
        self.timeout_s = timeout_s
        self.retries = retries
        self.client: Any = None
        self.model: RemoteModel | None = None
        self.reply_limit = METADATA_REPLY_BYTES
        self.slots: Slots | None = None  # system shared memory, once use_shared_memory() made it

    def __enter__(self) -> TritonClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the channel and every call through it ---------------------------------------------------------------------

    def _open_channel(self, reply_limit: int) -> None:
        import tritonclient.grpc as grpcclient

        self.close()
        self.reply_limit = reply_limit
        # tritonclient's own defaults (keepalive as KeepAliveOptions()), except the receive limit: no reply larger than
        # what this model can legitimately send is read into memory
        self.client = grpcclient.InferenceServerClient(self.target.url, channel_args=[
            ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", reply_limit),
            ("grpc.keepalive_time_ms", 2**31 - 1), ("grpc.keepalive_timeout_ms", 20000), ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 2)])

    def drop_regions(self, prefix: str | None = None, *, stale: bool = False, within_s: float = 3.0) -> int:
        """Unregister the server's system shared-memory regions named ``<prefix>-*``, or (``stale``) those of
        :func:`.shm.new_prefix` form whose process is gone: what a client killed before it closed left registered (the
        server keeps each mapped until it restarts). Bounded by ``within_s`` in all, no retries; never raises (a server
        that does not answer keeps them). Returns how many were unregistered. Opens a channel if none is open."""
        from tritonclient.utils import InferenceServerException

        if self.client is None:
            self._open_channel(METADATA_REPLY_BYTES)
        deadline = time.monotonic() + within_s
        dropped = 0
        try:
            status = self.client.get_system_shared_memory_status(client_timeout=within_s)
            names = [r.name for r in list(status.regions.values())[:10_000]]
            for name in names:
                if not (name.startswith(f"{prefix}-") if prefix else stale and prefix_of_dead_process(name)):
                    continue
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return dropped
                    try:
                        self.client.unregister_system_shared_memory(name, client_timeout=left)
                        dropped += 1
                        break
                    except InferenceServerException as exc:
                        if "in use" not in str(exc):
                            break
                        time.sleep(0.05)
        except InferenceServerException as exc:
            log.debug("%s: shared memory status not read: %s", self.target.url, _detail(exc))
        return dropped

    def _call(self, method: str, *args: Any, retries: int | None = None, **kwargs: Any) -> Any:
        """``self.client.method(*args, client_timeout=timeout_s)``, retried on UNAVAILABLE (``retries``, default the
        client's), errors as ServeError."""
        from tritonclient.utils import InferenceServerException

        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return getattr(self.client, method)(*args, client_timeout=self.timeout_s, **kwargs)
            except InferenceServerException as exc:
                if _status(exc) == "StatusCode.UNAVAILABLE" and attempt < retries:
                    wait = BACKOFF_S * 2**attempt
                    log.warning("%s is unavailable (%s); retry %d of %d in %g s", self.target.url, _detail(exc), attempt + 1,
                                retries, wait)
                    time.sleep(wait)
                    continue
                raise self._error(exc, attempt) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: Exception, retried: int = 0) -> ServeError:
        t, status = self.target, _status(exc)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return ServeError(f"the server at {t.url} did not answer within {self.timeout_s:g} s (is a Triton gRPC endpoint there, and alive?)")
        if status == "StatusCode.UNAVAILABLE":
            tries = f" (tried {retried + 1} times over {sum(BACKOFF_S * 2**i for i in range(retried)):g} s)" if retried else ""
            return ServeError(f"cannot reach a Triton server at {t.url}{tries}: {_detail(exc)}")
        if status == "StatusCode.RESOURCE_EXHAUSTED":
            return ServeError(f"the server at {t.url} sent a reply larger than the {self.reply_limit:,} bytes model {t.model} can need: "
                              f"{_detail(exc)}")
        return ServeError(f"{t}: the server says: {_detail(exc)}")

    def _bad(self, what: str) -> ServeError:
        return ServeError(f"{self.target}: the server's answer is not valid: {what}")

    # -- connecting: the metadata and configuration, checked -----------------------------------------------------------

    def connect(self) -> RemoteModel:
        t = self.target
        self._open_channel(METADATA_REPLY_BYTES)
        try:
            if not self._call("is_server_live"):
                raise ServeError(f"the Triton server at {t.url} is not live")
            if not self._call("is_model_ready", t.model, t.version):
                index = self._call("get_model_repository_index").models
                names = sorted({printable(m.name, 64) for m in list(index)[:1000]})
                shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
                raise ServeError(f"model {t.model!r}{' version ' + t.version if t.version else ''} is not ready on {t.url} "
                                 f"(the server has: {shown or 'no models'})")
            meta = self._call("get_model_metadata", t.model, t.version)
            cfg = self._call("get_model_config", t.model, t.version).config
            self.model = self._check_metadata(meta, cfg)
            m = self.model
            logits_bytes = m.largest_batch * m.num_classes * 4
            labels_bytes = m.num_classes * _ENTRY_BYTES  # class_names(): one image, every class
            self._open_channel(max(METADATA_REPLY_BYTES, REPLY_OVERHEAD_BYTES + max(logits_bytes, labels_bytes)))
        except BaseException:
            self.close()
            raise
        return self.model

    def _check_metadata(self, meta: Any, cfg: Any) -> RemoteModel:
        t = self.target
        if meta.name != t.model:
            raise self._bad(f"metadata for model '{printable(meta.name, 80)}', asked for {t.model!r}")
        if len(meta.inputs) != 1 or len(meta.outputs) != 1:
            raise ServeError(f"{t}: expected one input and one output (a classifier), found {len(meta.inputs)} and {len(meta.outputs)}")
        inp, out = meta.inputs[0], meta.outputs[0]
        for what, text in (("input name", inp.name), ("output name", out.name), ("platform", cfg.platform or cfg.backend)):
            if not text or len(text) > MAX_NAME_CHARS:
                raise self._bad(f"a {what} of {len(text)} characters (1 to {MAX_NAME_CHARS})")
        if inp.datatype not in ("FP32", "BYTES") or out.datatype != "FP32":
            raise ServeError(f"{t}: takes {printable(inp.datatype, 20)} and gives {printable(out.datatype, 20)}; expected FP32 images "
                             "(or BYTES) in and FP32 scores out")
        if not 0 <= cfg.max_batch_size <= MAX_BATCH:
            raise self._bad(f"max_batch_size {cfg.max_batch_size} (0 to {MAX_BATCH})")
        batched = cfg.max_batch_size > 0
        in_shape, out_shape = list(inp.shape), list(out.shape)
        if batched and (not in_shape or in_shape[0] != -1 or not out_shape or out_shape[0] != -1):
            raise self._bad(f"max_batch_size {cfg.max_batch_size} but shapes {in_shape} and {out_shape} without a variable batch (-1) first")
        in_dims, out_dims = in_shape[1 if batched else 0:], out_shape[1 if batched else 0:]
        fixed = 0
        if not batched:  # the batch is in the dims: N x 3 x S x S in, N x C out, N fixed (>= 1) or -1
            if len(in_dims) < 2 or len(out_dims) != 2 or in_dims[0] != out_dims[0] or not (in_dims[0] == -1 or 1 <= in_dims[0] <= MAX_BATCH):
                raise self._bad(f"shapes {in_shape} and {out_shape}: a model not batched by Triton needs the same batch first in both "
                                f"(-1 or 1 to {MAX_BATCH})")
            fixed = max(0, int(in_dims[0]))
            in_dims, out_dims = in_dims[1:], out_dims[1:]
        if inp.datatype == "FP32":
            if len(in_dims) != 3 or in_dims[0] != 3 or in_dims[1] != in_dims[2]:
                raise ServeError(f"{t}: input {printable(inp.name, 80)} has shape {in_shape}, not N x 3 x S x S")
            if not MIN_IMAGE_SIZE <= in_dims[2] <= MAX_IMAGE_SIZE:
                raise self._bad(f"an input of {in_dims[2]} x {in_dims[2]} px; this toolkit takes {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (limits.py)")
        elif in_dims != [1]:
            raise self._bad(f"input {printable(inp.name, 80)} takes BYTES of shape {in_shape}, not one encoded image per batch entry")
        if len(out_dims) != 1 or not 1 <= out_dims[0] <= MAX_CLASSES:
            raise self._bad(f"output {printable(out.name, 80)} has shape {out_shape}; expected N x C scores with 1 to {MAX_CLASSES:,} "
                            "classes (limits.py)")
        return RemoteModel(t.model, inp.name, inp.datatype, out.name, int(in_dims[2]) if inp.datatype == "FP32" else 0, int(out_dims[0]),
                           int(cfg.max_batch_size), cfg.platform or cfg.backend, fixed)

    def close(self) -> None:
        if self.slots is not None:
            slots, self.slots = self.slots, None
            slots.close()
        if self.client is not None:
            self.client.close()
            self.client = None

    def use_shared_memory(self, batch: int, in_flight: int, prefix: str | None = None) -> None:
        """From now on, requests of up to ``batch`` images and their replies go through Triton's system shared memory
        (:mod:`.shm`): ``in_flight`` pairs of regions named ``<prefix>-<i>-in/out`` (default prefix
        :func:`.shm.new_prefix`), registered with the server; :meth:`close` unregisters and removes them.
        For a server on this machine: one that cannot map them (another machine's, a container's) is a ServeError.
        A model taking encoded images keeps the gRPC stream."""
        m = self._model()
        if m.takes_images:
            raise ServeError(f"{self.target} takes encoded images; --shared-memory system carries FP32 tensors (name its classifier model)")
        batch = min(batch, m.largest_batch)
        name = prefix or new_prefix()
        self.drop_regions(stale=True)  # registrations a killed client of this machine left on this server

        def register(region: str, key: str, size: int) -> None:
            try:
                self._call("register_system_shared_memory", region, key, size)
            except ServeError as exc:
                raise ServeError(f"{exc} (system shared memory needs the server on this machine, as this user)") from None

        def unregister(region: str) -> None:
            self._call("unregister_system_shared_memory", region, retries=0)

        self.slots = Slots(name, in_flight, batch * 3 * m.image_size**2 * 4, batch * m.num_classes * 4, register, unregister)

    # -- inference: every reply checked before it is used ---------------------------------------------------------------

    def _infer(self, batch: np.ndarray, class_count: int = 0) -> Any:
        """One request; the reply's single output tensor (its protobuf) and its raw bytes, checked against the request."""
        import tritonclient.grpc as grpcclient

        m = self._model()
        if not 1 <= len(batch) <= m.largest_batch:
            raise ServeError(f"{self.target}: a batch of {len(batch)} images; this model takes 1 to {m.largest_batch}")
        outputs = [grpcclient.InferRequestedOutput(m.output_name, class_count=class_count)]
        result = self._call("infer", m.name, [self._input(batch)], model_version=self.target.version, outputs=outputs)
        return self._checked_output(result.get_response(), len(batch), class_count)

    def _infer_shared(self, slots: Slots, batch: np.ndarray) -> np.ndarray:
        """One request through system shared memory: the batch written to a free input region, the scores read from its
        output region once the reply (checked as any other) says they are there."""
        import tritonclient.grpc as grpcclient

        m = self._model()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with slots.slot() as (region_in, region_out):
            inp = grpcclient.InferInput(m.input_name, list(x.shape), "FP32")
            inp.set_shared_memory(region_in.name, slots.write(region_in, x))
            slots.clear(region_out, len(x) * m.num_classes)
            out = grpcclient.InferRequestedOutput(m.output_name)
            out.set_shared_memory(region_out.name, len(x) * m.num_classes * 4)
            result = self._call("infer", m.name, [inp], model_version=self.target.version, outputs=[out])
            self._checked_output(result.get_response(), len(x), 0, shared=True)
            return slots.read(region_out, (len(x), m.num_classes))

    def _checked_output(self, reply: Any, n: int, class_count: int, shared: bool = False) -> Any:
        """The reply's one output checked against a request of ``n`` images: model, name, datatype, shape, and its raw
        bytes (returned), or none where the output went to shared memory."""
        m = self._model()
        if reply.model_name != m.name:
            raise self._bad(f"a reply from model '{printable(reply.model_name, 80)}', asked {m.name!r}")
        if len(reply.outputs) != 1 or reply.outputs[0].name != m.output_name:
            names = ", ".join(printable(o.name, 80) for o in list(reply.outputs)[:5])
            raise self._bad(f"outputs [{names}], asked for '{printable(m.output_name, 80)}' alone")
        out = reply.outputs[0]
        want_type, width = ("BYTES", class_count) if class_count else ("FP32", m.num_classes)
        if out.datatype != want_type:
            raise self._bad(f"output datatype {printable(out.datatype, 20)}, expected {want_type}")
        if list(out.shape) != [n, width]:
            raise self._bad(f"output shape {list(out.shape)[:8]}, expected {[n, width]}")
        if shared:  # the scores are in the region: the reply carries none (Triton sends one empty buffer)
            if any(len(b) for b in reply.raw_output_contents):
                raise self._bad(f"{sum(len(b) for b in reply.raw_output_contents):,} bytes of output in the reply; it was asked in shared memory")
            return None
        if len(reply.raw_output_contents) != 1:
            raise self._bad(f"{len(reply.raw_output_contents)} raw output buffers, expected 1")
        raw = reply.raw_output_contents[0]
        if want_type == "FP32" and len(raw) != 4 * n * width:
            raise self._bad(f"{len(raw):,} bytes of scores, expected {4 * n * width:,} ({n} x {width} FP32)")
        return raw

    def _model(self) -> RemoteModel:
        if self.model is None or self.client is None:
            raise ServeError(f"{self.target}: not connected")
        return self.model

    def _input(self, batch: np.ndarray) -> Any:
        import tritonclient.grpc as grpcclient

        m = self._model()
        datatype = "BYTES" if batch.dtype == object else "FP32"
        if datatype != m.input_datatype:
            raise ServeError(f"{self.target} takes {m.input_datatype}, not {datatype}")
        x = grpcclient.InferInput(m.input_name, list(batch.shape), datatype)
        x.set_data_from_numpy(batch if datatype == "BYTES" else np.ascontiguousarray(batch, dtype=np.float32))
        return x

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x S x S float32 (or N x 1 encoded images, for an ensemble) -> N x C float32 scores, one request; the
        reply's shape, datatype and size checked, and every score finite (NaN or inf is a ServeError)."""
        m = self._model()
        slots = self.slots
        if slots is not None and batch.dtype != object and 4 * batch.size <= slots.in_bytes:
            scores = self._infer_shared(slots, batch)
        else:
            scores = np.frombuffer(self._infer(batch), dtype="<f4").reshape(len(batch), m.num_classes)
        bad = ~np.isfinite(scores)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise self._bad(f"{int(bad.sum())} non-finite score(s) ({scores[row, col]} for image {row + 1} of the batch, class {col})")
        return scores.astype(np.float32)

    def classify(self, batch: np.ndarray, k: int) -> list[list[tuple[float, int, str]]]:
        """Triton's classification extension: for each image exactly ``k`` (score, class index, label from
        label_filename) entries, each checked: a finite score, an index in [0, C), a label of at most
        MAX_LABEL_CHARS characters (kept as sent: escape it before printing)."""
        m = self._model()
        if not 1 <= k <= m.num_classes:
            raise ServeError(f"{self.target}: asked for the top {k} of {m.num_classes} classes")
        entries = self._entries(self._infer(batch, class_count=k), len(batch) * k)
        out: list[list[tuple[float, int, str]]] = []
        for i in range(len(batch)):
            row = []
            for text in entries[i * k:(i + 1) * k]:
                score_text, _, rest = text.partition(":")
                index_text, _, label = rest.partition(":")
                try:
                    score = float(score_text)
                except ValueError:
                    score = math.nan
                if not math.isfinite(score) or not is_number(index_text) or len(index_text) > 6 or not 0 <= int(index_text) < m.num_classes:
                    raise self._bad(f"classification entry '{printable(text, 80)}': expected score:index[:label] with a finite score "
                                    f"and an index in [0, {m.num_classes})")
                if len(label) > MAX_LABEL_CHARS:
                    raise self._bad(f"a label of {len(label)} characters (at most {MAX_LABEL_CHARS})")
                row.append((score, int(index_text), label or index_text))
            out.append(row)
        return out

    def _entries(self, raw: bytes, count: int) -> list[str]:
        """Triton's BYTES tensor (each element a 4-byte little-endian length, then its bytes): exactly ``count`` elements."""
        entries: list[str] = []
        pos = 0
        while pos < len(raw):
            if len(entries) == count or pos + 4 > len(raw):
                raise self._bad(f"more than the {count} classification entries asked for, or a cut one")
            (size,) = struct.unpack_from("<I", raw, pos)
            if size > _ENTRY_BYTES or pos + 4 + size > len(raw):
                raise self._bad(f"a classification entry of {size:,} bytes (at most {_ENTRY_BYTES:,}, {len(raw) - pos - 4:,} left)")
            entries.append(raw[pos + 4:pos + 4 + size].decode("utf-8", "replace"))
            pos += 4 + size
        if len(entries) != count:
            raise self._bad(f"{len(entries)} classification entries, expected {count}")
        return entries

    def class_names(self, probe: np.ndarray | None = None) -> list[str]:
        """All C labels, in class order, as the server's label_filename has them: one classification request for every
        class over one image (``probe``: an encoded image for a model taking images; zeros otherwise). A class the
        reply names twice is a ServeError; one without a label is named by its index."""
        m = self._model()
        if probe is None:
            if m.takes_images:
                raise ServeError(f"{self.target} takes encoded images; name its classifier model to read its class names")
            probe = np.zeros((1, 3, m.image_size, m.image_size), np.float32)
        names: dict[int, str] = {}
        for _, i, label in self.classify(probe[:1], m.num_classes)[0]:
            if i in names:
                raise self._bad(f"class {i} twice in one classification reply")
            names[i] = label
        return [names.get(i, str(i)) for i in range(m.num_classes)]

    def statistics(self) -> tuple[int, int]:
        """(inference_count, execution_count) from Triton's statistics extension: more inferences than executions means
        the dynamic batcher put requests together."""
        stats = self._call("get_inference_statistics", self.target.model, self.target.version)
        if len(stats.model_stats) < 1:
            raise self._bad("no statistics for the model")
        s = stats.model_stats[0]
        return int(s.inference_count), int(s.execution_count)

    def failures(self) -> int:
        """The model's failed inferences so far (Triton's statistics extension: ``inference_stats.fail.count``)."""
        stats = self._call("get_inference_statistics", self.target.model, self.target.version)
        if len(stats.model_stats) < 1:
            raise self._bad("no statistics for the model")
        return int(stats.model_stats[0].inference_stats.fail.count)


class TritonRunner(Runner):
    """A model on a Triton server as a :class:`Runner`: ``infer`` is one gRPC request; batches beyond the model's
    max_batch_size go in chunks."""

    name = "triton"

    def __init__(self, target: GrpcTarget | str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.client = TritonClient(target, timeout_s=timeout_s)

    def activate(self) -> None:
        model = self.client.connect()
        if model.takes_images:
            self.client.close()
            raise ServeError(f"{self.client.target} takes encoded images; name its classifier model instead")
        self.batch_range = (1, model.largest_batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.client.logits(batch)

    def deactivate(self) -> None:
        self.client.close()


def predict_remote(target: str, images: Sequence[str | Path], top_k: int = 5, batch_size: int = 8,
                   mode: PreprocessMode = PreprocessMode.fast, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                   on_prediction: Callable[[Any], None] | None = None) -> Any:  # -> PredictRun
    """``predict`` against a served model: probabilities from its logits (softmax, and the top ``top_k`` of them, as
    locally: always ``min(top_k, C)`` per image whatever the server sends), labels read once from the server's
    classification extension (its label_filename). Tensors are made here as local ``predict`` makes them (``mode``); a
    model taking encoded images (the ``--preprocess`` ensemble) gets the files' bytes and applies the reference
    transform itself.

    ``on_prediction`` gets each Prediction as its batch completes, so a caller can show what was done before a fault.
    A fault (the server dies, stops answering, answers wrongly) is a ServeError saying how many of the images were
    classified before it."""
    from ..data.images import find_images, load_chunk, load_image
    from ..evaluate.predict import Prediction, PredictRun
    from ..evaluate.verify import softmax, top_classes

    results: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    started = time.perf_counter()
    with TritonClient(target, timeout_s=timeout_s) as client:  # the server and model first: a wrong address is the first thing to say
        scan = find_images(images)
        if not scan.images:
            raise ImageError("no images found in " + ", ".join(map(str, images)))
        model = client._model()
        k = min(top_k, model.num_classes)
        chunk_size = min(batch_size, model.largest_batch)

        def batch_of(paths: Sequence[Path]) -> tuple[list[Path], np.ndarray]:
            """The files of ``paths`` that decode, and their batch; the others go to ``failed``, as local predict skips
            them (one unreadable file in a request fails the whole request on the server)."""
            if not model.takes_images:
                loaded = load_chunk(paths, model.image_size, mode)
                failed.extend((str(p), why) for p, why in loaded.failed)
                return loaded.paths, loaded.tensors
            good = []
            for p in paths:
                try:
                    load_image(p)  # checked here, decoded again by the server's preprocessing model
                    good.append(p)
                except ImageError as exc:
                    failed.append((str(p), str(exc)))
            return good, np.array([[_read_bytes(p)] for p in good], dtype=object)

        try:
            labels: list[str] | None = None if model.takes_images else client.class_names(None)
            for start in range(0, len(scan.images), chunk_size):
                chunk, data = batch_of(scan.images[start:start + chunk_size])
                if not chunk:
                    continue
                if labels is None:
                    labels = client.class_names(data[:1])
                logits = client.logits(data)
                for path, p, order in zip(chunk, softmax(logits), top_classes(logits, k)):
                    results.append(Prediction(str(path), [(int(i), labels[i], float(p[i])) for i in order]))
                    if on_prediction is not None:
                        on_prediction(results[-1])
        except ServeError as exc:
            total = len(scan.images)
            raise ServeError(f"{exc} ({len(results)} of {total} image{'' if total == 1 else 's'} classified before it"
                             f"{', shown above' if results and on_prediction is not None else ''})") from None
    if not results and len(failed) == 1:
        raise ImageError(failed[0][1])
    if not results:
        raise ImageError(f"none of the {len(failed)} images decoded, e.g. {failed[0][1]}")
    return PredictRun(results, failed, time.perf_counter() - started)


def _read_bytes(path: Path, limit: int = 64 << 20) -> bytes:
    """An encoded image's bytes: a regular file of at most ``limit`` bytes (a FIFO or device is refused, never read)."""
    from ..fileio import read_regular

    return read_regular(path, limit, "image", error=ImageError)
