"""The embedded spoken-digits set: ten classes (zero..nine), 16 kHz, 1 s clips, in SC09's layout.

Speech is synthesised with **eSpeak NG**, loaded through the ``espeakng-loader`` package, whose wheel
ships ``libespeak-ng`` and its voice data (no download, no system package). We call the C library with
ctypes in synchronous mode. Each clip draws, from a generator seeded by ``(seed, class, index)``, an
English accent, a voice variant, speaking rate, pitch and pitch range, a playback speed (which shifts pitch and
formants together), then a random position inside the second, room reverberation (a synthetic exponentially
decaying impulse response), a gain, background noise (white, pink or brown) at a random signal-to-noise ratio
and band-limiting (a high-pass and a low-pass as a telephone or a small loudspeaker would).

Some voices are held out: the set built with ``voices="train"`` (the default) never uses the accents and variants
of :data:`HELD_OUT_ACCENTS` and :data:`HELD_OUT_VARIANTS`; ``voices="held-out"`` builds a set in which every clip
has a held-out variant (and any accent), to measure how a classifier trained on the default set hears voices it
never trained on.

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
    "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "Alicia", "Andrea", "Denis", "Diogo",
    "Gene2", "Henrique", "Marco", "Mario", "Nguyen", "Reed", "Storm", "antonio", "boris", "edward2", "gustave",
    "iven", "iven2", "iven3", "iven4", "klatt5", "klatt6", "m8", "marcelo", "michel", "miguel", "mike2", "pablo",
    "pedro", "sandro", "shelby", "steph2", "steph3",
)
# Voices the default set never uses: a classifier trained on it is scored on a set made only of these.
HELD_OUT_ACCENTS = ("en-us-nyc",)
HELD_OUT_VARIANTS = ("m3", "f2", "klatt2", "Annie", "benjamin", "grandma", "norbert", "Denis", "iven2", "shelby",
                     "steph3", "michel")
VOICE_SETS = ("train", "held-out")
NOISE_COLOURS = ("white", "pink", "brown")

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
    speed: float = 1.0  # playback speed: > 1 is faster and higher (pitch and formants), < 1 slower and lower
    reverb_seconds: float = 0.0  # RT60 of the room's impulse response; 0 = dry
    reverb_wet: float = 0.0  # share of reverberant energy, 0..1
    noise_colour: str = "white"  # white, pink (1/f) or brown (1/f^2)
    highpass_hz: float = 0.0  # 0 = none
    lowpass_hz: float = 0.0  # 0 = none


def voices(which: str, variants: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(accents, variants) of a voice set: 'train' leaves the held-out ones out, 'held-out' keeps only held-out
    variants (with every accent)."""
    if which == "train":
        return (tuple(a for a in ACCENTS if a not in HELD_OUT_ACCENTS),
                tuple(v for v in variants if v not in HELD_OUT_VARIANTS))
    if which == "held-out":
        return ACCENTS, tuple(v for v in variants if v in HELD_OUT_VARIANTS)
    raise ValueError(f"unknown voice set {which!r}; choose one of {', '.join(VOICE_SETS)}")


def draw_recipe(word: str, rng: np.random.Generator, accents: tuple[str, ...], variants: tuple[str, ...]) -> ClipRecipe:
    """Random synthesis parameters for one clip of ``word``."""
    reverb = rng.uniform() < 0.5
    band = rng.uniform() < 0.5
    return ClipRecipe(
        word=word,
        voice=f"{rng.choice(accents)}+{rng.choice(variants)}",
        rate_wpm=int(rng.integers(110, 230)),
        pitch=int(rng.integers(15, 90)),
        pitch_range=int(rng.integers(20, 90)),
        peak=float(rng.uniform(0.05, 0.9)),
        snr_db=float(rng.uniform(5.0, 40.0)),
        position=float(rng.uniform(0.0, 1.0)),
        speed=float(rng.uniform(0.85, 1.2)),
        reverb_seconds=float(rng.uniform(0.1, 0.8)) if reverb else 0.0,
        reverb_wet=float(rng.uniform(0.1, 0.6)) if reverb else 0.0,
        noise_colour=str(rng.choice(NOISE_COLOURS)),
        highpass_hz=float(rng.uniform(50.0, 400.0)) if band else 0.0,
        lowpass_hz=float(rng.uniform(2500.0, 7500.0)) if band else 0.0,
    )


