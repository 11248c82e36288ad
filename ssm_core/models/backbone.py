"""Residual Mamba backbone and its heads.

embedding -> n_layer x (RMSNorm -> Mamba, residual stream kept in float32) -> final RMSNorm, then either a
next-token head (tied to the embedding) or a sequence-classification head (last or mean pooling).
Every model runs in three modes that agree: full sequence, chunks carrying state, one step at a time. A full
sequence may also be a pack of n sequences (``cu_seqlens``, batch 1: ``ssm_core/utils/varlen.py``), each processed
as if alone; the classifier then returns one row of logits per sequence.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..modules.mamba import Mamba, MambaState
from ..ops.selective_scan import choose_backend
from ..utils.varlen import check_cu_seqlens, pool_packed
from .config import MambaConfig
from .io import PretrainedModel
from .registry import register_model


class ResidualBlock(nn.Module):
    """h -> h + Mamba(RMSNorm(h)), with h (batch, seqlen, d_model) kept in float32 (float64 in a float64 model)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        c = config
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.mixer = Mamba(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_rank, c.dt_min, c.dt_max, c.dt_init_floor,
                           c.conv_bias, c.bias, c.selective, c.bidirectional, c.scan_backend)
        # On CUDA, step() runs the whole block as one Triton kernel (ssm_core/ops/block_step_triton.py) when no
        # gradient is wanted (the kernel has no backward): choose_backend decides. Per block, set_fused_step turns
        # it off (the unfused path of ~10 kernels) or lowers the batch it takes. One block step on an H100
        # (benchmarks/audio_generation.py --sweep), fused vs unfused: 7-15 us vs 25-28 us at batch 1, 11-47 us vs
        # 43-54 us at batch 64.
        self.fused_step = True
        self.fused_step_max_batch = 1 << 20

    def forward(self, h: torch.Tensor, state: MambaState | None = None, cu_seqlens: torch.Tensor | None = None):
        x = self.norm(h.to(self.norm.weight.dtype))
        if state is None:
            return h + self.mixer(x, cu_seqlens=cu_seqlens).to(h.dtype)
        y, new_state = self.mixer(x, state, cu_seqlens=cu_seqlens)
        return h + y.to(h.dtype), new_state

    def step(self, h: torch.Tensor, state: MambaState) -> torch.Tensor:
        """h: (batch, d_model) residual stream; ``state`` updated in place. Returns the new h (a new tensor)."""
        fusable = (self.fused_step and h.shape[0] <= self.fused_step_max_batch and self.mixer.selective
                   and not self.mixer.bidirectional and self.norm.weight is not None)
        grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in self.parameters()))
        # "auto", not the mixer's scan_backend: the fused step answers to its own switch (fused_step)
        if choose_backend("auto", h.device, "block_step", fusable=fusable, grad=grad) == "triton_fused":
            from ..ops.block_step_triton import fused_block_step
            return fused_block_step(h, state.conv, state.ssm, self.step_weights())
        return h + self.mixer.step(self.norm(h.to(self.norm.weight.dtype)), state).to(h.dtype)

    def step_weights(self):
        """The parameters the fused step reads (``BlockStepWeights``), as views of this block's own."""
        from ..ops.block_step_triton import BlockStepWeights
        m, branch = self.mixer, self.mixer.fwd
        eps = self.norm.eps if self.norm.eps is not None else torch.finfo(self.norm.weight.dtype).eps
        return BlockStepWeights(
            norm_weight=self.norm.weight, norm_eps=eps, in_proj_weight=m.in_proj.weight, in_proj_bias=m.in_proj.bias,
            conv_weight=branch.conv1d.weight[:, 0, :], conv_bias=branch.conv1d.bias,
            x_proj_weight=branch.x_proj.weight, dt_proj_weight=branch.dt_proj.weight,
            dt_proj_bias=branch.dt_proj.bias, A_log=branch.A_log, D=branch.D, out_proj_weight=m.out_proj.weight,
            out_proj_bias=m.out_proj.bias)


def set_fused_step(module: nn.Module, enabled: bool, max_batch: int | None = None) -> None:
    """Turn the one-kernel CUDA step of every ResidualBlock inside ``module`` on or off; ``max_batch`` also sets
    the largest batch it takes (default: leave each block's fused_step_max_batch)."""
    for block in module.modules():
        if isinstance(block, ResidualBlock):
            block.fused_step = enabled
            if max_batch is not None:
                block.fused_step_max_batch = max_batch


def residual_dtype(x: torch.Tensor) -> torch.dtype:
    """The residual stream's dtype: float32, or float64 for a float64 model (never bf16/fp16)."""
    return torch.promote_types(x.dtype, torch.float32)


