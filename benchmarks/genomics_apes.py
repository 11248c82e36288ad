"""Simulated great apes on a GPU: species accuracy against window length, beside k-mer naive Bayes and the paper.

    python benchmarks/genomics_apes.py --device cuda                    # the device table (about 6 min on an H100)
    python benchmarks/genomics_apes.py --quick                          # a CPU smoke run of the same path
    python benchmarks/genomics_apes.py --device cuda --set pretrain_steps=400   # pretrained first, as the paper

It simulates the five species (`genomics simulate`), fine-tunes one model per window length from scratch with
`genomics finetune` (the same number of bases per step at every length: the batch is `finetune_tokens // window`),
and scores 4-mer and 6-mer naive Bayes on the very test windows the model was tested on (the fine-tuning and
baseline code is `genomics_real.species_check`, shared with the real-genome check). The table goes to
`<results-dir>/genomics_apes_<mode>_<preset>_<device>.{md,json}`, rewritten after each window length, with the
Mamba paper's real great-apes figures beside it for reference (they are real genomes, not this simulation).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genomics_real import (CACHE, RESULTS, Settings, device_name, genomics, naive_bayes, plot_species,
                           recipe_accuracy, species_check, with_overrides)

from genomics.simulate import SIGNALS, default_signal

# The Mamba paper's Figure 6 (real great apes, 5 classes), read off its plot: test accuracy at 2^10 and 2^20.
PAPER = {"HyenaDNA 1.4M": {1024: 0.28, 1048576: 0.55}, "Mamba 7M": {1024: 0.30, 1048576: 0.81}}

DEVICE = Settings(preset="1.4m", pretrain_seqlen=4096, pretrain_steps=0, pretrain_batch=16,
                  windows=(2**10, 2**12, 2**14, 2**16), finetune_steps=300, finetune_batch=0, test_samples=1024,
                  nb_train_windows=1024, markov_orders=(), lr=2e-3, finetune_tokens=2**17)
QUICK = Settings(preset="tiny", pretrain_seqlen=0, pretrain_steps=0, pretrain_batch=0, windows=(256, 1024),
                 finetune_steps=20, finetune_batch=0, test_samples=100, nb_train_windows=200, markov_orders=(),
                 lr=3e-3, finetune_tokens=2**12)


def write_tables(result: dict, stem: str, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["settings"]
    init = (f"pretrained for {s['pretrain_steps']} steps of {s['pretrain_batch']} windows of "
            f"{s['pretrain_seqlen']:,} bp on the five genomes" if s["pretrain_steps"] else "from scratch")
    if s.get("chain"):
        init = f"{init} at the first window, each longer window fine-tuned from the previous window's classifier"
    lines = [f"# Simulated great apes ({result['genome_size']}, {result.get('signal', 'realistic')} signal): "
             f"{result['mode']} run on {result['device']}", "",
             f"Settings: preset {s['preset']} {init}, {s.get('pooling', 'last')} pooling"
             f"{'' if s.get('standardize') else ' (pooled features not standardised)'}; up to "
             f"{s['finetune_steps']} fine-tuning steps (warm-up {s.get('warmup_steps', 100)}"
             + (f", at most {s['time_limit_min']} min per window" if s.get("time_limit_min") else "") + ") of "
             f"{s['finetune_tokens']:,} bases (batch = bases / window); {s['test_samples']} test windows from the "
             f"held-out chromosomes; naive Bayes trained on {s['nb_train_windows']} windows of the training "
             f"chromosomes. Wall time {result['minutes']:.1f} min.", "",
             "## Test accuracy (5 species, chance 20%)", "",
             "| window | batch | steps | Mamba | 4-mer naive Bayes | 6-mer naive Bayes | fine-tuning min |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["species"]:
        if r.get("read_by"):
            lines.append(f"| {r['window']:,} | – | – | {100 * r['mamba']:.1f}% (the {r['read_by']:,} bp model, "
                         f"window by window) | {100 * r['nb_k4']:.1f}% | {100 * r['nb_k6']:.1f}% | – |")
            continue
        minutes = f"{r['finetune_minutes']:.1f}" if r["finetune_minutes"] is not None else "(reused)"
        lines.append(f"| {r['window']:,} | {r['batch']} | {r.get('steps', '')} | {100 * r['mamba']:.1f}% | "
                     f"{100 * r['nb_k4']:.1f}% | {100 * r['nb_k6']:.1f}% | {minutes} |")
    lines += ["", "Per-class test accuracy:", "", "| window | " + " | ".join(result["classes"]) + " |",
              "|---:|" + "---:|" * len(result["classes"])]
    for r in (r for r in result["species"] if r["per_class"]):
        lines.append(f"| {r['window']:,} | " + " | ".join(f"{100 * r['per_class'][c]:.0f}%"
                                                      for c in result["classes"]) + " |")
    lines += ["", "For reference, the Mamba paper's real great-apes figures (Figure 6, read off the plot): "
              + "; ".join(f"{name} {100 * v[1024]:.0f}% at 2^10, {100 * v[1048576]:.0f}% at 2^20"
                          for name, v in PAPER.items()) + "."]
    plot_species(result["species"], 1 / len(result["classes"]), "Simulated great apes: accuracy vs window",
                 results / f"{stem}.png")
    lines += ["", f"![accuracy against window length]({stem}.png)"]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"saved {results / stem}.md, .json and .png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run (tiny genome and model, few steps)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--size", choices=("tiny", "small", "full"), default=None,
                        help="simulated genome size (default: small; tiny with --quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a setting, e.g. --set windows=1024,4096 --set finetune_steps=500")
    parser.add_argument("--runs", type=Path, help="where runs go (default benchmarks/.cache/genomics_apes/runs_*)")
    parser.add_argument("--signal", choices=SIGNALS, default=None,
                        help="the simulation's species signal (genomics simulate --signal; default: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables go (default %(default)s)")
    args = parser.parse_args(argv)
    s = with_overrides(QUICK if args.quick else DEVICE, args.overrides, parser)
    mode, size = ("quick", args.size or "tiny") if args.quick else ("device", args.size or "small")
    device = "cpu" if args.quick and args.device == "auto" else args.device
    root = CACHE.parent / "genomics_apes"
    signal = args.signal or default_signal(size)
    size_signal = size + ("" if signal == "realistic" else f"_{signal}")
    tag = (f"{mode}_{size_signal}_{s.preset}" + ("_pretrained" if s.pretrain_steps else "") + f"_{s.pooling}"
           + ("" if s.standardize else "_nostd") + ("_chain" if s.chain else "") + ("_read" if s.read_windows else ""))
    genomes, runs = root / f"genomes_{size_signal}_seed{args.seed}", args.runs or root / f"runs_{tag}"
    started = time.perf_counter()
    if not (genomes / "orangutan.fa").exists():
        genomics("simulate", "--out", genomes, "--size", size, "--signal", signal, "--seed", args.seed)
    dev = device_name(device)
    classes = sorted(p.name.split(".")[0] for p in genomes.glob("*.fa"))

    def save(species: list[dict]) -> None:
        result = {"mode": mode + (" (CPU smoke run, not the benchmark)" if args.quick else ""), "device": dev,
                  "genome_size": size, "signal": signal, "settings": vars(s), "classes": classes, "species": species,
                  "paper_real_great_apes": {k: {str(w): a for w, a in v.items()} for k, v in PAPER.items()},
                  "minutes": (time.perf_counter() - started) / 60}
        write_tables(result, f"genomics_apes_{tag}_{dev}", args.results_dir)

    init = None
    if s.pretrain_steps:  # the paper's protocol: next-base pretraining on the five genomes, then fine-tuning
        init = runs / "pretrain"
        if not (init / "model.safetensors").exists():
            genomics("pretrain", "--fasta-dir", genomes, "--out", init, "--preset", s.preset, "--seqlen",
                     s.pretrain_seqlen, "--steps", s.pretrain_steps, "--batch-size", s.pretrain_batch, "--lr", s.lr,
                     "--seed", args.seed, "--device", device)
    rows = species_check(genomes, runs, s, device, args.seed, init, save)
    first = runs / f"species_w{s.windows[0]}"
    for window in s.read_windows:  # no model of their own: the first window's classifier reads them
        row = {"window": window, "read_by": s.windows[0], "classes": len(classes), "batch": None, "steps": None,
               "finetune_minutes": None, "per_class": None,
               "mamba": recipe_accuracy(first, genomes, window, s.test_samples, args.seed, classes, device),
               **naive_bayes(genomes, window, s.nb_train_windows, s.test_samples, args.seed, classes)}
        print(f"window {window:>6}: Mamba ({s.windows[0]} bp model, window by window) {100 * row['mamba']:.1f}%  "
              f"NB k=6 {100 * row['nb_k6']:.1f}%")
        rows.append(row)
        save(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
