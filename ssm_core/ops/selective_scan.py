"""The public selective-scan API: argument checking, and the one place that chooses an implementation.

``selective_scan`` mirrors mamba-ssm's ``selective_scan_fn`` (same argument names, shapes and semantics), so
code can switch between the two. Backends, the ``backend=`` argument (``MambaConfig.scan_backend`` for models):

- ``reference``: plain PyTorch (``scan_reference.py``), float64-capable, the oracle of the tests;
- ``cpu``: numba kernels (``scan_cpu.py``), parallel over batch x dim, forward and backward;
- ``gpu``: for CUDA tensors, the CUDA C++ kernels (``scan_cuda.py``, compiled at first use with NVRTC from
  PyTorch's CUDA wheels: no toolkit needed) or the Triton kernels (``scan_triton.py``): the environment variable
  ``SSM_CORE_GPU_SCAN`` = ``auto`` (CUDA kernels where they compile and take the inputs, else Triton, with a
  warning that says why and what it costs), ``cuda`` (the CUDA kernels or an error) or ``triton`` chooses;
- ``auto``: ``gpu`` for CUDA tensors, ``cpu`` on the CPU, ``reference`` elsewhere (Apple's mps).

Every backend takes packed variable-length sequences (``cu_seqlens``, see ``ssm_core/utils/varlen.py``), with
initial and last states per sequence.
``choose_backend`` applies these rules, and those of the Mamba blocks' fused inference paths, for every caller.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from ..utils.varlen import check_cu_seqlens
from .scan_reference import selective_scan_reference, selective_state_update_reference

BACKENDS = ("auto", "reference", "cpu", "gpu")
_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REAL = (torch.float32, torch.float64)


def _expect(cond: bool, name: str, expected: str, got) -> None:
    if not cond:
        raise ValueError(f"selective_scan: `{name}` must be {expected}; got {got}")


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                      cu_seqlens=None) -> None:
    """Raise ValueError naming the argument when a shape, dtype or device is wrong (``CuSeqlensError``, a
    ValueError, for ``cu_seqlens``)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        _expect(isinstance(t, torch.Tensor), name, "a torch.Tensor", type(t).__name__)
    _expect(u.dim() == 3, "u", "(batch, dim, seqlen)", _describe(u))
    _expect(u.dtype in _FLOAT, "u", "a floating tensor (fp16, bf16, fp32, fp64)", _describe(u))
    batch, dim, seqlen = u.shape
    shape3 = f"(batch, dim, seqlen) = {(batch, dim, seqlen)} like u"
    _expect(delta.shape == u.shape and delta.dtype in _FLOAT, "delta", shape3, _describe(delta))
    _expect(A.dim() == 2 and A.shape[0] == dim and A.dtype in _REAL, "A",
            f"a real fp32/fp64 tensor of shape (dim, dstate) with dim = {dim}", _describe(A))
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and t.shape == (batch, dstate, seqlen)) or (
            t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (dstate, seqlen)
            and t.shape[1] > 0 and dim % t.shape[1] == 0)
        _expect(ok and t.dtype in _FLOAT, name,
                f"(batch, dstate, seqlen) = {(batch, dstate, seqlen)} or (batch, groups, dstate, seqlen) with "
                f"groups dividing dim = {dim}", _describe(t))
    _expect(B.dim() == C.dim() and B.shape == C.shape, "C", f"the same shape as B {tuple(B.shape)}", _describe(C))
    if z is not None:
        _expect(z.shape == u.shape and z.dtype in _FLOAT, "z", shape3, _describe(z))
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _expect(t.shape == (dim,) and t.dtype in _REAL, name, f"a fp32/fp64 tensor of shape (dim,) = ({dim},)",
                    _describe(t))
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, batch, seqlen, u.device, "selective_scan")
    if initial_state is not None:
        # packed: one initial state per sequence
        rows, what = (batch, "batch") if cu_seqlens is None else (cu_seqlens.numel() - 1, "n")
        _expect(initial_state.shape == (rows, dim, dstate) and initial_state.dtype in _REAL, "initial_state",
                f"a fp32 tensor of shape ({what}, dim, dstate) = {(rows, dim, dstate)}", _describe(initial_state))
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None:
            _expect(t.device == u.device, name, f"on u's device {u.device}", _describe(t))


