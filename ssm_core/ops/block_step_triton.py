"""One recurrent step of a whole residual Mamba block, h -> h + Mamba(RMSNorm(h)), as one Triton kernel launch.

Autoregressive generation (audio: one sample per step of a U-Net of 40 blocks) is bound by kernel launches:
the unfused step is ~10 small kernels per block. This kernel does the block's whole step:

    x, z   = in_proj(RMSNorm(h))                                  (batch, d_inner) each
    xc     = silu(conv1d over [conv state, x] + conv bias)         conv state shifted in place
    dt_r, B, C = x_proj(xc)                                       (batch, dt_rank), (batch, d_state) x 2
    dt     = softplus(dt_proj(dt_r) + dt bias)                     (batch, d_inner)
    ssm    = exp(dt A) ssm + dt xc B                               (batch, d_inner, d_state), float32, in place
    y      = (ssm . C + D xc) silu(z)
    out    = h + out_proj(y)                                       (batch, d_model)

Work split: the grid is (row tiles, split). A program owns ``rows`` batch rows and one of ``split`` slices of the
d_inner channels (and, for out_proj, one slice of the d_model outputs). The weights (a few hundred KB per block)
stay in L2; one program reading all of them is bound by one SM's share of the L2 bandwidth, so wide blocks are
split over several programs. The steps need two all-channel reductions (x_proj over d_inner, out_proj over
d_inner), so the kernel has three phases with a reduction between each: (A) norm, in_proj, conv, partial x_proj
of the slice; (B) sum of the partials, dt_proj, state update, gated y of the slice; (C) out_proj of the output
slice and the residual add. Partials, x, z and y go through small global scratch buffers (L2). Within its slice a
program loops over register-sized chunks (``tile_sizes``): 3-D broadcast-and-sum products, no tensor cores (the
matrices are matrix-vector products for a few rows; fp32 stays exact fp32, as in the unfused path).

``fused=True`` (CUDA): one launch; the programs of a row tile meet at two grid barriers (an ever-growing atomic
counter per row tile, nothing to reset, so the kernel replays from a CUDA graph). All programs must be resident
at once, so the grid is capped at the number of SMs. ``fused=False``: three launches, one per
phase (kernel boundaries are the barriers); this is what runs under ``TRITON_INTERPRET=1`` (which runs programs
one after the other, so a grid barrier there would never open) and it exercises the same phase code.

Accumulation is float32 (float64 when the residual stream is float64); weights may be fp32, bf16, fp16 or fp64.
No host synchronisation, no data-dependent launch parameters: the step can be captured in a CUDA graph.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl

from .scan_triton import LOG2E, _softplus, _tl_dtype

# Elements of the largest 3-D broadcast-and-sum temporary per warp of a program (32 per thread). Loads in a loop
# are not pipelined, so each loop iteration costs about one L2 round trip: the larger the tile, the fewer.
_TILE_ELEMENTS_PER_WARP = 1024
# Interpreted launches: one program reads about this many weight bytes before splitting over more programs pays.
_BYTES_PER_PROGRAM = 128 * 1024
# GPU launches: the most programs a block's channels are split over (the sweep's best at widths 64-256).
_MAX_SPLIT = 16


@dataclass(frozen=True)
class BlockStepConfig:
    """Launch shape of the fused block step. ``None`` fields are picked from the shapes (``pick_config``)."""
    rows: int | None = None       # batch rows per program (a power of two)
    split: int | None = None      # programs per row tile, each owning a slice of d_inner (and of d_model)
    fused: bool | None = None     # one launch with grid barriers; None: on CUDA unless interpreted
    num_warps: int | None = None  # None: 8 on a GPU from d_model 128 up, else 4


@dataclass
class BlockStepWeights:
    """The parameters of one residual Mamba block (``RMSNorm -> Mamba``, selective, one direction).

    norm_weight (d_model,); in_proj_weight (2 d_inner, d_model), bias (2 d_inner,) or None; conv_weight
    (d_inner, d_conv), conv_bias (d_inner,) or None; x_proj_weight (dt_rank + 2 d_state, d_inner);
    dt_proj_weight (d_inner, dt_rank), dt_proj_bias (d_inner,); A_log (d_inner, d_state); D (d_inner,);
    out_proj_weight (d_model, d_inner), bias (d_model,) or None.
    """
    norm_weight: torch.Tensor
    norm_eps: float
    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor | None
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor
    dt_proj_weight: torch.Tensor
    dt_proj_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor | None


# ----------------------------------------------------------------------------------------------------------------
# Device code
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _grid_barrier(counter_ptr, SPLIT: tl.constexpr):
    """Wait until the SPLIT programs of this row tile have all arrived (scratch written before is then visible).

    The tile's counter only grows, by SPLIT per barrier, and is used only by launches with this SPLIT, so it is a
    multiple of SPLIT whenever no barrier is open: arrival ``ticket`` belongs to the barrier that opens when the
    counter reaches the next multiple. Nothing to reset between launches or CUDA-graph replays; one atomic and a
    spin of acquire loads per barrier."""
    tl.debug_barrier()  # every thread of this program has issued its stores
    if SPLIT > 1:
        ticket = tl.atomic_add(counter_ptr, 1, sem="release")
        target = (ticket // SPLIT + 1) * SPLIT
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
        while seen < target:
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
        tl.debug_barrier()


@triton.jit
def _chunk(sl, width, c0, total, BLOCK: tl.constexpr):
    """Indices (BLOCK,) and mask of the chunk starting at c0 of slice ``sl`` (``width`` consecutive indices)."""
    offs = c0 + tl.arange(0, BLOCK)
    idx = sl * width + offs
    return idx, (offs < width) & (idx < total)


@triton.jit
def _phase_in(h_ptr, nw_ptr, win_ptr, bin_ptr, cw_ptr, cb_ptr, conv_ptr, wx_ptr, x_buf, z_buf, xdbl_ptr,
              rows, row_mask, sl, slice_e, batch, d_model, d_inner, dt_rank, d_state, eps, s_hb, s_cb, s_cd,
              BB: tl.constexpr, BKN: tl.constexpr, BEA: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
              BN: tl.constexpr, BKC: tl.constexpr, K: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
              ACC: tl.constexpr):
    """(A) RMSNorm, in_proj, conv step and SiLU for this slice of channels (by chunks of BEA), and its partial
    x_proj (rows, dt_rank + 2 d_state)."""
    rm2 = row_mask[:, None]
    n_xdbl = dt_rank + 2 * d_state
    # RMS over the whole row (every program needs it: cheap, h is d_model floats per row)
    ss = tl.zeros((BB,), ACC)
    for k0 in range(0, d_model, BKN):
        offs_k = k0 + tl.arange(0, BKN)
        hk = tl.load(h_ptr + rows[:, None] * s_hb + offs_k[None, :], mask=rm2 & (offs_k < d_model)[None, :],
                     other=0.0).to(ACC)
        ss += tl.sum(hk * hk, axis=1)
    inv_rms = 1.0 / tl.sqrt(ss / d_model + eps)
    offs_r = tl.arange(0, BR)
    offs_n = tl.arange(0, BN)
    r_mask = offs_r < dt_rank
    n_mask = offs_n < d_state
    part_dt = tl.zeros((BB, BR), ACC)
    part_B = tl.zeros((BB, BN), ACC)
    part_C = tl.zeros((BB, BN), ACC)
    for c0 in range(0, slice_e, BEA):
        offs_e, e_mask = _chunk(sl, slice_e, c0, d_inner, BEA)
        # in_proj rows offs_e (x) and d_inner + offs_e (z), by chunks of d_model
        acc_x = tl.zeros((BB, BEA), ACC)
        acc_z = tl.zeros((BB, BEA), ACC)
        for k0 in range(0, d_model, BK):
            offs_k = k0 + tl.arange(0, BK)
            k_mask = offs_k < d_model
            hk = tl.load(h_ptr + rows[:, None] * s_hb + offs_k[None, :], mask=rm2 & k_mask[None, :],
                         other=0.0).to(ACC)
            xn = hk * inv_rms[:, None] * tl.load(nw_ptr + offs_k, mask=k_mask, other=0.0).to(ACC)[None, :]
            w_mask = e_mask[:, None] & k_mask[None, :]
            w_offs = offs_e[:, None] * d_model + offs_k[None, :]
            wx = tl.load(win_ptr + w_offs, mask=w_mask, other=0.0).to(ACC)
            wz = tl.load(win_ptr + d_inner * d_model + w_offs, mask=w_mask, other=0.0).to(ACC)
            acc_x += tl.sum(xn[:, None, :] * wx[None, :, :], axis=2)
            acc_z += tl.sum(xn[:, None, :] * wz[None, :, :], axis=2)
        if HAS_IN_BIAS:
            acc_x += tl.load(bin_ptr + offs_e, mask=e_mask, other=0.0).to(ACC)[None, :]
            acc_z += tl.load(bin_ptr + d_inner + offs_e, mask=e_mask, other=0.0).to(ACC)[None, :]
        m2 = rm2 & e_mask[None, :]
        # The conv state keeps x in its own dtype; use the rounded value now too, as later steps will.
        x_new = acc_x.to(conv_ptr.dtype.element_ty).to(ACC)
        # window = [state[..., 0 .. K-2], x_new]; load the state and its shift before storing any of it
        conv = tl.load(cw_ptr + offs_e * K + (K - 1), mask=e_mask, other=0.0).to(ACC)[None, :] * x_new
        if HAS_CONV_BIAS:
            conv += tl.load(cb_ptr + offs_e, mask=e_mask, other=0.0).to(ACC)[None, :]
        if K > 1:
            offs_c = tl.arange(0, BKC)
            c_mask = offs_c < K - 1
            c_offs = rows[:, None, None] * s_cb + offs_e[None, :, None] * s_cd + offs_c[None, None, :]
            m3 = m2[:, :, None] & c_mask[None, None, :]
            old = tl.load(conv_ptr + c_offs, mask=m3, other=0.0).to(ACC)
            cw = tl.load(cw_ptr + offs_e[:, None] * K + offs_c[None, :], mask=e_mask[:, None] & c_mask[None, :],
                         other=0.0).to(ACC)
            conv += tl.sum(old * cw[None, :, :], axis=2)
            last = (offs_c == K - 2)[None, None, :]
            shifted = tl.load(conv_ptr + c_offs + 1, mask=m3 & ~last, other=0.0).to(ACC)
            shifted = tl.where(last, x_new[:, :, None], shifted)
            tl.debug_barrier()  # every (replicated) load of the old state is done
            tl.store(conv_ptr + c_offs, shifted.to(conv_ptr.dtype.element_ty), mask=m3)
        xc = tl.where(m2, conv * tl.sigmoid(conv), 0.0)
        tl.store(x_buf + rows[:, None] * d_inner + offs_e[None, :], xc, mask=m2)
        tl.store(z_buf + rows[:, None] * d_inner + offs_e[None, :], acc_z, mask=m2)
        # this chunk's share of x_proj: rows [0, R) give dt, [R, R + N) B, [R + N, R + 2N) C
        w_dt = tl.load(wx_ptr + offs_r[:, None] * d_inner + offs_e[None, :], mask=r_mask[:, None] & e_mask[None, :],
                       other=0.0).to(ACC)
        part_dt += tl.sum(xc[:, None, :] * w_dt[None, :, :], axis=2)
        bc_mask = n_mask[:, None] & e_mask[None, :]
        w_B = tl.load(wx_ptr + (dt_rank + offs_n[:, None]) * d_inner + offs_e[None, :], mask=bc_mask,
                      other=0.0).to(ACC)
        part_B += tl.sum(xc[:, None, :] * w_B[None, :, :], axis=2)
        w_C = tl.load(wx_ptr + (dt_rank + d_state + offs_n[:, None]) * d_inner + offs_e[None, :], mask=bc_mask,
                      other=0.0).to(ACC)
        part_C += tl.sum(xc[:, None, :] * w_C[None, :, :], axis=2)
    base = xdbl_ptr + (sl * batch + rows[:, None]) * n_xdbl
    tl.store(base + offs_r[None, :], part_dt, mask=rm2 & r_mask[None, :])
    tl.store(base + dt_rank + offs_n[None, :], part_B, mask=rm2 & n_mask[None, :])
    tl.store(base + dt_rank + d_state + offs_n[None, :], part_C, mask=rm2 & n_mask[None, :])


@triton.jit
def _sum_partials(xdbl_ptr, rows, row_mask, col0, n_cols, batch, n_xdbl,
                  BB: tl.constexpr, BC: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr):
    """Columns col0 .. col0 + n_cols (<= BC) of x_proj's output (rows, BC), summed over the slices in a fixed
    order (deterministic, unlike atomics)."""
    offs = tl.arange(0, BC)
    mask = row_mask[:, None] & (offs < n_cols)[None, :]
    total = tl.zeros((BB, BC), ACC)
    for s in range(SPLIT):
        total += tl.load(xdbl_ptr + (s * batch + rows[:, None]) * n_xdbl + col0 + offs[None, :], mask=mask,
                         other=0.0, cache_modifier=".cg")
    return total


@triton.jit
def _phase_ssm(x_buf, z_buf, xdbl_ptr, wdt_ptr, dtb_ptr, alog_ptr, d_ptr, ssm_ptr, y_buf,
               rows, row_mask, sl, slice_e, batch, d_inner, dt_rank, d_state, s_sb, s_sd,
               BB: tl.constexpr, BEB: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
               ACC: tl.constexpr):
    """(B) dt_proj, softplus, the state update (in place) and the gated output y for this slice of channels, by
    chunks of BEB."""
    n_xdbl = dt_rank + 2 * d_state
    dt_low = _sum_partials(xdbl_ptr, rows, row_mask, 0, dt_rank, batch, n_xdbl, BB, BR, SPLIT, ACC)
    Bm = _sum_partials(xdbl_ptr, rows, row_mask, dt_rank, d_state, batch, n_xdbl, BB, BN, SPLIT, ACC)
    Cm = _sum_partials(xdbl_ptr, rows, row_mask, dt_rank + d_state, d_state, batch, n_xdbl, BB, BN, SPLIT, ACC)
    offs_r = tl.arange(0, BR)
    offs_n = tl.arange(0, BN)
    n_mask = offs_n < d_state
    for c0 in range(0, slice_e, BEB):
        offs_e, e_mask = _chunk(sl, slice_e, c0, d_inner, BEB)
        m2 = row_mask[:, None] & e_mask[None, :]
        xc = tl.load(x_buf + rows[:, None] * d_inner + offs_e[None, :], mask=m2, other=0.0, cache_modifier=".cg")
        z = tl.load(z_buf + rows[:, None] * d_inner + offs_e[None, :], mask=m2, other=0.0, cache_modifier=".cg")
        w = tl.load(wdt_ptr + offs_e[:, None] * dt_rank + offs_r[None, :],
                    mask=e_mask[:, None] & (offs_r < dt_rank)[None, :], other=0.0).to(ACC)
        dt = tl.sum(dt_low[:, None, :] * w[None, :, :], axis=2)
        dt = _softplus(dt + tl.load(dtb_ptr + offs_e, mask=e_mask, other=0.0).to(ACC)[None, :])
        A = -tl.exp2(tl.load(alog_ptr + offs_e[:, None] * d_state + offs_n[None, :],
                             mask=e_mask[:, None] & n_mask[None, :], other=0.0).to(ACC) * LOG2E)
        s_offs = rows[:, None, None] * s_sb + offs_e[None, :, None] * s_sd + offs_n[None, None, :]
        m3 = m2[:, :, None] & n_mask[None, None, :]
        h = tl.load(ssm_ptr + s_offs, mask=m3, other=0.0).to(ACC)
        h = tl.exp2(dt[:, :, None] * A[None, :, :] * LOG2E) * h + (dt * xc)[:, :, None] * Bm[:, None, :]
        tl.debug_barrier()  # every (replicated) load of the old state is done
        tl.store(ssm_ptr + s_offs, h.to(ssm_ptr.dtype.element_ty), mask=m3)
        y = tl.sum(h * Cm[:, None, :], axis=2)
        y += tl.load(d_ptr + offs_e, mask=e_mask, other=0.0).to(ACC)[None, :] * xc
        y = y * z * tl.sigmoid(z)
        tl.store(y_buf + rows[:, None] * d_inner + offs_e[None, :], y, mask=m2)


@triton.jit
def _phase_out(y_buf, wout_ptr, bout_ptr, h_ptr, out_ptr, rows, row_mask, sl, slice_d, d_model, d_inner, s_hb,
               s_ob, BB: tl.constexpr, BDC: tl.constexpr, BKE: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
               ACC: tl.constexpr):
    """(C) out_proj for this slice of d_model outputs (by chunks of BDC) over all of y, plus the residual."""
    for c0 in range(0, slice_d, BDC):
        offs_d, d_mask = _chunk(sl, slice_d, c0, d_model, BDC)
        acc = tl.zeros((BB, BDC), ACC)
        for e0 in range(0, d_inner, BKE):
            offs_k = e0 + tl.arange(0, BKE)
            k_mask = offs_k < d_inner
            y = tl.load(y_buf + rows[:, None] * d_inner + offs_k[None, :], mask=row_mask[:, None] & k_mask[None, :],
                        other=0.0, cache_modifier=".cg")
            w = tl.load(wout_ptr + offs_d[:, None] * d_inner + offs_k[None, :],
                        mask=d_mask[:, None] & k_mask[None, :], other=0.0).to(ACC)
            acc += tl.sum(y[:, None, :] * w[None, :, :], axis=2)
        if HAS_OUT_BIAS:
            acc += tl.load(bout_ptr + offs_d, mask=d_mask, other=0.0).to(ACC)[None, :]
        m2 = row_mask[:, None] & d_mask[None, :]
        h = tl.load(h_ptr + rows[:, None] * s_hb + offs_d[None, :], mask=m2, other=0.0).to(ACC)
        tl.debug_barrier()  # out may be h itself: every (replicated) load of h is done
        tl.store(out_ptr + rows[:, None] * s_ob + offs_d[None, :], (h + acc).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _block_step_kernel(h_ptr, out_ptr, conv_ptr, ssm_ptr, nw_ptr, win_ptr, bin_ptr, cw_ptr, cb_ptr, wx_ptr,
                       wdt_ptr, dtb_ptr, alog_ptr, d_ptr, wout_ptr, bout_ptr, x_buf, z_buf, y_buf, xdbl_ptr,
                       counter_ptr, batch, d_model, d_inner, dt_rank, d_state, eps, slice_e, slice_d,
                       s_hb, s_ob, s_cb, s_cd, s_sb, s_sd,
                       BB: tl.constexpr, BKN: tl.constexpr, BEA: tl.constexpr, BK: tl.constexpr, BEB: tl.constexpr,
                       BDC: tl.constexpr, BKE: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr,
                       BKC: tl.constexpr, K: tl.constexpr, SPLIT: tl.constexpr,
                       FIRST: tl.constexpr, LAST: tl.constexpr, HAS_IN_BIAS: tl.constexpr,
                       HAS_CONV_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Phases FIRST..LAST (0: in, 1: ssm, 2: out) for row tile program_id(0), slice program_id(1)."""
    tile = tl.program_id(0)
    sl = tl.program_id(1)
    rows = (tile * BB + tl.arange(0, BB)).to(tl.int64)
    row_mask = rows < batch
    if FIRST == 0:
        _phase_in(h_ptr, nw_ptr, win_ptr, bin_ptr, cw_ptr, cb_ptr, conv_ptr, wx_ptr, x_buf, z_buf, xdbl_ptr,
                  rows, row_mask, sl, slice_e, batch, d_model, d_inner, dt_rank, d_state, eps, s_hb, s_cb, s_cd,
                  BB, BKN, BEA, BK, BR, BN, BKC, K, HAS_IN_BIAS, HAS_CONV_BIAS, ACC)
    if FIRST == 0 and LAST >= 1:
        _grid_barrier(counter_ptr + tile, SPLIT)
    if FIRST <= 1 and LAST >= 1:
        _phase_ssm(x_buf, z_buf, xdbl_ptr, wdt_ptr, dtb_ptr, alog_ptr, d_ptr, ssm_ptr, y_buf,
                   rows, row_mask, sl, slice_e, batch, d_inner, dt_rank, d_state, s_sb, s_sd,
                   BB, BEB, BR, BN, SPLIT, ACC)
    if FIRST <= 1 and LAST == 2:
        _grid_barrier(counter_ptr + tile, SPLIT)
    if LAST == 2:
        _phase_out(y_buf, wout_ptr, bout_ptr, h_ptr, out_ptr, rows, row_mask, sl, slice_d, d_model, d_inner,
                   s_hb, s_ob, BB, BDC, BKE, HAS_OUT_BIAS, ACC)


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

