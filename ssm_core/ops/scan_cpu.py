"""Numba CPU backend of the selective scan, forward and backward.

Parallel over (batch x dim) in the forward and over (batch x block of channels) in the backward. The forward keeps
only the state at the start of every chunk of ``CHUNK`` steps, (batch, dim, seqlen / CHUNK, dstate); the backward
recomputes the states of one chunk at a time from that checkpoint, so memory never holds
(batch, dim, seqlen, dstate). The backward's per-block partial sums of dB and dC cover one segment of the sequence
at a time, at most ``PARTIAL_BYTES`` each whatever the thread count. Accumulates in float32 (float64 for float64
inputs).

Packed sequences (``cu_seqlens``): the kernels walk the sequences' bounds along seqlen, restarting the state at
each start (from that sequence's initial state) and keeping each sequence's last state; the backward cuts the
gradient at the same places. Without packing the bounds are [0, seqlen], one sequence per batch row.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..utils.varlen import sequence_ids
from .scan_reference import expand_groups  # noqa: F401  (kept beside the reference for readers)

CHUNK = 256  # steps between saved states: memory of the checkpoints is 1/CHUNK of the full state tensor
# Bytes of each of the backward's dB/dC partial-sum buffers (batch, blocks, groups, segment, dstate): the blocks grow
# with the threads (2 per thread), so the segment of the sequence they cover shrinks instead. Unbounded, 64 threads at
# 1 Mbp took 8.6 GB per buffer.
PARTIAL_BYTES = 64 << 20


@njit(inline="always", fastmath=True)
def _softplus(x):
    return x if x > 20.0 else math.log1p(math.exp(x))


# exp(x) = 2^k * e^r with k = round(x / ln 2), |r| <= ln(2)/2: a degree-6 polynomial gives float32 accuracy
# (relative error ~1e-7), and unlike math.exp the loop over dstate vectorises (no SVML in llvmlite's LLVM).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO, _EXP_HI = np.float32(-87.0), np.float32(88.0)
_P = [np.float32(1.0 / math.factorial(i)) for i in range(7)]
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = _P


@njit(inline="always", fastmath=True)
def _decay_into(dt, Ad, out, exp_bits, exp_scale, fast_exp):
    """out[n] = exp(dt * Ad[n]) for all n. ``exp_scale`` is ``exp_bits.view(float32)``: the 2^k factors."""
    N = Ad.shape[0]
    if fast_exp:
        for n in range(N):
            x = min(max(dt * Ad[n], _EXP_LO), _EXP_HI)
            k = np.floor(x * _LOG2E + np.float32(0.5))
            r = x - k * _LN2_HI - k * _LN2_LO
            out[n] = _P0 + r * (_P1 + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
            exp_bits[n] = (np.int32(k) + np.int32(127)) << np.int32(23)
        for n in range(N):
            out[n] *= exp_scale[n]
    else:
        for n in range(N):
            out[n] = math.exp(dt * Ad[n])


@njit(inline="never", cache=True)
def _start_sequence(t, i, cu, h, h0, last_state, row0, d):
    """In the forward, at step t where sequence i (-1 before the first) has ended: store its last state, skip the
    zero-length sequences that follow (their last state is their initial state), load the initial state of the
    one starting at t into h. Returns its index."""
    if i >= 0:
        last_state[row0 + i, d] = h
    i += 1
    while cu[i + 1] == t:
        last_state[row0 + i, d] = h0[row0 + i, d]
        i += 1
    h[:] = h0[row0 + i, d]
    return i


@njit(parallel=True, fastmath=True, cache=True)
def _forward_kernel(u, delta, A, Bt, Ct, D, z, bias, h0, cu, softplus, has_z, fast_exp, out, last_state,
                    chunk_states):
    """u, delta, z, out: (batch, dim, L); A: (dim, N); Bt, Ct: (batch, G, L, N); D, bias: (dim,);
    cu: (n_seq + 1,) the sequences' bounds along L, the same in every batch row ([0, L] without packing);
    h0, last_state: (batch * n_seq, dim, N), row b * n_seq + i for sequence i of batch row b;
    chunk_states: (batch, dim, n_chunks, N) or (0, 0, 0, N) to skip."""
    batch, dim, L = u.shape
    N = A.shape[1]
    n_seq = cu.shape[0] - 1
    per_group = dim // Bt.shape[1]
    save = chunk_states.shape[0] > 0
    for idx in prange(batch * dim):
        b = idx // dim
        d = idx % dim
        g = d // per_group
        h = np.empty(N, dtype=u.dtype)
        Ad, Bg, Cg = A[d], Bt[b, g], Ct[b, g]           # views hoisted out of the time loop
        ub, deltab, outb = u[b, d], delta[b, d], out[b, d]
        decay = np.empty(N, dtype=u.dtype)
        exp_bits = np.empty(N, dtype=np.int32)
        exp_scale = exp_bits.view(np.float32)
        # One loop over all steps, switching sequence where the next one starts (measured without packing, a loop
        # per sequence ran 8% slower, and this switch written inline 2%).
        row0 = b * n_seq
        i = -1           # the sequence of step t
        next_start = 0
        for t in range(L):
            if t == next_start:
                i = _start_sequence(t, i, cu, h, h0, last_state, row0, d)
                next_start = cu[i + 1]
            if save and t % CHUNK == 0:
                chunk_states[b, d, t // CHUNK] = h
            dt = deltab[t] + bias[d]
            if softplus:
                dt = _softplus(dt)
            du = dt * ub[t]
            _decay_into(dt, Ad, decay, exp_bits, exp_scale, fast_exp)
            y = Ad[0] * 0  # typed like the inputs: a float32 reduction vectorises twice as wide
            for n in range(N):
                h[n] = decay[n] * h[n] + du * Bg[t, n]
                y += Cg[t, n] * h[n]
            y += D[d] * ub[t]
            if has_z:
                zz = z[b, d, t]
                y *= zz / (1.0 + math.exp(-zz))
            outb[t] = y
        if i >= 0:
            last_state[row0 + i, d] = h
        for j in range(i + 1, n_seq):  # trailing zero-length sequences (all of them if L = 0)
            last_state[row0 + j, d] = h0[row0 + j, d]


@njit(parallel=True, fastmath=True, cache=True)
def _backward_kernel(u, delta, A, Bt, Ct, D, z, bias, h0, cu, seq_of, softplus, has_z, fast_exp, chunk_states, dout,
                     dlast, n_blocks, t_begin, t_end, dcarry, du, ddelta, dz, dA_part, dB_part, dC_part, dD_part,
                     dbias_part, dh0):
    """Gradients of the forward above over steps [t_begin, t_end) (t_begin a multiple of CHUNK, t_end one or L).
    dcarry: (batch, dim, N) the gradient of the state at t_end on entry (from the segment after), of the state
    before t_begin on exit. Per-channel partial sums (dA_part, dD_part, dbias_part: indexed by batch, added to) and
    per-block partial sums of dB/dC ((batch, n_blocks, G, >= t_end - t_begin, N), zeroed here) avoid write races;
    the caller reduces them. seq_of: (L,) the sequence of each step; h0, dlast, dh0: (batch * n_seq, dim, N) like
    the forward's h0 (dh0 written at each sequence start in the segment)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    n_seq = cu.shape[0] - 1
    per_group = dim // Bt.shape[1]
    first_chunk, end_chunk = t_begin // CHUNK, (t_end + CHUNK - 1) // CHUNK
    block = (dim + n_blocks - 1) // n_blocks
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        blk = job % n_blocks
        dB_part[b, blk] = 0.0
        dC_part[b, blk] = 0.0
        hs = np.empty((CHUNK, N), dtype=u.dtype)   # states of one chunk, recomputed
        decay = np.empty((CHUNK, N), dtype=u.dtype)  # exp(dt * A) of one chunk
        dh = np.empty(N, dtype=u.dtype)
        h = np.empty(N, dtype=u.dtype)
        exp_bits = np.empty(N, dtype=np.int32)
        exp_scale = exp_bits.view(np.float32)
        for d in range(blk * block, min(dim, (blk + 1) * block)):
            g = d // per_group
            Ad = A[d]
            dh[:] = dcarry[b, d]
            for i in range(n_seq):  # a zero-length sequence's last state is its initial state
                if cu[i] == cu[i + 1]:
                    dh0[b * n_seq + i, d] = dlast[b * n_seq + i, d]
            dA_acc = np.zeros(N, dtype=u.dtype)
            dD_acc = 0.0
            dbias_acc = 0.0
            for c in range(end_chunk - 1, first_chunk - 1, -1):
                t0 = c * CHUNK
                t1 = min(L, t0 + CHUNK)
                h[:] = chunk_states[b, d, c]
                for t in range(t0, t1):
                    if t == cu[seq_of[t]]:
                        h[:] = h0[b * n_seq + seq_of[t], d]
                    dt = delta[b, d, t] + bias[d]
                    if softplus:
                        dt = _softplus(dt)
                    du_in = dt * u[b, d, t]
                    _decay_into(dt, Ad, decay[t - t0], exp_bits, exp_scale, fast_exp)
                    for n in range(N):
                        h[n] = decay[t - t0, n] * h[n] + du_in * Bt[b, g, t, n]
                        hs[t - t0, n] = h[n]
                for t in range(t1 - 1, t0 - 1, -1):
                    i = t - t0
                    s = seq_of[t]
                    row = b * n_seq + s
                    if t == cu[s + 1] - 1:  # a sequence's last step: the gradient of its last state flows in
                        dh[:] = dlast[row, d]
                    hprev = h0[row, d] if t == cu[s] else (hs[i - 1] if i > 0 else chunk_states[b, d, c])
                    ut = u[b, d, t]
                    raw = delta[b, d, t] + bias[d]
                    dt = _softplus(raw) if softplus else raw
                    dy = dout[b, d, t]
                    if has_z:
                        y = D[d] * ut
                        for n in range(N):
                            y += Ct[b, g, t, n] * hs[i, n]
                        zz = z[b, d, t]
                        sig = 1.0 / (1.0 + math.exp(-zz))
                        dz[b, d, t] = dy * y * sig * (1.0 + zz * (1.0 - sig))
                        dy = dy * zz * sig
                    dD_acc += dy * ut
                    du_t = dy * D[d]
                    ddt = 0.0
                    for n in range(N):
                        gn = dh[n] + dy * Ct[b, g, t, n]          # dL/dh_t
                        dC_part[b, blk, g, t - t_begin, n] += dy * hs[i, n]
                        a = decay[i, n]
                        ddt += gn * (hprev[n] * a * Ad[n] + Bt[b, g, t, n] * ut)
                        dA_acc[n] += gn * hprev[n] * a * dt
                        dB_part[b, blk, g, t - t_begin, n] += gn * dt * ut
                        du_t += gn * dt * Bt[b, g, t, n]
                        dh[n] = gn * a                             # dL/dh_{t-1} through the decay
                    if softplus:
                        ddt *= 1.0 / (1.0 + math.exp(-raw))
                    ddelta[b, d, t] = ddt
                    dbias_acc += ddt
                    du[b, d, t] = du_t
                    if t == cu[s]:
                        dh0[row, d] = dh
            dcarry[b, d] = dh
            dA_part[b, d] += dA_acc
            dD_part[b, d] += dD_acc
            dbias_part[b, d] += dbias_acc


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).contiguous().numpy()


