"""``python -m audio``: the audio command line (one function per subcommand).

Subcommands: ``make-digits``, ``fetch``, ``presets``, ``train``, ``generate``, ``train-classifier``, ``metrics`` and
``plot``. Each has an ``add_<name>_parser(subparsers)`` function that declares its arguments and a
``cmd_<name>(args) -> int`` function that runs it; a new subcommand adds one of each and registers it in
:func:`build_parser`. Every subcommand takes ``--quiet``/``--verbose``; those that run a model take ``--device``
(``ssm_core.utils.cli.add_device_argument``). Bad input ends with ``error: <message>`` on stderr and a non-zero
status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from audio.errors import AudioInputError, AudioNotice
from ssm_core.utils.cli import HelpFormatter, add_device_argument, add_overwrite_argument
from ssm_core.utils.ranges import NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Range

log = logging.getLogger(__name__)

TOP_P = Range(0, 1, low_open=True)

DESCRIPTION = """\
Raw-audio tools of the Mamba suite: build the embedded spoken-digits set, fetch SC09 and YouTubeMix, train the
SaShiMi-Mamba waveform model and generate clips with it, train the SC09 classifier, score generated clips with the
SC09 metrics (FID, IS, mIS, AM), plot clips."""

EPILOG_MAKE_DIGITS = """\
examples:
  python -m audio make-digits --out data/digits                   # 200 clips per digit (2000 in all)
  python -m audio make-digits --out /tmp/digits --per-class 20 --seed 1

The set is SC09's layout: OUT/zero/00000.wav ... OUT/nine/..., 16 kHz mono 1 s clips, with
validation_list.txt and testing_list.txt (10% of each class each) and synthesis.json (every clip's
voice, rate, pitch, speed, room, gain, noise and band). Speech comes from eSpeak NG (the espeakng-loader
package), with random English accents and voice variants, speaking rate, pitch, playback speed, room
reverberation, gain, background noise and band-limiting. A dozen voices never appear in the default set:
--voices held-out builds a set of only those, on which the shipped classifier's held-out accuracy is measured
(`python -m audio make-digits --out data/digits-held-out --voices held-out --seed 1`).
"""

EPILOG_FETCH = """\
examples:
  python -m audio fetch sc09 --dest data          # Speech Commands v0.02 -> data/sc09 (digit words only)
  python -m audio fetch youtubemix --dest data    # gated on Hugging Face: see the manifest's licence note
  python -m audio fetch path/to/manifest.json --dest data

MANIFEST is a name in data_manifests/ (sc09, youtubemix) or a JSON file. Downloads land in
DEST/downloads, resume when interrupted and are checked against the manifest's SHA-256 and size
(a corrupt download is deleted and reported); the data then goes to DEST/<name>.
"""

EPILOG_METRICS = """\
examples:
  python -m audio metrics --generated samples/ --reference data/sc09    # the shipped digits classifier
  python -m audio metrics --generated samples/ --reference data/sc09 --classifier runs/cls
  python -m audio metrics --generated data/sc09 --generated-split test --reference data/sc09 \\
      --classifier runs/cls --json test_row.json                  # the dataset's own train-vs-test row
  python -m audio metrics --generated samples/ --reference data/sc09 --classifier runs/cls \\
      --nll samples/nll.csv --select band                         # s4's likelihood filtering

Prints one JSON object: fid, is, mis, am (s4 SaShiMi-evaluation definitions, see audio/metrics.py),
n_generated, n_reference, and reference_accuracy / generated_accuracy for labelled sets. --generated
and --reference take a flat folder of WAVs or a labelled set (SC09 layout); by default the reference is
the training split of a labelled set, as in the papers. The paper's reference numbers (train / test
split of SC09): FID 0.00 / 0.02, IS 8.56 / 8.33, mIS 292.5 / 257.6, AM 0.16 / 0.19. Each set needs more
clips than the classifier has features (1,025 for resnext29, 65 for tiny), or the feature covariance is
singular; --allow-few-clips scores sets from 2 clips, with an FID biased upward.
"""

EPILOG_TRAIN = """\
examples:
  python -m audio train --data data/digits --out runs/tiny --preset tiny --steps 300
  python -m audio train --data data/sc09 --out runs/sc09 --preset 6.1m          # the paper: 200K steps, batch 16
  python -m audio train --data data/youtubemix --out runs/ytm --window 65536 --preset 6.1m --steps 50000
  python -m audio train --data data/sc09 --out runs/sc09 --resume                # continue after an interruption

