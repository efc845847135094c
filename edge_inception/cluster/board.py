"""What runs on one board of a fleet: the facts of the machine, and the fixed build / check / bench of a bundle.

Nothing from the head is executed as code or as a script: the head sends the bundle's files as bytes (Ray's object
store); the board writes them into a fresh folder (names checked), verifies every file against the bundle's own
``bundle.json`` hashes (:func:`~edge_inception.deploy.bundle.verify_bundle`), then runs the library's ``build`` for its
own target preset (what ``build.sh`` runs), ``check`` against the bundle's reference, and ``bench``. ``build.sh`` is never
run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..names import UnsafeNameError, check_name

BOARD_LABEL = "edge-inception-board"  # node label (ray start --labels): the board's name
TARGET_LABEL = "edge-inception-target"  # node label: the target preset the board builds for
MAX_BUNDLE_FILES = 256
MAX_BUNDLE_BYTES = 2 << 30


def _read(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _read(path, 64)
    return int(text) if text and text.isdigit() else None


def clocks() -> dict[str, Any]:
    """CPU clocks where readable (cpufreq, kHz: cpu0's current and maximum), Jetson's power mode (nvpmodel's status
    file), the 1-minute load average."""
    out: dict[str, Any] = {"cpu0_khz": _int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
                           "cpu0_max_khz": _int("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")}
    with contextlib.suppress(OSError):
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    mode = _read("/var/lib/nvpmodel/status", 256)
    if mode:
        out["nvpmodel"] = mode.splitlines()[0][:80]
    return out


def facts() -> dict[str, Any]:
    """The board's facts for the report: CPU name, ISA flags, cores, memory (MiB), GPU (NVIDIA driver's list), L4T
    release (Jetson's /etc/nv_tegra_release), clocks and load."""
    from ..evaluate.cpu import cpu_info

    cpu = cpu_info()
    mem_kib = None
    meminfo = _read("/proc/meminfo", 4096) or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:") and line.split()[1].isdigit():
            mem_kib = int(line.split()[1])
    gpus = []
    with contextlib.suppress(OSError):
        for d in sorted(Path("/proc/driver/nvidia/gpus").iterdir())[:16]:
            info = _read(str(d / "information"), 2048) or ""
            gpus += [line.split(":", 1)[1].strip()[:80] for line in info.splitlines() if line.startswith("Model:")]
    l4t = _read("/etc/nv_tegra_release", 512)
    return {"host": platform.node()[:64], "cpu": cpu.model[:120], "arch": cpu.arch, "cores": cpu.cores, "simd": cpu.simd,
            "memory_mib": mem_kib // 1024 if mem_kib else None, "gpu": gpus, "l4t": l4t.splitlines()[0][:120] if l4t else None,
            "clocks": clocks()}


def write_bundle(files: dict[str, bytes], into: Path) -> Path:
    """Write the files the head sent (relative names, one or two safe parts) into ``into/bundle``; refuse anything else."""
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_BUNDLE_FILES:
        raise ValueError("the head sent no bundle, or too many files")
    if sum(len(b) for b in files.values() if isinstance(b, bytes)) > MAX_BUNDLE_BYTES:
        raise ValueError("the bundle the head sent is too large")
    root = into / "bundle"
    for name, data in files.items():
        parts = name.split("/") if isinstance(name, str) else []
        if not 1 <= len(parts) <= 2 or not isinstance(data, bytes):
            raise ValueError(f"the head sent a file that is not a bundle's: {str(name)[:80]!r}")
        for part in parts:
            check_name(part, "bundle file")
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run_board(files: dict[str, bytes], target: str | None, batches: tuple[int, ...], iterations: int, rounds: int) -> dict[str, Any]:
    """On the board: verify, build for ``target`` (default: the bundle's preset), check, bench. Returns a JSON-able
    dict: ``status`` ("ok", "refused" for a bundle that does not verify, "failed"), ``error``, the build's manifest,
    the check's verdict, the bench's results and the board's facts and clocks before and after."""
    from ..deploy.bundle import verify_bundle
    from ..deploy.check import check_artifact
    from ..engines.build import build
    from ..engines.manifest import read_manifest
    from ..errors import EdgeInceptionError
    from ..evaluate.bench import BenchConfig, run_bench

    row: dict[str, Any] = {"facts": facts(), "status": "failed", "error": None}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-inception-board-") as tmp:
        try:
            root = write_bundle(files, Path(tmp))
        except (ValueError, UnsafeNameError, OSError) as exc:
            row.update(status="refused", error=str(exc)[:300])
            return row
        try:
            bundle = verify_bundle(root)
        except EdgeInceptionError as exc:
            row.update(status="refused", error=str(exc).replace(tmp, "<board>")[:300])
            return row
        row["bundle_sha256"] = bundle.bundle_sha256
        try:
            preset = target or _bundle_target(root)
            built = build(bundle.model, preset, output_dir=Path(tmp) / "build")
            row["manifest"] = asdict(read_manifest(built.artifact))
            verdict = check_artifact(built.artifact, root / "reference")
            p = verdict.parity
            row["check"] = {"passed": True, "samples": p.samples, "max_rel_error": p.max_rel_error, "mean_cosine": p.mean_cosine,
                            "top1_agreement": p.top1_agreement, "precision": verdict.precision, "device": verdict.device}
            before = clocks()
            report = run_bench([str(built.artifact)], BenchConfig(batches=batches, warmup=3, iterations=iterations, rounds=rounds, baselines=(),
                                                                     peak=False))  # the row has no peak column: not probed
            row["clocks_before"], row["clocks_after"] = before, clocks()
            row["bench"] = [{"batch": r.batch, "latency_ms": r.latency_ms, "throughput_ips": r.throughput_ips} for r in report.results]
            row["disturbed_rounds"] = sum(1 for r in report.rounds if r.disturbed)
            row["target"] = preset
            row["status"] = "ok"
        except EdgeInceptionError as exc:
            row["error"] = str(exc).replace(tmp, "<board>")[:300]
    row["seconds"] = round(time.monotonic() - t0, 2)
    return row


def _bundle_target(root: Path) -> str:
    from ..fileio import read_json

    data = read_json(root / "bundle.json", 1 << 20, "bundle index")
    target = data.get("target") if isinstance(data, dict) else None
    if not isinstance(target, str):
        from ..errors import ModelFileError

        raise ModelFileError("bundle.json names no target preset")
    return check_name(target, "bundle target")
