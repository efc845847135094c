"""The toolkit itself as a wheel, for a device that cannot reach a package index.

A bundle carries ``wheels/edge_inception-<version>-py3-none-any.whl`` so that ``build.sh`` can install the runtime
with ``pip install --no-index --find-links wheels edge-inception`` (dependencies the device already has, such as
JetPack's NumPy and ONNX Runtime, are used as they are; wheels the user adds to ``wheels/`` are found there too).

The wheel is written from the installed package's own files (whatever way it was installed: a wheel, an editable
checkout), in the binary distribution format of PEP 427 / the PyPA "binary distribution format" specification:
the package files, ``<name>.dist-info/METADATA`` (the installed metadata: name, version, Requires-Dist),
``WHEEL`` and ``RECORD`` (urlsafe-base64 sha256 and size of every file), plus the console script entry point.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import EdgeInceptionError

DIST = "edge_inception"
# what the package needs at run time besides its modules: the class names and the device presets
PACKAGE_DATA = (".py", ".tsv", ".toml")
ENTRY_POINTS = "[console_scripts]\nedge-inception = edge_inception.__main__:main\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata_text() -> str:
    """The installed distribution's METADATA (Requires-Dist and extras included), else a minimal one."""
    try:
        text = metadata.distribution("edge-inception").read_text("METADATA")
    except metadata.PackageNotFoundError:
        text = None
    return text or f"Metadata-Version: 2.1\nName: edge-inception\nVersion: {__version__}\n"


def package_files() -> dict[str, bytes]:
    """Archive name -> bytes of every file of the installed ``edge_inception`` package that runs it."""
    root = Path(__file__).resolve().parents[1]
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root.parent)
        if path.is_file() and path.suffix in PACKAGE_DATA and "__pycache__" not in rel.parts:
            files[rel.as_posix()] = path.read_bytes()
    if f"{DIST}/__main__.py" not in files:
        raise EdgeInceptionError(f"the edge_inception package at {root} is incomplete: cannot write its wheel")
    return files


def write_wheel(folder: Path) -> Path:
    """Write ``edge_inception-<version>-py3-none-any.whl`` into ``folder`` (which the caller stages); return its path."""
    info = f"{DIST}-{__version__}.dist-info"
    files = package_files()
    files[f"{info}/METADATA"] = _metadata_text().encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: edge-inception\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = ENTRY_POINTS.encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{DIST}-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # a fixed date: the same files give the same wheel
            entry.external_attr = 0o644 << 16
            whl.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return path
