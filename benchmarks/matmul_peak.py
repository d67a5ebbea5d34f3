"""The measured matmul peak of this machine: the denominator of MFU on CPU.

    .venv/bin/python benchmarks/matmul_peak.py [--device cpu|cuda] [--sizes 1024 2048 4096]

Square matmuls in float32 and bfloat16 (float16 too on CUDA), each size timed `--repeat` times after one warm-up;
the best rate over sizes and repeats is the peak. On a GPU the vendor's dense figure is the usual denominator
(989 TFLOP/s bf16 for H100/H200 SXM); the measured one is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_rate(n: int, dtype: torch.dtype, device: str, repeat: int = 3) -> float:
    """Best flops/s of an n x n by n x n matmul over `repeat` timed runs (after one warm-up)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def matmul_peak(device: str = "cpu", sizes: tuple[int, ...] = (1024, 2048, 4096), repeat: int = 3) -> dict[str, float]:
    """Peak flops/s per dtype name on `device` (float16 only on CUDA, where it is a training dtype)."""
    names = ["float32", "bfloat16"] + (["float16"] if device.startswith("cuda") else [])
    return {name: max(matmul_rate(n, DTYPES[name], device, repeat) for n in sizes) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    peaks = matmul_peak(args.device, tuple(args.sizes), args.repeat)
    print(json.dumps({k: round(v / 1e9, 1) for k, v in peaks.items()} | {"unit": "GFLOP/s", "device": args.device}))


if __name__ == "__main__":
    main()
