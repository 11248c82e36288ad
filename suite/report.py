"""RUN/report/: report.html and report.md from the stages' results, with the plots and the generated clips beside
them (every link relative, every linked file copied into report/).

RUN/report/.files lists every file the report wrote (one path a line, relative to report/): a rebuild removes
those, and never a file someone else put in report/ (one in the way of the report's own is refused, unless the
main job runs with --overwrite)."""
from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ssm_core.train.checkpoint import atomic_write_bytes  # noqa: E402
from ssm_core.train.distributed import resolve_device  # noqa: E402
from ssm_core.utils.outputs import check_output  # noqa: E402
from ssm_core.utils.plots import save_figure  # noqa: E402

WRITTEN_LIST = ".files"

# (run directory under RUN, label) of every engine run whose training loss the report plots
LOSS_RUNS = (("core", "core: induction heads"), ("genomics/lm", "genomics: pretraining"),
             ("audio/sashimi", "audio: SaShiMi-Mamba"), ("audio/classifier", "audio: digit classifier"))


def training_loss(run: Path) -> tuple[list[int], list[float]]:
    """(steps, train/loss values) from RUN/metrics.csv (long format: step, metric, value, time_s)."""
    steps, values = [], []
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["metric"] == "train/loss":
                steps.append(int(row["step"]))
                values.append(float(row["value"]))
    return steps, values


