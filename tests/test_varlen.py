"""Packed variable-length sequences (``cu_seqlens``): every scan backend, the Mamba block and the models give what
separate calls on each sequence give.

The oracle is the float64 reference scan called once per sequence without ``cu_seqlens`` (sequences of equal
length share a call as rows of one batch, which are independent, so that n = 10^5 takes a few calls). The Triton
kernels run here under Triton's interpreter (``test_triton_kernels_under_interpreter`` runs this file as a script
with ``TRITON_INTERPRET=1``), and on a CUDA GPU in the tests marked ``gpu``.
"""
from __future__ import annotations

import functools

import pytest
import torch

from ssm_core import Mamba, MambaConfig, MambaLMHeadModel, MambaSequenceClassifier, selective_scan
from ssm_core.ops.scan_reference import selective_scan_reference
from ssm_core.utils.varlen import CuSeqlensError
from test_scan_gpu import needs_cuda, poisoned_outputs, rel_err
from triton_interpreter import enter_interpreter_script, run_under_triton_interpreter

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def cu_of(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def packed_inputs(lengths, dim, dstate, groups=1, options=True, dtype=torch.float64, seed=0, device="cpu"):
    """Random leaves (requires_grad) for a pack of sequences of these lengths; groups None: 3-D B and C.
    options: D, z, delta_bias and one initial state per sequence (and delta meant for softplus)."""
    g = torch.Generator().manual_seed(seed)
    L, n = sum(lengths), len(lengths)
    real = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device, dt)

    bc = (1, dstate, L) if groups is None else (1, groups, dstate, L)
    # Steps around 0.2 (delta through softplus with options, used as it is without); A mixes short and long
    # memories, so that a state leaking across a boundary would show.
    delta = rnd(1, dim, L, scale=0.5, shift=-1.5) if options else rnd(1, dim, L, scale=0.2).abs()
    x = dict(u=rnd(1, dim, L), delta=delta,
             A=-(torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 4 - 3.5).exp().to(device, real),
             B=rnd(*bc), C=rnd(*bc))
    if options:
        x.update(D=rnd(dim, dt=real), z=rnd(1, dim, L), delta_bias=rnd(dim, dt=real, scale=0.3),
                 initial_state=rnd(n, dim, dstate, dt=real))
    return {k: v.requires_grad_() for k, v in x.items()}


def separate_calls(x: dict, cu: torch.Tensor, softplus: bool = True):
    """The float64 reference scan of each sequence alone: out (1, dim, seqlen) and last_state (n, dim, dstate),
    differentiable in the packed leaves. One call per distinct length, its sequences as the rows of a batch."""
    x = {k: v.double() for k, v in x.items() if v is not None}
    starts, lengths = cu[:-1].long().cpu(), cu.diff().long().cpu()
    dim, L = x["u"].shape[1:]
    pieces, positions, lasts, order = [], [], [], []
    for length in lengths.unique().tolist():
        seqs = (lengths == length).nonzero()[:, 0]
        pos = (starts[seqs][:, None] + torch.arange(length)).to(x["u"].device)         # (count, length)
        one = {k: x[k][0][:, pos].movedim(1, 0) for k in ("u", "delta", "z") if k in x}     # (count, dim, length)
        one.update({k: x[k][0][..., pos].movedim(-2, 0) for k in ("B", "C")})
        one.update({k: x[k] for k in ("A", "D", "delta_bias") if k in x})
        if "initial_state" in x:
            one["initial_state"] = x["initial_state"][seqs.to(x["u"].device)]
        out, last = selective_scan_reference(**one, delta_softplus=softplus, return_last_state=True)
        pieces.append(out.movedim(0, 1).reshape(dim, -1))
        positions.append(pos.reshape(-1))
        lasts.append(last)
        order.append(seqs)
    out = torch.cat(pieces, 1)[:, torch.cat(positions).argsort()]
    last = torch.cat(lasts)[torch.cat(order).argsort().to(x["u"].device)]
    return out[None], last