def _groups_last(BC: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(batch, [G,] N, L) -> contiguous (batch, G, L, N) so the inner loop over N reads contiguous memory."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return _np(BC.transpose(-1, -2), dtype)


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, cu_seqlens):
        acc = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
        batch, dim, L = u.shape
        N = A.shape[1]
        n_seq = 1 if cu_seqlens is None else cu_seqlens.numel() - 1
        arrays = dict(
            u=_np(u, acc), delta=_np(delta, acc), A=_np(A, acc), Bt=_groups_last(B, acc), Ct=_groups_last(C, acc),
            D=_np(D, acc) if D is not None else np.zeros(dim, acc_np(acc)),
            z=_np(z, acc) if z is not None else np.zeros((1, 1, 1), acc_np(acc)),
            bias=_np(delta_bias, acc) if delta_bias is not None else np.zeros(dim, acc_np(acc)),
            h0=(_np(initial_state, acc) if initial_state is not None
                else np.zeros((batch * n_seq, dim, N), acc_np(acc))),
            cu=np.array([0, L], np.int64) if cu_seqlens is None else cu_seqlens.numpy().astype(np.int64),
        )
        needs_grad = any(ctx.needs_input_grad)
        n_chunks = (L + CHUNK - 1) // CHUNK if needs_grad else 0
        chunk_states = np.empty((batch, dim, n_chunks, N) if needs_grad else (0, 0, 0, N), acc_np(acc))
        out = np.empty((batch, dim, L), acc_np(acc))
        last = np.empty((batch * n_seq, dim, N), acc_np(acc))
        _forward_kernel(arrays["u"], arrays["delta"], arrays["A"], arrays["Bt"], arrays["Ct"], arrays["D"],
                        arrays["z"], arrays["bias"], arrays["h0"], arrays["cu"], bool(delta_softplus), z is not None,
                        acc == torch.float32, out, last, chunk_states)
        if needs_grad:
            ctx.arrays, ctx.chunk_states = arrays, chunk_states
            ctx.meta = (acc, delta_softplus, z is not None, B.shape, u.dtype, delta.dtype)
            ctx.has = (D is not None, delta_bias is not None, initial_state is not None)
            ctx.in_dtypes = dict(A=A.dtype, B=B.dtype, C=C.dtype, z=None if z is None else z.dtype,
                                 D=None if D is None else D.dtype,
                                 delta_bias=None if delta_bias is None else delta_bias.dtype,
                                 initial_state=None if initial_state is None else initial_state.dtype)
        last_t = torch.from_numpy(last)
        return torch.from_numpy(out).to(u.dtype), (last_t if acc == torch.float64 else last_t.float())

    @staticmethod
    def backward(ctx, dout, dlast):
        acc, softplus, has_z, B_shape, u_dtype, delta_dtype = ctx.meta
        a = ctx.arrays
        batch, dim, L = a["u"].shape
        N = a["A"].shape[1]
        G = a["Bt"].shape[1]
        np_acc = acc_np(acc)
        n_blocks, segment = backward_blocks(batch, dim, G, L, N, np.dtype(np_acc).itemsize)
        dout_np = _np(dout, acc) if dout is not None else np.zeros((batch, dim, L), np_acc)
        state_shape = a["h0"].shape  # (batch * n_seq, dim, N)
        dlast_np = _np(dlast, acc) if dlast is not None else np.zeros(state_shape, np_acc)
        du = np.empty((batch, dim, L), np_acc)
        ddelta = np.empty((batch, dim, L), np_acc)
        dz = np.zeros((batch, dim, L) if has_z else (1, 1, 1), np_acc)
        dA_part = np.zeros((batch, dim, N), np_acc)
        dB, dC = np.empty((batch, G, L, N), np_acc), np.empty((batch, G, L, N), np_acc)
        dB_part = np.empty((batch, n_blocks, G, segment, N), np_acc)
        dC_part = np.empty((batch, n_blocks, G, segment, N), np_acc)
        dD_part = np.zeros((batch, dim), np_acc)
        dbias_part = np.zeros((batch, dim), np_acc)
        dh0 = np.empty(state_shape, np_acc)
        dcarry = np.zeros((batch, dim, N), np_acc)  # the last step of the last sequence takes its dlast in
        seq_of = sequence_ids(torch.from_numpy(a["cu"]), L).numpy()
        for t_begin in range((L - 1) // segment * segment, -1, -segment):  # last segment first, carrying dh back
            t_end = min(L, t_begin + segment)
            _backward_kernel(a["u"], a["delta"], a["A"], a["Bt"], a["Ct"], a["D"], a["z"], a["bias"], a["h0"],
                             a["cu"], seq_of, bool(softplus), has_z, acc == torch.float32, ctx.chunk_states, dout_np,
                             dlast_np, n_blocks, t_begin, t_end, dcarry, du, ddelta, dz, dA_part, dB_part, dC_part,
                             dD_part, dbias_part, dh0)
            np.sum(dB_part[:, :, :, :t_end - t_begin], axis=1, out=dB[:, :, t_begin:t_end])
            np.sum(dC_part[:, :, :, :t_end - t_begin], axis=1, out=dC[:, :, t_begin:t_end])
        has_D, has_bias, has_h0 = ctx.has
        dt = ctx.in_dtypes

        def bc_grad(grad, dtype):
            g = torch.from_numpy(grad).transpose(-1, -2)  # (batch, G, N, L)
            return (g.squeeze(1) if len(B_shape) == 3 else g).to(dtype)

        del ctx.arrays, ctx.chunk_states
        return (torch.from_numpy(du).to(u_dtype), torch.from_numpy(ddelta).to(delta_dtype),
                torch.from_numpy(dA_part.sum(0)).to(dt["A"]), bc_grad(dB, dt["B"]), bc_grad(dC, dt["C"]),
                torch.from_numpy(dD_part.sum(0)).to(dt["D"]) if has_D else None,
                torch.from_numpy(dz).to(dt["z"]) if has_z else None,
                torch.from_numpy(dbias_part.sum(0)).to(dt["delta_bias"]) if has_bias else None,
                torch.from_numpy(dh0).to(dt["initial_state"]) if has_h0 else None,
                None, None)


def backward_blocks(batch: int, dim: int, groups: int, seqlen: int, dstate: int, itemsize: int) -> tuple[int, int]:
    """(channel blocks, segment length) of the backward: two blocks per thread over the batch (so every thread
    has work at batch 1), and segments of whole chunks that keep each partial-sum buffer within PARTIAL_BYTES."""
    n_blocks = min(dim, max(1, 2 * numba.get_num_threads() // max(1, batch)))
    per_step = batch * n_blocks * groups * dstate * itemsize
    segment = max(1, PARTIAL_BYTES // (per_step * CHUNK)) * CHUNK
    return n_blocks, min(segment, seqlen)


def acc_np(acc: torch.dtype):
    return np.float64 if acc == torch.float64 else np.float32


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_last_state=False, cu_seqlens=None):
    """Numba selective scan; same arguments and results as ``selective_scan_reference``."""
    out, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                        cu_seqlens)
    return (out, last) if return_last_state else out


# ---- Inference without autograd, time-major layout -------------------------------------------------------------
# The Mamba block's projections produce (batch, seqlen, channels) tensors. The kernels below read them as they are
# (no transposes to (batch, dim, seqlen)) and vectorise over a block of channels instead of over dstate: every
# per-channel operation (softplus, the D skip, the SiLU gate, the dt projection) is then a vector operation, the
# readout <C_t, h_t> needs no horizontal sum, and no chunk checkpoints are stored. Float32 only.

# Channels per job of the scan: the longest inner loop (fewest per-dstate loop overheads) whose h and A
# (2 x 256 x 16 floats = 32 KiB at dstate 16) still fit L1; 64 ran 1.6x slower, 16 four times slower.
_MAX_CHANNEL_BLOCK = 256


@intrinsic
def _int_bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a bitcast LLVM vectorises, unlike math.ldexp)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=True)
def _exp_f32(x):
    """exp(x) in float32, branch-free (vectorisable): 2^k * p(r) as in ``_decay_into``."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - k * _LN2_HI - k * _LN2_LO
    p = _P0 + r * (_P1 + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
    return p * _int_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


# log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: the odd series up to s^15 leaves a
# truncation error below 1e-8.
_ATANH = [np.float32(2.0 / (2 * i + 1)) for i in range(8)]
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = _ATANH


@njit(inline="always", fastmath=True)
def _softplus_f32(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), branch-free (vectorisable)."""
    e = _exp_f32(-abs(x))
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    series = _T0 + s2 * (_T1 + s2 * (_T2 + s2 * (_T3 + s2 * (_T4 + s2 * (_T5 + s2 * (_T6 + s2 * _T7))))))
    return max(x, np.float32(0.0)) + s * series


