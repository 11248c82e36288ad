"""Model configuration: one typed dataclass, saved beside the weights as JSON."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MambaConfig:
    """A residual stack of Mamba blocks with a language-model or a sequence-classification head.

    The defaults follow the reference implementation (d_state 16, d_conv 4, expand 2, dt in [0.001, 0.1]).
    ``vocab_size`` is the tokenizer's; the embedding is padded to a multiple of ``pad_vocab_multiple``.
    """
    d_model: int = 128
    n_layer: int = 4
    vocab_size: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    selective: bool = True          # False: the paper's ablation, Δ, B, C independent of the input
    bidirectional: bool = False     # Caduceus-style BiMamba (no step/chunked inference)
    norm_eps: float = 1e-5
    pad_vocab_multiple: int = 8
    tie_embeddings: bool = True
    num_classes: int = 0            # > 0 for the sequence-classification head
    pooling: str = "last"           # "last" (causal models) or "mean"
    standardize_pooled: bool = False  # classifier: pooled features standardised (running statistics) before the head
    scan_backend: str = "auto"

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"MambaConfig.pooling must be 'last' or 'mean'; got {self.pooling!r}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m
