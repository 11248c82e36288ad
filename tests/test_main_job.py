"""The main job (`python -m suite run`) at its quick size: every stage runs, the report holds the tables and its
links resolve, a rerun resumes at the first unfinished stage, and the page renders in headless Chromium."""
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from scipy.stats import binomtest  # the paired test's reference

from ssm_core.utils.device import describe_device
from suite.cli import main
from suite.report import ahead, against_chance, lead, paired_p_value
from suite.stages import SIZES, STAGES, StageError, load_state


class Links(HTMLParser):
    """Every src/href of a page, and the text of its table captions."""

    def __init__(self):
        super().__init__()
        self.links, self.captions, self._in_caption = [], [], False

    def handle_starttag(self, tag, attrs):
        self.links += [(tag, value) for name, value in attrs if name in ("src", "href")]
        self._in_caption = tag == "caption"

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)
            self._in_caption = False


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("main") / "run"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(["run", "--out", str(out), "--size", "quick", "--device", "cpu"]) == 0
    return out


def test_every_stage_finishes_and_the_report_links_resolve(run):
    state = json.loads((run / "stages.json").read_text())
    assert list(state["finished"]) == [s.name for s in STAGES]
    assert state["size"] == "quick"
    report = run / "report"
    page = (report / "report.html").read_text()
    parser = Links()
    parser.feed(page)
    captions = " | ".join(parser.captions)
    for caption in ("Accuracy by window length", "Confusion matrix", "Generation metrics", "Induction-heads"):
        assert caption in captions
    tags = [tag for tag, _ in parser.links]
    assert tags.count("audio") == SIZES["quick"].audio.n_clips
    assert tags.count("img") >= 6  # accuracy vs length, confusion, 4 clip grids, loss curves
    for tag, link in parser.links:
        assert not link.startswith(("/", "file:", "http")), f"<{tag}> link {link} is not relative"
        assert (report / link).is_file(), f"<{tag}> link {link} does not resolve in {report}"
    # the window table has one row per window, the metrics table the two reference rows and the generated one
    for window in SIZES["quick"].genomics.windows:
        assert f"<td>{window:,}</td>" in page
    for row in ("train split (reference)", "test split (reference)", "generated"):
        assert f"<td>{row}</td>" in page
    markdown = (report / "report.md").read_text()
    assert "| true \\ predicted |" in markdown and "(loss_curves.png)" in markdown
    # the accuracy on held-out FASTA files is what classify's TSV says
    calls = (run / "genomics" / f"calls_w{SIZES['quick'].genomics.windows[0]}.tsv").read_text().splitlines()[1:]
    right = sum(line.split("\t")[0].split("/")[-1].split(".")[0] == line.split("\t")[3] for line in calls)
    heldout = state["finished"]["genomics-classify"]["results"]["heldout_accuracy"]
    assert heldout[str(SIZES["quick"].genomics.windows[0])] == right / len(calls)


