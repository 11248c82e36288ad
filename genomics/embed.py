"""Embeddings of the records of a FASTA/FASTQ file from a DNA model: what ``python -m genomics embed`` writes.

A window's embedding is the input of the classifier's head: the backbone's final hidden states pooled as the
classifier pools them (its last position or their mean: the run's ``--pooling``), then standardised with the
classifier's running statistics where it has them (``--standardize``, the default), so ``head(embedding)`` gives the
window's logits. A pretraining (language-model) run has no head: its final hidden states, mean-pooled. A record's
embedding is the mean of its windows' embeddings; the windows are ``classify``'s (the fine-tuning window by default,
1024 bases for a pretraining run; consecutive, the last aligned to the record's end; a shorter record is one window).
Records are read as given (forward strand). Input: :func:`genomics.reads.read_records` (FASTA or FASTQ, plain or
gzip, a file, a pipe or ``-``), streamed.

``OUT.npz`` (``numpy.load(OUT, allow_pickle=False)``): ``records`` (names, input order), ``lengths`` (int64),
``embeddings`` (float32, records x d_model); with ``per_window`` also ``window_embeddings`` (float32, windows x
d_model), ``window_record`` (int64, the row of ``records``) and ``window_start`` (int64, 0-based), windows in input
order.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssm_core import MambaSequenceClassifier

from genomics.classify import DEFAULT_WINDOW, WindowedModel, bases_progress, record_flag, run_classes, window_starts
from genomics.models import load_run_model
from genomics.reads import read_records, source_name


@dataclass
class Embeddings:
    records: list[str]
    lengths: np.ndarray  # (records,) int64
    embeddings: np.ndarray  # (records, d_model) float32
    window_embeddings: np.ndarray  # (windows, d_model) float32
    window_record: np.ndarray  # (windows,) int64
    window_start: np.ndarray  # (windows,) int64
    flagged: list[tuple[str, str]]  # (record, flag) of the records that say nothing (classify's flags)

    def npz_bytes(self, per_window: bool = False) -> bytes:
        arrays = {"records": np.array(self.records, dtype=str), "lengths": self.lengths,
                  "embeddings": self.embeddings}
        if per_window:
            arrays.update(window_embeddings=self.window_embeddings, window_record=self.window_record,
                          window_start=self.window_start)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()


class Embedder(WindowedModel):
    """A pretraining or fine-tuning run's model ready to embed FASTA/FASTQ records.

    ``checkpoint``: a RUN directory or one of its checkpoints. ``window``: bases per window (default: the
    fine-tuning window; 1024 for a pretraining run). The other arguments: :class:`genomics.classify.WindowedModel`.
    """

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu", window: int | None = None,
                 chunk: int | None = None, batch_tokens: int | None = None, iupac: str = "n"):
        model = load_run_model(checkpoint, device)
        trained_window = run_classes(checkpoint)[1] if isinstance(model, MambaSequenceClassifier) else None
        super().__init__(model, window or trained_window or DEFAULT_WINDOW, device, chunk, batch_tokens, iupac)

    def embed_file(self, path: str | Path) -> Embeddings:
        """Every record of one FASTA/FASTQ file (``-``: stdin), in file order (progress in bases on stderr)."""
        names, lengths, flagged, window_record, window_start = [], [], [], [], []
        record_rows, window_rows = [], []  # (records, d_model) and (windows, d_model) blocks, one per group
        with bases_progress(path) as progress:
            for group in self.groups(read_records(path), source_name(path)):
                windows, counts = [], []
                for name, tokens in group:
                    spans = window_starts(len(tokens), self.window)
                    windows += [tokens[s:e] for s, e in spans]
                    counts.append(len(spans))
                    window_record += [len(names)] * len(spans)
                    window_start += [s for s, _ in spans]
                    if flag := record_flag(tokens):
                        flagged.append((name, flag))
                    names.append(name)
                    lengths.append(len(tokens))
                rows = np.stack(self.batched(windows, progress=progress))
                window_rows.append(rows)
                record_rows.append(np.stack([block.mean(0) for block in np.split(rows, np.cumsum(counts)[:-1])]))
        return Embeddings(names, np.array(lengths, dtype=np.int64), np.concatenate(record_rows).astype(np.float32),
                          np.concatenate(window_rows).astype(np.float32), np.array(window_record, dtype=np.int64),
                          np.array(window_start, dtype=np.int64), flagged)