def compare(x: dict, cu: torch.Tensor, scan, tol: float, softplus: bool = True, seed: int = 1,
            states: bool = True) -> dict:
    """out, last_state and the gradient of every leaf of ``scan`` (packed) against separate_calls; asserts the
    relative errors are within tol and returns them. states=False: no initial states and no last state (packs as
    the classifiers pass them), only out and its gradients."""
    if not states:
        x = {k: v for k, v in x.items() if k != "initial_state"}
    names = [k for k in ARGS if x.get(k) is not None]
    if states:
        out, last = scan(**x, delta_softplus=softplus, return_last_state=True, cu_seqlens=cu)
        assert last.shape == (cu.numel() - 1, *x["A"].shape)
    else:
        out = scan(**x, delta_softplus=softplus, cu_seqlens=cu)
    want_out, want_last = separate_calls(x, cu, softplus)
    assert out.shape == x["u"].shape and out.dtype == x["u"].dtype
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    w_last = torch.randn(want_last.shape, generator=g, dtype=torch.float64).to(out.device)
    loss, want_loss = (out.double() * w_out).sum(), (want_out * w_out).sum()
    errors = {"out": rel_err(out, want_out)}
    if states:
        loss, want_loss = loss + (last.double() * w_last).sum(), want_loss + (want_last * w_last).sum()
        errors["last_state"] = rel_err(last, want_last)
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    want = torch.autograd.grad(want_loss, [x[k] for k in names])
    for name, got, ref in zip(names, grads, want):
        assert got.shape == x[name].shape and got.dtype == x[name].dtype, name
        errors["d" + name] = rel_err(got, ref)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errors


# Lengths: 1-long sequences side by side, zero-length ones (first, inside, last), and, against numba's 256-step
# checkpoint chunks, sequences that start inside a chunk, exactly at one (256) and span two boundaries.
PACKS = [
    [1],
    [3, 1, 1, 1, 0, 7, 2],
    [0, 5, 1, 0],
    [100, 150, 6, 1, 1, 300, 1, 0, 1],
]


@pytest.mark.parametrize("lengths", PACKS, ids=str)
@pytest.mark.parametrize("groups", [1, None, 2])
def test_reference_packed_equals_separate_calls(lengths, groups):
    x = packed_inputs(lengths, dim=4, dstate=3, groups=groups, seed=len(lengths))
    compare(x, cu_of(lengths), functools.partial(selective_scan, backend="reference"), tol=1e-12)


@pytest.mark.parametrize("lengths", PACKS, ids=str)
@pytest.mark.parametrize("dtype,groups,options", [(torch.float64, 2, True), (torch.float64, None, False),
                                                  (torch.float32, 1, True)])
def test_cpu_backend_packed_equals_separate_calls(lengths, dtype, groups, options):
    x = packed_inputs(lengths, dim=4, dstate=5, groups=groups, options=options, dtype=dtype, seed=sum(lengths))
    # float32: float32 accumulation and the kernels' polynomial exp
    compare(x, cu_of(lengths), functools.partial(selective_scan, backend="cpu"),
            tol=1e-10 if dtype == torch.float64 else 2e-5, softplus=options)


def test_cpu_backend_packed_with_the_backward_cut_into_segments(monkeypatch):
    """The numba backward bounds its partial sums by cutting the sequence into segments of whole chunks, carrying
    the state's gradient from one to the one before; packed sequences that span segment boundaries (and start
    exactly on one) must not notice."""
    from ssm_core.ops import scan_cpu
    monkeypatch.setattr(scan_cpu, "PARTIAL_BYTES", 1)   # one chunk (256 steps) per segment
    lengths = [100, 150, 6, 1, 1, 300, 1, 0, 1, 203, 257]
    _, segment = scan_cpu.backward_blocks(1, 4, 2, sum(lengths), 5, 8)
    assert segment == scan_cpu.CHUNK
    x = packed_inputs(lengths, dim=4, dstate=5, groups=2, options=True, dtype=torch.float64, seed=3)
    compare(x, cu_of(lengths), functools.partial(selective_scan, backend="cpu"), tol=1e-10, softplus=True)


def test_zero_length_sequence_keeps_its_initial_state():
    """Pinned without an oracle: an empty sequence's last state is its initial state, with gradient 1 into it."""
    x = packed_inputs([2, 0, 3], dim=2, dstate=2, seed=5)
    cu = cu_of([2, 0, 3])
    for backend in ("reference", "cpu"):
        _, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend, cu_seqlens=cu)
        assert torch.equal(last[1], x["initial_state"][1])
        (grad,) = torch.autograd.grad(last[1].sum(), x["initial_state"])
        assert torch.equal(grad[1], torch.ones_like(grad[1])) and not grad[[0, 2]].any()