def plot_losses(runs: list[tuple[Path, str]], out_png: Path) -> Path:
    """One panel per run: its training loss against the step."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
    for ax, (run, label) in zip(axes[0], runs):
        steps, values = training_loss(run)
        ax.plot(steps, values, lw=1.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png, dpi=100)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"


class Document:
    """The report built once as blocks, rendered both as HTML and as Markdown."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, tuple]] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", (text,)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", (text,)))

    def table(self, header: list[str], rows: list[list[str]], caption: str) -> None:
        self.blocks.append(("table", (header, rows, caption)))

    def image(self, src: str, alt: str) -> None:
        self.blocks.append(("img", (src, alt)))

    def clips(self, srcs: list[str]) -> None:
        self.blocks.append(("audio", (srcs,)))

    def html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">",
                 f"<title>{e(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 10px;"
                 "text-align:right}th:first-child,td:first-child{text-align:left}caption{text-align:left;"
                 "font-weight:bold;margin-bottom:4px}img{max-width:min(100%,760px);border:1px solid #ddd}"
                 "figure{margin:1em 0}.clip{display:inline-block;margin:4px 12px 4px 0}</style>\n</head>\n<body>",
                 f"<h1>{e(self.title)}</h1>"]
        for kind, args in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{e(args[0])}</h2>")
            elif kind == "p":
                parts.append(f"<p>{e(args[0])}</p>")
            elif kind == "table":
                header, rows, caption = args
                parts.append(f"<table>\n<caption>{e(caption)}</caption>\n<tr>"
                             + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
                parts.append("</table>")
            elif kind == "img":
                src, alt = args
                parts.append(f"<figure><a href=\"{e(src)}\"><img src=\"{e(src)}\" alt=\"{e(alt)}\"></a>"
                             f"<figcaption>{e(alt)}</figcaption></figure>")
            elif kind == "audio":
                parts += [f"<div class=\"clip\"><div>{e(Path(src).name)}</div><audio controls preload=\"auto\" "
                          f"src=\"{e(src)}\"></audio></div>" for src in args[0]]
        parts.append("</body>\n</html>\n")
        return "\n".join(parts)

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, args in self.blocks:
            if kind == "h2":
                lines += [f"## {args[0]}", ""]
            elif kind == "p":
                lines += [args[0], ""]
            elif kind == "table":
                header, rows, caption = args
                lines += [f"**{caption}**", "", "| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|"]
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                lines.append("")
            elif kind == "img":
                lines += [f"![{args[1]}]({args[0]})", ""]
            elif kind == "audio":
                lines += [" · ".join(f"[{Path(src).name}]({src})" for src in args[0]), ""]
        return "\n".join(lines)


def earlier_report_files(report: Path) -> list[Path]:
    """The files an earlier report listed in report/.files (paths inside report/ only)."""
    try:
        lines = (report / WRITTEN_LIST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [report / line for line in lines
            if line and not Path(line).is_absolute() and ".." not in Path(line).parts]


def write_report(ctx) -> tuple[Path, Path]:
    """Write RUN/report/report.html and report.md from ``ctx.results`` (a :class:`suite.stages.Context`)."""
    out, res, sizes = ctx.out, ctx.results, ctx.sizes
    report = out / "report"
    for path in earlier_report_files(report):  # rebuilt whole, so no stale file of ours is left behind
        path.unlink(missing_ok=True)
    (report / "audio").mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def target(name: str) -> Path:
        """report/<name>, listed in report/.files before it is written."""
        path = check_output(report / name, lambda _: False, overwrite=ctx.overwrite, option="report file")
        written.append(name)
        atomic_write_bytes(report / WRITTEN_LIST, "".join(f"{n}\n" for n in written).encode())
        return path

    def copy(src: Path, name: str) -> str:
        shutil.copyfile(src, target(name))
        return name

    state = json.loads((out / "stages.json").read_text())
    doc = Document("Mamba suite: main job report")
    total = sum(f["seconds"] for f in state["finished"].values())
    doc.para(f"Size preset {sizes.name!r} on {resolve_device(ctx.device)} (--device {ctx.device}); stages took "
             f"{total / 60:.1f} minutes in all. "
             "At the quick and default sizes every model trains for seconds to minutes on a CPU: the numbers show "
             "the pipeline working end to end, not the papers' results (run with --full on a GPU for those).")
    doc.table(["stage", "seconds"], [[name, f"{f['seconds']:.0f}"] for name, f in state["finished"].items()],
              "Time per stage")

    core = res["core"]
    doc.heading("Core: induction heads")
    doc.table(["test length", "accuracy"], [[k, _pct(v)] for k, v in core["accuracy"].items()],
              f"Induction-heads accuracy ({core['steps']} steps at length {core['train_len']}; "
              f"chance {_pct(core['chance'])})")
    doc.para(f"Step mode (one token at a time, the recurrent inference) agreed with the parallel forward on "
             f"{core['step_agree']}/{core['step_prompts']} fresh prompts of twice the training length; "
             f"{core['step_correct']} answered correctly.")

    doc.heading("Genomics: species classification of simulated great apes")
    pre, ft, cl = res["genomics-pretrain"], res["genomics-finetune"], res["genomics-classify"]
    doc.para(f"Pretraining ({sizes.lm_preset} model): validation {_num(pre['bits_per_base'])} bits per base "
             f"(2 bits is a uniform guess), perplexity {_num(pre['perplexity'])}. The held-out FASTA files hold "
             f"{res['genomics-data']['heldout_records']} records of {res['genomics-data']['heldout_length']:,} "
             f"bases from test chromosomes no model trained on.")
    doc.table(["window (bases)", "Mamba: test windows", "Mamba: held-out FASTA records (classify)",
               "6-mer naive Bayes: test windows"],
              [[f"{int(w):,}", _pct(ft["test_accuracy"][w]), _pct(cl["heldout_accuracy"].get(w)),
                _pct(cl["kmer_baseline_accuracy"].get(w))] for w in ft["test_accuracy"]],
              "Accuracy by window length (chance 20%)")
    widest = max(sizes.windows)
    metrics = json.loads((out / "genomics" / f"w{widest}" / "metrics.json").read_text())
    classes = metrics["classes"]
    doc.table(["true \\ predicted", *classes],
              [[c, *(str(n) for n in row)] for c, row in zip(classes, metrics["confusion_matrix"])],
              f"Confusion matrix, window {widest:,} (test windows)")
    doc.image(copy(out / "genomics" / "accuracy_vs_length.png", "accuracy_vs_length.png"),
              "Test accuracy against window length")
    doc.image(copy(out / "genomics" / f"w{widest}" / "confusion_matrix.png", "confusion_matrix.png"),
              f"Confusion matrix, window {widest:,}")

    doc.heading("Audio: SaShiMi-Mamba on spoken digits")
    train, gen, cls = res["audio-train"], res["audio-generate"], res["audio-classifier"]
    rows = res["audio-metrics"]["rows"]
    doc.para(f"Waveform model: {train['parameters']:,} parameters, {train['steps']} steps. Classifier behind the "
             f"metrics: test accuracy {_pct(cls['test_accuracy'])}. {gen['clips']} clips of {gen['seconds']:g} s "
             f"generated (zero-padded to 1 s for the classifier); their mean NLL under the model "
             f"{_num(gen['mean_nll'])} bits per sample. FID, IS, mIS, AM against the train split.")
    table = []
    for label, key, nll in (("train split (reference)", "train", None), ("test split (reference)", "test", None),
                            ("generated", "generated", train["valid_bits_per_sample"])):
        r = rows[key]
        table.append([label, _num(nll), _num(r["fid"], 2), _num(r["is"], 2), _num(r["mis"], 2), _num(r["am"], 2),
                      str(r["n_generated"])])
    doc.table(["clips", "NLL (bits/sample)", "FID ↓", "IS ↑", "mIS ↑", "AM ↓", "n"], table,
              "Generation metrics (NLL: the model's on validation clips)")
    doc.clips([copy(wav, f"audio/{wav.name}") for wav in sorted((out / "audio" / "samples").glob("*.wav"))])
    for kind in ("waveform", "spectrogram"):
        doc.image(copy(out / "audio" / f"generated_{kind}s.png", f"generated_{kind}s.png"), f"Generated clips: {kind}s")
        doc.image(copy(out / "audio" / f"test_{kind}s.png", f"test_{kind}s.png"), f"Test-split clips: {kind}s")

    doc.heading("Training curves")
    runs = [(out / d, label) for d, label in LOSS_RUNS]
    runs += [(out / "genomics" / f"w{w}", f"genomics: fine-tuning w{w}") for w in sizes.windows]
    doc.image(plot_losses(runs, target("loss_curves.png")).name, "Training loss of every run")

    html_path, md_path = target("report.html"), target("report.md")
    atomic_write_bytes(html_path, doc.html().encode())
    atomic_write_bytes(md_path, doc.markdown().encode())
    return html_path, md_path
