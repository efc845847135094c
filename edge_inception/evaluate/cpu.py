"""What the host CPU can do: read once, used by quantization and recorded by benchmarks."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    cores: int
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        """Integer dot-product instructions that make full-range INT8 safe (no u8 x s8 saturation)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or self.arch in ("aarch64", "arm64")

    @property
    def simd(self) -> list[str]:
        return sorted(self.flags & {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                    "amx_int8", "asimd"})


@functools.cache
def cpu_info() -> CpuInfo:
    model: str = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return CpuInfo(model=model, arch=platform.machine(), cores=os.cpu_count() or 1, flags=frozenset(flags))
