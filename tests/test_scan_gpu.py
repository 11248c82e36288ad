"""Tests of the Triton selective scan (``ssm_core/ops/scan_triton.py``) against the float64 reference.

Two ways to run the same checks:
- on a CUDA GPU (tests marked ``gpu``; skipped without one): ``bash benchmarks/run_device.sh`` on the device;
- on CPU through Triton's interpreter: ``test_kernels_under_triton_interpreter`` runs this file as a script in a
  subprocess with ``TRITON_INTERPRET=1`` (it must be set before Triton is imported), which executes the very
  same kernels on tiny shapes.
Every output buffer the kernels must fill is poisoned with NaN first, so an element a kernel forgets to write
fails the comparison.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssm_core.ops.scan_reference import (expand_groups, selective_scan_reference,
                                         selective_state_update_reference)
from triton_interpreter import enter_interpreter_script, run_under_triton_interpreter

# Relative-norm tolerance by input dtype (float64 inputs make the kernels accumulate in float64).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU here: run `bash benchmarks/run_device.sh` on the device")


@dataclass(frozen=True)
class Case:
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int | None = 1        # None: B, C of shape (batch, dstate, seqlen)
    options: bool = True          # D, z, delta_bias, softplus, initial_state, last_state
    dtype: torch.dtype = torch.float32
    block_d: int = 8
    bwd_block_d: int = 4
    chunk: int | None = 64        # None: ScanConfig's default
    num_segments: int | None = None

    def config(self):
        from ssm_core.ops.scan_triton import ScanConfig
        chunk = {} if self.chunk is None else {"chunk": self.chunk}
        return ScanConfig(block_d=self.block_d, bwd_block_d=self.bwd_block_d, num_segments=self.num_segments,
                          **chunk)


def make_inputs(case: Case, device, seed: int = 0) -> dict:
    """Fresh random (never zero) inputs; A = -exp(uniform(-4.5, 0.7)) mixes short and long memories, so carries
    across chunks and segments matter."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, dtype=case.dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device, dtype)

    b, d, L, n = case.batch, case.dim, case.seqlen, case.dstate
    bc_shape = (b, n, L) if case.groups is None else (b, case.groups, n, L)
    real = torch.float64 if case.dtype == torch.float64 else torch.float32
    # With softplus, delta around -2 gives steps around 0.13; without it, delta itself must be positive.
    delta = rnd(b, d, L, scale=0.5, shift=-2.0) if case.options else rnd(b, d, L, scale=0.2).abs()
    log_rate = torch.rand(d, n, generator=g, dtype=torch.float64) * 5.2 - 4.5
    inputs = dict(u=rnd(b, d, L), delta=delta, A=-log_rate.exp().to(device, real),
                  B=rnd(*bc_shape), C=rnd(*bc_shape))
    if case.options:
        inputs.update(D=rnd(d, dtype=real), z=rnd(b, d, L), delta_bias=rnd(d, dtype=real, scale=0.3),
                      initial_state=rnd(b, d, n, dtype=real))
    return inputs


