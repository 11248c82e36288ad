"""The embedded spoken-digits set: ten classes (zero..nine), 16 kHz, 1 s clips, in SC09's layout.

Speech is synthesised with **eSpeak NG**, loaded through the ``espeakng-loader`` package, whose wheel
ships ``libespeak-ng`` and its voice data (no download, no system package). We call the C library with
ctypes in synchronous mode. Each clip draws, from a generator seeded by ``(seed, class, index)``, an
English accent, a voice variant, speaking rate, pitch and pitch range, then a random position inside the
second, a gain and white noise at a random signal-to-noise ratio.

eSpeak NG carries hidden state from one utterance to the next (it survives re-initialisation) and draws
random numbers of its own, so the set is synthesised in a fresh child process whose eSpeak random seed is
set from ``seed``: the same ``(seed, per_class)`` then gives the same files on the same eSpeak NG build.

The layout is ``OUT/<word>/<index>.wav`` plus ``validation_list.txt`` and ``testing_list.txt`` (10% of
each class each, at least one clip) and ``synthesis.json`` recording every clip's parameters.
eSpeak NG is GPL-3.0 software, loaded as a separate shared library only while the set is built.
"""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from ssm_core.utils.progress import progress_bar

from audio.datasets import DIGITS, SPLIT_LISTS
from audio.io import SAMPLE_RATE, save_wav

# English accents eSpeak NG ships, and voice variants (files under espeak-ng-data/voices/!v); variants
# that turn speech into effects (whisper, robots, "Demonic", ...) are left out.
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3", "klatt4",
    "Alex", "Andy", "Annie", "Gene", "Hugo", "Jacky", "Lee", "Michael", "Mike", "adam", "anika", "aunty", "belinda",
    "benjamin", "caleb", "david", "ed", "edward", "grandma", "grandpa", "ian", "john", "linda", "max", "norbert",
    "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
_INITIALIZE_DONT_EXIT = 0x8000
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The eSpeak NG library, initialised once per process (it keeps global state)."""

    _instance: "_Espeak | None" = None

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:  # a dependency of the package; only a broken install lacks it
            raise RuntimeError("the espeakng-loader package is needed to synthesise the digits set") from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data at {data}")
        # eSpeak silently falls back to a default for an unknown variant: keep only those that exist.
        available = set(os.listdir(Path(data) / "voices" / "!v"))
        self.variants = tuple(v for v in VARIANTS if v in available)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK_TYPE(self._collect)  # held so that ctypes does not free it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def seed(self, seed: int) -> None:
        """Seed eSpeak NG's own random generator (it varies e.g. the Klatt voices' noise source)."""
        self.lib.espeak_ng_SetRandSeed(seed)

    @classmethod
    def get(cls) -> "_Espeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = carry on synthesising

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int) -> np.ndarray:
        """Synthesise ``text``; returns float32 ``(samples,)`` at ``self.sample_rate``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in ((_ESPEAK_RATE, rate_wpm), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range),
                                 (_ESPEAK_VOLUME, 100)):
            self.lib.espeak_SetParameter(parameter, value, 0)
        self._chunks.clear()
        encoded = text.encode() + b"\0"
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise RuntimeError(f"eSpeak NG failed to speak {text!r} with voice {voice!r} (status {status})")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


@dataclass(frozen=True)
class ClipRecipe:
    """Everything that determines one synthesised clip."""

    word: str
    voice: str  # accent+variant, as eSpeak NG names it
    rate_wpm: int
    pitch: int  # 0..100
    pitch_range: int  # 0..100
    peak: float  # peak amplitude of the spoken word
    snr_db: float  # speech RMS over noise RMS
    position: float  # where in the free time the word starts, 0 (at once) .. 1 (ends at 1 s)


def draw_recipe(word: str, rng: np.random.Generator, variants: tuple[str, ...]) -> ClipRecipe:
    """Random synthesis parameters for one clip of ``word``."""
    return ClipRecipe(
        word=word,
        voice=f"{rng.choice(ACCENTS)}+{rng.choice(variants)}",
        rate_wpm=int(rng.integers(110, 230)),
        pitch=int(rng.integers(15, 90)),
        pitch_range=int(rng.integers(20, 90)),
        peak=float(rng.uniform(0.2, 0.9)),
        snr_db=float(rng.uniform(15.0, 40.0)),
        position=float(rng.uniform(0.0, 1.0)),
    )


