"""The audio commands end to end at a tiny size: train -> generate (valid WAVs, nll.csv) -> train-classifier ->
metrics, a recordings folder, and every bad input exiting non-zero with the file named."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import audio.cli as audio_cli
from audio.cli import build_parser, main
from audio.digits import make_digits
from audio.errors import AudioInputError
from audio.metrics import read_nll_table
from ssm_core import MambaConfig, MambaSequenceClassifier, save_model
from ssm_core.models import read_model_info

SR = 16000


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("data") / "digits", per_class=5, seed=0, progress=False)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["train", "--data", str(digits), "--out", str(run), "--preset", "tiny", "--steps", "3",
                 "--batch-size", "4", "--crop", "256", "--valid-samples", "4", "--device", "cpu"])
    assert code == 0
    return run


def test_train_writes_a_loadable_run_with_validation_nll(trained):
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["steps"] == 3 and summary["preset"] == "tiny"
    bits = summary["valid"]["bits_per_sample"]
    assert 0 < bits < 9   # near log2(256) = 8 bits for a barely trained model; a broken loss would not be
    assert summary["valid"]["samples"] == 4 * 256
    assert (trained / "model.safetensors").is_file() and (trained / "checkpoints").is_dir()
    info = read_model_info(trained)
    assert info.task == "audio-waveform-generation" and info.steps == 3 and info.preset == "tiny"
    assert info.metrics["valid_bits_per_sample"] == bits and info.tokenizer["quantization"] == "mulaw"
    assert "python -m audio generate --checkpoint tiny" in (trained / "README.md").read_text()


def test_generate_writes_valid_wavs_and_nll_table(trained, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--checkpoint", str(trained), "--n", "3", "--seconds", "0.01", "--out", str(out),
                 "--batch-size", "3", "--seed", "1", "--device", "cpu"])
    assert code == 0
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 3
    for wav in wavs:
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.frames) == (SR, 1, 160)
    table = read_nll_table(out / "nll.csv")
    assert sorted(table) == [w.name for w in wavs] and all(0 < v < 20 for v in table.values())
    assert "samples/s" in capsys.readouterr().out


def test_generate_continues_a_prompt(trained, tmp_path):
    prompt = tmp_path / "prompt.wav"
    wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR // 10) / SR)
    sf.write(prompt, wave, SR, subtype="PCM_16")
    out = tmp_path / "cont"
    assert main(["generate", "--checkpoint", str(trained), "--n", "2", "--seconds", "0.02", "--prompt", str(prompt),
                 "--prompt-seconds", "0.01", "--out", str(out), "--device", "cpu"]) == 0
    for wav in sorted(out.glob("*.wav")):
        got, _ = sf.read(wav)
        assert len(got) == 320
        # the first 160 samples are the prompt after mu-law 8-bit quantisation (error well under 0.03)
        assert np.abs(got[:160] - wave[:160]).max() < 0.03


def test_classifier_then_metrics(digits, tmp_path, capsys):
    cls = tmp_path / "cls"
    assert main(["train-classifier", "--data", str(digits), "--out", str(cls), "--preset", "tiny", "--steps", "20",
                 "--batch-size", "8", "--device", "cpu", "--set", "train.log_every=1"]) == 0
    metrics = json.loads((cls / "metrics.json").read_text())
    assert metrics["test_clips"] == 10
    # it learns: over 20 seeded steps on 30 clips the training loss falls from ~2.6 to ~1.8 (10 digits: ln 10 = 2.3)
    with open(cls / "metrics.csv") as f:
        losses = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "train/loss"]
    assert len(losses) == 20 and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert "test accuracy" in capsys.readouterr().out
    info = read_model_info(cls)  # the labels travel with the weights
    assert info.labels == metrics["config"]["model"]["classes"] and len(info.labels) == 10
    assert info.metrics["test_accuracy"] == metrics["test_accuracy"]
    report = tmp_path / "report.json"
    assert main(["metrics", "--generated", str(digits), "--generated-split", "test", "--reference", str(digits),
                 "--classifier", str(cls), "--json", str(report), "--allow-few-clips", "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    assert result["n_generated"] == 10 and result["n_reference"] == 30
    assert np.isfinite(result["fid"]) and result["is"] >= 1.0 - 1e-9
    capsys.readouterr()
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("")
    assert main(["metrics", "--generated", str(digits), "--generated-split", "test", "--reference", str(digits),
                 "--classifier", str(cls), "--json", str(blocked / "report.json"), "--allow-few-clips",
                 "--device", "cpu"]) != 0
    assert '"fid"' not in capsys.readouterr().out  # a report that could not be saved is not half-delivered


def test_metrics_without_classifier_use_the_shipped_one_which_hears_held_out_voices(tmp_path, capsys):
    held_out = make_digits(tmp_path / "held", per_class=4, seed=7, voices="held-out", progress=False)
    assert main(["metrics", "--generated", str(held_out), "--generated-split", "all", "--reference", str(held_out),
                 "--reference-split", "train", "--device", "cpu", "--allow-few-clips"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_generated"] == 40
    assert report["generated_accuracy"] >= 0.8  # its card: 96% on held-out voices


def test_train_on_a_folder_of_recordings(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", 0.3 * rng.standard_normal(SR // 2), SR, subtype="PCM_16")
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), "--preset", "tiny", "--window", "256",
                 "--steps", "2", "--batch-size", "2", "--valid-samples", "2", "--device", "cpu"]) == 0
    assert json.loads((run / "metrics.json").read_text())["valid"]["samples"] == 2 * 256


def test_a_small_flat_folder_holds_out_its_last_window(tmp_path):
    from audio.train import WaveformExperiment, WaveformTask

    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(3):  # three one-second clips: three windows, fewer than valid_every
        sf.write(folder / f"{k}.wav", 0.3 * np.random.default_rng(k).standard_normal(SR), SR, subtype="PCM_16")
    exp = WaveformExperiment.from_preset("tiny")
    exp.data.data = str(folder)
    task = WaveformTask(exp)
    assert (len(task.train_set), len(task.valid_set)) == (2, 1)
    got, _ = task.valid_set[0]  # the held-out crop comes from the last clip, 2.wav
    whole, _ = task.valid_set.base.base[2]
    assert any(torch.equal(got, whole[i:i + len(got)]) for i in range(len(whole) - len(got) + 1))
    (folder / "0.wav").unlink()
    (folder / "1.wav").unlink()
    with pytest.raises(AudioInputError, match="only 1 window of 16000 samples; need at least 2"):
        WaveformTask(exp)


def test_generate_with_a_prompt_and_short_clips_needs_no_prompt_seconds(trained, tmp_path, capsys):
    prompt = tmp_path / "prompt.wav"
    sf.write(prompt, 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR), SR, subtype="PCM_16")
    out = tmp_path / "cont"
    assert main(["generate", "--checkpoint", str(trained), "--n", "1", "--seconds", "0.02", "--prompt", str(prompt),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "0.01 s each" in capsys.readouterr().err  # half of the clip, not the 0.5 s default
    assert sf.info(out / "sample_00000.wav").frames == 320


def test_generate_writes_over_its_own_clips_only(trained, tmp_path, capsys):
    def generate(out, n, *extra):
        return main(["generate", "--checkpoint", str(trained), "--seconds", "0.01", "--out", str(out), "--n", str(n),
                     "--device", "cpu", *extra])

    music = tmp_path / "music"
    music.mkdir()
    (music / "song.wav").write_bytes(b"a recording of mine")
    assert generate(music, 1) == 1  # a folder this command did not fill
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in music.iterdir()) == ["song.wav"]
    samples = tmp_path / "samples"
    assert generate(samples, 3) == 0
    (samples / "notes.txt").write_text("mine\n")
    assert generate(samples, 2) == 0  # its own clips: rewritten
    # the earlier set's third clip is gone (it would join the next metrics), the user's note is not
    assert sorted(p.name for p in samples.iterdir()) == ["nll.csv", "notes.txt", "sample_00000.wav",
                                                          "sample_00001.wav"]
    assert sorted(read_nll_table(samples / "nll.csv")) == ["sample_00000.wav", "sample_00001.wav"]
    # a clip used as the prompt would be overwritten by the clip of the same name: refused, even with --overwrite
    prompt = samples / "sample_00000.wav"
    before = prompt.read_bytes()
    assert generate(samples, 2, "--prompt", str(prompt), "--prompt-seconds", "0.005", "--overwrite") == 1
    assert "is also an input of this command" in capsys.readouterr().err
    assert prompt.read_bytes() == before
    assert generate(music, 1, "--overwrite") == 0  # asked for: written beside the user's file
    assert (music / "song.wav").read_bytes() == b"a recording of mine"


@pytest.mark.parametrize("command", [["train", "--data", "{tmp}/d", "--out", "{tmp}/run", "--preset", "tiny"],
                                     ["generate", "--checkpoint", "{tmp}/run", "--out", "{tmp}/s"]])
def test_device_cuda_without_a_gpu_is_an_error_in_every_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([a.format(tmp=tmp_path) for a in command] + ["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "error: --device cuda was requested but no CUDA GPU is available" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before doing anything


@pytest.mark.parametrize("command", ["make-digits", "fetch", "plot"])
def test_commands_that_use_no_device_hide_device_and_ignore_it_with_a_warning(command, capsys, monkeypatch):
    main_help = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    assert "--device" not in main_help
    ran = []
    monkeypatch.setattr(audio_cli, f"cmd_{command.replace('-', '_')}", lambda args: ran.append(args) or 0)
    required = {"make-digits": ["--out", "x"], "fetch": ["sc09"], "plot": ["--clips", "x", "--out", "x.png"]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # an old script's --device cuda on a CPU machine
    assert main([command, *required[command], "--device", "cuda"]) == 0 and ran
    assert "warning: --device cuda is ignored: this command runs nothing on a device" in capsys.readouterr().err


def test_bad_inputs_exit_nonzero_naming_the_file(digits, trained, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "r1"), "--preset", "tiny"]) == 1
    assert str(missing) in capsys.readouterr().err

    assert main(["train", "--data", str(digits), "--out", str(tmp_path / "r2"), "--preset", "tiny",
                 "--crop", "1000"]) == 1
    assert "multiple of its total pooling factor 16" in capsys.readouterr().err

    assert main(["generate", "--checkpoint", str(missing), "--n", "1", "--seconds", "0.01",
                 "--out", str(tmp_path / "g")]) == 1
    assert str(missing) in capsys.readouterr().err

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wav")
    assert main(["generate", "--checkpoint", str(trained), "--n", "1", "--seconds", "0.02", "--prompt", str(broken),
                 "--out", str(tmp_path / "g2"), "--device", "cpu"]) == 1
    assert str(broken) in capsys.readouterr().err

    assert main(["generate", "--checkpoint", str(trained), "--n", "1", "--seconds", "0.01", "--prompt",
                 str(digits / "zero"), "--prompt-seconds", "0.5", "--out", str(tmp_path / "g3"),
                 "--device", "cpu"]) == 1
    assert "must be shorter" in capsys.readouterr().err

    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "x.wav", np.zeros(100), SR)
    assert main(["train-classifier", "--data", str(flat), "--out", str(tmp_path / "c"), "--preset", "tiny"]) == 1
    assert str(flat) in capsys.readouterr().err
    assert main(["train-classifier", "--data", str(missing), "--out", str(tmp_path / "c"), "--preset", "tiny"]) == 1
    assert f"{missing}: no such data directory" in capsys.readouterr().err

    assert main(["train", "--data", str(flat), "--out", str(tmp_path / "r3"), "--preset", "tiny", "--window", "32",
                 "--on-rate-mismatch", "error"]) == 1  # x.wav is silent
    assert f"{flat / 'x.wav'}: the audio is silence only" in capsys.readouterr().err
    sf.write(flat / "x.wav", np.full(4000, 0.1), 8000)
    assert main(["train", "--data", str(flat), "--out", str(tmp_path / "r4"), "--preset", "tiny", "--window", "32",
                 "--on-rate-mismatch", "error"]) == 1
    assert f"{flat / 'x.wav'}: sample rate is 8000 Hz, 16000 Hz is required" in capsys.readouterr().err

    clsdir = tmp_path / "not_a_model"
    clsdir.mkdir()
    (clsdir / "model.json").write_text(json.dumps({"model_class": "audio.classifier.ResNeXtClassifier",
                                                   "config": {"depth": 11}}))
    (clsdir / "model.safetensors").write_bytes(b"garbage")
    assert main(["generate", "--checkpoint", str(clsdir), "--n", "1", "--seconds", "0.01",
                 "--out", str(tmp_path / "g4")]) == 1
    assert str(clsdir) in capsys.readouterr().err
    dna = save_model(MambaSequenceClassifier(MambaConfig(d_model=8, n_layer=1, vocab_size=9, num_classes=2)),
                     tmp_path / "dna_classifier")
    assert main(["generate", "--checkpoint", str(dna), "--n", "1", "--seconds", "0.01",
                 "--out", str(tmp_path / "g5")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --checkpoint {dna} is a Mamba sequence classifier "
                                               "(MambaSequenceClassifier), not a SaShiMi waveform model")


def test_a_cpu_training_with_the_papers_defaults_is_announced_with_its_estimated_length(tmp_path, capsys):
    missing = tmp_path / "no_data"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    hours = 200_000 * 16 * 16000 / 1202.8 / 3600  # the 6.1m preset's recipe at its measured CPU rate
    assert f"warning: estimate: 200,000 steps of the 6.1m preset at batch 16 take about {hours:,.0f} h" in err
    assert str(missing) in err.strip().splitlines()[-1]  # then the data is checked as before
    main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--device", "cpu", "--preset", "tiny"])
    assert "estimate" not in capsys.readouterr().err  # minutes: nothing to announce


def test_generating_the_default_64_clips_on_a_cpu_is_announced_with_its_estimated_time(caplog):
    import logging

    from audio.cli import _warn_long_generation
    from audio.sashimi import SashimiConfig, SashimiModel

    model = SashimiModel(SashimiConfig.from_preset("6.1m"))
    with caplog.at_level(logging.WARNING, logger="audio"):
        _warn_long_generation(model, torch.device("cpu"), 64, 1.0)
        assert "estimate: 64 clips of 1 s from a 6.1m model take about 14 min on a 2-core CPU" in caplog.text
        caplog.clear()
        _warn_long_generation(model, torch.device("cpu"), 8, 0.5)  # seven minutes
        _warn_long_generation(SashimiModel(SashimiConfig.from_preset("tiny")), torch.device("cpu"), 64, 1.0)
    assert caplog.text == ""


def test_presets_lists_both_tables(capsys):
    from audio.train import ClassifierExperiment, WaveformExperiment

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*WaveformExperiment.PRESETS, *ClassifierExperiment.PRESETS])
    assert "6,255,040" in out and "24,850,912" in out  # the paper's 6.1M and 24.3M SC09 models
