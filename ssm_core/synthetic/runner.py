"""Train a Mamba on a synthetic task through the engine, then measure accuracy against sequence length.

    python -m ssm_core.synthetic {induction,copying} --out RUN [--preset tiny|paper] [--train-len L]
        [--eval-lens 64,256,...] [--steps N] [--no-selection] [--device auto|cpu|cuda|mps] [engine flags]
        [--curriculum-start L] [--state-passing] [--far-trigger-steps N [--far-trigger-span K]]

writes the usual run directory plus RUN/results.json
``{"task", "train_len", "accuracy": {"<length>": fraction correct}, "samples": {"<length>": n}, ...}`` and
RUN/plots/accuracy_vs_length.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssm_core import MambaConfig, MambaLMHeadModel
from ssm_core.models import update_model_info
from ssm_core.train import (EarlyStopConfig, OptimConfig, Task, TrainConfig, add_engine_args, curriculum,
                            resolve_config, to_dict, train_from_cli)
from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.train.distributed import resolve_device
from ssm_core.utils.plots import save_figure
from ssm_core.utils.progress import progress_bar
from ssm_core.utils.ranges import NONNEGATIVE_INT, POSITIVE_INT, Range, check_ranges

from .data import SyntheticDataset

SEQLEN = Range(4, integer=True)  # the shortest induction-heads sequence: trigger, value, a token, trigger


class StagedExamples(Dataset):
    """Training examples that change with the step: item ``i`` belongs to optimiser step ``i // batch_size`` (the
    engine reads an unshuffled dataset in order) and is item ``i`` of that step's dataset, keyed by the length the
    curriculum gives the step and by the first trigger's span (``far_span`` before step ``far_steps``, else 0)."""

    def __init__(self, by_stage: dict[tuple[int, int], Dataset], batch_size: int, schedule: list[tuple[int, int]],
                 far_steps: int = 0, far_span: int = 0):
        self.by_stage, self.batch_size, self.schedule = by_stage, batch_size, schedule
        self.far_steps, self.far_span = far_steps, far_span

    def __len__(self) -> int:
        return min(len(d) for d in self.by_stage.values())

    def __getitem__(self, index: int):
        step = index // self.batch_size
        span = self.far_span if step < self.far_steps else 0
        return self.by_stage[curriculum.length_at(self.schedule, step), span][index]


@dataclass
class SyntheticData:
    task: Literal["induction", "copying"] = "induction"
    vocab: int = 16  # including the special tokens (trigger; noise and marker)
    train_len: int = 256
    num_tokens: int = 16  # selective copying: data tokens to reproduce
    valid_samples: int = 256  # fixed validation set at the training length, evaluated every `train.eval_every`
    eval_lens: tuple[int, ...] = (64, 128, 256, 512, 1024)
    eval_samples: int = 256  # per length, fewer where the token budget runs out
    eval_tokens: int = 2**25  # token budget per length (the longest lengths get max(16, budget // length) samples)
    eval_batch_tokens: int = 2**21  # tokens per forward pass during the length sweep
    eval_chunk: int = 2**16  # longer test sequences are read in chunks carrying the state (memory ~ chunk)
    # length curriculum (ssm_core.train.curriculum): 0 = off, else training starts at this length and doubles up to
    # train_len over the first curriculum_fraction of the steps
    curriculum_start: int = 0
    curriculum_fraction: float = 0.5
    # state passing (Buitrago & Gu 2025): each training sequence starts from the recurrent state another example of
    # the batch left (no gradient through it) rather than from zeros, so the model is trained on the kind of state
    # it meets deep into a long test sequence
    state_passing: bool = False
    # far trigger (induction heads, issue #23): for the first far_trigger_steps optimiser steps the first trigger
    # falls among the first far_trigger_span positions, so every example needs the value kept for ~train_len tokens,
    # then anywhere as in the paper. Trained with the trigger anywhere from the start, the model keeps the value in
    # slow channels that forget after ~50x train_len; trained far first at 64, it learnt to hold Δ ~ 0 between the
    # value and the query and answered to 2^20, while from scratch at 256 it did not (benchmarks/NOTES_induction.md).
    far_trigger_steps: int = 0
    far_trigger_span: int = 8

    def __post_init__(self) -> None:
        check_ranges(self, vocab=Range(3, integer=True), train_len=SEQLEN, num_tokens=POSITIVE_INT,
                     valid_samples=POSITIVE_INT, eval_samples=POSITIVE_INT, eval_tokens=POSITIVE_INT,
                     eval_batch_tokens=POSITIVE_INT, eval_chunk=POSITIVE_INT, curriculum_start=NONNEGATIVE_INT,
                     curriculum_fraction=curriculum.WARMUP_FRACTION)
        if not all(SEQLEN.contains(n) for n in self.eval_lens):
            raise ValueError(f"SyntheticData.eval_lens must be lengths each {SEQLEN}; got {self.eval_lens}")


