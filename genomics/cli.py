"""``python -m genomics``: the genomics command line (one function per subcommand).

Subcommands here: ``simulate``, ``fetch``, ``presets``, ``pretrain``, ``finetune``, ``classify``, ``embed``
and ``plot-lengths``. Each has an ``add_<name>_parser(subparsers)`` function that
declares its arguments and a ``cmd_<name>(args) -> int`` function that runs it; a new subcommand adds one of
each and registers it in :func:`build_parser`. Every subcommand takes ``--quiet``/``--verbose``; those that run a
model take ``--device`` (``ssm_core.utils.cli.add_device_argument``, resolved by :func:`resolve_device`). Bad input
ends with ``error: <message>`` on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from genomics.errors import GenomicsInputError
from ssm_core.utils.cli import HelpFormatter, add_device_argument, add_overwrite_argument
from ssm_core.utils.ranges import POSITIVE_INT, SEED

log = logging.getLogger(__name__)

DESCRIPTION = """\
Byte-level DNA language models with Mamba: simulated and real genomes, pretraining by next-base
prediction, species classification from 1 kbp to 1 Mbp windows.

A species data set is a directory with one FASTA file per class (.fa/.fasta/.fna, plain, .gz (bgzip) or
.bgz); the file name without its FASTA and compression extensions is the class name (Homo_sapiens.fa.gz ->
Homo_sapiens, E.coli.fa -> E.coli, bonobo.bgz -> bonobo). FASTA files are read at random positions through a
.fai index, built next to the file on first use."""

EPILOG = """\
examples:
  python -m genomics simulate --out data/apes --size tiny        # five simulated great-ape genomes
  python -m genomics fetch great_apes --dest data/real_apes       # the real ones (needs the network)
  python -m genomics pretrain --fasta-dir data/apes --out runs/lm --preset tiny --seqlen 1024 --steps 200
  python -m genomics finetune --fasta-dir data/apes --out runs/w4k --init runs/lm --window 4096
  python -m genomics classify --checkpoint runs/w4k --fasta reads.fa --out results.tsv
  samtools fasta x.bam | python -m genomics classify --checkpoint runs/w4k --fasta - --out results.tsv
  python -m genomics embed --checkpoint runs/w4k --fasta reads.fq.gz --out embeddings.npz
  python -m genomics plot-lengths runs/w1k runs/w4k runs/w16k --out accuracy_vs_length.png
  python -m genomics <command> --help                             # each command's manual
"""

EPILOG_SIMULATE = """\
examples:
  python -m genomics simulate --out data/apes                     # small: 30 Mbp per species, seconds
  python -m genomics simulate --out /tmp/apes --size tiny --seed 1  # 2 Mbp per species, for tests
  python -m genomics simulate --out data/apes_full --size full    # 300 Mbp per species, for the GPU

Writes OUT/human.fa, OUT/chimpanzee.fa, OUT/bonobo.fa, OUT/gorilla.fa, OUT/orangutan.fa: an ancestral
genome (order-3 Markov chain with human-like GC and CpG depletion, interspersed and tandem repeats)
evolved along the great-ape tree (human-chimpanzee 1.2 %, chimpanzee-bonobo 0.4 %, gorilla 1.6 %,
orangutan 3 % divergence; substitutions, small indels, lineage-specific repeat insertions), with
assembly gaps (N-runs) and soft-masked repeats. Chromosomes are named chr1, chr2A, chr2B ... chrX
(human: chr2), so HyenaDNA's chromosome split applies. The same seed gives the same files.
See genomics/simulate.py for the full model.
"""

EPILOG_FETCH = """\
examples:
  python -m genomics fetch hg38 --dest data/hg38                  # hg38.ml.fa + human-sequences.bed
  python -m genomics fetch great_apes --dest data/real_apes       # <species>.fa.bgz, a --fasta-dir
  python -m genomics fetch great_apes --dest data/real_apes --only bonobo gorilla
  python -m genomics fetch path/to/manifest.json --dest data/x