def markdown_table(markdown: str, caption: str) -> list[dict[str, str]]:
    """The rows of the report.md table whose bold caption starts with ``caption``, as {header: cell}."""
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{caption}"))
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    rows = []
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_the_report_shows_the_numbers_of_stages_json(run):
    """Every number the report prints is the one stages.json (and the runs it names) holds, and each verdict
    (which is ahead, against chance) follows from those numbers."""
    state = json.loads((run / "stages.json").read_text())
    res = {name: f["results"] for name, f in state["finished"].items()}
    markdown = (run / "report" / "report.md").read_text()
    hardware = {f["hardware"] for f in state["finished"].values()}
    assert hardware == {describe_device("cpu")} and f"on {describe_device('cpu')} (--device cpu)" in markdown
    times = markdown_table(markdown, "Time per stage")
    assert {r["stage"]: r["seconds"] for r in times} == {
        n: f"{f['seconds']:.0f}" for n, f in state["finished"].items() if n != "report"}

    core = res["core"]
    induction = markdown_table(markdown, "Induction-heads accuracy")
    assert [(r["test length"], r["accuracy"]) for r in induction] == [(k, pct(v)) for k, v in core["accuracy"].items()]
    for r in induction:
        assert r[f"against chance ({pct(core['chance'])})"] == against_chance(
            core["accuracy"][r["test length"]], core["chance"], int(r["n"]))

    finetune, classify = res["genomics-finetune"]["test_accuracy"], res["genomics-classify"]
    rows = markdown_table(markdown, "Accuracy by window length")
    sizes = SIZES["quick"].genomics
    assert [r["window (bases)"] for r in rows] == [f"{w:,}" for w in sizes.windows + sizes.read_windows]
    assert sizes.read_windows and set(classify["read_accuracy"]) == set(map(str, sizes.read_windows))
    for r, window in zip(rows, map(str, sizes.windows + sizes.read_windows)):
        read = window in classify["read_accuracy"]
        mamba = classify["read_accuracy"][window] if read else finetune[window]
        kmer = classify["kmer_baseline_accuracy"][window]
        assert (r["Mamba"], r["6-mer naive Bayes"]) == (pct(mamba), pct(kmer))
        assert r["Mamba's classifier"] == (f"the {sizes.windows[0]:,}-base one, window by window" if read
                                           else "fine-tuned at this window")
        assert r[f"Mamba: held-out FASTA records (n={classify['heldout_records']})"] == (
            "–" if read else pct(classify["heldout_accuracy"][window]))
        assert r["test windows (n)"] == str(SIZES["quick"].genomics.ft_test)
        verdict, counts = r["which is ahead"], classify["paired"][window]
        assert verdict == ahead("Mamba", mamba, "naive Bayes", kmer, **counts)
        assert verdict.startswith({1: "Mamba ahead", 0: "level", -1: "naive Bayes ahead"}[lead(**counts)])
        # the counts are the two accuracies' difference: windows only Mamba got right minus those only NB did
        assert counts["mamba_only"] - counts["baseline_only"] == round((mamba - kmer) * sizes.ft_test)
        assert r["Mamba against chance"] == against_chance(mamba, 0.2, SIZES["quick"].genomics.ft_test)

    audio = markdown_table(markdown, "Generation metrics")
    metrics = res["audio-metrics"]["rows"]
    for r, key in zip(audio, ("train", "test", "generated")):
        assert [r[h] for h in ("FID ↓", "IS ↑", "mIS ↑", "AM ↓", "n")] == [
            f"{metrics[key][m] + 0.0:.2f}" for m in ("fid", "is", "mis", "am")] + [str(metrics[key]["n_generated"])]
    assert f"test accuracy {pct(res['audio-classifier']['test_accuracy'])} on" in markdown
    # the quick size scores with the shipped classifier (as the default size does), on clips it never trained on
    assert res["audio-classifier"]["shipped"] == "digits-classifier" and "`digits-classifier`" in markdown
    assert json.loads((run / "audio" / "digits" / "synthesis.json").read_text())["seed"] == 2
    assert res["audio-classifier"]["test_accuracy"] == metrics["test"]["generated_accuracy"]
    assert f"{res['audio-train']['parameters']:,} parameters, {res['audio-train']['steps']} steps" in markdown
    for metric in ("FID (", "IS (", "mIS (", "AM ("):  # one sentence per audio metric, each beside the real clips'
        assert sum(line.startswith(metric) for line in markdown.split("\n")) == 1, metric


def test_a_size_that_trains_its_classifier_scores_with_it(run, tmp_path):
    """h100-20min and full train the metrics' classifier (classifier_preset set): the classifier stage trains it on
    the job's digits and the metrics stage scores with that run, not the shipped classifier."""
    import dataclasses

    from suite.stages import Context, stage_audio_classifier, stage_audio_metrics
    shutil.copytree(run / "audio", tmp_path / "audio", ignore=shutil.ignore_patterns("classifier*", "metrics_*"))
    quick = SIZES["quick"]
    sizes = dataclasses.replace(quick, audio=dataclasses.replace(quick.audio, classifier_preset="tiny",
                                                                   classifier_epochs=1))
    ctx = Context(tmp_path, sizes, "cpu", {})
    trained = stage_audio_classifier(ctx)
    assert "shipped" not in trained and (tmp_path / "audio" / "classifier" / "model.safetensors").is_file()
    rows = stage_audio_metrics(ctx)["rows"]
    assert rows["test"]["generated_accuracy"] == pytest.approx(trained["test_accuracy"])