_STOP_AT_PERFECT = EarlyStopConfig(metric="accuracy", mode="max", patience=10**9, target=1.0)


@dataclass
class SyntheticExperiment:
    data: SyntheticData = field(default_factory=SyntheticData)
    model: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=64, n_layer=2, vocab_size=16))
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "paper"

    # name -> task -> the experiment's parts. paper: the setups of the Mamba paper's appendix E.1; tiny: CPU-sized
    # versions that learn in about a minute
    PRESETS: ClassVar[dict[str, dict[str, dict]]] = {
        "tiny": {
            "induction": dict(
                data=SyntheticData("induction", vocab=8, train_len=32, valid_samples=128, eval_lens=(32, 64, 128, 256)),
                model=MambaConfig(d_model=32, n_layer=2, vocab_size=8),
                train=TrainConfig(steps=300, batch_size=32, eval_every=100, log_every=20, device="cpu",
                                  optim=OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=20))),
            "copying": dict(
                data=SyntheticData("copying", vocab=8, train_len=32, num_tokens=4, valid_samples=128, eval_lens=(32,)),
                model=MambaConfig(d_model=32, n_layer=2, vocab_size=8),
                train=TrainConfig(steps=600, batch_size=32, eval_every=100, log_every=20, device="cpu",
                                  optim=OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=20))),
        },
        "paper": {
            # 2 layers, d_model 64, vocab 16, length 256, batch 8, Adam at constant lr 1e-3 without weight decay,
            # 25 "epochs" of 8192 steps, tested from 2^6 to 2^20.
            "induction": dict(
                data=SyntheticData("induction", vocab=16, train_len=256, eval_lens=tuple(2**k for k in range(6, 21))),
                model=MambaConfig(d_model=64, n_layer=2, vocab_size=16),
                train=TrainConfig(steps=8192 * 25, batch_size=8, eval_every=1024, checkpoint_every=8192, log_every=100,
                                  optim=OptimConfig(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
                                                    schedule="constant", grad_clip=0.0),
                                  early_stop=_STOP_AT_PERFECT)),
            # length 4096, vocab 16 (noise included), 16 data tokens, 2 layers, d_model 64, batch 64, constant lr
            # 1e-4, 400K steps.
            "copying": dict(
                data=SyntheticData("copying", vocab=16, train_len=4096, num_tokens=16, eval_lens=(4096,)),
                model=MambaConfig(d_model=64, n_layer=2, vocab_size=16),
                train=TrainConfig(steps=400_000, batch_size=64, eval_every=1000, checkpoint_every=10_000,
                                  log_every=100, optim=OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0,
                                                                   schedule="constant", grad_clip=0.0),
                                  early_stop=_STOP_AT_PERFECT)),
        },
    }

    @classmethod
    def from_preset(cls, name: str, task: str = "induction") -> "SyntheticExperiment":
        """Preset ``name`` of ``task`` (a fresh copy: callers change it in place)."""
        if task not in cls.PRESETS.get(name, {}):
            raise ValueError(f"no preset {name!r} for task {task!r}; presets are "
                             f"{' and '.join(map(repr, cls.PRESETS))}")
        return cls(preset=name, **copy.deepcopy(cls.PRESETS[name][task]))


