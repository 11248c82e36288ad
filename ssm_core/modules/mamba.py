"""The Mamba block (Gu & Dao 2023): in_proj -> causal depthwise conv -> SiLU -> x_proj -> selective scan -> out_proj.

Three ways to run it, all computing the same function of the sequence:
- ``forward(x)``: the whole sequence at once (training);
- ``forward(x, state)``: one chunk of a longer sequence, carrying ``state`` (conv inputs and SSM state) across
  chunks, so memory does not grow with the total length;
- ``step(x_t, state)``: one time step (autoregressive generation).
``forward(x, cu_seqlens=cu)`` runs n sequences packed along seqlen (batch 1, ``ssm_core/utils/varlen.py``) as if
each ran alone: the conv and the scan restart at every sequence start.
Without autograd, a float32 CPU model runs the first two through fused numba kernels that read the projections in
their (batch, seqlen, channels) layout (``_ScanBranch.forward_time_major``), packs included; training uses
``selective_scan``.
``choose_backend`` (``ssm_core/ops/selective_scan.py``) decides, as it does for the scan and the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan, selective_state_update
from ..ops.selective_scan import choose_backend
from ..utils.varlen import check_cu_seqlens, sequence_ids


@dataclass
class MambaState:
    """Recurrent state of one Mamba block.

    conv: (batch, d_inner, d_conv - 1), the last inputs of the causal convolution (its left context);
    ssm: (batch, d_inner, d_state), float32, the selective-scan state.
    """
    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba(nn.Module):
    """One Mamba mixer: (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    ``selective=False`` is the paper's ablation: Δ, B and C are learned parameters instead of functions of the
    input (an LTI, S4D-like layer with the same gating). ``bidirectional=True`` adds a second scan over the
    reversed sequence (Caduceus-style BiMamba) that shares in_proj and out_proj; it has no step/chunked mode.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 selective: bool = True, bidirectional: bool = False, scan_backend: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.selective, self.bidirectional, self.scan_backend = selective, bidirectional, scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.fwd = _ScanBranch(self, conv_bias, dt_min, dt_max, dt_init_floor)
        self.rev = _ScanBranch(self, conv_bias, dt_min, dt_max, dt_init_floor) if bidirectional else None

    def forward(self, hidden: torch.Tensor, state: MambaState | None = None, cu_seqlens: torch.Tensor | None = None):
        """hidden: (batch, seqlen, d_model). Returns (batch, seqlen, d_model); with ``state``, also the new state.
        cu_seqlens: (n + 1,) int32, n sequences packed in hidden (1, seqlen, d_model), each processed alone."""
        if state is not None and self.bidirectional:
            raise ValueError("a bidirectional Mamba sees the whole sequence: it has no chunked or step mode")
        if cu_seqlens is not None:
            if state is not None:
                raise ValueError("Mamba: packed sequences (cu_seqlens) are processed whole; there is no chunked "
                                 "mode with a state for them")
            check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.shape[1], hidden.device, "Mamba")
        if self._forward_backend(hidden) == "cpu_fused":  # .float(): under autocast the projections are bf16
            y, new_state = self.fwd.forward_time_major(self.in_proj(hidden).float(), state, cu_seqlens)
            out = self.out_proj(y)
            return out if state is None else (out, new_state)
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)   # (batch, d_inner, seqlen) each
        if self.bidirectional:  # reversed, a pack holds the reversed sequences in reverse order
            rev_cu = None if cu_seqlens is None else hidden.shape[1] - cu_seqlens.flip(0)
            y = self.fwd(x, z, cu_seqlens=cu_seqlens) + self.rev(x.flip(-1), z.flip(-1), cu_seqlens=rev_cu).flip(-1)
            return self.out_proj(y.transpose(1, 2))
        if state is None:
            return self.out_proj(self.fwd(x, z, cu_seqlens=cu_seqlens).transpose(1, 2))
        y, new_state = self.fwd(x, z, state)
        return self.out_proj(y.transpose(1, 2)), new_state

    def _forward_backend(self, hidden: torch.Tensor) -> str:
        """"cpu_fused" (``_ScanBranch.forward_time_major``) or "unfused", as ``choose_backend`` decides."""
        fusable = (hidden.dtype == torch.float32 and self.in_proj.weight.dtype == torch.float32 and self.selective
                   and not self.bidirectional)
        return choose_backend(self.scan_backend, hidden.device, "block_forward", fusable=fusable,
                              grad=torch.is_grad_enabled())

    def step(self, hidden: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One time step. hidden: (batch, d_model); ``state`` is updated in place. Returns (batch, d_model)."""
        if self.bidirectional:
            raise ValueError("a bidirectional Mamba sees the whole sequence: it has no step mode")
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                  # (batch, d_inner) each
        return self.out_proj(self.fwd.step(x, z, state))

    def allocate_state(self, batch: int, device=None, dtype=None) -> MambaState:
        w = self.in_proj.weight
        dtype = dtype or w.dtype
        return MambaState(  # the SSM state accumulates in float32 (float64 for a float64 model)
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device or w.device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device or w.device,
                            dtype=torch.float64 if dtype == torch.float64 else torch.float32))


class _ScanBranch(nn.Module):
    """Conv + selective scan of one direction; the parameters a bidirectional block does not share."""

    def __init__(self, block: Mamba, conv_bias: bool, dt_min: float, dt_max: float, dt_init_floor: float):
        super().__init__()
        d_inner, d_state, dt_rank = block.d_inner, block.d_state, block.dt_rank
        self.selective, self.scan_backend = block.selective, block.scan_backend
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, block.d_conv, groups=d_inner, bias=conv_bias,
                                padding=block.d_conv - 1)
        if self.selective:
            self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            dt_bias = self.dt_proj.bias
        else:  # the ablation: Δ = softplus(dt_bias), B and C fixed per channel group, none depend on the input
            self.B = nn.Parameter(torch.randn(d_state) / math.sqrt(d_state))
            self.C = nn.Parameter(torch.randn(d_state) / math.sqrt(d_state))
            self.dt_bias = nn.Parameter(torch.empty(d_inner))
            dt_bias = self.dt_bias
        # dt log-uniform in [dt_min, dt_max], stored as the inverse softplus so that softplus(bias) = dt.
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_bias._no_reinit = True
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    def _ssm_params(self, x: torch.Tensor):
        """x: (batch, d_inner, seqlen) after the conv -> delta (batch, d_inner, seqlen), B, C (batch, d_state, seqlen)."""
        batch, _, seqlen = x.shape
        if not self.selective:
            delta = torch.zeros_like(x)
            B = self.B.to(x.dtype)[None, :, None].expand(batch, -1, seqlen)
            C = self.C.to(x.dtype)[None, :, None].expand(batch, -1, seqlen)
            return delta, B, C, self.dt_bias
        x_dbl = self.x_proj(x.transpose(1, 2))                                      # (batch, seqlen, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)                      # (batch, d_inner, seqlen)
        return delta, B.transpose(1, 2), C.transpose(1, 2), self.dt_proj.bias

    def forward(self, x, z, state: MambaState | None = None, cu_seqlens: torch.Tensor | None = None):
        """x, z: (batch, d_inner, seqlen). Returns y (batch, d_inner, seqlen) [and the new state].
        cu_seqlens (checked by the caller; then no state): the packed sequences of x (1, d_inner, seqlen)."""
        seqlen = x.shape[-1]
        if cu_seqlens is not None:
            x_conv = self._packed_conv(x, cu_seqlens)
        elif state is None:
            x_conv = self.conv1d(x)[..., :seqlen]
        else:  # the previous chunk's last inputs are this chunk's left context
            x_ctx = torch.cat([state.conv.to(x.dtype), x], dim=-1)
            x_conv = F.conv1d(x_ctx, self.conv1d.weight, self.conv1d.bias, groups=x.shape[1])
        x_conv = F.silu(x_conv)
        delta, B, C, delta_bias = self._ssm_params(x_conv)
        A = -torch.exp(self.A_log.float())
        if state is None:
            return selective_scan(x_conv, delta, A, B, C, self.D.float(), z, delta_bias.float(),
                                  delta_softplus=True, backend=self.scan_backend, cu_seqlens=cu_seqlens)
        y, last = selective_scan(x_conv, delta, A, B, C, self.D.float(), z, delta_bias.float(),
                                 delta_softplus=True, initial_state=state.ssm, return_last_state=True,
                                 backend=self.scan_backend)
        return y, MambaState(conv=self._next_conv_context(state.conv, x), ssm=last)

    def _packed_conv(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """The causal conv of each packed sequence of x (1, d_inner, seqlen) alone: every sequence is moved behind
        its own d_conv - 1 zeros (the left padding it gets alone), one conv runs over that, and each position's
        output is read back. Returns (1, d_inner, seqlen)."""
        width = self.conv1d.kernel_size[0] - 1
        seqlen = x.shape[-1]
        slot = torch.arange(seqlen, device=x.device) + width * (sequence_ids(cu_seqlens, seqlen).long() + 1)
        spread = x.new_zeros(*x.shape[:2], seqlen + width * (cu_seqlens.numel() - 1)).index_copy(-1, slot, x)
        return F.conv1d(spread, self.conv1d.weight, self.conv1d.bias, groups=x.shape[1])[..., slot - width]

    def _next_conv_context(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The conv's left context for the next chunk: the last d_conv - 1 inputs of (context, x), both
        (batch, d_inner, ...)."""
        width = self.conv1d.kernel_size[0] - 1
        return torch.cat([context.to(x.dtype), x], dim=-1)[..., -width:] if width else context

    def forward_time_major(self, xz: torch.Tensor, state: MambaState | None = None,
                           cu_seqlens: torch.Tensor | None = None):
        """Inference-only forward on in_proj's output as it comes, xz (batch, seqlen, 2 d_inner) = [x | z],
        through the numba kernels (conv + SiLU, then the scan fused with dt_proj, softplus, D and the gate): no
        transposes and no autograd checkpoints. Returns y (batch, seqlen, d_inner) and the new state (None without
        ``state``). Float32 only; the same function as ``forward``, packed sequences (``cu_seqlens``, checked by
        the caller, no ``state``) included."""
        from ..ops.scan_cpu import causal_conv1d_silu_time_major, selective_scan_time_major

        batch, seqlen, _ = xz.shape
        d_inner = self.D.shape[0]
        width = self.conv1d.kernel_size[0] - 1
        context = state.conv if state is not None else xz.new_zeros(batch, d_inner, width)
        u = causal_conv1d_silu_time_major(xz, d_inner, self.conv1d.weight, self.conv1d.bias, context, cu_seqlens)
        x_dbl = self.x_proj(u).float()                                             # (batch, seqlen, R + 2N)
        h0 = state.ssm if state is not None else xz.new_zeros(batch, d_inner, self.d_state)
        y, last = selective_scan_time_major(u, x_dbl, xz, d_inner, self.dt_proj.weight, self.dt_proj.bias,
                                            -torch.exp(self.A_log.float()), self.D, h0, out=u, cu_seqlens=cu_seqlens)
        if state is None:
            return y, None
        x_tail = xz[:, max(0, seqlen - width):, :d_inner].transpose(1, 2)
        return y, MambaState(conv=self._next_conv_context(state.conv, x_tail), ssm=last)

    def step(self, x, z, state: MambaState):
        """x, z: (batch, d_inner) for one time step; updates ``state`` in place; returns y (batch, d_inner)."""
        window = torch.cat([state.conv, x.unsqueeze(-1).to(state.conv.dtype)], dim=-1)    # (batch, d_inner, d_conv)
        state.conv.copy_(window[..., 1:])
        x_conv = (window * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x_conv = x_conv + self.conv1d.bias
        x_conv = F.silu(x_conv).to(x.dtype)
        delta, B, C, delta_bias = self._ssm_params(x_conv.unsqueeze(-1))
        A = -torch.exp(self.A_log.float())
        return selective_state_update(state.ssm, x_conv, delta[..., 0], A, B[..., 0], C[..., 0], self.D.float(), z,
                                      dt_bias=delta_bias.float(), dt_softplus=True, backend=self.scan_backend)
