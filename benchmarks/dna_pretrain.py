"""Pretrain the DNA backbone that ships with the suite (ssm_core/pretrained/dna-tiny), on CPU.

    python benchmarks/dna_pretrain.py                 # fetch the genomes, pretrain, write the results
    python benchmarks/dna_pretrain.py --ship          # ... and write ssm_core/pretrained/dna-tiny (bf16)

The genomes are those of benchmarks/dna_pretrain_genomes.json (bacteria from Debian example packages, every
strain and licence listed there), obtained as benchmarks/genomics_real.py obtains its genomes (`apt-get download`,
`dpkg-deb -x`, into benchmarks/.cache/dna_pretrain/). None of them is a genome a benchmark tests on, so
fine-tuning on the genomes of benchmarks/genomics_real.py measures the backbone on DNA it never saw.

Pretraining is `genomics pretrain --fasta-dir` (next-base prediction, reverse-complement augmentation on, the
genomes drawn in turn, each split into train/valid/test blocks) with the tiny preset for 800 steps of 16 x 1024
bases (about 20 minutes on 2 shared cores; --minutes stops it earlier on a slower machine). Results:
benchmarks/results/dna_pretrain_tiny_<device>.json and the run's metrics.csv as ..._training_log.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # genomics_real's genome preparation

from genomics_real import genomics, prepare_genomes  # noqa: E402

MANIFEST = HERE / "dna_pretrain_genomes.json"
CACHE = HERE / ".cache" / "dna_pretrain"
RESULTS = HERE / "results"
SHIP_TO = HERE.parent / "ssm_core" / "pretrained" / "dna-tiny"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0, help="pretraining time budget, a guard (default: 25)")
    parser.add_argument("--steps", type=int, default=800,
                        help="steps of the schedule, about 20 minutes on 2 busy cores (default: 800)")
    parser.add_argument("--seqlen", type=int, default=1024, help="training sequence length (default: 1024)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    parser.add_argument("--runs", type=Path, default=CACHE / "runs", help="where the run goes")
    parser.add_argument("--ship", action="store_true", help=f"write the backbone to {SHIP_TO}")
    args = parser.parse_args(argv)

    import torch

    from ssm_core.models import from_pretrained, read_model_info

    manifest = json.loads(MANIFEST.read_text())
    genomes = prepare_genomes({g["class"]: (g["package"], g["path"]) for g in manifest["genomes"]}, CACHE)
    run = args.runs / "pretrain_tiny"
    if run.exists():
        shutil.rmtree(run)  # a fresh run each time: the time budget is part of the recipe
    started = time.time()
    genomics("pretrain", "--fasta-dir", genomes, "--out", run, "--preset", "tiny", "--seqlen", args.seqlen,
             "--steps", args.steps, "--batch-size", args.batch_size, "--lr", args.lr, "--device", "cpu",
             "--set", f"train.time_limit_min={args.minutes}", "--set", "train.eval_every=200",
             "--set", "data.valid_samples=64")
    seconds = time.time() - started
    summary = json.loads((run / "metrics.json").read_text())
    result = {"device": f"cpu_{os.cpu_count()}cores_{platform.machine()}", "preset": "tiny",
              "genomes": [g["class"] for g in manifest["genomes"]], "seqlen": args.seqlen,
              "batch_size": args.batch_size, "lr": args.lr, "time_limit_min": args.minutes,
              "train_seconds": round(seconds, 1), "summary": summary}
    if args.ship:
        model = from_pretrained(run)
        info = dataclasses.replace(
            read_model_info(run), preset="tiny",
            trained_on="bacterial genomes from Debian example packages (E. coli 536, K. pneumoniae HS11286 and "
                       "NTUH-K2044, S. suis SC84; benchmarks/dna_pretrain_genomes.json), next-base prediction with "
                       "reverse-complement augmentation, none of them a genome a benchmark tests on",
            usage="python -m genomics finetune --fasta-dir data/species --out runs/species  # --init dna-tiny "
                  "is the default")
        model.save_pretrained(SHIP_TO, info, dtype=torch.bfloat16)
        print(f"shipped to {SHIP_TO}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"dna_pretrain_tiny_{result['device']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run / "metrics.csv", path.with_name(path.stem + "_training_log.csv"))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