@njit(parallel=True, fastmath=True, cache=True)
def _conv_silu_tm_kernel(xz, context, weight_t, bias, starts, out, time_block):
    """out[b, t, d] = silu(bias[d] + sum_k weight_t[k, d] x[b, t - K + 1 + k, d]) with x = xz[..., :dim], the
    inputs before t = 0 taken from ``context`` and those before ``starts[t]`` (the first position of t's sequence in
    a pack; 0 otherwise) taken as zeros. xz: (batch, L, >= dim); context: (batch, dim, K - 1); weight_t: (K, dim);
    bias: (dim,); starts: (L,); out: (batch, L, dim)."""
    batch, L, dim = out.shape
    K = weight_t.shape[0]
    n_blocks = (L + time_block - 1) // time_block
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        t0 = (job % n_blocks) * time_block
        t1 = min(L, t0 + time_block)
        acc = np.empty(dim, dtype=np.float32)
        for t in range(t0, t1):
            acc[:] = bias
            start = starts[t]
            if t - K + 1 >= start:
                for k in range(K):
                    src = xz[b, t - K + 1 + k]
                    wk = weight_t[k]
                    for d in range(dim):
                        acc[d] += wk[d] * src[d]
            else:  # the first K - 1 steps of a sequence reach into the previous chunk's inputs, or a pack's zeros
                for k in range(K):
                    s = t - K + 1 + k
                    if s >= start:
                        for d in range(dim):
                            acc[d] += weight_t[k, d] * xz[b, s, d]
                    elif s < 0:
                        for d in range(dim):
                            acc[d] += weight_t[k, d] * context[b, d, K - 1 + s]
            dst = out[b, t]
            for d in range(dim):
                v = acc[d]
                dst[d] = v / (np.float32(1.0) + _exp_f32(-v))