--data is a labelled set (SC09 layout: trains on its train split, validates on validation_list.txt) or a
folder of WAVs (long recordings or clips) cut into --window-sample windows (every 10th window held out; the last
one when there are fewer). Files not at 16 kHz are resampled with a notice (--on-rate-mismatch error refuses
them), several channels are mixed down with a notice. Validation reports the NLL in bits per sample. RUN holds config.json, checkpoints/, metrics.csv, plots/, metrics.json and the final
model.safetensors + model.json, which `generate --checkpoint RUN` loads. Presets: tiny (CPU demo),
6.1m and 24.3m (the Mamba paper's SC09 models). Engine flags (--lr, --batch-size, --set KEY=VALUE, ...)
override the preset's recipe, e.g. --set model.quantization=linear (8-bit linear codes instead of mu-law) or
--set train.activation_checkpointing=true (long windows: recompute each block in the backward pass).
"""

EPILOG_GENERATE = """\
examples:
  python -m audio generate --checkpoint runs/sc09 --n 64 --seconds 1 --out samples/
  python -m audio generate --checkpoint runs/sc09 --n 16 --seconds 1 --temperature 0.9 --top-p 0.95 --out s/
  python -m audio generate --checkpoint runs/ytm --n 4 --seconds 8 --prompt piano.wav --prompt-seconds 2 --out c/

Writes OUT/sample_00000.wav ... (16 kHz mono, 16-bit PCM) and OUT/nll.csv (each clip's NLL in bits per
generated sample under the model), which `metrics --nll OUT/nll.csv` uses to filter by likelihood. With
--prompt (a WAV/FLAC file, or a folder of them used in turn) each clip starts with --prompt-seconds of the
prompt and the model continues it; --seconds is the whole clip's length. On a GPU the per-sample step runs
as CUDA graphs (--no-cuda-graph to compare).
"""

EPILOG_TRAIN_CLASSIFIER = """\
examples:
  python -m audio train-classifier --data data/sc09 --out runs/cls                 # ResNeXt-29, 20 epochs
  python -m audio train-classifier --data data/digits --out runs/cls-tiny --preset tiny --epochs 2

Trains on the labelled set's train split (validating on its validation split), then prints and saves the
accuracy on its test split (CLS/metrics.json, key test_accuracy). `metrics --classifier CLS` loads CLS;
without --classifier, `metrics` uses the classifier shipped with the suite (the small preset, trained on the
built-in digits set by benchmarks/digits_classifier.py).
"""

EPILOG_PLOT = """\
examples:
  python -m audio plot --clips samples/ --out samples.png                 # spectrograms of 16 clips
  python -m audio plot --clips data/digits --split test --kind waveform --n 8 --out test.png
"""


def _add_rate_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--on-rate-mismatch", choices=("resample", "error"), default="resample",
                        help="an input file not at 16 kHz: resample it (with a notice on stderr) or stop with an "
                             "error naming it (default: resample)")


# the keys of the report `metrics` writes: a JSON file holding them all was written by an earlier `metrics --json`
METRICS_REPORT_KEYS = ("fid", "is", "mis", "am", "n_generated", "n_reference")


@dataclass(frozen=True)
class CpuCost:
    """What one model preset costs on 2 CPU cores, measured (benchmarks/results/
    audio_generation_cpu_x86_64_2cores_1threads_quick.json, 2026-11-23): the basis of the time estimates below."""
    parameters: int
    train_samples_per_s: float  # training throughput at batch 2 x 1024 samples
    generate_s_per_audio_s: float  # seconds to generate one second of audio for each clip of a batch of 64


CPU_COSTS = {"6.1m": CpuCost(6_255_040, 1202.8, 825.9), "24.3m": CpuCost(24_850_912, 397.4, 1341.1)}
LONG_GENERATION_S = 600.0  # a generation estimated to last longer is announced before it starts


def _warn_long_training(exp) -> None:
    """Before a waveform training on a CPU: its estimated length when the preset's measured rate puts it past an
    hour (the 6.1m preset's default 200,000 steps would take years)."""
    from ssm_core.train.engine import LONG_RUN_S
    from ssm_core.utils.device import resolve_device

    cost = CPU_COSTS.get(exp.preset)
    if cost is None or resolve_device(exp.train.device).type != "cpu":
        return
    per_step = exp.train.batch_size * (exp.data.crop or exp.data.window) / cost.train_samples_per_s
    if per_step * exp.train.steps > LONG_RUN_S:
        log.warning(f"estimate: {exp.train.steps:,} steps of the {exp.preset} preset at batch {exp.train.batch_size} "
                    f"take about {per_step * exp.train.steps / 3600:,.0f} h on a 2-core CPU (measured "
                    f"{cost.train_samples_per_s:,.0f} training samples/s there); --preset tiny, --steps or "
                    "--set train.time_limit_min=MINUTES for a run of minutes, a GPU for the paper's recipe")


def _warn_long_generation(model, device, n: int, seconds: float) -> None:
    """Before generating on a CPU with a measured preset: the estimated time when it passes ten minutes."""
    if device.type != "cpu":
        return
    parameters = sum(p.numel() for p in model.parameters())
    for name, cost in CPU_COSTS.items():
        if cost.parameters == parameters:
            estimate = math.ceil(n / 64) * seconds * cost.generate_s_per_audio_s
            if estimate > LONG_GENERATION_S:
                log.warning(f"estimate: {n} clips of {seconds:g} s from a {name} model take about "
                            f"{estimate / 60:,.0f} min on a 2-core CPU (measured: {cost.generate_s_per_audio_s:.0f} s "
                            "per second of audio for 64 clips); --n and --seconds make it shorter")


def add_make_digits_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("make-digits",
                              help="synthesise the embedded spoken-digits set (ten classes, 16 kHz, 1 s)",
                              description="Synthesise the embedded spoken-digits set (ten classes, 16 kHz, 1 s).",
                              epilog=EPILOG_MAKE_DIGITS, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="directory to create (must be empty or absent unless --force)")
    p.add_argument("--per-class", type=POSITIVE_INT, default=200, help="clips per digit (default: 200)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed; the same seed gives the same set (default: 0)")
    p.add_argument("--voices", choices=("train", "held-out"), default="train",
                   help="train: every voice but the held-out ones; held-out: only those, to test a classifier on "
                        "voices it never trained on (default: train)")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="write into a non-empty --out (an earlier set's clips there are replaced)")
    p.set_defaults(func=cmd_make_digits)
    return p


def cmd_make_digits(args: argparse.Namespace) -> int:
    from audio.digits import make_digits

    out = make_digits(args.out, per_class=args.per_class, seed=args.seed, force=args.force, voices=args.voices)
    print(f"wrote {args.per_class * 10} clips (16 kHz, 1 s, {args.voices} voices) in SC09 layout to {out}")
    return 0


def add_fetch_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fetch", help="download a data manifest's files, verify their checksums, unpack them",
                              description="Download a data manifest's files, verify their checksums and unpack them.",
                              epilog=EPILOG_FETCH, formatter_class=HelpFormatter)
    p.add_argument("manifest", help="manifest name (sc09, youtubemix) or path to a manifest JSON")
    p.add_argument("--dest", default="data", help="where downloads and data go (default: ./data)")
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_fetch)
    return p


