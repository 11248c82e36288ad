"""Every numeric flag of every command line refuses NaN, infinities and values outside its range at argument
parsing, naming the flag and the range; config files and --set values get the same checks."""
from __future__ import annotations

import argparse
import math

import pytest

from ssm_core.utils.ranges import POSITIVE_INT, Range, check_ranges


def _audio():
    from audio.cli import build_parser
    return build_parser()


def _genomics():
    from genomics.cli import build_parser
    return build_parser()


def _synthetic():
    from ssm_core.synthetic.runner import build_parser
    return build_parser()


GENERATE = ["generate", "--checkpoint", "run", "--out", "o"]
TRAIN = ["train", "--data", "d", "--out", "o"]
FINETUNE = ["finetune", "--fasta-dir", "d", "--out", "o"]
PRETRAIN = ["pretrain", "--fasta", "g.fa", "--out", "o"]
METRICS = ["metrics", "--generated", "g", "--reference", "r", "--classifier", "c"]
SYNTHETIC = ["induction", "--out", "o"]

# (parser, the command's required arguments, flag, bad value, the range the message must state)
CASES = [
    (_audio, GENERATE, "--seconds", "1e12", "in (0, 134217.7268]"),
    (_audio, GENERATE, "--seconds", "nan", "in (0, 134217.7268]"),
    (_audio, GENERATE, "--seconds", "0", "in (0, 134217.7268]"),
    (_audio, GENERATE, "--seconds", "-inf", "in (0, 134217.7268]"),
    (_audio, GENERATE, "--prompt-seconds", "nan", "in (0, 134217.7268]"),
    (_audio, GENERATE, "--temperature", "nan", ">= 0"),
    (_audio, GENERATE, "--temperature", "-0.5", ">= 0"),
    (_audio, GENERATE, "--temperature", "inf", ">= 0"),
    (_audio, GENERATE, "--top-p", "0", "in (0, 1]"),
    (_audio, GENERATE, "--top-p", "1.5", "in (0, 1]"),
    (_audio, GENERATE, "--top-p", "nan", "in (0, 1]"),
    (_audio, GENERATE, "--n", "0", "an integer >= 1"),
    (_audio, GENERATE, "--n", "2.5", "an integer >= 1"),
    (_audio, GENERATE, "--batch-size", "0", "an integer >= 1"),
    (_audio, GENERATE, "--seed", "-1", "an integer in [0, 4294967295]"),
    (_audio, TRAIN, "--steps", "0", "an integer >= 1"),
    (_audio, TRAIN, "--batch-size", "0", "an integer >= 1"),
    (_audio, TRAIN, "--lr", "nan", "> 0"),
    (_audio, TRAIN, "--lr", "inf", "> 0"),
    (_audio, TRAIN, "--lr", "0", "> 0"),
    (_audio, TRAIN, "--window", "0", "an integer >= 1"),
    (_audio, TRAIN, "--crop", "-16", "an integer >= 0"),
    (_audio, TRAIN, "--valid-samples", "-1", "an integer >= 0"),
    (_audio, TRAIN, "--checkpoint-every", "-1", "an integer >= 0"),
    (_audio, TRAIN, "--seed", "4294967296", "an integer in [0, 4294967295]"),
    (_audio, ["train-classifier", "--data", "d", "--out", "o"], "--epochs", "nan", "> 0"),
    (_audio, ["train-classifier", "--data", "d", "--out", "o"], "--epochs", "0", "> 0"),
    (_audio, METRICS, "--n", "0", "an integer >= 1"),
    (_audio, METRICS, "--batch-size", "0", "an integer >= 1"),
    (_audio, ["make-digits", "--out", "o"], "--per-class", "0", "an integer >= 1"),
    (_audio, ["make-digits", "--out", "o"], "--seed", "-3", "an integer in [0, 4294967295]"),
    (_audio, ["plot", "--clips", "c", "--out", "p.png"], "--n", "0", "an integer >= 1"),
    (_audio, ["plot", "--clips", "c", "--out", "p.png"], "--columns", "0", "an integer >= 1"),
    (_genomics, ["simulate", "--out", "o"], "--seed", "-1", "an integer in [0, 4294967295]"),
    (_genomics, PRETRAIN, "--warmup-fraction", "nan", "in [0, 1)"),
    (_genomics, PRETRAIN, "--warmup-fraction", "1", "in [0, 1)"),
    (_genomics, PRETRAIN, "--seqlen", "0", "an integer >= 1"),
    (_genomics, PRETRAIN, "--lr", "nan", "> 0"),
    (_genomics, FINETUNE, "--window", "0", "an integer >= 1"),
    (_genomics, FINETUNE, "--steps", "0", "an integer >= 1"),
    (_genomics, FINETUNE, "--batch-size", "-4", "an integer >= 1"),
    (_genomics, FINETUNE, "--lr", "-inf", "> 0"),
    (_genomics, FINETUNE, "--seed", "1.5", "an integer in [0, 4294967295]"),
    (_genomics, ["classify", "--checkpoint", "c", "--fasta", "x.fa"], "--batch-tokens", "0", "an integer >= 1"),
    (_synthetic, SYNTHETIC, "--train-len", "0", "an integer >= 4"),
    (_synthetic, SYNTHETIC, "--train-len", "3", "an integer >= 4"),
    (_synthetic, SYNTHETIC, "--curriculum-start", "-8", "an integer >= 0"),
    (_synthetic, SYNTHETIC, "--steps", "0", "an integer >= 1"),
    (_synthetic, SYNTHETIC, "--lr", "nan", "> 0"),
    (_synthetic, SYNTHETIC, "--eval-lens", "2,64", "lengths each an integer >= 4"),
]


