"""Triton kernels of the selective scan (the ``gpu`` backend) and of its one-step update.

Design (see ``benchmarks/NOTES_gpu_scan.md`` for the byte counts and predictions):

- One program owns ``block_d`` channels of one (batch, group) and walks the sequence in chunks of ``chunk`` time
  steps. Per chunk it loads u, delta, z as (block_d, chunk) tiles coalesced along seqlen, then loops over the
  state index n: the decays exp(dt A[:, n]) and inputs dt u B[n] form two (block_d, chunk) tiles that
  ``tl.associative_scan`` scans along time, and y accumulates C[n] h. With 4 channels, 4 warps and 128-step chunks
  Triton lays a channel row on one warp with 4 consecutive steps per lane, so each scan is a sequential pass inside
  the lane plus warp shuffles (no shared memory); a 3-D (channels, dstate, time) tile, the first design, spread
  time over warps and was 2-4x slower. The state carried between chunks goes through the buffer of chunk-boundary
  states in global memory, one (block_d,) column per n. Nothing of size (batch, dim, seqlen, dstate) ever exists.
- When batch x dim is too small to fill the GPU (DNA: batch 1, dim 512, seqlen 2^20) the sequence is also split
  into segments handled by different programs: a cheap pass computes each segment's end state from a zero start
  (closed form, no scan: ``h_end = sum_t exp(A (S_end - S_t)) b_t`` with S the running sum of delta), a tiny
  sequential pass carries the state across the segments, and the main pass reruns each segment from its true
  start state.
- The forward keeps the state at every chunk boundary (fp32, batch x dim x dstate per chunk: 64/chunk bytes per
  element of u). The backward walks the chunks in reverse and, per state index, recomputes the chunk's states from
  the kept start state, runs the adjoint recurrence as a forward scan over the time-reversed tile and forms every
  gradient in registers; dB and dC are summed over the program's channels before one atomic add per (dstate, time)
  element. The backward splits long sequences into segments the same way, with the mirrored closed form for the
  adjoint.
- Packed sequences (``cu_seqlens``, batch 1; constexpr ``VARLEN``, so the unpacked kernels are unchanged): a step
  that starts a sequence gets decay 0 and input dt B u + exp(dt A) h0[i] (its sequence's initial state), so the
  scans restart there and no state or adjoint crosses the boundary, wherever it falls in a chunk or segment; the
  steps that end a sequence store its last state, and in the backward take in its gradient. The segment passes
  zero the weights a start cuts off, and the carry drops what comes before a segment holding a start.
- ``tl.associative_scan`` runs both compiled and under ``TRITON_INTERPRET=1``, so the CPU tests run these very
  kernels. Accumulation is fp32 (fp64 when u, delta or A is fp64, which the interpreter tests use).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..utils.varlen import sequence_ids

LOG2E = tl.constexpr(1.4426950408889634)  # kernels may read only constexpr globals

# Every output buffer a kernel must fill is allocated here, so the tests can poison it (fill it with NaN) and
# catch elements a kernel forgets to write. Buffers that kernels accumulate into are zeroed instead.
_new_output = torch.empty


@dataclass(frozen=True)
class ScanConfig:
    """Launch parameters of the scan kernels (powers of two except the segment count)."""
    # Defaults: a warp per channel row (block_d = num_warps), 4 steps per lane: coalesced loads, every scan inside
    # one warp, 128 registers in the backward; on an H100 its fp32 backward ran 1.6x faster than 8 steps per lane
    # (232 registers) did for bf16 (benchmarks/NOTES_gpu_scan.md).
    block_d: int = 4              # channels per forward program: B/C rows are shared by these
    bwd_block_d: int = 4          # channels per backward program: dB/dC atomics are summed over these first
    chunk: int = 128              # time steps per register tile, and the interval of the kept states
    num_warps: int = 4
    bwd_num_warps: int = 4
    num_segments: int | None = None   # segments of the sequence; None picks from the SM count
    programs_per_sm: int = 8          # below this many programs per SM the sequence is split


# ----------------------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) of h -> a h + b.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) without overflow; the series keeps precision where e^-|x| is tiny.
    e = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                ACC: tl.constexpr):
    """Effective step size (zero where masked, so masked steps leave the state unchanged) and delta + bias."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _program_coords(pid, batch, n_dblk, dim_per_group, BLOCK_D: tl.constexpr):
    """(batch, group, channel indices, channel mask) of a program.

    The batch index varies fastest: programs running at the same time then belong to different batch rows, so the
    backward's dB/dC atomic adds go to different addresses (B and C of every batch row fit in L2 for the benchmark
    shapes, so the forward loses no reuse)."""
    b = pid % batch
    rest = pid // batch
    g = rest // n_dblk
    offs_in_group = (rest % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, g, g * dim_per_group + offs_in_group, offs_in_group < dim_per_group


@triton.jit
def _rows_of(t, BLOCK_D: tl.constexpr):
    """(block_d, chunk) copies of the time indices t (chunk,): B and C rows loaded through it land in the very
    layout of the (channels, time) tiles (a 1-D load would be spread over the warps and need a shuffle through
    shared memory); the repeated rows are L1 hits."""
    return t[None, :] + tl.zeros([BLOCK_D, 1], tl.int32)


@triton.jit
def _seq_flags(cu_ptr, seq_ptr, t_rows, seqlen, dim, offs_d, d_mask, DSTATE: tl.constexpr):
    """Packed sequences, at the (block_d, chunk) time indices t_rows: whether each step starts its sequence,
    whether it ends it, and the offset of the sequence's row of channel offs_d in (n, dim, dstate) tensors (the
    initial and last states and their gradients). Steps past seqlen and channels past the block are neither."""
    valid = (t_rows < seqlen) & d_mask[:, None]
    seq = tl.load(seq_ptr + t_rows, mask=valid, other=0)
    is_start = valid & (tl.load(cu_ptr + seq, mask=valid, other=0) == t_rows)
    is_end = valid & (tl.load(cu_ptr + seq + 1, mask=valid, other=0) == t_rows + 1)
    return is_start, is_end, (seq.to(tl.int64) * dim + offs_d[:, None]) * DSTATE


@triton.jit
def _at(x, offs_t, t):
    """Column t of a (rows, chunk) register tile, as (rows,)."""
    return tl.sum(tl.gather(x, tl.zeros([x.shape[0], 1], tl.int32) + t, 1), axis=1)


# ----------------------------------------------------------------------------------------------------------------
# Kernels
#
# Every kernel works on 2-D (block_d, chunk) tiles: block_d channels of one (batch, group) by chunk time steps,
# loaded coalesced along time, and a loop over the state index n: per n the decays exp(dt A[:, n]) and inputs
# dt u B[n] form two (block_d, chunk) tiles scanned along time. The state carried from chunk to chunk goes through
# a small fp32 buffer in global memory (L1/L2 hits), read and written as one (block_d,) column per n with a
# barrier per chunk: a (block_d, dstate) register tile would cost a cross-lane reduction for every column read.
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _segment_kernel(u_ptr, delta_ptr, z_ptr, dout_ptr, A_ptr, B_ptr, C_ptr, bias_ptr, seg_state_ptr, seg_dt_ptr,
                    cu_ptr, seq_ptr, h0_ptr, dlast_ptr,
                    batch, dim, seqlen, n_groups, n_dblk, dim_per_group, chunks_per_seg, n_chunks, n_seg,
                    DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
                    ADJOINT: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    VARLEN: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """Per segment, from a zero start: the end state (forward) or the adjoint at the start (ADJOINT).

    Forward:  e = sum_t exp(A R_t) dt_t B_t u_t, R_t = sum_{s>t} dt_s     (the state at the segment end)
    Adjoint:  l = sum_t exp(A S_t) C_t dy_t, S_t = sum_{s<=t} dt_s, dy = dout * silu(z)
    (the gradient into the state before it), sums from the segment start. No scan: one exp per element-state.
    Also writes sum_t dt per channel. Outputs: seg_state (batch, dim, n_seg, dstate), zeroed by the caller and
    accumulated here, and seg_dt (batch, dim, n_seg).
    VARLEN: a sequence start inside the segment cuts the sums at it; a start adds exp(dt A) h0 of its sequence to
    its input (forward), an end adds the gradient of its sequence's last state, dlast, to C dy (adjoint).
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, g, offs_d, d_mask = _program_coords(pid, batch, n_dblk, dim_per_group, BLOCK_D)
    offs_t = tl.arange(0, CHUNK)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    rows = (b * dim + offs_d).to(tl.int64) * seqlen
    bc_base = (b * n_groups + g).to(tl.int64) * DSTATE * seqlen
    out_rows = (b * dim + offs_d).to(tl.int64) * n_seg + seg
    acc_ptr = seg_state_ptr + out_rows * DSTATE
    dt_total = tl.zeros([BLOCK_D], ACC)
    first = seg * chunks_per_seg
    n_here = tl.minimum(chunks_per_seg, n_chunks - first)
    for i in range(n_here):
        c = first + n_here - 1 - i if ADJOINT else first + i
        t = c * CHUNK + offs_t
        t_mask = t < seqlen
        mask = d_mask[:, None] & t_mask[None, :]
        offs = rows[:, None] + t[None, :]
        dt, _ = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS, ACC)
        chunk_dt = tl.sum(dt, axis=1)
        if ADJOINT:
            dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(ACC)
            if HAS_Z:
                z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
                dy = dy * z * tl.sigmoid(z)
            gap = tl.cumsum(dt, axis=1)
            weight_in = dy
        else:
            gap = tl.cumsum(dt, axis=1, reverse=True) - dt      # no cancellation for the steps near the end
            weight_in = dt * tl.load(u_ptr + offs, mask=mask, other=0.0).to(ACC)
        t_rows = _rows_of(t, BLOCK_D)
        if VARLEN:
            is_start, is_end, state_offs = _seq_flags(cu_ptr, seq_ptr, t_rows, seqlen, dim, offs_d, d_mask, DSTATE)
            starts = is_start.to(tl.int32)
            # Steps cut off from the segment's end (forward) or start (adjoint) by a sequence start.
            if ADJOINT:
                cut = tl.cumsum(starts, axis=1) > 0
            else:
                cut = tl.cumsum(starts, axis=1, reverse=True) - starts > 0
            chunk_has_start = tl.sum(starts, axis=1) > 0
        for n in range(DSTATE):
            A_n = tl.load(A_ptr + offs_d * DSTATE + n, mask=d_mask, other=0.0).to(ACC) * LOG2E
            BC_ptr = C_ptr if ADJOINT else B_ptr
            BC_n = tl.load(BC_ptr + bc_base + n * seqlen + t_rows, mask=t_rows < seqlen, other=0.0).to(ACC)
            terms = tl.exp2(A_n[:, None] * gap) * weight_in * BC_n
            chunk_decay = tl.exp2(A_n * chunk_dt)
            if VARLEN:
                if ADJOINT:
                    dlast = tl.load(dlast_ptr + state_offs + n, mask=is_end, other=0.0).to(ACC)
                    terms += tl.exp2(A_n[:, None] * gap) * dlast
                elif HAS_H0:
                    h0 = tl.load(h0_ptr + state_offs + n, mask=is_start, other=0.0).to(ACC)
                    terms += tl.exp2(A_n[:, None] * (gap + dt)) * h0
                terms = tl.where(cut, 0.0, terms)
                chunk_decay = tl.where(chunk_has_start, 0.0, chunk_decay)
            local = tl.sum(terms, axis=1)
            acc = tl.load(acc_ptr + n, mask=d_mask, other=0.0)
            tl.store(acc_ptr + n, chunk_decay * acc + local, mask=d_mask)
        tl.debug_barrier()                        # the next chunk reads these columns from other lanes
        dt_total += chunk_dt
    tl.store(seg_dt_ptr + out_rows, dt_total, mask=d_mask)


@triton.jit
def _carry_kernel(A_ptr, seg_state_ptr, seg_dt_ptr, keep_ptr, start_ptr, carried_ptr, n_rows, dim, dstate, n_seg,
                  BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr,
                  ACC: tl.constexpr):
    """Sequential pass over the segments, (batch x dim, dstate) at a time.

    Forward: carried[s] = state at the start of segment s, from start (= initial_state) and the segment ends.
    REVERSE: carried[s] = gradient into the state at the end of segment s, from start (= grad of last_state).
    Shapes: seg_state, carried (batch, dim, n_seg, dstate); seg_dt (batch, dim, n_seg); start (batch, dim, dstate).
    VARLEN: keep (n_seg,) is 0 for a segment that holds a sequence start (nothing crosses it), else 1.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < n_rows
    offs_n = tl.arange(0, BLOCK_N)
    mask = r_mask[:, None] & (offs_n < dstate)[None, :]
    A = tl.load(A_ptr + (rows % dim)[:, None] * dstate + offs_n[None, :], mask=mask, other=0.0).to(ACC) * LOG2E
    h = tl.load(start_ptr + rows.to(tl.int64)[:, None] * dstate + offs_n[None, :], mask=mask, other=0.0).to(ACC)
    for i in range(n_seg):
        s = n_seg - 1 - i if REVERSE else i
        seg_rows = rows.to(tl.int64) * n_seg + s
        offs = seg_rows[:, None] * dstate + offs_n[None, :]
        tl.store(carried_ptr + offs, h, mask=mask)
        seg_dt = tl.load(seg_dt_ptr + seg_rows, mask=r_mask, other=0.0)
        decay = tl.exp2(A * seg_dt[:, None])
        if VARLEN:
            decay = decay * tl.load(keep_ptr + s)
        h = decay * h + tl.load(seg_state_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, z_ptr, out_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, state_ptr,
                cu_ptr, seq_ptr, h0_ptr, last_ptr,
                batch, dim, seqlen, n_groups, n_dblk, dim_per_group, chunks_per_seg, n_chunks, n_seg,
                DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                VARLEN: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """Scan of one segment of block_d channels; writes out and the state at every chunk boundary.

    state: (batch, dim, n_chunks + 1, dstate); slot c is the state before chunk c, slot n_chunks the last state.
    The caller fills the first slot of every segment; the kernel fills the others.
    VARLEN: cu (n + 1,), seq (seqlen,) the sequence of each step; h0 (initial states, if HAS_H0) and last (the
    sequences' last states, written at their last steps) are (n, dim, dstate).
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, g, offs_d, d_mask = _program_coords(pid, batch, n_dblk, dim_per_group, BLOCK_D)
    offs_t = tl.arange(0, CHUNK)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    chan = (b * dim + offs_d).to(tl.int64)
    rows = chan * seqlen
    bc_base = (b * n_groups + g).to(tl.int64) * DSTATE * seqlen
    first = seg * chunks_per_seg
    last = tl.minimum(first + chunks_per_seg, n_chunks)
    for c in range(first, last):
        h_ptr = state_ptr + (chan * (n_chunks + 1) + c) * DSTATE
        # The state after the chunk goes to the next slot, unless that slot starts the next segment (the caller
        # put the carried state there).
        end_mask = d_mask & ((c + 1 < last) | (c + 1 == n_chunks))
        t = c * CHUNK + offs_t
        t_mask = t < seqlen
        mask = d_mask[:, None] & t_mask[None, :]
        offs = rows[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(ACC)
        dt, _ = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS, ACC)
        dtu = dt * u
        y = Dv[:, None] * u
        t_rows = _rows_of(t, BLOCK_D)
        if VARLEN:
            is_start, is_end, state_offs = _seq_flags(cu_ptr, seq_ptr, t_rows, seqlen, dim, offs_d, d_mask, DSTATE)
        for n in range(DSTATE):
            A_n = tl.load(A_ptr + offs_d * DSTATE + n, mask=d_mask, other=0.0).to(ACC) * LOG2E
            B_n = tl.load(B_ptr + bc_base + n * seqlen + t_rows, mask=t_rows < seqlen, other=0.0).to(ACC)
            C_n = tl.load(C_ptr + bc_base + n * seqlen + t_rows, mask=t_rows < seqlen, other=0.0).to(ACC)
            decay = tl.exp2(dt * A_n[:, None])
            inp = dtu * B_n
            if VARLEN:  # a sequence's first step starts from its initial state, not from the step before
                if HAS_H0:
                    inp += decay * tl.load(h0_ptr + state_offs + n, mask=is_start, other=0.0).to(ACC)
                decay = tl.where(is_start, 0.0, decay)
            decay_prod, hs = tl.associative_scan((decay, inp), 1, _linear_combine)
            hs += decay_prod * tl.load(h_ptr + n, mask=d_mask, other=0.0)[:, None]
            y += hs * C_n
            # Masked steps keep the state, so the last column is the state after the chunk.
            tl.store(h_ptr + DSTATE + n, _at(hs, offs_t, CHUNK - 1), mask=end_mask)
            if VARLEN:
                tl.store(last_ptr + state_offs + n, hs, mask=is_end)
        tl.debug_barrier()                        # the next chunk reads these columns from other lanes
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, z_ptr, dout_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, state_ptr, adj_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                cu_ptr, seq_ptr, h0_ptr, dlast_ptr, dh0_ptr,
                batch, dim, seqlen, n_groups, n_dblk, dim_per_group, chunks_per_seg, n_chunks, n_seg,
                DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                VARLEN: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """Backward of one segment of block_d channels, chunks in reverse order.

    With a_t = exp(dt_t A), b_t = dt_t B_t u_t, h_t = a_t h_{t-1} + b_t and c_t = C_t dy_t, the adjoint
    g_t = dL/dh_t obeys g_t = c_t + a_{t+1} g_{t+1} (a reverse scan). Then dL/db_t = g_t and
    dL/da_t = g_t h_{t-1}, where a_t h_{t-1} = h_t - b_t avoids shifting h.
    state: the forward's (batch, dim, n_chunks + 1, dstate) states at the chunk boundaries. adj (same shape):
    slot c is the gradient into the state before chunk c; the caller fills the last slot of every segment
    (slot n_chunks: the gradient of last_state), the kernel the others (slot 0: the gradient of initial_state).
    dB, dC (fp32/fp64, (batch, groups, dstate, seqlen)), dA, dD, dbias are accumulated with atomics.
    VARLEN (as in the forward): a sequence's first step gets decay 0 in both scans, so neither the state nor the
    adjoint crosses it, and writes dh0 (the gradient of its initial state, if HAS_H0); its last step adds dlast,
    the gradient of its last state, to c. dlast and dh0 are (n, dim, dstate).
    """
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, g, offs_d, d_mask = _program_coords(pid, batch, n_dblk, dim_per_group, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    chan = (b * dim + offs_d).to(tl.int64)
    rows = chan * seqlen
    bc_base = (b * n_groups + g).to(tl.int64) * DSTATE * seqlen
    rev = _rows_of(CHUNK - 1 - offs_t, BLOCK_D)                          # reversed time
    next_rev = _rows_of(tl.where(offs_t == 0, 0, CHUNK - offs_t), BLOCK_D)  # reversed, one step ahead
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    dD_acc = tl.zeros([BLOCK_D], ACC)
    dbias_acc = tl.zeros([BLOCK_D], ACC)
    first = seg * chunks_per_seg
    n_here = tl.minimum(chunks_per_seg, n_chunks - first)
    for i in range(n_here):
        c = first + n_here - 1 - i
        t = c * CHUNK + offs_t
        t_mask = t < seqlen
        mask = d_mask[:, None] & t_mask[None, :]
        offs = rows[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(ACC)
        dt, _ = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS, ACC)
        dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
            dy = dy * z * tl.sigmoid(z)
        # The adjoint runs backwards in time: it is scanned forwards on time-reversed tiles (reversed with
        # tl.gather: one shuffle per element, where a reverse scan costs a butterfly flip of every operand).
        # Reversed step r holds dt at t = chunk - r, for a_{t+1}; r = 0 (the chunk's last step) gets a = 1, the
        # gradient carried in from after the chunk being added to its c instead.
        dt_next_rev = tl.where(offs_t[None, :] == 0, 0.0, tl.gather(dt, next_rev, 1))
        dy_rev = tl.gather(dy, rev, 1)
        t_rows = _rows_of(t, BLOCK_D)
        if VARLEN:
            # (Triton needs every name in the loop below to keep one type: the unused flags get names of their own.)
            is_start, _is_end, state_offs = _seq_flags(cu_ptr, seq_ptr, t_rows, seqlen, dim, offs_d, d_mask, DSTATE)
            # The same flags in reversed time (steps loaded in reverse order), and whether the step after starts.
            t_rev = _rows_of(c * CHUNK + CHUNK - 1 - offs_t, BLOCK_D)
            _starts_rev, is_end_rev, state_offs_rev = _seq_flags(cu_ptr, seq_ptr, t_rev, seqlen, dim, offs_d, d_mask, DSTATE)
            next_starts_rev, _next_is_end, _next_offs = _seq_flags(cu_ptr, seq_ptr, t_rev + 1, seqlen, dim, offs_d, d_mask, DSTATE)
            next_starts_rev = next_starts_rev & (offs_t[None, :] > 0)  # r = 0: the carried-in gradient, a = 1
        h_ptr = state_ptr + (chan * (n_chunks + 1) + c) * DSTATE
        q_ptr = adj_ptr + (chan * (n_chunks + 1) + c) * DSTATE
        # The first slot of a segment other than the first belongs to the previous segment (the caller's).
        start_mask = d_mask & ((c > first) | (seg == 0))
        dtu = dt * u
        y = tl.zeros([BLOCK_D, CHUNK], ACC)               # sum_n C[n] h, for dz
        grad_B = tl.zeros([BLOCK_D, CHUNK], ACC)          # sum_n g B[n]
        ddt_A = tl.zeros([BLOCK_D, CHUNK], ACC)           # sum_n A[:, n] g a h_{t-1}
        for i_n in range(DSTATE):
            # Programs start at different state indices, so that the many programs adding into the same dB/dC
            # row at once are spread over DSTATE rows.
            n = (i_n + pid) % DSTATE
            A_n = tl.load(A_ptr + offs_d * DSTATE + n, mask=d_mask, other=0.0).to(ACC)
            B_n = tl.load(B_ptr + bc_base + n * seqlen + t_rows, mask=t_rows < seqlen, other=0.0).to(ACC)
            C_n = tl.load(C_ptr + bc_base + n * seqlen + t_rows, mask=t_rows < seqlen, other=0.0).to(ACC)
            # Recompute the chunk's states.
            decay = tl.exp2(dt * (A_n * LOG2E)[:, None])
            inp = dtu * B_n
            scan_decay, scan_inp = decay, inp
            if VARLEN:  # restart at sequence starts, as in the forward
                if HAS_H0:
                    scan_inp = inp + decay * tl.load(h0_ptr + state_offs + n, mask=is_start, other=0.0).to(ACC)
                scan_decay = tl.where(is_start, 0.0, decay)
            decay_prod, hs = tl.associative_scan((scan_decay, scan_inp), 1, _linear_combine)
            hs += decay_prod * tl.load(h_ptr + n, mask=d_mask, other=0.0)[:, None]
            if HAS_Z:
                y += hs * C_n
            # Adjoint: g_t = c_t + a_{t+1} g_{t+1}, c = C dy, as a forward scan over reversed time.
            q_end = tl.load(q_ptr + DSTATE + n, mask=d_mask, other=0.0)
            c_rev = dy_rev * tl.gather(C_n, rev, 1)
            decay_next_rev = tl.exp2(dt_next_rev * (A_n * LOG2E)[:, None])
            if VARLEN:
                c_rev += tl.load(dlast_ptr + state_offs_rev + n, mask=is_end_rev, other=0.0).to(ACC)
                decay_next_rev = tl.where(next_starts_rev, 0.0, decay_next_rev)
            c_rev = tl.where(offs_t[None, :] == 0, c_rev + q_end[:, None], c_rev)
            _decay_all, grad_rev = tl.associative_scan((decay_next_rev, c_rev), 1, _linear_combine)
            grad = tl.gather(grad_rev, rev, 1)
            # g_t a_t h_{t-1} (inp without the initial state: at a sequence start h_{t-1} is that state)
            grad_decayed = grad * (hs - inp)
            grad_B += grad * B_n
            ddt_A += grad_decayed * A_n[:, None]
            dA_acc += tl.where(offs_n[None, :] == n, tl.sum(grad_decayed * dt, axis=1)[:, None], 0.0)
            tl.atomic_add(dB_ptr + bc_base + n * seqlen + t, tl.sum(grad * dtu, axis=0), mask=t_mask, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_base + n * seqlen + t, tl.sum(hs * dy, axis=0), mask=t_mask, sem="relaxed")
            tl.store(q_ptr + n, _at(scan_decay * grad, offs_t, 0), mask=start_mask)     # a_0 g_0
            if VARLEN:
                if HAS_H0:
                    tl.store(dh0_ptr + state_offs + n, grad * decay, mask=is_start)
        tl.debug_barrier()                        # the next chunk reads these columns from other lanes
        # u, dout, z and delta are loaded again (L1/L2 hits) rather than kept in registers through the loop.
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_Z:
            dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(ACC)
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
            sig_z = tl.sigmoid(z)
            dz = dout * (y + Dv[:, None] * u) * sig_z * (1.0 + z * (1.0 - sig_z))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        ddt = grad_B * u + ddt_A
        if SOFTPLUS:
            _, raw = _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS, False, ACC)
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        tl.store(du_ptr + offs, (grad_B * dt + Dv[:, None] * dy).to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        dD_acc += tl.sum(dy * u, axis=1)
        dbias_acc += tl.sum(ddt, axis=1)
    tl.atomic_add(dA_ptr + offs_d[:, None] * DSTATE + offs_n[None, :], dA_acc,
                  mask=d_mask[:, None] & (offs_n < DSTATE)[None, :], sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=d_mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=d_mask, sem="relaxed")


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                 dim, dstate, dim_per_group,
                 s_sb, s_sd, s_sn, s_xb, s_xd, s_dtb, s_dtd, s_zb, s_zd, s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn,
                 BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
    """One recurrent step for block_d channels of one batch row; updates state in place, writes y (batch, dim)."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < dim
    offs_n = tl.arange(0, BLOCK_N)
    mask = d_mask[:, None] & (offs_n < dstate)[None, :]
    grp = offs_d // dim_per_group
    s_offs = b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    h = tl.load(state_ptr + s_offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=d_mask, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + b * s_dtb + offs_d * s_dtd, mask=d_mask, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask, other=0.0).to(ACC)
    Bm = tl.load(B_ptr + b * s_Bb + grp[:, None] * s_Bg + offs_n[None, :] * s_Bn, mask=mask, other=0.0).to(ACC)
    Cm = tl.load(C_ptr + b * s_Cb + grp[:, None] * s_Cg + offs_n[None, :] * s_Cn, mask=mask, other=0.0).to(ACC)
    h = tl.exp2(dt[:, None] * A * LOG2E) * h + (dt * x)[:, None] * Bm
    tl.store(state_ptr + s_offs, h.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(h * Cm, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(ACC) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + offs_d * s_zd, mask=d_mask, other=0.0).to(ACC)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + b * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=d_mask)


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

def _acc_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _num_segments(programs: int, n_chunks: int, device: torch.device, cfg: ScanConfig) -> int:
    """How many pieces to cut the sequence into so that enough programs run at once."""
    if cfg.num_segments is not None:
        wanted = cfg.num_segments
    elif device.type == "cuda":
        target = cfg.programs_per_sm * torch.cuda.get_device_properties(device).multi_processor_count
        wanted = triton.cdiv(target, programs)
    else:
        wanted = 1
    wanted = max(1, min(wanted, n_chunks))
    # Equal whole numbers of chunks per segment, none empty.
    return triton.cdiv(n_chunks, triton.cdiv(n_chunks, wanted))


class _Layout:
    """Sizes shared by the launches of one call: groups, channel blocks, chunks and segments."""

    def __init__(self, u: torch.Tensor, B: torch.Tensor, dstate: int, block_d: int, cfg: ScanConfig):
        self.batch, self.dim, self.seqlen = u.shape
        self.dstate = dstate
        self.n_groups = B.shape[1]
        self.dim_per_group = self.dim // self.n_groups
        self.block_d = min(block_d, triton.next_power_of_2(self.dim_per_group))
        self.block_n = triton.next_power_of_2(dstate)
        self.chunk = cfg.chunk
        self.n_chunks = triton.cdiv(self.seqlen, self.chunk)
        self.n_dblk = triton.cdiv(self.dim_per_group, self.block_d)
        self.programs = self.batch * self.n_groups * self.n_dblk
        self.n_seg = _num_segments(self.programs, max(self.n_chunks, 1), u.device, cfg)
        self.chunks_per_seg = triton.cdiv(max(self.n_chunks, 1), self.n_seg)

    @property
    def grid(self):
        return (self.programs, self.n_seg)

    @property
    def tile(self):
        return dict(DSTATE=self.dstate, BLOCK_D=self.block_d, CHUNK=self.chunk)

    @property
    def sizes(self):
        return (self.batch, self.dim, self.seqlen, self.n_groups, self.n_dblk, self.dim_per_group,
                self.chunks_per_seg, self.n_chunks, self.n_seg)


def _carry(A, seg_state, seg_dt, keep, start, lay: _Layout, reverse: bool, acc: torch.dtype):
    """Run the segment carry pass from start (batch, dim, dstate); returns (batch, dim, n_seg, dstate).
    keep: None, or for packed sequences ``_Packing.segment_keep``."""
    carried = torch.empty_like(seg_state)
    n_rows = lay.batch * lay.dim
    block_r = 32
    _carry_kernel[(triton.cdiv(n_rows, block_r),)](
        A, seg_state, seg_dt, keep, start, carried, n_rows, lay.dim, lay.dstate, lay.n_seg, BLOCK_R=block_r,
        BLOCK_N=lay.block_n, REVERSE=reverse, VARLEN=keep is not None, ACC=_tl_dtype(acc))
    return carried


@dataclass(frozen=True)
class _Packing:
    """Packed sequences (batch 1): cu (n + 1,) int32 bounds, seq (seqlen,) int32 the sequence of each step,
    empty (n, 1, 1) True for zero-length sequences (no step writes their last state or its gradient)."""
    cu: torch.Tensor
    seq: torch.Tensor
    empty: torch.Tensor

    @staticmethod
    def of(cu_seqlens: torch.Tensor | None, seqlen: int) -> _Packing | None:
        if cu_seqlens is None:
            return None
        cu = cu_seqlens.contiguous()
        return _Packing(cu, sequence_ids(cu, seqlen), (cu.diff() == 0)[:, None, None])

    def segment_keep(self, lay: _Layout, dtype: torch.dtype) -> torch.Tensor:
        """(n_seg,): 0 for a segment holding a sequence start (the carry drops what came before it), else 1."""
        steps = lay.chunks_per_seg * lay.chunk
        first = torch.arange(lay.n_seg, device=self.cu.device, dtype=torch.int32) * steps
        end = (first + steps).clamp(max=lay.seqlen)
        starts = self.cu[:-1]        # sorted; an entry equal to seqlen (trailing empty sequences) is in no segment
        held = torch.searchsorted(starts, end) - torch.searchsorted(starts, first)
        return (held == 0).to(dtype)


def _as_groups(BC: torch.Tensor) -> torch.Tensor:
    """(batch, dstate, seqlen) or (batch, groups, dstate, seqlen) -> contiguous (batch, groups, dstate, seqlen)."""
    return (BC.unsqueeze(1) if BC.dim() == 3 else BC).contiguous()


def _boundary_slots(lay: _Layout, device) -> torch.Tensor:
    """Index of each segment's first chunk, (n_seg,); with n_chunks appended, the segments' boundaries."""
    return torch.arange(lay.n_seg, device=device) * lay.chunks_per_seg


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, cfg: ScanConfig, pack: _Packing | None):
    """Returns out (batch, dim, seqlen), the states at the chunk boundaries (batch, dim, n_chunks + 1, dstate) and
    the last state: (batch, dim, dstate), the boundary states' last slot, or with ``pack`` (n, dim, dstate)."""
    acc = _acc_dtype(u, delta, A)
    tl_acc = _tl_dtype(acc)
    lay = _Layout(u, B, A.shape[1], cfg.block_d, cfg)
    h0 = initial_state.to(acc).contiguous() if pack is not None and initial_state is not None else None
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                 VARLEN=pack is not None, HAS_H0=h0 is not None, ACC=tl_acc)
    varlen_in = (pack.cu, pack.seq, h0) if pack is not None else (None, None, None)
    states = _new_output(lay.batch, lay.dim, lay.n_chunks + 1, lay.dstate, dtype=acc, device=u.device)
    # Packed, the first step starts a sequence: nothing flows in from before it.
    start = (initial_state.to(acc) if initial_state is not None and pack is None
             else torch.zeros(lay.batch, lay.dim, lay.dstate, dtype=acc, device=u.device))
    if lay.n_seg > 1:
        seg_state = torch.zeros(lay.batch, lay.dim, lay.n_seg, lay.dstate, device=u.device, dtype=acc)
        seg_dt = _new_output(lay.batch, lay.dim, lay.n_seg, device=u.device, dtype=acc)
        _segment_kernel[lay.grid](u, delta, z, u, A, B, C, delta_bias, seg_state, seg_dt, *varlen_in, None,
                                  *lay.sizes, **lay.tile, ADJOINT=False, num_warps=cfg.num_warps, **flags)
        keep = pack.segment_keep(lay, acc) if pack is not None else None
        states[:, :, _boundary_slots(lay, u.device)] = _carry(A, seg_state, seg_dt, keep, start.contiguous(), lay,
                                                              reverse=False, acc=acc)
    else:
        states[:, :, 0] = start
    out = _new_output(u.shape, dtype=u.dtype, device=u.device)
    last = (_new_output(pack.cu.numel() - 1, lay.dim, lay.dstate, dtype=acc, device=u.device)
            if pack is not None else None)
    _fwd_kernel[lay.grid](u, delta, z, out, A, B, C, D, delta_bias, states, *varlen_in, last, *lay.sizes,
                          **lay.tile, HAS_D=D is not None, num_warps=cfg.num_warps, **flags)
    if pack is None:
        return out, states, states[:, :, -1].clone()
    # A zero-length sequence ends in its initial state.
    return out, states, torch.where(pack.empty, h0 if h0 is not None else 0.0, last)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, cfg, cu_seqlens):
        B_in_shape, C_in_shape = B.shape, C.shape
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        B, C = _as_groups(B), _as_groups(C)
        z = z.contiguous() if z is not None else None
        D = D.contiguous() if D is not None else None
        delta_bias = delta_bias.contiguous() if delta_bias is not None else None
        pack = _Packing.of(cu_seqlens, u.shape[-1])
        out, states, last = _forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, cfg, pack)
        h0 = initial_state if pack is not None else None   # packed, the kernels read the initial states again
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, h0)
        ctx.softplus, ctx.cfg, ctx.pack = softplus, cfg, pack
        ctx.shapes = (B_in_shape, C_in_shape)
        ctx.initial_state_dtype = initial_state.dtype if initial_state is not None else None
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast_state):
        u, delta, A, B, C, D, z, delta_bias, states, h0 = ctx.saved_tensors
        cfg, pack = ctx.cfg, ctx.pack
        acc = states.dtype
        tl_acc = _tl_dtype(acc)
        lay = _Layout(u, B, A.shape[1], cfg.bwd_block_d, cfg)
        dev = u.device
        dout = dout.contiguous()
        flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
                     VARLEN=pack is not None, HAS_H0=h0 is not None, ACC=tl_acc)
        adj = _new_output(states.shape, dtype=acc, device=dev)
        if pack is not None:
            # Packed, each sequence's last-state gradient enters at its last step, inside the kernels.
            n_seq = pack.cu.numel() - 1
            dlast = (dlast_state.to(acc).contiguous() if dlast_state is not None
                     else torch.zeros(n_seq, lay.dim, lay.dstate, dtype=acc, device=dev))
            h0 = h0.to(acc).contiguous() if h0 is not None else None
            dh0 = _new_output(n_seq, lay.dim, lay.dstate, dtype=acc, device=dev) if h0 is not None else None
            varlen_in = (pack.cu, pack.seq, h0, dlast)
            end_grad = torch.zeros(lay.batch, lay.dim, lay.dstate, dtype=acc, device=dev)
        else:
            varlen_in, dh0 = (None, None, None, None), None
            end_grad = (dlast_state.to(acc) if dlast_state is not None
                        else torch.zeros(lay.batch, lay.dim, lay.dstate, dtype=acc, device=dev))
        if lay.n_seg > 1:
            seg_state = torch.zeros(lay.batch, lay.dim, lay.n_seg, lay.dstate, device=dev, dtype=acc)
            seg_dt = _new_output(lay.batch, lay.dim, lay.n_seg, device=dev, dtype=acc)
            _segment_kernel[lay.grid](u, delta, z, dout, A, B, C, delta_bias, seg_state, seg_dt, *varlen_in,
                                      *lay.sizes, **lay.tile, ADJOINT=True, num_warps=cfg.bwd_num_warps, **flags)
            # carried[s]: the gradient into the state at the end of segment s, i.e. before segment s + 1.
            keep = pack.segment_keep(lay, acc) if pack is not None else None
            carried = _carry(A, seg_state, seg_dt, keep, end_grad.contiguous(), lay, reverse=True, acc=acc)
            adj[:, :, _boundary_slots(lay, dev)[1:]] = carried[:, :, :-1]
            adj[:, :, -1] = carried[:, :, -1]
        else:
            adj[:, :, -1] = end_grad
        du = _new_output(u.shape, dtype=u.dtype, device=dev)
        ddelta = _new_output(delta.shape, dtype=delta.dtype, device=dev)
        dz = _new_output(z.shape, dtype=z.dtype, device=dev) if z is not None else None
        dA = torch.zeros(A.shape, dtype=acc, device=dev)
        dB = torch.zeros(B.shape, dtype=acc, device=dev)
        dC = torch.zeros(C.shape, dtype=acc, device=dev)
        dD = torch.zeros(lay.dim, dtype=acc, device=dev) if D is not None else None
        dbias = torch.zeros(lay.dim, dtype=acc, device=dev) if delta_bias is not None else None
        _bwd_kernel[lay.grid](u, delta, z, dout, A, B, C, D, delta_bias, states, adj,
                              du, ddelta, dz, dA, dB, dC, dD, dbias, *varlen_in, dh0, *lay.sizes, **lay.tile,
                              BLOCK_N=lay.block_n, HAS_D=D is not None, num_warps=cfg.bwd_num_warps, **flags)
        B_shape, C_shape = ctx.shapes
        want_dstart = ctx.needs_input_grad[9]
        if want_dstart:
            # Packed: a zero-length sequence's last state is its initial state.
            dstart = adj[:, :, 0] if pack is None else torch.where(pack.empty, varlen_in[3], dh0)
        return (du, ddelta, dA.to(A.dtype), dB.reshape(B_shape).to(B.dtype), dC.reshape(C_shape).to(C.dtype),
                dD.to(D.dtype) if D is not None else None, dz,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None, None,
                dstart.to(ctx.initial_state_dtype) if want_dstart else None, None, None)