MANIFEST is a name in data_manifests/ (hg38, great_apes) or a JSON file (format: data_manifests/README.md).
Downloads resume when interrupted and are checked against the manifest's SHA-256 (or MD5) and size, or,
where none is pinned, against the MD5 the publisher lists (the manifest's checksums_url: UCSC's md5sum.txt for
the great-ape assemblies): a corrupt download is deleted and fetched again, never used. The SHA-256 of every file
no pinned SHA-256 verified is printed so it can be pinned. Files are then decompressed or recompressed as BGZF
and indexed.
"""


def resolve_device(name: str):
    """``--device`` value -> torch.device (``cuda`` without a GPU is an error, not a silent fallback)."""
    from ssm_core.train.distributed import resolve_device as resolve

    try:
        return resolve(name)
    except (ValueError, RuntimeError) as exc:
        raise GenomicsInputError(str(exc)) from None


def add_simulate_parser(subparsers) -> argparse.ArgumentParser:
    from genomics.simulate import SIGNALS

    p = subparsers.add_parser("simulate", help="write the simulated great-apes benchmark (5 FASTA files)",
                              description="Simulate five great-ape genomes evolved from one ancestor.",
                              epilog=EPILOG_SIMULATE, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--size", choices=("tiny", "small", "full"), default="small",
                   help="genome size per species: tiny 2 Mbp, small 30 Mbp, full 300 Mbp (default: small)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default: 0)")
    p.add_argument("--signal", choices=SIGNALS,
                   help="how much sets the species apart: realistic lineage-specific insertions (about one per 30 "
                        "kbp on the human branch), or strong: 20 times as dense and more diverged, learnable in "
                        "minutes (default: strong for tiny, realistic for small and full)")
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_simulate)
    return p


def cmd_simulate(args: argparse.Namespace) -> int:
    import time

    from genomics.simulate import simulate

    started = time.perf_counter()
    paths = simulate(args.out, args.size, args.seed, signal=args.signal, overwrite=args.overwrite)
    for path in paths:
        print(path)
    log.info(f"simulated {len(paths)} species ({args.size}, {args.signal or 'default'} signal, seed {args.seed}) "
             f"in {time.perf_counter() - started:.1f} s")
    return 0


def add_fetch_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fetch", help="download, verify and index a real data set from its manifest",
                              description="Download the files of a data manifest, verify their checksums, "
                                          "decompress or recompress them and build their indexes.",
                              epilog=EPILOG_FETCH, formatter_class=HelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="manifest name (hg38, great_apes) or path to a JSON file")
    p.add_argument("--dest", default="data", metavar="DIR", help="destination directory (default: data)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="fetch only these files (e.g. bonobo gorilla)")
    p.add_argument("--keep-downloads", action="store_true",
                   help="keep the original downloads in DIR/.downloads after post-processing")
    p.add_argument("--force", action="store_true", help="fetch again even files already fetched")
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_fetch)
    return p


def cmd_fetch(args: argparse.Namespace) -> int:
    from genomics.manifests import fetch_manifest

    for path in fetch_manifest(args.manifest, args.dest, only=args.only, keep_downloads=args.keep_downloads,
                               force=args.force, overwrite=args.overwrite):
        print(path)
    return 0

EPILOG_PRETRAIN = """\
examples:
  python -m genomics pretrain --fasta hg38.ml.fa --bed human-sequences.bed --out runs/hg38 --preset 7m \\
      --seqlen 1048576 --warmup-start 1024 --steps 20000 --batch-size 8 --activation-checkpointing
  python -m genomics pretrain --fasta-dir data/apes --out runs/apes_lm --preset tiny --seqlen 1024 --steps 300

