"""A small fake KServe-v2 gRPC server on 127.0.0.1, built from tritonclient's own protos (service_pb2 and
service_pb2_grpc), that answers as a Triton server with one classifier would, or lies in one chosen way.

It is the server side of issue 38's kind 1 ("a server's answers are input") and issue 35's client faults: the real
tritonserver never lies, so the client's checks are tried against this one. Each lie is one ``Fake`` field:

- ``meta``: fields of the model's metadata or configuration replaced (``image_size``, ``classes``, ``max_batch_size``,
  ``input_datatype``, ``output_datatype``, ``input_shape``, ``output_shape``, ``name``, ``platform``, ``inputs``);
- ``reply``: how ModelInfer lies: ``shape`` (a wrong output shape), ``datatype`` (INT32 scores), ``huge_dims`` (a
  declared 2**40 x 2**40 output), ``oversize`` (16 MiB of scores), ``short_bytes`` (fewer bytes than the shape says),
  ``nan``/``inf`` (a non-finite score), ``bad_index`` (a class index out of range in classification), ``few``/``many``
  (fewer or more classification entries than asked), ``model_name`` (a reply for another model), ``error`` (an error
  whose message holds a right-to-left override and an escape sequence), ``hang`` (never answers: bounded by
  ``hang_s``); ``after``: so many honest ModelInfer answers first;
- ``labels``: the label_filename's entries (control characters included, if a test wants them);
- ``index_names``: the repository index (what a not-ready model's error lists);
- ``unavailable``: so many calls answered UNAVAILABLE (a server restarting) before it answers.

Bounded: the server runs on a thread pool in this process, binds 127.0.0.1 on a free port, answers at most
``max_requests`` calls, a hanging call ends after ``hang_s`` or on :meth:`FakeKServe.stop`, and the module-scoped
fixture :func:`fake_kserve` stops it also when a test fails. ``python -m tests.fake_kserve --reply nan`` runs one from
a shell (for trying the CLI by hand), for at most ``--seconds``.
"""

from __future__ import annotations

import argparse
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

MODEL = "fake"


@dataclass
class Fake:
    """What the fake server says (defaults: an honest 32 px, 10-class classifier batching up to 8)."""

    image_size: int = 32
    classes: int = 10
    max_batch_size: int = 8
    labels: list[str] | None = None  # default: class0 ... class9
    meta: dict[str, Any] = field(default_factory=dict)
    reply: str = ""
    index_names: list[str] = field(default_factory=lambda: [MODEL])
    ready: bool = True
    unavailable: int = 0
    hang_s: float = 30.0
    after: int = 0  # the reply's lie starts after this many honest ModelInfer answers
    max_requests: int = 10_000


def scores(n: int, classes: int) -> np.ndarray:
    """The honest logits: image i scores class c as c + i (so the top class is the last one), float32 N x C."""
    return (np.arange(classes, dtype=np.float32)[None, :] + np.arange(n, dtype=np.float32)[:, None]).astype(np.float32)


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