def cmd_fetch(args: argparse.Namespace) -> int:
    from ssm_core.utils.outputs import OutputRefusedError

    from audio.manifests import fetch, load_manifest

    manifest = load_manifest(args.manifest)
    log.info(f"{manifest.name}: {manifest.licence}")
    try:
        data = fetch(manifest, args.dest, overwrite=args.overwrite)
    except OutputRefusedError:
        raise
    except OSError as err:  # network errors, HTTP 401/404, ...: the manifest's notes say what to do
        notes = " ".join(f.note for f in manifest.files if f.note)
        raise OSError(f"downloading {manifest.name} failed: {err}" + (f" (note: {notes})" if notes else "")) from None
    print(f"{manifest.name} ready in {data}")
    return 0


def add_presets_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("presets", help="list the waveform and classifier presets with their sizes and recipes",
                              description="List the presets of `train` and `train-classifier`: model shape, "
                                          "parameters and training recipe.",
                              formatter_class=HelpFormatter)
    p.set_defaults(func=cmd_presets)
    return p


def cmd_presets(args: argparse.Namespace) -> int:
    from audio.classifier import ResNeXtClassifier
    from audio.sashimi import parameter_count
    from audio.train import ClassifierExperiment, WaveformExperiment

    print(f"{'train --preset':<15} {'d_model':>7} {'n_blocks':>8} {'d_state':>7} {'parameters':>11} {'steps':>8} "
          f"{'batch':>5} {'lr':>7}")
    for name in WaveformExperiment.PRESETS:
        exp = WaveformExperiment.from_preset(name)
        m, t = exp.model, exp.train
        print(f"{name:<15} {m.d_model:>7} {m.n_blocks:>8} {m.d_state:>7} {parameter_count(m):>11,} {t.steps:>8,} "
              f"{t.batch_size:>5} {t.optim.lr:>7g}")
    print(f"\n{'train-classifier --preset':<25} {'depth':>5} {'groups':>6} {'width':>5} {'parameters':>11} "
          f"{'epochs':>6} {'batch':>5} {'lr':>7}")
    for name in ClassifierExperiment.PRESETS:
        exp = ClassifierExperiment.from_preset(name)
        m, t = exp.model, exp.train
        count = sum(p.numel() for p in ResNeXtClassifier(m).parameters())
        print(f"{name:<25} {m.depth:>5} {m.cardinality:>6} {m.base_width:>5} {count:>11,} {exp.epochs:>6g} "
              f"{t.batch_size:>5} {t.optim.lr:>7g}")
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from ssm_core.train import add_engine_args

    from audio.train import WaveformExperiment

    p = subparsers.add_parser("train", help="train the SaShiMi-Mamba waveform model (NLL in bits per sample)",
                              description="Train the SaShiMi-Mamba waveform model (NLL in bits per sample).",
                              epilog=EPILOG_TRAIN, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="labelled set (SC09 layout) or folder of long recordings")
    p.add_argument("--out", required=True, type=Path, help="run directory to create (or continue with --resume)")
    p.add_argument("--preset", choices=list(WaveformExperiment.PRESETS), default="6.1m",
                   help="model size and recipe (default: 6.1m; `presets` lists them)")
    p.add_argument("--window", type=POSITIVE_INT, help="samples per training window for a folder of recordings "
                                                       "(a multiple of 16; default: 16000)")
    p.add_argument("--valid-samples", type=NONNEGATIVE_INT, help="validate on at most this many clips (0 = all)")
    p.add_argument("--crop", type=NONNEGATIVE_INT, help="train on one random crop of this many samples per clip (a "
                                                        "multiple of 16; 0 = whole clips; tiny preset: 4096)")
    _add_rate_policy(p)
    add_engine_args(p, WaveformExperiment.from_preset("6.1m").train, recipe_name="the 6.1m preset's")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from ssm_core.train import resolve_config

    from audio.train import WaveformExperiment, run_waveform_training

    exp = WaveformExperiment.from_preset(args.preset)
    exp.data.data = str(args.data)
    exp.data.on_rate_mismatch = args.on_rate_mismatch
    for name in ("window", "valid_samples", "crop"):
        if getattr(args, name) is not None:
            setattr(exp.data, name, getattr(args, name))
    exp = resolve_config(args, exp)
    _warn_long_training(exp)
    run_waveform_training(exp, args.out, resume=args.resume)
    return 0


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    from audio.io import MAX_WAV_SECONDS

    clip_seconds = Range(0, MAX_WAV_SECONDS, low_open=True)
    p = subparsers.add_parser("generate", help="generate clips autoregressively from a trained waveform model",
                              description="Generate clips autoregressively from a trained waveform model.",
                              epilog=EPILOG_GENERATE, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a run directory, a copy of its model directory, or one of its checkpoints")
    p.add_argument("--out", required=True, help="directory for the WAVs and nll.csv (new or empty, or an earlier "
                                                "generation's: its clips are replaced)")
    p.add_argument("--n", type=POSITIVE_INT, default=64, help="number of clips (default: 64)")
    p.add_argument("--seconds", type=clip_seconds, default=1.0,
                   help="length of each clip in seconds (default: 1; at most what a 16-bit WAV holds, 37 h)")
    p.add_argument("--prompt", help="WAV/FLAC file (or folder of them) whose start each clip continues")
    p.add_argument("--prompt-seconds", type=clip_seconds,
                   help="seconds of prompt at the start of each clip (default: 0.5, or half of --seconds if less)")
    p.add_argument("--temperature", type=NONNEGATIVE, default=1.0,
                   help="sampling temperature; 0 = greedy (default: 1)")
    p.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus sampling mass, in (0, 1] (default: 1, off)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the sampler (default: 0)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="clips generated together (default: 64)")
    p.add_argument("--no-cuda-graph", action="store_true", help="on a GPU, step without CUDA graphs")
    p.add_argument("--compile", action="store_true",
                   help="fuse each block's step with torch.compile (faster steps after a compilation of minutes)")
    add_overwrite_argument(p)
    _add_rate_policy(p)
    add_device_argument(p)
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    from ssm_core.models import WrongModelError, describe
    from ssm_core.train import load_trained_model
    from ssm_core.utils.device import resolve_device

    from ssm_core.utils.outputs import check_output

    from audio.generate import clip_names, generate, is_clip_folder, read_prompts, write_clips
    from audio.io import SAMPLE_RATE
    from audio.sashimi import SashimiModel

    device = resolve_device(args.device)
    model = load_trained_model(args.checkpoint, device)
    if not isinstance(model, SashimiModel):
        raise WrongModelError(f"--checkpoint {args.checkpoint} is {describe(model)}, not a SaShiMi waveform model")
    c = model.config
    length = int(round(args.seconds * SAMPLE_RATE))
    prompts, files = None, []
    if args.prompt:
        # unset: 0.5 s, or half of a shorter clip, so that the model always continues the prompt
        prompt_seconds = args.prompt_seconds if args.prompt_seconds is not None else min(0.5, args.seconds / 2)
        prompts, files = read_prompts(args.prompt, int(round(prompt_seconds * SAMPLE_RATE)), c.bits,
                                      c.quantization, on_rate_mismatch=args.on_rate_mismatch)
        log.info(f"prompts: {len(files)} file(s), {prompt_seconds:g} s each")
    names = clip_names(args.n)
    _warn_long_generation(model, device, args.n, args.seconds)
    check_output(args.out, lambda out: is_clip_folder(out, names), inputs=[args.checkpoint, *files], files=names,
                 overwrite=args.overwrite)
    result = generate(model, args.n, length, batch_size=args.batch_size, prompts=prompts,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                      cuda_graph=not args.no_cuda_graph, compile=args.compile)
    paths = write_clips(result, args.out, c.bits, c.quantization, names)
    print(f"wrote {len(paths)} clips of {args.seconds:g} s to {args.out} ({result.samples_per_second:,.0f} "
          f"samples/s, {result.seconds:.1f} s); mean NLL {float(result.nll_bits.mean()):.4f} bits/sample")
    return 0