def test_cpu_backend_100k_short_sequences():
    """n = 10^5 sequences of 0 to 3 steps: the numba kernels walk cu_seqlens themselves (no Python loop over the
    sequences), forward and backward."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 4, (100_000,), generator=g).tolist()
    x = packed_inputs(lengths, dim=3, dstate=2, groups=1, seed=3)
    compare(x, cu_of(lengths), functools.partial(selective_scan, backend="cpu"), tol=1e-10)


def test_bad_cu_seqlens_say_what_is_wrong():
    x = {k: v.detach() for k, v in packed_inputs([2, 3], dim=2, dstate=2).items()}
    bad = [
        ([0, 2, 5], "must be int32", dict(dtype=torch.int64)),
        ([[0, 2, 5]], "must be 1-D", {}),
        ([0], "n \\+ 1 >= 2 entries", {}),
        ([1, 2, 5], "must start at 0; got cu_seqlens\\[0\\] = 1", {}),
        ([0, 3, 2, 5], "non-decreasing; got cu_seqlens\\[2\\] = 2 < cu_seqlens\\[1\\] = 3", {}),
        ([0, 2, 4], "must end at seqlen = 5; got cu_seqlens\\[-1\\] = 4", {}),
    ]
    for values, message, kw in bad:
        with pytest.raises(CuSeqlensError, match=message):
            selective_scan(**x, cu_seqlens=torch.tensor(values, dtype=kw.get("dtype", torch.int32)))
    with pytest.raises(CuSeqlensError, match="batch must be 1; got batch 2"):
        two = {k: (torch.cat([v, v]) if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        selective_scan(**{**two, "initial_state": None}, cu_seqlens=cu_of([2, 3]))
    with pytest.raises(ValueError, match="`initial_state` must be a fp32 tensor of shape \\(n, dim, dstate\\)"):
        selective_scan(**{**x, "initial_state": x["initial_state"][:1]}, cu_seqlens=cu_of([2, 3]))
    # a checked tensor changed in place is checked again
    cu = cu_of([2, 3])
    selective_scan(**x, cu_seqlens=cu)
    cu[1] = 6
    with pytest.raises(CuSeqlensError, match="non-decreasing"):
        selective_scan(**x, cu_seqlens=cu)


# ---- the Mamba block and the models -----------------------------------------------------------------------------

def separate_forwards(fn, xs):
    """fn on each sequence alone, concatenated along seqlen (empty sequences, which the conv rejects alone, have no
    outputs to add)."""
    return torch.cat([fn(x) for x in xs if x.shape[1]], dim=1)


@pytest.mark.parametrize("bidirectional,selective", [(False, True), (True, True), (False, False)])
def test_mamba_block_packed_equals_separate_forwards(bidirectional, selective):
    """The conv must not reach across a boundary either: sequences shorter than d_conv side by side."""
    torch.manual_seed(0)
    block = Mamba(d_model=8, d_state=4, d_conv=4, bidirectional=bidirectional, selective=selective).double()
    for p in block.parameters():   # no zero biases: a conv seeing across a boundary would show
        torch.nn.init.normal_(p, std=0.3)
    lengths = [1, 1, 2, 0, 7, 3, 1]
    xs = [torch.randn(1, n, 8, dtype=torch.float64) for n in lengths]
    packed = torch.cat(xs, 1).requires_grad_()
    got = block(packed, cu_seqlens=cu_of(lengths))
    want = separate_forwards(block, packed.split(lengths, dim=1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(got)
    grads = torch.autograd.grad((got * w).sum(), [packed, *block.parameters()])
    want_grads = torch.autograd.grad((want * w).sum(), [packed, *block.parameters()])
    for a, b in zip(grads, want_grads):
        # A, D and dt's bias enter the scan as float32: their gradients are rounded once per call
        assert rel_err(a, b) < 1e-6


def test_mamba_block_packed_without_autograd_on_cpu():
    """A float32 CPU block without autograd runs each sequence through the fused kernels; the pack goes through
    selective_scan and must agree to float32 accuracy."""
    torch.manual_seed(1)
    block = Mamba(d_model=16, d_state=8).eval()
    lengths = [5, 1, 40, 2]
    packed = torch.randn(1, sum(lengths), 16)
    with torch.no_grad():
        got = block(packed, cu_seqlens=cu_of(lengths))
        want = separate_forwards(block, packed.split(lengths, dim=1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no chunked"):
        block(packed, block.allocate_state(1), cu_seqlens=cu_of(lengths))


def lm_model(**kw) -> MambaLMHeadModel:
    torch.manual_seed(2)
    return MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4, **kw)).double()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lm_packed_equals_separate_forwards(checkpointing):
    m = lm_model().train()
    m.backbone.gradient_checkpointing = checkpointing
    lengths = [4, 1, 1, 9, 2]
    ids = torch.randint(0, 11, (1, sum(lengths)))
    got = m(ids, cu_seqlens=cu_of(lengths))
    want = separate_forwards(m, ids.split(lengths, dim=1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(got.pow(2).sum(), list(m.parameters()))
    want_grads = torch.autograd.grad(want.pow(2).sum(), list(m.parameters()))
    for a, b in zip(grads, want_grads):
        assert rel_err(a, b) < 1e-6   # float32 A, D, dt bias: as above
    with pytest.raises(ValueError, match="no chunked"):
        m(ids, m.allocate_states(1), cu_seqlens=cu_of(lengths))
    with pytest.raises(CuSeqlensError, match="MambaBackbone: `cu_seqlens` must end at seqlen"):
        m(ids, cu_seqlens=cu_of(lengths[:-1]))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_pools_each_packed_sequence(pooling):
    torch.manual_seed(3)
    m = MambaSequenceClassifier(MambaConfig(d_model=16, n_layer=2, vocab_size=7, d_state=4, num_classes=3,
                                            pooling=pooling)).double().eval()
    lengths = [3, 1, 12, 1, 5]
    ids = torch.randint(0, 7, (1, sum(lengths)))
    got = m(ids, cu_seqlens=cu_of(lengths))
    assert got.shape == (5, 3)
    want = torch.cat([m(part) for part in ids.split(lengths, dim=1)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(CuSeqlensError, match="sequence 1 of `cu_seqlens` is empty"):
        m(ids, cu_seqlens=cu_of([3, 0, 1, 12, 1, 5]))
    with pytest.raises(ValueError, match="not both"):
        m(ids, torch.ones_like(ids, dtype=torch.bool), cu_seqlens=cu_of(lengths))


# ---- the Triton kernels: under the interpreter here, compiled on a GPU ------------------------------------------

def triton_scan(config=None):
    """The Triton scan with a ScanConfig given as a dict (imported late: the interpreter must be set first)."""
    from ssm_core.ops.scan_triton import ScanConfig, selective_scan_gpu

    def scan(**kw):
        with poisoned_outputs():
            return selective_scan_gpu(**kw, config=ScanConfig(**(config or {})))
    return scan


# Tiny shapes: chunks of 8 (4) steps, so that sequences start inside chunks, at chunk and segment boundaries and
# span several segments, with 1-long neighbours and empty sequences; 3-D B/C; float64, float32, bf16 inputs.
INTERPRETER_CASES = [  # (lengths, dim, dstate, groups, options, dtype, config)
    ([3, 1, 1, 0, 9, 2, 0, 8, 1], 4, 3, 2, True, torch.float64, dict(block_d=2, bwd_block_d=2, chunk=8)),
    ([3, 1, 1, 0, 9, 2, 0, 8, 1], 4, 3, 2, True, torch.float64,
     dict(block_d=2, bwd_block_d=2, chunk=8, num_segments=3)),
    ([5, 60], 4, 3, 1, True, torch.float64, dict(block_d=2, bwd_block_d=2, chunk=4, num_segments=4)),
    ([6, 14, 0, 45, 1, 0], 4, 5, 2, True, torch.float32, dict(block_d=2, bwd_block_d=2, chunk=4, num_segments=4)),
    ([0, 8, 11, 8, 1, 1], 6, 4, None, False, torch.float32, dict(block_d=4, bwd_block_d=2, chunk=4,
                                                                  num_segments=3)),
    ([17, 1, 30], 8, 16, 2, True, torch.bfloat16, dict(chunk=16, num_segments=2)),
]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-2}


def check_triton_case(case, device) -> dict:
    lengths, dim, dstate, groups, options, dtype, config = case
    x = packed_inputs(lengths, dim, dstate, groups, options, dtype, seed=len(lengths), device=device)
    return compare(x, cu_of(lengths).to(device), triton_scan(config), TOLERANCE[dtype], softplus=options)


@pytest.mark.slow
def test_triton_kernels_under_interpreter():
    """Runs this file as a script with TRITON_INTERPRET=1: the Triton kernels on CPU, tiny shapes."""
    pytest.importorskip("triton")
    stdout = run_under_triton_interpreter(__file__, timeout=600)
    assert stdout.count("ok ") == len(INTERPRETER_CASES), stdout


GPU_CASES = [
    # a realistic pack: 1-long neighbours and long sequences over many chunks and segments
    ([1, 1, 1, 700, 3, 0, 2000, 1, 129, 128, 1000], 64, 16, 1, True, torch.float32, {}),
    ([1, 1, 1, 700, 3, 0, 2000, 1, 129, 128, 1000], 64, 16, 1, True, torch.bfloat16, dict(num_segments=5)),
    ([37] * 300, 32, 16, 2, True, torch.float32, dict(num_segments=1)),
    ([5, 300, 11], 32, 7, None, False, torch.float32, dict(chunk=64, num_segments=3)),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=["mixed-fp32", "mixed-bf16-5-segments", "300x37-fp32", "3d-BC-fp32"])
def test_triton_packed_gpu(case):
    check_triton_case(case, "cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("states", [True, False], ids=["with-states", "no-states"])
def test_gpu_backend_packed_100k_short_sequences(states, monkeypatch):
    """selective_scan's gpu backend with cu_seqlens, 10^5 sequences of 0 to 3 steps, with and without initial and
    last states per sequence: the CUDA kernels run it (Triton's would fail the test)."""
    from ssm_core.ops import scan_triton

    def not_triton(*args, **kwargs):
        raise AssertionError("packed scans should run on the CUDA kernels")
    monkeypatch.setattr(scan_triton, "selective_scan_gpu", not_triton)
    monkeypatch.setenv("SSM_CORE_GPU_SCAN", "cuda")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 4, (100_000,), generator=g).tolist()
    x = packed_inputs(lengths, dim=16, dstate=16, groups=1, dtype=torch.float32, seed=4, device="cuda")
    compare(x, cu_of(lengths).cuda(), functools.partial(selective_scan, backend="gpu"), TOLERANCE[torch.float32],
            states=states)


