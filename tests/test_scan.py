"""The selective scan: semantics pinned by hand, every CPU backend against the float64 reference, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_core import selective_scan, selective_state_update
from ssm_core.ops import selective_scan_reference


def test_hand_computed_recurrence():
    # dim 1, dstate 2, three steps; every number below is worked out from the definition.
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 0.2]]])
    A = torch.tensor([[-1.0, -2.0]])
    B = torch.tensor([[[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]]])    # (batch, dstate, seqlen)
    C = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]])
    D = torch.tensor([0.5])
    h = [0.0, 0.0]
    expected = []
    for t in range(3):
        dt, ut = delta[0, 0, t].item(), u[0, 0, t].item()
        # h_t = exp(Δ A) h_{t-1} + Δ B u  (note the Δ in the input term)
        h = [math.exp(dt * A[0, n].item()) * h[n] + dt * B[0, n, t].item() * ut for n in range(2)]
        expected.append(sum(C[0, n, t].item() * h[n] for n in range(2)) + 0.5 * ut)
    # step 0 by hand: h = (0.5*1*1, 0.5*0.5*1) = (0.5, 0.25); y = 0.5 + 2*0.25 + 0.5 = 1.5
    assert expected[0] == pytest.approx(1.5)
    # step 1 (Δ = 1): h0 = e^-1*0.5 + 1*0*2 ; h1 = e^-2*0.25 + 1*1*2 ; y = 1*h0 + 0*h1 + 0.5*2
    assert expected[1] == pytest.approx(math.exp(-1.0) * 0.5 + 1.0)
    for backend in ("reference", "cpu"):
        out, last = selective_scan(u, delta, A, B, C, D, return_last_state=True, backend=backend)
        torch.testing.assert_close(out[0, 0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(last[0, 0], torch.tensor(h), rtol=1e-5, atol=1e-6)
    # softplus + bias + z gating on top of the same numbers
    z = torch.tensor([[[0.3, -1.0, 2.0]]])
    bias = torch.tensor([0.1])
    out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="cpu")
    ref = selective_scan(u, F.softplus(delta + 0.1), A, B, C, D, backend="reference") * F.silu(z)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def make_inputs(batch, dim, seqlen, dstate, groups, has_D, has_z, has_bias, has_h0, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    shape_bc = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    return dict(
        u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen, scale=0.5),
        A=(-torch.rand(dim, dstate, generator=g, dtype=dtype) * 2 - 0.05).requires_grad_(),
        B=r(*shape_bc), C=r(*shape_bc),
        D=r(dim) if has_D else None, z=r(batch, dim, seqlen) if has_z else None,
        delta_bias=r(dim, scale=0.3) if has_bias else None,
        initial_state=r(batch, dim, dstate) if has_h0 else None)


CASES = [  # (batch, dim, seqlen, dstate, groups, D, z, bias, h0, softplus)
    (1, 3, 1, 4, None, False, False, False, False, False),
    (2, 4, 37, 8, None, True, True, True, True, True),
    (2, 6, 300, 5, 3, True, False, True, False, True),      # groups, crosses a checkpoint chunk boundary
    (1, 4, 513, 16, 2, False, True, False, True, False),    # odd length over two chunk boundaries
    (3, 2, 64, 1, None, True, True, False, False, True),
]


@pytest.mark.parametrize("case", CASES)
def test_cpu_backend_matches_float64_reference(case):
    *shape, has_D, has_z, has_bias, has_h0, softplus = case
    x = make_inputs(*shape, has_D, has_z, has_bias, has_h0, seed=hash(case) % 2**31)
    out_r, last_r = selective_scan(**x, delta_softplus=softplus, return_last_state=True, backend="reference")
    out_c, last_c = selective_scan(**x, delta_softplus=softplus, return_last_state=True, backend="cpu")
    torch.testing.assert_close(out_c, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last_c, last_r, rtol=1e-10, atol=1e-10)
    # every gradient, including through last_state
    g = torch.Generator().manual_seed(1)
    w_out, w_last = torch.randn(out_r.shape, generator=g, dtype=out_r.dtype), torch.randn(last_r.shape, generator=g, dtype=out_r.dtype)
    names = [k for k, v in x.items() if v is not None]
    grads_r = torch.autograd.grad((out_r * w_out).sum() + (last_r * w_last).sum(), [x[k] for k in names])
    grads_c = torch.autograd.grad((out_c * w_out).sum() + (last_c * w_last).sum(), [x[k] for k in names])
    for name, gr, gc in zip(names, grads_r, grads_c):
        torch.testing.assert_close(gc, gr, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def _patch_threads(monkeypatch, threads):
    from ssm_core.ops import scan_cpu

    monkeypatch.setattr(scan_cpu.numba, "get_num_threads", lambda: threads)
    return scan_cpu


def test_cpu_backward_in_segments_with_many_threads_matches_float64_reference(monkeypatch):
    """64 threads (128 channel blocks, patched) and partial-sum buffers of 2 KB, so the backward runs the sequence in
    segments of one chunk, carrying the state's gradient from each segment to the one before."""
    scan_cpu = _patch_threads(monkeypatch, 64)
    monkeypatch.setattr(scan_cpu, "PARTIAL_BYTES", 2048)
    case = (1, 6, 700, 4, 2, True, True, True, True, True)
    *shape, has_D, has_z, has_bias, has_h0, softplus = case
    assert scan_cpu.backward_blocks(1, 6, 2, 700, 4, 8) == (6, scan_cpu.CHUNK)  # three segments
    x = make_inputs(*shape, has_D, has_z, has_bias, has_h0, seed=11)
    out_r, last_r = selective_scan(**x, delta_softplus=softplus, return_last_state=True, backend="reference")
    out_c, last_c = selective_scan(**x, delta_softplus=softplus, return_last_state=True, backend="cpu")
    names = [k for k, v in x.items() if v is not None]
    grads_r = torch.autograd.grad(out_r.square().sum() + last_r.sum(), [x[k] for k in names])
    grads_c = torch.autograd.grad(out_c.square().sum() + last_c.sum(), [x[k] for k in names])
    for name, gr, gc in zip(names, grads_r, grads_c):
        torch.testing.assert_close(gc, gr, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_cpu_backward_partial_sums_are_bounded_whatever_the_thread_count(monkeypatch):
    """The dB/dC partial sums were (batch, 2 x threads / batch, groups, seqlen, dstate) each: 8.6 GB at 64 threads,
    batch 1, 1 Mbp. Measured here at (1, 128, 2^14, 16) float32 with 2 and with 64 threads (patched)."""
    import tracemalloc

    scan_cpu = _patch_threads(monkeypatch, 64)
    n_blocks, segment = scan_cpu.backward_blocks(1, 512, 1, 2**20, 16, 4)
    assert n_blocks == 128 and n_blocks * segment * 16 * 4 <= scan_cpu.PARTIAL_BYTES
    x = {k: v.detach().float().requires_grad_() if v is not None else None
         for k, v in make_inputs(1, 128, 2**14, 16, None, True, True, True, False, seed=5).items()}
    peaks = {}
    for threads in (2, 64):
        _patch_threads(monkeypatch, threads)
        out = selective_scan(**x, delta_softplus=True, backend="cpu")
        tracemalloc.start()
        out.sum().backward()
        peaks[threads] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # unbounded, 64 threads added 2 x 128 MiB here; now at most the two buffers' cap
    assert peaks[64] - peaks[2] <= 2 * scan_cpu.PARTIAL_BYTES, peaks


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_low_precision_inputs(dtype):
    x64 = make_inputs(2, 8, 200, 16, None, True, True, True, False, seed=7)
    x = {k: (v.detach().to(dtype if k in ("u", "delta", "B", "C", "z") else torch.float32).requires_grad_()
             if v is not None else None) for k, v in x64.items()}
    out = selective_scan(**x, delta_softplus=True, backend="cpu")
    assert out.dtype == dtype
    ref = selective_scan(**{k: (v.detach().double() if v is not None else None) for k, v in x.items()},
                         delta_softplus=True, backend="reference")
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # fp32 accumulation; bf16 only rounds the output
    assert rel_err(out, ref) < tol
    out.float().sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in x.values() if v is not None)


