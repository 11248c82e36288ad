"""Audio datasets: SC09-style labelled clips, long recordings cut into windows, and flat folders of WAVs.

Every dataset returns ``(x, label)`` pairs: ``x`` is the clip as integer codes ``(samples,)`` (8-bit
mu-law by default, or linear) or as a float waveform ``(samples,)`` in [-1, 1]; ``label`` is the class
index, or -1 for unlabelled audio. Items are deterministic functions of ``(seed, epoch, index)``, so a
training run that resumes at a given step sees exactly the data it would have seen.

The labelled layout is SC09's (Speech Commands'): one subdirectory per class (``zero/``, ``one/``, ...)
of WAV/FLAC files, plus optional ``validation_list.txt`` and ``testing_list.txt`` naming the held-out
files by path relative to the directory. When neither list exists, files are split deterministically by
a hash of their name, as Speech Commands does (the part of the name from ``_nohash_`` on is ignored, so
all clips of one speaker land in the same split).
"""
from __future__ import annotations

import bisect
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from audio.errors import AudioInputError, AudioNotice
from audio.io import (SAMPLE_RATE, RateMismatch, audio_info, check_channels, check_rate, check_samples, fix_length,
                      is_audio_file, load_audio, read_segment)
from audio.mulaw import Quantization, quantize

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "validation", "test", "all")
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
CLIP_SECONDS = 1.0

# What a dataset returns: codes of a quantization, or the waveform itself.
Output = Literal[Quantization, "waveform"]
OUTPUTS: tuple[str, ...] = get_args(Output)
# A data augmentation: (waveform (samples,), rng) -> waveform; called with a per-item generator.
Transform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def encode(wave: torch.Tensor, output: Output, bits: int = 8) -> torch.Tensor:
    """Waveform ``(samples,)`` -> what a dataset returns: codes (``mulaw``/``linear``) or the waveform itself."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return wave if output == "waveform" else quantize(wave, bits=bits, quantization=output)


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for one item: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([seed, epoch, index])


def hash_split(relpath: str, validation_percent: float = 10.0, testing_percent: float = 10.0) -> str:
    """'train', 'validation' or 'test' for a file, from a hash of its name (Speech Commands' scheme)."""
    name = re.sub(r"_nohash_.*$", "", Path(relpath).name)
    bucket = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % (2**27)
    percent = bucket * (100.0 / 2**27)
    if percent < validation_percent:
        return "validation"
    if percent < validation_percent + testing_percent:
        return "test"
    return "train"


def read_split_list(root: Path, list_name: str) -> set[str]:
    """Relative paths named by ``root/list_name`` (empty when the list is absent).

    Raises AudioInputError naming the list file, line and path for an entry that does not exist.
    """
    list_path = root / list_name
    if not list_path.exists():
        return set()
    names = set()
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            rel = line.strip()
            if not rel:
                continue
            if not (root / rel).is_file():
                raise AudioInputError(f"{list_path}:{lineno}: names {rel!r}, which does not exist under {root}")
            names.add(Path(rel).as_posix())
    return names


@dataclass(frozen=True)
class Clip:
    """One file of a dataset: its path, path relative to the dataset root, and class index (-1: none)."""

    path: Path
    relpath: str
    label: int


def _class_dirs(root: Path) -> list[str]:
    """Names of the subdirectories of ``root`` that hold audio (``_background_noise_`` and hidden ones skipped)."""
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(("_", ".")) and any(is_audio_file(f) for f in d.iterdir())
    )


def is_labelled_set(root: str | os.PathLike) -> bool:
    """True when ``root`` is laid out as a labelled set (class subdirectories of audio files)."""
    root = Path(root)
    return root.is_dir() and bool(_class_dirs(root))


