"""Real-genome check of the genomics suite, from genomes Debian ships inside example packages.

    python benchmarks/genomics_real.py            # the full check (GPU): 1.4m/7m models, windows 2^10 ... 2^16
    python benchmarks/genomics_real.py --quick    # a CPU smoke run: tiny model, windows 2^10 and 2^12, few steps

Genomes (fetched with `apt-get download` and unpacked with `dpkg-deb -x` into benchmarks/.cache/, no install;
on a machine without network, carry benchmarks/.cache/genomics_real/sources, 55 MB, made by a first run):

    class           package              file                                           what it holds
    human_chrX      smalt-examples       test/data/hs37chrXtrunc.fa.gz                  GRCh37 chrX, first 70 Mbp
    p_falciparum    smalt-examples       test/data/genome_1.fa.gz                       P. falciparum, 14 chromosomes
    p_knowlesi      smalt-examples       test/data/cigar_ref.fa.gz                      P. knowlesi, 1840 contigs
    d_discoideum    spaln-data           seqdb/dictdisc_g.gf.gz                         D. discoideum AX4, 6 chromosomes
    u_maydis        maffilter-examples   examples/Umaydis/Umaydis.fasta.gz              U. maydis, 36 records
    c_elegans_chrX  r-bioc-bsgenome      BSgenome/extdata/ce2chrX.fa.gz                 C. elegans chrX (ce2)

1. Pretraining: `genomics pretrain` on human chrX (split into coordinate blocks: train/valid/test), then bits
   per base on held-out test windows against order-k Markov chains fitted on the training blocks, both scored
   on exactly the same positions (those whose base and k preceding bases are all A/C/G/T).
2. Species: `genomics finetune` over the six genomes at each window length, and a k-mer naive-Bayes baseline
   (k = 4 and 6) trained on windows of the same training split and tested on the same test windows.

Tables go to benchmarks/results/genomics_real_<mode>_<preset>_<device>.{md,json}, rewritten after each stage
so an interrupted run keeps what it finished; runs already finished in --runs are reused, not retrained.

On a GPU machine without network, carry benchmarks/.cache/genomics_real/sources (and a pyfaidx wheel if the
image lacks it) and run, e.g. within a 10-minute slot:

    python benchmarks/genomics_real.py --device cuda --set preset=1.4m --set windows=1024,4096,16384 \
        --set pretrain_seqlen=4096 --set pretrain_steps=300 --set finetune_steps=200 --set finetune_batch=16
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CACHE = HERE / ".cache" / "genomics_real"
RESULTS = HERE / "results"

GENOMES = {  # class -> (package, path inside the package)
    "human_chrX": ("smalt-examples", "usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz"),
    "p_falciparum": ("smalt-examples", "usr/share/doc/smalt/test/data/genome_1.fa.gz"),
    "p_knowlesi": ("smalt-examples", "usr/share/doc/smalt/test/data/cigar_ref.fa.gz"),
    "d_discoideum": ("spaln-data", "usr/share/spaln/seqdb/dictdisc_g.gf.gz"),
    "u_maydis": ("maffilter-examples", "usr/share/doc/maffilter/examples/Umaydis/Umaydis.fasta.gz"),
    "c_elegans_chrX": ("r-bioc-bsgenome", "usr/lib/R/site-library/BSgenome/extdata/ce2chrX.fa.gz"),
}


@dataclass
class Settings:
    preset: str
    pretrain_seqlen: int
    pretrain_steps: int
    pretrain_batch: int
    windows: tuple[int, ...]
    finetune_steps: int
    finetune_batch: int
    test_samples: int
    nb_train_windows: int
    markov_orders: tuple[int, ...]
    lr: float
    finetune_tokens: int = 0  # when set, each window length's batch is finetune_tokens // window (at least 2)
    pooling: str = "last"  # the classifier reads the last position (causal) or the mean over the window
    standardize: bool = True  # pooled features standardised before the head (finetune's default)
    warmup_steps: int = 100  # fine-tuning's linear warm-up (the engine's default), then cosine decay
    time_limit_min: float = 0.0  # when set, each fine-tuning run stops after this many minutes (then tests)
    chain: bool = False  # each window's classifier starts from the previous (shorter) window's, not from scratch
    # longer test windows not fine-tuned at: read by the first window's classifier as `genomics classify` reads a
    # long record (window by window, both strands), beside naive Bayes trained at that length
    read_windows: tuple[int, ...] = ()

    def batch_for(self, window: int) -> int:
        return max(2, self.finetune_tokens // window) if self.finetune_tokens else self.finetune_batch


FULL = Settings(preset="7m", pretrain_seqlen=2**14, pretrain_steps=2000, pretrain_batch=16,
                windows=tuple(2**k for k in range(10, 17)), finetune_steps=1000, finetune_batch=32,
                test_samples=2048, nb_train_windows=4096, markov_orders=(2, 4, 6, 8, 10), lr=6e-4)
QUICK = Settings(preset="tiny", pretrain_seqlen=1024, pretrain_steps=30, pretrain_batch=8, windows=(1024, 4096),
                 finetune_steps=30, finetune_batch=8, test_samples=200, nb_train_windows=400,
                 markov_orders=(2, 4, 6), lr=3e-3)


def prepare_genomes(genomes_from: dict[str, tuple[str, str]] = GENOMES, cache: Path = CACHE) -> Path:
    """The genomes of ``genomes_from`` (class -> (Debian package, path inside it)) as cache/genomes/<class>.fa.

    Their compressed originals are kept in cache/sources/<class>.fa.gz (or .fa.xz; 55 MB for the six genomes here:
    small enough to carry to a machine without network); missing ones are taken from the Debian packages,
    downloaded and unpacked once."""
    import lzma

    from ssm_core.utils.download import decompress_gzip

    sources, genomes = cache / "sources", cache / "genomes"
    for d in (sources, genomes):
        d.mkdir(parents=True, exist_ok=True)
    for name, (package, inner) in genomes_from.items():
        xz = inner.endswith(".xz")
        source = sources / f"{name}.fa.{'xz' if xz else 'gz'}"
        if not source.exists():
            unpacked = cache / "root" / inner
            if not unpacked.exists():
                debs = cache / "debs"
                debs.mkdir(exist_ok=True)
                if not list(debs.glob(f"{package}_*.deb")):
                    print(f"apt-get download {package}")
                    subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
                subprocess.run(["dpkg-deb", "-x", str(sorted(debs.glob(f"{package}_*.deb"))[-1]),
                                str(cache / "root")], check=True)
            shutil.copyfile(unpacked, source)
        target = genomes / f"{name}.fa"
        if not target.exists():
            print(f"decompressing {source.name} -> {target}")
            if xz:
                with lzma.open(source) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                decompress_gzip(source, target)
    return genomes


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_")
    return f"cpu_{os.cpu_count()}cores_{platform.machine()}"


def genomics(*args) -> None:
    from genomics.cli import main

    status = main([str(a) for a in args])
    if status != 0:
        raise SystemExit(f"genomics {args[0]} failed with status {status}")


def describe_genomes(genomes: Path) -> list[dict]:
    from genomics.fasta import open_fasta

    rows = []
    for name in GENOMES:
        fasta = open_fasta(genomes / f"{name}.fa")
        rows.append({"class": name, "records": len(fasta.lengths), "bp": sum(fasta.lengths.values()),
                     "first_record": next(iter(fasta.lengths))})
    return rows


def pretraining_check(genomes: Path, runs: Path, s: Settings, device: str, seed: int) -> dict:
    """Bits per base of the pretrained model vs order-k Markov chains on the same held-out positions."""
    import torch

    from genomics.baselines import MarkovBaseline, markov_scored_mask
    from genomics.datasets import GenomeWindows
    from genomics.pretrain import next_base_nll

    human = genomes / "human_chrX.fa"
    run = runs / "pretrain_human_chrX"
    if not (run / "model.safetensors").exists():
        genomics("pretrain", "--fasta", human, "--out", run, "--preset", s.preset, "--seqlen", s.pretrain_seqlen,
                 "--warmup-start", min(1024, s.pretrain_seqlen), "--steps", s.pretrain_steps, "--batch-size",
                 s.pretrain_batch, "--lr", s.lr, "--seed", seed, "--device", device,
                 "--set", f"train.eval_every={max(1, s.pretrain_steps // 5)}")
    from ssm_core.train import load_trained_model
    from ssm_core.train.distributed import resolve_device

    dev = resolve_device(device)
    model = load_trained_model(run, dev)
    test = GenomeWindows(human, split="test", window=s.pretrain_seqlen, samples=max(16, 2**22 // s.pretrain_seqlen),
                         seed=seed)
    train = GenomeWindows(human, split="train", window=s.pretrain_seqlen, samples=1, seed=seed)
    fasta = train.fasta
    train_chunks = [fasta.fetch(r.record, start, min(start + 2**22, r.end))
                    for r in train.plan.regions["train"] for start in range(r.start, r.end, 2**22)]
    windows = [test.window_tokens(i) for i in range(len(test))]
    result = {"plan": train.plan.describe(), "test_windows": len(windows), "window": s.pretrain_seqlen,
              "markov": {}, "model": {}}
    nll_by_window = []
    with torch.no_grad():
        for i in range(0, len(windows), 8):
            batch = torch.from_numpy(np.stack(windows[i:i + 8]).astype(np.int64)).to(dev)
            nll, _ = next_base_nll(model, batch)
            nll_by_window += list(nll.float().cpu().numpy())
    for order in s.markov_orders:
        markov = MarkovBaseline(order=order).fit(train_chunks)
        masks = [markov_scored_mask(w, order)[1:] for w in windows]  # position p-1 predicts base p
        model_bits = sum(float(n[m].sum()) for n, m in zip(nll_by_window, masks)) / math.log(2)
        scored = sum(int(m.sum()) for m in masks)
        result["markov"][str(order)] = markov.bits_per_base(windows)
        result["model"][str(order)] = model_bits / scored
        print(f"order {order:>2}: Markov {result['markov'][str(order)]:.4f} bits/base, model "
              f"{result['model'][str(order)]:.4f} on the same {scored:,} positions")
    return result


def naive_bayes(genomes: Path, window: int, train: int, test: int, seed: int, classes: list[str]) -> dict:
    """4-mer and 6-mer naive Bayes (keys nb_k4, nb_k6) trained on ``train`` windows of the train split and scored on
    the ``test`` windows of the test split that `genomics finetune` tests on (same seed and classes)."""
    from genomics.baselines import KmerNaiveBayes
    from genomics.datasets import SpeciesWindows

    train_x, train_y = SpeciesWindows(genomes, "train", window, samples=train, seed=seed, classes=classes).arrays()
    test_x, test_y = SpeciesWindows(genomes, "test", window, samples=test, seed=seed, classes=classes).arrays()
    return {f"nb_k{k}": KmerNaiveBayes(k=k).fit(train_x, train_y).score(test_x, test_y) for k in (4, 6)}


def recipe_accuracy(run: Path, genomes: Path, window: int, samples: int, seed: int, classes: list[str],
                    device: str) -> float:
    """Accuracy on the ``window``-bp test windows of the classifier in ``run`` (fine-tuned on shorter windows), each
    test window read as `genomics classify` reads a record (genomics.classify.read_predictions)."""
    from genomics.classify import SpeciesClassifier, read_predictions
    from genomics.datasets import SpeciesWindows

    test_x, test_y = SpeciesWindows(genomes, "test", window, samples=samples, seed=seed, classes=classes).arrays()
    classifier = SpeciesClassifier(run, device)
    assert classifier.classes == classes, (classifier.classes, classes)
    return float(np.mean(read_predictions(classifier, test_x, f"test windows of {window}") == np.asarray(test_y)))


def species_check(genomes: Path, runs: Path, s: Settings, device: str, seed: int, init: Path | None,
                  save) -> list[dict]:
    """Fine-tuned Mamba vs k-mer naive Bayes on the same test windows, at each window length; `save(rows)` after
    each length, so that an interrupted run keeps its finished lengths."""
    rows, previous = [], None
    for window in s.windows:
        run = runs / f"species_w{window}"
        trained_in = None
        if not (run / "metrics.json").exists():
            t0 = time.perf_counter()
            args = ["finetune", "--fasta-dir", genomes, "--out", run, "--window", window, "--steps",
                    s.finetune_steps, "--batch-size", s.batch_for(window), "--lr", s.lr, "--seed", seed,
                    "--test-samples", s.test_samples, "--valid-samples", min(512, s.test_samples), "--device", device,
                    "--pooling", s.pooling, *([] if s.standardize else ["--no-standardize"]),
                    "--set", f"train.eval_every={max(1, s.finetune_steps // 4)}",
                    "--set", f"train.optim.warmup_steps={s.warmup_steps}"]
            if s.time_limit_min:
                args += ["--set", f"train.time_limit_min={s.time_limit_min}"]
            source = previous if s.chain and previous is not None else init
            args += ["--init", source] if source else ["--preset", s.preset]
            if window >= 2**16:
                args.append("--activation-checkpointing")
            genomics(*args)
            trained_in = (time.perf_counter() - t0) / 60
        metrics = json.loads((run / "metrics.json").read_text())
        classes = metrics["classes"]
        started = time.perf_counter()
        row = {"window": window, "mamba": metrics["test_accuracy"], "classes": len(classes),
               "batch": s.batch_for(window), "steps": metrics.get("steps"), "finetune_minutes": trained_in,
               "per_class": metrics["per_class_accuracy"],
               **naive_bayes(genomes, window, s.nb_train_windows, s.test_samples, seed, classes)}
        print(f"window {window:>6}: Mamba {100 * row['mamba']:.1f}%  NB k=4 {100 * row['nb_k4']:.1f}%  "
              f"NB k=6 {100 * row['nb_k6']:.1f}%  (baselines {time.perf_counter() - started:.0f} s)")
        rows.append(row)
        save(rows)
        previous = run
    return rows


def plot_species(rows: list[dict], chance: float, title: str, path: Path) -> None:
    """Test accuracy against window length: Mamba beside the k-mer naive-Bayes baselines, chance dashed."""
    import matplotlib.pyplot as plt

    from ssm_core.utils.plots import save_figure

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    windows = [r["window"] for r in rows]
    for key, label, style in (("mamba", "Mamba", "o-"), ("nb_k6", "6-mer naive Bayes", "s--"),
                              ("nb_k4", "4-mer naive Bayes", "^:")):
        ax.plot(windows, [100 * r[key] for r in rows], style, label=label)
    ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set(xscale="log", xlabel="window (bp)", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.set_xticks(windows, [f"{w:,}" for w in windows])
    ax.minorticks_off()
    ax.legend()
    save_figure(fig, path)


def write_tables(result: dict, stem: str, results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    s, lines = result["settings"], [f"# Real genomes: {result['mode']} run on {result['device']}", ""]
    per_step = (f"{s['finetune_tokens']:,} bases (batch = bases / window)" if s.get("finetune_tokens")
                else f"{s['finetune_batch']} windows")
    lines += [f"Settings: preset {s['preset']}; pretraining {s['pretrain_steps']} steps x {s['pretrain_batch']} "
              f"windows of {s['pretrain_seqlen']} bp; fine-tuning {s['finetune_steps']} steps of {per_step} per "
              f"length, {s.get('pooling', 'last')} pooling; {s['test_samples']} test windows; naive Bayes trained "
              f"on {s['nb_train_windows']} windows. Wall time {result['minutes']:.1f} min.", "",
              "## Genomes", "", "| class | records | bp |", "|---|---:|---:|"]
    lines += [f"| {g['class']} | {g['records']} | {g['bp']:,} |" for g in result["genomes"]]
    p = result["pretraining"]
    lines += ["", f"## Pretraining on human chrX: held-out bits per base ({p['test_windows']} test windows of "
              f"{p['window']} bp; {p['plan']})", "",
              "| Markov order k | order-k Markov | Mamba (same positions) |", "|---:|---:|---:|"]
    lines += [f"| {k} | {p['markov'][k]:.4f} | {p['model'][k]:.4f} |" for k in p["markov"]]
    lines += ["", "## Species classification (6 genomes, chance 16.7%): test accuracy", "",
              "| window | Mamba | 4-mer naive Bayes | 6-mer naive Bayes |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['window']:,} | {100 * r['mamba']:.1f}% | {100 * r['nb_k4']:.1f}% | {100 * r['nb_k6']:.1f}% |"
              for r in result["species"]]
    lines += [f"\n{r['window']:,} bp: {r['note']}" for r in result["species"] if r.get("note")]
    plot_species(result["species"], 1 / len(result["genomes"]), "Real genomes: species accuracy vs window",
                 results / f"{stem}.png")
    lines += ["", f"![accuracy against window length]({stem}.png)"]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"saved {results / stem}.md, .json and .png")


def with_overrides(s: Settings, overrides: list[str], parser: argparse.ArgumentParser) -> Settings:
    """`s` with each `--set FIELD=VALUE` applied, the value parsed as the field's type (tuples: comma-separated)."""
    for text in overrides:
        key, _, value = text.partition("=")
        if key not in vars(s):
            parser.error(f"--set {text}: unknown field {key!r}; fields are {sorted(vars(s))}")
        default = getattr(s, key)
        try:
            if isinstance(default, bool):  # bool("false") is True: spell the two values out
                parsed = {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            elif isinstance(default, tuple):
                parsed = tuple(int(v) for v in value.split(",") if v)
            else:
                parsed = type(default)(value)
        except (ValueError, KeyError):
            parser.error(f"--set {text}: {value!r} is not a valid {type(default).__name__}")
        s = Settings(**{**vars(s), key: parsed})
    return s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run (tiny model, 2 windows, few steps)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a setting of the mode, e.g. --set preset=1.4m --set windows=1024,4096 "
                             "--set finetune_steps=200 (fields: those of the Settings dataclass)")
    parser.add_argument("--no-init", action="store_true", help="fine-tune from scratch instead of the human LM")
    parser.add_argument("--runs", type=Path, help="where runs go (default benchmarks/.cache/genomics_real/runs_*)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables go (default %(default)s)")
    args = parser.parse_args(argv)
    s = with_overrides(QUICK if args.quick else FULL, args.overrides, parser)
    mode = "quick" if args.quick else "full"
    device = "cpu" if args.quick and args.device == "auto" else args.device
    runs = args.runs or CACHE / f"runs_{mode}_{s.preset}"
    started = time.perf_counter()
    genomes = prepare_genomes()
    described = describe_genomes(genomes)
    for g in described:
        print(f"{g['class']:>15}: {g['records']:>6} records, {g['bp']:>12,} bp (first: {g['first_record']})")
    pretraining = pretraining_check(genomes, runs, s, device, args.seed)
    init = None if args.no_init else runs / "pretrain_human_chrX"
    dev = device_name(device)

    def save(species: list[dict]) -> None:
        result = {"mode": mode + (" (CPU smoke run, not the benchmark)" if args.quick else ""), "device": dev,
                  "settings": vars(s), "genomes": described, "pretraining": pretraining, "species": species,
                  "init": str(init) if init else None, "minutes": (time.perf_counter() - started) / 60}
        write_tables(result, f"genomics_real_{mode}_{s.preset}_{dev}", args.results_dir)

    save([])
    species_check(genomes, runs, s, device, args.seed, init, save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
