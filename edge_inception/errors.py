"""Errors the CLI turns into one line on stderr and exit code 1.

Library code raises these for anything a user can cause (bad files, bad options, a model that fails
verification); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.util

# The optional parts of the package: which extra brings each library (`pip install 'edge-inception[EXTRA]'`).
EXTRAS = {"torch": "export", "onnxsim": "export", "safetensors": "export", "skimage": "export", "openvino": "openvino", "tensorrt": "tensorrt",
          "av": "stream", "cv2": "stream", "scipy": "stream"}


class EdgeInceptionError(Exception):
    """Base class: a problem with the user's input or environment, explained in one line."""


class CheckpointError(EdgeInceptionError):
    """A weights file that is missing, unreadable, or not a GoogLeNet of a known layout."""


class ImageError(EdgeInceptionError):
    """An image or image folder that cannot be used."""


class DatasetError(EdgeInceptionError):
    """An ImageFolder tree that cannot be trained or evaluated on."""


class TrainingError(EdgeInceptionError):
    """A training that cannot go on: its loss or weights stopped being finite numbers (it diverged)."""


class StreamError(EdgeInceptionError):
    """A video source that cannot be opened (a missing camera, an unreachable stream, not a video) or an output video
    that cannot be written."""


class ModelFileError(EdgeInceptionError):
    """An ONNX (or engine) file that is missing, corrupt, or not what the command expects."""


class VerificationError(EdgeInceptionError):
    """A converted model whose outputs differ from its source beyond tolerance."""


class TargetError(EdgeInceptionError):
    """An unknown target, or a precision/backend the target cannot run."""


class BackendUnavailableError(EdgeInceptionError):
    """An optional runtime (TensorRT, OpenVINO, a GPU provider) that is not installed here."""


class ManifestError(EdgeInceptionError):
    """An artifact whose manifest is missing, edited, or built for another machine or library version."""


class OutputPathError(EdgeInceptionError):
    """An output path that cannot be written."""


class MissingDependencyError(BackendUnavailableError):
    """A library an optional part of the package needs, not installed here."""


def require_modules(purpose: str, *modules: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra to install if any of ``modules`` cannot be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extra = EXTRAS.get(missing[0])
        hint = f"pip install 'edge-inception[{extra}]'" if extra else f"pip install {missing[0]}"
        verb = "is" if len(missing) == 1 else "are"
        raise MissingDependencyError(f"{purpose} needs {' and '.join(missing)}, which {verb} not installed here: {hint}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the same clean-up as for Ctrl-C runs."""


class ServeError(EdgeInceptionError):
    """A Triton model repository, server or client endpoint that cannot be used (serve export/run, grpc:// targets)."""


EXTRAS.update({"tritonclient": "serve", "mlperf_loadgen": "serve"})  # serving: Triton's client and MLPerf's LoadGen
EXTRAS.update({"ray": "cluster"})  # eval --cluster, fleet: Ray (Core and Data)