def _coloured_noise(colour: str, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Unit-RMS noise ``(n,)`` with a flat (white), 1/f (pink) or 1/f^2 (brown) power spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    exponent = NOISE_COLOURS.index(colour) / 2  # amplitude ~ f^-exponent
    spectrum[1:] /= np.arange(1, len(spectrum)) ** exponent
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return torch.from_numpy((noise / noise.std()).astype(np.float32))


def _room(rt60: float, wet: float, rng: np.random.Generator, sample_rate: int) -> torch.Tensor:
    """A synthetic room impulse response ``(samples,)``: the direct sound, then noise decaying by 60 dB in ``rt60``
    seconds, scaled so that the tail carries ``wet`` of the energy."""
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # 6.9 = ln(1000): 60 dB in amplitude
    tail *= np.sqrt(wet / (1.0 - wet + 1e-9) / (tail ** 2).sum())
    tail[0] = 1.0
    return torch.from_numpy(tail.astype(np.float32))


def render(recipe: ClipRecipe, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Synthesise a recipe into a 1 s clip ``(sample_rate,)`` in [-1, 1]; ``rng`` draws the noise and the room."""
    engine = _Espeak.get()
    speech = engine.speak(recipe.word, recipe.voice, recipe.rate_wpm, recipe.pitch, recipe.pitch_range)
    loud = np.flatnonzero(np.abs(speech) > 0.02 * np.abs(speech).max())  # trim eSpeak's leading/trailing silence
    speech = torch.from_numpy(speech[loud[0]:loud[-1] + 1].copy())
    # read as if recorded at speed x the engine's rate (rounded to 50 Hz, which keeps the resampling filter short)
    played_at = int(round(engine.sample_rate * recipe.speed / 50)) * 50
    speech = AF.resample(speech, played_at, sample_rate)[:sample_rate]
    clip = torch.zeros(sample_rate)
    start = int(recipe.position * (sample_rate - len(speech)))
    clip[start:start + len(speech)] = speech
    if recipe.reverb_seconds > 0:
        clip = AF.fftconvolve(clip, _room(recipe.reverb_seconds, recipe.reverb_wet, rng, sample_rate))[:sample_rate]
    clip = clip * (recipe.peak / clip.abs().max())
    speech_rms = float(clip[start:start + len(speech)].pow(2).mean().sqrt())
    clip = clip + _coloured_noise(recipe.noise_colour, sample_rate, rng) * speech_rms * 10 ** (-recipe.snr_db / 20)
    if recipe.highpass_hz > 0:
        clip = AF.highpass_biquad(clip, sample_rate, recipe.highpass_hz)
    if recipe.lowpass_hz > 0:
        clip = AF.lowpass_biquad(clip, sample_rate, recipe.lowpass_hz)
    return clip.clamp(-1.0, 1.0)


def held_out_counts(per_class: int) -> tuple[int, int]:
    """(validation, test) clips per class: 10% each, at least one."""
    n = max(1, round(0.1 * per_class))
    return n, n


def make_digits(out: str | os.PathLike, per_class: int = 200, seed: int = 0, force: bool = False,
                progress: bool = True, voices: str = "train") -> Path:
    """Build the spoken-digits set in SC09's layout under ``out``; returns ``out``. ``voices``: 'train' (every voice
    but the held-out ones) or 'held-out' (only held-out variants; see the module docstring).

    Refuses a non-empty ``out`` unless ``force`` (then files are overwritten in place, and the clips of an earlier
    set there, listed in its synthesis.json, that this set does not replace are removed, so that they do not join
    its train split). Synthesis runs in a fresh child process (see the module docstring), which takes a few
    seconds to start.
    """
    out = Path(out)
    if per_class < 3:
        raise ValueError(f"per_class must be at least 3 (train, validation and test need one clip each), got {per_class}")
    if voices not in VOICE_SETS:
        raise ValueError(f"unknown voice set {voices!r}; choose one of {', '.join(VOICE_SETS)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: exists and is not empty (pass --force to overwrite)")
    if force:
        new = {f"{word}/{k:05d}.wav" for word in DIGITS for k in range(per_class)}
        for stale in set(_earlier_clips(out)) - new:
            (out / stale).unlink(missing_ok=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_synthesise_set, (str(out), per_class, seed, progress, voices))
    return out


def _earlier_clips(out: Path) -> list[str]:
    """The clips an earlier `make_digits` listed in ``out/synthesis.json`` (names of the form word/00000.wav only)."""
    try:
        clips = json.loads((out / "synthesis.json").read_text())["clips"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [rel for rel in clips if isinstance(rel, str) and re.fullmatch(r"[a-z]+/\d{5}\.wav", rel)]


def _synthesise_set(out: str, per_class: int, seed: int, progress: bool, which_voices: str) -> None:
    """The body of :func:`make_digits`, run in a process where eSpeak NG has not spoken yet."""
    out_dir = Path(out)
    torch.set_num_threads(1)  # per-clip tensors are tiny: intra-op threads only add overhead (3-4x measured)
    engine = _Espeak.get()
    engine.seed(seed)
    accents, variants = voices(which_voices, engine.variants)
    n_val, n_test = held_out_counts(per_class)
    held_out: dict[str, list[str]] = {"validation": [], "test": []}
    recipes = {}
    bar = progress_bar(total=per_class * len(DIGITS), desc="synthesising digits", unit="clip", disable=not progress)
    for label, word in enumerate(DIGITS):
        for k in range(per_class):
            rng = np.random.default_rng([seed, label, k])
            recipe = draw_recipe(word, rng, accents, variants)
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
    meta = {"generator": "eSpeak NG via espeakng-loader", "seed": seed, "per_class": per_class, "voices": which_voices,
            "sample_rate": SAMPLE_RATE, "clips": recipes}
    (out_dir / "synthesis.json").write_text(json.dumps(meta, indent=1))
