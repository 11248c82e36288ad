"""Tests of the CUDA C++ selective scan (``ssm_core/ops/scan_cuda.py``) against the float64 reference.

They run on any CUDA GPU (``bash benchmarks/run_device.sh`` on the device) and skip only where there is none: on a
GPU, kernels that do not compile with NVRTC are a failure, not a skip. The checks are those of ``test_scan_gpu.py`` (outputs poisoned with NaN first, every
gradient, dtype-fitting tolerances); the cases aim at this kernel's own edges: 4 and 16 lanes per channel
(dstate <= 16 and <= 64, padded states), channel blocks cut short by a group, lengths off the 64-step chunk and the
4-step dB/dC groups, forced segment counts in the forward and the backward, mixed input dtypes.
"""
from __future__ import annotations

import functools

import pytest
import torch

from test_scan_gpu import Case, check_scan_case, check_seqlen_2_20, make_inputs, rel_err


needs_cuda_kernels = pytest.mark.skipif(not torch.cuda.is_available(),
                                        reason="no CUDA GPU here: run `bash benchmarks/run_device.sh` on the device")


@pytest.mark.gpu
@needs_cuda_kernels
def test_cuda_kernels_compile_on_this_gpu():
    """On a GPU the kernels must compile with NVRTC: the fallback to Triton hides a broken kernel from users."""
    from ssm_core.ops import scan_cuda
    ok, why = scan_cuda.available()
    assert ok, why


def cuda_scan(fwd_segments=None, bwd_segments=None, register_cap=None):
    from ssm_core.ops.scan_cuda import CudaScanConfig, selective_scan_cuda
    return functools.partial(selective_scan_cuda, config=CudaScanConfig(
        fwd_segments=fwd_segments, bwd_segments=bwd_segments, bwd_register_cap=register_cap))


CASES = [  # (case, forward segments, backward segments); None = picked from the SM count
    (Case(2, 64, 1000, 16, groups=None, dtype=dtype), None, None)
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
] + [  # the uncapped backward, which the defaults pick only for inputs that fill the GPU
    (Case(2, 64, 1000, 16, groups=2, dtype=dtype), 1, 1)
    for dtype in (torch.float32, torch.bfloat16)
] + [
    (Case(2, 64, 1000, 16, groups=None, options=False, dtype=torch.float32), 1, 1),
    (Case(1, 128, 4096, 16, groups=4, dtype=torch.bfloat16), 5, 3),
    (Case(1, 128, 4096, 16, groups=4, dtype=torch.float32), 7, 7),
    (Case(3, 40, 300, 7, groups=2, dtype=torch.float32), 2, 3),       # dstate 7; 20 channels per group
    (Case(2, 24, 999, 40, groups=3, dtype=torch.float32), 4, 2),      # 16 lanes per channel; L % 4 != 0
    (Case(2, 32, 129, 16, groups=1, dtype=torch.float32), 3, 3),      # one step past a chunk
    (Case(2, 32, 1, 16, groups=1, dtype=torch.float32), None, None),  # a single step
    (Case(2, 32, 64, 64, groups=1, dtype=torch.bfloat16), 1, 1),
    (Case(4, 16, 3000, 16, groups=None, dtype=torch.bfloat16), 9, 11),
]


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("case,fwd_seg,bwd_seg", CASES, ids=lambda x: str(x))
def test_cuda_scan_matches_reference(case, fwd_seg, bwd_seg):
    check_scan_case(case, "cuda", scan=cuda_scan(fwd_seg, bwd_seg, register_cap=None if fwd_seg is None else False))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_scan_register_capped_backward(dtype):
    """The backward variant built for 4 blocks per SM (registers capped, some spilled) computes the same."""
    check_scan_case(Case(2, 64, 1000, 16, groups=2, dtype=dtype), "cuda", scan=cuda_scan(3, 2, register_cap=True))


@pytest.mark.gpu
@needs_cuda_kernels
def test_cuda_scan_mixed_dtypes():
    """bf16 u/delta/z with float32 B, C: computed in float32, gradients back in each input's dtype."""
    case = Case(2, 32, 300, 16, groups=None, dtype=torch.bfloat16)
    inputs = make_inputs(case, "cuda")
    inputs["B"], inputs["C"] = inputs["B"].float(), inputs["C"].float()
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = cuda_scan()(**leaves, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), list(leaves.values()))
    for (name, leaf), grad in zip(leaves.items(), grads):
        assert grad.dtype == leaf.dtype, name
    from ssm_core.ops.scan_reference import selective_scan_reference
    ref = selective_scan_reference(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_scan_seqlen_2_20(dtype):
    check_seqlen_2_20(dtype, cuda_scan())


@pytest.mark.gpu
@needs_cuda_kernels
def test_auto_backend_uses_cuda_kernels(monkeypatch):
    from ssm_core.ops.selective_scan import selective_scan
    monkeypatch.delenv("SSM_CORE_GPU_SCAN", raising=False)
    inputs = make_inputs(Case(2, 32, 200, 16), "cuda")
    assert torch.equal(selective_scan(**inputs, delta_softplus=True), cuda_scan()(**inputs, delta_softplus=True))


@pytest.mark.gpu
@needs_cuda_kernels
def test_cuda_scan_in_cuda_graph():
    """The forward launches with no host synchronisation: a captured call replays to the same output."""
    inputs = make_inputs(Case(2, 64, 500, 16), "cuda")
    scan = cuda_scan()
    want = scan(**inputs, delta_softplus=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        scan(**inputs, delta_softplus=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = scan(**inputs, delta_softplus=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_scan_unaligned_inputs(dtype):
    """Inputs that are contiguous but not 16-byte aligned take the element-wise path and give the same results."""
    inputs = make_inputs(Case(2, 32, 512, 16, dtype=dtype), "cuda")
    shifted = dict(inputs)
    for name in ("u", "delta", "z"):
        t = inputs[name]
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        shifted[name] = flat[1:].view(t.shape).copy_(t)
        assert shifted[name].is_contiguous() and shifted[name].data_ptr() % 16 != 0
    want = cuda_scan()(**inputs, delta_softplus=True, return_last_state=True)
    got = cuda_scan()(**shifted, delta_softplus=True, return_last_state=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
