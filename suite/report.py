"""RUN/report/: report.html and report.md from the stages' results, with the plots and the generated clips beside
them (every link relative, every linked file copied into report/).

RUN/report/.files lists every file the report wrote (one path a line, relative to report/): a rebuild removes
those, and never a file someone else put in report/ (one in the way of the report's own is refused, unless the
main job runs with --overwrite)."""
from __future__ import annotations

import csv
import html
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ssm_core.train.checkpoint import atomic_write_bytes  # noqa: E402
from ssm_core.train.distributed import resolve_device  # noqa: E402
from ssm_core.utils.device import describe_device  # noqa: E402
from ssm_core.utils.outputs import check_output  # noqa: E402
from ssm_core.utils.plots import save_figure  # noqa: E402
from suite.stages import SPECIES  # noqa: E402

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


def plot_dna_accuracy(windows: list[str], mamba: dict, kmer: dict, read: list[str], read_by: str, chance: float,
                      out_png: Path) -> Path:
    """Test accuracy against window length: Mamba (hollow where the ``read_by``-base classifier read the window
    piece by piece) beside 6-mer naive Bayes and chance."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = [int(w) for w in windows]
    ax.plot(x, [100 * mamba[w] for w in windows], "-", color="C0", lw=1.2)
    for w in windows:
        ax.plot(int(w), 100 * mamba[w], "o", color="C0", mfc="white" if w in read else "C0")
    ax.plot([], [], "o-", color="C0", label="Mamba, fine-tuned at the window")
    if read:
        ax.plot([], [], "o", color="C0", mfc="white", label=f"Mamba, the {read_by}-base classifier read "
                                                            "window by window")
    ax.plot([int(w) for w in windows if w in kmer], [100 * kmer[w] for w in windows if w in kmer], "s--",
            color="C1", label="6-mer naive Bayes")
    ax.axhline(100 * chance, color="grey", ls=":", lw=1, label="chance")
    ax.set(xscale="log", xlabel="window (bases)", ylabel="test accuracy (%)", ylim=(0, 102),
           title="Species from simulated great-ape DNA")
    ax.set_xticks(x, [f"{w:,}" for w in x])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, out_png, dpi=100)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"


def against_chance(accuracy: float, chance: float, n: int) -> str:
    """"above chance", "at chance" or "below chance": whether ``accuracy`` on ``n`` items lies more than two
    standard errors of a guesser at ``chance`` away from it (a few items can sit far from chance by luck)."""
    margin = 2 * math.sqrt(chance * (1 - chance) / n)
    if accuracy > chance + margin:
        return "above chance"
    return "below chance" if accuracy < chance - margin else "at chance"


SIGNIFICANCE = 0.05  # the paired test's level: a difference with a larger p-value is called "level"


def paired_p_value(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test of two classifiers scored on the same items: were they equally good, the chance
    that the ``only_a + only_b`` items exactly one of them got right split at least this unevenly (binomial, 1/2).
    It reads only the items they disagree on, so it sees a small lead that two accuracies' standard errors hide."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def lead(mamba_only: int, baseline_only: int) -> int:
    """+1 if Mamba is ahead of the baseline on the same items, -1 if behind, 0 if level (the paired test's p-value
    at least SIGNIFICANCE). ``mamba_only``, ``baseline_only``: items only Mamba, only the baseline got right."""
    if paired_p_value(mamba_only, baseline_only) >= SIGNIFICANCE:
        return 0
    return 1 if mamba_only > baseline_only else -1


def ahead(name: str, accuracy: float, baseline_name: str, baseline: float, mamba_only: int,
          baseline_only: int) -> str:
    """Which of two accuracies on the same items is ahead, in percentage points, or "level" (``lead``), with the
    paired test's counts and p-value."""
    points = 100 * (accuracy - baseline)
    test = (f"right only for {name} on {mamba_only}, only for {baseline_name} on {baseline_only}: "
            f"p = {paired_p_value(mamba_only, baseline_only):.2g}")
    side = lead(mamba_only, baseline_only)
    if side == 0:
        return f"level: {points:+.1f} points ({test})"
    return f"{name if side > 0 else baseline_name} ahead by {abs(points):.1f} points ({test})"


