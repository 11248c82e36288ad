"""Classify the records of FASTA or FASTQ files with a fine-tuned species classifier.

Input comes through :func:`genomics.reads.read_records`: FASTA or FASTQ, plain, gzip or bgzip, from a file, a pipe or
stdin (``-``), recognised from the content and read in one streaming pass. Every record is cut into windows of the
model's window length (``--window`` overrides it): consecutive windows from the record's start, the last one aligned
to the record's end (so it overlaps its neighbour rather than being short). A record shorter than the window is read
whole, as one shorter window. Windows of consecutive records are batched together (about ``batch_tokens`` bases
per forward pass: windows of equal length stacked, scattered lengths packed back to back), so a file of short reads
runs as few passes; a window longer than
``chunk`` bases goes through the backbone chunk by chunk with the recurrent state carried over, so memory depends on
the chunk, not on the window (the default chunk is short on CPU, where small pieces run faster). Memory holds one
batch of records, or one long record: it grows with the longest record (about 5 bytes per base while the record is
parsed), never with the file. The results (a few numbers per record or window) are kept until the end.

Strands: a read may come from either strand of the DNA. With ``strand="both"`` (the default) every window is also
read reverse-complemented and its class probabilities are the mean of the two strands' probabilities (the arithmetic
mean: one strand read confidently is not vetoed by an unsure other); ``strand="forward"`` reads the records as given.
Each result also keeps each strand's own probabilities, so a row can say which strand alone gave the predicted class
the higher probability (``strand``) and how probable each strand found it (``p_forward``, ``p_reverse``).

Aggregation over a record's windows: the mean of the windows' log-probabilities, renormalised (a softmax of
the mean log-probabilities, i.e. the normalised geometric mean of the window probabilities). Windows count as
independent pieces of evidence, so a record whose windows mostly agree gets a confident call. Each strand's own
record probabilities are aggregated the same way from its windows.

Records that say nothing are flagged, not classified: a record with fewer than ``min_bases`` A/C/G/T bases (all N,
or very short) keeps its row, flagged ``no_bases`` (none at all) or ``short``, with no prediction; a window of a
classified record with no A/C/G/T base (an N run) is flagged ``no_bases`` and left out of its record's aggregate.

Input errors stop the command before anything is written, naming the file and record: a missing, empty or
non-FASTA/FASTQ file, a truncated FASTQ record, a record with no sequence, a character outside the alphabet (IUPAC
ambiguity codes are read as N with ``iupac="n"``, refused with ``iupac="error"``; anything else is always refused).
No record is ever left out of a finished output.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssm_core.utils.progress import progress_bar

from ssm_core import MambaLMHeadModel, MambaSequenceClassifier
from ssm_core.models import ModelFileError, describe, read_model_info
from ssm_core.train import CheckpointError, resolve_checkpoint
from ssm_core.utils.varlen import cu_seqlens_of, pool_packed

from genomics.errors import GenomicsInputError
from genomics.models import load_run_model, run_path
from genomics.reads import SequenceRecord, read_records, source_name
from genomics.tokenizer import VOCAB_SIZE, decode, encode, is_base, reverse_complement

STRANDS = ("both", "forward")
STRAND_NAMES = ("forward", "reverse")  # rows of a result's strand_log_probs
NO_BASES, SHORT = "no_bases", "short"  # flags of records (and windows) that say nothing
# A record with fewer A/C/G/T bases is not classified: the models are fine-tuned on windows of a thousand bases or
# more, and a call from a few dozen says more about the model than about the record.
MIN_BASES = 32
DEFAULT_WINDOW = 1024  # when neither --window nor the run names one


@dataclass
class WindowResult:
    start: int  # 0-based, half-open
    end: int
    log_probs: np.ndarray | None  # (classes,) strands averaged; None when flagged
    strand_log_probs: np.ndarray | None  # (strands, classes): forward[, reverse]; None when flagged
    flag: str = ""  # "" or NO_BASES


@dataclass
class RecordResult:
    file: str
    record: str
    length: int
    log_probs: np.ndarray | None  # (classes,) aggregated, normalised; None when the record is flagged
    strand_log_probs: np.ndarray | None = None  # (strands, classes), each strand aggregated alone
    windows: list[WindowResult] = field(default_factory=list)
    flag: str = ""  # "", NO_BASES or SHORT

    @property
    def probabilities(self) -> np.ndarray | None:
        return None if self.log_probs is None else np.exp(self.log_probs)


def window_starts(length: int, window: int) -> list[tuple[int, int]]:
    """(start, end) of the windows covering a record: consecutive, the last aligned to the record's end."""
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return [(s, s + window) for s in starts]