def test_a_run_from_before_the_paired_test_gets_a_report_without_verdicts(run, tmp_path):
    """A run directory whose classify stage predates the paired counts (no per-window predictions) still gets its
    report, with no "which is ahead" verdict rather than a guess."""
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns(".lock"))
    state = json.loads((old / "stages.json").read_text())
    del state["finished"]["report"]
    del state["finished"]["genomics-classify"]["results"]["paired"]
    (old / "stages.json").write_text(json.dumps(state))
    assert main(["run", "--out", str(old), "--size", "quick"]) == 0
    rows = markdown_table((old / "report" / "report.md").read_text(), "Accuracy by window length")
    assert rows and all(r["which is ahead"] == "–" for r in rows)


def test_verdicts_against_chance_and_baseline():
    assert against_chance(0.30, 0.2, 200) == "above chance"      # 2 standard errors at n=200: 5.7 points
    assert against_chance(0.24, 0.2, 200) == "at chance"
    assert against_chance(0.10, 0.2, 200) == "below chance"
    assert against_chance(0.40, 0.2, 10) == "at chance"          # 10 records: 25 points
    # the paired test reads the windows only one classifier got right: 38 against 21 is a lead (p = 0.036), 20
    # against 14 is not (p = 0.39), whatever the accuracies
    assert paired_p_value(38, 21) == pytest.approx(binomtest(21, 59).pvalue, rel=1e-12)
    assert paired_p_value(20, 14) == pytest.approx(binomtest(14, 34).pvalue, rel=1e-12)
    assert ahead("Mamba", 0.911, "naive Bayes", 0.894, 38, 21) == (
        "Mamba ahead by 1.7 points (right only for Mamba on 38, only for naive Bayes on 21: p = 0.036)")
    assert ahead("Mamba", 0.667, "naive Bayes", 0.661, 20, 14).startswith("level: +0.6 points")
    assert ahead("Mamba", 0.803, "naive Bayes", 0.994, 3, 199).startswith("naive Bayes ahead by 19.1 points")
    assert paired_p_value(0, 0) == 1.0 and paired_p_value(5, 0) == pytest.approx(2 / 32)
    assert lead(0, 0) == 0 and lead(30, 10) == 1 and lead(10, 30) == -1 and lead(6, 0) == 1 and lead(5, 0) == 0


