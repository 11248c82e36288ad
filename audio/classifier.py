"""The SC09 classifier behind the metrics: a ResNeXt on 32x32 log-mel spectrograms.

It follows the classifier of the s4 repository's SaShiMi evaluation (``sashimi/sc09_classifier``, itself
from pytorch-speech-commands): ResNeXt-29 with cardinality 8 and group width 64 (widen factor 4), three
stages of three bottleneck blocks on a 1x32x32 input, global average pooling to a 1024-d feature vector
(the "penultimate features" FID is computed on) and a linear layer to the ten digit classes.

Input features, as that code computes them with librosa: a 1 s clip at 16 kHz (trimmed or zero-padded at
the end), power mel spectrogram with n_fft 2048, hop 512, Hann window, centred frames with reflect
padding, 32 Slaney-scale mel bands with Slaney area normalisation from 0 Hz to 8 kHz -> 32 mel x 32 frames;
then dB relative to the clip's own maximum, floored 80 dB below it (``librosa.power_to_db(S, ref=np.max)``).
Here that is torch's STFT and torchaudio's mel filterbank plus the same dB step, so the network runs on
waveforms.

The ``tiny`` preset keeps the architecture at a toy width for CPU tests. Training goes through the shared
engine (``ssm_core.train``): :func:`classifier_loss` is the loss it calls. A classifier is stored as a model
directory (``model.safetensors`` + ``model.json`` + model card, what a training run writes, or
``save_pretrained``); :func:`load_classifier` (or ``ResNeXtClassifier.from_pretrained``) reads it back. The
``small`` preset trained on the built-in digits set ships with the suite as ``digits-classifier``
(``benchmarks/digits_classifier.py`` trains it), the default of ``load_classifier`` and ``audio metrics``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from ssm_core.models import ModelFileMissingError, PretrainedModel, register_model
from ssm_core.models.io import resolve_model_dir

from audio.datasets import DIGITS
from audio.io import SAMPLE_RATE, fix_length

# the classifier shipped in the package (ssm_core/pretrained/), what `audio metrics` uses without --classifier
SHIPPED_CLASSIFIER = "digits-classifier"


@dataclass
class ClassifierConfig:
    """ResNeXt and feature settings. Defaults are the s4 SC09 classifier (ResNeXt-29, 8x64d, 32 mel bands)."""

    classes: list[str] = field(default_factory=lambda: list(DIGITS))  # a list: it must survive a JSON round trip
    depth: int = 29  # 9 * blocks_per_stage + 2
    cardinality: int = 8  # groups of the 3x3 convolutions
    base_width: int = 64  # channels per group in the first stage (doubles each stage)
    widen_factor: int = 4  # stage output channels: stem_width * widen_factor * (1, 2, 4)
    stem_width: int = 64
    sample_rate: int = SAMPLE_RATE
    clip_samples: int = SAMPLE_RATE
    n_mels: int = 32
    n_fft: int = 2048
    hop_length: int = 512
    top_db: float = 80.0

    def __post_init__(self):
        if (self.depth - 2) % 9 or self.depth < 11:
            raise ValueError(f"depth must be 9 * blocks + 2 with at least one block per stage (11, 20, 29, ...), "
                             f"got {self.depth}")

    @property
    def feature_dim(self) -> int:
        """Size of the penultimate features (1024 for the default)."""
        return self.stem_width * self.widen_factor * 4

    # 'resnext29' (the paper's classifier), 'small' (95k parameters: the shipped classifier, trained in about 20
    # minutes on 2 CPU cores) or 'tiny' (a few thousand parameters, for CPU tests): name -> overrides of the defaults
    PRESETS: ClassVar[dict[str, dict]] = {
        "resnext29": {},
        "small": dict(depth=11, cardinality=4, base_width=8, widen_factor=2, stem_width=16),
        "tiny": dict(depth=11, cardinality=2, base_width=4, widen_factor=2, stem_width=8),
    }

    @classmethod
    def from_preset(cls, name: str) -> "ClassifierConfig":
        """The config of preset ``name`` (a key of :attr:`PRESETS`)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown classifier preset {name!r}; choose one of {list(cls.PRESETS)}")
        return cls(**cls.PRESETS[name])


