"""The embedded spoken-digits set: layout, format, determinism, and classes that are told apart. (How long it
takes to build is measured in benchmarks/data_speed.py, not here: timings on shared cores make flaky tests.)"""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.classifier import ClassifierConfig, LogMel
from audio.cli import main
from audio.datasets import DIGITS, LabelledAudioSet
from audio.digits import make_digits

PER_CLASS = 20


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    make_digits(out, per_class=PER_CLASS, seed=0, force=True, progress=False)
    return out


def test_layout_rate_and_length(digits):
    out = digits
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(DIGITS)
    for word in DIGITS:
        files = sorted((out / word).iterdir())
        assert len(files) == PER_CLASS
        for f in files[:3]:
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    val = (out / "validation_list.txt").read_text().split()
    test = (out / "testing_list.txt").read_text().split()
    assert len(val) == len(test) == 2 * 10 and not set(val) & set(test)
    for word in DIGITS:
        assert sum(v.startswith(f"{word}/") for v in val) == 2
    sizes = [len(LabelledAudioSet(out, s)) for s in ("train", "validation", "test")]
    assert sizes == [16 * 10, 20, 20]
    meta = json.loads((out / "synthesis.json").read_text())
    assert len(meta["clips"]) == 200 and meta["clips"]["seven/00003.wav"]["word"] == "seven"
    voices = {c["voice"] for c in meta["clips"].values()}
    assert len(voices) > 50  # many accent/variant combinations


def test_clips_are_speech_with_noise_not_silence_or_clipping(digits):
    out = digits
    ds = LabelledAudioSet(out, "all", output="waveform")
    for i in range(0, len(ds), 17):
        wave, _ = ds[i]
        peak = wave.abs().max()
        assert 0.15 < peak <= 1.0
        frames = wave.reshape(50, 320).pow(2).mean(dim=1).sqrt()  # 20 ms frames
        assert frames.max() > 5 * frames.min()  # a spoken word stands out of the background noise
        assert frames.min() > 0  # background noise everywhere, no digital silence


def test_same_seed_same_files_other_seed_other_files(digits, tmp_path):
    out = digits
    # clips are synthesised class by class, so a smaller build speaks the same first utterances
    again = make_digits(tmp_path / "again", per_class=3, seed=0, progress=False)
    other = make_digits(tmp_path / "other", per_class=3, seed=1, progress=False)
    for rel in ("zero/00000.wav", "zero/00001.wav", "zero/00002.wav"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
        assert (other / rel).read_bytes() != (out / rel).read_bytes()


def test_classes_are_distinct(digits):
    """A nearest-centroid classifier on time-averaged log-mel spectra beats chance (10%) by far."""
    out = digits
    logmel = LogMel(ClassifierConfig())

    def features(split):
        ds = LabelledAudioSet(out, split, output="waveform")
        spec = logmel(torch.stack([ds[i][0] for i in range(len(ds))]))[:, 0]  # (clips, mels, frames)
        speech = (spec.amax(dim=1) > -40).float()  # frames within 40 dB of the clip's loudest
        return (spec * speech[:, None]).sum(-1) / speech.sum(-1, keepdim=True), torch.tensor([c.label for c in ds.clips])

    x_train, y_train = features("train")
    x_val, y_val = features("validation")
    x_test, y_test = features("test")
    x_held, y_held = torch.cat([x_val, x_test]), torch.cat([y_val, y_test])
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x_held, centroids).argmin(1) == y_held).float().mean()
    assert accuracy > 0.3, accuracy


def test_cli_make_digits(tmp_path, capsys):
    assert main(["make-digits", "--out", str(tmp_path / "d"), "--per-class", "3", "--seed", "4"]) == 0
    assert len(list((tmp_path / "d" / "nine").glob("*.wav"))) == 3
    capsys.readouterr()
    assert main(["make-digits", "--out", str(tmp_path / "d"), "--per-class", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="at least 3"):
        make_digits(tmp_path / "x", per_class=2)


def test_make_digits_again_replaces_the_earlier_set_whole(tmp_path):
    out = tmp_path / "d"
    assert main(["make-digits", "--out", str(out), "--per-class", "4"]) == 0
    (out / "README.txt").write_text("mine\n")
    assert main(["make-digits", "--out", str(out), "--per-class", "3", "--force"]) == 0
    # 00003.wav of the 4-clip set would otherwise stay behind and join the train split of the 3-clip set
    assert sorted(p.name for p in (out / "zero").iterdir()) == ["00000.wav", "00001.wav", "00002.wav"]
    assert (out / "README.txt").read_text() == "mine\n"
