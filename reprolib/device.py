"""The one place that picks the device and dtype (cuda → mps → cpu; half precision on GPUs)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from .checks import InputError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else ``$REPROLIB_DEVICE``, else cuda, then mps, then cpu."""
    device = device or os.environ.get("REPROLIB_DEVICE")
    if device:
        return available(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The devices torch can use here: "cpu", then "cuda:0"… and "mps" where present."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


def available(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or an :class:`InputError` saying which devices this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            f"device={device!r} is not a device name ({str(e).splitlines()[0]}); "
            f"available: {', '.join(available_devices())}"
        ) from None
    have = available_devices()
    gpus = sum(h.startswith("cuda") for h in have)
    ok = dev.type in ("cpu", "meta") or (dev.type == "cuda" and (dev.index or 0) < gpus)
    ok = ok or (dev.type == "mps" and "mps" in have)
    if not ok:
        what = ("no GPU" if not gpus else f"{gpus} GPU(s)") if dev.type == "cuda" else f"no {dev.type} device"
        raise InputError(f"device={str(device)!r} requested but torch sees {what}; available: {', '.join(have)}")
    return dev


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
            raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
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
