"""One forward+backward of the CUDA scan kernels per benchmark shape, under Nsight Compute: what bounds each
kernel (throughput against the SM and memory peaks, occupancy, eligible warps, issue-slot use; the per-reason
stall breakdown is not in the text report).

    bash benchmarks/run_device.sh profile [--shapes lm130m_layer wide] [--dtype bf16]

(run_device.sh runs this script under ``ncu``; alone it only runs the scans.) Two warm-up calls run outside the
profiled range (``torch.cuda.profiler``), so ncu sees compiled, cached kernels; the report is ncu's text output,
saved as ``scan_profile_<device>.txt``. What it showed is in NOTES_gpu_scan.md.
"""
from __future__ import annotations

import argparse

import torch

from gpu_scan import DTYPES, SHAPES, make_inputs
from ssm_core.ops.scan_cuda import selective_scan_cuda


def run(batch, dim, seqlen, dstate, dtype) -> None:
    x = {name: t.requires_grad_() for name, t in make_inputs(batch, dim, seqlen, dstate, dtype).items()}
    leaves = list(x.values())
    for profiled in (False, False, True):
        if profiled:
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        out = selective_scan_cuda(**x, delta_softplus=True)
        torch.autograd.grad(out.float().sum(), leaves)
        torch.cuda.synchronize()
        if profiled:
            torch.cuda.profiler.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["lm130m_layer", "wide"])
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    args = parser.parse_args(argv)
    for name in args.shapes:
        print(f"== {name} {SHAPES[name]} {args.dtype}", flush=True)
        run(*SHAPES[name], DTYPES[args.dtype])


if __name__ == "__main__":
    main()