class FakeKServe:
    """The fake server: :meth:`start` binds 127.0.0.1 on a free port; :attr:`fake` says what it answers (replace it
    between tests: :meth:`reset`); :attr:`calls` counts the RPCs it got."""

    def __init__(self) -> None:
        self.fake = Fake()
        self.calls: dict[str, int] = {}
        self.port = 0
        self.server: Any = None
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, model: str = MODEL) -> str:
        return f"grpc://{self.url}/{model}"

    def reset(self, **kw: Any) -> FakeKServe:
        self.fake = Fake(**kw)
        with self.lock:
            self.calls = {}
        return self

    def start(self) -> FakeKServe:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-kserve"),
                                  options=[("grpc.max_receive_message_length", 256 << 20)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        self.stopped.set()  # ends a hanging call at once
        if self.server is not None:
            self.server.stop(grace=0).wait(10)
            self.server = None


def _servicer_base() -> type:
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceServicer  # type: ignore[no-any-return]


class _Servicer(_servicer_base()):  # type: ignore[misc]
    def __init__(self, owner: FakeKServe) -> None:
        self.owner = owner

    # every call: counted, bounded, UNAVAILABLE while the fake says so
    def _enter(self, name: str, context: Any) -> Fake:
        import grpc

        o = self.owner
        with o.lock:
            o.calls[name] = o.calls.get(name, 0) + 1
            total = sum(o.calls.values())
            fake = o.fake
            unavailable = fake.unavailable > 0
            if unavailable:
                fake.unavailable -= 1
        if total > fake.max_requests:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the fake server's request bound is reached")
        if unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fake server is restarting")
        return fake

    def ServerLive(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        self._enter("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        self._enter("ServerReady", context)
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        fake = self._enter("ModelReady", context)
        return pb.ModelReadyResponse(ready=fake.ready and request.name == MODEL)

    def RepositoryIndex(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        fake = self._enter("RepositoryIndex", context)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(name=n, version="1", state="READY")
                                                  for n in fake.index_names])

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        fake = self._enter("ModelMetadata", context)
        m, s = fake.meta, fake.image_size
        batch = [-1] if fake.max_batch_size > 0 else []
        tensor = pb.ModelMetadataResponse.TensorMetadata
        inputs = [tensor(name="input", datatype=m.get("input_datatype", "FP32"), shape=m.get("input_shape", [*batch, 3, s, s]))]
        outputs = [tensor(name=m.get("output_name", "logits"), datatype=m.get("output_datatype", "FP32"),
                          shape=m.get("output_shape", [*batch, fake.classes]))]
        return pb.ModelMetadataResponse(name=m.get("name", MODEL), versions=["1"], platform=m.get("platform", "onnxruntime_onnx"),
                                        inputs=inputs * m.get("inputs", 1), outputs=outputs)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import model_config_pb2 as mc
        from tritonclient.grpc import service_pb2 as pb

        fake = self._enter("ModelConfig", context)
        return pb.ModelConfigResponse(config=mc.ModelConfig(name=MODEL, platform=fake.meta.get("platform", "onnxruntime_onnx"),
                                                            max_batch_size=fake.max_batch_size))

    def ModelStatistics(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        self._enter("ModelStatistics", context)
        return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name=MODEL, version="1")])

    def ModelInfer(self, request: Any, context: Any) -> Any:
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        fake = self._enter("ModelInfer", context)
        lie = fake.reply if self.owner.calls.get("ModelInfer", 0) > fake.after else ""
        if lie == "hang":
            self.owner.stopped.wait(fake.hang_s)
            context.abort(grpc.StatusCode.CANCELLED, "the fake server stopped hanging")
        if lie == "error":
            context.abort(grpc.StatusCode.INTERNAL, "model failed \u202eevil\u202c \x1b[2J\nerror: forged line")
        n = int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1
        out = request.outputs[0] if request.outputs else None
        name = out.name if out is not None else "logits"
        k = int(out.parameters["classification"].int64_param) if out is not None and "classification" in out.parameters else 0
        model_name = "other" if lie == "model_name" else request.model_name
        logits = scores(n, fake.classes)
        if lie in ("nan", "inf"):
            logits[0, 3] = np.nan if lie == "nan" else np.inf
        if k:
            labels = fake.labels or [f"class{i}" for i in range(fake.classes)]
            order = np.argsort(-logits, axis=1)[:, :k]
            count = k - 1 if lie == "few" else k + 2 if lie == "many" else k
            items = []
            for i in range(n):
                chosen = [int(c) for c in order[i]]
                chosen = chosen[:count] if count < k else chosen + chosen[:count - k]
                for c in chosen:
                    index = fake.classes + 5 if lie == "bad_index" else c
                    items.append(f"{logits[i, c]:.6f}:{index}:{labels[c % len(labels)]}".encode())
            return pb.ModelInferResponse(model_name=model_name, model_version="1", outputs=[
                pb.ModelInferResponse.InferOutputTensor(name=name, datatype="BYTES", shape=[n, k])], raw_output_contents=[_bytes_tensor(items)])
        shape, datatype, raw = [n, fake.classes], "FP32", logits.astype("<f4").tobytes()
        if lie == "shape":
            shape = [n, fake.classes + 1]
        elif lie == "datatype":
            datatype, raw = "INT32", logits.astype("<i4").tobytes()
        elif lie == "huge_dims":
            shape = [2**40, 2**40]
        elif lie == "oversize":
            shape, raw = [n, (16 << 20) // (4 * n)], np.zeros((16 << 20) // 4, "<f4").tobytes()
        elif lie == "short_bytes":
            raw = raw[:-4]
        return pb.ModelInferResponse(model_name=model_name, model_version="1", outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)], raw_output_contents=[raw])


@pytest.fixture(scope="module")
def fake_kserve() -> Iterator[FakeKServe]:
    """One fake server per test module, stopped at its end also when a test fails; tests ``reset`` what it says."""
    pytest.importorskip("tritonclient.grpc", reason="the [serve] extra is not installed")
    server = FakeKServe().start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake KServe-v2 gRPC server on 127.0.0.1 that lies as told.")
    parser.add_argument("--reply", default="", help="how ModelInfer lies (see the module's docstring)")
    parser.add_argument("--label", default=None, help="the first class's label (e.g. with escape sequences)")
    parser.add_argument("--unavailable", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    labels = [f"class{i}" for i in range(args.classes)]
    if args.label is not None:
        labels[-1] = args.label.encode().decode("unicode_escape")
    server = FakeKServe().start()
    server.fake = Fake(image_size=args.image_size, classes=args.classes, labels=labels, reply=args.reply, unavailable=args.unavailable)
    print(server.target(), flush=True)
    try:
        time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
