"""Classify the records of FASTA files with a fine-tuned species classifier.

Every record is cut into windows of the model's window length (``--window`` overrides it): consecutive
windows from the record's start, the last one aligned to the record's end (so it overlaps its neighbour
rather than being short). A record shorter than the window is read whole, as one shorter window. Windows longer
than ``chunk`` bases go through the backbone chunk by chunk with the recurrent state carried over, so memory
depends on the chunk, not on the window (the default chunk is short on CPU, where small pieces run faster);
windows are fetched one batch at a time through the FASTA index, so a record of any length (a whole chromosome)
is classified in constant memory.

Aggregation over a record's windows: the mean of the windows' log-probabilities, renormalised (a softmax of
the mean log-probabilities, i.e. the normalised geometric mean of the window probabilities). Windows count as
independent pieces of evidence, so a record whose windows mostly agree gets a confident call.

Input errors stop the command before anything is written, naming the file and record: a missing, empty or
non-FASTA file, a record with no sequence, a character outside the alphabet (IUPAC ambiguity codes are read as N
with ``iupac="n"``, refused with ``iupac="error"``; anything else is always refused). No record is ever left out
of a finished output.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ssm_core import MambaLMHeadModel, MambaSequenceClassifier
from ssm_core.models import ModelFileError, describe, read_model_info
from ssm_core.train import CheckpointError, resolve_checkpoint

from genomics.errors import GenomicsInputError
from genomics.fasta import open_fasta, read_fasta_records
from genomics.models import load_run_model, run_path
from genomics.tokenizer import encode


@dataclass
class WindowResult:
    start: int  # 0-based, half-open
    end: int
    log_probs: np.ndarray  # (classes,)


@dataclass
class RecordResult:
    file: str
    record: str
    length: int
    log_probs: np.ndarray  # (classes,) aggregated, normalised
    windows: list[WindowResult] = field(default_factory=list)

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_probs)


def window_starts(length: int, window: int) -> list[tuple[int, int]]:
    """(start, end) of the windows covering a record: consecutive, the last aligned to the record's end."""
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return [(s, s + window) for s in starts]


def fasta_records(path: str | Path, iupac: str) -> Iterator[tuple[str, int, Callable[[int, int], np.ndarray]]]:
    """The records of a FASTA file in file order as (name, length, fetch(start, end) -> tokens uint8).

    Plain and bgzip files are read at random positions through their .fai index (built next to the file when
    missing); a plain-gzip file, or one whose line lengths vary (which an index cannot describe), is read
    sequentially into memory instead.
    """
    path = Path(path)
    try:
        fasta = open_fasta(path)
    except GenomicsInputError as err:
        if "plain gzip" not in str(err) and "cannot index" not in str(err):
            raise
        fasta = None
    if fasta is not None:
        for name, length in fasta.lengths.items():
            yield name, length, lambda start, end, name=name: fasta.fetch(name, start, end, iupac=iupac)
        return
    for name, text in read_fasta_records(path):
        source = f"{path}, record {name!r}"
        yield name, len(text), lambda start, end, text=text, source=source: encode(
            text[start:end], iupac=iupac, source=source, offset=start)


