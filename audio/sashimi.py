"""SaShiMi's multi-scale U-Net (Goel et al. 2022) with Mamba blocks in place of its S4 + MLP blocks.

The waveform model of the Mamba paper's audio experiments. 8-bit codes ``(batch, seqlen)`` -> next-sample logits
``(batch, seqlen, 256)``. With two pooling factors of 4 the network has three levels::

    embedding (sample rate, width H)
      down group 0 (H) -----------------------------------------------------------------+ skip
      down-pool x4 -> width 2H                                                           |
        down group 1 (2H) ---------------------------------------------+ skip           |
        down-pool x4 -> width 4H                                        |                |
          centre group (4H), plus a residual around it                 |                |
        up-pool x4 (shifted one coarse step) -> width 2H  +  skip <----+                |
        up group 1 (2H), plus a residual around it                                       |
      up-pool x4 (shifted one coarse step) -> width H  +  skip <-------------------------+
      up group 0 (H), plus a residual around it
    RMSNorm -> linear head (256 classes)

Each group is a stack of the suite's residual Mamba blocks (``ssm_core.models.backbone.ResidualBlock``).
Down-pooling folds ``p`` consecutive steps into one (a reshape to ``(seqlen / p, p * H)``) and projects to the
wider width; up-pooling projects back to ``p * H`` and unfolds. The model stays autoregressive because the
up-pooled sequence is shifted right by one coarse step (zeros first): the fine steps ``p*k ... p*k + p - 1``
receive coarse step ``k - 1``, which has only read fine steps up to ``p*k - 1``.

The ``down_blocks`` groups are the U-Net variant of SaShiMi (its ``unet=True``): the s4 SC09 model has blocks
on the up path and in the centre only. Our reading of the Mamba paper's 6.1M SC09 model is five groups of 8
(down blocks included); see ``SashimiConfig.PRESETS``.

Recurrent mode (``step``): every level steps at its own rate. The outer level steps every sample; a level
below a pool of ``p`` steps once every ``p`` of its parent's steps, when its down-pool buffer is full, and
refills its parent's up-pool buffer with the next ``p`` outputs. Its state (``SashimiState``) holds each
block's Mamba state and the pooling buffers, all updated in place, so one step of the whole model can be
captured in a CUDA graph (one graph per phase ``t mod prod(pools)``, see ``audio.generate``). On CUDA each
block's step is one Triton kernel (``ResidualBlock.fused_step``).

Training input convention: the model reads ``[start, x_0, ..., x_{L-2}]`` and predicts ``x_0 ... x_{L-1}``, with
``start`` the code of silence (``shift_right``), so every sample of a clip is scored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssm_core.models.backbone import ResidualBlock, init_weights, set_fused_step
from ssm_core.models.config import MambaConfig
from ssm_core.models import PretrainedModel, register_model
from ssm_core.modules.mamba import MambaState


@dataclass
class SashimiConfig:
    """A SaShiMi U-Net of Mamba blocks.

    ``d_model`` is the outer width; each pool of factor ``p`` in ``pools`` multiplies the width by ``expand``.
    ``n_blocks`` residual Mamba blocks per group; ``down_blocks`` adds groups before each down-pool (the U-Net
    variant), giving ``2 * len(pools) + 1`` groups, else ``len(pools) + 1``. The Mamba blocks use ``d_state``,
    ``d_conv`` and ``mamba_expand`` (inner width = ``mamba_expand`` x block width).
    """
    d_model: int = 64
    n_blocks: int = 8
    pools: tuple[int, ...] = (4, 4)
    expand: int = 2
    down_blocks: bool = True
    d_state: int = 16
    d_conv: int = 4
    mamba_expand: int = 2
    bits: int = 8                       # 2**bits input codes and output classes
    quantization: str = "mulaw"         # how codes map to waveforms ("mulaw" or "linear"), see audio.mulaw
    norm_eps: float = 1e-5
    scan_backend: str = "auto"

    def __post_init__(self):
        self.pools = tuple(int(p) for p in self.pools)  # a JSON round trip gives a list
        for name in ("d_model", "n_blocks", "expand", "d_state", "d_conv", "mamba_expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SashimiConfig.{name} must be >= 1; got {getattr(self, name)}")
        if any(p < 2 for p in self.pools):
            raise ValueError(f"SashimiConfig.pools must be factors >= 2; got {self.pools}")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"SashimiConfig.bits must be in 1..16; got {self.bits}")
        if self.quantization not in ("mulaw", "linear"):
            raise ValueError(f"SashimiConfig.quantization must be 'mulaw' or 'linear'; got {self.quantization!r}")

    @property
    def n_classes(self) -> int:
        return 2 ** self.bits

    @property
    def start_code(self) -> int:
        """Code of silence, the first input of every sequence (mu-law and linear both put 0.0 mid-range)."""
        return self.n_classes // 2

    @property
    def stride(self) -> int:
        """Samples per step of the centre; training lengths must be multiples of it."""
        return math.prod(self.pools)

    @property
    def widths(self) -> list[int]:
        """Width of each level, outer first."""
        return [self.d_model * self.expand ** i for i in range(len(self.pools) + 1)]

    @property
    def n_groups(self) -> int:
        return (2 if self.down_blocks else 1) * len(self.pools) + 1

    # 'tiny' (CPU tests and demos), '6.1m' and '24.3m' (the Mamba paper's SC09 models, our reading: outer width
    # 64 / 96, pools 4 and 4, 8 / 15 blocks in each of the five groups): name -> overrides of the defaults
    PRESETS: ClassVar[dict[str, dict]] = {
        "tiny": dict(d_model=16, n_blocks=1, d_state=8),
        "6.1m": dict(d_model=64, n_blocks=8),
        "24.3m": dict(d_model=96, n_blocks=15),
    }

    @classmethod
    def from_preset(cls, name: str) -> "SashimiConfig":
        """The config of preset ``name`` (a key of :attr:`PRESETS`)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown SaShiMi preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**cls.PRESETS[name])