def render(recipe: ClipRecipe, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Synthesise a recipe into a 1 s clip ``(sample_rate,)`` in [-1, 1]; ``rng`` draws the noise."""
    engine = _Espeak.get()
    speech = engine.speak(recipe.word, recipe.voice, recipe.rate_wpm, recipe.pitch, recipe.pitch_range)
    loud = np.flatnonzero(np.abs(speech) > 0.02 * np.abs(speech).max())  # trim eSpeak's leading/trailing silence
    speech = torch.from_numpy(speech[loud[0]:loud[-1] + 1].copy())
    speech = AF.resample(speech, engine.sample_rate, sample_rate)[:sample_rate]
    speech = speech * (recipe.peak / speech.abs().max())
    clip = torch.zeros(sample_rate)
    start = int(recipe.position * (sample_rate - len(speech)))
    clip[start:start + len(speech)] = speech
    noise_rms = float(speech.pow(2).mean().sqrt()) * 10 ** (-recipe.snr_db / 20)
    clip += torch.from_numpy(rng.standard_normal(sample_rate).astype(np.float32)) * noise_rms
    return clip.clamp(-1.0, 1.0)


def held_out_counts(per_class: int) -> tuple[int, int]:
    """(validation, test) clips per class: 10% each, at least one."""
    n = max(1, round(0.1 * per_class))
    return n, n


def make_digits(out: str | os.PathLike, per_class: int = 200, seed: int = 0, force: bool = False,
                progress: bool = True) -> Path:
    """Build the spoken-digits set in SC09's layout under ``out``; returns ``out``.

    Refuses a non-empty ``out`` unless ``force`` (then files are overwritten in place, and the clips of an earlier
    set there, listed in its synthesis.json, that this set does not replace are removed, so that they do not join
    its train split). Synthesis runs in a fresh child process (see the module docstring), which takes a few
    seconds to start.
    """
    out = Path(out)
    if per_class < 3:
        raise ValueError(f"per_class must be at least 3 (train, validation and test need one clip each), got {per_class}")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: exists and is not empty (pass --force to overwrite)")
    if force:
        new = {f"{word}/{k:05d}.wav" for word in DIGITS for k in range(per_class)}
        for stale in set(_earlier_clips(out)) - new:
            (out / stale).unlink(missing_ok=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_synthesise_set, (str(out), per_class, seed, progress))
    return out


def _earlier_clips(out: Path) -> list[str]:
    """The clips an earlier `make_digits` listed in ``out/synthesis.json`` (names of the form word/00000.wav only)."""
    try:
        clips = json.loads((out / "synthesis.json").read_text())["clips"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [rel for rel in clips if isinstance(rel, str) and re.fullmatch(r"[a-z]+/\d{5}\.wav", rel)]


def _synthesise_set(out: str, per_class: int, seed: int, progress: bool) -> None:
    """The body of :func:`make_digits`, run in a process where eSpeak NG has not spoken yet."""
    out_dir = Path(out)
    torch.set_num_threads(1)  # per-clip tensors are tiny: intra-op threads only add overhead (3-4x measured)
    engine = _Espeak.get()
    engine.seed(seed)
    n_val, n_test = held_out_counts(per_class)
    held_out: dict[str, list[str]] = {"validation": [], "test": []}
    recipes = {}
    bar = progress_bar(total=per_class * len(DIGITS), desc="synthesising digits", unit="clip", disable=not progress)
    for label, word in enumerate(DIGITS):
        for k in range(per_class):
            rng = np.random.default_rng([seed, label, k])
            recipe = draw_recipe(word, rng, engine.variants)
            rel = f"{word}/{k:05d}.wav"
            save_wav(out_dir / rel, render(recipe, rng))
            recipes[rel] = asdict(recipe)
            if k >= per_class - n_test:
                held_out["test"].append(rel)
            elif k >= per_class - n_test - n_val:
                held_out["validation"].append(rel)
            bar.update()
    bar.close()
    for split, name in SPLIT_LISTS.items():
        (out_dir / name).write_text("".join(f"{rel}\n" for rel in held_out[split]))
    meta = {"generator": "eSpeak NG via espeakng-loader", "seed": seed, "per_class": per_class,
            "sample_rate": SAMPLE_RATE, "clips": recipes}
    (out_dir / "synthesis.json").write_text(json.dumps(meta, indent=1))