class MambaBackbone(nn.Module):
    """input_ids (batch, seqlen) -> hidden states (batch, seqlen, d_model), float32."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(ResidualBlock(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False  # recompute each layer in the backward (needed at seqlen 2^20)

    def forward(self, input_ids: torch.Tensor, states: list[MambaState] | None = None,
                cu_seqlens: torch.Tensor | None = None):
        """With ``states`` (from ``allocate_states``), processes one chunk and returns (hidden, new_states).
        With ``cu_seqlens`` ((n + 1,) int32), input_ids (1, seqlen) packs n sequences, each processed alone."""
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, input_ids.shape[0], input_ids.shape[1], input_ids.device, "MambaBackbone")
        h = self.embedding(input_ids)
        h = h.to(residual_dtype(h))
        if states is not None:
            new_states = []
            for layer, state in zip(self.layers, states):
                h, s = layer(h, state, cu_seqlens=cu_seqlens)
                new_states.append(s)
            return self.norm_f(h.to(self.norm_f.weight.dtype)), new_states
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, cu_seqlens=cu_seqlens, use_reentrant=False)
            else:
                h = layer(h, cu_seqlens=cu_seqlens)
        return self.norm_f(h.to(self.norm_f.weight.dtype))

    def step(self, input_ids: torch.Tensor, states: list[MambaState]) -> torch.Tensor:
        """input_ids: (batch,) one token per sequence; ``states`` updated in place. Returns (batch, d_model)."""
        h = self.embedding(input_ids)
        h = h.to(residual_dtype(h))
        for layer, state in zip(self.layers, states):
            h = layer.step(h, state)
        return self.norm_f(h.to(self.norm_f.weight.dtype))

    def allocate_states(self, batch: int, device=None, dtype=None) -> list[MambaState]:
        return [layer.mixer.allocate_state(batch, device, dtype) for layer in self.layers]

    def stream(self, input_ids: torch.Tensor, chunk_size: int):
        """Yield the hidden states (batch, chunk, d_model) of successive chunks of a long sequence, carrying state:
        the concatenation equals ``forward(input_ids)``, and memory depends on ``chunk_size`` only."""
        states = self.allocate_states(input_ids.shape[0], input_ids.device)
        for start in range(0, input_ids.shape[1], chunk_size):
            h, states = self(input_ids[:, start:start + chunk_size], states)
            yield h

    def pooled(self, input_ids: torch.Tensor, pooling: str = "mean", chunk_size: int | None = None) -> torch.Tensor:
        """The last or the mean hidden state, (batch, d_model), of input_ids (batch, seqlen); a sequence longer than
        ``chunk_size`` is read chunk by chunk (:meth:`stream`), so memory depends on the chunk, not on seqlen."""
        if chunk_size is None or input_ids.shape[1] <= chunk_size:
            h = self(input_ids)
            return h[:, -1] if pooling == "last" else h.mean(1)
        total, last = None, None
        for h in self.stream(input_ids, chunk_size):
            total = h.sum(1) if total is None else total + h.sum(1)
            last = h[:, -1]
        return last if pooling == "last" else total / input_ids.shape[1]


def init_weights(model: nn.Module, n_layer: int) -> None:
    """The reference implementation's initialisation: zero biases (except dt's), N(0, 0.02) embeddings, and
    out_proj weights scaled by 1/sqrt(n_layer) so the residual stream's variance does not grow with depth."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("out_proj.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_layer)