def add_train_classifier_parser(subparsers) -> argparse.ArgumentParser:
    from ssm_core.train import add_engine_args

    from audio.train import ClassifierExperiment

    p = subparsers.add_parser("train-classifier", help="train the SC09 ResNeXt classifier the metrics use",
                              description="Train the SC09 ResNeXt classifier the metrics use.",
                              epilog=EPILOG_TRAIN_CLASSIFIER, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="labelled set (SC09 layout)")
    p.add_argument("--out", required=True, type=Path, help="classifier run directory to create")
    p.add_argument("--preset", choices=list(ClassifierExperiment.PRESETS), default="resnext29",
                   help="resnext29 (the s4 metric classifier), small (the shipped classifier's recipe, ~20 min on "
                        "2 CPU cores) or tiny (CPU tests)")
    p.add_argument("--epochs", type=POSITIVE, help="passes over the train split (default: the preset's; --steps "
                                                   "overrides)")
    p.add_argument("--valid-samples", type=NONNEGATIVE_INT, help="validate on at most this many clips (0 = all)")
    _add_rate_policy(p)
    add_engine_args(p)
    p.set_defaults(func=cmd_train_classifier)
    return p


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from ssm_core.train import resolve_config

    from audio.train import ClassifierExperiment, run_classifier_training

    exp = ClassifierExperiment.from_preset(args.preset)
    exp.data.data = str(args.data)
    if args.epochs is not None:
        exp.epochs = args.epochs
    if args.valid_samples is not None:
        exp.data.valid_samples = args.valid_samples
    exp.data.on_rate_mismatch = args.on_rate_mismatch
    exp = resolve_config(args, exp)
    run_classifier_training(exp, args.out, resume=args.resume, steps_given=args.steps is not None)
    return 0