@contextlib.contextmanager
def poisoned_outputs():
    """Make the kernels' output buffers (Triton's and CUDA's) start as NaN."""
    from ssm_core.ops import scan_cuda, scan_triton

    def nan_empty(*shape, dtype, device):
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    saved = scan_triton._new_output, scan_cuda._new_output
    scan_triton._new_output = scan_cuda._new_output = nan_empty
    try:
        yield
    finally:
        scan_triton._new_output, scan_cuda._new_output = saved


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def run_scan_case(case: Case, device, seed: int = 0, scan=None) -> dict:
    """Forward and every gradient of a GPU scan (default: Triton with the case's config) against the float64
    reference; returns the errors."""
    if scan is None:
        from ssm_core.ops.scan_triton import selective_scan_gpu
        scan = functools.partial(selective_scan_gpu, config=case.config())
    inputs = make_inputs(case, device, seed)
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    wide = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    softplus = case.options
    with poisoned_outputs():
        out, last = scan(**leaves, delta_softplus=softplus, return_last_state=True)
    ref_out, ref_last = selective_scan_reference(**wide, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    dlast = torch.randn(last.shape, generator=g, dtype=torch.float64).to(device) if case.options else None
    loss = (out.double() * dout).sum() + ((last.double() * dlast).sum() if case.options else 0)
    ref_loss = (ref_out * dout).sum() + ((ref_last * dlast).sum() if case.options else 0)
    with poisoned_outputs():
        grads = torch.autograd.grad(loss, list(leaves.values()))
    ref_grads = torch.autograd.grad(ref_loss, list(wide.values()))
    errors = {"out": rel_err(out, ref_out), "last_state": rel_err(last, ref_last)}
    for name, got, want, leaf in zip(leaves, grads, ref_grads, leaves.values()):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, f"grad of {name}: {got.dtype} {got.shape}"
        errors["d" + name] = rel_err(got, want)
    assert out.dtype == case.dtype and out.shape == inputs["u"].shape
    return errors


def check_scan_case(case: Case, device, seed: int = 0, scan=None) -> dict:
    errors = run_scan_case(case, device, seed, scan)
    tol = TOLERANCE[case.dtype]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{case}: relative errors above {tol}: {bad} (all: {errors})"
    return errors


def check_step_case(batch, dim, dstate, groups, options, dtype, device, seed=0) -> None:
    """selective_state_update_gpu against the reference, state updated in place."""
    from ssm_core.ops.scan_triton import selective_state_update_gpu
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dt)

    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    state = rnd(batch, dim, dstate, dt=torch.float32)
    args = dict(x=rnd(batch, dim), dt=rnd(batch, dim).abs() * 0.5, A=-rnd(dim, dstate, dt=torch.float32).abs(),
                B=rnd(*bc), C=rnd(*bc))
    if options:
        args.update(D=rnd(dim, dt=torch.float32), z=rnd(batch, dim), dt_bias=rnd(dim, dt=torch.float32),
                    dt_softplus=True)
    ref_state = state.double()
    want = selective_state_update_reference(ref_state, **{k: (v.double() if torch.is_tensor(v) else v)
                                                          for k, v in args.items()})
    with poisoned_outputs():
        got = selective_state_update_gpu(state, **args)
    tol = max(TOLERANCE[dtype], 1e-5)
    assert got.dtype == dtype
    assert rel_err(got, want) <= tol, f"step y: {rel_err(got, want)}"
    assert rel_err(state, ref_state) <= tol, f"step state: {rel_err(state, ref_state)}"


