"""Fine-tuning on CPU from the shipped DNA backbone (dna-tiny) against from scratch and k-mer naive Bayes.

    python benchmarks/genomics_finetune_cpu.py                                  # 1 and 4 kbp, 4 min per run
    python benchmarks/genomics_finetune_cpu.py --windows 1024,4096,16384 --minutes 10   # the issue's protocol
    python benchmarks/genomics_finetune_cpu.py --windows 1024 --recipe-only 4096,16384 --minutes 10 --steps 400
                                                      # the CPU recipe: one 10-minute run at 1 kbp per arm

The six genomes of benchmarks/genomics_real.py (none of which the backbone saw: it was pretrained on the bacteria
of benchmarks/dna_pretrain_genomes.json), split as that benchmark splits them. For each window length, `genomics
finetune` once from the shipped backbone (its default --init) and once from scratch (--init none, same tiny
size), each stopped by the same time budget, then tested on the same test windows as 4-mer and 6-mer naive Bayes
(genomics_real.species_check). Table and plot: benchmarks/results/genomics_finetune_cpu_<device>.{md,json,png}.

A step of a few long windows learns slowly on a CPU, so the table also shows the recipe that fits a CPU budget:
fine-tune once at ``--recipe-window`` (default 1,024 bp: many windows per step), then read each longer test window
as `genomics classify` reads a long record, window by window on both strands, its probabilities the normalised
geometric mean of its windows' (``recipe_*`` columns; the same test windows as every other column).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # genomics_real's genomes, fine-tuning loop and baselines

from genomics_real import (CACHE, QUICK, RESULTS, device_name, naive_bayes, prepare_genomes,  # noqa: E402
                           recipe_accuracy, species_check)

ARMS = {"shipped": "dna-tiny", "scratch": None}  # arm -> --init (None: the tiny preset from scratch)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("shipped", "Mamba tiny, from dna-tiny"), ("scratch", "Mamba tiny, from scratch"),
                       ("recipe_shipped", "recipe (1 model, window by window), from dna-tiny"),
                       ("recipe_scratch", "recipe, from scratch"),
                       ("nb_k4", "4-mer naive Bayes"), ("nb_k6", "6-mer naive Bayes")):
        points = [(r["window"], 100 * r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("window (bp)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("6 real genomes, CPU fine-tuning under a time budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="1024,4096", help="window lengths (default: 1024,4096)")
    parser.add_argument("--minutes", type=float, default=4.0, help="fine-tuning budget per run (default: 4)")
    parser.add_argument("--steps", type=int, default=150, help="steps of the schedule (default: 150)")
    parser.add_argument("--tokens", type=int, default=16384, help="bases per step (batch = tokens / window)")
    parser.add_argument("--recipe-window", type=int, default=1024,
                        help="the CPU recipe's fine-tuning window (one of --windows): its classifier also reads the "
                             "longer test windows window by window (default: 1024)")
    parser.add_argument("--recipe-only", default="",
                        help="more window lengths, comma-separated, tested with the recipe and the baselines only "
                             "(no fine-tuning at them), e.g. 4096,16384")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    s = replace(QUICK, windows=tuple(int(w) for w in args.windows.split(",")), finetune_steps=args.steps,
                finetune_tokens=args.tokens, time_limit_min=args.minutes, test_samples=400, nb_train_windows=1000,
                pooling="mean", warmup_steps=10)
    started = time.perf_counter()
    genomes = prepare_genomes()
    by_arm = {arm: species_check(genomes, CACHE / f"finetune_cpu_{arm}", s, "cpu", args.seed, init, lambda rows: None)
              for arm, init in ARMS.items()}
    rows = [{"window": a["window"], "shipped": a["mamba"], "scratch": b["mamba"], "nb_k4": a["nb_k4"],
             "nb_k6": a["nb_k6"], "steps": {"shipped": a["steps"], "scratch": b["steps"]},
             "minutes": {"shipped": a["finetune_minutes"], "scratch": b["finetune_minutes"]}}
            for a, b in zip(by_arm["shipped"], by_arm["scratch"])]
    recipe_runs = {arm: CACHE / f"finetune_cpu_{arm}" / f"species_w{args.recipe_window}" for arm in ARMS}
    classes = json.loads((recipe_runs["shipped"] / "metrics.json").read_text())["classes"]
    for window in (int(w) for w in args.recipe_only.split(",") if w):
        rows.append({"window": window, "shipped": None, "scratch": None, "steps": {"shipped": None, "scratch": None},
                     "minutes": {"shipped": None, "scratch": None},
                     **naive_bayes(genomes, window, s.nb_train_windows, s.test_samples, args.seed, classes)})
    for r in rows:
        for arm, run in recipe_runs.items():
            r[f"recipe_{arm}"] = (recipe_accuracy(run, genomes, r["window"], s.test_samples, args.seed, classes, "cpu")
                                  if r["window"] >= args.recipe_window else None)
    dev = device_name("cpu")
    stem = RESULTS / f"genomics_finetune_cpu_{dev}"
    result = {"device": dev, "settings": {"windows": s.windows, "minutes_per_run": args.minutes,
                                          "steps": args.steps, "bases_per_step": args.tokens, "lr": s.lr,
                                          "pooling": s.pooling, "test_windows": s.test_samples,
                                          "nb_train_windows": s.nb_train_windows,
                                          "recipe_window": args.recipe_window},
              "rows": rows, "wall_minutes": (time.perf_counter() - started) / 60}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, stem.with_suffix(".png"))
    lines = [f"# CPU fine-tuning from the shipped backbone ({dev})", "",
             f"Six real genomes (benchmarks/genomics_real.py), tiny preset, at most {args.minutes:g} min and "
             f"{args.steps} steps of {args.tokens:,} bases (at least 2 windows) per run, lr {s.lr:g}, mean pooling; {s.test_samples} test "
             f"windows; naive Bayes trained on {s.nb_train_windows} windows. Chance 16.7%.", "",
             f"Columns 2-3: a classifier fine-tuned at each window. Columns 4-5, the CPU recipe: the classifier "
             f"fine-tuned at {args.recipe_window:,} bp reads each test window as `genomics classify` reads a record, "
             f"{args.recipe_window:,} bp at a time on both strands.", "",
             "| window | from dna-tiny | from scratch | recipe, from dna-tiny | recipe, from scratch "
             "| 4-mer naive Bayes | 6-mer naive Bayes | steps (dna-tiny / scratch) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines += [f"| {r['window']:,} | {pct(r['shipped'])} | {pct(r['scratch'])} | {pct(r['recipe_shipped'])} | "
              f"{pct(r['recipe_scratch'])} | {pct(r['nb_k4'])} | {pct(r['nb_k6'])} | "
              f"{r['steps']['shipped'] or '–'} / {r['steps']['scratch'] or '–'} |" for r in rows]
    lines += ["", f"![accuracy against window length]({stem.name}.png)"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
