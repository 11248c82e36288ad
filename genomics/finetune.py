"""Species classification: fine-tune a DNA Mamba (pretrained or from scratch) on a directory of genomes.

Protocol (HyenaDNA's species task, which the Mamba paper follows): one FASTA per class; each example draws a
class uniformly, then a chromosome (or contig/block) of its split, then a window uniformly inside it
(:class:`genomics.datasets.SpeciesWindows`); the genomes are split by chromosome (1, 3, 12, 13 validate;
5, 7, 9, 10, 11 test; the rest train), else by contig, else by disjoint blocks, and the plan is printed. The
causal model classifies from its last position (``--pooling mean`` averages all positions). ``RECIPES`` holds the
training budgets: "gpu", the paper's 10 "epochs" of 1024 steps at batch 64 (an evaluation on the validation split
after each), with gradient accumulation when a batch of windows would not fit (``max_batch_tokens`` per
micro-batch); "cpu", what fits about 10 minutes on 2 cores.

After training, the test split is classified (a fixed set of ``test_samples`` windows) and the run directory
gets ``metrics.json`` (``test_accuracy``, per-class accuracy, confusion matrix, each test window's label and
prediction, classes, window, ...) and
``confusion_matrix.png``; its model directory (model.json, README.md) gets the classes, window, tokenizer
settings and test metrics, so that a copy of model.safetensors + model.json classifies on its own.
:func:`plot_lengths` draws test accuracy against window length across runs.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from ssm_core.utils.progress import progress_bar

from ssm_core import MambaConfig, MambaSequenceClassifier
from ssm_core.models import update_model_info
from ssm_core.train import OptimConfig, Task, TrainConfig, to_dict, train_from_cli
from ssm_core.train.checkpoint import atomic_write_bytes
from ssm_core.train.distributed import resolve_device
from ssm_core.utils.plots import save_figure
from ssm_core.utils.stats import wilson_interval
from ssm_core.utils.ranges import POSITIVE_INT, check_ranges

from genomics.classify import WindowedModel
from genomics.datasets import SpeciesWindows, check_window_fits_records
from genomics.errors import GenomicsInputError
from genomics.models import check_training_memory, classifier_config, load_run_model, parameter_count, preset_config
from genomics.tokenizer import tokenizer_settings


@dataclass
class FinetuneData:
    fasta_dir: str = ""
    window: int = 1024
    valid_samples: int = 512  # fixed validation windows, evaluated every train.eval_every steps
    test_samples: int = 2048  # fixed test windows, classified once at the end
    rc_aug: bool = True  # reverse-complement half of the training windows
    iupac: str = "n"
    strategy: str = "auto"  # genome split: auto, chromosome, contig or block (see genomics.splits)
    max_batch_tokens: int = 2**20  # bases per micro-batch; larger batches are accumulated
    chunk: int = 2**16  # test windows longer than this are read in chunks carrying the state
    decompress_cache: str | None = None

    def __post_init__(self) -> None:
        check_ranges(self, window=POSITIVE_INT, valid_samples=POSITIVE_INT, test_samples=POSITIVE_INT,
                     max_batch_tokens=POSITIVE_INT, chunk=POSITIVE_INT)


@dataclass(frozen=True)
class Recipe:
    """How long and how hard to fine-tune, and how to pool: what fits the machine's budget."""
    train: TrainConfig
    pooling: str
    note: str


# gpu: the paper's protocol. cpu: what gave the best accuracy in about 10 minutes on 2 cores: many 1 kbp windows
# per step beat a few long ones (a record longer than the window is classified window by window, `classify`), at
# or above 6-mer naive Bayes at 1, 4 and 16 kbp on six real genomes in 2.7 min of training
# (benchmarks/results/genomics_finetune_cpu_cpu_2cores_x86_64.md).
RECIPES = {
    "gpu": Recipe(TrainConfig(steps=10 * 1024, batch_size=64, eval_every=1024, log_every=50,
                              optim=OptimConfig(lr=6e-4, weight_decay=0.1, warmup_steps=100)),
                  pooling="last", note="the paper's: 10 x 1024 steps of 64 windows at lr 6e-4, last-position pooling"),
    "cpu": Recipe(TrainConfig(steps=400, batch_size=16, eval_every=100, log_every=50, time_limit_min=10.0,
                              optim=OptimConfig(lr=3e-3, weight_decay=0.1, warmup_steps=10)),
                  pooling="mean", note="400 steps of 16 windows at lr 3e-3, mean pooling, at most 10 minutes"),
}


