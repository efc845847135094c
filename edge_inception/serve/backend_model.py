"""The Triton Python backend's model (``TritonPythonModel``: initialize / execute / finalize), run inside Triton's
``triton_python_backend_stub``; the model.py that ``serve export --kind python`` writes sets the import path and
imports this class.

Two roles, chosen by the model configuration's ``edge_inception_role`` parameter:

- ``classifier``: N x 3 x S x S float32 ``input`` -> N x classes ``logits``, through the toolkit's own runner
  (:func:`edge_inception.engines.registry.open_runner`: the manifest and every hash checked at load). Requests the
  dynamic batcher put together run as one batch.
- ``preprocess``: N encoded images (TYPE_STRING, bytes) -> N x 3 x S x S, with the toolkit's preprocessing
  (:func:`edge_inception.data.images.to_rgb` and :func:`~edge_inception.data.images.preprocess`), so an ensemble
  answers a JPEG exactly as ``predict`` does.

``triton_python_backend_utils`` exists only inside the stub: it is imported in the methods, so that this module
imports anywhere. NumPy 2 is refused at load: the stub of nvidia-pytriton 0.7.0 then returns outputs of the right
shape and zero bytes.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 << 20  # one encoded image in a request


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend stub

    return pb_utils


def _plain_name(value: str) -> str:
    if not value or Path(value).name != value or value in (".", ".."):
        raise ValueError(f"parameter {value!r} must be a file name without folders")
    return value


class _Classifier:
    def __init__(self, params: dict[str, str], version_dir: Path) -> None:
        from ..engines.registry import open_runner

        self.input_name, self.output_name = params.get("input_name", "input"), params.get("output_name", "logits")
        self.runner = open_runner(version_dir / _plain_name(params["artifact"]), threads=int(params.get("threads", "0")) or None)
        self.runner.activate()

    def outputs(self, arrays: list[Any]) -> list[Any]:
        import numpy as np

        sizes = [len(a) for a in arrays]
        logits = self.runner.run(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        return list(np.split(np.ascontiguousarray(logits, dtype=np.float32), np.cumsum(sizes)[:-1]))

    def finalize(self) -> None:
        self.runner.deactivate()


class _Preprocess:
    def __init__(self, params: dict[str, str], version_dir: Path) -> None:
        self.image_size = int(params["image_size"])
        self.input_name, self.output_name = "IMAGE", params.get("output_name", "input")

    def one(self, raw: bytes) -> Any:
        from PIL import UnidentifiedImageError

        from ..data.images import opened_image, preprocess, to_rgb
        from ..errors import ImageError

        if len(raw) > MAX_IMAGE_BYTES:
            raise ImageError(f"an image of {len(raw) >> 20} MB is more than the {MAX_IMAGE_BYTES >> 20} MB taken")
        try:
            with opened_image(io.BytesIO(raw), Path("request")) as opened:
                opened.load()
                rgb = to_rgb(opened)
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageError("not a readable image") from exc
        return preprocess(rgb, self.image_size)

    def outputs(self, arrays: list[Any]) -> list[Any]:
        import numpy as np

        return [np.stack([self.one(bytes(item)) for item in a.reshape(-1)]) for a in arrays]

    def finalize(self) -> None:
        pass


class _Role(Protocol):
    input_name: str
    output_name: str

    def outputs(self, arrays: list[Any]) -> list[Any]: ...

    def finalize(self) -> None: ...


ROLES: dict[str, Callable[[dict[str, str], Path], _Role]] = {"classifier": _Classifier, "preprocess": _Preprocess}


class TritonPythonModel:
    """Triton's Python backend interface; the role's object does the work."""

    def initialize(self, args: dict[str, str]) -> None:
        import numpy as np

        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(f"Triton's Python backend here answers with empty outputs under NumPy {np.__version__}; it needs "
                               "NumPy < 2 first on its import path (make setup installs it in .venv/triton-site; edge-inception serve run uses it)")
        config = json.loads(args["model_config"])
        params = {str(k): str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}
        role = params.get("edge_inception_role", "")
        if role not in ROLES:
            raise RuntimeError(f"unknown edge_inception_role {role!r} in {config.get('name')}'s configuration")
        self.impl = ROLES[role](params, Path(args["model_repository"]) / str(args["model_version"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        arrays = [pb.get_input_tensor_by_name(r, self.impl.input_name).as_numpy() for r in requests]
        try:
            outs = self.impl.outputs(arrays)
        except Exception as exc:  # one bad request must not fail the others batched with it: answer each on its own
            if len(requests) == 1:
                return [pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))]
            return [self._single(pb, a) for a in arrays]
        return [pb.InferenceResponse(output_tensors=[pb.Tensor(self.impl.output_name, o)]) for o in outs]

    def _single(self, pb: Any, array: Any) -> Any:
        try:
            return pb.InferenceResponse(output_tensors=[pb.Tensor(self.impl.output_name, self.impl.outputs([array])[0])])
        except Exception as exc:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))

    def finalize(self) -> None:
        self.impl.finalize()