# ---- the CUDA kernels (GPU only) ---------------------------------------------------------------------------

CUDA_CASES = [  # (lengths, dim, dstate, groups, options, dtype, CudaScanConfig fields); chunks are 64 steps
    # 1-long neighbours, starts inside chunks, on chunk boundaries (64, 128) and spanning many chunks
    ([1, 1, 1, 700, 3, 0, 2000, 1, 63, 64, 128, 1000], 64, 16, 1, True, torch.float32, {}),
    ([1, 1, 1, 700, 3, 0, 2000, 1, 63, 64, 128, 1000], 64, 16, 1, True, torch.bfloat16,
     dict(fwd_segments=5, bwd_segments=7)),
    ([1, 1, 1, 700, 3, 0, 2000, 1, 63, 64, 128, 1000], 64, 16, 2, True, torch.float16,
     dict(fwd_segments=9, bwd_segments=3, bwd_register_cap=True)),
    ([37] * 300, 32, 16, 2, True, torch.float32, dict(fwd_segments=1, bwd_segments=1, bwd_register_cap=False)),
    # dstate 32: 16 lanes per channel; a segment boundary falls on a sequence start (64 * 4 = 256)
    ([256, 5, 251, 1, 600], 48, 32, 1, True, torch.bfloat16, dict(fwd_segments=4, bwd_segments=4)),
    ([0, 5, 300, 11, 0], 32, 7, None, False, torch.float32, dict(fwd_segments=3, bwd_segments=2)),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=["mixed-fp32", "mixed-bf16-segments", "mixed-fp16-capped",
                                                  "300x37-fp32", "dstate32-bf16", "3d-BC-fp32"])