def add_metrics_parser(subparsers) -> argparse.ArgumentParser:
    from audio.classifier import SHIPPED_CLASSIFIER

    p = subparsers.add_parser("metrics", help="score generated clips with the SC09 classifier: FID, IS, mIS, AM",
                              description="Score generated clips with the SC09 classifier: FID, IS, mIS, AM.",
                              epilog=EPILOG_METRICS, formatter_class=HelpFormatter)
    p.add_argument("--generated", required=True, help="flat folder of generated WAVs, or a labelled set")
    p.add_argument("--reference", required=True, help="reference clips: a labelled set (SC09 layout) or a folder")
    p.add_argument("--classifier", default=SHIPPED_CLASSIFIER,
                   help="classifier directory (model.safetensors + model.json) or a shipped model's name (default: "
                        f"{SHIPPED_CLASSIFIER}, the small ResNeXt shipped with the suite, trained on the built-in "
                        "digits set; see its card in ssm_core/pretrained/)")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--reference-split", default="train", choices=("train", "validation", "test", "all"),
                   help="split of a labelled reference set (default: train, as in the papers)")
    p.add_argument("--generated-split", choices=("train", "validation", "test", "all"),
                   help="split of a labelled generated set (default: all; the --reference-split when --generated "
                        "is the --reference set itself)")
    p.add_argument("--nll", help="CSV with columns file,nll: each generated clip's negative log-likelihood")
    p.add_argument("--select", default="all", choices=("all", "most-likely", "band"),
                   help="which generated clips to score (needs --nll unless 'all'): 'most-likely' keeps the --n "
                        "lowest-NLL clips; 'band' is s4's protocol (a random half, minus its 40%% least and 5%% "
                        "most likely clips)")
    p.add_argument("--n", type=POSITIVE_INT, help="number of clips for --select most-likely")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="clips per classifier batch (default: 64)")
    p.add_argument("--allow-few-clips", action="store_true",
                   help="score sets with no more clips than the classifier has features (1024 for resnext29), down "
                        "to 2: their feature covariance is singular, so FID is biased upward and not comparable "
                        "with published numbers")
    add_overwrite_argument(p)
    _add_rate_policy(p)
    add_device_argument(p)
    p.set_defaults(func=cmd_metrics)
    return p