class SyntheticTask(Task):
    """Cross-entropy on the answer positions only: the last position (induction) or the M marker positions
    (copying); every other position is random and carries nothing to learn."""

    shuffle_train = False  # every example is freshly generated already

    def __init__(self, exp: SyntheticExperiment):
        d = exp.data
        if exp.model.vocab_size != d.vocab:
            raise ValueError(f"model.vocab_size ({exp.model.vocab_size}) must equal data.vocab ({d.vocab})")
        if d.far_trigger_steps < 0 or d.far_trigger_span < 1:
            raise ValueError(f"data.far_trigger_steps must be >= 0 and data.far_trigger_span >= 1; got "
                             f"{d.far_trigger_steps} and {d.far_trigger_span}")
        if d.far_trigger_steps and d.task != "induction":
            raise ValueError(f"data.far_trigger_steps places the induction trigger; task {d.task!r} has none")
        self.exp = exp

    def build_model(self) -> nn.Module:
        return MambaLMHeadModel(self.exp.model)

    def dataset(self, size: int, seqlen: int, seed: int, first_within: int = 0) -> SyntheticDataset:
        """`size` fresh examples of length `seqlen` (the first trigger among the first `first_within` positions)."""
        d = self.exp.data
        return SyntheticDataset(d.task, size, seqlen, d.vocab, seed, d.num_tokens, first_within)

    def train_dataset(self):
        t, d = self.exp.train, self.exp.data
        size = t.steps * t.batch_size
        if not d.curriculum_start and not d.far_trigger_steps:
            return self.dataset(size, d.train_len, seed=t.seed)
        spans = (0, d.far_trigger_span) if d.far_trigger_steps else (0,)
        return StagedExamples({(length, span): self.dataset(size, length, t.seed, span)
                               for _, length in self.schedule() for span in spans}, t.batch_size, self.schedule(),
                              d.far_trigger_steps, d.far_trigger_span)

    def schedule(self) -> list[tuple[int, int]]:
        d, t = self.exp.data, self.exp.train
        return curriculum.length_schedule(t.steps, d.train_len, d.curriculum_start or d.train_len,
                                          d.curriculum_fraction)

    def valid_dataset(self):
        return self.dataset(self.exp.data.valid_samples, self.exp.data.train_len, seed=self.exp.train.seed + 10**6)

    def answer_logits(self, model: nn.Module, input_ids: torch.Tensor, chunk: int | None = None,
                      states: list | None = None) -> torch.Tensor:
        """(batch, answers, vocab) logits at the answer positions.

        With `chunk` (inference only), a sequence longer than `chunk` is streamed through the backbone chunk by
        chunk with its recurrent state carried over, keeping only the last hidden states: memory then depends on
        the chunk, not the length (the 2^20-token induction test). With `states` (training under state passing),
        the sequence starts from those recurrent states.
        """
        answers = 1 if self.exp.data.task == "induction" else self.exp.data.num_tokens
        if states is not None:
            return model(input_ids, states)[0][:, -answers:, :self.exp.data.vocab].float()
        if chunk is None or input_ids.shape[1] <= chunk:
            return model(input_ids)[:, -answers:, :self.exp.data.vocab].float()
        tail = None
        for hidden in model.backbone.stream(input_ids, chunk):
            tail = hidden if tail is None else torch.cat([tail, hidden], dim=1)[:, -answers:]
        return model.lm_head(tail[:, -answers:])[..., :self.exp.data.vocab].float()

    def passed_states(self, model: nn.Module, input_ids: torch.Tensor) -> list:
        """The recurrent states each sequence of the batch starts from under state passing: those left by the
        previous example of the batch (the batch rolled by one), computed without gradient."""
        inner = getattr(model, "module", model)  # under DDP
        with torch.no_grad():
            _, states = model(input_ids.roll(1, dims=0), inner.allocate_states(input_ids.shape[0], input_ids.device))
        return states

    def loss(self, model, batch):
        states = self.passed_states(model, batch["input_ids"]) if self.exp.data.state_passing else None
        logits = self.answer_logits(model, batch["input_ids"], states=states)
        target = batch["target"].reshape(logits.shape[0], -1)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        return loss, {"accuracy": (logits.argmax(-1) == target).float().mean()}


