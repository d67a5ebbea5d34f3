"""What `training.mixed_precision: auto` means on a CPU, without importing torch (the estimate reads it too)."""

from __future__ import annotations

# bf16 autocast on a CPU with native bf16 pays from this hidden size up; below it the casts cost more than the
# matmuls save (measured: 0.7-1.0x at 64, 1.5-1.8x at 128, 1.3-2.7x at 256, 2.4x at 768; docs/performance.md).
CPU_BF16_MIN_HIDDEN = 128


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); read from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def cpu_autocast(hidden_size: int | None, native_bf16: bool) -> str:
    """`auto` on a CPU: `bf16` with native bf16 for a model at least `CPU_BF16_MIN_HIDDEN` wide (an unknown width
    counts as wide), else `no`."""
    if not native_bf16:
        return "no"
    return "bf16" if (hidden_size or CPU_BF16_MIN_HIDDEN) >= CPU_BF16_MIN_HIDDEN else "no"