class LogMel(nn.Module):
    """Waveforms ``(batch, samples)`` -> log-mel images ``(batch, 1, n_mels, frames)`` in dB, max 0, floor -top_db.

    A power STFT (``torch.stft``) through torchaudio's Slaney mel filterbank, i.e. what
    ``torchaudio.transforms.MelSpectrogram(..., norm="slaney", mel_scale="slaney")`` computes; the window
    and filterbank are derived from the config, so they are not saved with the weights.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.n_fft, self.hop_length, self.top_db = config.n_fft, config.hop_length, config.top_db
        filterbank = torchaudio.functional.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1, f_min=0.0, f_max=config.sample_rate / 2, n_mels=config.n_mels,
            sample_rate=config.sample_rate, norm="slaney", mel_scale="slaney",
        )  # (freqs, mels)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("filterbank", filterbank, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)
        power = torch.einsum("bft,fm->bmt", spectrum.abs().pow(2), self.filterbank)
        db = 10.0 * torch.log10(power.clamp_min(1e-10))
        db = db - db.amax(dim=(-2, -1), keepdim=True)  # reference: each clip's own maximum
        return db.clamp_min(-self.top_db).unsqueeze(1)


class Bottleneck(nn.Module):
    """ResNeXt block: 1x1 reduce, grouped 3x3 (strided), 1x1 expand, each with batch norm; residual add, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        inner = cardinality * group_width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )
        # a projection only where the channel count changes (which is also where the stride is)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


@register_model("audio.ResNeXtClassifier", "an SC09 audio classifier")
class ResNeXtClassifier(nn.Module, PretrainedModel):
    """SC09 classifier on waveforms: ``features(wave)`` -> ``(batch, feature_dim)``, ``forward`` -> logits."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        self.logmel = LogMel(config)
        self.stem = nn.Sequential(nn.Conv2d(1, config.stem_width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(config.stem_width), nn.ReLU(inplace=True))
        blocks_per_stage = (config.depth - 2) // 9
        stages, channels = [], config.stem_width
        for s in range(3):
            out = config.stem_width * config.widen_factor * 2**s
            blocks = [Bottleneck(channels if b == 0 else out, out, (1 if s == 0 else 2) if b == 0 else 1,
                                 config.cardinality, config.base_width * 2**s) for b in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(config.feature_dim, len(config.classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.kaiming_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` waveforms -> ``(batch, 1, n_mels, frames)`` network input (clips fixed to 1 s)."""
        return self.logmel(fix_length(wave, self.config.clip_samples))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(batch, feature_dim)``: the input of the final linear layer."""
        return self.stages(self.stem(self.spectrogram(wave))).mean(dim=(-2, -1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, n_classes)``."""
        return self.head(self.features(wave))


def classifier_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy and accuracy of a batch ``(waves (batch, samples) float, labels (batch,) long)``."""
    waves, labels = batch
    logits = model(waves)
    loss = F.cross_entropy(logits, labels)
    return loss, {"accuracy": (logits.argmax(dim=-1) == labels).float().mean()}


def load_classifier(directory: str | os.PathLike = SHIPPED_CLASSIFIER,
                    device: str | torch.device = "cpu") -> ResNeXtClassifier:
    """The classifier saved in the model directory ``directory`` (default: the shipped one), in eval mode on
    ``device``.

    ``ModelFileMissingError`` (a FileNotFoundError) when ``directory`` is not a model directory, ``ModelFileError``
    (a ValueError) when it cannot be loaded, ``WrongModelError`` (one too) when it holds another kind of model.
    """
    directory = resolve_model_dir(directory)
    if not (directory / "model.json").is_file() or not (directory / "model.safetensors").is_file():
        raise ModelFileMissingError(f"{directory}: not a classifier directory (needs model.json and "
                                    "model.safetensors)")
    return ResNeXtClassifier.from_pretrained(directory, device).eval()
