"""Autoregressive generation of waveforms with a trained SashimiModel, in recurrent mode.

Clips are generated in batches, one sample per step of the whole U-Net (every level steps at its own rate,
see ``audio.sashimi``). A prompt (the start of a recording) is read through the same steps, teacher-forced,
and the model continues it. Each clip's negative log-likelihood under the model (bits per generated sample,
of the untempered distribution) is recorded, so generated sets can be filtered by likelihood
(``python -m audio metrics --nll DIR/nll.csv``).

On CUDA one step of the whole model, with the sampling, runs as a CUDA graph: the states and pooling buffers
are static tensors updated in place, and a level's step happens only at some phases ``t mod stride``, so one
graph is captured per phase (``stride`` = product of the pools, 16 for the paper's models) and replayed in turn.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from ssm_core.utils.progress import progress_bar

from ssm_core.models.backbone import sample_logits
from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.utils.outputs import read_head

from audio.io import SAMPLE_RATE, RateMismatch, fix_length, is_audio_file, load_audio, save_wav
from audio.mulaw import Quantization, dequantize, quantize
from audio.sashimi import SashimiModel, SashimiState

def _zero_state(state: SashimiState) -> None:
    """Reset a state in place (keeping its tensors, which a CUDA graph has captured)."""
    for t in state.down + state.up:
        t.zero_()
    for group in state.groups.values():
        for s in group:
            for f in fields(s):
                getattr(s, f.name).zero_()
    state.t = 0


class Sampler:
    """Advances ``batch`` sequences by one sample per call, in place: steps the model on the current codes,
    then draws the next codes (``sample_logits``) or, where a prompt is being read, takes the prompt's, and adds
    the negative log-likelihood (nats, untempered model) of each drawn code to ``nll``.

    On CUDA (``cuda_graph``) the whole advance (the model step, the sampling, the bookkeeping) is replayed from
    CUDA graphs, one per phase ``t mod stride``; its randomness comes from the default CUDA generator, seeded
    here. Elsewhere it runs eagerly with its own ``torch.Generator``.
    """

    def __init__(self, model: SashimiModel, batch: int, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, cuda_graph: bool = True):
        self.model, self.temperature, self.top_p = model, temperature, top_p
        device = model.embedding.weight.device
        self.classes, self.period = model.config.n_classes, model.config.stride
        self.state = model.allocate_state(batch, device)
        self.codes = torch.full((batch,), model.config.start_code, dtype=torch.long, device=device)
        self.forced = torch.zeros(batch, dtype=torch.long, device=device)
        self.use_forced = torch.zeros(batch, dtype=torch.bool, device=device)
        self.nll = torch.zeros(batch, dtype=torch.float64, device=device)
        self.forcing, self.graphs = False, None
        if cuda_graph and device.type == "cuda":
            torch.cuda.manual_seed(seed)
            self.generator = None  # graphs capture the default generator's state safely
            self._capture(device)
        else:
            self.generator = torch.Generator(device).manual_seed(seed)

    def _advance(self) -> None:
        logits = self.model.step(self.codes, self.state)[:, :self.classes]
        sampled = sample_logits(logits, self.temperature, self.top_p, self.generator)
        chosen = torch.where(self.use_forced, self.forced, sampled)
        log_probs = F.log_softmax(logits.to(self.nll.dtype), dim=-1).gather(1, chosen[:, None])[:, 0]
        self.nll.sub_(torch.where(self.use_forced, torch.zeros_like(log_probs), log_probs))
        self.codes.copy_(chosen)

    def _capture(self, device: torch.device) -> None:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (kernel compilation, allocator) off the capturing stream
            for _ in range(self.period):
                self._advance()
        torch.cuda.current_stream(device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.graphs = []
        for phase in range(self.period):
            self.state.t = phase
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._advance()
            self.graphs.append(graph)
        # capturing ran nothing; undo the warm-up
        _zero_state(self.state)
        self.codes.fill_(self.model.config.start_code)
        self.nll.zero_()

    def __call__(self, forced: torch.Tensor | None = None) -> torch.Tensor:
        """One sample: returns the chosen codes (batch,), a buffer overwritten by the next call. ``forced``
        (batch,) are the codes to take instead of sampling (a prompt)."""
        if forced is not None:
            self.forced.copy_(forced)
        if (forced is not None) != self.forcing:  # touch the flag only when it changes (one kernel less a step)
            self.forcing = forced is not None
            self.use_forced.fill_(self.forcing)
        if self.graphs is None:
            self._advance()  # model.step advances state.t
        else:
            self.graphs[self.state.t % self.period].replay()
            self.state.t += 1
        return self.codes


@dataclass
class Generated:
    codes: torch.Tensor        # (clips, samples) int64, prompt included
    nll_bits: torch.Tensor     # (clips,) mean NLL of the generated samples in bits/sample (untempered model)
    seconds: float             # wall time of the sampling loops (CUDA-graph capture excluded)
    setup_seconds: float       # allocating states and capturing graphs
    samples_per_second: float  # generated samples (summed over clips) per second of sampling


def _check_codes_fit(n: int, batch: int, length: int, device: torch.device) -> None:
    """Refuse up front clips whose codes (int64, all clips on the host, a batch on the device) cannot fit."""
    from ssm_core.utils.memory import InsufficientMemoryError, available_memory, format_bytes

    for where, clips in (("cpu", n), (device, batch)):
        needed, available = clips * length * 8, available_memory(where)
        if available is not None and needed > available:
            raise InsufficientMemoryError(
                f"{clips} clips of {length:,} samples need {format_bytes(needed)} for their codes, but "
                f"{format_bytes(available)} is available on {torch.device(where).type}: generate fewer or shorter "
                "clips (--n, --batch-size, --seconds)")


@torch.no_grad()
def generate(model: SashimiModel, n: int, length: int, *, batch_size: int = 64, prompts: torch.Tensor | None = None,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, cuda_graph: bool = True,
             compile: bool = False, progress: bool = True) -> Generated:
    """Sample ``n`` clips of ``length`` samples (codes) from ``model`` on its device, ``batch_size`` at a time.

    prompts: optional codes (n_prompts, prompt_len) with prompt_len < length; clip i continues prompt
    ``i mod n_prompts``. temperature 0 is greedy; top_p < 1 is nucleus sampling. ``compile``: run the blocks'
    steps through torch.compile (``SashimiModel.compile_step``), compiled during the first steps
    (on CUDA, while the graphs are captured, so in ``setup_seconds``).
    """
    if n < 1 or length < 1 or batch_size < 1:
        raise ValueError(f"need n, length and batch size >= 1; got n={n}, length={length}, batch_size={batch_size}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got temperature={temperature}, top_p={top_p}")
    prompt_len = 0 if prompts is None else prompts.shape[1]
    if prompt_len >= length:
        raise ValueError(f"the prompt ({prompt_len} samples) must be shorter than the clips ({length} samples)")
    device = model.embedding.weight.device
    _check_codes_fit(n, min(n, batch_size), length, device)
    model.eval()
    if compile:
        model.compile_step()
    out = torch.empty(n, length, dtype=torch.long)
    nll = torch.empty(n, dtype=torch.float64)
    bar = progress_bar(total=n * length, unit="sample", unit_scale=True, desc="generating", disable=not progress,
               dynamic_ncols=True)
    seconds = setup_seconds = 0.0
    for batch_index, first in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - first)
        begin = time.perf_counter()
        sampler = Sampler(model, b, temperature, top_p, seed + batch_index, cuda_graph)
        clip_prompts = None if prompts is None else \
            prompts[torch.arange(first, first + b) % prompts.shape[0]].to(device)
        batch_out = torch.empty(b, length, dtype=torch.long, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        setup_seconds += started - begin
        for t in range(length):
            batch_out[:, t] = sampler(clip_prompts[:, t] if t < prompt_len else None)
            bar.update(b)
        out[first:first + b] = batch_out.cpu()  # waits for the device
        nll[first:first + b] = (sampler.nll / ((length - prompt_len) * math.log(2))).cpu()
        seconds += time.perf_counter() - started
    bar.close()
    return Generated(out, nll, seconds, setup_seconds, n * (length - prompt_len) / seconds)


def read_prompts(path: str | os.PathLike, samples: int, bits: int, quantization: Quantization,
                 on_rate_mismatch: RateMismatch = "resample") -> tuple[torch.Tensor, list[Path]]:
    """Prompt codes (files, samples) from a WAV/FLAC file or every audio file directly in a folder, each cut or
    zero-padded to ``samples`` samples at 16 kHz (mixed down with a notice; resampled with a notice, or refused
    with ``on_rate_mismatch="error"``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_audio_file(p))
        if not files:
            raise FileNotFoundError(f"{path}: no WAV/FLAC files to use as prompts")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such prompt file or folder")
    waves = [fix_length(load_audio(f, SAMPLE_RATE, on_rate_mismatch), samples) for f in files]
    return quantize(torch.stack(waves), bits=bits, quantization=quantization), files