def record_flag(tokens: np.ndarray, min_bases: int = MIN_BASES) -> str:
    """"" for a record worth classifying; NO_BASES (no A/C/G/T) or SHORT (fewer than ``min_bases``) otherwise."""
    bases = int(is_base(tokens).sum())
    return "" if bases >= min_bases else NO_BASES if bases == 0 else SHORT


def describe_flagged(flagged: list[tuple[str, str, str]], min_bases: int = MIN_BASES) -> str:
    """One line naming records that say nothing, from (file, record, flag) triples (the first five, then a count)."""
    why = {NO_BASES: "no A/C/G/T base", SHORT: f"fewer than {min_bases} A/C/G/T bases"}
    named = [f"{record!r} in {source_name(file)} ({why[flag]})" for file, record, flag in flagged[:5]]
    more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    return f"{len(flagged)} record(s) say nothing: " + ", ".join(named) + more


def _normalised_mean(log_probs: np.ndarray) -> np.ndarray:
    """(windows, ..., classes) -> (..., classes): the normalised geometric mean of the windows' probabilities."""
    mean = log_probs.mean(0)
    return mean - np.logaddexp.reduce(mean, axis=-1, keepdims=True)


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


# Default pieces per window and bases per pass. On CPU a pass over 4 windows x 1,024 bases keeps every activation
# under glibc's 32 MiB mmap threshold (freed memory is reused instead of page-faulted again) and mostly in cache:
# the 7m model read 4 windows of 65,536 bases in 38 s instead of 84 s (2 cores); passes of 4,096 bases read short
# windows 1.7x (1.4m) to 2.7x (tiny) faster than passes of 262,144 (2 quiet cores, 150 and 2,000-base windows).
# A GPU wants long pieces and big passes.
CHUNK_CPU, CHUNK_GPU = 2**10, 2**16
BATCH_CPU, BATCH_GPU = 2**12, 2**18


