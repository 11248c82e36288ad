"""The main job's stages, their sizes, and the runner that records finished stages so a rerun resumes.

Each stage calls the packages' own command lines in-process (``genomics.cli.main``, ``audio.cli.main``,
``ssm_core.synthetic.runner.main``) with the arguments a user would type, so every tool prints its own progress
bars. ``RUN/stages.json`` records each finished stage with its results and time; a rerun skips those, and a
stage interrupted inside a training run continues that run with ``--resume``.

Layout of RUN::

    stages.json         size, device, finished stages (results, seconds over every invocation, the hardware each ran
                        on), seconds spent so far in stages cut short; what makes a folder a main job run
    .lock               held by the running main job (ssm_core/utils/dirlock.py)
    core/               induction-heads run (engine run directory)
    genomics/apes/      simulated genomes (one FASTA per species)
    genomics/heldout/   test-chromosome pieces of each species, one FASTA per species (never trained on)
    genomics/lm/        pretraining run;  genomics/w<window>/  fine-tuning runs;  genomics/calls_w<window>.tsv
    audio/digits/       spoken digits;  audio/sashimi/  waveform run;  audio/samples/  generated clips
    audio/classifier/   SC09-style classifier;  audio/metrics_*.json, audio/*.png
    report/             report.html, report.md, PNGs, audio/*.wav
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.train.distributed import resolve_device
from ssm_core.utils.device import describe_device
from ssm_core.utils.dirlock import LOCK_NAME, DirectoryLock
from ssm_core.utils.outputs import check_output

SPECIES = ("human", "chimpanzee", "bonobo", "gorilla", "orangutan")
# HyenaDNA's test chromosomes (genomics/splits.py): the held-out FASTA files are cut from these only.
TEST_CHROMOSOMES = ("chr5", "chr7", "chr9", "chr10", "chr11")


class StageError(RuntimeError):
    """A stage's tool failed; the message names the stage and the command."""


@dataclass(frozen=True, kw_only=True)
class CoreSize:
    """Induction heads: a preset of ``python -m ssm_core.synthetic`` (``SyntheticExperiment.PRESETS``) and its run."""
    preset: str
    steps: int | None                # None: the preset's own recipe
    step_prompts: int                # fresh prompts the saved model answers in step mode