@pytest.mark.parametrize("parser, required, flag, value, allowed", CASES,
                         ids=[f"{c[1][0]} {c[2]} {c[3]}" for c in CASES])
def test_numeric_flags_are_refused_at_parsing_naming_flag_and_range(parser, required, flag, value, allowed, capsys):
    with pytest.raises(SystemExit) as stop:
        parser().parse_args([*required, f"{flag}={value}"])  # "=": argparse reads "-inf" alone as an option
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"argument {flag}: must be {allowed}, got" in err, err
    assert "Traceback" not in err


def test_values_inside_the_ranges_still_parse():
    args = _audio().parse_args([*GENERATE, "--seconds", "0.5", "--temperature", "0", "--top-p", "1", "--n", "3",
                                "--seed", "4294967295"])
    assert (args.seconds, args.temperature, args.top_p, args.n, args.seed) == (0.5, 0.0, 1.0, 3, 4294967295)
    args = _genomics().parse_args([*PRETRAIN, "--warmup-fraction", "0", "--lr", "3e-4"])
    assert (args.warmup_fraction, args.lr) == (0.0, 3e-4)


def test_range_text_and_membership():
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]" and str(POSITIVE_INT) == "an integer >= 1"
    assert not Range().contains(math.nan) and not Range().contains(math.inf) and Range().contains(-2.5)
    assert not POSITIVE_INT.contains(True) and not POSITIVE_INT.contains(2.0) and POSITIVE_INT.contains(2)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer >= 1, got 'x'"):
        POSITIVE_INT("x")


@pytest.mark.parametrize("text, message", [
    ("train:\n  optim: {lr: .nan}\n", r"train.optim.lr: expected a finite number; got nan"),
    ("train:\n  time_limit_min: .inf\n", r"train.time_limit_min: expected a finite number; got inf"),
    ("train:\n  seed: -1\n", r"TrainConfig.seed must be an integer in \[0, 4294967295\]; got -1"),
    ("train:\n  early_stop: {patience: 0}\n", r"EarlyStopConfig.patience must be an integer >= 1; got 0"),
    ("data:\n  window: 0\n", r"FinetuneData.window must be an integer >= 1; got 0"),
    ("data:\n  max_batch_tokens: -1\n", r"FinetuneData.max_batch_tokens must be an integer >= 1; got -1"),
])
def test_config_files_get_the_same_ranges(tmp_path, text, message):
    from genomics.finetune import FinetuneExperiment
    from ssm_core.train import add_engine_args, resolve_config

    config = tmp_path / "c.yaml"
    config.write_text(text)
    args = add_engine_args(argparse.ArgumentParser()).parse_args(["--config", str(config)])
    with pytest.raises(ValueError, match=message):
        resolve_config(args, FinetuneExperiment())


@pytest.mark.parametrize("setting, message", [
    ("data.crop=-16", r"WaveformData.crop must be an integer >= 0; got -16"),
    ("data.valid_every=1", r"WaveformData.valid_every must be an integer >= 2; got 1"),
    ("train.optim.betas=0.9,nan", r"expected a finite number; got 'nan'"),
])
def test_set_values_get_the_same_ranges(setting, message):
    from audio.train import WaveformExperiment
    from ssm_core.train import add_engine_args, resolve_config

    args = add_engine_args(argparse.ArgumentParser()).parse_args(["--set", setting])
    with pytest.raises(ValueError, match=message):
        resolve_config(args, WaveformExperiment.from_preset("tiny"))


def test_check_ranges_names_class_and_field():
    class Box:
        size = 0
    with pytest.raises(ValueError, match=r"Box.size must be an integer >= 1; got 0"):
        check_ranges(Box(), size=POSITIVE_INT)


def test_cli_refusals_end_with_status_2_not_a_traceback(tmp_path, capsys):
    from audio.cli import main as audio
    from genomics.cli import main as genomics

    for main, argv in ((audio, [*GENERATE, "--top-p", "0"]), (genomics, [*FINETUNE, "--lr", "nan"])):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --top-p: must be in (0, 1], got 0" in err and "argument --lr: must be > 0, got nan" in err