class DownPool(nn.Module):
    """(batch, seqlen, width) -> (batch, seqlen / pool, width * expand): fold ``pool`` steps, then project."""

    def __init__(self, width: int, pool: int, expand: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(width * pool, width * expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seqlen, width = x.shape
        return self.linear(x.reshape(batch, seqlen // self.pool, self.pool * width))


class UpPool(nn.Module):
    """(batch, seqlen, width * expand) -> (batch, seqlen * pool, width): project, shift one coarse step, unfold.

    The shift (zeros for the first ``pool`` outputs) is what keeps the U-Net causal.
    """

    def __init__(self, width: int, pool: int, expand: int):
        super().__init__()
        self.pool, self.width = pool, width
        self.linear = nn.Linear(width * expand, width * pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seqlen, _ = x.shape
        y = F.pad(self.linear(x)[:, :-1], (0, 0, 1, 0))
        return y.reshape(batch, seqlen * self.pool, self.width)

    def unfold_step(self, x: torch.Tensor) -> torch.Tensor:
        """One coarse step (batch, width * expand) -> the next ``pool`` fine inputs (batch, pool, width)."""
        return self.linear(x).view(x.shape[0], self.pool, self.width)


def _block_step(block: ResidualBlock, h: torch.Tensor, state: MambaState) -> torch.Tensor:
    return block.step(h, state)


class BlockGroup(nn.Module):
    """A stack of residual Mamba blocks at one width: (batch, seqlen, width) -> same, float32 residual stream."""

    def __init__(self, config: MambaConfig, n_blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(config) for _ in range(n_blocks))
        self.gradient_checkpointing = False  # recompute each block in the backward (long recordings)
        self.block_step = _block_step  # SashimiModel.compile_step swaps in a compiled version

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return h

    def step(self, h: torch.Tensor, states: list[MambaState]) -> torch.Tensor:
        """h: (batch, width); ``states`` updated in place."""
        for block, state in zip(self.blocks, states):
            h = self.block_step(block, h, state)
        return h

    def allocate_states(self, batch: int, device=None, dtype=None) -> list[MambaState]:
        return [block.mixer.allocate_state(batch, device, dtype) for block in self.blocks]


@dataclass
class SashimiState:
    """Recurrent state of the whole U-Net, updated in place by ``SashimiModel.step``.

    t: samples stepped so far (a Python int: it selects the pooling phase);
    down / up: per pool, buffers (batch, pool, width of the finer level) of the finer level's last outputs
    (waiting to be folded) and of its next up-pooled inputs; groups: the Mamba states of every group, keyed
    by the group's name (``down0``, ``centre``, ``up1``, ...).
    """
    t: int
    down: list[torch.Tensor]
    up: list[torch.Tensor]
    groups: dict[str, list[MambaState]] = field(default_factory=dict)


@register_model("audio.SashimiModel", "an audio waveform model")
class SashimiModel(nn.Module, PretrainedModel):
    """codes (batch, seqlen) in [0, 2**bits) -> logits (batch, seqlen, 2**bits); seqlen a multiple of ``stride``."""

    config_class = SashimiConfig

    def __init__(self, config: SashimiConfig):
        super().__init__()
        self.config = c = config
        widths = c.widths

        def group(level: int) -> BlockGroup:
            mamba = MambaConfig(d_model=widths[level], n_layer=c.n_blocks, vocab_size=c.n_classes,
                                d_state=c.d_state, d_conv=c.d_conv, expand=c.mamba_expand, norm_eps=c.norm_eps,
                                scan_backend=c.scan_backend)
            return BlockGroup(mamba, c.n_blocks)

        levels = range(len(c.pools))
        self.embedding = nn.Embedding(c.n_classes, c.d_model)
        self.down_groups = nn.ModuleList(group(i) if c.down_blocks else BlockGroup(MambaConfig(), 0) for i in levels)
        self.down_pools = nn.ModuleList(DownPool(widths[i], c.pools[i], c.expand) for i in levels)
        self.centre = group(len(c.pools))
        self.up_pools = nn.ModuleList(UpPool(widths[i], c.pools[i], c.expand) for i in levels)
        self.up_groups = nn.ModuleList(group(i) for i in levels)
        self.norm_f = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.head = nn.Linear(c.d_model, c.n_classes)
        init_weights(self, c.n_blocks * c.n_groups)

    # --- parallel (training) mode ----------------------------------------------------------------------------

    def _residual_dtype(self) -> torch.dtype:
        return torch.promote_types(self.embedding.weight.dtype, torch.float32)

    def _level(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Level ``i`` of the U-Net on its input h (batch, seqlen_i, width_i) -> (batch, seqlen_i, width_i)."""
        if i == len(self.config.pools):
            return self.centre(h) + h
        skip = self.down_groups[i](h)
        inner = self._level(i + 1, self.down_pools[i](skip.to(self.down_pools[i].linear.weight.dtype)))
        u = self.up_pools[i](inner.to(self.up_pools[i].linear.weight.dtype)) + skip
        return self.up_groups[i](u) + u

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        seqlen = codes.shape[1]
        if seqlen % self.config.stride:
            raise ValueError(f"SashimiModel: seqlen {seqlen} must be a multiple of the total pooling factor "
                             f"{self.config.stride}")
        h = self._level(0, self.embedding(codes).to(self._residual_dtype()))
        return self.head(self.norm_f(h.to(self.norm_f.weight.dtype)))

    # --- recurrent (generation) mode ---------------------------------------------------------------------------

    def allocate_state(self, batch: int, device=None, dtype=None) -> SashimiState:
        """A fresh state (zeros, t = 0): the model has seen nothing yet."""
        device = device or self.embedding.weight.device
        residual = torch.promote_types(dtype or self.embedding.weight.dtype, torch.float32)
        widths, pools = self.config.widths, self.config.pools
        groups = {f"down{i}": g.allocate_states(batch, device, dtype) for i, g in enumerate(self.down_groups)}
        groups["centre"] = self.centre.allocate_states(batch, device, dtype)
        groups.update({f"up{i}": g.allocate_states(batch, device, dtype) for i, g in enumerate(self.up_groups)})
        return SashimiState(
            t=0,
            down=[torch.zeros(batch, p, widths[i], device=device, dtype=residual) for i, p in enumerate(pools)],
            up=[torch.zeros(batch, p, widths[i], device=device, dtype=residual) for i, p in enumerate(pools)],
            groups=groups)

    def _step_level(self, i: int, h: torch.Tensor, state: SashimiState, t: int) -> torch.Tensor:
        """Step ``t`` of level ``i`` (its own clock): h (batch, width_i) -> (batch, width_i)."""
        if i == len(self.config.pools):
            return self.centre.step(h, state.groups["centre"]) + h
        pool = self.config.pools[i]
        phase = t % pool
        skip = self.down_groups[i].step(h, state.groups[f"down{i}"])
        u = state.up[i][:, phase] + skip          # read before a full buffer triggers the refill below
        state.down[i][:, phase].copy_(skip)
        if phase == pool - 1:                     # the buffer is full: the coarser level takes one step
            down_pool = self.down_pools[i].linear
            folded = down_pool(state.down[i].flatten(1).to(down_pool.weight.dtype))
            inner = self._step_level(i + 1, folded, state, t // pool)
            up_pool = self.up_pools[i]
            state.up[i].copy_(up_pool.unfold_step(inner.to(up_pool.linear.weight.dtype)))
        return self.up_groups[i].step(u, state.groups[f"up{i}"]) + u

    def compile_step(self) -> None:
        """Run every block's step through ``torch.compile`` (one compiled function shared by the blocks of each
        width): fuses the block's element-wise work into fewer kernels. Results agree with the eager step up
        to float rounding; the first steps pay the compilation. It replaces the one-kernel Triton step
        (``ResidualBlock.fused_step``), which is turned off: the two are alternatives."""
        set_fused_step(self, False)
        compiled = torch.compile(_block_step, dynamic=False)
        for group in (*self.down_groups, self.centre, *self.up_groups):
            group.block_step = compiled

    def step(self, codes: torch.Tensor, state: SashimiState) -> torch.Tensor:
        """One sample: codes (batch,) -> logits (batch, 2**bits) for the next sample; ``state`` updated in place."""
        h = self._step_level(0, self.embedding(codes).to(state.up[0].dtype), state, state.t)
        state.t += 1
        return self.head(self.norm_f(h.to(self.norm_f.weight.dtype)))


def shift_right(codes: torch.Tensor, start_code: int) -> torch.Tensor:
    """The model's input for predicting ``codes`` (batch, seqlen): ``start_code``, then codes[:, :-1]."""
    return torch.cat([torch.full_like(codes[:, :1], start_code), codes[:, :-1]], dim=1)


def next_sample_nll(model: nn.Module, codes: torch.Tensor, start_code: int) -> torch.Tensor:
    """Negative log-likelihood in nats of every sample under ``model`` (a SashimiModel, possibly DDP-wrapped):
    codes (batch, seqlen) -> (batch, seqlen), float32 (float64 for a float64 model)."""
    logits = model(shift_right(codes, start_code))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")


def parameter_count(model_or_config: nn.Module | SashimiConfig) -> int:
    model = model_or_config if isinstance(model_or_config, nn.Module) else SashimiModel(model_or_config)
    return sum(p.numel() for p in model.parameters())
