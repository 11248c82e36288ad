"""The one place the suite decides which device runs (``--device``) and names the machine a number was measured
on, for reports and result files."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# what every --device option takes: auto picks CUDA, then Apple's mps, then the CPU
DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    """Apple's Metal device is there (PyTorch built with it, on a Mac that has it)."""
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``--device`` value -> torch.device. ``auto`` picks CUDA, then mps, then the CPU; ``cuda`` or ``mps`` without
    that device is an error, not a silent fallback. On mps the selective scan runs its PyTorch reference."""
    if preference not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available")
    if preference == "mps" and not mps_available():
        raise RuntimeError("--device mps was requested but this PyTorch has no Apple mps device here")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "mps" or (preference == "auto" and mps_available()):
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device | str) -> str:
    """A reader's name for ``device``: the GPU's model ("NVIDIA H100 80GB HBM3") or the CPU's model, architecture
    and the cores this process may use ("CPU AMD EPYC, x86_64, 2 cores"), since timings scale with them."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple mps GPU, {platform.machine()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {_cpu_model() or 'model unknown'}, {platform.machine()}, {cores} cores"


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports (may be empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