@dataclass
class FinetuneExperiment:
    data: FinetuneData = field(default_factory=FinetuneData)
    model: MambaConfig = field(default_factory=lambda: preset_config("tiny", num_classes=2))
    train: TrainConfig = field(default_factory=lambda: copy.deepcopy(RECIPES["gpu"].train))
    preset: str = "tiny"
    init: str | None = None  # pretrained run/checkpoint whose backbone initialises the classifier
    classes: list[str] = field(default_factory=list)  # class names, in the head's output order

    @classmethod
    def from_preset(cls, name: str, **fields) -> FinetuneExperiment:
        """The default experiment with the classifier of ``genomics.models.PRESETS[name]`` (two classes until the
        data names them)."""
        return cls(model=preset_config(name, num_classes=2), preset=name, **fields)


def accumulation_for(batch_size: int, window: int, max_batch_tokens: int) -> int:
    """Smallest divisor of ``batch_size`` that keeps each micro-batch under ``max_batch_tokens`` bases (at least
    one window per micro-batch)."""
    for accum in range(1, batch_size + 1):
        if batch_size % accum == 0 and (batch_size // accum) * window <= max_batch_tokens:
            return accum
    return batch_size


def prepare(exp: FinetuneExperiment) -> FinetuneExperiment:
    """Fill in what the data decides: the classes (from the directory, unless given), the model's head and
    pooling (from the pretrained run with ``init``), and gradient accumulation for long windows."""
    from genomics.fasta import list_fasta_dir

    d = exp.data
    if not d.fasta_dir:
        raise GenomicsInputError("--fasta-dir DIR is required (one FASTA file per class)")
    classes = exp.classes or list(list_fasta_dir(d.fasta_dir))
    if len(classes) < 2:
        raise GenomicsInputError(f"{d.fasta_dir}: species classification needs at least 2 FASTA files, "
                                 f"found {len(classes)}")
    model = replace(exp.model, num_classes=len(classes))
    if exp.init:
        pretrained = load_run_model(exp.init, flag="--init").config
        # a classifier run keeps its own head (and its standardiser, or none); an LM gets the head asked for
        standardize = pretrained.standardize_pooled if pretrained.num_classes else exp.model.standardize_pooled
        model = classifier_config(pretrained, len(classes), exp.model.pooling, standardize)
        if pretrained.num_classes and (trained_on := init_classes(exp.init)) != classes:
            raise GenomicsInputError(f"--init {exp.init}: a classifier of the classes {trained_on}, "
                                     f"but {d.fasta_dir} holds {classes}; start from a pretraining run instead")
    train = exp.train
    needed = accumulation_for(train.batch_size, d.window, d.max_batch_tokens)
    if needed > train.grad_accum:
        train = replace(train, grad_accum=needed)
    return replace(exp, model=model, train=train, classes=classes)


def init_classes(init: str) -> list[str] | None:
    """The class names of the fine-tuning run ``init`` points into (None for a pretraining run)."""
    from genomics.classify import run_classes

    try:
        return run_classes(init)[0]
    except GenomicsInputError:
        return None


EPOCH_STEPS = 1024


class FinetuneTask(Task):
    shuffle_train = False  # each index is a fresh random window already

    def __init__(self, exp: FinetuneExperiment):
        self.exp = exp
        # one "epoch" of the paper (1024 steps) of fresh windows, redrawn each epoch: a size that does not depend
        # on --steps, so a run can be resumed with more steps
        self.train_set = self._windows("train", EPOCH_STEPS * exp.train.batch_size)
        d = exp.data
        check_window_fits_records({self.train_set.fastas[name].source: plan
                                   for name, plan in self.train_set.plans.items()}, d.window, "--window")
        check_training_memory(exp.model, exp.train, d.window, "--window", max_batch_tokens=True)

    def _windows(self, split: str, samples: int) -> SpeciesWindows:
        d = self.exp.data
        return SpeciesWindows(d.fasta_dir, split, d.window, samples=samples, seed=self.exp.train.seed,
                              rc_aug=d.rc_aug and split == "train", iupac=d.iupac, strategy=d.strategy,
                              decompress_to=d.decompress_cache, classes=self.exp.classes)

    def describe_split(self) -> str:
        return "\n".join(f"  {name}: {plan.describe()}" for name, plan in self.train_set.plans.items())

    def build_model(self) -> nn.Module:
        model = MambaSequenceClassifier(self.exp.model)
        if self.exp.init:
            pretrained = load_run_model(self.exp.init, flag="--init")
            if isinstance(pretrained, MambaSequenceClassifier):  # a classifier of the same classes (prepare checked)
                model.load_state_dict(pretrained.state_dict())  # e.g. a shorter window's run: continue, head too
            else:
                model.backbone.load_state_dict(pretrained.backbone.state_dict())
        return model

    def train_dataset(self):
        return self.train_set

    def valid_dataset(self):
        return self._windows("valid", self.exp.data.valid_samples)

    def loss(self, model, batch):
        tokens, labels = batch
        logits = model(tokens).float()
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean()}


