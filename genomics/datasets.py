"""Torch datasets of DNA windows: species classification and next-base pretraining.

Both are deterministic functions of ``(seed, epoch, index)``: ``__getitem__(i)`` seeds its own generator
from them, so a resumed run sees exactly the examples it would have seen, whatever the number of
DataLoader workers. Training splits draw fresh windows each epoch (:meth:`set_epoch`); valid/test splits
ignore the epoch, so every evaluation sees the same windows.

Windows are drawn inside one region of the split (see :mod:`genomics.splits`) and never read across its
ends: a region shorter than the window is left-padded with PAD, so that a causal model classifying from
its last position always sees sequence there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from genomics.bed import SPLITS, read_bed
from genomics.errors import GenomicsInputError
from genomics.fasta import FastaFile, FastaWindows, WindowOptions, list_fasta_dir, open_fasta
from genomics.splits import Region, SplitPlan, plan_from_bed, split_genome
from genomics.tokenizer import N, PAD, reverse_complement

N_RETRIES = 8  # redraws of a window that is mostly N before keeping it anyway


def _check_split(split: str):
    if split not in SPLITS:
        raise GenomicsInputError(f"split must be one of {SPLITS}, got {split!r}")


def _check_window(window: int):
    if not isinstance(window, (int, np.integer)) or window <= 0:
        raise GenomicsInputError(f"window must be a positive integer, got {window!r}")


def check_window_fits_records(plans: dict[str, SplitPlan], window: int, flag: str) -> None:
    """Refuse a training window longer than every training region of a genome (``plans``: source -> split plan):
    its windows would be mostly padding, and one beyond every record was killed for memory. BED plans are exempt:
    their windows are centred on the intervals and reach into the flanking sequence."""
    longest = {source: max(plan.regions["train"], key=lambda r: r.length) for source, plan in plans.items()
               if plan.strategy != "bed" and plan.regions["train"]}
    short = [source for source, region in longest.items() if region.length < window]
    if short:
        files = ", ".join(f"{source} (longest: {longest[source].record}, {longest[source].length:,} bp)"
                          for source in short)
        raise GenomicsInputError(f"{flag} {window:,} is longer than every training record of {files}; the longest "
                                 f"window every genome can fill is {min(r.length for r in longest.values()):,} bp")


class _RegionSampler:
    """Draws windows from the regions of one split of one FASTA file.

    ``weighting``: "uniform" (each region equally likely, HyenaDNA's choice of chromosome) or "length".
    """

    def __init__(self, fasta: FastaFile, regions: list[Region], window: int, weighting: str, iupac: str,
                 max_n_fraction: float):
        self.fasta, self.regions, self.window = fasta, regions, window
        self.iupac, self.max_n_fraction = iupac, max_n_fraction
        lengths = np.array([r.length for r in regions], dtype=float)
        weights = np.ones_like(lengths) if weighting == "uniform" else lengths
        self.cdf = np.cumsum(weights) / weights.sum()

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, Region, int]:
        """Tokens uint8 (window,), the region, and the window's start on its record."""
        for _ in range(N_RETRIES):
            region = self.regions[min(int(np.searchsorted(self.cdf, rng.random(), side="right")),
                                      len(self.regions) - 1)]
            if region.length >= self.window:
                start = int(rng.integers(region.start, region.end - self.window + 1))
                tokens = self.fasta.fetch(region.record, start, start + self.window, iupac=self.iupac)
            else:  # left-pad: the sequence ends at the last position
                start = region.end - self.window
                tokens = np.full(self.window, PAD, dtype=np.uint8)
                tokens[self.window - region.length:] = self.fasta.fetch(region.record, region.start, region.end,
                                                                      iupac=self.iupac)
            if np.count_nonzero(tokens == N) <= self.max_n_fraction * self.window:
                break
        return tokens, region, start


def _to_tensor(tokens: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tokens.astype(np.int64))


class SpeciesWindows(Dataset):
    """Species classification windows from a directory with one FASTA file per class.

    ``fasta_dir``: ``.fa``/``.fasta``/``.fna`` files, plain, ``.gz`` (bgzip) or ``.bgz``; the class name is the
    file name without its extensions, classes sorted by name (``self.classes``). Each example draws a class
    uniformly, then a region of its split (a chromosome under HyenaDNA's split, uniformly; contigs or blocks
    by length), then a window uniformly inside it; reverse-complemented half the time with ``rc_aug``.

    ``__getitem__(i)`` -> (tokens LongTensor (window,), label int). ``self.plans[class]`` says how each genome
    was split (print ``plan.describe()``).
    """

    def __init__(self, fasta_dir: str | Path, split: str, window: int, *, samples: int = 65536, seed: int = 0,
                 rc_aug: bool = False, iupac: str = "n", strategy: str = "auto", gap: int | None = None,
                 min_contigs: int = 30, max_n_fraction: float = 0.5, decompress_to: str | Path | None = None,
                 classes: list[str] | None = None):
        _check_split(split)
        _check_window(window)
        files = list_fasta_dir(fasta_dir)
        if classes is not None:  # a fine-tuned model's class order must be kept at evaluation
            missing = [c for c in classes if c not in files]
            if missing:
                raise GenomicsInputError(f"{fasta_dir}: no FASTA file for class(es) {missing}")
            files = {c: files[c] for c in classes}
        if len(files) < 2:
            raise GenomicsInputError(f"{fasta_dir}: species classification needs at least 2 FASTA files, "
                                     f"found {len(files)}")
        self.classes = list(files)
        self.split, self.window, self.samples, self.seed = split, int(window), int(samples), int(seed)
        self.rc_aug, self.epoch = rc_aug, 0
        self.fastas = {c: open_fasta(path, decompress_to=decompress_to) for c, path in files.items()}
        self.plans: dict[str, SplitPlan] = {}
        self._samplers = []
        for name, fasta in self.fastas.items():
            plan = split_genome(fasta.lengths, strategy=strategy, window=window, gap=gap, min_contigs=min_contigs,
                                seed=seed)
            if not plan.regions[split]:
                raise GenomicsInputError(f"{fasta.source}: the {split} split is empty ({plan.describe()})")
            self.plans[name] = plan
            weighting = "uniform" if plan.strategy == "chromosome" else "length"
            self._samplers.append(_RegionSampler(fasta, plan.regions[split], window, weighting, iupac,
                                                 max_n_fraction))

    def set_epoch(self, epoch: int):
        """Training windows are redrawn each epoch; valid/test windows stay fixed."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.split == "train" else 0
        return np.random.default_rng([self.seed, SPLITS.index(self.split), epoch, index])

    def sample(self, index: int) -> dict:
        """Example ``index`` with its provenance: tokens uint8 (window,), label, class, record, start, rc."""
        if not 0 <= index < self.samples:
            raise IndexError(f"index {index} out of range for {self.samples} samples")
        rng = self._rng(index)
        label = int(rng.integers(len(self.classes)))
        tokens, region, start = self._samplers[label].draw(rng)
        rc = bool(self.rc_aug and rng.random() < 0.5)
        if rc:
            tokens = reverse_complement(tokens)
        return {"tokens": tokens, "label": label, "class": self.classes[label], "record": region.record,
                "start": start, "rc": rc}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.sample(index)
        return _to_tensor(example["tokens"]), example["label"]

    def arrays(self, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` examples stacked: tokens uint8 (count, window), labels int64 (count,)."""
        count = self.samples if count is None else min(count, self.samples)
        examples = [self.sample(i) for i in range(count)]
        return (np.stack([e["tokens"] for e in examples]),
                np.array([e["label"] for e in examples], dtype=np.int64))


class GenomeWindows(Dataset):
    """Windows of one genome for next-base pretraining: ``__getitem__(i)`` -> tokens LongTensor (window,).

    With ``bed`` (4 columns: chrom, start, end, split, as HyenaDNA's hg38 ``sequences.bed``): example ``i`` is
    a window on interval ``i mod n`` of the split; training windows get a random offset inside long intervals,
    a random shift up to ``max_shift`` and reverse complement with ``rc_aug``; valid/test windows are centred
    on their intervals, unaugmented. Windows may reach into flanking sequence; beyond a record's end is PAD.

    Without ``bed``: the genome is split by :func:`genomics.splits.split_genome` and windows are drawn inside
    the split's regions, weighted by length. ``samples`` defaults to the number of intervals (BED) or the
    split's bases divided by the window.
    """

    def __init__(self, fasta: str | Path, bed: str | Path | None = None, *, split: str = "train",
                 window: int = 1024, samples: int | None = None, seed: int = 0, max_shift: int = 0,
                 rc_aug: bool = False, iupac: str = "n", strategy: str = "auto", gap: int | None = None,
                 min_contigs: int = 30, max_n_fraction: float = 0.5, decompress_to: str | Path | None = None):
        _check_split(split)
        _check_window(window)
        self.split, self.window, self.seed, self.rc_aug, self.epoch = split, int(window), int(seed), rc_aug, 0
        self.fasta = open_fasta(fasta, decompress_to=decompress_to)
        if bed is not None:
            every = read_bed(bed, require_split=True)
            self.plan = plan_from_bed(every, source=str(bed))  # all splits, so the printed plan is whole
            intervals = [iv for iv in every if iv.split == split]
            if not intervals:
                raise GenomicsInputError(f"{bed}: no intervals in the {split} split")
            self._windows = FastaWindows(self.fasta, intervals, WindowOptions(window, max_shift, rc_aug, iupac),
                                         bed_name=str(bed))
            self._sampler = None
            default_samples = len(intervals)
        else:
            self.plan = split_genome(self.fasta.lengths, strategy=strategy, window=window, gap=gap,
                                     min_contigs=min_contigs, seed=seed)
            if not self.plan.regions[split]:
                raise GenomicsInputError(f"{fasta}: the {split} split is empty ({self.plan.describe()})")
            self._windows = None
            self._sampler = _RegionSampler(self.fasta, self.plan.regions[split], window, "length", iupac,
                                           max_n_fraction)
            default_samples = max(1, self.plan.bases(split) // window)
        self.samples = int(samples) if samples is not None else default_samples

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples

    def window_tokens(self, index: int) -> np.ndarray:
        """Example ``index`` as tokens uint8 (window,)."""
        if not 0 <= index < self.samples:
            raise IndexError(f"index {index} out of range for {self.samples} samples")
        train = self.split == "train"
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), self.epoch if train else 0, index])
        if self._windows is not None:
            return self._windows.window(index % len(self._windows), rng if train else None)
        tokens, _, _ = self._sampler.draw(rng)
        if train and self.rc_aug and rng.random() < 0.5:
            tokens = reverse_complement(tokens)
        return tokens

    def __getitem__(self, index: int) -> torch.Tensor:
        return _to_tensor(self.window_tokens(index))