def test_auto_backend_on_cpu_is_numba_and_no_grad_path():
    x = {k: (v.detach() if v is not None else None) for k, v in make_inputs(1, 4, 50, 4, None, True, True, True, True, 3).items()}
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(out, selective_scan(**x, delta_softplus=True, backend="reference"))


def test_state_update_matches_scan_step_by_step():
    x = {k: (v.detach().float() if v is not None else None)
         for k, v in make_inputs(2, 6, 12, 4, 2, True, True, True, True, seed=11).items()}
    full = selective_scan(**x, delta_softplus=True, backend="reference")
    state = x["initial_state"].clone()
    for t in range(12):
        y = selective_state_update(state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
                                   x["D"], x["z"][..., t], x["delta_bias"], dt_softplus=True)
        torch.testing.assert_close(y, full[..., t], rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_argument():
    x = {k: (v.detach().float() if v is not None else None)
         for k, v in make_inputs(2, 4, 10, 3, None, True, True, True, True, seed=5).items()}
    bad = [
        (dict(u=x["u"][0]), "`u` must be (batch, dim, seqlen)"),
        (dict(delta=x["delta"][:, :, :5]), "`delta`"),
        (dict(A=x["A"][:3]), "`A`"),
        (dict(A=x["A"].half()), "`A`"),
        (dict(B=torch.randn(2, 3, 3, 10)), "`B`"),  # 3 groups do not divide dim 4
        (dict(C=x["C"][:, :2]), "`C`"),
        (dict(D=torch.randn(5)), "`D`"),
        (dict(z=x["z"][:1]), "`z`"),
        (dict(delta_bias=torch.randn(4, 1)), "`delta_bias`"),
        (dict(initial_state=torch.randn(2, 4, 4)), "`initial_state`"),
        (dict(u=x["u"].long()), "`u`"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            selective_scan(**{**x, **override})
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**x, backend="fast")
    with pytest.raises(ValueError, match="needs CUDA"):
        selective_scan(**x, backend="gpu")


# ---- the inference-only, time-major numba kernels of the Mamba block (ssm_core/ops/scan_cpu.py) ----------------

def test_vectorisable_exp_and_softplus_match_float64():
    import numpy as np
    from numba import njit

    from ssm_core.ops.scan_cpu import _exp_f32, _softplus_f32

    @njit
    def apply(f, x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = f(x[i])
        return out

    x = np.concatenate([np.linspace(-100, 100, 20001), np.random.default_rng(5).normal(0, 30, 5000)])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    ok = x > -87  # below that float32 exp underflows; the kernel's clamp gives ~1e-38 instead of 0
    exp_ref = np.exp(np.minimum(x64, 88.0))
    np.testing.assert_allclose(apply(_exp_f32, x)[ok], exp_ref[ok], rtol=5e-7)  # ~4 float32 ulp
    assert np.all(apply(_exp_f32, x)[~ok] < 2e-38)
    np.testing.assert_allclose(apply(_softplus_f32, x), np.logaddexp(0.0, x64), rtol=5e-7, atol=2e-38)


def time_major_inputs(batch, seqlen, dim, dstate, rank, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    return dict(u=r(batch, seqlen, dim), x_dbl=r(batch, seqlen, rank + 2 * dstate), xz=r(batch, seqlen, 2 * dim),
                dt_weight=r(dim, rank, scale=2 * rank ** -0.5), dt_bias=r(dim, scale=2.0, shift=-1.0),
                A=-torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 4 - 0.05, D=r(dim),
                h0=r(batch, dim, dstate))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 45, 37, 5, 3), (1, 300, 130, 16, 16), (3, 64, 512, 16, 32)])
def test_time_major_inference_scan_matches_float64_reference(shape):
    from ssm_core.ops.scan_cpu import selective_scan_time_major

    batch, seqlen, dim, dstate, rank = shape
    x = time_major_inputs(*shape, seed=hash(shape) % 2**31)
    ref, last_ref = selective_scan_reference(
        x["u"].transpose(1, 2), (x["x_dbl"][..., :rank] @ x["dt_weight"].t()).transpose(1, 2), x["A"],
        x["x_dbl"][..., rank:rank + dstate].transpose(1, 2), x["x_dbl"][..., rank + dstate:].transpose(1, 2), x["D"],
        x["xz"][..., dim:].transpose(1, 2), x["dt_bias"], True, x["h0"], True)
    f = {k: v.float() for k, v in x.items()}
    out, last = selective_scan_time_major(f["u"], f["x_dbl"], f["xz"], dim, f["dt_weight"], f["dt_bias"], f["A"],
                                          f["D"], f["h0"])
    torch.testing.assert_close(out.double(), ref.transpose(1, 2), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(last.double(), last_ref, rtol=2e-5, atol=2e-5)
    # writing the output over u (what the Mamba block does to save memory) gives the same numbers
    u = f["u"].clone()
    out_inplace, _ = selective_scan_time_major(u, f["x_dbl"], f["xz"], dim, f["dt_weight"], f["dt_bias"], f["A"],
                                               f["D"], f["h0"], out=u)
    assert out_inplace.data_ptr() == u.data_ptr()
    torch.testing.assert_close(out_inplace, out, rtol=0, atol=0)


@pytest.mark.parametrize("d_conv", [1, 2, 4])
@pytest.mark.parametrize("seqlen", [1, 3, 50])
def test_time_major_conv_silu_matches_float64_reference(d_conv, seqlen):
    from ssm_core.ops.scan_cpu import causal_conv1d_silu_time_major

    g = torch.Generator().manual_seed(seqlen * 10 + d_conv)
    batch, dim = 2, 70
    xz = torch.randn(batch, seqlen, 2 * dim, generator=g, dtype=torch.float64)
    context = torch.randn(batch, dim, d_conv - 1, generator=g, dtype=torch.float64)
    weight = torch.randn(dim, 1, d_conv, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64)
    ref = F.silu(F.conv1d(torch.cat([context, xz[..., :dim].transpose(1, 2)], -1), weight, bias, groups=dim))
    out = causal_conv1d_silu_time_major(xz.float(), dim, weight.float(), bias.float(), context.float())
    torch.testing.assert_close(out.double(), ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
    no_bias = causal_conv1d_silu_time_major(xz.float(), dim, weight.float(), None, context.float())
    ref = F.silu(F.conv1d(torch.cat([context, xz[..., :dim].transpose(1, 2)], -1), weight, None, groups=dim))
    torch.testing.assert_close(no_bias.double(), ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_time_major_kernels_name_bad_arguments():
    from ssm_core.ops.scan_cpu import causal_conv1d_silu_time_major, selective_scan_time_major

    x = {k: v.float() for k, v in time_major_inputs(1, 8, 16, 4, 2, seed=0).items()}
    with pytest.raises(ValueError, match="`x_dbl`"):
        selective_scan_time_major(x["u"], x["x_dbl"][..., :5], x["xz"], 16, x["dt_weight"], x["dt_bias"], x["A"],
                                  x["D"], x["h0"])
    with pytest.raises(ValueError, match="`z`"):
        selective_scan_time_major(x["u"], x["x_dbl"], x["xz"].double(), 16, x["dt_weight"], x["dt_bias"], x["A"],
                                  x["D"], x["h0"])
    with pytest.raises(ValueError, match="`initial_state`"):
        selective_scan_time_major(x["u"], x["x_dbl"], x["xz"], 16, x["dt_weight"], x["dt_bias"], x["A"], x["D"],
                                  x["h0"][..., :3])
    with pytest.raises(ValueError, match="`xz`"):
        causal_conv1d_silu_time_major(x["xz"].transpose(1, 2), 16, torch.ones(16, 4), None, torch.zeros(1, 16, 3))
