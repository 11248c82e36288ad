"""GPU selective-scan benchmark: ours (CUDA and Triton) against mamba-ssm's CUDA kernel, the reference and the HBM floor.

For each shape (batch, dim, seqlen, dstate) and dtype it times forward (inference: no grad) and forward+backward
(gradients of every input), with z, delta_bias and softplus as in a Mamba layer, and records the peak memory
allocated beyond the inputs. The HBM floor is the bytes that must move (inputs read once, outputs written once)
divided by the device-to-device copy bandwidth measured in the same run; the exp floor is the exponentials it must
evaluate (``floor_exps``) divided by the hardware exp2 rate measured in the same run (``exp2_rate``): at dstate 16
the special-function units bound the scan about as tightly as memory does. Then a sweep of our scan against
FlashAttention (torch SDPA, flash backend, 16 heads x 64, causal, bf16, forward+backward) at batch x seqlen =
65536 with scan dim 2048. Times are ``triton.testing.do_bench`` medians on random, never-zero inputs.

    python benchmarks/gpu_scan.py [--mamba-ssm-path DIR] [--shapes lm130m_layer dna_1M] [--tune]
                                  [--baseline OLD_SCAN_CUDA.py] [--tag v4.0]

mamba-ssm is used only if ``--mamba-ssm-path`` (or ``MAMBA_SSM_PATH``) points at a source tree whose
``selective_scan_cuda`` extension was built in place; its package ``__init__`` is not run.
``--baseline FILE`` adds another version of our CUDA kernels (a ``scan_cuda.py`` file whose module defines
``selective_scan_cuda``, e.g. an older commit's copy) to compare in the same run. The JSON records which
``ssm_core`` ran (an installed wheel or the checkout), how its CUDA kernels were compiled and how long that took.
Results: a table on stdout and JSON in ``benchmarks/results/gpu_scan_[<tag>_]<device>_<date>.json``.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

SHAPES = {
    "lm130m_layer": (8, 1536, 2048, 16),
    "sc09_top": (16, 128, 16384, 16),
    "wide": (4, 4096, 4096, 16),
    "dna_1M": (1, 512, 2 ** 20, 16),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SWEEP_TOKENS = 65536
SWEEP_DIM = 2048
# Configurations tried by --tune (the defaults are ScanConfig()): (block_d, chunk, num_warps) of the forward and
# (bwd_block_d, bwd_num_warps) of the backward. The first is version 2 as measured on the H100; the others try
# other lanes-per-row and rows-per-warp layouts (benchmarks/NOTES_gpu_scan.md).
TUNE_GRID = [dict(block_d=bd, chunk=ch, num_warps=nw, bwd_block_d=bbd, bwd_num_warps=bnw)
             for bd, ch, nw, bbd, bnw in ((4, 256, 4, 4, 4), (2, 128, 2, 2, 2), (8, 128, 8, 8, 8), (4, 64, 1, 4, 1),
                                          (8, 128, 4, 8, 4))]
# The CUDA kernels' one tunable: how many blocks per SM the grid must reach before the sequence is cut into
# segments (each segment costs an extra pass over its inputs).
TUNE_GRID_CUDA = [dict(fwd_blocks_per_sm=f, bwd_blocks_per_sm=b, bwd_register_cap=cap)
                  for f, b, cap in ((1, 1, False), (2, 1, False), (4, 2, False), (8, 3, False), (16, 6, False),
                                    (4, 2, True), (8, 4, True), (16, 8, True))]


def load_mamba_scan(path: str | None):
    """mamba-ssm's selective_scan_fn from a built source tree, without running ``mamba_ssm/__init__``.

    Returns (function or None, a note saying what was loaded or why not).
    """
    if not path:
        return None, "not given (--mamba-ssm-path / MAMBA_SSM_PATH)"
    root = Path(path).resolve()
    if not (root / "mamba_ssm" / "ops" / "selective_scan_interface.py").is_file():
        return None, f"{root} has no mamba_ssm/ops/selective_scan_interface.py"
    sys.path.insert(0, str(root))                     # the in-place built selective_scan_cuda*.so lies here
    package = types.ModuleType("mamba_ssm")           # stands in for the package so its __init__ never runs
    package.__path__ = [str(root / "mamba_ssm")]
    sys.modules.setdefault("mamba_ssm", package)
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as e:  # a missing build, einops, or an ABI mismatch: report and go on without it
        return None, f"import failed: {type(e).__name__}: {e}"
    return module.selective_scan_fn, f"loaded from {root}"


def copy_bandwidth(nbytes: int = 2 ** 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    from triton.testing import do_bench
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


EXP2_SOURCE = r"""
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
extern "C" __global__ void ex2_throughput(float* out, int iters) {
    float v[8];
    for (int k = 0; k < 8; ++k) v[k] = -1e-3f * (threadIdx.x + k);
    for (int i = 0; i < iters; ++i)
        for (int k = 0; k < 8; ++k) v[k] = ex2(v[k]) - 1.f;   // stays in (-0.5, 0]: no overflow, no denormals
    float s = 0.f;
    for (int k = 0; k < 8; ++k) s += v[k];
    if (s == 123.f) out[0] = s;   // never true; keeps the loop from being optimised away
}
"""


def exp2_rate() -> float:
    """The GPU's hardware exp2 (MUFU.EX2) throughput in evaluations per second: 8 independent chains per thread,
    enough blocks to fill every SM, compiled with the suite's NVRTC path and timed with CUDA events."""
    from ssm_core.ops import nvrtc
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    cubin, names = nvrtc.compile_cubin(EXP2_SOURCE, f"sm_{major}{minor}", ["ex2_throughput"], [])
    module = nvrtc.Module.load(cubin, device)
    func = module.function(names["ex2_throughput"])
    blocks, threads, iters = 16 * torch.cuda.get_device_properties(device).multi_processor_count, 256, 4096
    out = torch.zeros(1, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    args = [ctypes.c_void_p(out.data_ptr()), ctypes.c_int(iters)]
    run = lambda: nvrtc.launch(func, (blocks, 1, 1), (threads, 1, 1), 0, stream, args, device)  # noqa: E731
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        run()
    end.record()
    torch.cuda.synchronize()
    return 5 * blocks * threads * iters * 8 / (start.elapsed_time(end) * 1e-3)


def floor_exps(batch, dim, seqlen, dstate) -> dict:
    """exp evaluations a scan must make: one exp(Δ·A) per (element, state) forward; the backward needs each again
    (recomputed, or read back at the cost of storing the (batch, dim, seqlen, dstate) decays)."""
    n = batch * dim * seqlen * dstate
    return {"fwd": n, "fwd_bwd": 2 * n}


def floor_bytes(batch, dim, seqlen, dstate, dtype) -> dict:
    """Bytes that must move: forward reads u, delta, z, B, C and writes out; backward reads u, delta, z, dout,
    B, C and writes du, ddelta, dz, dB, dC (A, D, delta_bias and their gradients are negligible)."""
    size = torch.empty((), dtype=dtype).element_size()
    big = batch * dim * seqlen * size
    bc = batch * dstate * seqlen * size
    fwd = 4 * big + 2 * bc
    return {"fwd": fwd, "fwd_bwd": fwd + 7 * big + 4 * bc}


def make_inputs(batch, dim, seqlen, dstate, dtype, seed=0):
    """Random inputs like a Mamba layer's: delta before softplus around -4 (steps near 0.02), A = -(1..dstate)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * scale + shift).to(dt)

    return dict(u=rnd(batch, dim, seqlen), delta=rnd(batch, dim, seqlen, scale=0.5, shift=-4.0),
                A=-torch.arange(1, dstate + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
                B=rnd(batch, dstate, seqlen), C=rnd(batch, dstate, seqlen),
                D=rnd(dim, dt=torch.float32), z=rnd(batch, dim, seqlen),
                delta_bias=rnd(dim, scale=0.1, dt=torch.float32))


def kernel_times(fn, iters: int = 3) -> dict:
    """Device ms per call of fn spent in each kernel it launches, by kernel name (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    times = {}
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", 0) or 0
        if device_us > 0 and not evt.key.startswith(("aten::", "cuda", "Memcpy", "Memset")):
            times[evt.key[:80]] = device_us / 1e3 / iters
    return times


def measure(scan, inputs: dict, rep_ms: int, per_kernel: bool = False) -> dict:
    """Forward (no grad) and forward+backward median ms, and peak memory allocated beyond the inputs (GiB);
    with per_kernel, also the time of each kernel (``{fwd,fwd_bwd}_kernels_ms``)."""
    from triton.testing import do_bench
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"]).abs_().add_(0.1)   # never zero

    def fwd():
        with torch.no_grad():
            return scan(**inputs, delta_softplus=True)

    def fwd_bwd():
        out = scan(**leaves, delta_softplus=True)
        return torch.autograd.grad(out, list(leaves.values()), dout)

    result = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()                                                 # compile / warm up outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        result[f"{name}_peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        result[f"{name}_ms"] = do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")
        if per_kernel:
            try:
                result[f"{name}_kernels_ms"] = kernel_times(fn)
            except Exception as e:  # the profiler is a diagnostic: its failure must not lose the timings
                result[f"{name}_kernels_ms"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return result


def reference_fits(batch, dim, seqlen, dstate, args) -> bool:
    """The reference keeps about four (batch, dim, seqlen, dstate) fp32 tensors and loops over seqlen in Python."""
    need = 4 * batch * dim * seqlen * dstate * 4
    return seqlen <= args.reference_max_seqlen and need <= args.reference_max_gib * 2 ** 30


def load_baseline(path: str):
    """``selective_scan_cuda`` of another version of ``scan_cuda.py`` (its own source file beside it)."""
    spec = importlib.util.spec_from_file_location("baseline_scan_cuda", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.selective_scan_cuda


def scan_impls(args, mamba_fn):
    """Our CUDA kernels, our Triton kernels, a baseline version (when given), mamba-ssm's (when given), the
    reference."""
    import ssm_core
    from ssm_core.ops import nvrtc, scan_cuda
    from ssm_core.ops.scan_reference import selective_scan_reference
    from ssm_core.ops.scan_triton import ScanConfig, selective_scan_gpu
    cfg = ScanConfig(**json.loads(args.config)) if args.config else ScanConfig()
    impls, notes = {}, {"ssm_core": str(Path(ssm_core.__file__).parent)}
    ok, notes["ours_cuda"] = scan_cuda.available()
    notes["nvrtc_compile_s"] = dict(nvrtc.compile_seconds)   # empty when the kernels came from the disk cache
    if ok:
        impls["ours_cuda"] = scan_cuda.selective_scan_cuda
    if args.baseline:
        impls["baseline_cuda"] = load_baseline(args.baseline)
        notes["baseline_cuda"] = args.baseline
    impls["ours_triton"] = lambda **kw: selective_scan_gpu(**kw, config=cfg)
    if mamba_fn is not None:
        impls["mamba_ssm"] = mamba_fn
    impls["reference"] = selective_scan_reference
    return impls, cfg, notes


def bench_shapes(args, impls, bandwidth, exp_rate, save=lambda rows: None) -> list[dict]:
    """One row per shape and dtype; ``save(rows)`` after each, so a run cut short keeps what it measured."""
    rows = []
    jobs = [(s, d) for s in args.shapes for d in args.dtypes]
    for shape_name, dtype_name in tqdm(jobs, desc="shapes", file=sys.stdout):
        batch, dim, seqlen, dstate = SHAPES[shape_name]
        dtype = DTYPES[dtype_name]
        inputs = make_inputs(batch, dim, seqlen, dstate, dtype)
        floor = {k: v / bandwidth * 1e3 for k, v in floor_bytes(batch, dim, seqlen, dstate, dtype).items()}
        exp_floor = {k: v / exp_rate * 1e3 for k, v in floor_exps(batch, dim, seqlen, dstate).items()}
        row = {"shape": shape_name, "dims": [batch, dim, seqlen, dstate], "dtype": dtype_name,
               "floor_fwd_ms": floor["fwd"], "floor_fwd_bwd_ms": floor["fwd_bwd"],
               "exp_floor_fwd_ms": exp_floor["fwd"], "exp_floor_fwd_bwd_ms": exp_floor["fwd_bwd"]}
        for name, scan in impls.items():
            if name == "reference" and not reference_fits(batch, dim, seqlen, dstate, args):
                continue
            try:
                row[name] = measure(scan, inputs, args.rep_ms, per_kernel=name in ("ours_cuda", "ours_triton"))
            except torch.cuda.OutOfMemoryError as e:
                row[name] = {"error": f"out of memory: {e}".splitlines()[0]}
            torch.cuda.empty_cache()
        rows.append(row)
        save(rows)
        del inputs
        torch.cuda.empty_cache()
    return rows


def bench_attention_sweep(args, impls) -> list[dict]:
    """FlashAttention (causal, 16 x 64, bf16) against the scans, forward+backward, batch x seqlen = 65536."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    rows = []
    seqlens = [2 ** k for k in range(9, 17)]
    for seqlen in tqdm(seqlens, desc="attention sweep", file=sys.stdout):
        batch = SWEEP_TOKENS // seqlen
        q, k, v = (torch.randn(batch, 16, seqlen, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)

        def attention():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return torch.autograd.grad(out, (q, k, v), do)

        row = {"seqlen": seqlen, "batch": batch,
               "attention_ms": do_bench(attention, warmup=25, rep=args.rep_ms, return_mode="median")}
        inputs = make_inputs(batch, SWEEP_DIM, seqlen, 16, torch.bfloat16)
        for name in impls:
            if name != "reference":
                row[f"{name}_ms"] = measure(impls[name], inputs, args.rep_ms)["fwd_bwd_ms"]
        rows.append(row)
        del q, k, v, do, inputs
        torch.cuda.empty_cache()
    return rows


def tune(args) -> list[dict]:
    """fwd and fwd+bwd of each configuration of TUNE_GRID (Triton) and TUNE_GRID_CUDA on the chosen shapes (bf16)."""
    from ssm_core.ops.scan_cuda import CudaScanConfig, available, selective_scan_cuda
    from ssm_core.ops.scan_triton import ScanConfig, selective_scan_gpu
    grids = [("cuda", p, lambda p: (lambda **kw: selective_scan_cuda(**kw, config=CudaScanConfig(**p))))
             for p in TUNE_GRID_CUDA] if available()[0] else []
    if not args.tune_cuda_only:
        grids += [("triton", p, lambda p: (lambda **kw: selective_scan_gpu(**kw, config=ScanConfig(**p))))
                  for p in TUNE_GRID]
    rows = []
    for shape_name in args.shapes:
        inputs = make_inputs(*SHAPES[shape_name], torch.bfloat16)
        for impl, params, make in tqdm(grids, desc=f"tune {shape_name}", file=sys.stdout):
            try:
                res = measure(make(params), inputs, args.rep_ms)
            except Exception as e:  # a configuration that does not compile (registers, shared memory) is skipped
                res = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
            rows.append({"shape": shape_name, "impl": impl, "config": params, **res})
            tqdm.write(json.dumps(rows[-1]), file=sys.stdout)
        for impl in ("cuda", "triton"):
            best = min((r for r in rows if r["shape"] == shape_name and r["impl"] == impl and "fwd_bwd_ms" in r),
                       key=lambda r: r["fwd_bwd_ms"], default=None)
            print(f"{shape_name} {impl}: best fwd+bwd {best}")
    return rows


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_tables(rows, sweep):
    head = (f"{'shape':<13}{'dtype':<6}{'impl':<14}{'fwd ms':>9}{'fwd+bwd':>9}{'floor f':>9}{'floor fb':>9}"
            f"{'%floor f':>9}{'%floor fb':>10}{'%exp f':>8}{'%exp fb':>8}{'x mamba f':>10}{'x mamba fb':>11}"
            f"{'peak GiB':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    for row in rows:
        mamba = row.get("mamba_ssm", {})
        for name in ("ours_cuda", "baseline_cuda", "ours_triton", "mamba_ssm", "reference"):
            r = row.get(name)
            if r is None:
                continue
            if "error" in r:
                print(f"{row['shape']:<13}{row['dtype']:<6}{name:<14}{r['error']}")
                continue
            sp_f = mamba.get("fwd_ms") / r["fwd_ms"] if "fwd_ms" in mamba else None
            sp_fb = mamba.get("fwd_bwd_ms") / r["fwd_bwd_ms"] if "fwd_bwd_ms" in mamba else None
            print(f"{row['shape']:<13}{row['dtype']:<6}{name:<14}{fmt(r['fwd_ms']):>9}{fmt(r['fwd_bwd_ms']):>9}"
                  f"{fmt(row['floor_fwd_ms']):>9}{fmt(row['floor_fwd_bwd_ms']):>9}"
                  f"{fmt(100 * row['floor_fwd_ms'] / r['fwd_ms'], '.1f'):>9}"
                  f"{fmt(100 * row['floor_fwd_bwd_ms'] / r['fwd_bwd_ms'], '.1f'):>10}"
                  f"{fmt(100 * row['exp_floor_fwd_ms'] / r['fwd_ms'], '.1f'):>8}"
                  f"{fmt(100 * row['exp_floor_fwd_bwd_ms'] / r['fwd_bwd_ms'], '.1f'):>8}"
                  f"{fmt(sp_f, '.2f'):>10}{fmt(sp_fb, '.2f'):>11}{fmt(r['fwd_bwd_peak_extra_gib'], '.2f'):>9}")
    for row in rows:
        for name in ("ours_cuda", "baseline_cuda", "ours_triton"):
            for phase in ("fwd", "fwd_bwd"):
                kernels = row.get(name, {}).get(f"{phase}_kernels_ms")
                if kernels:
                    print(f"{row['shape']} {row['dtype']} {name} {phase} per kernel (ms): "
                          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in kernels.items()))
    if sweep:
        names = [n for n in ("ours_cuda", "ours_triton", "mamba_ssm") if any(f"{n}_ms" in r for r in sweep)]
        print(f"\n{'seqlen':>8}{'batch':>7}{'attn ms':>10}"
              + "".join(f"{n + ' ms':>17}{'attn/' + n:>18}" for n in names))
        for r in sweep:
            line = f"{r['seqlen']:>8}{r['batch']:>7}{fmt(r['attention_ms']):>10}"
            for n in names:
                ms = r.get(f"{n}_ms")
                line += f"{fmt(ms):>17}{fmt(r['attention_ms'] / ms if ms else None, '.2f'):>18}"
            print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--mamba-ssm-path", default=os.environ.get("MAMBA_SSM_PATH"),
                        help="source tree of mamba-ssm with selective_scan_cuda built in place")
    parser.add_argument("--config", help='ScanConfig overrides as JSON, e.g. \'{"block_d": 16, "chunk": 32}\'')
    parser.add_argument("--no-sweep", action="store_true", help="skip the FlashAttention sweep")
    parser.add_argument("--tune", action="store_true",
                        help="time each TUNE_GRID_CUDA and TUNE_GRID configuration instead")
    parser.add_argument("--tune-cuda-only", action="store_true", help="with --tune: the CUDA grid only")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench measuring time per case")
    parser.add_argument("--reference-max-seqlen", type=int, default=4096)
    parser.add_argument("--reference-max-gib", type=float, default=24.0)
    parser.add_argument("--baseline", metavar="FILE", help="another scan_cuda.py to time beside ours (see above)")
    parser.add_argument("--tag", default="", help="a label for the result file's name, e.g. the kernel version")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_scan.py needs a CUDA GPU")

    device = torch.cuda.get_device_name()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")
    tag = "".join(f"{t}_" for t in ("tune" if args.tune else "", args.tag) if t)
    path = out_dir / f"gpu_scan_{tag}{slug}_{datetime.date.today().isoformat()}.json"
    record = {"device": device, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "torch": torch.__version__, "cuda": torch.version.cuda}
    import triton
    record["triton"] = triton.__version__
    if args.tune:
        record["tune"] = tune(args)
    else:
        mamba_fn, record["mamba_ssm"] = load_mamba_scan(args.mamba_ssm_path)
        print(f"mamba-ssm: {record['mamba_ssm']}")
        impls, cfg, record["notes"] = scan_impls(args, mamba_fn)
        print(f"ours_cuda: {record['notes']['ours_cuda']} (ssm_core from {record['notes']['ssm_core']})")
        record["config"] = dataclasses.asdict(cfg)
        bandwidth = copy_bandwidth()
        record["copy_bandwidth_tb_s"] = bandwidth / 1e12
        print(f"{device}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
        record["exp2_per_s"] = exp_rate = exp2_rate()
        print(f"{device}: hardware exp2 {exp_rate / 1e12:.2f} T/s")
        record["shapes"] = bench_shapes(args, impls, bandwidth, exp_rate,
                                        save=lambda rows: path.write_text(json.dumps({**record, "shapes": rows,
                                                                                      "partial": True}, indent=1)))
        record["attention_sweep"] = [] if args.no_sweep else bench_attention_sweep(args, impls)
        print_tables(record["shapes"], record["attention_sweep"])
    path.write_text(json.dumps(record, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