Next-base prediction: cross-entropy over A/C/G/T at every position whose target is a base (PAD beyond contig
ends and N runs are never scored). With --bed (chrom, start, end, split; HyenaDNA's sequences.bed) windows come
from its train/valid intervals; without it the genome is split by chromosome (HyenaDNA's chromosomes), contig
or coordinate blocks, and the plan is printed. --fasta-dir pretrains on every genome of a directory in turn.

Sequence-length warmup: from --warmup-start bases the training length doubles stage by stage up to --seqlen;
the first --warmup-fraction of the steps is shared equally by the shorter stages, the rest trains at --seqlen.
Bases per step stay constant (a short stage cuts each --seqlen window into consecutive shorter sequences).

The run directory OUT holds config.json, checkpoints/, model.safetensors + model.json (what `finetune --init`
loads), metrics.csv (train loss, valid/bits_per_base, valid/perplexity), metrics.json and plots/.
Any config value can be set with --set, e.g. --set train.eval_every=500 --set data.valid_samples=512.
"""

EPILOG_FINETUNE = """\
examples:
  python -m genomics finetune --fasta-dir data/apes --out runs/apes_w1k --init runs/apes_lm --window 1024
  python -m genomics finetune --fasta-dir genomes/ --out runs/species   # on a CPU: dna-tiny, the cpu recipe
  python -m genomics finetune --fasta-dir data/real_apes --out runs/w1m --preset 7m --window 1048576 \\
      --activation-checkpointing        # the paper's setting: 10 x 1024 steps at batch 64, accumulated

DIR holds one FASTA per class (the file name without its FASTA and compression extensions is the class name:
Homo_sapiens.fa.gz -> Homo_sapiens, E.coli.fa -> E.coli); other files are skipped and named. Each example draws a
class uniformly, then a chromosome of its split, then a window. Genomes named like UCSC assemblies are split by
chromosome (1, 3, 12, 13 validate; 5, 7, 9, 10, 11 test; the rest train), others by contig or by disjoint
coordinate blocks; the plan per class is printed. On a GPU the defaults follow the paper: 10 epochs of 1024 steps
at batch 64 (validation after each epoch), gradient accumulation when batch x window exceeds --max-batch-tokens. On
a CPU they are the cpu recipe (--recipe): 400 steps of 16 windows at lr 3e-3, mean pooling, at most 10 minutes.
With it, a 1,024-bp model is the budget's best for longer records too (`classify` reads them window by window):
on six real genomes it met or beat 6-mer naive Bayes at 1, 4 and 16 kbp after 2.7 minutes on 2 cores.

OUT gets the usual run files plus metrics.json (test_accuracy, per-class accuracy, confusion matrix, classes,
window) and confusion_matrix.png. Compare runs at several windows with `python -m genomics plot-lengths`.
"""

EPILOG_CLASSIFY = """\
examples:
  python -m genomics classify --checkpoint runs/apes_w4k --fasta contigs.fa --out results.tsv
  python -m genomics classify --checkpoint runs/apes_w4k --fasta a.fa b.fq.gz --per-window --window 8192
  samtools fasta reads.bam | python -m genomics classify --checkpoint runs/apes_w4k --fasta - > results.tsv
  python -m genomics classify --checkpoint runs/apes_w4k --fasta <(zcat reads.fq.gz) --strand forward --json

Input: FASTA or FASTQ (recognised from the content, whatever the name), plain, gzip or bgzip, from files, pipes
(process substitution) or stdin (`-`), read in one pass: nothing is indexed, nothing written beside the input.

Output (TSV, to --out or stdout): a header `file record length predicted p_<class>... strand p_forward p_reverse
flag`, then one row per record in input order. --per-window writes one row per window instead, with `start` and
`end` (0-based, end exclusive) after `length`. --json writes the same as JSON.

Each record is read in windows of --window bases (default: the fine-tuning window), consecutive from its start,
the last one aligned to its end; a shorter record is read whole. The record's class probabilities are the
renormalised mean of its windows' log-probabilities. Windows of consecutive records share forward passes; long
ones are read in chunks, so memory grows with the longest record only (about 5 bytes per base while it is
parsed: 5 MB for a 1 Mbp read, 1.2 GB for a 250 Mbp chromosome), never with the number of records.

Strands (--strand both, the default): each window is also read reverse-complemented and its probabilities are the
mean of both strands'. `strand` names the strand that alone gave the predicted class the higher probability;
`p_forward` and `p_reverse` are each strand's own probability of it (nan with --strand forward).

Records that say nothing are flagged, not classified: fewer than --min-bases A/C/G/T bases gives flag `no_bases`
(none: all N) or `short`, an empty predicted and nan probabilities, and a warning naming them on stderr. A window of
a classified record that is all N is flagged `no_bases` (with --per-window) and left out of the record's mean.

Bad input stops the command with `error: ...` naming the file and record, and nothing is written: a missing,
empty or non-FASTA/FASTQ file, a truncated FASTQ record, a record with no sequence, a character that is not a
nucleotide code. IUPAC ambiguity codes (R, Y, K, ...) are read as N by default and refused with --iupac error.
"""

EPILOG_EMBED = """\
examples:
  python -m genomics embed --checkpoint runs/apes_w4k --fasta reads.fq.gz --out reads.npz
  zcat reads.fq.gz | python -m genomics embed --checkpoint runs/apes_lm --fasta - --out reads.npz --per-window

OUT.npz (numpy.load(OUT, allow_pickle=False)): `records` (names, input order), `lengths`, `embeddings` (float32,
records x d_model); with --per-window also `window_embeddings`, `window_record` (row index into records) and
`window_start` (0-based). Windows as in `classify` (default: the fine-tuning window; 1024 for a pretraining run).

A window's embedding is the input of the classifier's head: the final hidden states pooled as the classifier pools
them (its --pooling), standardised with its running statistics when it has them, so head(embedding) gives the
window's logits; a pretraining run's final hidden states are mean-pooled. A record's embedding is the mean of its
windows'. Records are read as given (forward strand). Input as for `classify` (FASTA/FASTQ, gzip, a pipe or -);
records that say nothing (all N, or fewer bases than classify's default --min-bases) keep their rows and
are named in a warning.
"""

EPILOG_PLOT_LENGTHS = """\
example:
  python -m genomics plot-lengths runs/w1k runs/w4k runs/w16k runs/w64k --out accuracy_vs_length.png

Reads each RUN/metrics.json written by `genomics finetune`, prints a table (run, model, window, test accuracy)
and plots test accuracy against window length (log scale), one line per model (preset, pretrained or not).
"""


def add_presets_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("presets", help="list the model presets and their parameter counts",
                              description="List the model presets (tiny, 1.4m, 7m) with depth, width and "
                                          "parameter count of the language model.")
    p.set_defaults(func=cmd_presets)
    return p


def cmd_presets(args: argparse.Namespace) -> int:
    from genomics.models import preset_table

    print(preset_table())
    return 0


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    from genomics.models import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="model size: tiny (CPU tests), 1.4m (12 x 128), 7m (16 x 256) (default: tiny; "
                        "`python -m genomics presets` lists parameter counts)")
    p.add_argument("--iupac", choices=("n", "error"), default=None,
                   help="IUPAC ambiguity codes: read as N (default) or refuse them")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (needed for windows near 2^20)")


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    from ssm_core.train.config import add_engine_args
    from ssm_core.train.curriculum import WARMUP_FRACTION

    from genomics.pretrain import PretrainExperiment

    p = subparsers.add_parser("pretrain", help="next-base pretraining on a genome (or a directory of genomes)",
                              description="Pretrain a DNA Mamba by next-base prediction, with sequence-length "
                                          "warmup, reporting validation perplexity and bits per base.",
                              epilog=EPILOG_PRETRAIN, formatter_class=HelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--fasta", metavar="FILE", help="genome FASTA (plain, bgzip)")
    source.add_argument("--fasta-dir", metavar="DIR", help="directory of genome FASTA files")
    p.add_argument("--bed", metavar="BED", help="intervals with a split column (chrom start end split), with --fasta")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (must be new unless --resume)")
    p.add_argument("--seqlen", type=POSITIVE_INT, help="training sequence length (default: 1024)")
    p.add_argument("--warmup-start", type=POSITIVE_INT,
                   help="first length of the sequence-length warmup (default: 1024; >= seqlen disables it)")
    p.add_argument("--warmup-fraction", type=WARMUP_FRACTION,
                   help="share of the steps spent warming up, in [0, 1) (default: 0.5)")
    p.add_argument("--decompress-cache", metavar="DIR", help="where to decompress plain-gzip FASTA files")
    _add_model_arguments(p)
    add_engine_args(p, PretrainExperiment().train)
    p.set_defaults(func=cmd_pretrain)
    return p


def cmd_pretrain(args: argparse.Namespace) -> int:
    from genomics.pretrain import PretrainExperiment, run_pretrain

    exp = PretrainExperiment.from_preset(args.preset) if args.preset else PretrainExperiment()
    flags = {"fasta": args.fasta, "fasta_dir": args.fasta_dir, "bed": args.bed, "seqlen": args.seqlen,
             "warmup_start": args.warmup_start, "warmup_fraction": args.warmup_fraction, "iupac": args.iupac,
             "decompress_cache": args.decompress_cache}
    exp = _resolve(args, exp, flags)
    run_pretrain(exp, args.out, resume=args.resume)
    return 0


def _resolve(args: argparse.Namespace, exp, data_flags: dict):
    """Engine flags, --config and --set applied to the experiment, then this command's own flags on top."""
    from dataclasses import replace

    from ssm_core.train import resolve_config

    try:
        exp = resolve_config(args, exp)
    except ValueError as err:
        raise GenomicsInputError(str(err)) from None
    data = replace(exp.data, **{k: v for k, v in data_flags.items() if v is not None})
    train = replace(exp.train, activation_checkpointing=True) if args.activation_checkpointing else exp.train
    return replace(exp, data=data, train=train)


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    from ssm_core.train.config import add_engine_args

    from genomics.finetune import RECIPES, FinetuneExperiment
    from genomics.models import SHIPPED_BACKBONE

    p = subparsers.add_parser("finetune", help="species classification: fine-tune on one FASTA per class",
                              description="Fine-tune a DNA Mamba (pretrained or from scratch) to tell species "
                                          "apart from windows of their genomes; test accuracy and confusion "
                                          "matrix on held-out chromosomes.",
                              epilog=EPILOG_FINETUNE, formatter_class=HelpFormatter)
    p.add_argument("--fasta-dir", required=True, metavar="DIR", help="one FASTA file per class")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (must be new unless --resume)")
    p.add_argument("--init", metavar="RUN_OR_CKPT",
                   help="initialise the backbone from a pretraining run (its model size is used; --preset ignored), "
                        "or the whole classifier from a fine-tuning run of the same classes (e.g. a shorter "
                        "window's run, to continue at a longer window); 'none' trains from scratch. Default: "
                        f"{SHIPPED_BACKBONE}, the backbone shipped with the suite (pretrained on bacterial genomes; "
                        "see its card in ssm_core/pretrained/), unless --preset is given (then from scratch)")
    p.add_argument("--window", type=POSITIVE_INT, help="window length in bases (default: 1024)")
    p.add_argument("--pooling", choices=("last", "mean"),
                   help="classify from the last position (causal) or the mean of all positions (default: the "
                        "recipe's)")
    p.add_argument("--recipe", choices=("auto", *RECIPES), default="auto",
                   help="steps, batch, learning rate and pooling for the machine's budget: "
                        + "; ".join(f"{name}: {r.note}" for name, r in RECIPES.items())
                        + " (default auto: cpu when training on a CPU, else gpu); flags and --set override it")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise the pooled features with running statistics before the head (default; "
                        "without it a mean over a long window barely varies between windows and the head learns "
                        "slowly); --no-standardize for a plain linear head")
    p.add_argument("--test-samples", type=POSITIVE_INT, help="test windows classified at the end (default 2048)")
    p.add_argument("--valid-samples", type=POSITIVE_INT, help="validation windows (default 512)")
    p.add_argument("--max-batch-tokens", type=POSITIVE_INT,
                   help="bases per micro-batch before gradient accumulation kicks in (default 2^20)")
    p.add_argument("--split", choices=("auto", "chromosome", "contig", "block"), default=None,
                   help="how genomes are split into train/valid/test (default auto: chromosome, contig, block)")
    p.add_argument("--decompress-cache", metavar="DIR", help="where to decompress plain-gzip FASTA files")
    _add_model_arguments(p)
    add_engine_args(p, FinetuneExperiment().train, "the gpu recipe; see --recipe")
    p.set_defaults(func=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import copy

    import torch

    from genomics.finetune import RECIPES, FinetuneExperiment, run_finetune
    from genomics.models import SHIPPED_BACKBONE

    on_gpu = (args.device or "auto") in ("auto", "cuda") and torch.cuda.is_available()
    recipe = RECIPES[args.recipe if args.recipe != "auto" else "gpu" if on_gpu else "cpu"]
    if args.init is None:  # a preset names the model to build; without one, start from the shipped backbone
        args.init = None if args.preset else SHIPPED_BACKBONE
    elif args.init == "none":
        args.init = None
    exp = FinetuneExperiment.from_preset(args.preset, init=args.init) if args.preset else FinetuneExperiment(
        init=args.init)
    exp.train = copy.deepcopy(recipe.train)
    exp.model = replace(exp.model, pooling=args.pooling or recipe.pooling, standardize_pooled=args.standardize)
    if args.init:
        exp.preset = "pretrained"
    flags = {"fasta_dir": args.fasta_dir, "window": args.window, "iupac": args.iupac,
             "test_samples": args.test_samples, "valid_samples": args.valid_samples,
             "max_batch_tokens": args.max_batch_tokens, "strategy": args.split,
             "decompress_cache": args.decompress_cache}
    exp = _resolve(args, exp, flags)
    run_finetune(exp, args.out, resume=args.resume)
    return 0


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    from genomics.classify import MIN_BASES, STRANDS

    p = subparsers.add_parser("classify", help="predict the species of every record of FASTA files",
                              description="Classify every record (optionally every window) of FASTA files with a "
                                          "fine-tuned model; class probabilities as TSV or JSON.",
                              epilog=EPILOG_CLASSIFY, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a `finetune` run directory, a copy of its model directory (model.safetensors + "
                        "model.json), or one of its checkpoints/step-*.ckpt")
    p.add_argument("--fasta", required=True, nargs="+", metavar="FILE",
                   help="FASTA or FASTQ files (plain, gzip, bgzip; recognised from the content); - reads stdin")
    p.add_argument("--window", type=POSITIVE_INT, help="window length in bases (default: the fine-tuning window)")
    p.add_argument("--out", metavar="FILE",
                   help="write here instead of stdout (its directory is created; written only on success)")
    p.add_argument("--per-window", action="store_true", help="one row per window, with start and end")
    p.add_argument("--strand", choices=STRANDS, default="both",
                   help="both: average each window's probabilities with its reverse complement's (default); "
                        "forward: read the records as given")
    p.add_argument("--min-bases", type=POSITIVE_INT, default=MIN_BASES,
                   help=f"records with fewer A/C/G/T bases are flagged, not classified (default {MIN_BASES})")
    p.add_argument("--json", action="store_true", help="JSON instead of TSV")
    add_overwrite_argument(p)
    p.add_argument("--iupac", choices=("n", "error"), default="n",
                   help="IUPAC ambiguity codes: read as N (default) or refuse them")
    p.add_argument("--batch-tokens", type=POSITIVE_INT,
                   help="bases per forward pass (default 4096 on CPU, 262144 on GPU)")
    p.add_argument("--chunk", type=POSITIVE_INT,
                   help="longest piece of a window read at once; memory scales with it (default 1024 on CPU, "
                        "65536 on GPU)")
    p.add_argument("--bf16", action="store_true",
                   help="matrix products in bfloat16 (float32 accumulation): 1.4x faster on a CPU with "
                        "AVX512-BF16; probabilities move (by 3e-3 for the 7m benchmark model, more where the "
                        "logits are large)")
    add_device_argument(p)
    p.set_defaults(func=cmd_classify)
    return p


def _is_classify_output(path) -> bool:
    """A TSV or JSON file an earlier `classify` wrote (its header line, or its JSON opening)."""
    from ssm_core.utils.outputs import first_line_matches, starts_with

    return (first_line_matches(r"file\trecord\tlength\t(start\tend\t)?predicted(\tp_[^\t]+)+"
                               r"(\tstrand\tp_forward\tp_reverse\tflag)?")(path)
            or starts_with(b'{\n  "classes": [')(path))


def _is_embed_output(path) -> bool:
    """An .npz an earlier `embed` wrote: a zip holding records.npy, lengths.npy and embeddings.npy."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as npz:
            return {"records.npy", "lengths.npy", "embeddings.npy"} <= set(npz.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssm_core.utils.outputs import check_output

    from genomics.classify import SpeciesClassifier, describe_flagged, to_json, to_tsv

    if args.fasta.count("-") > 1:
        raise GenomicsInputError("--fasta: - (stdin) given more than once; it can be read only once")
    if args.out:  # checked before a long classification, not after it
        if Path(args.out).is_dir():
            raise GenomicsInputError(f"--out {args.out}: a directory; give the name of the file to write")
        check_output(args.out, _is_classify_output, inputs=[*args.fasta, args.checkpoint], overwrite=args.overwrite)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    classifier = SpeciesClassifier(args.checkpoint, resolve_device(args.device), window=args.window,
                                   chunk=args.chunk, batch_tokens=args.batch_tokens, iupac=args.iupac,
                                   bf16=args.bf16, strand=args.strand, min_bases=args.min_bases)
    results = []
    for path in args.fasta:
        results += classifier.classify_file(path)
    flagged = [(r.file, r.record, r.flag) for r in results if r.flag]
    if flagged:
        log.warning(f"{describe_flagged(flagged, args.min_bases)}; flagged, not classified")
    text = (to_json if args.json else to_tsv)(results, classifier.classes, per_window=args.per_window)
    if args.out:
        from ssm_core.train.checkpoint import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
        log.info(f"classified {len(results)} records from {len(args.fasta)} file(s) -> {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def add_embed_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("embed", help="embeddings of every record of a FASTA/FASTQ file, as .npz",
                              description="Embed every record (optionally every window) of a FASTA or FASTQ file "
                                          "with a pretraining or fine-tuning run's model: the pooled "
                                          "representation the classifier's head sees.",
                              epilog=EPILOG_EMBED, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a `pretrain` or `finetune` run directory (or one of its checkpoints/step-*.ckpt)")
    p.add_argument("--fasta", required=True, metavar="FILE",
                   help="FASTA or FASTQ file (plain, gzip, bgzip; recognised from the content); - reads stdin")
    p.add_argument("--out", required=True, metavar="OUT.npz",
                   help="the .npz to write (its directory is created; written only on success)")
    p.add_argument("--per-window", action="store_true",
                   help="also window_embeddings, window_record and window_start")
    p.add_argument("--window", type=POSITIVE_INT,
                   help="window length in bases (default: the fine-tuning window; 1024 for a pretraining run)")
    add_overwrite_argument(p)
    add_device_argument(p)
    p.set_defaults(func=cmd_embed)
    return p


def cmd_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genomics.classify import describe_flagged
    from genomics.embed import Embedder
    from ssm_core.train.checkpoint import atomic_write_bytes

    from ssm_core.utils.outputs import check_output

    if Path(args.out).is_dir():  # checked before a long pass, not after it
        raise GenomicsInputError(f"--out {args.out}: a directory; give the name of the .npz file to write")
    check_output(args.out, _is_embed_output, inputs=[args.fasta, args.checkpoint], overwrite=args.overwrite)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    embedder = Embedder(args.checkpoint, resolve_device(args.device), window=args.window)
    result = embedder.embed_file(args.fasta)
    if result.flagged:
        log.warning(f"{describe_flagged([(args.fasta, name, flag) for name, flag in result.flagged])}; "
                    "embedded all the same")
    atomic_write_bytes(args.out, result.npz_bytes(args.per_window))
    log.info(f"embedded {len(result.records)} records ({len(result.window_start)} windows of up to "
             f"{embedder.window} bases, {result.embeddings.shape[1]} dimensions) -> {args.out}")
    return 0


def add_plot_lengths_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot-lengths", help="plot test accuracy against window length across runs",
                              description="Plot the test accuracy of fine-tuning runs against their window "
                                          "length.", epilog=EPILOG_PLOT_LENGTHS,
                              formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="finetune run directories")
    p.add_argument("--out", required=True, metavar="PNG", help="the plot to write")
    p.add_argument("--title", default="species classification: accuracy vs context length")
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_plot_lengths)
    return p


def cmd_plot_lengths(args: argparse.Namespace) -> int:
    from genomics.finetune import plot_lengths
    from ssm_core.utils.outputs import check_output
    from ssm_core.utils.plots import is_suite_figure

    check_output(args.out, is_suite_figure, inputs=[*args.runs, *(f"{run}/metrics.json" for run in args.runs)],
                 overwrite=args.overwrite)
    rows = plot_lengths(args.runs, args.out, args.title)
    print(f"{'run':<40} {'model':<20} {'window':>9} {'test accuracy':>13}")
    for r in rows:
        print(f"{r['run']:<40} {r['label']:<20} {r['window']:>9,} {100 * r['test_accuracy']:>12.1f}%")
    log.info(f"plot: {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ssm_core.utils.cli import add_common_arguments, add_version_argument, program_name

    parser = argparse.ArgumentParser(prog=program_name("python -m genomics", "mamba-genomics"),
                                     description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    add_version_argument(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_simulate_parser(subparsers)
    add_fetch_parser(subparsers)
    add_presets_parser(subparsers)
    add_pretrain_parser(subparsers)
    add_finetune_parser(subparsers)
    add_classify_parser(subparsers)
    add_embed_parser(subparsers)
    add_plot_lengths_parser(subparsers)
    add_common_arguments(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ssm_core.train.checkpoint import CheckpointError
    from ssm_core.utils.download import ChecksumError
    from ssm_core.utils.fetch_paths import UnsafePathError

    from ssm_core.utils.cli import DeviceUnavailableError, apply_common_arguments, check_device_argument

    args = build_parser().parse_args(argv)
    apply_common_arguments(args)
    try:
        check_device_argument(args)  # an absent cuda or mps is refused before any work
        return args.func(args)
    except SystemExit as stop:  # the training engine's refusals (used RUN, diverged loss) print their own message
        return stop.code if isinstance(stop.code, int) else 1
    except (GenomicsInputError, DeviceUnavailableError, UnsafePathError, ChecksumError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # unreadable/unwritable paths, network failures: the message names the path or URL
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
