"""What a device (a board, the runtime install: `pip install 'edge-inception[...]'` without `[export]`) lacks, for tests
that run the product as it runs there: a folder whose ``sitecustomize`` makes those packages unimportable in every
Python process started with it first on ``PYTHONPATH`` (``import torch`` -> ImportError, ``find_spec`` -> None), their
children and, for Ray nodes, their workers."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the export side's packages: PyTorch, scikit-image (the bundled photos), onnxsim, sympy (onnxruntime 1.32 no longer
# depends on it)
NOT_ON_A_DEVICE = ("torch", "skimage", "onnxsim", "sympy")


def device_pythonpath(folder: Path) -> str:
    """Write the blocking ``sitecustomize.py`` into ``folder`` (made if missing); the ``PYTHONPATH`` that puts it first,
    then this checkout, then the caller's own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor m in {NOT_ON_A_DEVICE!r}:\n    sys.modules[m] = None\n")
    return os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])