class WindowedModel:
    """A run's DNA model read window by window over streamed records: what ``classify`` and ``embed`` share.

    ``model``: a species classifier or a pretrained language model. ``window``: bases per window.
    ``batch_tokens``: bases per forward pass (default ``BATCH_CPU`` or ``BATCH_GPU`` by device); ``chunk``: longest
    piece read at once (default ``CHUNK_CPU`` or ``CHUNK_GPU`` by device). ``bf16``: matrix products in bfloat16 with float32 accumulation (``torch.autocast``):
    1.4x faster on a CPU with AVX512-BF16, but the probabilities move (see ``--bf16`` in the CLI). ``pack``:
    windows of at most ``chunk`` bases are read packed (:meth:`batched`), at most ``pack_tokens`` bases per pack
    (default ``batch_tokens``).
    """

    def __init__(self, model: nn.Module, window: int, device: torch.device | str = "cpu", chunk: int | None = None,
                 batch_tokens: int | None = None, iupac: str = "n", bf16: bool = False, pack: bool = True,
                 pack_tokens: int | None = None):
        if not isinstance(model, (MambaSequenceClassifier, MambaLMHeadModel)) \
                or model.config.vocab_size != VOCAB_SIZE:
            raise GenomicsInputError(f"the checkpoint holds a {type(model).__name__} that does not read DNA tokens "
                                     "(expected a `genomics pretrain` or `genomics finetune` run)")
        if window < 1:
            raise GenomicsInputError(f"--window must be positive, got {window}")
        self.model, self.window = model, int(window)
        self.device = torch.device(device)
        self.chunk = chunk or (CHUNK_CPU if self.device.type == "cpu" else CHUNK_GPU)
        self.batch_tokens = batch_tokens or (BATCH_CPU if self.device.type == "cpu" else BATCH_GPU)
        self.iupac, self.bf16 = iupac, bf16
        self.pack, self.pack_tokens = pack, pack_tokens or self.batch_tokens

    @torch.no_grad()
    def run(self, tokens: np.ndarray, head: bool = False) -> np.ndarray:
        """tokens uint8 (batch, length) -> the input of the classifier's head (batch, d_model), float32: the pooled
        final hidden states, standardised as the classifier does (a language model's: mean-pooled). With
        ``head``, the classifier's log-probabilities (batch, classes) instead."""
        ids = torch.from_numpy(tokens.astype(np.int64)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._features(self.model.backbone.pooled(ids, self._pooling(), self.chunk), head)

    @torch.no_grad()
    def run_packed(self, windows: list[np.ndarray], head: bool = False) -> np.ndarray:
        """windows, each uint8 (length,) of any length >= 1, read as one pack (1, total) with ``cu_seqlens``, each
        as if alone -> one row per window, as :meth:`run` gives."""
        ids = torch.from_numpy(np.concatenate(windows).astype(np.int64)).to(self.device)[None]
        cu_seqlens = cu_seqlens_of([len(w) for w in windows], self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.model.backbone(ids, cu_seqlens=cu_seqlens)
            return self._features(pool_packed(hidden, cu_seqlens, self._pooling(), "classify"), head)

    def _pooling(self) -> str:
        return self.model.config.pooling if isinstance(self.model, MambaSequenceClassifier) else "mean"

    def _features(self, pooled: torch.Tensor, head: bool) -> np.ndarray:
        """pooled (batch, d_model) -> standardised features (a classifier's) or log-probabilities (``head``)."""
        features = self.model.standardize(pooled) if isinstance(self.model, MambaSequenceClassifier) else pooled
        if head:
            return torch.log_softmax(self.model.head(features).float(), -1).cpu().numpy()
        return features.float().cpu().numpy()

    def groups(self, records: Iterable[SequenceRecord], source: str,
               copies: int = 1) -> Iterator[list[tuple[str, np.ndarray]]]:
        """(name, tokens) of the records in order, in groups of about ``batch_tokens`` bases (each read ``copies``
        times: strands), so that a batch can hold windows of several records."""
        group, size = [], 0
        for record in records:
            tokens = encode(record.sequence, iupac=self.iupac, source=f"{source}, record {record.name!r}")
            group.append((record.name, tokens))
            size += len(tokens) * copies
            if size >= self.batch_tokens:
                yield group
                group, size = [], 0
        if group:
            yield group

    def batched(self, windows: list[np.ndarray], head: bool = False, progress: tqdm | None = None) -> list[np.ndarray]:
        """:meth:`run` over token windows (length,) of any lengths. Windows of one length are stacked, about
        ``batch_tokens`` bases per pass, when there are at least ``pack_tokens`` bases of them; the rest, of at
        most ``chunk`` bases each, are packed back to back whatever their lengths (``pack``: reads and contigs of
        scattered lengths need no padding and no pass of their own). Windows longer than ``chunk`` are read chunk
        by chunk. Returns one output row per window, in order."""
        out: list[np.ndarray | None] = [None] * len(windows)
        by_length = defaultdict(list)
        for i, w in enumerate(windows):
            by_length[len(w)].append(i)
        to_pack = [i for length, indices in by_length.items()
                   if self.pack and length <= self.chunk and length * len(indices) < self.pack_tokens for i in indices]
        pack, size = [], 0
        for i in sorted(to_pack) + [None]:
            if pack and (i is None or size + len(windows[i]) > self.pack_tokens):
                for j, row in zip(pack, self.run_packed([windows[j] for j in pack], head)):
                    out[j] = row
                if progress is not None:
                    progress.update(size)
                pack, size = [], 0
            if i is not None:
                pack.append(i)
                size += len(windows[i])
        for length, indices in by_length.items():
            indices = [i for i in indices if out[i] is None]
            per_batch = max(1, self.batch_tokens // length)
            for j in range(0, len(indices), per_batch):
                part = indices[j:j + per_batch]
                for i, row in zip(part, self.run(np.stack([windows[i] for i in part]), head)):
                    out[i] = row
                if progress is not None:
                    progress.update(length * len(part))
        return out


def bases_progress(path: str | Path) -> tqdm:
    """A progress bar in bases for one input (stderr, shown on a terminal only)."""
    return progress_bar(desc=Path(source_name(path)).name, unit="bp", unit_scale=True, leave=False, disable=None)


class SpeciesClassifier(WindowedModel):
    """A fine-tuned classifier ready to read FASTA/FASTQ files.

    ``checkpoint``: a finetune RUN directory, a copy of its model directory, or one of its checkpoints.
    ``window``: bases per window (default:
    the fine-tuning window). ``strand``: "both" (default) or "forward" (module docstring). ``min_bases``: records
    with fewer A/C/G/T bases are flagged, not classified. The other arguments: :class:`WindowedModel`.
    """

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu", window: int | None = None,
                 chunk: int | None = None, batch_tokens: int | None = None, iupac: str = "n", bf16: bool = False,
                 strand: str = "both", min_bases: int = MIN_BASES, pack: bool = True, pack_tokens: int | None = None):
        model = load_run_model(checkpoint, device)
        if isinstance(model, MambaLMHeadModel):
            raise GenomicsInputError(_PRETRAINING.format(checkpoint=checkpoint))
        if not isinstance(model, MambaSequenceClassifier):
            raise GenomicsInputError(f"--checkpoint {checkpoint} is {describe(model)}, not a DNA classifier")
        self.classes, trained_window = run_classes(checkpoint)
        if model.config.num_classes != len(self.classes):
            raise GenomicsInputError(f"--checkpoint {checkpoint}: the model has {model.config.num_classes} "
                                     f"outputs but the run names {len(self.classes)} classes")
        super().__init__(model, window or trained_window or DEFAULT_WINDOW, device, chunk, batch_tokens, iupac,
                         bf16, pack, pack_tokens)
        if strand not in STRANDS:
            raise GenomicsInputError(f"strand must be one of {STRANDS}, got {strand!r}")
        self.strand, self.min_bases = strand, min_bases

    def classify_records(self, records: Iterable[SequenceRecord], file: str,
                         progress: tqdm | None = None) -> Iterator[RecordResult]:
        """A result per record, in order (``file`` names them in results and messages)."""
        strands = 2 if self.strand == "both" else 1
        for group in self.groups(records, source_name(file), strands):
            plans, windows = [], []
            for name, tokens in group:
                flag = record_flag(tokens, self.min_bases)
                spans = window_starts(len(tokens), self.window)
                flags = [flag or ("" if is_base(tokens[s:e]).any() else NO_BASES) for s, e in spans]
                for (s, e), window_flag in zip(spans, flags):
                    if not window_flag:
                        windows += [tokens[s:e], reverse_complement(tokens[s:e])][:strands]
                plans.append((name, len(tokens), spans, flags, flag))
            outputs = iter(self.batched(windows, head=True, progress=progress))
            for name, length, spans, flags, flag in plans:
                results = []
                for (s, e), window_flag in zip(spans, flags):
                    if window_flag:
                        results.append(WindowResult(s, e, None, None, window_flag))
                        continue
                    per_strand = np.stack([next(outputs) for _ in range(strands)])  # (strands, classes)
                    mean = np.logaddexp.reduce(per_strand, axis=0) - math.log(strands)
                    results.append(WindowResult(s, e, mean, per_strand))
                used = [w for w in results if not w.flag]
                if flag or not used:
                    yield RecordResult(file, name, length, None, None, results, flag or NO_BASES)
                    continue
                yield RecordResult(file, name, length, _normalised_mean(np.stack([w.log_probs for w in used])),
                                   _normalised_mean(np.stack([w.strand_log_probs for w in used])), results)

    def classify_file(self, path: str | Path) -> list[RecordResult]:
        """Every record of one FASTA/FASTQ file (``-``: stdin), in file order (progress in bases on stderr)."""
        with bases_progress(path) as progress:
            return list(self.classify_records(read_records(path), str(path), progress))


def read_predictions(classifier: SpeciesClassifier, windows: np.ndarray, name: str) -> np.ndarray:
    """The class ``classifier`` predicts for each of ``windows``, test windows longer than it was trained on, each
    read as `classify` reads a record: split into the classifier's windows, both strands, class probabilities the
    normalised geometric mean of its windows'. ``windows``: tokens (n, length) with PAD beyond a record's end;
    returns (n,) indices into ``classifier.classes``, -1 for a window flagged instead (too few bases); ``name``
    labels the progress and messages."""
    records = [SequenceRecord(f"w{i}", decode(x, skip_special=True), 1) for i, x in enumerate(windows)]
    return np.array([-1 if r.log_probs is None else int(np.argmax(r.log_probs))
                     for r in classifier.classify_records(records, name)], dtype=np.int64)


def _format(p: float | None) -> str:
    return f"{p:.6g}" if p is not None and math.isfinite(p) else "nan"


def _call(log_probs: np.ndarray | None, strand_log_probs: np.ndarray | None, classes: list[str]) -> dict:
    """A prediction as plain values: predicted class, probabilities, the strand that gave the predicted class the
    higher probability alone, each strand's probability of it (None where there is no prediction or strand)."""
    if log_probs is None:
        return {"predicted": None, "probabilities": None, "strand": None, "p_forward": None, "p_reverse": None}
    predicted = int(np.argmax(log_probs))
    alone = np.exp(strand_log_probs[:, predicted])
    return {"predicted": classes[predicted], "probabilities": np.exp(log_probs).tolist(),
            "strand": STRAND_NAMES[int(np.argmax(alone))], "p_forward": float(alone[0]),
            "p_reverse": float(alone[1]) if len(alone) > 1 else None}


def to_tsv(results: list[RecordResult], classes: list[str], per_window: bool = False) -> str:
    """TSV text: file, record, length, [start, end,] predicted, p_<class>..., strand, p_forward, p_reverse, flag
    (one row per record or window). A row without a prediction has an empty predicted and strand and nan
    probabilities; flag is empty unless the record (or window) says nothing."""
    header = ["file", "record", "length"] + (["start", "end"] if per_window else []) + ["predicted"] + [
        f"p_{c}" for c in classes] + ["strand", "p_forward", "p_reverse", "flag"]
    lines = ["\t".join(header)]
    for r in results:
        rows = ([(w.log_probs, w.strand_log_probs, w.flag, [str(w.start), str(w.end)]) for w in r.windows]
                if per_window else [(r.log_probs, r.strand_log_probs, r.flag, [])])
        for log_probs, strand_log_probs, flag, span in rows:
            call = _call(log_probs, strand_log_probs, classes)
            probs = call["probabilities"] or [None] * len(classes)
            lines.append("\t".join([r.file, r.record, str(r.length), *span, call["predicted"] or "",
                                    *(_format(p) for p in probs), call["strand"] or "", _format(call["p_forward"]),
                                    _format(call["p_reverse"]), flag]))
    return "\n".join(lines) + "\n"


def to_json(results: list[RecordResult], classes: list[str], per_window: bool = False) -> str:
    def entry(log_probs, strand_log_probs, flag):
        call = _call(log_probs, strand_log_probs, classes)
        if call["probabilities"] is not None:
            call["probabilities"] = dict(zip(classes, call["probabilities"]))
        return {**call, "flag": flag or None}

    out = []
    for r in results:
        item = {"file": r.file, "record": r.record, "length": r.length,
                **entry(r.log_probs, r.strand_log_probs, r.flag)}
        if per_window:
            item["windows"] = [{"start": w.start, "end": w.end, **entry(w.log_probs, w.strand_log_probs, w.flag)}
                               for w in r.windows]
        out.append(item)
    return json.dumps({"classes": classes, "records": out}, indent=2) + "\n"
