"""Plain-PyTorch selective scan: the oracle every faster backend is tested against.

It materialises the (batch, dim, seqlen, dstate) discretised tensors, so it is only for checking and for
small inputs. Pass float64 tensors to get a float64 result (the tests do); otherwise it accumulates in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, dstate, seqlen) or (batch, groups, dstate, seqlen) -> (batch, dim, dstate, seqlen)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None, return_last_state=False, cu_seqlens=None):
    """Selective scan by the definition, one time step after another.

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (batch, [groups,] dstate, seqlen);
    D, delta_bias: (dim,); initial_state: (batch, dim, dstate).
    With cu_seqlens ((n + 1,), batch 1): one sequence after another, each from zero or from initial_state[i]
    (initial_state and last_state are then (n, dim, dstate)).
    Returns out (batch, dim, seqlen) in u's dtype, and last_state (batch, dim, dstate) when asked.
    """
    dtype_in = u.dtype
    acc = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    batch, dim, seqlen = u.shape
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    B, C = expand_groups(B.to(acc), dim), expand_groups(C.to(acc), dim)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    deltaA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])                      # (batch, dim, seqlen, dstate)
    deltaB_u = (delta * u).unsqueeze(-1) * B.transpose(-1, -2)                   # (batch, dim, seqlen, dstate)
    n_seq = 1 if cu_seqlens is None else cu_seqlens.numel() - 1
    h0 = (initial_state.to(acc) if initial_state is not None
          else u.new_zeros(batch * n_seq, dim, A.shape[1]))
    if cu_seqlens is None:
        bounds, starts = [0, seqlen], [h0]
    else:
        bounds, starts = cu_seqlens.tolist(), [h.unsqueeze(0) for h in h0.unbind(0)]
    # unbind once: indexing [:, :, t] in the loop would make each step's backward allocate a full-size gradient
    steps = list(zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(3)))
    ys, lasts = [], []
    for i, h in enumerate(starts):
        for dA_t, dBu_t, C_t in steps[bounds[i]:bounds[i + 1]]:
            h = dA_t * h + dBu_t
            ys.append((h * C_t).sum(-1))
        lasts.append(h)
    h = torch.cat(lasts)
    y = torch.stack(ys, dim=-1) if seqlen else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    out = y.to(dtype_in)
    if return_last_state:
        return out, (h if acc == torch.float64 else h.float())
    return out


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step by the definition; updates ``state`` in place and returns y.

    state: (batch, dim, dstate); x, dt, z: (batch, dim); A: (dim, dstate);
    B, C: (batch, dstate) or (batch, groups, dstate); D, dt_bias: (dim,). Returns y (batch, dim) in x's dtype.
    """
    dim = x.shape[1]
    acc = state.dtype
    dt = dt.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    if B.dim() == 2:
        B, C = B[:, None], C[:, None]
    rep = dim // B.shape[1]
    B = B.to(acc).repeat_interleave(rep, dim=1)                                   # (batch, dim, dstate)
    C = C.to(acc).repeat_interleave(rep, dim=1)
    xa = x.to(acc)
    state.copy_(torch.exp(dt.unsqueeze(-1) * A.to(acc)) * state + (dt * xa).unsqueeze(-1) * B)
    y = (state * C).sum(-1)
    if D is not None:
        y = y + D.to(acc) * xa
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype)
