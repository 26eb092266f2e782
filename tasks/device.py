"""Where a network runs and in which precision: device picking, bf16 detection, bf16 autocast.

Every trainer and inference task asks here: :func:`pick_device` turns ``--device`` into a
``torch.device`` (``auto``: CUDA when torch sees one), :func:`use_bf16` says whether a
``precision`` option means bf16 on that device, and :func:`autocast` is the bf16 autocast
the trainers wrap their forward passes in (on by default on CUDA only, so CPU training
stays fp32 and bit-exact across resumes).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache

import torch

from storage.workspace import WorkspaceError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or any torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WorkspaceError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """``bf16``/``fp32`` as asked; ``auto``: bf16 on GPUs and on CPUs with native bf16."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast(device: torch.device, enabled: bool | None = None) -> AbstractContextManager[object]:
    """bf16 autocast on ``device``; ``enabled`` defaults to "``device`` is a CUDA device"."""
    on = device.type == "cuda" if enabled is None else enabled
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)