def predict_windows(model: MambaSequenceClassifier, dataset, device: torch.device, batch_tokens: int = 2**18,
                    chunk: int = 2**16, desc: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, classes) and labels (n,) of a labelled window dataset, read as ``classify`` reads
    windows (:meth:`genomics.classify.WindowedModel.run`): windows longer than ``chunk`` are streamed through the
    backbone (memory independent of the window)."""
    model.eval().to(device)
    reader = WindowedModel(model, dataset.window, device, chunk, batch_tokens)
    loader = DataLoader(dataset, batch_size=max(1, batch_tokens // dataset.window), shuffle=False)
    log_probs, labels = [], []
    for tokens, label in progress_bar(loader, desc=desc, unit="batch", leave=False):
        log_probs.append(reader.run(tokens.numpy(), head=True))
        labels.append(label.numpy())
    return np.exp(np.concatenate(log_probs)), np.concatenate(labels)


def plot_confusion(matrix: np.ndarray, classes: list[str], title: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (cells: counts)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    save_figure(fig, out_png)


def test_report(exp: FinetuneExperiment, model: MambaSequenceClassifier, device: torch.device) -> dict:
    """Accuracy and confusion matrix (scikit-learn) on the test split's fixed windows."""
    from sklearn.metrics import confusion_matrix

    task_data = exp.data
    test = SpeciesWindows(task_data.fasta_dir, "test", task_data.window, samples=task_data.test_samples,
                          seed=exp.train.seed, iupac=task_data.iupac, strategy=task_data.strategy,
                          decompress_to=task_data.decompress_cache, classes=exp.classes)
    probs, labels = predict_windows(model, test, device, batch_tokens=task_data.max_batch_tokens // 4,
                                    chunk=task_data.chunk)
    predicted = probs.argmax(1)
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(exp.classes))))
    per_class = {c: float(matrix[i, i] / max(matrix[i].sum(), 1)) for i, c in enumerate(exp.classes)}
    return {"test_accuracy": float(np.mean(predicted == labels)), "test_samples": int(len(labels)),
            "per_class_accuracy": per_class, "confusion_matrix": matrix.tolist(),
            # per test window, in order (class indices): to compare another classifier on the same windows, paired
            "test_labels": labels.tolist(), "test_predictions": predicted.tolist(),
            "test_nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))}


def run_finetune(exp: FinetuneExperiment, out: str | Path, resume: bool = False) -> dict:
    """Fine-tune, test, and write RUN/metrics.json and RUN/confusion_matrix.png. Returns the metrics."""
    exp = prepare(exp)
    task = FinetuneTask(exp)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        print(f"classes: {', '.join(exp.classes)} (chance {100 / len(exp.classes):.1f}%)")
        print("split plan per class:\n" + task.describe_split())
        print(f"model: {'from ' + exp.init if exp.init else 'preset ' + exp.preset + ' from scratch'}, "
              f"{exp.model.n_layer} layers, d_model {exp.model.d_model}, pooling {exp.model.pooling}, "
              f"{parameter_count(exp.model):,} parameters")
        t = exp.train
        print(f"training: {t.steps} steps of {t.batch_size} windows of {exp.data.window:,} bp"
              + (f" ({t.grad_accum} accumulated micro-batches)" if t.grad_accum > 1 else ""))
    result = train_from_cli(task, exp, out, resume=resume)
    if not main:
        return {}
    device = resolve_device(exp.train.device)
    report = test_report(exp, result.model, device)
    metrics = {**report, "window": exp.data.window, "classes": exp.classes, "valid": result.eval_metrics,
               "steps": result.step, "preset": exp.preset, "init": exp.init, "pooling": exp.model.pooling,
               "parameters": parameter_count(exp.model), "config": to_dict(exp)}
    out = Path(out)
    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    # the model directory carries what classifying needs (labels, window, tokenizer), wherever it is copied
    update_model_info(out, task="dna-species-classification", labels=exp.classes, window=exp.data.window,
                      tokenizer=tokenizer_settings(exp.data.iupac), preset=None if exp.init else exp.preset,
                      trained_on=f"{exp.data.fasta_dir} ({len(exp.classes)} species, {exp.data.window:,} bp windows"
                                 + (f", fine-tuned from {exp.init})" if exp.init else ")"),
                      metrics={k: report[k] for k in ("test_accuracy", "test_nll")},
                      usage=f"python -m genomics classify --checkpoint {out.name} --fasta reads.fa",
                      tags=["dna", "genomics", "species-classification"])
    plot_confusion(np.array(report["confusion_matrix"]), exp.classes,
                   f"{out.name}: window {exp.data.window:,} bp, test accuracy {100 * report['test_accuracy']:.1f}%",
                   out / "confusion_matrix.png")
    per_class = ", ".join(f"{c} {100 * a:.0f}%" for c, a in report["per_class_accuracy"].items())
    print(f"test accuracy {100 * report['test_accuracy']:.1f}% on {report['test_samples']} windows of "
          f"{exp.data.window:,} bp ({per_class})")
    return metrics


def read_run_metrics(run: str | Path) -> dict:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise GenomicsInputError(f"{run}: no metrics.json (not a finished `genomics finetune` run)")
    metrics = json.loads(path.read_text())
    if "test_accuracy" not in metrics:
        raise GenomicsInputError(f"{path}: no test_accuracy (a pretraining run, not a fine-tuning run?)")
    if not isinstance(metrics.get("test_samples"), int) or metrics["test_samples"] < 1:
        raise GenomicsInputError(f"{path}: no test_samples (how many windows the accuracy was measured on); "
                                 "written by `genomics finetune` since it reports them")
    return metrics


def plot_lengths(runs: list[str | Path], out_png: str | Path, title: str = "species classification") -> list[dict]:
    """Test accuracy against window length, one line per model (layers x width, pretrained or not), from runs.

    Each point carries its number of test windows n and the 95% (Wilson) interval of its accuracy. Returns the table
    rows (run, label, window, test_accuracy, n, interval), sorted by label then window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for run in runs:
        m = read_run_metrics(run)
        shape = m["config"]["model"]
        label = f"{shape['n_layer']}x{shape['d_model']} " + ("pretrained" if m.get("init") else "from scratch")
        n = int(m["test_samples"])
        rows.append({"run": str(run), "label": label, "window": int(m["window"]),
                     "test_accuracy": float(m["test_accuracy"]), "classes": len(m["classes"]), "n": n,
                     "interval": wilson_interval(float(m["test_accuracy"]) * n, n)})
    rows.sort(key=lambda r: (r["label"], r["window"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        line = [r for r in rows if r["label"] == label]
        accuracy = np.array([100 * r["test_accuracy"] for r in line])
        low, high = (np.array([100 * r["interval"][i] for r in line]) for i in (0, 1))
        ax.errorbar([r["window"] for r in line], accuracy, yerr=[accuracy - low, high - accuracy], marker="o",
                    capsize=3, label=f"{label} (95% interval)")
        for r, y in zip(line, accuracy):
            ax.annotate(f"n={r['n']:,}", (r["window"], y), textcoords="offset points", xytext=(4, -12), fontsize=7)
    chance = 100 / max(r["classes"] for r in rows)
    ax.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.0f}%)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 100)
    ax.set_xlabel("window length (bp)")
    ax.set_ylabel("test accuracy (%) on n test windows")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out_png)
    return rows