@njit(parallel=True, fastmath=True, cache=True)
def _scan_tm_kernel(u, x_dbl, z, z_offset, dt_weight_t, dt_bias, A_t, D, h0, resets, out, last_state,
                    channel_block):
    """One Mamba block's selective scan, forward only, in time-major layout.

    u: (batch, L, dim) the conv output; x_dbl: (batch, L, R + 2N) = [dt_low | B | C] (x_proj's output);
    z: (batch, L, >= z_offset + dim), the gate at z[..., z_offset:]; dt_weight_t: (R, dim) (dt_proj.weight.T);
    dt_bias, D: (dim,); A_t: (N, dim); h0, last_state: (batch, dim, N); resets: (L,), True where a packed sequence
    starts (the state restarts from zero there); out: (batch, L, dim), may be ``u`` itself (every u[b, t, d] is read
    before out[b, t, d] is written, by the same job).
    Δ = softplus(dt_low @ dt_weight_t + dt_bias), h_t = exp(Δ A) h_{t-1} + Δ B_t u_t,
    out = (<C_t, h_t> + D u_t) * silu(z_t).
    """
    batch, L, dim = u.shape
    N = A_t.shape[0]
    R = dt_weight_t.shape[0]
    n_blocks = (dim + channel_block - 1) // channel_block
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        d0 = (job % n_blocks) * channel_block
        w = min(dim, d0 + channel_block) - d0
        h = np.empty((N, w), dtype=np.float32)
        for n in range(N):
            for j in range(w):
                h[n, j] = h0[b, d0 + j, n]
        A_blk = A_t[:, d0:d0 + w].copy()
        W_blk = dt_weight_t[:, d0:d0 + w].copy()
        bias_blk = dt_bias[d0:d0 + w].copy()
        D_blk = D[d0:d0 + w].copy()
        dt = np.empty(w, dtype=np.float32)
        du = np.empty(w, dtype=np.float32)
        y = np.empty(w, dtype=np.float32)
        for t in range(L):
            row = x_dbl[b, t]
            ut = u[b, t, d0:d0 + w]
            zt = z[b, t, z_offset + d0:z_offset + d0 + w]
            dt[:] = bias_blk
            for r in range(R):
                c = row[r]
                Wr = W_blk[r]
                for j in range(w):
                    dt[j] += c * Wr[j]
            for j in range(w):
                s = _softplus_f32(dt[j])
                dt[j] = s
                du[j] = s * ut[j]
                y[j] = D_blk[j] * ut[j]
            if resets[t]:
                h[:, :] = np.float32(0.0)
            for n in range(N):
                Bn = row[R + n]
                Cn = row[R + N + n]
                An = A_blk[n]
                hn = h[n]
                for j in range(w):
                    v = _exp_f32(dt[j] * An[j]) * hn[j] + du[j] * Bn
                    hn[j] = v
                    y[j] += Cn * v
            ot = out[b, t, d0:d0 + w]
            for j in range(w):
                zz = zt[j]
                ot[j] = y[j] * zz / (np.float32(1.0) + _exp_f32(-zz))
        for n in range(N):
            for j in range(w):
                last_state[b, d0 + j, n] = h[n, j]