@dataclass(frozen=True, kw_only=True)
class GenomicsSize:
    """Simulated genomes, then a model preset of ``genomics.models.PRESETS``: pretrained once, then fine-tuned at
    each window (every classifier keeps the pretrained size), then tested on held-out records and a baseline."""
    genome: str                      # simulate --size
    signal: str | None = None        # simulate --signal (None: the genome size's own default)
    preset: str
    lm_seqlen: int
    lm_warmup_start: int
    lm_steps: int | None
    lm_batch: int | None
    windows: tuple[int, ...]         # fine-tuning windows: a classifier each
    ft_steps: int | None
    ft_batch: int | None
    ft_bases: int | None = None      # bases per fine-tuning step instead: batch = ft_bases // window at each window
    ft_lr: float = 3e-3              # peak learning rate when ft_steps is set (else the preset's recipe)
    ft_chain: bool = True            # each longer window starts from the previous window's classifier, else from the LM
    ft_valid: int
    ft_test: int
    heldout_per_species: int         # records per species in the held-out FASTA files
    heldout_length: int              # bases per held-out record
    baseline_train: int              # training windows of the 6-mer naive-Bayes baseline (per window length)
    # longer test windows with no classifier of their own: the first window's classifier reads each window by window
    # on both strands, as `genomics classify` reads a long record (genomics.classify.read_predictions)
    read_windows: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AudioSize:
    """Spoken digits, a waveform preset of ``WaveformExperiment.PRESETS`` and the clips it generates, scored by a
    classifier preset of ``ClassifierExperiment.PRESETS`` (both in ``audio.train``)."""
    digits_per_class: int
    preset: str
    steps: int | None
    batch: int | None
    crop: int | None
    warmup: int | None = None        # learning-rate warm-up steps (None: the preset's recipe)
    valid: int
    n_clips: int
    clip_seconds: float
    classifier_preset: str | None    # None: the shipped digits classifier (trained on other clips), not trained here
    classifier_epochs: float | None
    digits_seed: int = 0             # make-digits --seed: not 0 with the shipped classifier, which trained on seed 0


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big every stage is: one part per domain. ``None`` leaves the tool's own default (the preset's recipe)."""
    name: str
    purpose: str                     # what numbers at this size can show, for the report
    checkpoint_every: int            # optimiser steps between checkpoints: an interrupted run resumes from the last
    core: CoreSize
    genomics: GenomicsSize
    audio: AudioSize
    # seconds each stage is expected to take, for the ETA (2 CPU cores for quick/default; h100-20min: measured on an H100)
    estimates: tuple[tuple[str, float], ...] = ()


SIZES = {
    # seconds per stage: for the test of the main job
    "quick": Sizes(
        name="quick", purpose="The quick size runs every stage for a few steps to check the pipeline; its models "
        "are not expected to learn, so its numbers sit near chance.", checkpoint_every=3,
        core=CoreSize(preset="tiny", steps=20, step_prompts=2),
        genomics=GenomicsSize(genome="tiny", preset="tiny", lm_seqlen=256, lm_warmup_start=128, lm_steps=6,
                              lm_batch=4, windows=(128, 256), ft_steps=6, ft_batch=4, ft_valid=8, ft_test=20,
                              heldout_per_species=2, heldout_length=600, baseline_train=50, read_windows=(512,)),
        audio=AudioSize(digits_per_class=3, preset="tiny", steps=4, batch=4, crop=512, valid=4, n_clips=3,
                        clip_seconds=0.02, classifier_preset=None, classifier_epochs=None, digits_seed=2),
        estimates=(("core", 15), ("genomics-data", 10), ("genomics-pretrain", 10), ("genomics-finetune", 15),
                   ("genomics-classify", 5), ("audio-data", 5), ("audio-train", 10), ("audio-generate", 5),
                   ("audio-classifier", 10), ("audio-metrics", 10), ("report", 5))),
    # the README's main job on a 2-core CPU: the estimates below (7.6 min) are from a run on 2 free cores that was
    # not recorded in a file; on 2 cores shared with other jobs it took 22.8 min
    # (benchmarks/results/main_job_default_cpu_2cores/stages.json)
    "default": Sizes(
        name="default", purpose="The default size trains each model for minutes on a CPU: enough to see whether "
        "each learns (above chance, accuracy against window length) beside its baseline, far from the papers' "
        "recipes and results (--full).", checkpoint_every=40,
        core=CoreSize(preset="tiny", steps=300, step_prompts=8),
        genomics=GenomicsSize(genome="tiny", preset="tiny", lm_seqlen=1024, lm_warmup_start=256, lm_steps=120,
                              lm_batch=8, windows=(256, 1024, 4096), ft_steps=150, ft_batch=8, ft_valid=32,
                              ft_test=200, heldout_per_species=6, heldout_length=4096, baseline_train=1000),
        audio=AudioSize(digits_per_class=50, preset="tiny", steps=500, batch=8, crop=1024, valid=16, n_clips=32,
                        clip_seconds=0.5, classifier_preset=None, classifier_epochs=None, digits_seed=2),
        estimates=(("core", 20), ("genomics-data", 2), ("genomics-pretrain", 45), ("genomics-finetune", 245),
                   ("genomics-classify", 5), ("audio-data", 5), ("audio-train", 100), ("audio-generate", 12),
                   ("audio-classifier", 10), ("audio-metrics", 8), ("report", 2))),
    # one GPU in a coffee break: the 1.4m DNA model on the small genome's strong signal, where H100 runs of 712-968
    # steps of 131,072 bases from scratch at lr 2e-3 met or beat 6-mer naive Bayes at 1-16 kbp (64.5/91.9/98.6%,
    # benchmarks/results/genomics_apes_device_small_strong_1.4m_mean_*); here 1,000 steps per window at lr 2e-3,
    # every window from the pretrained LM; clips scored by a trained ResNeXt.
    # Measured on one H100 on 2026-12-06 (benchmarks/results/main_job_h100-20min_cuda_H100/: stages.json, report,
    # log; commit 1eef23c, two device calls): the estimates below are its stage times, rounded (14.6 min; about
    # 14.3 min uninterrupted, an estimate: the resumed call redid 71 waveform-model steps, about 20 s).
    # The DNA classifier got 65.9 / 89.7 / 98.8% on 1,024 test windows at 1 / 4 / 16 kbp against 6-mer naive Bayes
    # 64.7 / 89.5 / 99.4%: level at every window by the report's paired test (p = 0.5 / 0.83 / 0.11), not ahead
    # as the size was meant to show. The trained classifier recognises the generated clips as digits (IS 6.63; the
    # run before, of acc2904, 8.66; real test clips 10.03) though they are far from real speech (FID 176, real
    # 4.64). A variant with all 3,000 fine-tuning steps at 1 kbp and the longer windows read 1 kbp at a time
    # (read_windows) was level too, +0.1 to +1.9 points at 1-16 kbp
    # (benchmarks/results/main_job_h100-20min_read_windows_variant_cuda_H100/), so the size stays as measured.
    "h100-20min": Sizes(
        name="h100-20min", purpose="The h100-20min size trains the 1.4m DNA model and the 6.1m waveform model "
        "for minutes on one GPU: made to show the DNA classifier beside the k-mer baseline at windows up to 16 "
        "kbp and generated clips a trained classifier can score, still far from the papers' 200K-step recipes.",
        checkpoint_every=200,
        core=CoreSize(preset="tiny", steps=300, step_prompts=8),
        genomics=GenomicsSize(genome="small", signal="strong", preset="1.4m", lm_seqlen=4096, lm_warmup_start=1024,
                              lm_steps=400, lm_batch=16, windows=(1024, 4096, 16384), ft_steps=1000, ft_batch=None,
                              ft_bases=131072, ft_lr=2e-3, ft_chain=False, ft_valid=64, ft_test=1024, heldout_per_species=20,
                              heldout_length=16384, baseline_train=1024),
        audio=AudioSize(digits_per_class=200, preset="6.1m", steps=1000, batch=16, crop=None, warmup=100, valid=64,
                        n_clips=64, clip_seconds=1.0, classifier_preset="resnext29", classifier_epochs=20),
        estimates=(("core", 30), ("genomics-data", 13), ("genomics-pretrain", 32), ("genomics-finetune", 344),
                   ("genomics-classify", 33), ("audio-data", 19), ("audio-train", 304), ("audio-generate", 14),
                   ("audio-classifier", 70), ("audio-metrics", 16), ("report", 1))),
    # the papers' settings, for a GPU (hours): 7M DNA model up to 2^20-base windows, 6.1M SaShiMi on 2000 digits
    "full": Sizes(
        name="full", purpose="The full size runs the papers' presets and recipes.", checkpoint_every=1000,
        core=CoreSize(preset="paper", steps=None, step_prompts=32),
        genomics=GenomicsSize(genome="full", preset="7m", lm_seqlen=2**16, lm_warmup_start=1024, lm_steps=10_000,
                              lm_batch=8, windows=(1024, 16384, 131072, 1048576), ft_steps=None, ft_batch=None,
                              ft_valid=512, ft_test=2048, heldout_per_species=20, heldout_length=1048576,
                              baseline_train=4096),
        audio=AudioSize(digits_per_class=200, preset="6.1m", steps=None, batch=None, crop=None, valid=0,
                        n_clips=256, clip_seconds=1.0, classifier_preset="resnext29", classifier_epochs=None),
        estimates=(("core", 3600), ("genomics-data", 600), ("genomics-pretrain", 7200),
                   ("genomics-finetune", 36000), ("genomics-classify", 600), ("audio-data", 900),
                   ("audio-train", 72000), ("audio-generate", 600), ("audio-classifier", 3600),
                   ("audio-metrics", 300), ("report", 30))),
}


@dataclass
class Context:
    """What every stage sees: the run directory, the sizes, the device, the earlier stages' results, and whether
    the main job may write over files it did not write (--overwrite)."""
    out: Path
    sizes: Sizes
    device: str
    results: dict
    overwrite: bool = False

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def run_tool(main: Callable, argv: list[str], stage: str) -> None:
    """Run one subcommand in-process, as quiet or verbose as the main job; a non-zero status stops the stage with the
    command in the message."""
    from ssm_core.utils.cli import verbosity_flags

    argv = [*argv, *verbosity_flags()]
    print(f"$ {_program(main)} {' '.join(argv)}", flush=True)
    status = main(argv)
    if status == 130:  # the tool caught Ctrl-C: stop the suite the same way, so it says how to continue
        raise KeyboardInterrupt
    if isinstance(status, int) and status != 0:
        raise StageError(f"stage {stage}: `{_program(main)} {' '.join(argv)}` exited with status {status}")


def _program(main: Callable) -> str:
    return f"python -m {main.__module__.rsplit('.', 1)[0]}"


def run_training(main: Callable, argv: list[str], run: Path, done: str, stage: str,
                 checkpoint_every: int) -> None:
    """An engine run that is skipped once RUN/<done> exists and continued with --resume when interrupted."""
    if (run / done).is_file():
        print(f"{run}: finished earlier (has {done}); reusing it")
        return
    resume = ["--resume"] if (run / "config.json").is_file() else []
    run_tool(main, [*argv, "--checkpoint-every", str(checkpoint_every), *resume], stage)


def _opt(flag: str, value) -> list[str]:
    """``[flag, value]``, or nothing when the size leaves the tool's default."""
    return [] if value is None else [flag, str(value)]