def scan_labelled(root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, list[Clip]]]:
    """Classes and the clips of each split of a labelled set.

    Classes are the ten digit words in SC09 order when every class directory is a digit word (so labels
    mean the same across SC09 subsets), otherwise the sorted directory names. Returns
    ``(classes, {"train": [...], "validation": [...], "test": [...]})``.
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioInputError(f"{root}: no such dataset directory")
    dirs = _class_dirs(root)
    if not dirs:
        raise AudioInputError(f"{root}: no class subdirectories with WAV/FLAC files (expected e.g. zero/, one/, ...)")
    classes = DIGITS if set(dirs) <= set(DIGITS) else tuple(dirs)
    held_out = {split: read_split_list(root, name) for split, name in SPLIT_LISTS.items()}
    use_lists = any((root / name).exists() for name in SPLIT_LISTS.values())
    splits: dict[str, list[Clip]] = {"train": [], "validation": [], "test": []}
    for name in (c for c in classes if c in dirs):  # class order, so items of class 0 come first
        for f in sorted((root / name).iterdir()):
            if not is_audio_file(f):
                continue
            rel = f"{name}/{f.name}"
            if use_lists:
                split = next((s for s, names in held_out.items() if rel in names), "train")
            else:
                split = hash_split(rel)
            splits[split].append(Clip(path=f, relpath=rel, label=classes.index(name)))
    if not use_lists:
        _fill_empty_held_out(root, splits)
    return classes, splits


def _fill_empty_held_out(root: Path, splits: dict[str, list[Clip]]) -> None:
    """In a small set the name hash can put no file in validation or test; each empty held-out split then
    takes the last training file (still a function of the file names), so every split a command needs exists."""
    for split in ("validation", "test"):
        if not splits[split] and len(splits["train"]) > 1:
            clip = splits["train"].pop()
            splits[split].append(clip)
            warnings.warn(f"{root}: no {SPLIT_LISTS[split]} and no file name hashes into the {split} split; "
                          f"holding out {clip.relpath} as the {split} split", AudioNotice, stacklevel=3)


class _AudioSet(Dataset):
    """Shared behaviour: output encoding, the per-item random generator, the epoch counter."""

    def __init__(self, output: Output, bits: int, sample_rate: int, seed: int, transform: Transform | None):
        encode(torch.zeros(1), output, bits)  # reject a bad output mode now, not at the first item
        self.output, self.bits, self.sample_rate = output, bits, sample_rate
        self.seed, self.transform, self.epoch = seed, transform, 0

    def set_epoch(self, epoch: int) -> None:
        """Items (augmentations, random window offsets) depend on the epoch; call at each epoch start."""
        self.epoch = epoch

    def _finish(self, wave: torch.Tensor, index: int) -> torch.Tensor:
        if self.transform is not None:
            wave = self.transform(wave, item_rng(self.seed, self.epoch, index))
        return encode(wave, self.output, self.bits)


class LabelledAudioSet(_AudioSet):
    """A split of an SC09-layout directory; clips padded/trimmed (at the end) to ``clip_seconds``.

    ``split`` is 'train', 'validation', 'test' or 'all'. Items are ``(x (samples,), label)``.
    ``allow_silence`` accepts silent files (generated clips may be silent).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        output: Output = "mulaw",
        bits: int = 8,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = CLIP_SECONDS,
        on_rate_mismatch: RateMismatch = "resample",
        allow_silence: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
    ):
        super().__init__(output, bits, sample_rate, seed, transform)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.classes, splits = scan_labelled(self.root)
        self.clips = [c for s in ("train", "validation", "test") for c in splits[s]] if split == "all" else splits[split]
        if not self.clips:
            raise AudioInputError(f"{self.root}: the {split!r} split has no audio files")
        self.split = split
        self.clip_samples = int(round(clip_seconds * sample_rate))
        self.on_rate_mismatch, self.allow_silence = on_rate_mismatch, allow_silence

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip = self.clips[index]
        wave = load_audio(clip.path, self.sample_rate, self.on_rate_mismatch, allow_silence=self.allow_silence)
        return self._finish(fix_length(wave, self.clip_samples), index), clip.label


