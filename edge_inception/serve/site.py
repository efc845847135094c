"""Where the Python backend's interpreter finds its imports: the lowest floor of serve/, known to the repository
(which writes the path into a model folder) and to the server (which passes it to tritonserver)."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

SITE_ENV = "EDGE_INCEPTION_TRITON_SITE"  # where nvidia-pytriton and NumPy < 2 were installed (default .venv/triton-site)


def triton_site() -> Path:
    """The folder ``make setup`` installs nvidia-pytriton and NumPy < 2 into (``$EDGE_INCEPTION_TRITON_SITE`` overrides)."""
    return Path(os.environ.get(SITE_ENV) or Path(sys.prefix) / "triton-site")


def _numpy_major(site: Path) -> int | None:
    found = sorted(site.glob("numpy-*.dist-info"))
    if not found:
        return None
    try:
        return int(found[-1].name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return None


def backend_sys_path() -> list[str]:
    """The import path the Python backend's model needs: NumPy < 2 first (the triton-site folder, where it has one),
    then the folder holding this edge_inception package, then this interpreter's site-packages (onnxruntime, Pillow)."""
    paths = []
    site = triton_site()
    if site.is_dir() and (_numpy_major(site) or 2) < 2:
        paths.append(str(site.resolve()))
    paths.append(str(Path(__file__).resolve().parents[2]))
    for key in ("purelib", "platlib"):
        p = str(Path(sysconfig.get_paths()[key]).resolve())
        if p not in paths:
            paths.append(p)
    return paths
