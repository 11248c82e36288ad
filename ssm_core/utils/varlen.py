"""Packed variable-length sequences (``cu_seqlens``): the checks, the per-position index and the per-sequence
pooling shared by the scans, the Mamba block, the classifier and the packed readers of the domain packages.

A pack holds n sequences back to back along seqlen, with batch 1. ``cu_seqlens`` is a 1-D int32 tensor of the
n + 1 cumulative lengths: sequence i occupies positions ``cu_seqlens[i]:cu_seqlens[i + 1]``. Zero-length sequences
are allowed (equal neighbours): a scan gives such a sequence its initial state as its last state.
"""
from __future__ import annotations

import torch


class CuSeqlensError(ValueError):
    """``cu_seqlens`` is not a valid description of the packed inputs it comes with."""


def check_cu_seqlens(cu_seqlens, batch: int, seqlen: int, device: torch.device, where: str) -> None:
    """Raise CuSeqlensError saying what is wrong: type, dtype, shape, device, batch != 1, or values that do not
    start at 0, decrease, or do not end at seqlen. The values are read to the host (a sync on a GPU) once per
    tensor and seqlen: a model checks the same tensor in every layer, and it is read again only if changed."""
    def fail(what: str) -> None:
        raise CuSeqlensError(f"{where}: `cu_seqlens` {what}")

    if not isinstance(cu_seqlens, torch.Tensor):
        fail(f"must be a torch.Tensor; got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        fail(f"must be 1-D with n + 1 >= 2 entries (n sequences); got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype != torch.int32:
        fail(f"must be int32; got {cu_seqlens.dtype}")
    if cu_seqlens.device != device:
        fail(f"must be on the inputs' device {device}; got {cu_seqlens.device}")
    if batch != 1:
        fail(f"packs the sequences along seqlen, so batch must be 1; got batch {batch}")
    # _version counts in-place changes; data_ptr tells a copy (e.g. unpickled with the attribute) from the original
    checked = (cu_seqlens.data_ptr(), cu_seqlens._version, seqlen)
    if getattr(cu_seqlens, "_ssm_checked", None) == checked:
        return
    cu = cu_seqlens.cpu()
    if cu[0] != 0:
        fail(f"must start at 0; got cu_seqlens[0] = {cu[0].item()}")
    steps = cu.diff()
    if (steps < 0).any():
        i = int((steps < 0).nonzero()[0])
        fail(f"must be non-decreasing; got cu_seqlens[{i + 1}] = {cu[i + 1].item()} < "
             f"cu_seqlens[{i}] = {cu[i].item()}")
    if cu[-1] != seqlen:
        fail(f"must end at seqlen = {seqlen}; got cu_seqlens[-1] = {cu[-1].item()}")
    cu_seqlens._ssm_checked = checked


def sequence_ids(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int32: the index of the sequence each position belongs to (zero-length sequences own none)."""
    positions = torch.arange(seqlen, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True, out_int32=True)


def cu_seqlens_of(lengths, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n + 1,) int32 cumulative lengths of n sequence lengths (a list or a 1-D tensor)."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32).to(device)


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str = "mean",
                where: str = "pool_packed") -> torch.Tensor:
    """hidden (1, seqlen, d_model) of the n sequences that cu_seqlens (n + 1,) packs -> (n, d_model): each
    sequence's last position (``pooling="last"``) or the mean over its own positions. Every sequence needs at least
    one position (CuSeqlensError naming ``where`` and the sequence otherwise)."""
    lengths = cu_seqlens.diff()
    if (lengths == 0).any():
        i = int((lengths == 0).nonzero()[0])
        raise CuSeqlensError(f"{where}: sequence {i} of `cu_seqlens` is empty; pooling needs at least one position "
                             "per sequence")
    if pooling == "last":
        return hidden[0, cu_seqlens[1:].long() - 1]
    ids = sequence_ids(cu_seqlens, hidden.shape[1]).long()
    sums = hidden.new_zeros(lengths.numel(), hidden.shape[-1]).index_add(0, ids, hidden[0])
    return sums / lengths[:, None].to(hidden.dtype)