@torch.no_grad()
def accuracy_by_length(task: SyntheticTask, model: nn.Module, lengths: tuple[int, ...], device: torch.device,
                       seed: int) -> tuple[dict[str, float], dict[str, int]]:
    """Fraction of answer tokens predicted correctly at each test length, on fresh examples (fp32, no grad)."""
    d = task.exp.data
    model.eval()
    accuracy, samples = {}, {}
    for length in progress_bar(lengths, desc="accuracy by length", unit="length"):
        n = min(d.eval_samples, max(16, d.eval_tokens // length))
        loader = DataLoader(task.dataset(n, length, seed=seed + 2 * 10**6 + length),
                            batch_size=max(1, min(n, d.eval_batch_tokens // length)))
        correct = total = 0
        for batch in loader:
            logits = task.answer_logits(model, batch["input_ids"].to(device), chunk=d.eval_chunk)
            target = batch["target"].to(device).reshape(logits.shape[0], -1)
            correct += int((logits.argmax(-1) == target).sum())
            total += target.numel()
        accuracy[str(length)], samples[str(length)] = correct / total, n
    return accuracy, samples


def plot_accuracy(results: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [int(k) for k in results["accuracy"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(lengths, [100 * results["accuracy"][str(k)] for k in lengths], marker="o",
            label="Mamba" + ("" if results["selective"] else " (selection off)"))
    ax.axvline(results["train_len"], color="gray", linestyle="--", label=f"train length {results['train_len']}")
    ax.axhline(100 * results["chance"], color="red", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 105)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results['task']}: accuracy vs test length")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    save_figure(fig, out_png)


def _lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or not all(SEQLEN.contains(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be lengths each {SEQLEN}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from ssm_core.utils.cli import HelpFormatter, add_logging_arguments

    parser = argparse.ArgumentParser(prog="python -m ssm_core.synthetic", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("task", choices=["induction", "copying"])
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--preset", choices=list(SyntheticExperiment.PRESETS), default="paper")
    parser.add_argument("--train-len", type=SEQLEN, help="training sequence length (at least 4)")
    parser.add_argument("--eval-lens", type=_lengths, help="comma-separated test lengths, e.g. 64,256,1024")
    parser.add_argument("--curriculum-start", type=NONNEGATIVE_INT, metavar="L",
                        help="train first at length L, doubling up to --train-len over the first half of the steps "
                             "(0: no curriculum)")
    parser.add_argument("--state-passing", action="store_true",
                        help="start each training sequence from the state another example left, not from zeros")
    parser.add_argument("--far-trigger-steps", type=int, metavar="N",
                        help="induction: for the first N steps the first trigger is among the first "
                             "--far-trigger-span positions (the value far from the query), then anywhere; turns off "
                             "the early stop at 100%% validation accuracy (extrapolation improves after it)")
    parser.add_argument("--far-trigger-span", type=int, metavar="K", help="see --far-trigger-steps (default 8)")
    parser.add_argument("--no-selection", action="store_true",
                        help="the ablation: Δ, B, C not input-dependent (a time-invariant SSM)")
    add_engine_args(parser)
    add_logging_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    from ssm_core.utils.cli import apply_common_arguments

    parser = build_parser()
    args = parser.parse_args(argv)
    apply_common_arguments(args)

    exp = SyntheticExperiment.from_preset(args.preset, args.task)
    if args.train_len:
        exp.data.train_len = args.train_len
    if args.eval_lens:
        exp.data.eval_lens = args.eval_lens
    if args.no_selection:
        exp.model.selective = False
    if args.curriculum_start:
        exp.data.curriculum_start = args.curriculum_start
    if args.state_passing:
        exp.data.state_passing = True
    if args.far_trigger_steps is not None:
        exp.data.far_trigger_steps = args.far_trigger_steps
    if args.far_trigger_span is not None:
        exp.data.far_trigger_span = args.far_trigger_span
    try:
        exp = resolve_config(args, exp)
        resolve_device(exp.train.device)  # --device cuda without a GPU: refused before any work
        task = SyntheticTask(exp)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    if exp.data.far_trigger_steps:  # 100% at the training length comes well before the memory holds at 2^20
        exp.train.early_stop.metric = None
    try:
        schedule = task.schedule()
    except ValueError as err:
        parser.error(f"--curriculum-start {exp.data.curriculum_start}: {err}")
    if len(schedule) > 1 and int(os.environ.get("RANK", "0")) == 0:
        print(f"length curriculum: {curriculum.describe(schedule)}")
    result = train_from_cli(task, exp, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone measures
        return {}

    device = resolve_device(exp.train.device)
    accuracy, samples = accuracy_by_length(task, result.model.to(device), exp.data.eval_lens, device,
                                           exp.train.seed)
    d = exp.data
    results = {"task": d.task, "train_len": d.train_len, "accuracy": accuracy, "samples": samples,
               "selective": exp.model.selective, "steps": result.step, "preset": exp.preset,
               "chance": 1 / (d.vocab - 1 if d.task == "induction" else d.vocab - 2),
               "valid": result.eval_metrics, "config": to_dict(exp)}
    atomic_write_bytes(args.out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    update_model_info(args.out, task=f"synthetic-{d.task}", window=d.train_len, preset=exp.preset,
                      trained_on=f"generated {d.task} sequences of {d.train_len} tokens (vocabulary {d.vocab})",
                      metrics={f"accuracy_at_{k}": v for k, v in accuracy.items()}, tags=["synthetic"])
    plot_accuracy(results, args.out / "plots" / "accuracy_vs_length.png")
    summary = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in accuracy.items())
    print(f"{d.task} (train length {d.train_len}, {result.step} steps) accuracy by length: {summary}")
    return results