def clip_names(n: int) -> list[str]:
    """The file names of `n` generated clips."""
    return [f"sample_{i:05d}.wav" for i in range(n)]


def listed_clips(out: str | os.PathLike) -> list[str] | None:
    """The clips an earlier `write_clips` listed in ``out/nll.csv`` (plain .wav names only), or None when ``out``
    holds no such table (no nll.csv, or one that does not start with ``file,nll``)."""
    table = Path(out) / "nll.csv"
    if read_head(table, 10).split(b"\n")[0].rstrip(b"\r") != b"file,nll":
        return None
    with open(table, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))[1:]
    # a name with a folder in it is no clip of ours: it is never written over or removed
    return [row[0] for row in rows if row and re.fullmatch(r"[^/\\]+\.wav", row[0])]


def is_clip_folder(out: str | os.PathLike, names: Sequence[str]) -> bool:
    """True when `write_clips` may write ``names`` into ``out`` without writing over anything it did not write:
    ``out`` is an empty folder, or an earlier generation's (its nll.csv) that lists every one of ``names`` it holds."""
    out = Path(out)
    if not out.is_dir():
        return False
    present = {p.name for p in out.iterdir()}
    if not present:
        return True
    listed = listed_clips(out)
    return listed is not None and all(name in listed for name in names if name in present)


def write_clips(generated: Generated, out: str | os.PathLike, bits: int, quantization: Quantization,
                names: Sequence[str] | None = None) -> list[Path]:
    """DIR/<name>.wav (16 kHz mono, 16-bit PCM) for every clip and DIR/nll.csv (``file,nll`` in bits/sample).

    Clips an earlier generation listed in DIR/nll.csv and this one does not write are removed (the folder holds one
    generated set). The table is written first, atomically, so every clip in DIR is always listed in it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names or clip_names(len(generated.codes)))
    for stale in set(listed_clips(out) or []) - set(names):
        (out / stale).unlink(missing_ok=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "nll"])
    for name, value in zip(names, generated.nll_bits.tolist()):
        writer.writerow([name, f"{value:.6f}"])
    atomic_write_bytes(out / "nll.csv", table.getvalue().encode())
    return [save_wav(out / name, dequantize(codes, bits=bits, quantization=quantization))
            for name, codes in zip(names, generated.codes)]
