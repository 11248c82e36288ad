"""Reading and writing audio files (WAV/FLAC through soundfile, resampling through torchaudio).

Every problem with an input file raises :class:`audio.errors.AudioInputError` naming the file:
missing, unreadable or not audio, truncated, empty, silence only, a NaN or infinite sample (naming the first),
or a sample rate / channel count the caller refused. Conversions the caller allowed (resampling, mixing channels
down to mono) emit one :class:`audio.errors.AudioConversionWarning` line naming the file, once per file and
conversion in a process (a file is read again every epoch).
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from audio.errors import AudioConversionWarning, AudioInputError

AUDIO_EXTENSIONS = (".wav", ".flac")
SAMPLE_RATE = 16000
# Peak amplitude below which a whole file counts as silence: -80 dBFS, about three 16-bit steps.
SILENCE_PEAK = 1e-4
# The longest clip ``save_wav`` can write: a WAV's sizes are 32-bit byte counts (16-bit mono samples), about 37 h.
MAX_WAV_SECONDS = (2**32 - 1 - 36) // 2 / SAMPLE_RATE

RateMismatch = Literal["resample", "error"]
MonoPolicy = Literal["mix", "error"]


def is_audio_file(path: str | os.PathLike) -> bool:
    """True for a file name with an extension the readers accept (.wav, .flac; any case)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says, after checking that its data is all there."""

    path: Path
    sample_rate: int
    frames: int
    channels: int
    floating: bool = False  # float samples (WAV FLOAT/DOUBLE), which can be NaN or infinite; PCM cannot


_SHORT_DATA = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header of an audio file; raises AudioInputError for missing, non-audio, truncated or empty files."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: the file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioInputError(f"{path}: not a readable WAV/FLAC audio file ({err})") from None
    # libsndfile quietly shortens a WAV whose data chunk ends early; its log line says so.
    short = _SHORT_DATA.search(info.extra_info or "")
    if short and int(short.group(2)) < int(short.group(1)):
        raise AudioInputError(
            f"{path}: truncated audio file (header declares {short.group(1)} data bytes, "
            f"only {short.group(2)} present)"
        )
    if info.frames <= 0:
        raise AudioInputError(f"{path}: the audio file contains no samples")
    return AudioInfo(path=path, sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels),
                     floating=info.subtype in ("FLOAT", "DOUBLE"))


def _read_frames(info: AudioInfo, start: int, frames: int) -> np.ndarray:
    """Frames [start, start+frames) as float32 (frames, channels); truncated data or a NaN or infinite sample
    raises AudioInputError."""
    try:
        data, _ = sf.read(str(info.path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioInputError(f"{info.path}: the audio data is corrupt or truncated ({err})") from None
    if data.shape[0] < min(frames, info.frames - start):
        raise AudioInputError(
            f"{info.path}: truncated audio file (read {data.shape[0]} of {min(frames, info.frames - start)} frames "
            f"from frame {start})"
        )
    if info.floating and not np.isfinite(data).all():  # NaN would pass every peak and silence test unnoticed
        frame, channel = (int(i) for i in np.argwhere(~np.isfinite(data))[0])
        where = f", channel {channel}" if info.channels > 1 else ""
        raise AudioInputError(f"{info.path}: sample {start + frame} ({(start + frame) / info.sample_rate:.4f} s"
                              f"{where}) is {data[frame, channel]}; audio samples must be finite")
    return data


_NOTIFIED: set[tuple[Path, str]] = set()


def _notice_once(path: Path, kind: str, message: str) -> None:
    """One AudioConversionWarning per file and kind of conversion in this process: a training run reads a file
    every epoch, and Python's own once-per-location filter is reset whenever a library changes the filters."""
    if (path, kind) not in _NOTIFIED:
        _NOTIFIED.add((path, kind))
        warnings.warn(message, AudioConversionWarning, stacklevel=3)


def check_channels(info: AudioInfo, mono: MonoPolicy) -> None:
    """Refuse a multi-channel file (``mono="error"``) or announce that it is mixed down (``"mix"``)."""
    if info.channels == 1:
        return
    if mono == "error":
        raise AudioInputError(f"{info.path}: has {info.channels} channels; a mono file is required")
    if mono != "mix":
        raise ValueError(f"mono must be 'mix' or 'error', got {mono!r}")
    _notice_once(info.path, "mono", f"{info.path}: {info.channels} channels mixed down to mono (their mean)")