@register_model("ssm_core.MambaLMHeadModel", "a Mamba language model")
class MambaLMHeadModel(nn.Module, PretrainedModel):
    """Next-token model: input_ids (batch, seqlen) -> logits (batch, seqlen, padded_vocab_size)."""

    config_class = MambaConfig

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        init_weights(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, states: list[MambaState] | None = None,
                cu_seqlens: torch.Tensor | None = None):
        if states is None:
            return self.lm_head(self.backbone(input_ids, cu_seqlens=cu_seqlens))
        h, states = self.backbone(input_ids, states, cu_seqlens=cu_seqlens)
        return self.lm_head(h), states

    def step(self, input_ids: torch.Tensor, states: list[MambaState]) -> torch.Tensor:
        """input_ids: (batch,) -> logits (batch, padded_vocab_size); ``states`` updated in place."""
        return self.lm_head(self.backbone.step(input_ids, states))

    def allocate_states(self, batch: int, device=None, dtype=None) -> list[MambaState]:
        return self.backbone.allocate_states(batch, device, dtype)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n_new: int, temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``n_new`` tokens after ``prompt`` (batch, prompt_len >= 1) in step mode: the prompt is read in
        one chunked pass, then one step per new token. Returns (batch, prompt_len + n_new)."""
        states = self.allocate_states(prompt.shape[0], prompt.device)
        logits, states = self(prompt, states)
        nxt = sample_logits(logits[:, -1, :self.config.vocab_size], temperature, top_p, generator)
        out = [prompt, nxt[:, None]]
        for _ in range(n_new - 1):
            logits = self.step(nxt, states)[:, :self.config.vocab_size]
            nxt = sample_logits(logits, temperature, top_p, generator)
            out.append(nxt[:, None])
        return torch.cat(out, dim=1)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (batch, vocab) -> sampled ids (batch,). temperature 0 is greedy; top_p < 1 keeps the smallest set of
    tokens whose probabilities add up to top_p (nucleus sampling)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p     # tokens after the nucleus is already full
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class RunningStandardize(nn.Module):
    """Standardise features with running statistics: (x - mean) / std per feature, no learnt affine.

    Why a classifier needs it: a mean over thousands of positions varies very little from one sequence to the
    next (the law of large numbers), so the head would need huge weights, grown at Adam's pace of about the
    learning rate per step, before the logits could differ between sequences; standardised, the pooled features
    vary by O(1) from the first step. Unlike BatchNorm it never normalises with the statistics of the batch at
    hand, so it behaves the same at micro-batch 1 (long windows under gradient accumulation), in a chunked
    forward and in evaluation. In training mode each batch updates the statistics (a cumulative average over the
    first ``1 / momentum`` batches, an exponential one after), without gradient, before they are applied. ``eps``
    is small because the variances it guards are: a mean over 2^20 positions varies by 1e-3 or less.

    x (batch, features) -> (batch, features).
    """

    def __init__(self, features: int, momentum: float = 0.02, eps: float = 1e-8):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("var", torch.ones(features))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                # a tensor, not a Python float: reading `batches` back would sync the GPU every step
                rate = (1.0 / (self.batches + 1)).clamp(min=self.momentum).to(self.mean.dtype)
                self.mean.lerp_(x.mean(0).to(self.mean.dtype), rate)
                self.var.lerp_(((x - self.mean) ** 2).mean(0).to(self.var.dtype), rate)
                self.batches += 1
        return (x - self.mean) * torch.rsqrt(self.var + self.eps)


@register_model("ssm_core.MambaSequenceClassifier", "a Mamba sequence classifier")
class MambaSequenceClassifier(nn.Module, PretrainedModel):
    """input_ids (batch, seqlen) -> class logits (batch, num_classes), pooling the last position or the mean
    (then, with ``config.standardize_pooled``, standardising the pooled features: :class:`RunningStandardize`).
    Packed (``cu_seqlens``): input_ids (1, seqlen) of n sequences -> (n, num_classes), pooled per sequence."""

    config_class = MambaConfig

    def __init__(self, config: MambaConfig):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError("MambaSequenceClassifier needs config.num_classes >= 1")
        self.config = config
        self.backbone = MambaBackbone(config)
        self.standardize = RunningStandardize(config.d_model) if config.standardize_pooled else nn.Identity()
        self.head = nn.Linear(config.d_model, config.num_classes)
        init_weights(self, config.n_layer)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model), mask (batch, seqlen) True at real tokens -> (batch, d_model)."""
        if mask is None:
            return hidden[:, -1] if self.config.pooling == "last" else hidden.mean(1)
        mask = mask.to(hidden.dtype)
        if self.config.pooling == "mean":
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(1)  # last real position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def pool_packed(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """hidden (1, seqlen, d_model) of the n sequences that cu_seqlens (n + 1,) packs -> (n, d_model), each
        pooled over its own positions. Every sequence needs at least one position."""
        return pool_packed(hidden, cu_seqlens, self.config.pooling, "MambaSequenceClassifier")

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (batch, d_model) -> logits (batch, num_classes)."""
        return self.head(self.standardize(pooled))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if cu_seqlens is None:
            return self.classify(self.pool(self.backbone(input_ids), mask))
        if mask is not None:
            raise ValueError("MambaSequenceClassifier: pass a mask (padded batch) or cu_seqlens (packed sequences), "
                             "not both")
        return self.classify(self.pool_packed(self.backbone(input_ids, cu_seqlens=cu_seqlens), cu_seqlens))

    @torch.no_grad()
    def forward_chunked(self, input_ids: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
        """Same logits as ``forward`` (no padding) with memory independent of seqlen: how a whole chromosome is
        classified on a laptop. input_ids (batch, seqlen) -> (batch, num_classes)."""
        return self.classify(self.backbone.pooled(input_ids, self.config.pooling, chunk_size))
