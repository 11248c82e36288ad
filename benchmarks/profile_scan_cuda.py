"""Runs the CUDA scan's forward and backward a few times on one benchmark shape, for a profiler to watch.

    ncu --kernel-name regex:'fwd_kernel|bwd_kernel' --launch-skip 4 --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
        python3 benchmarks/profile_scan_cuda.py --shape lm130m_layer --dtype bf16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_scan import DTYPES, SHAPES, make_inputs  # noqa: E402
from ssm_core.ops.scan_cuda import selective_scan_cuda  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="lm130m_layer")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    inputs = make_inputs(*SHAPES[args.shape], DTYPES[args.dtype])
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    for _ in range(args.iters):
        out = selective_scan_cuda(**leaves, delta_softplus=True)
        torch.autograd.grad(out, list(leaves.values()), torch.ones_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
