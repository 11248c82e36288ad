"""Next-base pretraining of a DNA Mamba through the shared training engine.

The loss is the cross-entropy of each next base among A, C, G, T, on positions whose target is one of those
four bases: PAD (beyond a contig's end) and N (assembly gaps) are never scored, though they may sit in the
context. Validation reports the mean loss in nats, ``perplexity`` (exp of it) and ``bits_per_base``.

Sequence-length warmup (SLW), as the Mamba paper does for long contexts (after HyenaDNA): training starts at
``warmup_start`` bases and doubles the length stage by stage up to ``seqlen``. The first ``warmup_fraction`` of
the steps is shared equally by the stages shorter than ``seqlen``; the rest trains at ``seqlen``. The number of
bases per step stays constant: each example is one ``seqlen`` window, which a stage of length ``L`` cuts into
``seqlen / L`` consecutive sequences of length ``L`` (batch doubling as length halves). E.g. ``seqlen`` 2^14,
``warmup_start`` 2^10, 10 000 steps, fraction 0.5: 1 250 steps each at 2^10, 2^11, 2^12, 2^13, then 5 000 at 2^14.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ssm_core import MambaConfig, MambaLMHeadModel
from ssm_core.models import update_model_info
from ssm_core.train import OptimConfig, Task, TrainConfig, curriculum, to_dict, train_from_cli
from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.utils.ranges import NONNEGATIVE_INT, POSITIVE_INT, check_ranges

from genomics.datasets import GenomeWindows, check_window_fits_records
from genomics.errors import GenomicsInputError
from genomics.fasta import list_fasta_dir
from genomics.models import check_training_memory, parameter_count, preset_config
from genomics.tokenizer import A, T, tokenizer_settings


@dataclass
class PretrainData:
    fasta: str | None = None  # one genome (with an optional BED of train/valid/test intervals) ...
    bed: str | None = None
    fasta_dir: str | None = None  # ... or a directory of genomes, drawn from in turn
    seqlen: int = 1024
    warmup_start: int = 1024  # first SLW stage length (no warmup when >= seqlen)
    warmup_fraction: float = 0.5  # share of the steps spent in the stages shorter than seqlen
    valid_samples: int = 256  # validation windows of length seqlen (per genome with --fasta-dir)
    max_shift: int = 0  # BED windows: random shift in bases
    rc_aug: bool = True  # reverse-complement half of the training windows
    iupac: str = "n"
    decompress_cache: str | None = None  # where a plain-gzip FASTA is decompressed for random access

    def __post_init__(self) -> None:
        check_ranges(self, seqlen=POSITIVE_INT, warmup_start=POSITIVE_INT, warmup_fraction=curriculum.WARMUP_FRACTION,
                     valid_samples=POSITIVE_INT, max_shift=NONNEGATIVE_INT)


@dataclass
class PretrainExperiment:
    data: PretrainData = field(default_factory=PretrainData)
    model: MambaConfig = field(default_factory=lambda: preset_config("tiny"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=10_000, batch_size=64, eval_every=1000, log_every=50,
        optim=OptimConfig(lr=6e-4, weight_decay=0.1, warmup_steps=100)))
    preset: str = "tiny"

    @classmethod
    def from_preset(cls, name: str, **fields) -> PretrainExperiment:
        """The default experiment with the model of ``genomics.models.PRESETS[name]``."""
        return cls(model=preset_config(name), preset=name, **fields)


def length_schedule(steps: int, seqlen: int, warmup_start: int, warmup_fraction: float) -> list[tuple[int, int]]:
    """SLW stages as (first step, length), lengths doubling from ``warmup_start`` to ``seqlen``
    (:func:`ssm_core.train.curriculum.length_schedule`, its errors named by this command's flags)."""
    try:
        return curriculum.length_schedule(steps, seqlen, warmup_start, warmup_fraction)
    except ValueError as err:
        raise GenomicsInputError(f"sequence-length warmup (--seqlen {seqlen}, --warmup-start {warmup_start}, "
                                 f"--warmup-fraction {warmup_fraction}): {err}") from None


class StagedWindows(Dataset):
    """Training examples under sequence-length warmup: item ``i`` belongs to step ``i // batch_size`` (the engine
    reads an unshuffled dataset in order), and is its ``seqlen`` window cut into (seqlen / L, L) for that step's
    stage length L. Returns LongTensor (seqlen / L, L)."""

    def __init__(self, windows: Dataset, batch_size: int, schedule: list[tuple[int, int]], seqlen: int):
        self.windows, self.batch_size, self.schedule, self.seqlen = windows, batch_size, schedule, seqlen

    def __len__(self) -> int:
        return len(self.windows)

    def length_at(self, step: int) -> int:
        return curriculum.length_at(self.schedule, step)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.windows[index].view(-1, self.length_at(index // self.batch_size))


class _Interleaved(Dataset):
    """Item ``i`` of genome ``i mod n``: every genome of a directory contributes equally."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts

    def __len__(self) -> int:
        return min(len(p) for p in self.parts) * len(self.parts)

    def __getitem__(self, index: int):
        return self.parts[index % len(self.parts)][index // len(self.parts)]


def next_base_nll(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood (nats) of each next base and whether it is scored.

    tokens (batch, seqlen) -> nll float32 (batch, seqlen - 1), scored bool (batch, seqlen - 1): target in ACGT.
    """
    logits = model(tokens[:, :-1])[..., A:T + 1]  # the 4 bases only: a distribution over what is scored
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; fp64 stays
    target = tokens[:, 1:]
    scored = (target >= A) & (target <= T)
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), (target - A).clamp(0, 3), reduction="none")
    return nll * scored, scored


class PretrainTask(Task):
    unit = "bases"
    count_metrics = ("scored_bases",)
    shuffle_train = False  # windows are drawn at random already; order must follow the SLW schedule

    def __init__(self, exp: PretrainExperiment):
        self.exp = exp
        d = exp.data
        if (d.fasta is None) == (d.fasta_dir is None):
            raise GenomicsInputError("give exactly one of --fasta FILE (optionally with --bed) or --fasta-dir DIR")
        if d.bed is not None and d.fasta is None:
            raise GenomicsInputError("--bed goes with --fasta")
        self.schedule = length_schedule(exp.train.steps, d.seqlen, d.warmup_start, d.warmup_fraction)
        self.genomes = [d.fasta] if d.fasta else [str(p) for p in list_fasta_dir(d.fasta_dir).values()]
        self._train_parts = self._windows("train", exp.train.steps * exp.train.batch_size)
        check_window_fits_records({path: w.plan for path, w in zip(self.genomes, self._train_parts)}, d.seqlen,
                                  "--seqlen")
        check_training_memory(exp.model, exp.train, d.seqlen, "--seqlen")

    def describe(self) -> str:
        return f"sequence-length schedule: {curriculum.describe(self.schedule, 'bp')}"

    def _windows(self, split: str, samples: int) -> list[GenomeWindows]:
        """One dataset per genome, sharing ``samples`` windows of length seqlen."""
        d, t = self.exp.data, self.exp.train
        per_genome = max(1, -(-samples // len(self.genomes)))
        return [GenomeWindows(path, d.bed, split=split, window=d.seqlen, samples=per_genome, seed=t.seed,
                              max_shift=d.max_shift if split == "train" else 0, rc_aug=d.rc_aug and split == "train",
                              iupac=d.iupac, decompress_to=d.decompress_cache) for path in self.genomes]

    def plans(self) -> list[str]:
        """How each genome was split (BED, chromosome, contig or block)."""
        return [f"{path}: {windows.plan.describe()}" for path, windows in zip(self.genomes, self._train_parts)]

    def build_model(self) -> nn.Module:
        return MambaLMHeadModel(self.exp.model)

    def train_dataset(self) -> Dataset:
        t = self.exp.train
        parts = self._train_parts
        return StagedWindows(parts[0] if len(parts) == 1 else _Interleaved(parts), t.batch_size, self.schedule,
                             self.exp.data.seqlen)

    def valid_dataset(self) -> Dataset:
        parts = self._windows("valid", self.exp.data.valid_samples * len(self.genomes))
        return parts[0] if len(parts) == 1 else _Interleaved(parts)

    def loss(self, model, batch):
        tokens = batch.flatten(0, -2)  # (batch, k, L) under SLW -> (batch * k, L)
        nll, scored = next_base_nll(model, tokens)
        loss = nll.sum() / scored.sum().clamp(min=1)
        return loss, {"bits_per_base": loss / math.log(2)}

    def evaluate(self, model, loader) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in loader:
            nll, scored = next_base_nll(model, batch.flatten(0, -2))
            total += float(nll.sum())
            count += int(scored.sum())
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_base": loss / math.log(2),
                "scored_bases": float(count)}

    def count_units(self, batch) -> int:
        return batch.numel()


def run_pretrain(exp: PretrainExperiment, out: str | Path, resume: bool = False) -> dict:
    """Train, then write RUN/metrics.json with the final validation metrics. Returns that dict."""
    task = PretrainTask(exp)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in task.plans():
            print(line)
        print(f"model: preset {exp.preset}, {exp.model.n_layer} layers, d_model {exp.model.d_model}, "
              f"{parameter_count(exp.model):,} parameters")
        print(task.describe())
    result = train_from_cli(task, exp, out, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    summary = {"valid": result.eval_metrics, "steps": result.step, "seqlen": exp.data.seqlen,
               "schedule": [list(stage) for stage in task.schedule], "preset": exp.preset,
               "parameters": parameter_count(exp.model), "config": to_dict(exp)}
    atomic_write_bytes(Path(out) / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
    d = exp.data
    update_model_info(out, task="dna-language-modeling", window=d.seqlen, tokenizer=tokenizer_settings(d.iupac),
                      preset=exp.preset, trained_on=f"next-base prediction on {d.fasta or d.fasta_dir}"
                                                    + (f" (intervals of {d.bed})" if d.bed else ""),
                      usage=f"python -m genomics finetune --init {Path(out).name} --fasta-dir SPECIES_DIR --out RUN",
                      tags=["dna", "genomics", "language-model"])
    v = result.eval_metrics
    if v:
        print(f"validation: {v['bits_per_base']:.4f} bits per base, perplexity {v['perplexity']:.4f} "
              f"({int(v['scored_bases']):,} bases scored)")
    return summary