def _windows(windows: list[str]) -> str:
    return ", ".join(f"{int(w):,}" for w in windows)


def _genomics_summary(windows: list[str], mamba: dict, kmer: dict, paired: dict, n_test: dict, chance: float) -> str:
    """In words: where Mamba is against chance, whether it rises with the window, where the baseline is ahead."""
    above = [w for w in windows if against_chance(mamba[w], chance, n_test[w]) == "above chance"]
    if len(above) == len(windows):
        parts = ["Mamba is above chance at every window"]
    elif above:
        parts = [f"Mamba is above chance at {_windows(above)} bases only"]
    else:
        parts = ["Mamba is not above chance at any window: at this size it has not learned the task"]
    trend = " → ".join(_pct(mamba[w]) for w in windows)
    rising = all(mamba[b] > mamba[a] for a, b in zip(windows, windows[1:]))
    parts.append(f"its accuracy {'rises' if rising else 'does not rise steadily'} with the window ({trend})")
    side = {w: lead(**paired[w]) for w in windows if w in paired}
    verdicts = {"ahead of": [w for w in side if side[w] > 0], "level with": [w for w in side if side[w] == 0],
                "behind": [w for w in side if side[w] < 0]}
    said = [f"{v} the 6-mer naive-Bayes baseline at {'every window' if len(ws) == len(side) else _windows(ws)}"
            for v, ws in verdicts.items() if ws]
    if said:
        parts.append("it is " + " and ".join(said) + f" (a paired test on the same test windows; level: p ≥ "
                     f"{SIGNIFICANCE:g})")
    return "; ".join(parts) + "."


def _classifier_source(cls: dict) -> str:
    """Where the metrics' classifier comes from, in words (stage audio-classifier's results)."""
    if "shipped" in cls:
        return (f"the digits classifier shipped with the suite (`{cls['shipped']}`, trained on other clips of the "
                f"built-in digits set: `ssm_core/pretrained/{cls['shipped']}/README.md`), not trained by this job")
    return "trained by this job on its train split"


