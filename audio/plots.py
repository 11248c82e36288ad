"""Waveform and spectrogram grids of audio clips, written as PNG files (matplotlib, Agg backend)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import torch  # noqa: E402

from audio.io import SAMPLE_RATE  # noqa: E402
from ssm_core.utils.plots import save_figure  # noqa: E402


def _grid(n: int, columns: int):
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _save(fig, path: str | os.PathLike, tight: bool = True) -> Path:
    return save_figure(fig, path, dpi=100, tight=tight)


def plot_waveforms(waves: Sequence[torch.Tensor], path: str | os.PathLike, titles: Sequence[str] | None = None,
                   sample_rate: int = SAMPLE_RATE, columns: int = 4) -> Path:
    """A grid of waveforms (each ``(samples,)`` in [-1, 1]) against time in seconds; returns the PNG path."""
    if not len(waves):
        raise ValueError("no clips to plot")
    fig, axes = _grid(len(waves), columns)
    for i, (ax, wave) in enumerate(zip(axes, waves)):
        wave = wave.detach().float().cpu()
        ax.plot((torch.arange(len(wave)) / sample_rate).numpy(), wave.numpy(), linewidth=0.4)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(titles[i] if titles else f"clip {i}", fontsize=8)
        ax.set_xlabel("time (s)", fontsize=7)
        ax.tick_params(labelsize=6)
    return _save(fig, path)


def plot_spectrograms(waves: Sequence[torch.Tensor], path: str | os.PathLike, titles: Sequence[str] | None = None,
                      sample_rate: int = SAMPLE_RATE, columns: int = 4, n_fft: int = 512) -> Path:
    """A grid of log-power spectrograms (Hann window, hop n_fft/4), each in dB below its own loudest bin (0 to -80 dB),
    with one colour bar for all; returns the PNG path."""
    if not len(waves):
        raise ValueError("no clips to plot")
    fig, axes = _grid(len(waves), columns)
    window = torch.hann_window(n_fft)
    for i, (ax, wave) in enumerate(zip(axes, waves)):
        wave = wave.detach().float().cpu()
        power = torch.stft(wave, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs().pow(2)
        db = 10 * torch.log10(power.clamp_min(1e-10))
        db = db - db.max()  # every clip on the scale of the one colour bar
        duration = len(wave) / sample_rate
        image = ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                          extent=(0, duration, 0, sample_rate / 2000))
        ax.set_title(titles[i] if titles else f"clip {i}", fontsize=8)
        ax.set_xlabel("time (s)", fontsize=7)
        ax.set_ylabel("kHz", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout(rect=(0, 0, 0.92, 1))  # the grid, with room on the right for the colour bar
    bar = fig.colorbar(image, cax=fig.add_axes((0.935, 0.15, 0.015, 0.7)))
    bar.set_label("dB below the clip's peak", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return _save(fig, path, tight=False)
