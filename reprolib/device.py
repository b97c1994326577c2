"""The one place that picks the device and dtype (cuda → mps → cpu; half precision on GPUs)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else ``$REPROLIB_DEVICE``, else cuda, then mps, then cpu."""
    device = device or os.environ.get("REPROLIB_DEVICE")
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    if isinstance(dtype, str):
        names = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "fp16": torch.float16,
            "float16": torch.float16,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
        }
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return names[dtype]
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (None: leave torch's setting), then restore it.

    For a model as small as the shapes world, more threads barely help a batch of one (the work per
    op is small); one thread leaves the other cores free. ``benchmarks/deltas.py --slider-only`` compares.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