def cmd_metrics(args: argparse.Namespace) -> int:
    from ssm_core.utils.outputs import check_output, json_object_with

    from ssm_core.utils.device import resolve_device

    from audio.classifier import load_classifier
    from audio.datasets import is_labelled_set
    from audio.metrics import evaluate, read_nll_table, select_likelihood_band, select_most_likely

    if args.json:  # checked before the work, not after it
        check_output(args.json, json_object_with(METRICS_REPORT_KEYS), option="--json", overwrite=args.overwrite,
                     inputs=[args.generated, args.reference, args.classifier, args.nll])
    device = resolve_device(args.device)
    classifier = load_classifier(args.classifier, device)
    files = None
    if args.nll:
        table = read_nll_table(args.nll)
        names = sorted(table)
        nll = [table[n] for n in names]
        if args.select == "most-likely":
            if args.n is None:
                raise ValueError("--select most-likely needs --n (how many clips to keep)")
            files = select_most_likely(names, nll, args.n)
        elif args.select == "band":
            files = select_likelihood_band(names, nll)
        else:
            files = names
    elif args.select != "all":
        raise ValueError(f"--select {args.select} needs --nll (each clip's negative log-likelihood)")
    generated_split = args.generated_split
    if generated_split is None:  # a labelled set scored against itself compares like with like (FID ~ 0)
        same = Path(args.generated).resolve() == Path(args.reference).resolve() and is_labelled_set(args.reference)
        generated_split = args.reference_split if same else "all"
        if same:
            log.info(f"notice: --generated and --reference are the same set: scoring its {generated_split!r} "
                     "split against itself (--generated-split to choose another)")
    report = evaluate(args.generated, args.reference, classifier, generated_split=generated_split,
                      reference_split=args.reference_split, generated_files=files, batch_size=args.batch_size,
                      device=device, on_rate_mismatch=args.on_rate_mismatch, allow_few_clips=args.allow_few_clips)
    text = json.dumps(report, indent=2)
    if args.json:  # written before printing, so a failed write leaves no JSON on stdout beside exit status 1
        from ssm_core.train.checkpoint import atomic_write_bytes

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(args.json), (text + "\n").encode())
    print(text)
    return 0


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="plot a grid of clips' spectrograms or waveforms to a PNG file",
                              description="Plot a grid of clips' spectrograms or waveforms to a PNG file.",
                              epilog=EPILOG_PLOT, formatter_class=HelpFormatter)
    p.add_argument("--clips", required=True, help="flat folder of WAVs or a labelled set")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--kind", choices=("spectrogram", "waveform"), default="spectrogram", help="what each panel shows")
    p.add_argument("--n", type=POSITIVE_INT, default=16, help="number of clips (default: 16)")
    p.add_argument("--columns", type=POSITIVE_INT, default=4, help="panels per row")
    p.add_argument("--split", default="all", choices=("train", "validation", "test", "all"),
                   help="split of a labelled set (default: all)")
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_plot)
    return p