def _f32(name: str, t: torch.Tensor, shape: tuple | None = None) -> np.ndarray:
    """A float32 C-contiguous numpy view of ``t`` (a copy only where needed), checked against ``shape``."""
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"scan_cpu: `{name}` must have shape {shape}; got {tuple(t.shape)}")
    return t.detach().to(torch.float32).contiguous().numpy()


def _pack_starts(cu_seqlens: torch.Tensor | None, L: int) -> np.ndarray:
    """(L,) int64: the first position of each position's sequence in a pack (all 0 without one)."""
    if cu_seqlens is None:
        return np.zeros(L, np.int64)
    cu = cu_seqlens.cpu().long()
    return cu[sequence_ids(cu, L).long()].numpy()


def causal_conv1d_silu_time_major(xz: torch.Tensor, dim: int, weight: torch.Tensor, bias: torch.Tensor | None,
                                  context: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """silu(causal depthwise conv) of x = xz[..., :dim], inference only.

    xz: (batch, seqlen, >= dim) float32 (in_proj's output, read in place); weight: (dim, d_conv); bias: (dim,);
    context: (batch, dim, d_conv - 1), the inputs before the first step (zeros at a sequence's start).
    cu_seqlens (checked by the caller): (n + 1,) int32 of the n sequences packed in xz (batch 1), each convolved
    alone. Returns (batch, seqlen, dim) float32.
    """
    batch, L, width = xz.shape
    K = weight.shape[-1]
    if width < dim or xz.dtype != torch.float32 or not xz.is_contiguous():
        raise ValueError(f"scan_cpu: `xz` must be contiguous float32 (batch, seqlen, >= {dim}); got "
                         f"{tuple(xz.shape)} {xz.dtype}")
    out = np.empty((batch, L, dim), np.float32)
    bias_np = _f32("bias", bias, (dim,)) if bias is not None else np.zeros(dim, np.float32)
    time_block = max(1, -(-L // (2 * numba.get_num_threads())))  # a few jobs per thread even at batch 1
    _conv_silu_tm_kernel(xz.detach().numpy(), _f32("context", context, (batch, dim, K - 1)),
                         _f32("weight", weight.reshape(dim, K).t()), bias_np, _pack_starts(cu_seqlens, L), out,
                         time_block)
    return torch.from_numpy(out)


def selective_scan_time_major(u: torch.Tensor, x_dbl: torch.Tensor, z: torch.Tensor, z_offset: int,
                              dt_weight: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor,
                              initial_state: torch.Tensor, out: torch.Tensor | None = None,
                              cu_seqlens: torch.Tensor | None = None):
    """Forward-only selective scan of one Mamba block on time-major tensors (no autograd, float32).

    u: (batch, seqlen, dim); x_dbl: (batch, seqlen, R + 2 dstate) = [dt_low | B | C]; z: (batch, seqlen, >= z_offset
    + dim), the gate is z[..., z_offset:z_offset + dim]; dt_weight: (dim, R); dt_bias, D: (dim,); A: (dim, dstate);
    initial_state: (batch, dim, dstate). ``out`` (batch, seqlen, dim) may be ``u`` to reuse its memory.
    Computes Δ = softplus(dt_low @ dt_weight.T + dt_bias) and then exactly what ``selective_scan`` computes with
    delta_softplus=True. cu_seqlens (checked by the caller): (n + 1,) int32 of the n sequences packed along
    seqlen (batch 1), each starting from a zero state (last_state is then the last sequence's).
    Returns (out, last_state (batch, dim, dstate)).
    """
    batch, L, dim = u.shape
    N = A.shape[1]
    R = dt_weight.shape[1]
    for name, t, width in (("u", u, dim), ("x_dbl", x_dbl, R + 2 * N), ("z", z, z_offset + dim)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.shape[:2] != (batch, L) or t.shape[2] < width:
            raise ValueError(f"scan_cpu: `{name}` must be contiguous float32 (batch, seqlen, >= {width}) = "
                             f"({batch}, {L}, >= {width}); got {tuple(t.shape)} {t.dtype}")
    out = torch.empty_like(u) if out is None else out
    last = np.empty((batch, dim, N), np.float32)
    resets = np.zeros(L, np.bool_) if cu_seqlens is None else _pack_starts(cu_seqlens, L) == np.arange(L)
    jobs_per_batch = -(-numba.get_num_threads() // batch)
    block = min(_MAX_CHANNEL_BLOCK, -(-dim // jobs_per_batch))
    _scan_tm_kernel(u.detach().numpy(), x_dbl.detach().numpy(), z.detach().numpy(), z_offset,
                    _f32("dt_weight", dt_weight, (dim, R)).T.copy(), _f32("dt_bias", dt_bias, (dim,)),
                    _f32("A", A, (dim, N)).T.copy(), _f32("D", D, (dim,)),
                    _f32("initial_state", initial_state, (batch, dim, N)), resets, out.detach().numpy(), last, block)
    return out, torch.from_numpy(last)
