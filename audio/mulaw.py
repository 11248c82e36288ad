"""8-bit quantisation of waveforms: mu-law (the SaShiMi/WaveNet default) or linear.

Waveforms are float tensors in [-1, 1]; codes are int64 in [0, 2**bits). Mu-law goes through
``torchaudio.functional.mu_law_encoding`` / ``mu_law_decoding`` so that our codes are the ones the
audio literature (and the s4 repository) uses; linear quantisation maps [-1, 1] onto evenly spaced levels.
Note that mu-law has no code for exact zero: silence encodes to the middle code ``2**(bits-1)``, which
decodes to a tiny positive value (about 8.6e-5 for 8 bits).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
import torchaudio.functional as AF

# How codes map to waveforms: the one name (``quantization``, as in SashimiConfig and model.json) and type.
Quantization = Literal["mulaw", "linear"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)


def _levels(bits: int) -> int:
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    return 2**bits


def quantize(wave: torch.Tensor, bits: int = 8, quantization: Quantization = "mulaw") -> torch.Tensor:
    """Map a waveform in [-1, 1] (any shape; values outside are clipped) to integer codes.

    Returns a LongTensor of the same shape with values in [0, 2**bits).
    """
    levels = _levels(bits)
    wave = wave.float().clamp(-1.0, 1.0)
    if quantization == "mulaw":
        return AF.mu_law_encoding(wave, levels)
    if quantization == "linear":
        return torch.round((wave + 1.0) * 0.5 * (levels - 1)).long()
    raise ValueError(f"unknown quantization mode {quantization!r}: expected one of {QUANTIZATIONS}")


def dequantize(codes: torch.Tensor, bits: int = 8, quantization: Quantization = "mulaw") -> torch.Tensor:
    """Inverse of :func:`quantize`: integer codes in [0, 2**bits) -> float32 waveform in [-1, 1]."""
    levels = _levels(bits)
    if codes.is_floating_point():
        raise TypeError("dequantize expects integer codes, got a floating-point tensor")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= levels):
        raise ValueError(f"codes must lie in [0, {levels}), got range [{int(codes.min())}, {int(codes.max())}]")
    if quantization == "mulaw":
        return AF.mu_law_decoding(codes, levels).float()
    if quantization == "linear":
        return codes.float() / (levels - 1) * 2.0 - 1.0
    raise ValueError(f"unknown quantization mode {quantization!r}: expected one of {QUANTIZATIONS}")