def _gpu_module():
    try:
        from . import scan_triton
    except ImportError as e:  # no Triton, or a Triton that cannot compile for this GPU
        raise RuntimeError(
            f"selective_scan: the GPU backend needs Triton ({e}). Install triton (it ships with PyTorch's "
            "CUDA wheels), or pass backend='reference' to use the slow plain-PyTorch scan instead.") from e
    return scan_triton


GPU_KERNELS = ("auto", "cuda", "triton")


# What the fallback costs, measured side by side on an H100 (benchmarks/results/gpu_scan_v4.1_*.json).
TRITON_FALLBACK_COST = ("the Triton kernels run the scan's forward+backward 2.2-3.2x slower than the CUDA kernels "
                        "in bf16 and 1.6-2.4x in fp32")


class CudaKernelsUnavailable(RuntimeError):
    """SSM_CORE_GPU_SCAN=cuda, but the CUDA kernels cannot be had here."""


def _no_cuda_kernels_message(why: str) -> str:
    return (f"the CUDA scan kernels are unavailable ({why}), so {TRITON_FALLBACK_COST}. They need only PyTorch's "
            "CUDA build (its nvidia-cuda-nvrtc wheel provides NVRTC) and a GPU that NVRTC knows: reinstall torch "
            "from its CUDA wheels, or upgrade it for a newer GPU.")


@functools.cache
def _warn_no_cuda_kernels(why: str) -> None:
    warnings.warn(f"selective_scan: {_no_cuda_kernels_message(why)} Set SSM_CORE_GPU_SCAN=cuda to make this an "
                  "error, or SSM_CORE_GPU_SCAN=triton to choose Triton silently.", RuntimeWarning, stacklevel=4)


OPS = ("scan", "step", "block_forward", "block_step")