def selective_scan_gpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_last_state=False, config: ScanConfig | None = None,
                       cu_seqlens=None):
    """Selective scan with Triton kernels; arguments and result as ``ssm_core.selective_scan``.

    Inputs are expected checked by ``check_scan_inputs``. Tensors whose last dimension is not contiguous are
    copied. ``config`` overrides the launch parameters (tests and benchmarks use it).
    """
    out, last_state = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                             initial_state, config or ScanConfig(), cu_seqlens)
    return (out, last_state) if return_last_state else out


def selective_state_update_gpu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One fused step; updates state (batch, dim, dstate) in place and returns y (batch, dim) in x's dtype.

    No host synchronisation and no data-dependent control flow, so it can be captured in a CUDA graph.
    """
    batch, dim, dstate = state.shape
    if B.dim() == 2:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    y = _new_output(batch, dim, dtype=x.dtype, device=x.device)
    block_n = triton.next_power_of_2(dstate)
    block_d = max(1, min(triton.next_power_of_2(dim), 2048 // block_n))
    zz = z if z is not None else x
    _step_kernel[(batch, triton.cdiv(dim, block_d))](
        state, x, dt, A.contiguous(), B, C, D, z, dt_bias, y, dim, dstate, dim // B.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *B.stride(), *C.stride(),
        BLOCK_D=block_d, BLOCK_N=block_n, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), ACC=_tl_dtype(state.dtype), num_warps=4)
    return y