# Grid-barrier counters (int64, one per row tile) per device and split: see _grid_barrier. Shared by every launch
# with that split on the device, so fused steps must not run concurrently on two streams of one device.
_counters: dict[tuple[torch.device, int], torch.Tensor] = {}


def _barrier_counters(device: torch.device, split: int, tiles: int) -> torch.Tensor:
    key = (device, split)
    if key not in _counters or _counters[key].numel() < tiles:
        # zeros, or after a launch that grew the tile count: old counters may be any multiple of split (kept)
        new = torch.zeros(max(tiles, 64), dtype=torch.int64, device=device)
        if key in _counters:
            new[:_counters[key].numel()] = _counters[key]
        _counters[key] = new
    return _counters[key]


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def gpu_launch_shape(batch: int, d_model: int, d_inner: int, sms: int, rows: int | None = None
                     ) -> tuple[int, int, int]:
    """(rows, split, num_warps) of a fused launch on a GPU of ``sms`` SMs: see :func:`pick_config`."""
    programs = _pow2_floor(sms)
    rows = rows or min(8, triton.next_power_of_2(triton.cdiv(batch * _MAX_SPLIT, programs)))
    tiles = triton.cdiv(batch, rows)
    split = max(1, min(_MAX_SPLIT, d_inner, programs // tiles))
    return rows, _pow2_floor(split), 8 if d_model >= 128 else 4


def pick_config(batch: int, d_model: int, d_inner: int, weight_bytes: int, device: torch.device,
                config: BlockStepConfig | None = None) -> BlockStepConfig:
    """Fill in a config's ``None`` fields.

    On a GPU (fused): fill it - about one program per SM (a power of two), each with as small a share of the
    weights as possible: ``split`` up to 16, then rows per program (at most 8) so that tiles x split fits. The
    H100 sweep (benchmarks/audio_generation.py --sweep) put this shape at or within 10 % of the best of 7-14
    shapes for widths 64-256 at batch 1 and 64: e.g. width 64, batch 64: 11.4 us against 64.7 us for the old
    8 rows x split 1. 8 warps from width 128 up. Elsewhere (the interpreter): 8 rows per program at most, and
    ``split`` so that each program reads about ``_BYTES_PER_PROGRAM`` of weights."""
    config = config or BlockStepConfig()
    fused = config.fused if config.fused is not None else (device.type == "cuda" and not _interpreted())
    if fused and device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        rows, split, num_warps = gpu_launch_shape(batch, d_model, d_inner, sms, config.rows)
    else:
        rows = config.rows or min(triton.next_power_of_2(batch), 8)
        split = min(triton.next_power_of_2(triton.cdiv(weight_bytes, _BYTES_PER_PROGRAM)), d_inner)
        num_warps = 4
    split = split if config.split is None else config.split
    num_warps = num_warps if config.num_warps is None else config.num_warps
    if rows < 1 or rows & (rows - 1):
        raise ValueError(f"BlockStepConfig.rows must be a power of two; got {rows}")
    tiles = triton.cdiv(batch, rows)
    if split < 1:
        raise ValueError(f"BlockStepConfig.split must be >= 1; got {split}")
    if fused and split > 1 and (device.type != "cuda" or _interpreted()):
        raise ValueError("fused block step: grid barriers need every program resident on a GPU; without one "
                         "(CPU, TRITON_INTERPRET=1) use split=1 or BlockStepConfig(fused=False)")
    if fused and split > 1 and device.type == "cuda":
        if tiles * split > sms:
            raise ValueError(f"fused block step: {tiles} row tiles x split {split} programs exceed the {sms} SMs, "
                             "which a launch with grid barriers needs resident at once; lower rows x split or "
                             "use BlockStepConfig(fused=False)")
    return BlockStepConfig(rows=rows, split=split, fused=fused, num_warps=num_warps)


def tile_sizes(rows: int, slice_e: int, slice_d: int, d_model: int, d_inner: int, dt_rank: int, d_state: int,
               d_conv: int, num_warps: int = 4) -> dict:
    """The kernel's register blocks: every 3-D broadcast-and-sum temporary within ``_TILE_ELEMENTS_PER_WARP`` per
    warp (half that in the state phase, which holds several), weight chunks at least 16 wide where possible."""
    budget = _TILE_ELEMENTS_PER_WARP * num_warps
    br, bn = triton.next_power_of_2(dt_rank), triton.next_power_of_2(d_state)
    bkc = triton.next_power_of_2(max(d_conv - 1, 1))

    def fit(budget: int, others: int, width: int) -> int:  # largest power of two <= width within the budget
        return max(1, min(triton.next_power_of_2(width), _pow2_floor(budget // others)))

    bea = fit(budget, rows * max(br, bn, bkc, 16), slice_e)
    beb = fit(budget // 2, rows * max(br, bn), slice_e)
    bke = min(triton.next_power_of_2(d_inner), 64)
    return dict(BB=rows, BKN=fit(budget, rows, d_model), BEA=bea, BK=fit(budget, rows * bea, d_model), BEB=beb,
                BDC=fit(budget, rows * bke, slice_d), BKE=bke, BR=br, BN=bn, BKC=bkc)


def _check(name: str, t: torch.Tensor | None, shape: tuple, device: torch.device, optional: bool = False) -> None:
    if t is None:
        if optional:
            return
        raise ValueError(f"fused_block_step: `{name}` is required")
    if tuple(t.shape) != shape or t.device != device or not t.is_floating_point():
        raise ValueError(f"fused_block_step: `{name}` must be a floating tensor of shape {shape} on {device}; got "
                         f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}")


def fused_block_step(h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor, w: BlockStepWeights,
                     out: torch.Tensor | None = None, config: BlockStepConfig | None = None) -> torch.Tensor:
    """One step of ``h + Mamba(RMSNorm(h))``; updates ``conv_state`` and ``ssm_state`` in place.

    h: (batch, d_model), the residual stream (float32, or float64); conv_state: (batch, d_inner, d_conv - 1) in
    the weights' dtype; ssm_state: (batch, d_inner, d_state), float32 (float64 for a float64 model). Returns
    ``out`` (batch, d_model) in h's dtype: a new tensor, or the given one (which may be h itself).
    """
    batch, d_model = h.shape
    d_inner, d_conv = w.conv_weight.shape
    d_state, dt_rank = w.A_log.shape[1], w.dt_proj_weight.shape[1]
    dev = h.device
    _check("norm_weight", w.norm_weight, (d_model,), dev)
    _check("in_proj_weight", w.in_proj_weight, (2 * d_inner, d_model), dev)
    _check("in_proj_bias", w.in_proj_bias, (2 * d_inner,), dev, optional=True)
    _check("conv_bias", w.conv_bias, (d_inner,), dev, optional=True)
    _check("x_proj_weight", w.x_proj_weight, (dt_rank + 2 * d_state, d_inner), dev)
    _check("dt_proj_weight", w.dt_proj_weight, (d_inner, dt_rank), dev)
    _check("dt_proj_bias", w.dt_proj_bias, (d_inner,), dev)
    _check("A_log", w.A_log, (d_inner, d_state), dev)
    _check("D", w.D, (d_inner,), dev)
    _check("out_proj_weight", w.out_proj_weight, (d_model, d_inner), dev)
    _check("out_proj_bias", w.out_proj_bias, (d_model,), dev, optional=True)
    _check("conv_state", conv_state, (batch, d_inner, d_conv - 1), dev)
    _check("ssm_state", ssm_state, (batch, d_inner, d_state), dev)
    if out is None:
        out = torch.empty_like(h)
    _check("out", out, (batch, d_model), dev)
    for name, t in (("h", h), ("out", out), ("conv_state", conv_state), ("ssm_state", ssm_state)):
        if t.stride(-1) != 1:
            raise ValueError(f"fused_block_step: `{name}` must have a unit stride in its last dimension")
    if conv_state.shape[-1] > 1 and conv_state.stride(1) < conv_state.shape[-1]:
        raise ValueError("fused_block_step: `conv_state` channels must not overlap (stride(1) >= d_conv - 1)")
    ws = {f.name: getattr(w, f.name) for f in fields(w) if f.name != "norm_eps"}
    ws = {name: t.contiguous() if t is not None else None for name, t in ws.items()}
    weight_bytes = sum(t.numel() * t.element_size() for t in ws.values() if t is not None)
    cfg = pick_config(batch, d_model, d_inner, weight_bytes, dev, config)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    rows, split = cfg.rows, cfg.split
    tiles = triton.cdiv(batch, rows)
    n_xdbl = dt_rank + 2 * d_state
    # scratch (L2-resident): x after the conv, z, y, each (batch, d_inner), and x_proj partials (split, batch, n)
    scratch = torch.empty(3 * batch * d_inner + split * batch * n_xdbl, dtype=acc, device=dev)
    x_buf, z_buf, y_buf = scratch[:3 * batch * d_inner].view(3, batch, d_inner)
    xdbl = scratch[3 * batch * d_inner:]
    counters = _barrier_counters(dev, split, tiles) if cfg.fused and split > 1 else xdbl
    # Slices of d_inner and d_model as even as they go: every program busy.
    slice_e, slice_d = triton.cdiv(d_inner, split), triton.cdiv(d_model, split)

    def opt(name: str) -> torch.Tensor:  # an absent bias: any pointer, never read
        return ws[name] if ws[name] is not None else ws["norm_weight"]

    args = (h, out, conv_state, ssm_state, ws["norm_weight"], ws["in_proj_weight"], opt("in_proj_bias"),
            ws["conv_weight"], opt("conv_bias"), ws["x_proj_weight"], ws["dt_proj_weight"], ws["dt_proj_bias"],
            ws["A_log"], ws["D"], ws["out_proj_weight"], opt("out_proj_bias"), x_buf, z_buf, y_buf, xdbl, counters,
            batch, d_model, d_inner, dt_rank, d_state, float(w.norm_eps), slice_e, slice_d,
            h.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), ssm_state.stride(0),
            ssm_state.stride(1))
    meta = dict(**tile_sizes(rows, slice_e, slice_d, d_model, d_inner, dt_rank, d_state, d_conv, cfg.num_warps),
                K=d_conv,
                SPLIT=split, HAS_IN_BIAS=w.in_proj_bias is not None, HAS_CONV_BIAS=w.conv_bias is not None,
                HAS_OUT_BIAS=w.out_proj_bias is not None, ACC=_tl_dtype(acc), num_warps=cfg.num_warps)
    grid = (tiles, split)
    if cfg.fused:
        _block_step_kernel[grid](*args, FIRST=0, LAST=2, **meta)
    else:
        for phase in range(3):
            _block_step_kernel[grid](*args, FIRST=phase, LAST=phase, **meta)
    return out