def cmd_plot(args: argparse.Namespace) -> int:
    from ssm_core.utils.outputs import check_output
    from ssm_core.utils.plots import is_suite_figure

    from audio.datasets import open_audio_set
    from audio.plots import plot_spectrograms, plot_waveforms

    check_output(args.out, is_suite_figure, inputs=[args.clips], overwrite=args.overwrite)
    dataset = open_audio_set(args.clips, split=args.split, output="waveform", clip_seconds=None, allow_silence=True)
    n = min(args.n, len(dataset))
    waves = [dataset[i][0] for i in range(n)]
    names = [Path(c.relpath).as_posix() for c in dataset.clips[:n]] if hasattr(dataset, "clips") \
        else [p.name for p in dataset.paths[:n]]
    plot = plot_spectrograms if args.kind == "spectrogram" else plot_waveforms
    print(f"wrote {plot(waves, args.out, titles=names, columns=args.columns)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ssm_core.utils.cli import add_common_arguments, add_version_argument, program_name

    parser = argparse.ArgumentParser(prog=program_name("python -m audio", "mamba-audio"), description=DESCRIPTION,
                                     epilog="Run `python -m audio COMMAND --help` for a command's manual.",
                                     formatter_class=HelpFormatter)
    add_version_argument(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_make_digits_parser(subparsers)
    add_fetch_parser(subparsers)
    add_presets_parser(subparsers)
    add_train_parser(subparsers)
    add_generate_parser(subparsers)
    add_train_classifier_parser(subparsers)
    add_metrics_parser(subparsers)
    add_plot_parser(subparsers)
    add_common_arguments(subparsers)
    return parser


def _one_line_notice(message, category, filename, lineno, file=None, line=None) -> str:
    if issubclass(category, AudioNotice):
        return f"notice: {message}\n"
    return f"{category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    from ssm_core.utils.cli import apply_common_arguments, check_device_argument

    args = build_parser().parse_args(argv)
    apply_common_arguments(args)
    warnings.formatwarning = _one_line_notice  # conversions are reported as one line each
    try:
        check_device_argument(args)  # an absent cuda or mps is refused before any work
        return args.func(args)
    except (AudioInputError, ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
