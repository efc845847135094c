"""Bounds on every number a user, a file header or a manifest can hand us, in one place.

Each bound is checked where the number enters (an option, a manifest field, an image header), and the message
gives the allowed range. Values are generous for GoogLeNet on edge devices and small enough that a hostile value
cannot exhaust memory, threads or disk before it is refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import EdgeInceptionError
from .vocab import MIN_IMAGE_SIZE

MAX_IMAGE_SIZE = 1024  # network input side: 21x the multiply-adds of 224, ~1 GB of activations at batch 8
MAX_CLASSES = 32_768  # ImageNet-21k has 21,841
MAX_BATCH = 1024
# a picture's width x height, read from its header before decoding: an image file (Pillow), and a video frame (the
# stream's declared size at open, FFmpeg's decoder's max_pixels, each decoded frame): one bound for every source
MAX_DECODED_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 20.0  # longer / shorter side: resizing the short side to 256 must not blow up the long one
# image files in a --holdout folder (every one is judged, by every candidate): a 99.5 % claim needs ~540 photos that all
# agree; 5000 keep a run's judging within minutes per candidate at 224 px on a few cores
MAX_HOLDOUT_IMAGES = 5000
# eval --preprocess fast compares this many of its images with the exact path (a second decode each, full size for a
# reduced JPEG, and two batch-1 inferences where the tensors differ): bounded, and stated in the report
DEFAULT_AGREEMENT_SAMPLE = 32
MAX_OPSET, MIN_OPSET = 21, 13  # what the exporter and our graph code support
MEMORY_FRACTION = 0.5  # a benchmark batch (input, activations) may take at most this share of available memory


class LimitError(EdgeInceptionError):
    """A number outside the range this toolkit accepts."""


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpus(text: str) -> int | None:
    """The CPUs a cgroup v2 ``cpu.max`` line ("QUOTA PERIOD" or "max PERIOD") allows, the quota over the period rounded
    up; None for no limit or a line that is not one."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def cgroup_quota(root: Path, self_cgroup: str) -> int | None:
    """The fewest CPUs any cgroup of this process allows (None: no quota found), from the cgroup file system at ``root``
    and ``self_cgroup``, the text of ``/proc/self/cgroup`` (``ID:CONTROLLERS:PATH`` lines).

    A quota set on the process's own cgroup or on any above it limits it: v2 (``0::PATH``, ``cpu.max`` in each folder
    from ``root/PATH`` up to ``root``) and v1 (the ``cpu`` controller's line, ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` from ``root/cpu/PATH`` up, where a quota of -1 is none). A path that is not under ``root``
    (a container that sees the host's path) is read from ``root``'s own level only. Unreadable files count as no quota."""
    found: list[int] = []

    def read(path: Path) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read(200)
        except OSError:
            return None

    def levels(base: Path, rel: str) -> list[Path]:
        folder = (base / rel.strip("/")).resolve() if rel.strip("/") else base
        chain = [folder, *folder.parents]
        return [p for p in chain if p == base or base in p.parents] or [base]

    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2
            for folder in levels(root, rel):
                text = read(folder / "cpu.max")
                cpus = cgroup_cpus(text) if text is not None else None
                if cpus is not None:
                    found.append(cpus)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            base = next((b for b in (root / "cpu", root / controllers) if b.is_dir()), None)
            for folder in levels(base, rel) if base is not None else []:
                quota, period = read(folder / "cpu.cfs_quota_us"), read(folder / "cpu.cfs_period_us")
                cpus = cgroup_cpus(f"{quota} {period}") if quota is not None and period is not None else None
                if cpus is not None:
                    found.append(cpus)
    return min(found) if found else None


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (a container's cpuset, ``taskset``), lowered to the CPU quota of
    its cgroups (``docker --cpus``, a systemd ``CPUQuota``; v1 and v2) where there is one, rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as f:
            self_cgroup = f.read(10_000)
    except OSError:
        self_cgroup = "0::/"
    quota = cgroup_quota(CGROUP_ROOT, self_cgroup)
    return max(1, min(cpus, quota or cpus))


def max_threads() -> int:
    """A small multiple of the cores: more threads than that only contend."""
    return 4 * (os.cpu_count() or 1)


def check_range(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], else a :class:`LimitError` naming the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise LimitError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_image_size(value: object, name: str = "--image-size") -> int:
    return check_range(name, value, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def check_num_classes(value: object, name: str = "--num-classes") -> int:
    return check_range(name, value, 1, MAX_CLASSES)


def check_threads(value: object, name: str = "--threads") -> int:
    """0 means the runtime's default."""
    return check_range(name, value, 0, max_threads())


def check_batch(value: object, name: str = "--batch") -> int:
    return check_range(name, value, 1, MAX_BATCH)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# GoogLeNet's activations at batch 1 and 224 px, summed over the graph (inputs of every node), as float32:
# about 10.5 M values. Scaled by the pixel count for other sizes; an upper bound for what a runtime keeps alive.
ACTIVATION_VALUES_224 = 10_500_000


def check_batch_memory(batch: int, image_size: int, name: str = "--batch") -> None:
    """Refuse a batch whose input and activations would not fit in half the available memory."""
    need = 4 * batch * (3 * image_size * image_size + ACTIVATION_VALUES_224 * (image_size / 224) ** 2)
    have = available_memory_bytes()
    if have is not None and need > MEMORY_FRACTION * have:
        fits = max(1, int(MEMORY_FRACTION * have / (need / batch)))
        raise LimitError(f"{name} {batch} at {image_size} px needs about {need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB is available "
                         f"(at most {fits} fits)")
