"""Audio readers, writers and datasets on generated files, including every kind of bad input."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.datasets import (
    DIGITS, FlatAudioFolder, LabelledAudioSet, LongRecordingWindows, hash_split, open_audio_set, scan_labelled,
)
from audio.errors import AudioConversionWarning, AudioInputError, AudioNotice
from audio.io import audio_info, load_audio, read_segment, save_wav
from audio.mulaw import dequantize

SR = 16000


def tone(n, freq=440.0, sr=SR, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def write(path, data, sr=SR, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, **kw)
    return path


def test_save_and_load_round_trip(tmp_path):
    x = tone(12345)
    path = save_wav(tmp_path / "sub" / "a.wav", torch.from_numpy(x))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.wav"]  # no temp file left behind
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", 12345)
    y = load_audio(path)
    assert y.dtype == torch.float32 and y.shape == (12345,)
    assert np.abs(y.numpy() - x).max() <= 1 / 32768 + 1e-7
    save_wav(path, torch.full((10,), 3.0))  # clipped, and overwriting is atomic
    assert load_audio(path).max() == pytest.approx(32767 / 32768)


def test_flac_is_read(tmp_path):
    x = tone(8000)
    y = load_audio(write(tmp_path / "a.flac", x))
    assert np.abs(y.numpy() - x).max() <= 1 / 32768 + 1e-7


def test_wrong_rate_is_resampled_with_notice_or_refused(tmp_path):
    path = write(tmp_path / "8k.wav", tone(8000, sr=8000), sr=8000)
    with pytest.warns(AudioConversionWarning, match=r"8k\.wav: resampled from 8000 Hz to 16000 Hz"):
        y = load_audio(path)
    assert y.shape == (16000,)
    # the resampled tone is still a 440 Hz tone
    spectrum = np.abs(np.fft.rfft(y.numpy()))
    assert abs(np.argmax(spectrum) * SR / 16000 - 440) <= 1
    with pytest.raises(AudioInputError, match=r"8k\.wav: sample rate is 8000 Hz, 16000 Hz is required"):
        load_audio(path, on_rate_mismatch="error")


def test_stereo_is_mixed_down_with_notice_or_refused(tmp_path):
    left, right = tone(4000, 300), tone(4000, 500, amp=0.25)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    with pytest.warns(AudioConversionWarning, match=r"stereo\.wav: 2 channels mixed down to mono"):
        y = load_audio(path)
    np.testing.assert_allclose(y.numpy(), (left + right) / 2, atol=1e-6)
    with pytest.raises(AudioInputError, match=r"stereo\.wav: has 2 channels"):
        load_audio(path, mono="error")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_file_sample_and_channel(tmp_path, bad):
    """A float WAV with NaN was refused as "silence only" (NaN fails every peak test) and one with Inf was trained
    on: every reader refuses both, naming the first bad sample."""
    x = tone(16000)
    x[5000], x[9000] = bad, bad
    path = write(tmp_path / "bad.wav", x, subtype="FLOAT")
    shown = "nan" if np.isnan(bad) else str(float(bad))
    message = rf"bad\.wav: sample 5000 \(0\.3125 s\) is {shown}; audio samples must be finite"
    with pytest.raises(AudioInputError, match=message):
        load_audio(path)
    with pytest.raises(AudioInputError, match=message):
        load_audio(path, allow_silence=True)
    with pytest.raises(AudioInputError, match=message):  # found before training, not when a window reaches it
        LongRecordingWindows(tmp_path, window=1000)
    with pytest.raises(AudioInputError, match=message):
        read_segment(audio_info(path), 4000, 2000)
    stereo = np.stack([tone(16000), tone(16000)], axis=1)
    stereo[700, 1] = bad
    with pytest.raises(AudioInputError, match=rf"st\.wav: sample 700 \(0\.0437 s, channel 1\) is {shown}"):
        load_audio(write(tmp_path / "st" / "st.wav", stereo, subtype="DOUBLE"))


def test_non_finite_sample_deep_in_a_long_float_recording_is_found_up_front(tmp_path):
    x = tone((1 << 20) + 50_000)
    x[-1000] = np.nan  # past the first 2^20-frame block, where the check for sound stops reading a PCM file
    write(tmp_path / "long.wav", x, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=rf"long\.wav: sample {len(x) - 1000} "):
        LongRecordingWindows(tmp_path, window=16000)


def test_mix_down_is_announced_once_per_file_and_up_front_for_recordings(tmp_path):
    stereo = np.stack([tone(8000), tone(8000, 500)], axis=1)
    path = write(tmp_path / "rec" / "two.wav", stereo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        windows = LongRecordingWindows(tmp_path / "rec", window=1000)  # before any window is read
        assert [str(w.message) for w in caught] == [f"{path}: 2 channels mixed down to mono (their mean)"]
        windows[0], windows[3], windows[7]
        load_audio(path)
    assert len(caught) == 1  # a file read every epoch is announced once, not once per read


def test_mono_file_gives_no_notice(tmp_path):
    path = write(tmp_path / "a.wav", tone(1000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(path)


@pytest.mark.parametrize("case", ["missing", "empty", "not_audio", "header_only", "truncated_wav", "truncated_flac",
                                  "silence"])
def test_bad_files_raise_errors_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    expected = {
        "missing": "no such audio file", "empty": r"empty \(0 bytes\)", "not_audio": "not a readable WAV/FLAC",
        "header_only": "contains no samples", "truncated_wav": "truncated", "truncated_flac": "truncated",
        "silence": "silence only",
    }[case]
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not_audio":
        path.write_text("this is a text file, not audio\n" * 20)
    elif case == "header_only":
        write(path, np.zeros(0, np.float32))
    elif case == "truncated_wav":
        write(tmp_path / "full.wav", tone(16000))
        path.write_bytes((tmp_path / "full.wav").read_bytes()[:20000])
    elif case == "truncated_flac":
        path = tmp_path / "cut.flac"
        write(tmp_path / "full.flac", (np.random.default_rng(0).standard_normal(16000) * 0.2).astype(np.float32))
        path.write_bytes((tmp_path / "full.flac").read_bytes()[:12000])
    elif case == "silence":
        write(path, np.zeros(16000, np.float32))
    with pytest.raises(AudioInputError, match=expected) as err:
        load_audio(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_silence_allowed_on_request(tmp_path):
    path = write(tmp_path / "quiet.wav", np.zeros(100, np.float32))
    assert torch.equal(load_audio(path, allow_silence=True), torch.zeros(100))


# ---- labelled sets (SC09 layout) --------------------------------------------------------------------------

def make_labelled(root, per_class=5, classes=DIGITS[:3], lengths=(16000, 12000, 20000)):
    rng = np.random.default_rng(0)
    for c in classes:
        for k in range(per_class):
            n = lengths[k % len(lengths)]
            write(root / c / f"spk{k}_nohash_0.wav", (rng.uniform(-0.5, 0.5, n)).astype(np.float32), subtype="FLOAT")
    return root


def test_labelled_set_with_split_lists(tmp_path):
    root = make_labelled(tmp_path / "sc")
    (root / "validation_list.txt").write_text("zero/spk1_nohash_0.wav\ntwo/spk1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("one/spk2_nohash_0.wav\n\n")
    train = LabelledAudioSet(root, "train")
    val = LabelledAudioSet(root, "validation", output="waveform")
    test = LabelledAudioSet(root, "test", output="linear")
    assert (len(train), len(val), len(test)) == (12, 2, 1)
    assert train.classes == DIGITS  # digit-word classes keep SC09's label numbering
    assert [c.relpath for c in val.clips] == ["zero/spk1_nohash_0.wav", "two/spk1_nohash_0.wav"]
    assert [c.label for c in val.clips] == [0, 2]
    x, label = train[0]
    assert x.dtype == torch.int64 and x.shape == (16000,) and label == 0 and 0 <= int(x.min()) <= int(x.max()) <= 255
    w, _ = val[0]
    assert w.dtype == torch.float32 and w.shape == (16000,)
    # clips are trimmed / zero-padded at the end to one second
    source = load_audio(val.clips[0].path)
    n = min(len(source), 16000)
    torch.testing.assert_close(w[:n], source[:n])
    assert torch.all(w[n:] == 0)
    # mu-law codes decode back to the waveform
    x_all = LabelledAudioSet(root, "all")
    assert len(x_all) == 15
    codes, _ = x_all[[c.relpath for c in x_all.clips].index("zero/spk1_nohash_0.wav")]
    assert (dequantize(codes)[:16000] - w).abs().max() < 0.02


def test_split_list_naming_a_missing_file(tmp_path):
    root = make_labelled(tmp_path / "sc")
    (root / "testing_list.txt").write_text("zero/spk0_nohash_0.wav\none/ghost_nohash_0.wav\n")
    with pytest.raises(AudioInputError, match=r"testing_list\.txt:2: names 'one/ghost_nohash_0\.wav', which does not "
                                              r"exist"):
        LabelledAudioSet(root, "train")


def test_hash_split_is_deterministic_and_keeps_speakers_together():
    names = [f"zero/{i:08x}_nohash_{k}.wav" for i in range(3000) for k in range(2)]
    splits = [hash_split(n) for n in names]
    assert splits == [hash_split(n) for n in names]
    assert all(splits[2 * i] == splits[2 * i + 1] for i in range(3000))  # same speaker, same split
    frac = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert 0.77 < frac["train"] < 0.83 and 0.08 < frac["validation"] < 0.12 and 0.08 < frac["test"] < 0.12


def test_labelled_set_without_lists_uses_hash_split(tmp_path):
    root = make_labelled(tmp_path / "sc", per_class=40, classes=("cat", "dog"), lengths=(800,))
    classes, splits = scan_labelled(root)
    assert classes == ("cat", "dog")
    for split, clips in splits.items():
        assert clips and all(hash_split(c.relpath) == split for c in clips)
    assert sum(len(c) for c in splits.values()) == 80


def test_small_set_without_lists_still_has_every_split(tmp_path):
    # four files whose names all hash into train: each empty held-out split takes the last training file
    root = make_labelled(tmp_path / "sc", per_class=2, classes=("zero", "one"), lengths=(800,))
    assert {hash_split(f"x/spk{k}_nohash_0.wav") for k in range(2)} == {"train"}
    with pytest.warns(AudioNotice, match=r"no validation_list\.txt .* holding out one/spk1_nohash_0\.wav"):
        classes, splits = scan_labelled(root)
    assert [c.relpath for c in splits["validation"]] == ["one/spk1_nohash_0.wav"]
    assert [c.relpath for c in splits["test"]] == ["one/spk0_nohash_0.wav"]
    assert [c.relpath for c in splits["train"]] == ["zero/spk0_nohash_0.wav", "zero/spk1_nohash_0.wav"]
    assert scan_labelled(root) == (classes, splits)  # deterministic


def test_labelled_set_errors(tmp_path):
    with pytest.raises(AudioInputError, match="no such dataset directory"):
        LabelledAudioSet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioInputError, match="no class subdirectories"):
        LabelledAudioSet(tmp_path / "empty")
    root = make_labelled(tmp_path / "sc", per_class=1, classes=("zero",))
    (root / "testing_list.txt").write_text("zero/spk0_nohash_0.wav\n")
    with pytest.raises(AudioInputError, match="'train' split has no audio files"):
        LabelledAudioSet(root, "train")
    bad = make_labelled(tmp_path / "bad", per_class=2, classes=("zero",))
    write(bad / "zero" / "spk1_nohash_0.wav", np.zeros(16000, np.float32))
    ds = LabelledAudioSet(bad, "all")
    with pytest.raises(AudioInputError, match=r"spk1_nohash_0\.wav: the audio is silence only"):
        ds[1]


def test_flat_folder_and_autodetection(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        write(flat / f"{i}.wav", tone(1000 * (i + 1)))
    (flat / "notes.txt").write_text("ignored")
    ds = FlatAudioFolder(flat, output="waveform")
    assert len(ds) == 3 and [len(ds[i][0]) for i in range(3)] == [1000, 2000, 3000] and ds[0][1] == -1
    fixed = open_audio_set(flat, output="mulaw")
    assert isinstance(fixed, FlatAudioFolder) and fixed[2][0].shape == (16000,)
    labelled = open_audio_set(make_labelled(tmp_path / "sc", per_class=2))
    assert isinstance(labelled, LabelledAudioSet) and len(labelled) == 6
    (tmp_path / "none").mkdir()
    with pytest.raises(AudioInputError, match="contains no WAV/FLAC files"):
        FlatAudioFolder(tmp_path / "none")


# ---- long recordings ---------------------------------------------------------------------------------------

def test_long_recording_windows_match_the_file(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.uniform(-0.5, 0.5, 50_000).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, 3_000).astype(np.float32)
    write(tmp_path / "rec" / "a.wav", a, subtype="FLOAT")
    write(tmp_path / "rec" / "b.flac", b)
    ds = LongRecordingWindows(tmp_path / "rec", window=16_000, output="waveform")
    assert len(ds) == 3 + 1  # 50k samples -> 3 full windows; the short file -> one padded window
    for i in range(3):
        x, label = ds[i]
        np.testing.assert_array_equal(x.numpy(), a[i * 16000:(i + 1) * 16000])
        assert label == -1
    last = ds[3][0]
    assert np.abs(last[:3000].numpy() - b).max() <= 1 / 32768 + 1e-7 and torch.all(last[3000:] == 0)
    hopped = LongRecordingWindows(tmp_path / "rec", window=16_000, hop=4_000, output="waveform")
    assert len(hopped) == (50_000 - 16_000) // 4_000 + 1 + 1
    np.testing.assert_array_equal(hopped[2][0].numpy(), a[8000:24000])
    with pytest.raises(IndexError):
        hopped[len(hopped)]


def test_long_recording_random_offsets_are_reproducible(tmp_path):
    a = np.random.default_rng(2).uniform(-0.5, 0.5, 40_000).astype(np.float32)
    write(tmp_path / "rec" / "a.wav", a, subtype="FLOAT")
    ds = LongRecordingWindows(tmp_path / "rec", window=10_000, random_offset=True, seed=7, output="waveform")
    starts = [ds.locate(i)[1] for i in range(len(ds))]
    again = LongRecordingWindows(tmp_path / "rec", window=10_000, random_offset=True, seed=7)
    assert starts == [again.locate(i)[1] for i in range(len(ds))]
    assert all(i * 10_000 <= s <= min(i * 10_000 + 9_999, 30_000) for i, s in enumerate(starts))
    np.testing.assert_array_equal(ds[1][0].numpy(), a[starts[1]:starts[1] + 10_000])
    ds.set_epoch(1)
    assert [ds.locate(i)[1] for i in range(len(ds))] != starts


def test_long_recording_at_another_rate_is_resampled_per_window(tmp_path):
    x = tone(48_000, freq=1000, sr=24_000)
    write(tmp_path / "rec" / "a.wav", x, sr=24_000)
    info = audio_info(tmp_path / "rec" / "a.wav")
    seg = read_segment(info, 8000, 8000)
    assert seg.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(seg.numpy()))
    assert abs(np.argmax(spectrum) * SR / 8000 - 1000) <= 2
    ds = LongRecordingWindows(tmp_path / "rec", window=8000)
    assert len(ds) == 4


def test_long_recordings_reject_a_truncated_file(tmp_path):
    write(tmp_path / "full.wav", tone(16000))
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:9000])
    with pytest.raises(AudioInputError, match=r"cut\.wav: truncated"):
        LongRecordingWindows(tmp_path / "rec", window=1000)


def test_long_recordings_report_or_refuse_another_rate_and_refuse_silence(tmp_path):
    write(tmp_path / "rec" / "a.wav", tone(8000, sr=8000), sr=8000)
    with pytest.warns(AudioConversionWarning, match=r"a\.wav: resampled from 8000 Hz to 16000 Hz"):
        assert len(LongRecordingWindows(tmp_path / "rec", window=4000)) == 4
    with pytest.raises(AudioInputError, match=r"a\.wav: sample rate is 8000 Hz, 16000 Hz is required"):
        LongRecordingWindows(tmp_path / "rec", window=4000, on_rate_mismatch="error")
    # silence found only in the second block of a file is still found; sound in a later block passes
    quiet = np.zeros(5000, np.float32)
    write(tmp_path / "quiet" / "q.wav", quiet)
    with pytest.raises(AudioInputError, match=r"q\.wav: the audio is silence only"):
        LongRecordingWindows(tmp_path / "quiet", window=1000)
    assert len(LongRecordingWindows(tmp_path / "quiet", window=1000, allow_silence=True)) == 5
    from audio.io import check_samples

    quiet[4500] = 0.5
    write(tmp_path / "late" / "l.wav", quiet)
    check_samples(audio_info(tmp_path / "late" / "l.wav"), block=1000)
