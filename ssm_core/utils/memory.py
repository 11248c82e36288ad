"""How much memory a run may use, and what training a Mamba on a batch needs: checked before a run starts, so that
a setting that cannot fit ends with a message instead of the kernel's OOM kill (exit 137) or a 19 GB allocation
traceback minutes in."""
from __future__ import annotations

import os
from pathlib import Path

import torch

class InsufficientMemoryError(ValueError):
    """A run asked for more memory than the device has available; the message says how much and what to change."""


# Autograd keeps about 9 float32 values per inner channel of a Mamba block per token for the backward (projections,
# convolution, Δ, the scan's inputs and output, the gate), 72 bytes per d_model measured on CPU for the 1.4m and 7m
# DNA presets; 8 values makes the estimate a lower bound, so that only a run that cannot fit is refused.
_BLOCK_VALUES_PER_CHANNEL = 8


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's page-rounded 2^63 for no limit
            return max(0, int(limit) - usage)
    return None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation can take on ``device`` now: a GPU's free memory, or the host's available memory
    (MemAvailable, within a container's cgroup limit). None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    host = None
    try:
        import psutil

        host = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            host = int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            try:
                host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                pass
    room = _cgroup_room()
    return room if host is None else host if room is None else min(host, room)


def mamba_training_bytes(config, batch: int, seqlen: int, *, activation_checkpointing: bool = False,
                         bytes_per_value: int = 4) -> int:
    """A lower bound on the activation memory of one training step of a Mamba stack (``config``: a MambaConfig)
    on ``batch`` sequences of ``seqlen`` tokens. With checkpointing, each layer's input is kept and one layer's
    activations are recomputed at a time (the 7m preset at 2^20 tokens, bf16 on an H100: 27 KB per token measured,
    24 KB estimated). ``bytes_per_value``: 4 for float32, 2 under bf16 autocast."""
    tokens = batch * seqlen
    block = _BLOCK_VALUES_PER_CHANNEL * config.expand * config.d_model * bytes_per_value * tokens
    if activation_checkpointing:
        return config.n_layer * config.d_model * 4 * tokens + block  # the residual stream stays float32
    return config.n_layer * block


def format_bytes(n: int | float) -> str:
    """``19.3 GB``, ``512.0 MB``: decimal units, as memory is quoted."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"