def test_rerun_resumes_at_the_first_unfinished_stage(run, capsys):
    state_path = run / "stages.json"
    state = json.loads(state_path.read_text())
    for name in ("audio-metrics", "report"):
        del state["finished"][name]
    state_path.write_text(json.dumps(state))
    kept = {n: f["seconds"] for n, f in state["finished"].items()}
    core_mtime = (run / "core" / "results.json").stat().st_mtime_ns
    metrics_mtime = (run / "audio" / "metrics_generated.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "--out", str(run), "--size", "quick", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in kept:
        assert f"{name}: finished earlier" in printed
    assert "audio: FID, IS, mIS, AM" in printed and "$ python -m genomics" not in printed
    after = json.loads(state_path.read_text())
    assert list(after["finished"]) == [s.name for s in STAGES]
    assert {n: after["finished"][n]["seconds"] for n in kept} == kept
    assert (run / "core" / "results.json").stat().st_mtime_ns == core_mtime
    assert (run / "audio" / "metrics_generated.json").stat().st_mtime_ns > metrics_mtime


def test_the_report_rebuilt_removes_only_the_files_it_made(run, capsys):
    report = run / "report"
    (report / "notes.txt").write_text("mine\n")
    (report / "old_plot.png").write_bytes(b"an earlier report's plot")
    with open(report / ".files", "a") as f:
        f.write("old_plot.png\n../stages.json\n")  # a path outside report/ is never removed
    in_the_way = report / "loss_curves.png"
    listed = (report / ".files").read_text().splitlines()
    (report / ".files").write_text("".join(f"{n}\n" for n in listed if n != in_the_way.name))
    state_path = run / "stages.json"
    state = json.loads(state_path.read_text())
    del state["finished"]["report"]
    state_path.write_text(json.dumps(state))
    assert main(["run", "--out", str(run), "--size", "quick", "--device", "cpu"]) == 1  # a file it did not list
    assert f"error: report file {in_the_way}: an existing file" in capsys.readouterr().err
    in_the_way.unlink()
    assert main(["run", "--out", str(run), "--size", "quick", "--device", "cpu"]) == 0
    assert (report / "notes.txt").read_text() == "mine\n" and not (report / "old_plot.png").exists()
    assert state_path.is_file() and (report / "report.html").is_file() and in_the_way.is_file()


def test_a_folder_that_is_not_a_main_job_run_is_refused(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine\n")
    assert main(["run", "--out", str(tmp_path), "--size", "quick", "--device", "cpu"]) == 1
    assert f"error: --out {tmp_path}: an existing folder that this command did not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_a_second_main_job_on_the_same_run_is_refused(tmp_path, capsys):
    from ssm_core.utils.dirlock import DirectoryLock

    with DirectoryLock(tmp_path, "main job run"):
        assert main(["run", "--out", str(tmp_path), "--size", "quick", "--device", "cpu"]) == 1
    assert f"error: main job run {tmp_path} is in use by process {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "stages.json").exists()


def test_a_training_run_cut_short_resumes_from_its_last_checkpoint(run, capfd):
    """As if killed between the waveform run's step-3 checkpoint and its end: the stage continues from step 3."""
    sashimi = run / "audio" / "sashimi"
    last = sorted((sashimi / "checkpoints").glob("step-*.ckpt"))
    assert [p.name for p in last[-2:]] == ["step-00000003.ckpt", "step-00000004.ckpt"]
    for path in (last[-1], sashimi / "metrics.json", sashimi / "model.safetensors"):
        path.unlink()
    state_path = run / "stages.json"
    state = json.loads(state_path.read_text())
    names = [s.name for s in STAGES]
    state["finished"] = {n: f for n, f in state["finished"].items() if names.index(n) < names.index("audio-train")}
    state_path.write_text(json.dumps(state))
    capfd.readouterr()
    assert main(["run", "--out", str(run), "--size", "quick", "--device", "cpu"]) == 0
    printed = "".join(capfd.readouterr())
    assert f"resuming {sashimi} from step-00000003.ckpt (step 3)" in printed
    assert json.loads((sashimi / "metrics.json").read_text())["steps"] == SIZES["quick"].audio.steps


def test_a_stage_cut_short_counts_the_time_of_every_invocation(tmp_path, monkeypatch):
    """A stage interrupted (Ctrl-C) keeps the seconds it ran in stages.json; when a later invocation finishes it,
    its recorded seconds are both invocations' time."""
    import time

    import suite.stages
    calls = []

    def slow_stage(ctx):
        calls.append(1)
        time.sleep(0.3)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {}
    stage = suite.stages.STAGES[0]
    monkeypatch.setattr(suite.stages, "STAGES", [type(stage)(stage.name, stage.title, slow_stage)])
    with pytest.raises(KeyboardInterrupt):
        suite.stages.run_suite(tmp_path, SIZES["quick"], "cpu")
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["finished"] == {} and state["unfinished_seconds"][stage.name] >= 0.3
    suite.stages.run_suite(tmp_path, SIZES["quick"], "cpu")
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["finished"][stage.name]["seconds"] >= 0.6 and state["unfinished_seconds"] == {}


def test_a_run_of_another_size_is_refused(run):
    with pytest.raises(StageError, match="size 'quick', not 'default'"):
        load_state(run, SIZES["default"], "cpu")


def test_gpu_sizes_need_a_gpu_and_a_gpu_user_hears_of_them(tmp_path, capsys, monkeypatch):
    import torch

    import suite.stages

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--size", "h100-20min"]) == 1
    assert "error: --size h100-20min is made for a GPU" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--size", "quick", "--device", "cuda"]) == 1
    assert "error: --device cuda was requested but no CUDA GPU is available" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(suite.stages, "run_suite", lambda *args, **kwargs: {})
    assert main(["run", "--out", str(out)]) == 0
    assert "`--size h100-20min`" in capsys.readouterr().out


def test_the_gpu_size_fits_its_budget():
    """h100-20min's stage estimates are now the stage times measured on an H100 (suite/stages.py,
    benchmarks/results/main_job_h100-20min_cuda_H100/stages.json): in whole seconds each equals that run's, and
    the sum stays within the size's 20 minutes; and every window gets whole windows per step."""
    size = SIZES["h100-20min"]
    measured = json.loads((Path(__file__).parents[1] / "benchmarks/results/main_job_h100-20min_cuda_H100"
                           / "stages.json").read_text())["finished"]
    assert {name: round(seconds) for name, seconds in size.estimates} == {
        name: round(stage["seconds"]) for name, stage in measured.items()}
    assert sum(seconds for _, seconds in size.estimates) <= 20 * 60
    assert {name for name, _ in size.estimates} == {s.name for s in STAGES}
    assert all(size.genomics.ft_bases // window >= 1 for window in size.genomics.windows)
    assert size.genomics.heldout_length >= max(size.genomics.windows)


PROBE = """
<script>
// After load, record whether every image decoded and every audio element loaded its clip.
window.addEventListener("load", () => {
  const audios = [...document.querySelectorAll("audio")];
  const settle = () => {
    const out = document.createElement("pre");
    out.id = "probe";
    out.textContent = JSON.stringify({
      images: [...document.images].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth})),
      audio: audios.map(a => ({src: a.getAttribute("src"), ready: a.readyState, error: a.error && a.error.code,
                               duration: a.duration})),
      tables: document.querySelectorAll("table").length});
    document.body.appendChild(out);
  };
  let left = audios.length;
  if (!left) return settle();
  audios.forEach(a => {
    const done = () => { if (--left === 0) settle(); };
    if (a.readyState >= 1 || a.error) done();
    else { a.addEventListener("loadedmetadata", done, {once: true}); a.addEventListener("error", done, {once: true}); }
  });
});
</script>
"""


def test_report_renders_in_headless_chromium(run, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page check needs it")
    report = run / "report"
    probe = report / "probe.html"  # beside the report, so its relative links resolve the same way
    probe.write_text((report / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    try:
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
             "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="probe"' in dom, f"the probe script did not finish; stderr: {result.stderr[-2000:]}"
    found = json.loads(dom.split('id="probe">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"')
                       .replace("&amp;", "&"))
    assert found["tables"] >= 5
    assert found["images"] and all(i["width"] > 0 for i in found["images"]), found["images"]
    assert len(found["audio"]) == SIZES["quick"].audio.n_clips
    for clip in found["audio"]:
        assert clip["error"] is None and clip["ready"] >= 1 and clip["duration"] > 0, clip


def test_every_size_names_presets_of_the_tools():
    from audio.train import ClassifierExperiment, WaveformExperiment
    from genomics.models import PRESETS as DNA_PRESETS
    from ssm_core.synthetic.runner import SyntheticExperiment

    for size in SIZES.values():
        assert "induction" in SyntheticExperiment.PRESETS[size.core.preset]
        assert size.genomics.preset in DNA_PRESETS
        assert size.audio.preset in WaveformExperiment.PRESETS
        if size.audio.classifier_preset is None:  # the shipped classifier, which trained on seed 0's clips
            assert size.audio.digits_seed != 0, size.name
        else:
            assert size.audio.classifier_preset in ClassifierExperiment.PRESETS