def choose_backend(backend: str, device: torch.device, op: str = "scan", *, scan_inputs=None,
                   fusable: bool = False, grad: bool = True) -> str:
    """Which implementation runs `op` on `device` for a caller configured with `backend` (one of BACKENDS; see
    the module docstring for what each means). Every caller asks here; nothing else chooses.

    op, and what it returns:
    - "scan" (``selective_scan``): "reference", "cpu" (numba), or on the gpu backend "cuda" or "triton" as
      SSM_CORE_GPU_SCAN says, judged on ``scan_inputs`` = (u, delta, A, B).
    - "step" (``selective_state_update``): "triton" on the gpu backend, else "reference" (one step is
      O(batch*dim*dstate): PyTorch's vectorised ops are already the right tool on the CPU).
    - "block_forward" (``Mamba.forward``): "cpu_fused", numba kernels fused with the block's projections in their
      (batch, seqlen, channels) layout, on the cpu backend when no gradient is wanted (``grad``) and the block
      can take them (``fusable``: float32, selective, one direction); else "unfused" (the block's own ops around
      ``selective_scan``).
    - "block_step" (``ResidualBlock.step``): "triton_fused", the whole residual block in one Triton kernel
      (``block_step_triton.py``: no backward), on the gpu backend when no gradient is wanted and the block allows
      it (``fusable``: its ``fused_step`` switch and batch limit, selective, one direction); else "unfused".
    Raises ValueError for an unknown backend or op and for a backend the device cannot run, CudaKernelsUnavailable
    under SSM_CORE_GPU_SCAN=cuda without the CUDA kernels.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: `backend` must be one of {BACKENDS}; got {backend!r}")
    if op not in OPS:
        raise ValueError(f"choose_backend: `op` must be one of {OPS}; got {op!r}")
    if backend == "auto":
        backend = {"cuda": "gpu", "cpu": "cpu"}.get(device.type, "reference")
    elif backend == "cpu" and device.type != "cpu":
        raise ValueError(f"selective_scan: backend 'cpu' needs CPU tensors; got device {device}")
    elif backend == "gpu" and device.type != "cuda":
        raise ValueError(f"selective_scan: backend 'gpu' needs CUDA tensors; got device {device}")
    if op == "block_forward":
        return "cpu_fused" if backend == "cpu" and fusable and not grad else "unfused"
    if op == "block_step":
        return "triton_fused" if backend == "gpu" and fusable and not grad else "unfused"
    if backend != "gpu":
        return "reference" if op == "step" else backend
    if op == "step":
        return "triton"
    return _gpu_scan_kernel(*scan_inputs)


def _gpu_scan_kernel(u, delta, A, B) -> str:
    """"cuda" or "triton" for these inputs, as SSM_CORE_GPU_SCAN chooses (see the module docstring)."""
    choice = os.environ.get("SSM_CORE_GPU_SCAN", "auto")
    if choice not in GPU_KERNELS:
        raise ValueError(f"SSM_CORE_GPU_SCAN must be one of {GPU_KERNELS}; got {choice!r}")
    if choice == "triton":
        return "triton"
    from . import scan_cuda
    ok, why = scan_cuda.available()
    if choice == "cuda" and not ok:
        raise CudaKernelsUnavailable(f"selective_scan: SSM_CORE_GPU_SCAN=cuda, but {_no_cuda_kernels_message(why)}")
    if ok and scan_cuda.supports(u, delta, A, B):
        return "cuda"
    if not ok:
        _warn_no_cuda_kernels(why)
    return "triton"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False, backend="auto", cu_seqlens=None):
    """Selective scan (S6), differentiable in every tensor input.

    Args:
        u, delta: (batch, dim, seqlen). z: optional (batch, dim, seqlen) gate.
        A: (dim, dstate), real (negative for a stable scan).
        B, C: (batch, dstate, seqlen) or (batch, groups, dstate, seqlen); dim is split evenly over the groups.
        D, delta_bias: optional (dim,).
        initial_state: optional (batch, dim, dstate) float32 state before the first step.
        cu_seqlens: optional (n + 1,) int32 cumulative lengths of n sequences packed along seqlen, batch 1:
            sequence i is positions cu_seqlens[i]:cu_seqlens[i + 1] (zero-length sequences allowed). The state
            restarts at each sequence's start, from zero or from initial_state[i] (initial_state is then
            (n, dim, dstate)), and last_state is (n, dim, dstate): each sequence's state after its last step (its
            initial state if it is empty). Same results as one call per sequence.
    Computes Δ = softplus(delta + delta_bias) (or delta + delta_bias), h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,
    y_t = <C_t, h_t> + D u_t, out = y * silu(z), accumulating in float32 (float64 for float64 inputs).
    Returns out (batch, dim, seqlen) in u's dtype, or (out, last_state (batch, dim, dstate)) if asked.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
    kernel = choose_backend(backend, u.device, scan_inputs=(u, delta, A, B))
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
    if kernel == "reference":
        return selective_scan_reference(*args, cu_seqlens=cu_seqlens)
    if kernel == "cpu":
        from .scan_cpu import selective_scan_cpu
        return selective_scan_cpu(*args, cu_seqlens=cu_seqlens)
    if kernel == "cuda":
        from .scan_cuda import selective_scan_cuda
        return selective_scan_cuda(*args, cu_seqlens=cu_seqlens)
    return _gpu_module().selective_scan_gpu(*args, cu_seqlens=cu_seqlens)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           backend="auto"):
    """One recurrent step of the selective scan; updates ``state`` in place and returns y.

    state: (batch, dim, dstate) float32; x, dt, z: (batch, dim); A: (dim, dstate);
    B, C: (batch, dstate) or (batch, groups, dstate); D, dt_bias: (dim,). Returns y: (batch, dim) in x's dtype.
    Feeding a sequence step by step gives the same outputs as ``selective_scan`` on the whole sequence.
    """
    _expect(state.dim() == 3 and state.dtype in _REAL, "state", "a fp32 tensor (batch, dim, dstate)",
            _describe(state))
    batch, dim, dstate = state.shape
    for name, t in (("x", x), ("dt", dt)):
        _expect(t.shape == (batch, dim), name, f"(batch, dim) = {(batch, dim)}", _describe(t))
    if z is not None:
        _expect(z.shape == (batch, dim), "z", f"(batch, dim) = {(batch, dim)}", _describe(z))
    _expect(A.shape == (dim, dstate), "A", f"(dim, dstate) = {(dim, dstate)}", _describe(A))
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 2 and t.shape == (batch, dstate)) or (
            t.dim() == 3 and t.shape[0] == batch and t.shape[2] == dstate and dim % t.shape[1] == 0)
        _expect(ok, name, f"(batch, dstate) = {(batch, dstate)} or (batch, groups, dstate)", _describe(t))
    if choose_backend(backend, state.device, "step") == "triton":
        return _gpu_module().selective_state_update_gpu(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
