"""Training the SaShiMi-Mamba waveform model and the SC09 classifier through the shared engine.

Waveform model: next-sample cross-entropy over 2**bits codes on every sample of a clip (the model reads the
clip shifted right by one, silence first). Validation reports ``loss`` (nats per sample) and
``bits_per_sample``, the number the SC09 tables call NLL. ``--data`` is a labelled set (SC09 layout: train on
its train split, validate on its validation split) or a folder of long recordings (YouTubeMix style) cut into
``window``-sample windows, every ``valid_every``-th window held out for validation.

Classifier: the ResNeXt of ``audio.classifier`` on waveforms of a labelled set's train split, validated on its
validation split and tested once on its test split at the end (``CLS/metrics.json`` holds ``test_accuracy``).
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from torch import nn
from torch.utils.data import Dataset, Subset

from ssm_core.models import update_model_info
from ssm_core.train import OptimConfig, Task, TrainConfig, to_dict, train_from_cli
from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.utils.ranges import NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Range, check_ranges

from audio.classifier import ClassifierConfig, ResNeXtClassifier, classifier_loss
from audio.datasets import LabelledAudioSet, LongRecordingWindows, is_labelled_set, item_rng
from audio.errors import AudioInputError
from audio.io import SAMPLE_RATE
from audio.sashimi import SashimiConfig, SashimiModel, next_sample_nll, parameter_count


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _spread(dataset: Dataset, n: int) -> Dataset:
    """At most ``n`` items spread evenly over ``dataset`` (all of it when n is 0): a fixed, cheaper eval set."""
    if n <= 0 or n >= len(dataset):
        return dataset
    return Subset(dataset, [i * len(dataset) // n for i in range(n)])


# ---------------------------------------------------------------------------------------------------------------
# the waveform model


@dataclass
class WaveformData:
    data: str = ""                  # a labelled set (SC09 layout) or a folder of long recordings
    window: int = 16000             # recordings folder: samples per training window (a multiple of the stride)
    valid_every: int = 10           # recordings folder: every n-th window is held out for validation
    valid_samples: int = 0          # evaluate on at most this many clips/windows, spread evenly (0 = all)
    crop: int = 0                   # train and validate on one random crop of this many samples per item
                                    # (0, or >= the item length: whole items)
    on_rate_mismatch: str = "resample"  # a file not at 16 kHz: "resample" (with a notice) or "error"

    def __post_init__(self) -> None:
        check_ranges(self, window=POSITIVE_INT, valid_every=Range(2, integer=True), valid_samples=NONNEGATIVE_INT,
                     crop=NONNEGATIVE_INT)


# the Mamba paper's SC09 recipe (AdamW, lr 2e-3, batch 16, 200K steps; warmup and cosine decay are our choice)
_PAPER_RECIPE = TrainConfig(steps=200_000, batch_size=16, eval_every=5000, checkpoint_every=5000, log_every=100,
                            optim=OptimConfig(lr=2e-3, weight_decay=0.0, warmup_steps=1000))


@dataclass
class WaveformExperiment:
    data: WaveformData = field(default_factory=WaveformData)
    model: SashimiConfig = field(default_factory=lambda: SashimiConfig.from_preset("6.1m"))
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "6.1m"

    # each model preset (SashimiConfig.PRESETS) with its training recipe: name -> overrides of data and train.
    # 6.1m / 24.3m: the paper's SC09 setting; tiny: a CPU demo that learns in minutes
    PRESETS: ClassVar[dict[str, dict]] = {
        "tiny": dict(data=WaveformData(valid_samples=64, crop=4096),
                     train=TrainConfig(steps=300, batch_size=8, eval_every=100, log_every=10,
                                       optim=OptimConfig(lr=2e-3, weight_decay=0.0, warmup_steps=20))),
        "6.1m": dict(train=_PAPER_RECIPE),
        "24.3m": dict(train=_PAPER_RECIPE),
    }

    @classmethod
    def from_preset(cls, name: str) -> "WaveformExperiment":
        """The model preset ``name`` with its training recipe (a fresh copy: callers change it in place)."""
        model = SashimiConfig.from_preset(name)
        return cls(model=model, preset=name, **copy.deepcopy(cls.PRESETS[name]))


class _EveryNth(Dataset):
    """The windows of ``base`` whose index i has ``(i % n == n - 1) == held_out``."""

    def __init__(self, base: Dataset, n: int, held_out: bool):
        self.base = base
        self.indices = [i for i in range(len(base)) if (i % n == n - 1) == held_out]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


class _Crops(Dataset):
    """Item i of ``base`` cut to ``crop`` samples at an offset drawn from (seed, i): fixed per item, so runs
    resume exactly. Items are (codes (crop,), label)."""

    def __init__(self, base: Dataset, crop: int, seed: int):
        self.base, self.crop, self.seed = base, crop, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        codes, label = self.base[i]
        start = int(item_rng(self.seed, 0, i).integers(codes.shape[0] - self.crop + 1))
        return codes[start:start + self.crop], label


class WaveformTask(Task):
    unit = "samples"
    count_metrics = ("samples",)

    def __init__(self, exp: WaveformExperiment):
        self.exp = exp
        d, m = exp.data, exp.model
        root = Path(d.data)
        if not root.is_dir():
            raise AudioInputError(f"{root}: no such data directory (expected a labelled set or a folder of WAVs)")
        self.labelled = is_labelled_set(root)
        codes = dict(output=m.quantization, bits=m.bits, on_rate_mismatch=d.on_rate_mismatch)
        if self.labelled:
            self.train_set = LabelledAudioSet(root, split="train", seed=exp.train.seed, **codes)
            self.valid_set = LabelledAudioSet(root, split="validation", **codes)
            length = self.train_set.clip_samples
        else:
            if d.valid_every < 2:
                raise ValueError(f"valid_every must be >= 2; got {d.valid_every}")
            windows = LongRecordingWindows(root, d.window, seed=exp.train.seed, **codes)
            if len(windows) < 2:
                raise AudioInputError(f"{root}: only {len(windows)} window of {d.window} samples; need at least "
                                      "2 to hold one out for validation (use a shorter --window)")
            every = min(d.valid_every, len(windows))  # a small folder still holds out its last window
            self.train_set = _EveryNth(windows, every, held_out=False)
            self.valid_set = _EveryNth(windows, every, held_out=True)
            length = d.window
        if d.crop < 0:
            raise ValueError(f"crop must be >= 0; got {d.crop}")
        if 0 < d.crop < length:
            self.train_set = _Crops(self.train_set, d.crop, exp.train.seed)
            self.valid_set = _Crops(self.valid_set, d.crop, exp.train.seed + 1)
            length = d.crop
        if length % m.stride:
            raise ValueError(f"{root}: sequences of {length} samples; the model needs a multiple of its total "
                             f"pooling factor {m.stride} (choose --window / --crop accordingly)")

    def describe(self) -> str:
        kind = "labelled set" if self.labelled else f"recordings in {self.exp.data.window}-sample windows"
        return (f"data: {self.exp.data.data} ({kind}): {len(self.train_set)} training, {len(self.valid_set)} "
                f"validation items")

    def build_model(self) -> nn.Module:
        return SashimiModel(self.exp.model)

    def train_dataset(self) -> Dataset:
        return self.train_set

    def valid_dataset(self) -> Dataset:
        return _spread(self.valid_set, self.exp.data.valid_samples)

    def loss(self, model, batch):
        codes, _ = batch
        loss = next_sample_nll(model, codes, self.exp.model.start_code).mean()
        return loss, {"bits_per_sample": loss / math.log(2)}

    def evaluate(self, model, loader) -> dict[str, float]:
        total, count = 0.0, 0
        for codes, _ in loader:
            total += float(next_sample_nll(model, codes, self.exp.model.start_code).sum())
            count += codes.numel()
        loss = total / max(count, 1)
        return {"loss": loss, "bits_per_sample": loss / math.log(2), "samples": float(count)}

    def count_units(self, batch) -> int:
        return batch[0].numel()


def run_waveform_training(exp: WaveformExperiment, out: str | Path, resume: bool = False) -> dict:
    """Train, then write RUN/metrics.json with the final validation NLL. Returns that dict."""
    task = WaveformTask(exp)
    params = parameter_count(exp.model)
    if _is_rank0():
        print(task.describe())
        print(f"model: SaShiMi-Mamba preset {exp.preset}, widths {exp.model.widths}, pools {list(exp.model.pools)}, "
              f"{exp.model.n_groups} groups of {exp.model.n_blocks} blocks, {params:,} parameters")
    result = train_from_cli(task, exp, out, resume=resume)
    if not _is_rank0():
        return {}
    summary = {"valid": result.eval_metrics, "steps": result.step, "preset": exp.preset, "parameters": params,
               "config": to_dict(exp)}
    atomic_write_bytes(Path(out) / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
    m = exp.model
    update_model_info(out, task="audio-waveform-generation", preset=exp.preset, trained_on=task.describe(),
                      tokenizer={"sample_rate": SAMPLE_RATE, "bits": m.bits, "quantization": m.quantization},
                      usage=f"python -m audio generate --checkpoint {Path(out).name} --n 16 --seconds 1 --out samples/",
                      tags=["audio", "waveform", "sashimi"])
    if result.eval_metrics:
        print(f"validation NLL: {result.eval_metrics['bits_per_sample']:.4f} bits per sample "
              f"({int(result.eval_metrics['samples']):,} samples)")
    return summary


# ---------------------------------------------------------------------------------------------------------------
# the SC09 classifier


@dataclass
class ClassifierData:
    data: str = ""
    valid_samples: int = 0  # evaluate during training on at most this many validation clips (0 = all)
    on_rate_mismatch: str = "resample"  # a file not at 16 kHz: "resample" (with a notice) or "error"

    def __post_init__(self) -> None:
        check_ranges(self, valid_samples=NONNEGATIVE_INT)


@dataclass
class ClassifierExperiment:
    data: ClassifierData = field(default_factory=ClassifierData)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "resnext29"
    epochs: float = 20.0  # converted to optimiser steps from the train split's size and the batch size

    # each model preset (ClassifierConfig.PRESETS) with its training recipe: name -> overrides of train and epochs.
    # resnext29: the s4 metric classifier (its recipe trains for tens of epochs at batch 96; AdamW here); small: the
    # shipped classifier's recipe (on the built-in digits set, about 20 minutes on 2 CPU cores); tiny: CPU tests
    PRESETS: ClassVar[dict[str, dict]] = {
        "resnext29": dict(epochs=20.0, train=TrainConfig(batch_size=96, log_every=50, optim=OptimConfig(
            lr=1e-3, weight_decay=1e-2, warmup_steps=100))),
        "small": dict(epochs=12.0, train=TrainConfig(batch_size=64, log_every=25, eval_every=250, optim=OptimConfig(
            lr=3e-3, weight_decay=1e-2, warmup_steps=50))),
        "tiny": dict(epochs=3.0, train=TrainConfig(batch_size=16, log_every=10, optim=OptimConfig(
            lr=3e-3, weight_decay=0.0, warmup_steps=5))),
    }

    def __post_init__(self) -> None:
        check_ranges(self, epochs=POSITIVE)

    @classmethod
    def from_preset(cls, name: str) -> "ClassifierExperiment":
        """The model preset ``name`` with its training recipe (a fresh copy: callers change it in place)."""
        model = ClassifierConfig.from_preset(name)
        return cls(model=model, preset=name, **copy.deepcopy(cls.PRESETS[name]))


class ClassifierTask(Task):
    unit = "clips"

    def __init__(self, exp: ClassifierExperiment):
        self.exp = exp
        root = Path(exp.data.data)
        if not root.is_dir():
            raise AudioInputError(f"{root}: no such data directory (expected a labelled set in SC09 layout)")
        if not is_labelled_set(root):
            raise AudioInputError(f"{root}: not a labelled set (expected class subdirectories such as zero/, one/ "
                                  "of WAV/FLAC files)")
        rate = exp.data.on_rate_mismatch
        self.train_set = LabelledAudioSet(root, split="train", output="waveform", on_rate_mismatch=rate,
                                          seed=exp.train.seed)
        self.valid_set = LabelledAudioSet(root, split="validation", output="waveform", on_rate_mismatch=rate)
        self.test_set = LabelledAudioSet(root, split="test", output="waveform", on_rate_mismatch=rate)
        if list(self.train_set.classes) != list(exp.model.classes):
            self.exp.model.classes = list(self.train_set.classes)

    def build_model(self) -> nn.Module:
        return ResNeXtClassifier(self.exp.model)

    def train_dataset(self) -> Dataset:
        return self.train_set

    def valid_dataset(self) -> Dataset:
        return _spread(self.valid_set, self.exp.data.valid_samples)

    def loss(self, model, batch):
        return classifier_loss(model, batch)


def run_classifier_training(exp: ClassifierExperiment, out: str | Path, resume: bool = False,
                            steps_given: bool = False) -> dict:
    """Train, test on the test split, write CLS/metrics.json (``test_accuracy``, ``valid``). Returns that dict."""
    from ssm_core.train.distributed import resolve_device

    from audio.metrics import class_accuracy, classify

    task = ClassifierTask(exp)
    if not steps_given:  # epochs -> steps
        exp.train.steps = max(1, math.ceil(exp.epochs * len(task.train_set) / exp.train.batch_size))
    if _is_rank0():
        print(f"classifier {exp.preset}: {len(task.train_set)} training clips, {exp.train.steps} steps of "
              f"{exp.train.batch_size}; classes {', '.join(task.train_set.classes)}")
    result = train_from_cli(task, exp, out, resume=resume)
    if not _is_rank0():
        return {}
    device = resolve_device(exp.train.device)
    model = result.model.to(device)
    test_accuracy = class_accuracy(model, task.test_set, classify(model, task.test_set, exp.train.batch_size, device,
                                                                  desc="testing"))
    summary = {"test_accuracy": test_accuracy, "test_clips": len(task.test_set), "valid": result.eval_metrics,
               "steps": result.step, "preset": exp.preset, "config": to_dict(exp)}
    atomic_write_bytes(Path(out) / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
    update_model_info(out, task="audio-classification", labels=list(task.train_set.classes), preset=exp.preset,
                      trained_on=f"{exp.data.data} ({len(task.train_set)} training clips)",
                      metrics={"test_accuracy": test_accuracy},
                      usage=f"python -m audio metrics --classifier {Path(out).name} --generated samples/ "
                            "--reference data/sc09",
                      tags=["audio", "speech-commands"])
    print(f"test accuracy: {test_accuracy:.4f} on {len(task.test_set)} clips")
    return summary