class FlatAudioFolder(_AudioSet):
    """Every WAV/FLAC file directly inside ``root`` (sorted by name), each as one item ``(x, -1)``.

    With ``clip_seconds`` set, clips are padded/trimmed at the end to that length (needed for batching).
    ``allow_silence`` accepts silent files (generated clips may be silent). ``files`` restricts the set to
    the named files of ``root`` (e.g. the clips a likelihood filter kept), in that order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        output: Output = "mulaw",
        bits: int = 8,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float | None = None,
        on_rate_mismatch: RateMismatch = "resample",
        allow_silence: bool = False,
        files: Sequence[str | os.PathLike] | None = None,
        transform: Transform | None = None,
        seed: int = 0,
    ):
        super().__init__(output, bits, sample_rate, seed, transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise AudioInputError(f"{self.root}: no such directory of audio files")
        self.paths = sorted(p for p in self.root.iterdir() if p.is_file() and is_audio_file(p))
        if files is not None:  # a chosen subset, in the order given
            present = {p.name: p for p in self.paths}
            missing = [str(f) for f in files if Path(f).name not in present]
            if missing:
                raise AudioInputError(f"{self.root}: has no file(s) {', '.join(missing[:5])}")
            self.paths = [present[Path(f).name] for f in files]
        if not self.paths:
            raise AudioInputError(f"{self.root}: contains no WAV/FLAC files")
        self.clip_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
        self.on_rate_mismatch, self.allow_silence = on_rate_mismatch, allow_silence

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        wave = load_audio(self.paths[index], self.sample_rate, self.on_rate_mismatch, allow_silence=self.allow_silence)
        if self.clip_samples is not None:
            wave = fix_length(wave, self.clip_samples)
        return self._finish(wave, index), -1


class LongRecordingWindows(_AudioSet):
    """Long recordings (YouTubeMix/Beethoven style: a folder of WAV/FLAC files) cut into fixed windows.

    Each file yields ``max(1, (n - window) // hop + 1)`` windows of ``window`` samples at ``sample_rate``
    (a file shorter than a window gives one zero-padded window). Windows are read lazily with partial
    reads, so memory stays flat however long the recordings are. A file at another rate is resampled (with a
    notice) or refused (``on_rate_mismatch="error"``); a silent file is refused unless ``allow_silence``. With ``random_offset`` each window is
    shifted by a random amount in ``[0, hop)`` (kept inside the file), drawn from ``(seed, epoch, index)``.
    Items are ``(x (window,), -1)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        window: int,
        hop: int | None = None,
        output: Output = "mulaw",
        bits: int = 8,
        sample_rate: int = SAMPLE_RATE,
        random_offset: bool = False,
        on_rate_mismatch: RateMismatch = "resample",
        allow_silence: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
    ):
        super().__init__(output, bits, sample_rate, seed, transform)
        if window <= 0 or (hop is not None and hop <= 0):
            raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
        self.root, self.window, self.hop = Path(root), window, hop or window
        self.random_offset = random_offset
        if not self.root.is_dir():
            raise AudioInputError(f"{self.root}: no such directory of recordings")
        paths = sorted(p for p in self.root.iterdir() if p.is_file() and is_audio_file(p))
        if not paths:
            raise AudioInputError(f"{self.root}: contains no WAV/FLAC files")
        self.infos = [audio_info(p) for p in paths]
        for info in self.infos:  # checked and announced here, before training reads them window by window
            check_rate(info, sample_rate, on_rate_mismatch)
            check_channels(info, "mix")
            check_samples(info, allow_silence)
        # Length of each recording in output samples, and the first window index of each file.
        self.lengths = [int(i.frames * sample_rate // i.sample_rate) for i in self.infos]
        counts = [max(1, (n - window) // self.hop + 1) for n in self.lengths]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, first sample) of window ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        file = bisect.bisect_right(self.starts, index) - 1
        start = (index - self.starts[file]) * self.hop
        if self.random_offset:
            room = min(self.hop, self.lengths[file] - self.window - start + 1)
            if room > 1:
                start += int(item_rng(self.seed, self.epoch, index).integers(room))
        return file, start

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        file, start = self.locate(index)
        wave = read_segment(self.infos[file], start, self.window, self.sample_rate)
        return self._finish(wave, index), -1


def open_audio_set(
    root: str | os.PathLike, split: str = "all", clip_seconds: float | None = CLIP_SECONDS, **kwargs
) -> LabelledAudioSet | FlatAudioFolder:
    """A labelled set when ``root`` has class subdirectories, else a flat folder of audio files.

    ``split`` applies to labelled sets only; ``kwargs`` go to the dataset (e.g. ``output="waveform"``).
    """
    root = Path(root)
    if is_labelled_set(root):
        return LabelledAudioSet(root, split=split, clip_seconds=clip_seconds or CLIP_SECONDS, **kwargs)
    return FlatAudioFolder(root, clip_seconds=clip_seconds, **kwargs)