def _audio_metric_notes(rows: dict, classifier_accuracy: float) -> list[str]:
    """One sentence per metric on what it can and cannot show here, read against the real test clips' row."""
    test, gen = rows["test"], rows["generated"]
    n = gen["n_generated"]
    weak = classifier_accuracy < 0.9
    lens = (f"The metrics see the clips through a classifier that is right on {_pct(classifier_accuracy)} of real "
            f"test clips" + (": a weak lens, so none of them can say whether the generated clips are intelligible "
                             "digits." if weak else "."))
    fid = (f"FID ({_num(gen['fid'], 1)} generated, {_num(test['fid'], 2)} for real test clips, the level real "
           f"speech reaches) measures how far "
           f"the generated clips' classifier features are from the training clips'; with {n} generated clips it is "
           f"biased upwards and ranks runs of one size against each other rather than against the papers.")
    scale = (f"IS ({_num(gen['is'], 2)} generated, {_num(test['is'], 2)} real) runs from 1 (no distinct digits "
             f"recognised) to about 10 (confident, balanced guesses over the ten digits; s4's definition, which the "
             f"papers use, can pass 10 on small sets)")
    if gen["is"] > test["is"]:
        inception = (f"{scale}; the generated clips score above real speech, so here it shows the classifier's "
                     f"confident guesses on clips unlike speech, not quality.")
    else:
        inception = (f"{scale}; below real speech's score, it says this classifier finds fewer confident, varied "
                     f"digits in the generated clips than in real ones, not which clips fail.")
    modified = (f"mIS ({_num(gen['mis'], 2)} generated, {_num(test['mis'], 2)} real) adds the spread within each "
                f"class and carries the same caveat as IS.")
    am = (f"AM ({_num(gen['am'], 2)} generated, {_num(test['am'], 2)} real; lower is better) grows both when the "
          f"clips favour a few digits and when the classifier is unsure of them, so it cannot tell those apart.")
    return [lens, fid, inception, modified, am]


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
    # each stage records the hardware it ran on (a resumed run may change machine); older records lack it
    hardware = sorted({f.get("hardware") or describe_device(resolve_device(ctx.device))
                       for f in state["finished"].values()})
    doc.para(f"Size {sizes.name!r} on {' and '.join(hardware)} (--device {ctx.device}); stages took "
             f"{total / 60:.1f} minutes in all. {sizes.purpose}")
    doc.table(["stage", "seconds", "ran on"],
              [[name, f"{f['seconds']:.0f}", f.get("hardware", "–")] for name, f in state["finished"].items()],
              "Time per stage")

    core = res["core"]
    samples = json.loads((out / "core" / "results.json").read_text()).get("samples", {})
    doc.heading("Core: induction heads")
    doc.table(["test length", "accuracy", "n", f"against chance ({_pct(core['chance'])})"],
              [[k, _pct(v), str(samples.get(k, "–")),
                against_chance(v, core["chance"], samples[k]) if k in samples else "–"]
               for k, v in core["accuracy"].items()],
              f"Induction-heads accuracy ({core['steps']} steps at length {core['train_len']}; "
              f"chance {_pct(core['chance'])})")
    doc.para(f"Step mode (one token at a time, the recurrent inference) agreed with the parallel forward on "
             f"{core['step_agree']}/{core['step_prompts']} fresh prompts of twice the training length; "
             f"{core['step_correct']} answered correctly.")

    doc.heading("Genomics: species classification of simulated great apes")
    pre, ft, cl = res["genomics-pretrain"], res["genomics-finetune"], res["genomics-classify"]
    data = res["genomics-data"]
    doc.para(f"Pretraining ({sizes.genomics.preset} model): validation {_num(pre['bits_per_base'])} bits per base "
             f"(2 bits is a uniform guess), perplexity {_num(pre['perplexity'])}. The held-out FASTA files hold "
             f"{data['heldout_records']} records of {data['heldout_length']:,} bases from test chromosomes no model "
             f"trained on. The DNA models start from this pretraining, not from the `dna-tiny` backbone shipped with "
             f"the suite: fine-tuned from it on real genomes, it gave no head start over training from scratch in "
             f"the suite's CPU benchmark (`benchmarks/results/genomics_finetune_cpu_cpu_2cores_x86_64.md`).")
    read = cl.get("read_accuracy", {})  # longer windows read by the first window's classifier
    windows = list(ft["test_accuracy"]) + list(read)
    chance = 1 / len(SPECIES)
    n_test = {w: json.loads((out / "genomics" / f"w{w}" / "metrics.json").read_text())["test_samples"]
              for w in ft["test_accuracy"]} | cl.get("read_test_windows", {})
    # a run from before the paired test kept no per-window predictions: its table says no verdict ("–")
    mamba, kmer, paired = ft["test_accuracy"] | read, cl["kmer_baseline_accuracy"], cl.get("paired", {})
    first = f"{int(cl.get('read_by', windows[0])):,}"  # the classifier that reads the longer windows
    if read:
        doc.para(f"A classifier is fine-tuned at each of {_windows(list(ft['test_accuracy']))} bases. The longer "
                 f"windows have none of their own: the {first}-base classifier reads each {first} bases at a time on "
                 f"both strands, as `classify` reads a long record; naive Bayes is trained at each length.")
    doc.table(["window (bases)", "test windows (n)", "Mamba", "Mamba's classifier", "6-mer naive Bayes",
               "which is ahead", "Mamba against chance", f"Mamba: held-out FASTA records (n={cl['heldout_records']})"],
              [[f"{int(w):,}", str(n_test[w]), _pct(mamba[w]),
                f"the {first}-base one, window by window" if w in read else "fine-tuned at this window",
                _pct(kmer.get(w)),
                ahead("Mamba", mamba[w], "naive Bayes", kmer[w], **paired[w]) if w in paired else "–",
                against_chance(mamba[w], chance, n_test[w]), _pct(cl["heldout_accuracy"].get(w))] for w in windows],
              f"Accuracy by window length (chance {_pct(chance)}; Mamba and naive Bayes on the same test windows)")
    doc.para(_genomics_summary(windows, mamba, kmer, paired, n_test, chance))
    widest = max(sizes.genomics.windows)
    metrics = json.loads((out / "genomics" / f"w{widest}" / "metrics.json").read_text())
    classes = metrics["classes"]
    doc.table(["true \\ predicted", *classes],
              [[c, *(str(n) for n in row)] for c, row in zip(classes, metrics["confusion_matrix"])],
              f"Confusion matrix, window {widest:,} (test windows)")
    doc.image(plot_dna_accuracy(windows, mamba, kmer, list(read), first, chance, target("accuracy_vs_length.png")).name,
              "Test accuracy against window length, beside 6-mer naive Bayes")
    doc.image(copy(out / "genomics" / f"w{widest}" / "confusion_matrix.png", "confusion_matrix.png"),
              f"Confusion matrix, window {widest:,}")

    doc.heading("Audio: SaShiMi-Mamba on spoken digits")
    train, gen, cls = res["audio-train"], res["audio-generate"], res["audio-classifier"]
    rows = res["audio-metrics"]["rows"]
    n_clips_test = rows["test"]["n_generated"]  # the test split, which the classifier's accuracy is measured on
    bits = train["valid_bits_per_sample"]
    doc.para(f"Waveform model: {train['parameters']:,} parameters, {train['steps']} steps; validation NLL "
             f"{_num(bits)} bits per sample, "
             f"{'below' if bits is not None and bits < 8 else 'not below'} the 8 bits of a uniform guess over the "
             f"256 mu-law codes. Classifier behind the metrics: {_classifier_source(cls)}; test accuracy "
             f"{_pct(cls['test_accuracy'])} on {n_clips_test} clips of the test split, "
             f"{against_chance(cls['test_accuracy'], 0.1, n_clips_test)} (10%). {gen['clips']} clips of {gen['seconds']:g} s generated (zero-padded to 1 s for the "
             f"classifier); their mean NLL under the model {_num(gen['mean_nll'])} bits per sample. FID, IS, mIS, "
             f"AM against the train split.")
    table = []
    for label, key, nll in (("train split (reference)", "train", None), ("test split (reference)", "test", None),
                            ("generated", "generated", train["valid_bits_per_sample"])):
        r = rows[key]
        table.append([label, _num(nll), _num(r["fid"], 2), _num(r["is"], 2), _num(r["mis"], 2), _num(r["am"], 2),
                      str(r["n_generated"])])
    doc.table(["clips", "NLL (bits/sample)", "FID ↓", "IS ↑", "mIS ↑", "AM ↓", "n"], table,
              "Generation metrics (NLL: the model's on validation clips)")
    for sentence in _audio_metric_notes(rows, cls["test_accuracy"]):
        doc.para(sentence)
    doc.clips([copy(wav, f"audio/{wav.name}") for wav in sorted((out / "audio" / "samples").glob("*.wav"))])
    for kind in ("waveform", "spectrogram"):
        doc.image(copy(out / "audio" / f"generated_{kind}s.png", f"generated_{kind}s.png"), f"Generated clips: {kind}s")
        doc.image(copy(out / "audio" / f"test_{kind}s.png", f"test_{kind}s.png"), f"Test-split clips: {kind}s")

    doc.heading("Training curves")
    shipped = "shipped" in res["audio-classifier"]  # no classifier run of this job's own
    runs = [(out / d, label) for d, label in LOSS_RUNS if not (shipped and d == "audio/classifier")]
    runs += [(out / "genomics" / f"w{w}", f"genomics: fine-tuning w{w}") for w in sizes.genomics.windows]
    doc.image(plot_losses(runs, target("loss_curves.png")).name, "Training loss of every run")

    html_path, md_path = target("report.html"), target("report.md")
    atomic_write_bytes(html_path, doc.html().encode())
    atomic_write_bytes(md_path, doc.markdown().encode())
    return html_path, md_path
