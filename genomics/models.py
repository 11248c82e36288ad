"""Model presets for DNA: the Mamba paper's small models of the great-apes species task, and a CPU-sized one.

=========  ========  =======  ===========  ======================================================
preset     n_layer   d_model  parameters   use
=========  ========  =======  ===========  ======================================================
``tiny``   2         48       40,272       tests, the notebook, CPU smoke runs
``1.4m``   12        128      1,401,472    the paper's "Mamba 1.4M" (HyenaDNA's 1.4M size class)
``7m``     16        256      7,012,608    the paper's "Mamba 7M"
=========  ========  =======  ===========  ======================================================

Our reading of the Mamba paper (§4.3.3 and appendix E.3): the species task compares HyenaDNA 1.4M with Mamba
1.4M and 7M; 12 blocks of width 128 and 16 blocks of width 256 with the standard block (expand 2, d_state 16,
d_conv 4) and the 9-token byte vocabulary give 1.40 M and 7.01 M parameters (counted with a tied LM head;
the classification head adds ``d_model x classes + classes``). ``python -m genomics presets`` prints them.

The suite ships a pretrained tiny backbone, ``dna-tiny`` (:data:`SHIPPED_BACKBONE`, in ``ssm_core/pretrained/``;
``benchmarks/dna_pretrain.py`` trains it): ``finetune`` starts from it unless told otherwise, and
``--init``/``--checkpoint`` take its name wherever they take a run directory.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from ssm_core import MambaConfig, MambaLMHeadModel, MambaSequenceClassifier
from ssm_core.models import ModelFileError
from ssm_core.models.io import resolve_model_dir
from ssm_core.train import CheckpointError, load_trained_model

from genomics.errors import GenomicsInputError
from genomics.tokenizer import VOCAB_SIZE

SHIPPED_BACKBONE = "dna-tiny"  # the pretrained backbone shipped with the suite: finetune's default --init

PRESETS: dict[str, dict] = {
    "tiny": {"n_layer": 2, "d_model": 48},
    "1.4m": {"n_layer": 12, "d_model": 128},
    "7m": {"n_layer": 16, "d_model": 256},
}


def preset_config(name: str, *, num_classes: int = 0, pooling: str = "last") -> MambaConfig:
    """The MambaConfig of preset ``name`` for the DNA vocabulary (an LM without ``num_classes``); a classifier
    standardises its pooled features before its head (``finetune --no-standardize`` turns that off)."""
    if name not in PRESETS:
        raise GenomicsInputError(f"unknown model preset {name!r}; presets are {sorted(PRESETS)}")
    return MambaConfig(vocab_size=VOCAB_SIZE, num_classes=num_classes, pooling=pooling,
                       standardize_pooled=num_classes > 0, **PRESETS[name])


def check_training_memory(model: MambaConfig, train, seqlen: int, flag: str, max_batch_tokens: bool = False) -> None:
    """Refuse, before a run starts, a micro-batch (``train``: the TrainConfig) of ``seqlen``-base sequences whose
    activations cannot fit the device's memory (a lower bound, :func:`ssm_core.utils.memory.mamba_training_bytes`),
    saying which flags make it fit; ``max_batch_tokens``: the command accumulates micro-batches by that flag."""
    from ssm_core.train.distributed import resolve_device
    from ssm_core.utils.memory import available_memory, format_bytes, mamba_training_bytes

    device = resolve_device(train.device)
    micro = max(1, train.batch_size // (train.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))))
    needed = mamba_training_bytes(model, micro, seqlen, activation_checkpointing=train.activation_checkpointing,
                                  bytes_per_value=2 if device.type == "cuda" and train.precision == "bf16" else 4)
    available = available_memory(device)
    if available is None or needed <= available:
        return
    fixes = [f"a smaller --batch-size or {flag}"]
    if micro > 1:
        fixes.append(f"--max-batch-tokens below {micro * seqlen:,} (smaller micro-batches, accumulated)"
                     if max_batch_tokens else f"--set train.grad_accum={2 * train.grad_accum} (accumulated halves)")
    if not train.activation_checkpointing:
        fixes.append("--activation-checkpointing")
    advice = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])} or {fixes[-1]}"
    raise GenomicsInputError(
        f"a micro-batch of {micro} sequence(s) of {seqlen:,} bases needs at least {format_bytes(needed)} for the "
        f"activations of a {model.n_layer}-layer, width-{model.d_model} model, but {format_bytes(available)} is "
        f"available on {device.type}: use {advice}")


def parameter_count(config: MambaConfig) -> int:
    """Trainable parameters of the model `config` builds (tied weights counted once)."""
    cls = MambaSequenceClassifier if config.num_classes else MambaLMHeadModel
    return sum(p.numel() for p in cls(config).parameters())


def preset_table() -> str:
    """One line per preset: name, depth, width, parameters of the language model."""
    lines = [f"{'preset':<6} {'n_layer':>7} {'d_model':>7} {'parameters':>11}"]
    for name, shape in PRESETS.items():
        count = parameter_count(preset_config(name))
        lines.append(f"{name:<6} {shape['n_layer']:>7} {shape['d_model']:>7} {count:>11,}")
    return "\n".join(lines)


def classifier_config(backbone: MambaConfig, num_classes: int, pooling: str, standardize: bool) -> MambaConfig:
    """A classifier config with the same backbone as `backbone` (a pretrained LM's config)."""
    return dataclasses.replace(backbone, num_classes=num_classes, pooling=pooling, standardize_pooled=standardize)


def run_path(path: str | Path) -> Path:
    """What a ``--checkpoint``/``--init`` value names: a run's ``model.safetensors`` or ``model.json`` stands for
    its run directory, a shipped model's name (``dna-tiny``) for its directory; anything else is kept as given."""
    path = resolve_model_dir(path)
    if path.is_file() and path.name in ("model.safetensors", "model.json"):
        return path.parent
    return path


def load_run_model(path: str | Path, device: str | torch.device = "cpu", flag: str = "--checkpoint") -> nn.Module:
    """The model of a run directory or checkpoint file (``ssm_core.train.load_trained_model``), in eval mode.

    Every way a user's file can fail to load (not a run, a truncated checkpoint, a model.json written by another
    program) becomes one GenomicsInputError naming ``flag`` and the path.
    """
    path = run_path(path)
    try:
        return load_trained_model(path, device)
    except (CheckpointError, ModelFileError) as err:  # their messages name the file and what is wrong
        raise GenomicsInputError(str(err).replace("--checkpoint", flag, 1)) from None
    except Exception as err:  # KeyError, ValueError, safetensors' own errors ...: all mean "not a usable model"
        raise GenomicsInputError(f"{flag} {path}: cannot load a model from it ({type(err).__name__}: {err})") from None
