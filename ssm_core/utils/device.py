"""The one way the suite names the machine a number was measured on, for reports and result files."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def describe_device(device: torch.device | str) -> str:
    """A reader's name for ``device``: the GPU's model ("NVIDIA H100 80GB HBM3") or the CPU's model, architecture
    and the cores this process may use ("CPU AMD EPYC, x86_64, 2 cores"), since timings scale with them."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
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