def run_classes(checkpoint: str | Path) -> tuple[list[str], int | None]:
    """Class names and fine-tuning window of the classifier a ``--checkpoint`` points at: from its model.json (a
    model directory carries them wherever it is copied), else from the run's config.json (runs saved before
    model.json had them, and checkpoint files)."""
    try:
        target = resolve_checkpoint(run_path(checkpoint))
        info = read_model_info(target) if target.is_dir() else None
    except (CheckpointError, ModelFileError) as err:
        raise GenomicsInputError(str(err)) from None
    if info is not None and info.labels:
        return info.labels, info.window
    candidates = [target, target.parent] if target.is_dir() else [target.parent.parent, target.parent]
    for directory in candidates:
        config = directory / "config.json"
        if config.is_file():
            try:
                record = json.loads(config.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise GenomicsInputError(f"--checkpoint {checkpoint}: {config} is not valid JSON ({err})") from None
            if isinstance(record, dict) and record.get("classes"):
                return list(record["classes"]), record.get("data", {}).get("window")
            if isinstance(record, dict) and "seqlen" in record.get("data", {}):
                raise GenomicsInputError(_PRETRAINING.format(checkpoint=checkpoint))
    raise GenomicsInputError(f"--checkpoint {checkpoint}: no class names, neither in its model.json "
                             "(metadata.id2label) nor in a run's config.json (expected a `genomics finetune` run "
                             "or a copy of its model directory)")


_PRETRAINING = ("--checkpoint {checkpoint}: a pretraining run, which has no classes; fine-tune it first "
                "(`genomics finetune --init {checkpoint} ...`)")


# Default pieces per window. On CPU a pass over 4 windows x 1,024 bases keeps every activation under glibc's
# 32 MiB mmap threshold (freed memory is reused instead of page-faulted again) and mostly in cache: the 7m model
# read 4 windows of 65,536 bases in 38 s instead of 84 s (2 cores). A GPU wants long pieces.
CHUNK_CPU, CHUNK_GPU = 2**10, 2**16


class SpeciesClassifier:
    """A fine-tuned classifier ready to read FASTA files.

    ``checkpoint``: a finetune RUN directory, a copy of its model directory, or one of its checkpoints.
    ``window``: bases per window (default: the fine-tuning window). ``batch_tokens``: bases per forward pass;
    ``chunk``: longest piece read at once (default ``CHUNK_CPU`` or ``CHUNK_GPU`` by device). ``bf16``: matrix products in bfloat16 with float32
    accumulation (``torch.autocast``): 1.4x faster on a CPU with AVX512-BF16, but the probabilities move (see
    ``--bf16`` in the CLI).
    """

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu", window: int | None = None,
                 chunk: int | None = None, batch_tokens: int = 2**18, iupac: str = "n", bf16: bool = False):
        self.model = load_run_model(checkpoint, device)
        if isinstance(self.model, MambaLMHeadModel):
            raise GenomicsInputError(_PRETRAINING.format(checkpoint=checkpoint))
        if not isinstance(self.model, MambaSequenceClassifier):
            raise GenomicsInputError(f"--checkpoint {checkpoint} is {describe(self.model)}, not a DNA classifier")
        self.classes, trained_window = run_classes(checkpoint)
        if self.model.config.num_classes != len(self.classes):
            raise GenomicsInputError(f"--checkpoint {checkpoint}: the model has {self.model.config.num_classes} "
                                     f"outputs but the run names {len(self.classes)} classes")
        self.window = int(window or trained_window or 1024)
        if self.window < 1:
            raise GenomicsInputError(f"--window must be positive, got {self.window}")
        self.device = torch.device(device)
        self.chunk = chunk or (CHUNK_CPU if self.device.type == "cpu" else CHUNK_GPU)
        self.batch_tokens, self.iupac, self.bf16 = batch_tokens, iupac, bf16

    @torch.no_grad()
    def _log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """tokens uint8 (batch, length) -> log-probabilities (batch, classes)."""
        ids = torch.from_numpy(tokens.astype(np.int64)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = (self.model.forward_chunked(ids, self.chunk) if ids.shape[1] > self.chunk else self.model(ids))
        return torch.log_softmax(logits.float(), -1).cpu().numpy()

    def classify_record(self, file: str, name: str, length: int, fetch: Callable[[int, int], np.ndarray],
                        progress: tqdm | None = None) -> RecordResult:
        spans = window_starts(length, self.window)
        per_batch = max(1, self.batch_tokens // self.window)
        windows = []
        for i in range(0, len(spans), per_batch):
            batch = spans[i:i + per_batch]
            log_probs = self._log_probs(np.stack([fetch(s, e) for s, e in batch]))
            windows += [WindowResult(s, e, lp) for (s, e), lp in zip(batch, log_probs)]
            if progress is not None:
                progress.update(sum(e - s for s, e in batch))
        mean = np.mean([w.log_probs for w in windows], axis=0)
        aggregated = mean - np.logaddexp.reduce(mean)
        return RecordResult(file, name, length, aggregated, windows)

    def classify_file(self, path: str | Path) -> list[RecordResult]:
        """Every record of one FASTA file, in file order (progress in bases on stderr)."""
        records = list(fasta_records(path, self.iupac))
        total = sum(length for _, length, _ in records)
        results = []
        with tqdm(total=total, desc=Path(path).name, unit="bp", unit_scale=True, leave=False,
                  disable=total <= self.batch_tokens) as progress:
            for name, length, fetch in records:
                results.append(self.classify_record(str(path), name, length, fetch, progress))
        return results


def _format(p: float) -> str:
    return f"{p:.6g}" if math.isfinite(p) else "nan"


def to_tsv(results: list[RecordResult], classes: list[str], per_window: bool = False) -> str:
    """TSV text: file, record, length, [start, end,] predicted, p_<class>... (one row per record or window)."""
    header = ["file", "record", "length"] + (["start", "end"] if per_window else []) + ["predicted"] + [
        f"p_{c}" for c in classes]
    lines = ["\t".join(header)]
    for r in results:
        rows = ([(w.log_probs, [str(w.start), str(w.end)]) for w in r.windows] if per_window
                else [(r.log_probs, [])])
        for log_probs, span in rows:
            probs = np.exp(log_probs)
            lines.append("\t".join([r.file, r.record, str(r.length), *span, classes[int(np.argmax(probs))],
                                    *(_format(p) for p in probs)]))
    return "\n".join(lines) + "\n"


def to_json(results: list[RecordResult], classes: list[str], per_window: bool = False) -> str:
    def entry(log_probs):
        probs = np.exp(log_probs)
        return {"predicted": classes[int(np.argmax(probs))],
                "probabilities": {c: float(p) for c, p in zip(classes, probs)}}

    out = []
    for r in results:
        item = {"file": r.file, "record": r.record, "length": r.length, **entry(r.log_probs)}
        if per_window:
            item["windows"] = [{"start": w.start, "end": w.end, **entry(w.log_probs)} for w in r.windows]
        out.append(item)
    return json.dumps({"classes": classes, "records": out}, indent=2) + "\n"