def _to_mono(data: np.ndarray, info: AudioInfo, mono: MonoPolicy) -> np.ndarray:
    """(frames, channels) -> (frames,); several channels are averaged (with a notice) or refused."""
    check_channels(info, mono)
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)


def check_rate(info: AudioInfo, sample_rate: int, on_rate_mismatch: RateMismatch) -> bool:
    """True when the file must be resampled to ``sample_rate``; raises when the caller refuses that."""
    if info.sample_rate == sample_rate:
        return False
    if on_rate_mismatch == "error":
        raise AudioInputError(f"{info.path}: sample rate is {info.sample_rate} Hz, {sample_rate} Hz is required")
    if on_rate_mismatch != "resample":
        raise ValueError(f"on_rate_mismatch must be 'resample' or 'error', got {on_rate_mismatch!r}")
    _notice_once(info.path, "rate", f"{info.path}: resampled from {info.sample_rate} Hz to {sample_rate} Hz")
    return True


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    on_rate_mismatch: RateMismatch = "resample",
    mono: MonoPolicy = "mix",
    allow_silence: bool = False,
) -> torch.Tensor:
    """Read a whole WAV/FLAC file as a mono float32 waveform ``(samples,)`` in [-1, 1] at ``sample_rate``.

    A file at another rate is resampled (with a notice) or, with ``on_rate_mismatch="error"``, refused;
    a multi-channel file is averaged to mono (with a notice) or, with ``mono="error"``, refused. A file whose
    peak amplitude is below ``SILENCE_PEAK`` raises AudioInputError unless ``allow_silence`` (generated
    clips may legitimately be silent).
    """
    info = audio_info(path)
    resample = check_rate(info, sample_rate, on_rate_mismatch)
    data = _to_mono(_read_frames(info, 0, info.frames), info, mono)
    if not allow_silence and float(np.abs(data).max()) < SILENCE_PEAK:
        raise _silence_error(info)
    wave = torch.from_numpy(np.ascontiguousarray(data))
    if resample:
        wave = AF.resample(wave, info.sample_rate, sample_rate)
    return wave


def _silence_error(info: AudioInfo) -> AudioInputError:
    return AudioInputError(f"{info.path}: the audio is silence only (peak amplitude below {SILENCE_PEAK:g})")


def check_samples(info: AudioInfo, allow_silence: bool = False, block: int = 1 << 20) -> None:
    """Raise AudioInputError when a whole file is below ``SILENCE_PEAK`` (unless ``allow_silence``) or holds a
    NaN or infinite sample, before a long run reads it window by window. Reads ``block`` frames at a time: a PCM
    file (which cannot hold either) stops at its first audible block, so a long recording with sound costs one
    block, not the whole file; a float file is read to its end."""
    audible = allow_silence
    for start in range(0, info.frames, block):
        if audible and not info.floating:
            return
        peak = float(np.abs(_read_frames(info, start, block)).max())  # read even once audible: NaN may follow
        audible = audible or peak >= SILENCE_PEAK
    if not audible:
        raise _silence_error(info)


def read_segment(
    info: AudioInfo,
    start: int,
    length: int,
    sample_rate: int = SAMPLE_RATE,
    mono: MonoPolicy = "mix",
) -> torch.Tensor:
    """``length`` samples at ``sample_rate`` starting at output sample ``start``, read lazily from disk.

    Only the frames needed are read (memory stays flat for hour-long recordings). Samples past the end of
    the file are zeros. A file at another sample rate is read over the matching span and resampled.
    Returns float32 ``(length,)``.
    """
    scale = info.sample_rate / sample_rate
    first = int(start * scale)
    if first >= info.frames:
        return torch.zeros(length)
    count = min(int(np.ceil(length * scale)), info.frames - first)
    data = _to_mono(_read_frames(info, first, count), info, mono)
    wave = torch.from_numpy(np.ascontiguousarray(data))
    if info.sample_rate != sample_rate:
        wave = AF.resample(wave, info.sample_rate, sample_rate)
    return fix_length(wave, length)


def fix_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Trim the end or zero-pad the end of ``(..., samples)`` to exactly ``length`` samples."""
    n = wave.shape[-1]
    if n >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - n))


def save_wav(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write a mono waveform ``(samples,)`` in [-1, 1] as 16-bit PCM WAV, atomically (temp file + rename).

    Values outside [-1, 1] are clipped. Returns the path written.
    """
    path = Path(path)
    data = wave.detach().cpu().float().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)
    if data.ndim != 1:
        raise ValueError(f"save_wav expects a mono waveform (samples,), got shape {tuple(data.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, np.clip(data, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