def _warmup(steps: int | None) -> list[str]:
    """A tenth of the run as warm-up (the engine's 100 steps would swallow most of a short one); the tool's own
    default where the size leaves the steps to it."""
    return [] if steps is None else ["--set", f"train.optim.warmup_steps={max(1, steps // 10)}"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# stages


def stage_core(ctx: Context) -> dict:
    """Induction heads with a tiny Mamba, then the saved model answering fresh prompts in step mode."""
    import torch

    from ssm_core import load_model
    from ssm_core.synthetic.data import SyntheticDataset
    from ssm_core.synthetic.runner import main as synthetic

    s, run = ctx.sizes.core, ctx.path("core")
    run_training(synthetic, ["induction", "--out", str(run), "--preset", s.preset, *_opt("--steps", s.steps),
                             "--device", ctx.device],
                 run, "results.json", "core", ctx.sizes.checkpoint_every)
    results = read_json(run / "results.json")
    model = load_model(run).eval()
    vocab = model.config.vocab_size
    data = SyntheticDataset("induction", size=s.step_prompts, seqlen=2 * results["train_len"], vocab=vocab,
                            seed=10_000)
    agree = correct = 0
    with torch.no_grad():
        for i in range(len(data)):
            ids, answer = data[i]["input_ids"], int(data[i]["target"])
            states = model.allocate_states(1)
            for t in range(len(ids)):  # one token at a time: the recurrent inference used for generation
                logits = model.step(ids[t:t + 1], states)
            step_pred = int(logits[0, :vocab].argmax())
            agree += step_pred == int(model(ids[None])[0, -1, :vocab].argmax())
            correct += step_pred == answer
    print(f"step mode agrees with the parallel forward on {agree}/{len(data)} prompts; {correct} correct")
    if agree != len(data):
        raise StageError("stage core: step mode disagreed with the parallel forward")
    return {"accuracy": results["accuracy"], "chance": results["chance"], "train_len": results["train_len"],
            "steps": results["steps"], "step_prompts": len(data), "step_agree": agree, "step_correct": correct}


def stage_genomics_data(ctx: Context) -> dict:
    """Simulate the five genomes, then cut held-out records from their test chromosomes, one FASTA per species."""
    import numpy as np

    from genomics.cli import main as genomics
    from genomics.fasta import open_fasta
    from genomics.tokenizer import decode

    s = ctx.sizes.genomics
    apes, heldout = ctx.path("genomics", "apes"), ctx.path("genomics", "heldout")
    run_tool(genomics, ["simulate", "--out", str(apes), "--size", s.genome, *_opt("--signal", s.signal),
                        "--seed", "0"], "genomics-data")
    heldout.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for species in SPECIES:
        genome = open_fasta(apes / f"{species}.fa", quiet=True)
        chroms = [c for c in TEST_CHROMOSOMES if genome.lengths.get(c, 0) > s.heldout_length]
        if not chroms:
            raise StageError(f"stage genomics-data: {apes / species}.fa has no test chromosome longer than "
                             f"{s.heldout_length} bases")
        lines = []
        for k in range(s.heldout_per_species):
            chrom = chroms[k % len(chroms)]
            start = int(rng.integers(0, genome.lengths[chrom] - s.heldout_length))
            seq = decode(genome.fetch(chrom, start, start + s.heldout_length))
            lines.append(f">{species}_{chrom}_{start}\n{seq}\n")
        (heldout / f"{species}.fa").write_text("".join(lines))
    return {"genome": s.genome, "heldout_records": s.heldout_per_species * len(SPECIES),
            "heldout_length": s.heldout_length}


def stage_genomics_pretrain(ctx: Context) -> dict:
    from genomics.cli import main as genomics

    s, run = ctx.sizes.genomics, ctx.path("genomics", "lm")
    run_training(genomics, ["pretrain", "--fasta-dir", str(ctx.path("genomics", "apes")), "--out", str(run),
                            "--preset", s.preset, "--seqlen", str(s.lm_seqlen),
                            "--warmup-start", str(s.lm_warmup_start), *_opt("--steps", s.lm_steps),
                            *_opt("--batch-size", s.lm_batch), *_warmup(s.lm_steps), "--lr", "3e-3",
                            "--device", ctx.device,
                            "--set", "data.valid_samples=16"],
                 run, "metrics.json", "genomics-pretrain", ctx.sizes.checkpoint_every)
    valid = read_json(run / "metrics.json")["valid"]
    return {"bits_per_base": valid.get("bits_per_base"), "perplexity": valid.get("perplexity")}


def stage_genomics_finetune(ctx: Context) -> dict:
    """One classifier per window length, mean pooling; the first starts from the pretrained LM, each longer
    window's from the previous window's classifier (a batch of a few long windows learns slowly from scratch) unless
    the size says ``ft_chain=False`` (then every window from the LM)."""
    from genomics.cli import main as genomics

    s = ctx.sizes.genomics
    accuracy = {}
    init = ctx.path("genomics", "lm")
    for window in s.windows:
        run = ctx.path("genomics", f"w{window}")
        checkpointing = ["--activation-checkpointing"] if window >= 2**17 else []
        batch = max(1, s.ft_bases // window) if s.ft_bases else s.ft_batch
        run_training(genomics, ["finetune", "--fasta-dir", str(ctx.path("genomics", "apes")), "--out", str(run),
                                "--init", str(init), "--window", str(window), "--pooling", "mean",
                                *_opt("--steps", s.ft_steps), *_opt("--batch-size", batch), *_warmup(s.ft_steps),
                                *(["--lr", str(s.ft_lr)] if s.ft_steps else []), "--valid-samples", str(s.ft_valid),
                                "--test-samples", str(s.ft_test), "--device", ctx.device, *checkpointing],
                     run, "metrics.json", "genomics-finetune", ctx.sizes.checkpoint_every)
        accuracy[str(window)] = read_json(run / "metrics.json")["test_accuracy"]
        if s.ft_chain:
            init = run
    return {"test_accuracy": accuracy}


def stage_genomics_classify(ctx: Context) -> dict:
    """`classify` on the held-out FASTA files with each window's model; accuracy per window; the 6-mer naive-Bayes
    baseline on the same test windows at each length, and per window length how many test windows only Mamba got
    right and how many only the baseline (``paired``: what the report's paired test reads); the longer read windows,
    read by the first window's classifier as `classify` reads a long record."""
    import numpy as np

    from genomics.baselines import KmerNaiveBayes
    from genomics.classify import SpeciesClassifier, read_predictions
    from genomics.cli import main as genomics
    from genomics.datasets import SpeciesWindows

    s = ctx.sizes.genomics
    apes = ctx.path("genomics", "apes")
    files = sorted(str(p) for p in ctx.path("genomics", "heldout").glob("*.fa"))
    heldout, baseline, paired, read, read_samples = {}, {}, {}, {}, {}

    def compare(window: int, classes: list[str], test_x: np.ndarray, test_y: np.ndarray, mamba: np.ndarray) -> None:
        """The baseline, trained at ``window``, on the test windows ``test_x`` beside Mamba's ``mamba`` predictions."""
        train_x, train_y = SpeciesWindows(apes, "train", window, samples=s.baseline_train, seed=0,
                                          classes=classes).arrays()
        nb = KmerNaiveBayes(k=6).fit(train_x, train_y).predict(test_x)
        baseline[str(window)] = float(np.mean(nb == test_y))
        right, nb_right = mamba == test_y, nb == test_y
        paired[str(window)] = {"mamba_only": int(np.sum(right & ~nb_right)),
                               "baseline_only": int(np.sum(nb_right & ~right))}
        print(f"window {window}: 6-mer naive Bayes test accuracy {100 * baseline[str(window)]:.1f}%; right only for "
              f"Mamba on {paired[str(window)]['mamba_only']}, only for naive Bayes on "
              f"{paired[str(window)]['baseline_only']} of {len(test_y)} windows")

    for window in s.windows:
        run = ctx.path("genomics", f"w{window}")
        metrics = read_json(run / "metrics.json")
        test_x, test_y = SpeciesWindows(apes, "test", window, samples=s.ft_test, seed=0,
                                        classes=metrics["classes"]).arrays()
        if not np.array_equal(metrics["test_labels"], test_y):  # the pairing below needs the very same windows
            raise StageError(f"stage genomics-classify: the test windows in {run}/metrics.json are not the "
                             f"baseline's (their labels differ)")
        compare(window, metrics["classes"], test_x, test_y, np.array(metrics["test_predictions"]))
        calls = ctx.path("genomics", f"calls_w{window}.tsv")
        run_tool(genomics, ["classify", "--checkpoint", str(run), "--fasta", *files, "--out", str(calls),
                            "--device", ctx.device], "genomics-classify")
        with open(calls) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        right = sum(Path(r["file"]).name.split(".")[0] == r["predicted"] for r in rows)
        heldout[str(window)] = right / len(rows)
        print(f"window {window}: {right}/{len(rows)} held-out records classified correctly")
    if s.read_windows:
        classifier = SpeciesClassifier(ctx.path("genomics", f"w{s.windows[0]}"), resolve_device(ctx.device))
        for window in s.read_windows:
            test_x, test_y = SpeciesWindows(apes, "test", window, samples=s.ft_test, seed=0,
                                            classes=classifier.classes).arrays()
            predicted = read_predictions(classifier, test_x, f"test windows of {window}")
            compare(window, classifier.classes, test_x, test_y, predicted)
            read[str(window)], read_samples[str(window)] = float(np.mean(predicted == test_y)), len(test_y)
            print(f"window {window}: the {s.windows[0]}-base classifier, window by window, "
                  f"{100 * read[str(window)]:.1f}%")
    return {"heldout_accuracy": heldout, "heldout_records": len(rows), "kmer_baseline_accuracy": baseline,
            "paired": paired, "read_accuracy": read, "read_test_windows": read_samples, "read_by": s.windows[0]}


def stage_audio_data(ctx: Context) -> dict:
    from audio.cli import main as audio

    run_tool(audio, ["make-digits", "--out", str(ctx.path("audio", "digits")), "--per-class",
                     str(ctx.sizes.audio.digits_per_class), "--seed", str(ctx.sizes.audio.digits_seed), "--force"],
             "audio-data")
    return {"clips": 10 * ctx.sizes.audio.digits_per_class}


def stage_audio_train(ctx: Context) -> dict:
    from audio.cli import main as audio

    s, run = ctx.sizes.audio, ctx.path("audio", "sashimi")
    run_training(audio, ["train", "--data", str(ctx.path("audio", "digits")), "--out", str(run),
                         "--preset", s.preset, *_opt("--steps", s.steps), *_opt("--batch-size", s.batch),
                         *_opt("--crop", s.crop),
                         *(["--set", f"train.optim.warmup_steps={s.warmup}"] if s.warmup else []),
                         "--valid-samples", str(s.valid), "--device", ctx.device],
                 run, "metrics.json", "audio-train", ctx.sizes.checkpoint_every)
    summary = read_json(run / "metrics.json")
    return {"valid_bits_per_sample": summary["valid"].get("bits_per_sample"), "steps": summary["steps"],
            "parameters": summary["parameters"]}


def stage_audio_generate(ctx: Context) -> dict:
    from audio.cli import main as audio

    s, samples = ctx.sizes.audio, ctx.path("audio", "samples")
    run_tool(audio, ["generate", "--checkpoint", str(ctx.path("audio", "sashimi")), "--n", str(s.n_clips),
                     "--seconds", str(s.clip_seconds), "--batch-size", str(min(s.n_clips, 64)), "--seed", "0",
                     "--out", str(samples), "--device", ctx.device], "audio-generate")
    with open(samples / "nll.csv") as f:
        nll = [float(r["nll"]) for r in csv.DictReader(f)]
    return {"clips": len(nll), "seconds": s.clip_seconds, "mean_nll": sum(nll) / len(nll)}


def metrics_classifier(ctx: Context) -> str:
    """What `audio metrics --classifier` gets: the run this job trains, or the shipped classifier's name."""
    from audio.classifier import SHIPPED_CLASSIFIER

    return SHIPPED_CLASSIFIER if ctx.sizes.audio.classifier_preset is None else str(ctx.path("audio", "classifier"))


def stage_audio_classifier(ctx: Context) -> dict:
    """The classifier behind the audio metrics and its accuracy on this job's test split: trained here, or the
    shipped one (``classifier_preset`` None), which a tiny classifier trained for minutes on a CPU cannot match."""
    from audio.cli import main as audio

    s, run = ctx.sizes.audio, ctx.path("audio", "classifier")
    if s.classifier_preset is None:
        digits, out = str(ctx.path("audio", "digits")), ctx.path("audio", "classifier_test.json")
        run_tool(audio, ["metrics", "--generated", digits, "--generated-split", "test", "--reference", digits,
                         "--classifier", metrics_classifier(ctx), "--json", str(out), "--allow-few-clips",
                         "--device", ctx.device], "audio-classifier")
        return {"test_accuracy": read_json(out)["generated_accuracy"], "shipped": metrics_classifier(ctx)}
    run_training(audio, ["train-classifier", "--data", str(ctx.path("audio", "digits")), "--out", str(run),
                         "--preset", s.classifier_preset, *_opt("--epochs", s.classifier_epochs),
                         "--batch-size", "16", "--device", ctx.device],
                 run, "metrics.json", "audio-classifier", ctx.sizes.checkpoint_every)
    return {"test_accuracy": read_json(run / "metrics.json")["test_accuracy"]}


def stage_audio_metrics(ctx: Context) -> dict:
    """FID, IS, mIS, AM of the generated clips against the train split, beside the dataset's own train and test
    rows; waveform and spectrogram grids."""
    from audio.cli import main as audio

    digits, samples = (str(ctx.path("audio", n)) for n in ("digits", "samples"))
    cls = metrics_classifier(ctx)
    rows = {}
    for name, generated in (("train", ["--generated", digits, "--generated-split", "train"]),
                            ("test", ["--generated", digits, "--generated-split", "test"]),
                            ("generated", ["--generated", samples])):
        out = ctx.path("audio", f"metrics_{name}.json")
        run_tool(audio, ["metrics", *generated, "--reference", digits, "--classifier", cls, "--json", str(out),
                         "--allow-few-clips", "--device", ctx.device], "audio-metrics")  # fewer clips than features
        rows[name] = read_json(out)
    n = str(min(ctx.sizes.audio.n_clips, 16))
    for kind in ("waveform", "spectrogram"):
        run_tool(audio, ["plot", "--clips", samples, "--kind", kind, "--n", n, "--columns", "4",
                         "--out", str(ctx.path("audio", f"generated_{kind}s.png"))], "audio-metrics")
        run_tool(audio, ["plot", "--clips", digits, "--split", "test", "--kind", kind, "--n", n, "--columns", "4",
                         "--out", str(ctx.path("audio", f"test_{kind}s.png"))], "audio-metrics")
    return {"rows": rows}


def stage_report(ctx: Context) -> dict:
    from suite.report import write_report

    html, md = write_report(ctx)
    print(f"report: {html} and {md}")
    return {"html": str(html.relative_to(ctx.out)), "md": str(md.relative_to(ctx.out))}


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[[Context], dict]


STAGES = (
    Stage("core", "core: induction heads with a tiny Mamba, then step-mode recall", stage_core),
    Stage("genomics-data", "genomics: simulate five great-ape genomes, cut held-out FASTA files",
          stage_genomics_data),
    Stage("genomics-pretrain", "genomics: next-base pretraining", stage_genomics_pretrain),
    Stage("genomics-finetune", "genomics: species fine-tuning at each window length", stage_genomics_finetune),
    Stage("genomics-classify", "genomics: classify the held-out FASTA files", stage_genomics_classify),
    Stage("audio-data", "audio: build the spoken-digits set", stage_audio_data),
    Stage("audio-train", "audio: train the SaShiMi-Mamba waveform model", stage_audio_train),
    Stage("audio-generate", "audio: generate clips", stage_audio_generate),
    Stage("audio-classifier", "audio: train the SC09-style classifier", stage_audio_classifier),
    Stage("audio-metrics", "audio: FID, IS, mIS, AM and clip plots", stage_audio_metrics),
    Stage("report", "report: report.html and report.md", stage_report),
)


# ---------------------------------------------------------------------------------------------------------------
# the runner


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_state(out: Path, sizes: Sizes, device: str) -> dict:
    """RUN/stages.json, or a fresh record; refuses to mix sizes in one run directory."""
    path = out / "stages.json"
    if not path.is_file():
        return {"size": sizes.name, "device": device, "finished": {}}
    try:
        state = json.loads(path.read_text())
        finished = state["finished"]
    except (ValueError, KeyError) as err:
        raise StageError(f"{path}: unreadable stage record ({err}); delete it to start the run over") from None
    if state.get("size") != sizes.name:
        raise StageError(f"{out} holds a run of size {state.get('size')!r}, not {sizes.name!r}: "
                         f"choose another --out or delete {out}")
    if not isinstance(finished, dict):
        raise StageError(f"{path}: 'finished' is not an object; delete the file to start the run over")
    return state


def save_state(out: Path, state: dict) -> None:
    atomic_write_bytes(out / "stages.json", (json.dumps(state, indent=2) + "\n").encode())


def is_suite_run(out: Path) -> bool:
    """An empty folder (but for a lock file), or one holding a main job run (its stages.json)."""
    return out.is_dir() and ((out / "stages.json").is_file() or all(p.name == LOCK_NAME for p in out.iterdir()))


def run_suite(out: str | Path, sizes: Sizes, device: str = "auto", overwrite: bool = False) -> dict:
    """Run every stage not yet finished in ``out``, in order, with banners and an ETA. Returns stages.json.

    ``out`` must be new, empty or a main job run (else OutputRefusedError, unless ``overwrite``); the process
    holds its lock throughout (DirectoryInUseError while another main job runs in it)."""
    try:  # recorded per stage: a resumed run may finish on another machine
        hardware = describe_device(resolve_device(device))
    except RuntimeError as err:  # --device cuda without a GPU
        raise StageError(str(err)) from None
    out = check_output(out, is_suite_run, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out, "main job run"):
        return _run_stages(out, sizes, device, overwrite, hardware)


def _run_stages(out: Path, sizes: Sizes, device: str, overwrite: bool, hardware: str) -> dict:
    state = load_state(out, sizes, device)
    save_state(out, state)  # from the start, so that a run interrupted in its first stage is known as ours
    estimates = dict(sizes.estimates)
    started = time.perf_counter()
    ran_estimate = ran_seconds = 0.0
    for k, stage in enumerate(STAGES, 1):
        if stage.name in state["finished"]:
            print(f"[{k}/{len(STAGES)}] {stage.name}: finished earlier "
                  f"({_clock(state['finished'][stage.name]['seconds'])}), skipped", flush=True)
            continue
        remaining = sum(estimates.get(s.name, 0) for s in STAGES[k - 1:] if s.name not in state["finished"])
        pace = ran_seconds / ran_estimate if ran_estimate else 1.0  # this machine's speed against the estimates
        print(f"\n{'=' * 100}\n[{k}/{len(STAGES)}] {stage.title}\n    elapsed {_clock(time.perf_counter() - started)}"
              f", ETA {_clock(remaining * pace)} for the rest\n{'=' * 100}", flush=True)
        t0 = time.perf_counter()
        ctx = Context(out, sizes, device, {n: f["results"] for n, f in state["finished"].items()}, overwrite)
        # a stage's seconds count every invocation that worked on it, also one cut short (Ctrl-C, an error), so
        # that a resumed run's stage times are what the work cost, and estimates taken from them hold
        earlier = state.setdefault("unfinished_seconds", {})
        try:
            results = stage.run(ctx)
        except BaseException:
            earlier[stage.name] = round(earlier.get(stage.name, 0.0) + time.perf_counter() - t0, 1)
            save_state(out, state)
            raise
        seconds = time.perf_counter() - t0 + earlier.pop(stage.name, 0.0)
        state["finished"][stage.name] = {"results": results, "seconds": round(seconds, 1), "hardware": hardware}
        save_state(out, state)
        ran_seconds += seconds
        ran_estimate += estimates.get(stage.name, seconds)
        print(f"[{k}/{len(STAGES)}] {stage.name} done in {_clock(seconds)}", flush=True)
    print(f"\nall {len(STAGES)} stages finished; this invocation took {_clock(time.perf_counter() - started)}; "
          f"report: {out / 'report' / 'report.html'}")
    return state
