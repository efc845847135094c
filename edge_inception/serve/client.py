"""``grpc://HOST:PORT/MODEL[/VERSION]`` targets: a model on a Triton server, through Triton's gRPC client.

gRPC, not HTTP: tritonclient's HTTP client runs on gevent and hung when called from a thread pool (as LoadGen's
scenarios do); its gRPC client is thread-safe. Every call carries a deadline (``timeout_s``), so an address that does
not answer costs at most that long.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.runner import Runner
from ..errors import ImageError, ServeError
from ..names import is_number
from ..vocab import PreprocessMode
from .config import MODEL_NAME_RE

SCHEME = "grpc://"
DEFAULT_TIMEOUT_S = 10.0
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
    """What the server says about a model (its metadata and configuration)."""

    name: str
    input_name: str
    input_datatype: str  # "FP32" or "BYTES" (an ensemble taking encoded images)
    output_name: str
    image_size: int  # 0 for a model taking encoded images
    num_classes: int
    max_batch_size: int
    platform: str

    @property
    def takes_images(self) -> bool:
        return self.input_datatype == "BYTES"


def _error(exc: Exception, target: GrpcTarget, timeout_s: float) -> ServeError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "DEADLINE_EXCEEDED" in text or "Deadline Exceeded" in text:
        return ServeError(f"{target.url} did not answer within {timeout_s:g} s (is a Triton gRPC endpoint there?)")
    if "UNAVAILABLE" in text:
        return ServeError(f"cannot reach a Triton server at {target.url}: {text.split('] ', 1)[-1][:200]}")
    return ServeError(f"{target}: {text.split('] ', 1)[-1][:300]}")


class TritonClient:
    """A gRPC client for one model, checked on connect: the server answers, the model is ready, it is a classifier."""

    def __init__(self, target: GrpcTarget | str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = parse_target(target) if isinstance(target, str) else target
        self.timeout_s = timeout_s
        self.client: Any = None
        self.model: RemoteModel | None = None

    def __enter__(self) -> TritonClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> RemoteModel:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        t = self.target
        self.client = grpcclient.InferenceServerClient(t.url)
        try:
            if not self.client.is_server_live(client_timeout=self.timeout_s):
                raise ServeError(f"the Triton server at {t.url} is not live")
            if not self.client.is_model_ready(t.model, t.version, client_timeout=self.timeout_s):
                names = sorted(m.name for m in self.client.get_model_repository_index(client_timeout=self.timeout_s).models)
                raise ServeError(f"model {t.model!r}{' version ' + t.version if t.version else ''} is not ready on {t.url} "
                                 f"(the server has: {', '.join(names) or 'no models'})")
            meta = self.client.get_model_metadata(t.model, t.version, client_timeout=self.timeout_s)
            cfg = self.client.get_model_config(t.model, t.version, client_timeout=self.timeout_s).config
        except InferenceServerException as exc:
            self.close()
            raise _error(exc, t, self.timeout_s) from None
        except ServeError:
            self.close()
            raise
        if len(meta.inputs) != 1 or len(meta.outputs) != 1:
            self.close()
            raise ServeError(f"{t}: expected one input and one output (a classifier), found {len(meta.inputs)} and {len(meta.outputs)}")
        inp, out = meta.inputs[0], meta.outputs[0]
        batched = cfg.max_batch_size > 0
        in_dims, out_dims = list(inp.shape)[1 if batched else 0:], list(out.shape)[1 if batched else 0:]
        if inp.datatype == "FP32" and (len(in_dims) not in (3, 4) or in_dims[-3] != 3 or in_dims[-1] != in_dims[-2]):
            self.close()
            raise ServeError(f"{t}: input {inp.name} has shape {list(inp.shape)}, not N x 3 x S x S")
        if inp.datatype not in ("FP32", "BYTES") or out.datatype != "FP32" or not out_dims:
            self.close()
            raise ServeError(f"{t}: takes {inp.datatype} and gives {out.datatype}; expected FP32 images (or BYTES) in and FP32 scores out")
        self.model = RemoteModel(t.model, inp.name, inp.datatype, out.name, int(in_dims[-1]) if inp.datatype == "FP32" else 0, int(out_dims[-1]),
                                 int(cfg.max_batch_size), cfg.platform or cfg.backend)
        return self.model

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _infer(self, inputs: Any, class_count: int = 0) -> Any:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        assert self.model is not None
        outputs = [grpcclient.InferRequestedOutput(self.model.output_name, class_count=class_count)]
        try:
            return self.client.infer(self.model.name, [inputs], model_version=self.target.version, outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _error(exc, self.target, self.timeout_s) from None

    def _input(self, batch: np.ndarray) -> Any:
        import tritonclient.grpc as grpcclient

        assert self.model is not None
        datatype = "BYTES" if batch.dtype == object else "FP32"
        x = grpcclient.InferInput(self.model.input_name, list(batch.shape), datatype)
        x.set_data_from_numpy(batch if datatype == "BYTES" else np.ascontiguousarray(batch, dtype=np.float32))
        return x

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x S x S float32 (or N x 1 encoded images, for an ensemble) -> N x classes float32, one request."""
        result = self._infer(self._input(batch))
        assert self.model is not None
        return np.asarray(result.as_numpy(self.model.output_name), dtype=np.float32)

    def classify(self, batch: np.ndarray, k: int) -> list[list[tuple[float, int, str]]]:
        """Triton's classification extension: for each image the top ``k`` (score, class index, label from label_filename)."""
        result = self._infer(self._input(batch), class_count=k)
        assert self.model is not None
        rows = result.as_numpy(self.model.output_name).reshape(len(batch), -1)
        out = []
        for row in rows:
            entries = []
            for item in row:
                score, index, *label = (item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)).split(":", 2)
                entries.append((float(score), int(index), label[0] if label else str(index)))
            out.append(entries)
        return out

    def class_names(self) -> list[str]:
        """All labels, in class order, as the server's label_filename has them (one classification request for every class)."""
        assert self.model is not None
        if self.model.takes_images:
            raise ServeError(f"{self.target} takes encoded images; name its classifier model to read its class names")
        probe = np.zeros((1, 3, self.model.image_size, self.model.image_size), np.float32)
        names = {i: label for _, i, label in self.classify(probe, self.model.num_classes)[0]}
        return [names.get(i, str(i)) for i in range(self.model.num_classes)]

    def statistics(self) -> tuple[int, int]:
        """(inference_count, execution_count) from Triton's statistics extension: more inferences than executions means
        the dynamic batcher put requests together."""
        from tritonclient.utils import InferenceServerException

        try:
            stats = self.client.get_inference_statistics(self.target.model, self.target.version, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _error(exc, self.target, self.timeout_s) from None
        s = stats.model_stats[0]
        return int(s.inference_count), int(s.execution_count)


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
        self.batch_range = (1, model.max_batch_size) if model.max_batch_size > 0 else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.client.logits(batch)

    def deactivate(self) -> None:
        self.client.close()


def predict_remote(target: str, images: Sequence[str | Path], top_k: int = 5, batch_size: int = 8,
                   mode: PreprocessMode = PreprocessMode.fast) -> Any:  # -> PredictRun
    """``predict`` against a served model: probabilities from its logits (softmax, as locally), labels from the server's
    classification extension (its label_filename). Tensors are made here as local ``predict`` makes them (``mode``); a model
    taking encoded images (the ``--preprocess`` ensemble) gets the files' bytes and applies the reference transform itself."""
    from ..data.images import find_images, load_batch
    from ..evaluate.predict import Prediction, PredictRun, softmax

    results: list[Prediction] = []
    started = time.perf_counter()
    with TritonClient(target) as client:  # the server and model first: a wrong address is the first thing to say
        scan = find_images(images)
        if not scan.images:
            raise ImageError("no images found in " + ", ".join(map(str, images)))
        model = client.model
        assert model is not None
        k = min(top_k, model.num_classes)
        chunk_size = min(batch_size, model.max_batch_size) if model.max_batch_size > 0 else 1
        for start in range(0, len(scan.images), chunk_size):
            chunk = scan.images[start:start + chunk_size]
            batch = (np.array([[_read_bytes(p)] for p in chunk], dtype=object) if model.takes_images else load_batch(chunk, model.image_size, mode))
            probs = softmax(client.logits(batch))
            labelled = client.classify(batch, k)
            for path, p, top in zip(chunk, probs, labelled):
                results.append(Prediction(str(path), [(index, label, float(p[index])) for _, index, label in top]))
    return PredictRun(results, [], time.perf_counter() - started)


def _read_bytes(path: Path, limit: int = 64 << 20) -> bytes:
    """An encoded image's bytes: a regular file of at most ``limit`` bytes (a FIFO or device is refused, never read)."""
    from ..fileio import read_regular

    return read_regular(path, limit, "image", error=ImageError)