def test_cuda_packed_gpu(case):
    from ssm_core.ops.scan_cuda import CudaScanConfig, selective_scan_cuda
    lengths, dim, dstate, groups, options, dtype, config = case
    x = packed_inputs(lengths, dim, dstate, groups, options, dtype, seed=len(lengths), device="cuda")

    def scan(**kw):
        with poisoned_outputs():
            return selective_scan_cuda(**kw, config=CudaScanConfig(**config))
    tol = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}[dtype]
    compare(x, cu_of(lengths).cuda(), scan, tol, softplus=options)


def test_cuda_pack_steps():
    """What the VARLEN kernels read: the sequence each step starts and ends (none for empty sequences, also
    trailing ones), the empty sequences, and 0 for each segment holding a start."""
    from ssm_core.ops.scan_cuda import Pack
    pack = Pack.of(cu_of([2, 0, 3, 1, 0]), 6)
    assert pack.first_of.tolist() == [0, -1, 2, -1, -1, 3]
    assert pack.last_of.tolist() == [-1, 0, -1, -1, 2, 3]
    assert pack.empty.flatten().tolist() == [False, True, False, False, True]
    assert pack.segment_keep(3, 2).tolist() == [0, 0, 0]
    assert Pack.of(cu_of([5, 1]), 6).segment_keep(3, 2).tolist() == [0, 1, 0]
    assert Pack.of(cu_of([6]), 6).segment_keep(2, 4).tolist() == [0, 1]


if __name__ == "__main__":
    enter_interpreter_script()
    for triton_case in INTERPRETER_CASES:
        errs = check_triton_case(triton_case, "cpu")
        print(f"ok {triton_case[0]} {triton_case[5]}: max relative error {max(errs.values()):.2e}", flush=True)