def chunked_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                   chunk=256):
    """Float64 scan for sequences too long for the step-by-step reference.

    Within a chunk, h_t = sum_{s<=t} exp(A (S_t - S_s)) dt_s B_s u_s + exp(A S_t) h_in with S the running sum of
    dt; chunks run in order, each under activation checkpointing so the gradients fit in memory.
    Returns out (batch, dim, seqlen) and last_state (batch, dim, dstate), both float64.
    """
    batch, dim, seqlen = u.shape
    dt = delta.double() + (delta_bias.double()[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    A = A.double()
    h = (initial_state.double() if initial_state is not None
         else u.new_zeros(batch, dim, A.shape[1], dtype=torch.float64))

    def one_chunk(dt_c, u_c, B_c, C_c, h_in):
        S = dt_c.cumsum(-1)                                                       # (batch, dim, T)
        T = S.shape[-1]
        causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()
        gap = (S[..., :, None] - S[..., None, :]).clamp_min(0)                   # (batch, dim, t, s)
        decay = torch.exp(A[None, :, :, None, None] * gap[:, :, None]) * causal   # (batch, dim, n, t, s)
        Bx = expand_groups(B_c.double(), dim)                                     # (batch, dim, n, T)
        Cx = expand_groups(C_c.double(), dim)
        hs = torch.einsum("bdnts,bdns->bdnt", decay, Bx * (dt_c * u_c.double())[:, :, None])
        hs = hs + torch.exp(A[None, :, :, None] * S[:, :, None]) * h_in[..., None]
        return (hs * Cx).sum(2), hs[..., -1]

    ys = []
    for s in range(0, seqlen, chunk):
        e = min(s + chunk, seqlen)
        y, h = checkpoint(one_chunk, dt[..., s:e], u[..., s:e], B[..., s:e], C[..., s:e], h, use_reentrant=False)
        ys.append(y)
    y = torch.cat(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u.double()
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


# ----------------------------------------------------------------------------------------------------------------
# CPU tests
# ----------------------------------------------------------------------------------------------------------------

def test_chunked_oracle_matches_reference():
    """The long-sequence oracle used at seqlen 2^20 agrees with the step-by-step reference."""
    case = Case(2, 6, 77, 5, groups=3, dtype=torch.float64)
    inputs = {k: v.requires_grad_() for k, v in make_inputs(case, "cpu").items()}
    out, last = chunked_oracle(**inputs, delta_softplus=True, chunk=16)
    ref_out, ref_last = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True)
    assert rel_err(out, ref_out) < 1e-12 and rel_err(last, ref_last) < 1e-12
    grads = torch.autograd.grad(out.sum() + last.sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_last.sum(), list(inputs.values()))
    for name, got, want in zip(inputs, grads, ref_grads):
        assert rel_err(got, want) < 1e-12, name


# Tiny shapes the interpreter runs in seconds; together they cover groups and 3-D B/C, every option,
# segments (the cross-segment carry passes), chunk tails, a non-power-of-two dstate, channel blocks that
# overhang a group, float64/float32/bf16 and the step kernel.
INTERPRETER_SCAN_CASES = [
    Case(2, 6, 37, 3, groups=2, dtype=torch.float64, block_d=2, bwd_block_d=2, chunk=8, num_segments=1),
    Case(2, 6, 37, 3, groups=2, dtype=torch.float64, block_d=4, bwd_block_d=2, chunk=8, num_segments=3),
    Case(1, 4, 30, 4, groups=None, options=False, dtype=torch.float32, chunk=8, num_segments=2),
    Case(2, 8, 50, 16, groups=2, dtype=torch.bfloat16, chunk=16, num_segments=2),
]
INTERPRETER_STEP_CASES = [(3, 6, 5, 2, True, torch.float32), (2, 4, 16, None, False, torch.float32)]


@pytest.mark.slow
def test_kernels_under_triton_interpreter():
    """Runs this file as a script with TRITON_INTERPRET=1: the same kernels on CPU, tiny shapes."""
    pytest.importorskip("triton")
    stdout = run_under_triton_interpreter(__file__, timeout=600)
    assert stdout.count("ok ") == len(INTERPRETER_SCAN_CASES) + len(INTERPRETER_STEP_CASES), stdout


# ----------------------------------------------------------------------------------------------------------------
# GPU tests
# ----------------------------------------------------------------------------------------------------------------

GPU_CASES = [
    Case(2, 64, 1000, 16, groups=None, options=True, dtype=dtype) for dtype in
    (torch.float32, torch.bfloat16, torch.float16)
] + [
    Case(2, 64, 1000, 16, groups=None, options=False, dtype=torch.float32),
    Case(1, 128, 4096, 16, groups=4, dtype=torch.bfloat16),
    Case(1, 128, 4096, 16, groups=4, dtype=torch.float32, num_segments=7),
    Case(3, 40, 300, 7, groups=2, dtype=torch.float32),                 # dstate 7, 20 channels per group
    Case(2, 32, 129, 16, groups=1, dtype=torch.float32, chunk=128),     # one step past a chunk
    Case(2, 32, 64, 16, groups=1, dtype=torch.float64),
    Case(4, 16, 3000, 16, groups=None, dtype=torch.bfloat16, num_segments=5, block_d=16, bwd_block_d=8, chunk=32),
    # The default tiles (a warp per channel row), with and without segments, lengths on and off the chunk grid.
    Case(2, 64, 1000, 16, groups=None, dtype=torch.bfloat16, block_d=4, bwd_block_d=4, chunk=None),
    Case(2, 64, 2048, 16, groups=2, dtype=torch.float32, block_d=4, bwd_block_d=4, chunk=None, num_segments=3),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_scan_matches_reference_gpu(case):
    check_scan_case(case, "cuda")


def check_seqlen_2_20(dtype, scan) -> None:
    """seqlen 2^20 (the DNA length): forward, last state and every gradient against the chunked oracle."""
    case = Case(1, 16, 2 ** 20, 16, groups=1, dtype=dtype)
    inputs = make_inputs(case, "cuda")
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    wide = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    with poisoned_outputs():
        out, last = scan(**leaves, delta_softplus=True, return_last_state=True)
    ref_out, ref_last = chunked_oracle(**wide, delta_softplus=True)
    tol = TOLERANCE[dtype]
    assert rel_err(out, ref_out) <= tol and rel_err(last, ref_last) <= tol
    dout = torch.randn_like(ref_out)
    with poisoned_outputs():
        grads = torch.autograd.grad((out.double() * dout).sum() + last.sum(), list(leaves.values()))
    ref_grads = torch.autograd.grad((ref_out * dout).sum() + ref_last.sum(), list(wide.values()))
    errors = {name: rel_err(a, b) for name, a, b in zip(leaves, grads, ref_grads)}
    assert all(e <= tol for e in errors.values()), errors


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_seqlen_2_20_gpu(dtype):
    from ssm_core.ops.scan_triton import selective_scan_gpu
    check_seqlen_2_20(dtype, selective_scan_gpu)


@pytest.mark.gpu
@needs_cuda
def test_triton_kernels_when_asked(monkeypatch):
    """SSM_CORE_GPU_SCAN=triton routes the gpu backend to the Triton kernels."""
    from ssm_core.ops.scan_triton import selective_scan_gpu
    from ssm_core.ops.selective_scan import selective_scan
    monkeypatch.setenv("SSM_CORE_GPU_SCAN", "triton")
    inputs = make_inputs(Case(2, 32, 200, 16), "cuda")
    assert torch.equal(selective_scan(**inputs, delta_softplus=True),
                       selective_scan_gpu(**inputs, delta_softplus=True))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("groups", [None, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_matches_reference_gpu(groups, dtype):
    check_step_case(3, 256, 16, groups, True, dtype, "cuda")
    check_step_case(2, 100, 7, groups and 2, False, dtype, "cuda")


@pytest.mark.gpu
@needs_cuda
def test_state_update_in_cuda_graph_equals_full_scan():
    """A captured step, replayed along a sequence, gives the full scan's outputs and last state."""
    from ssm_core.ops.scan_triton import selective_scan_gpu, selective_state_update_gpu
    batch, dim, dstate, seqlen = 2, 128, 16, 24
    inputs = make_inputs(Case(batch, dim, seqlen, dstate, groups=2), "cuda")
    u, delta, A, B, C = (inputs[k] for k in ("u", "delta", "A", "B", "C"))
    D, z, bias, h0 = (inputs[k] for k in ("D", "z", "delta_bias", "initial_state"))
    out, last = selective_scan_gpu(u, delta, A, B, C, D, z, bias, True, h0, True)
    state = h0.clone()
    x_s, dt_s, z_s = u[..., 0].clone(), delta[..., 0].clone(), z[..., 0].clone()
    B_s, C_s = B[..., 0].clone(), C[..., 0].clone()

    def step():
        return selective_state_update_gpu(state, x_s, dt_s, A, B_s, C_s, D, z_s, bias, True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()                                           # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    state.copy_(h0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_s = step()
    state.copy_(h0)                                      # capture does not run the kernel
    ys = []
    for t in range(seqlen):
        for static, full in ((x_s, u), (dt_s, delta), (z_s, z), (B_s, B), (C_s, C)):
            static.copy_(full[..., t])
        graph.replay()
        ys.append(y_s.clone())
    assert rel_err(torch.stack(ys, -1), out) <= 1e-5
    assert rel_err(state, last) <= 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Interpreter driver (run as a script by test_kernels_under_triton_interpreter)
# ----------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    enter_interpreter_script()
    for case in INTERPRETER_SCAN_CASES:
        errors = check_scan_case(case, "cpu")
        print(f"ok {case}: max relative error {max(errors.values()):.2e}", flush=True)
    for step_case in INTERPRETER_STEP_CASES:
        check_step_case(*step_case, device="cpu")
        print(f"ok step {step_case}", flush=True)
