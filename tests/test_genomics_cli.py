"""The genomics model side end to end on generated FASTA files: presets, pretrain (sequence-length warmup, loss on
bases only), finetune, classify (TSV/JSON contract, windows and aggregation, chunked reading), every bad-input
case, and a tiny fine-tune that beats chance on held-out windows."""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import bgzf

from genomics import cli
from genomics.classify import SpeciesClassifier, window_starts
from genomics.errors import GenomicsInputError
from genomics.models import load_run_model, parameter_count, preset_config
from genomics.pretrain import StagedWindows, length_schedule, next_base_nll
from genomics.tokenizer import A, N, PAD, T
from ssm_core import MambaLMHeadModel
from fasta_text import write_fasta

SPECIES = ("ape1", "ape2", "ape3", "ape4", "ape5")
APES = ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"]  # the workspace's classes


def run_cli(*args: str) -> int:
    return cli.main([str(a) for a in args])


def error_line(stderr: str) -> str:
    """The last stderr line (progress and index notes come before it); it must be the error message."""
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


def species_genomes(directory: Path, seed: int = 0, length: int = 40_000) -> Path:
    """Five 'species', each an order-1 Markov chain with its own transition table (learnable from a hundred
    bases), with records chr1 .. chr13 so that the HyenaDNA chromosome split applies."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for s, name in enumerate(SPECIES):
        table = rng.dirichlet(np.full(4, 0.7), size=4)
        records = {}
        for chrom in range(1, 14):
            n = length // 13
            seq = np.empty(n, dtype=np.int64)
            seq[0] = rng.integers(4)
            draws = rng.random(n)
            cdf = np.cumsum(table, axis=1)
            for i in range(1, n):
                seq[i] = min(int(np.searchsorted(cdf[seq[i - 1]], draws[i])), 3)
            records[f"chr{chrom}"] = "".join("ACGT"[b] for b in seq)
        write_fasta(directory / f"{name}.fa", records)
    return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Simulated apes (tiny), a pretraining run and a fine-tuning run initialised from it (a few steps each)."""
    root = tmp_path_factory.mktemp("genomics_cli")
    apes = root / "apes"
    assert run_cli("simulate", "--out", apes, "--size", "tiny", "--seed", "3") == 0
    lm = root / "lm"
    assert run_cli("pretrain", "--fasta-dir", apes, "--out", lm, "--seqlen", 64, "--warmup-start", 16,
                   "--steps", 8, "--batch-size", 4, "--device", "cpu", "--set", "data.valid_samples=4") == 0
    ft = root / "ft"
    assert run_cli("finetune", "--fasta-dir", apes, "--out", ft, "--init", lm, "--window", 96, "--steps", 4,
                   "--batch-size", 4, "--valid-samples", 8, "--test-samples", 20, "--device", "cpu") == 0
    return {"root": root, "apes": apes, "lm": lm, "ft": ft}


# --- presets, schedule, loss ---------------------------------------------------------------------------------


def test_presets_match_the_papers_sizes(capsys):
    assert abs(parameter_count(preset_config("1.4m")) - 1.4e6) / 1.4e6 < 0.02
    assert abs(parameter_count(preset_config("7m")) - 7.0e6) / 7.0e6 < 0.02
    assert preset_config("7m").n_layer == 16 and preset_config("7m").d_model == 256
    assert run_cli("presets") == 0
    out = capsys.readouterr().out
    assert "1,401,472" in out and "7,012,608" in out


def test_experiments_built_from_a_preset_carry_its_model_and_name():
    from genomics.finetune import FinetuneExperiment
    from genomics.pretrain import PretrainExperiment

    pre = PretrainExperiment.from_preset("1.4m")
    assert pre.preset == "1.4m" and pre.model == preset_config("1.4m") and pre.model.num_classes == 0
    ft = FinetuneExperiment.from_preset("7m", init=None)
    assert ft.preset == "7m" and ft.model.d_model == 256 and ft.model.num_classes == 2
    assert ft.train == FinetuneExperiment().train          # only the model and its name come from the preset
    with pytest.raises(GenomicsInputError, match="unknown model preset"):
        preset_config("13b")


def test_length_schedule_doubles_up_to_the_target():
    stages = length_schedule(1000, 1024, 128, 0.5)
    assert [length for _, length in stages] == [128, 256, 512, 1024]
    assert [first for first, _ in stages] == [0, 166, 332, 498]
    assert length_schedule(1000, 1024, 2048, 0.5) == [(0, 1024)]  # warmup start beyond the target: none
    assert length_schedule(1000, 1024, 128, 0.0) == [(0, 1024)]
    with pytest.raises(GenomicsInputError, match="power of two"):
        length_schedule(1000, 1000, 128, 0.5)


def test_staged_windows_cut_each_window_into_the_stage_length():
    windows = [torch.arange(i * 64, (i + 1) * 64) for i in range(40)]
    staged = StagedWindows(windows, batch_size=4, schedule=[(0, 16), (5, 32), (8, 64)], seqlen=64)
    assert staged[0].shape == (4, 16) and torch.equal(staged[0].flatten(), windows[0])
    assert staged[19].shape == (4, 16)  # step 4
    assert staged[20].shape == (2, 32) and torch.equal(staged[20].flatten(), windows[20])  # step 5
    assert staged[39].shape == (1, 64)


def test_next_base_loss_scores_bases_only_against_a_float64_reference():
    torch.manual_seed(0)
    model = MambaLMHeadModel(preset_config("tiny")).double()
    tokens = torch.randint(A, T + 1, (3, 40))
    tokens[0, :5] = PAD  # left padding
    tokens[1, 10:14] = N  # an assembly gap
    with torch.no_grad():
        nll, scored = next_base_nll(model, tokens)
        logits = model(tokens[:, :-1])
    expected_scored = ((tokens[:, 1:] >= A) & (tokens[:, 1:] <= T))
    assert torch.equal(scored, expected_scored)
    assert not scored[0, :4].any() and not scored[1, 9:13].any()
    for b in range(3):
        for t in range(39):
            if scored[b, t]:
                base_logits = logits[b, t, A:T + 1]
                reference = -(base_logits[tokens[b, t + 1] - A] - torch.logsumexp(base_logits, 0))
                assert math.isclose(float(nll[b, t]), float(reference), rel_tol=1e-9, abs_tol=1e-12)
            else:
                assert nll[b, t] == 0


# --- the pipeline ---------------------------------------------------------------------------------------------


def test_pretrain_and_finetune_write_their_run_directories(workspace):
    lm, ft = workspace["lm"], workspace["ft"]
    for run in (lm, ft):
        for name in ("config.json", "model.safetensors", "model.json", "metrics.csv", "metrics.json"):
            assert (run / name).is_file(), f"{run.name}/{name} missing"
        assert list((run / "checkpoints").glob("step-*.ckpt")) and list((run / "plots").glob("*.png"))
    pre = json.loads((lm / "metrics.json").read_text())
    assert pre["schedule"] == [[0, 16], [2, 32], [4, 64]]  # 8 steps, half of them warming up
    assert 0 < pre["valid"]["bits_per_base"] < 3 and math.isclose(
        pre["valid"]["perplexity"], 2 ** pre["valid"]["bits_per_base"], rel_tol=1e-6)
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["classes"] == ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"]
    assert metrics["window"] == 96  # 4 steps learn nothing yet: that it learns is the last test's job
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == metrics["test_samples"] == 20
    assert math.isclose(np.trace(matrix) / matrix.sum(), metrics["test_accuracy"])
    assert (ft / "confusion_matrix.png").stat().st_size > 1000
    # the backbone really came from the pretraining run (the head is new)
    from ssm_core import load_model
    pretrained, tuned = load_model(lm), load_model(ft)
    assert tuned.config.d_model == pretrained.config.d_model and tuned.config.num_classes == 5


def test_finetune_resumes_with_more_steps(workspace, tmp_path, capsys):
    run = tmp_path / "ft"
    args = ["finetune", "--fasta-dir", workspace["apes"], "--out", run, "--window", 64, "--batch-size", 2,
            "--valid-samples", 4, "--test-samples", 4, "--device", "cpu"]
    assert run_cli(*args, "--steps", 2) == 0
    assert run_cli(*args, "--steps", 2) == 1  # a used RUN without --resume is refused
    assert "pass --resume" in error_line(capsys.readouterr().err)
    assert run_cli(*args, "--steps", 4, "--resume") == 0
    assert "from step-00000002.ckpt (step 2)" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["step-00000002.ckpt",
                                                                           "step-00000004.ckpt"]


def test_finetune_continues_from_a_classifier_run_head_included(workspace, tmp_path, capsys):
    """--init with a fine-tuning run of the same classes starts from its whole classifier (e.g. a longer window);
    with other classes it is refused, naming both class lists."""
    from genomics.models import load_run_model

    run = tmp_path / "longer"
    assert run_cli("finetune", "--fasta-dir", workspace["apes"], "--out", run, "--init", workspace["ft"],
                   "--window", 192, "--steps", 1, "--lr", 1e-12, "--batch-size", 2, "--valid-samples", 4,
                   "--test-samples", 4, "--device", "cpu") == 0
    before, after = load_run_model(workspace["ft"]).state_dict(), load_run_model(run).state_dict()
    assert set(before) == set(after) and any(k.startswith("head") for k in after)
    # the pooled features' running statistics came along and went on counting (one step of one micro-batch)
    assert int(after["standardize.batches"]) == int(before["standardize.batches"]) + 1
    for key in before:  # lr 1e-12: one step moves nothing visible, so every weight (the head too) was loaded
        if not key.startswith("standardize."):
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-6, msg=key)
    fewer = tmp_path / "four_species"
    fewer.mkdir()
    for fasta in sorted(workspace["apes"].glob("*.fa"))[:4]:
        (fewer / fasta.name).write_bytes(fasta.read_bytes())
    assert run_cli("finetune", "--fasta-dir", fewer, "--out", tmp_path / "other", "--init", workspace["ft"],
                   "--steps", 1, "--device", "cpu") == 1
    message = error_line(capsys.readouterr().err)
    assert "a classifier of the classes" in message and "orangutan" in message


def test_finetune_starts_from_the_shipped_backbone_unless_told_otherwise(workspace, tmp_path):
    from ssm_core import from_pretrained

    common = ["--fasta-dir", workspace["apes"], "--window", 64, "--steps", 1, "--batch-size", 2, "--lr", "1e-9",
              "--valid-samples", 4, "--test-samples", 4, "--device", "cpu"]
    shipped = from_pretrained("dna-tiny")  # by name, from the package
    assert run_cli("finetune", "--out", tmp_path / "default", *common) == 0
    assert run_cli("finetune", "--out", tmp_path / "scratch", *common, "--init", "none") == 0
    assert run_cli("finetune", "--out", tmp_path / "preset", *common, "--preset", "tiny") == 0
    configs = {run: json.loads((tmp_path / run / "config.json").read_text()) for run in ("default", "scratch",
                                                                                         "preset")}
    assert configs["default"]["init"] == "dna-tiny"
    assert configs["scratch"]["init"] is None and configs["preset"]["init"] is None

    def embedding(run):
        return load_run_model(tmp_path / run).backbone.embedding.weight

    # one step at lr 1e-9 leaves the shipped backbone's weights where they were; from scratch they are others
    torch.testing.assert_close(embedding("default"), shipped.backbone.embedding.weight, rtol=0, atol=1e-6)
    assert (embedding("scratch") - shipped.backbone.embedding.weight).abs().max() > 1e-2


def test_finetune_takes_the_cpu_recipe_on_a_cpu_unless_told_otherwise(workspace, tmp_path, monkeypatch):
    """Without --recipe, a CPU run gets the cpu recipe (400 steps of 16 windows at lr 3e-3, mean pooling, 10
    minutes); --recipe gpu the paper's; explicit flags override either."""
    import genomics.finetune
    seen = {}
    monkeypatch.setattr(genomics.finetune, "run_finetune", lambda exp, out, resume=False: seen.update({out: exp}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    common = ["--fasta-dir", workspace["apes"], "--valid-samples", 4, "--test-samples", 4]
    assert run_cli("finetune", "--out", tmp_path / "auto", *common) == 0
    assert run_cli("finetune", "--out", tmp_path / "gpu", *common, "--recipe", "gpu") == 0
    assert run_cli("finetune", "--out", tmp_path / "mine", *common, "--steps", 7, "--pooling", "last",
                   "--lr", "1e-3") == 0
    auto, gpu, mine = (seen[str(tmp_path / run)] for run in ("auto", "gpu", "mine"))
    assert (auto.train.steps, auto.train.batch_size, auto.train.optim.lr, auto.train.time_limit_min,
            auto.model.pooling) == (400, 16, 3e-3, 10.0, "mean")
    assert (gpu.train.steps, gpu.train.batch_size, gpu.train.optim.lr, gpu.model.pooling) == (10240, 64, 6e-4, "last")
    assert (mine.train.steps, mine.train.optim.lr, mine.train.batch_size, mine.model.pooling) == (7, 1e-3, 16, "last")
    assert genomics.finetune.RECIPES["cpu"].train.steps == 400  # the table itself is never changed by a run


def test_finetune_standardises_pooled_features_unless_told_not_to(workspace, tmp_path):
    from genomics.models import load_run_model

    common = ["--fasta-dir", workspace["apes"], "--window", 64, "--steps", 1, "--batch-size", 2,
              "--valid-samples", 4, "--test-samples", 4, "--device", "cpu", "--pooling", "mean"]
    assert run_cli("finetune", "--out", tmp_path / "std", *common) == 0
    assert run_cli("finetune", "--out", tmp_path / "plain", *common, "--no-standardize") == 0
    standardized, plain = load_run_model(tmp_path / "std"), load_run_model(tmp_path / "plain")
    assert standardized.config.standardize_pooled and standardized.config.pooling == "mean"
    assert int(standardized.standardize.batches) == 1 and float(standardized.standardize.var.min()) > 0
    assert not plain.config.standardize_pooled and not any(k.startswith("standardize") for k in plain.state_dict())


def test_pretrain_reads_bed_intervals(workspace, tmp_path):
    bed = tmp_path / "intervals.bed"
    bed.write_text("chr1\t1000\t5000\ttrain\nchr4\t0\t9000\ttrain\nchr2\t2000\t2100\tvalid\n"
                   "chr3\t500\t4000\tvalid\nchr5\t0\t3000\ttest\n")
    run = tmp_path / "bed_lm"
    assert run_cli("pretrain", "--fasta", workspace["apes"] / "human.fa", "--bed", bed, "--out", run, "--seqlen", 128,
                   "--warmup-start", 128, "--steps", 3, "--batch-size", 2, "--device", "cpu",
                   "--set", "data.valid_samples=4") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["schedule"] == [[0, 128]] and metrics["valid"]["scored_bases"] > 0
    assert metrics["config"]["data"]["bed"] == str(bed)
    bad_bed = tmp_path / "bad.bed"
    bad_bed.write_text("chrNope\t0\t100\ttrain\nchr1\t0\t100\tvalid\n")
    assert run_cli("pretrain", "--fasta", workspace["apes"] / "human.fa", "--bed", bad_bed, "--out",
                   tmp_path / "bad_run", "--steps", 1, "--device", "cpu") == 1


def read_tsv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def test_classify_tsv_contract(workspace, tmp_path, capsys):
    query = write_fasta(tmp_path / "query.fa", {"long_one": "ACGT" * 70 + "GATTACA", "short": "ACGTTGCA" * 5,
                                                "mid": "TTGACCA" * 30})
    other = write_fasta(tmp_path / "other.fa", {"x": "A" * 50 + "C" * 60})
    out = tmp_path / "new_dir" / "results.tsv"  # the directory is created
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, other, "--out", out) == 0
    header = out.read_text().splitlines()[0].split("\t")
    classes = ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"]
    assert header == ["file", "record", "length", "predicted"] + [f"p_{c}" for c in classes] + [
        "strand", "p_forward", "p_reverse", "flag"]  # added columns come last
    rows = read_tsv(out.read_text())
    assert [(r["file"], r["record"]) for r in rows] == [(str(query), "long_one"), (str(query), "short"),
                                                       (str(query), "mid"), (str(other), "x")]
    assert [int(r["length"]) for r in rows] == [287, 40, 210, 110]
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in classes]
        assert math.isclose(sum(probs), 1, abs_tol=1e-4)
        assert r["predicted"] == classes[int(np.argmax(probs))]
    # per window: start/end columns, windows of 96 covering each record, the last aligned to its end
    capsys.readouterr()
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--per-window") == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split("\t")[:6] == ["file", "record", "length", "start", "end", "predicted"]
    windows = read_tsv(text)
    spans = [(int(w["start"]), int(w["end"])) for w in windows if w["record"] == "long_one"]
    assert spans == [(0, 96), (96, 192), (191, 287)]
    assert [(int(w["start"]), int(w["end"])) for w in windows if w["record"] == "short"] == [(0, 40)]
    # JSON carries the same numbers
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--json") == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert [r["record"] for r in records] == ["long_one", "short", "mid"]
    assert math.isclose(records[0]["probabilities"]["human"], float(rows[0]["p_human"]), rel_tol=1e-4)


def test_read_predictions_are_what_classify_predicts_for_the_same_windows(workspace, tmp_path):
    """read_predictions (the main job's longer windows) predicts what `classify` predicts for the same windows written
    as FASTA records: split into the classifier's 96-base windows, both strands."""
    from genomics.classify import read_predictions
    from genomics.datasets import SpeciesWindows
    from genomics.tokenizer import decode

    classifier = SpeciesClassifier(workspace["ft"])
    windows, _ = SpeciesWindows(workspace["apes"], "test", 300, samples=15, seed=0, classes=classifier.classes).arrays()
    fasta = write_fasta(tmp_path / "windows.fa", {f"w{i}": decode(x, skip_special=True) for i, x in enumerate(windows)})
    out = tmp_path / "calls.tsv"
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", fasta, "--out", out) == 0
    expected = [classifier.classes.index(r["predicted"]) for r in read_tsv(out.read_text())]
    assert read_predictions(classifier, windows, "test windows").tolist() == expected


def test_classify_never_writes_over_an_input_or_a_file_it_did_not_write(workspace, tmp_path, capsys):
    query = write_fasta(tmp_path / "inp.fa", {"r": "ACGT" * 30})
    original = query.read_bytes()
    base = ["classify", "--checkpoint", workspace["ft"], "--fasta", query]
    for out in (query, tmp_path / "sub" / ".." / "inp.fa"):  # however it is spelled, and even with --overwrite
        for extra in ([], ["--overwrite"], ["--json"]):
            assert run_cli(*base, "--out", out, *extra) == 1
            assert "is also an input of this command" in error_line(capsys.readouterr().err)
    assert query.read_bytes() == original
    notes = tmp_path / "notes.tsv"
    notes.write_text("my notes\n")
    for out, extra in ((notes, []), (workspace["ft"] / "metrics.json", ["--overwrite"])):  # the run is an input
        assert run_cli(*base, "--out", out, *extra) == 1
        assert "that this command did not write" in error_line(capsys.readouterr().err)
    assert notes.read_text() == "my notes\n"
    assert run_cli(*base, "--out", notes, "--overwrite") == 0
    assert notes.read_text().startswith("file\trecord\tlength\tpredicted\tp_bonobo")
    assert run_cli(*base, "--out", notes, "--json") == 0  # an earlier classify output, in either format, is ours
    assert run_cli(*base, "--out", notes, "--per-window") == 0
    assert notes.read_text().startswith("file\trecord\tlength\tstart\tend\tpredicted")


def test_plot_lengths_never_writes_over_a_file_it_did_not_write(workspace, tmp_path, capsys):
    metrics = workspace["ft"] / "metrics.json"
    before = metrics.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert run_cli("plot-lengths", workspace["ft"], "--out", metrics, *extra) == 1
        assert "is also an input" in error_line(capsys.readouterr().err)
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    assert run_cli("plot-lengths", workspace["ft"], "--out", png) == 1
    assert "did not write" in error_line(capsys.readouterr().err)
    assert metrics.read_bytes() == before and png.read_bytes() == b"\x89PNG\r\n\x1a\n not ours"
    assert run_cli("plot-lengths", workspace["ft"], "--out", png, "--overwrite") == 0
    assert run_cli("plot-lengths", workspace["ft"], "--out", png) == 0  # its own plot, drawn again


def test_resume_refuses_another_window_on_a_finished_run(workspace, tmp_path, capsys):
    run = tmp_path / "ft"
    args = ["finetune", "--fasta-dir", workspace["apes"], "--out", run, "--batch-size", 2, "--valid-samples", 4,
            "--test-samples", 4, "--device", "cpu", "--steps", 2]
    assert run_cli(*args, "--window", 64) == 0
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.json", "metrics.csv")}
    capsys.readouterr()
    assert run_cli(*args, "--window", 128, "--resume") == 1
    message = error_line(capsys.readouterr().err)
    assert "data.window: 64 -> 128" in message and "train.steps" in message
    assert {name: (run / name).read_bytes() for name in before} == before


def test_window_starts():
    assert window_starts(10, 20) == [(0, 10)]
    assert window_starts(40, 20) == [(0, 20), (20, 40)]
    assert window_starts(45, 20) == [(0, 20), (20, 40), (25, 45)]


def test_record_probability_is_the_normalised_mean_of_window_log_probabilities(workspace, tmp_path):
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 300))
    query = write_fasta(tmp_path / "q.fa", {"r": seq})
    classifier = SpeciesClassifier(workspace["ft"], "cpu", window=100, strand="forward")
    result = classifier.classify_file(query)[0]
    from genomics.tokenizer import encode
    model = classifier.model.double()
    window_logp = []
    with torch.no_grad():
        for start in (0, 100, 200):
            ids = torch.from_numpy(encode(seq[start:start + 100]).astype(np.int64))[None]
            window_logp.append(torch.log_softmax(model(ids)[0], -1).numpy())
    mean = np.mean(window_logp, axis=0)
    reference = np.exp(mean - np.logaddexp.reduce(mean))
    np.testing.assert_allclose(result.probabilities, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_chunked_reading_gives_the_same_answer(workspace, tmp_path, capsys, pooling):
    run = workspace["ft"]
    if pooling != "last":
        run = tmp_path / f"{pooling}_run"
        assert run_cli("finetune", "--fasta-dir", workspace["apes"], "--out", run, "--window", 64, "--steps", 2,
                       "--batch-size", 4, "--pooling", pooling, "--valid-samples", 4, "--test-samples", 4,
                       "--device", "cpu") == 0
        assert json.loads((run / "metrics.json").read_text())["pooling"] == pooling
        capsys.readouterr()  # the fine-tuning report
    rng = np.random.default_rng(2)
    query = write_fasta(tmp_path / "q.fa", {"r1": "".join(rng.choice(list("ACGT"), 500)),
                                            "r2": "".join(rng.choice(list("ACGTN"), 333))})
    outputs = []
    for chunk in ("65536", "37"):
        assert run_cli("classify", "--checkpoint", run, "--fasta", query, "--window", 250,
                       "--chunk", chunk, "--per-window") == 0
        outputs.append(read_tsv(capsys.readouterr().out))
    for a, b in zip(*outputs):
        for key, value in a.items():
            if key.startswith("p_"):
                assert math.isclose(float(value), float(b[key]), rel_tol=1e-3, abs_tol=1e-5)
            else:
                assert value == b[key]


def test_bf16_matmuls_stay_close_to_float32(workspace, tmp_path, capsys):
    rng = np.random.default_rng(4)
    query = write_fasta(tmp_path / "q.fa", {"r1": "".join(rng.choice(list("ACGT"), 400))})
    outputs = []
    for flags in ((), ("--bf16",)):
        assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--chunk", 50, *flags) == 0
        outputs.append(read_tsv(capsys.readouterr().out))
    (fp32,), (bf16,) = outputs
    probs = [(float(fp32[k]), float(bf16[k])) for k in fp32 if k.startswith("p_")]
    assert max(abs(a - b) for a, b in probs) < 2e-2
    assert any(a != b for a, b in probs)  # the flag changed the arithmetic


def test_a_checkpoint_file_and_gzip_input_are_accepted(workspace, tmp_path, capsys):
    seq = "ACGTTGCAAGGCTTAC" * 20
    plain = write_fasta(tmp_path / "q.fa", {"r": seq})
    packed = tmp_path / "q2.fa.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))  # plain gzip: read sequentially
    checkpoint = sorted((workspace["ft"] / "checkpoints").glob("step-*.ckpt"))[-1]
    results = []
    weights = workspace["ft"] / "model.safetensors"  # a run's weights file stands for its run directory
    for source, path in ((workspace["ft"], plain), (checkpoint, packed), (weights, plain)):
        assert run_cli("classify", "--checkpoint", source, "--fasta", path) == 0
        results.append(read_tsv(capsys.readouterr().out)[0])
    assert results[0]["predicted"] == results[1]["predicted"] == results[2]["predicted"]
    assert math.isclose(float(results[0]["p_human"]), float(results[1]["p_human"]), rel_tol=1e-5)
    assert results[2] == results[0]


# --- reads and streams, strands, records that say nothing, embeddings ------------------------------------------


def random_dna(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), n))


def revcomp(seq: str) -> str:
    return seq[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


def fastq(records: dict[str, str]) -> bytes:
    return "".join(f"@{name} from somewhere\n{seq}\n+\n{'I' * len(seq)}\n" for name, seq in records.items()).encode()


def fake_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))


def probabilities(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[f"p_{c}"]) for c in APES])


def geometric_mean(probs: np.ndarray) -> np.ndarray:
    """(windows, classes) -> the normalised geometric mean, as a record aggregates its windows."""
    mean = np.log(probs).mean(0)
    return np.exp(mean - np.logaddexp.reduce(mean))


def test_classify_reads_fastq_and_gzip_from_files_and_stdin(workspace, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(5)
    reads = {f"read{i}": random_dna(rng, n) for i, n in enumerate((150, 150, 90, 250))}
    write_fasta(tmp_path / "reads.fa", reads)
    (tmp_path / "reads.fq").write_bytes(fastq(reads))
    (tmp_path / "reads.fq.gz").write_bytes(gzip.compress(fastq(reads)))
    with bgzf.BgzfWriter(tmp_path / "reads.bgz", "wb") as f:
        f.write(fastq(reads))
    (tmp_path / "reads.txt").write_bytes(gzip.compress((tmp_path / "reads.fa").read_bytes()))  # the content tells
    outputs = {}
    for name in ("reads.fa", "reads.fq", "reads.fq.gz", "reads.bgz", "reads.txt", "-"):
        if name == "-":
            fake_stdin(monkeypatch, gzip.compress(fastq(reads)))
        assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta",
                       name if name == "-" else tmp_path / name) == 0
        rows = read_tsv(capsys.readouterr().out)
        assert [r.pop("file") for r in rows] == [name if name == "-" else str(tmp_path / name)] * len(reads)
        outputs[name] = rows
    assert [r["record"] for r in outputs["reads.fa"]] == list(reads)
    for name, rows in outputs.items():
        assert rows == outputs["reads.fa"], name


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("gzip") is None, reason="needs bash and gzip")
def test_classify_reads_a_pipe_and_process_substitution(workspace, tmp_path, capsys):
    """`--fasta - <(gzip -dc reads.fq.gz)` in one command: stdin and a /dev/fd pipe, neither of which can seek."""
    rng = np.random.default_rng(7)
    reads = {f"r{i}": random_dna(rng, 120) for i in range(3)}
    fasta = write_fasta(tmp_path / "reads.fa", reads)
    (tmp_path / "reads.fq.gz").write_bytes(gzip.compress(fastq(reads)))
    out = tmp_path / "out.tsv"
    command = (f"{shlex.quote(sys.executable)} -m genomics classify --checkpoint {shlex.quote(str(workspace['ft']))} "
               f"--fasta - <(gzip -dc {shlex.quote(str(tmp_path / 'reads.fq.gz'))}) --out {shlex.quote(str(out))} "
               f"--device cpu < {shlex.quote(str(fasta))}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = read_tsv(out.read_text())
    assert [r["file"] for r in rows[:3]] == ["-"] * 3 and all(r["file"].startswith("/dev/fd/") for r in rows[3:])
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", fasta) == 0
    reference = read_tsv(capsys.readouterr().out)
    for got in (rows[:3], rows[3:]):
        assert [r["record"] for r in got] == list(reads)
        for a, b in zip(got, reference):
            np.testing.assert_allclose(probabilities(a), probabilities(b), rtol=1e-5)


def test_strand_both_averages_each_window_with_its_reverse_complement(workspace, tmp_path, capsys):
    rng = np.random.default_rng(6)
    seq = random_dna(rng, 3 * 96)  # three whole windows: the reverse complement has the same windows, reversed
    query = write_fasta(tmp_path / "q.fa", {"fwd": seq, "rev": revcomp(seq)})
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query) == 0
    both = read_tsv(capsys.readouterr().out)
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--strand", "forward") == 0
    forward = read_tsv(capsys.readouterr().out)
    from genomics.tokenizer import encode
    model = load_run_model(workspace["ft"]).double()
    with torch.no_grad():
        def window_probs(texts):
            return np.array([torch.softmax(model(torch.from_numpy(encode(t).astype(np.int64))[None])[0], -1).numpy()
                             for t in texts])
        windows = [seq[s:s + 96] for s in (0, 96, 192)]
        fw, rv = window_probs(windows), window_probs([revcomp(w) for w in windows])
    # each window: the mean of both strands' probabilities; the record: their normalised geometric mean
    np.testing.assert_allclose(probabilities(both[0]), geometric_mean((fw + rv) / 2), rtol=1e-4, atol=1e-6)
    # a record and its reverse complement get the same call
    np.testing.assert_allclose(probabilities(both[1]), probabilities(both[0]), rtol=1e-4, atol=1e-6)
    # strand columns: each strand alone, aggregated like a record, and the one that gave the call more probability
    predicted = APES.index(both[0]["predicted"])
    alone_forward, alone_reverse = geometric_mean(fw)[predicted], geometric_mean(rv)[predicted]
    assert math.isclose(float(both[0]["p_forward"]), alone_forward, rel_tol=1e-4)
    assert math.isclose(float(both[0]["p_reverse"]), alone_reverse, rel_tol=1e-4)
    assert both[0]["strand"] == ("forward" if alone_forward > alone_reverse else "reverse")
    assert both[1]["strand"] != both[0]["strand"]  # the reverse complement's forward strand is the other one
    assert math.isclose(float(both[1]["p_forward"]), alone_reverse, rel_tol=1e-4)
    # --strand forward reads the records as given
    np.testing.assert_allclose(probabilities(forward[0]), geometric_mean(fw), rtol=1e-4, atol=1e-6)
    assert forward[0]["strand"] == "forward" and forward[0]["p_reverse"] == "nan"


def test_records_that_say_nothing_are_flagged_not_classified(workspace, tmp_path, capsys):
    rng = np.random.default_rng(8)
    gapped = random_dna(rng, 96) + "N" * 96 + random_dna(rng, 96)  # its middle window is all N
    query = write_fasta(tmp_path / "q.fa", {"allN": "N" * 300, "tiny": "ACGTAC" + "N" * 50, "fine": random_dna(rng, 150),
                                            "gapped": gapped})
    out = tmp_path / "calls.tsv"
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--out", out) == 0
    err = capsys.readouterr().err
    assert "warning: 2 record(s) say nothing: 'allN' in" in err and "'tiny' in" in err and "'fine'" not in err
    rows = {r["record"]: r for r in read_tsv(out.read_text())}
    assert {name: r["flag"] for name, r in rows.items()} == {"allN": "no_bases", "tiny": "short", "fine": "",
                                                              "gapped": ""}
    for name in ("allN", "tiny"):
        assert rows[name]["predicted"] == "" and rows[name]["strand"] == ""
        assert np.isnan(probabilities(rows[name])).all()
    assert rows["fine"]["predicted"] in APES
    # per window: the all-N window is flagged and left out of its record's mean
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--per-window") == 0
    windows = [w for w in read_tsv(capsys.readouterr().out) if w["record"] == "gapped"]
    assert [w["flag"] for w in windows] == ["", "no_bases", ""]
    used = np.array([probabilities(w) for w in windows if not w["flag"]])
    np.testing.assert_allclose(probabilities(rows["gapped"]), geometric_mean(used), rtol=1e-4, atol=1e-6)
    # JSON says the same with nulls; --min-bases moves the line
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--json", "--min-bases", 6) == 0
    records = {r["record"]: r for r in json.loads(capsys.readouterr().out)["records"]}
    assert records["allN"]["predicted"] is None and records["allN"]["flag"] == "no_bases"
    assert records["tiny"]["predicted"] in APES and records["tiny"]["flag"] is None


def test_classify_writes_nothing_beside_its_input(workspace, tmp_path, capsys):
    """No .fai (nor anything else) appears next to the user's files: records are streamed, not indexed."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_fasta(inputs / "q.fa", {"r": "ACGTTGCA" * 30})
    (inputs / "ragged.fa").write_text(">r\nACGTACGTAC\nACG\nACGTACGTACGTTT\n")  # line lengths no index describes
    before = sorted(os.listdir(inputs))
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", inputs / "q.fa", inputs / "ragged.fa") == 0
    assert [r["length"] for r in read_tsv(capsys.readouterr().out)] == ["240", "27"]
    assert sorted(os.listdir(inputs)) == before


def test_embed_writes_the_input_of_the_classifiers_head(workspace, tmp_path, capsys):
    rng = np.random.default_rng(9)
    query = write_fasta(tmp_path / "q.fa", {"long": random_dna(rng, 250), "read": random_dna(rng, 80),
                                            "third": random_dna(rng, 96)})
    out = tmp_path / "new_dir" / "emb.npz"
    assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", out) == 0
    with np.load(out, allow_pickle=False) as npz:
        plain = dict(npz)
    assert set(plain) == {"records", "lengths", "embeddings"}
    assert plain["records"].tolist() == ["long", "read", "third"] and plain["lengths"].tolist() == [250, 80, 96]
    assert plain["embeddings"].dtype == np.float32 and plain["embeddings"].shape == (3, 48)
    assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", out, "--per-window") == 0
    with np.load(out, allow_pickle=False) as npz:
        data = dict(npz)
    assert set(data) == {"records", "lengths", "embeddings", "window_embeddings", "window_record", "window_start"}
    assert data["window_record"].tolist() == [0, 0, 0, 1, 2] and data["window_start"].tolist() == [0, 96, 154, 0, 0]
    assert data["window_embeddings"].dtype == np.float32 and data["window_embeddings"].shape == (5, 48)
    np.testing.assert_array_equal(data["embeddings"], plain["embeddings"])
    np.testing.assert_allclose(data["embeddings"][0], data["window_embeddings"][:3].mean(0), rtol=1e-5, atol=1e-6)
    # the classifier's head turns the window embeddings into classify's window probabilities
    model = load_run_model(workspace["ft"])
    with torch.no_grad():
        head = torch.softmax(model.head(torch.from_numpy(data["window_embeddings"])), -1).numpy()
    capsys.readouterr()
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", query, "--per-window", "--strand",
                   "forward") == 0
    windows = read_tsv(capsys.readouterr().out)
    np.testing.assert_allclose(head, [probabilities(w) for w in windows], rtol=1e-4, atol=1e-6)


def test_embed_a_pretraining_run_from_stdin_mean_pools_its_hidden_states(workspace, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(10)
    reads = {"a": random_dna(rng, 300), "gap": "N" * 40}
    fake_stdin(monkeypatch, fastq(reads))
    out = tmp_path / "lm.npz"
    assert run_cli("embed", "--checkpoint", workspace["lm"], "--fasta", "-", "--out", out) == 0
    assert "'gap' in <stdin> (no A/C/G/T base)" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as npz:
        data = dict(npz)
    assert data["records"].tolist() == ["a", "gap"] and data["embeddings"].shape == (2, 48)
    from genomics.tokenizer import encode
    model = load_run_model(workspace["lm"])
    with torch.no_grad():  # a 1024-base window holds each record whole
        want = model.backbone(torch.from_numpy(encode(reads["a"]).astype(np.int64))[None]).mean(1)[0].numpy()
    np.testing.assert_allclose(data["embeddings"][0], want, rtol=1e-4, atol=1e-5)


def test_a_copied_model_directory_classifies_on_its_own(workspace, tmp_path, capsys):
    """model.safetensors + model.json copied away from their run (no config.json) carry the classes, the window
    and the test metrics; the model card beside them says what the model is."""
    from ssm_core.models import read_model_info

    ft = workspace["ft"]
    info = read_model_info(ft)
    assert info.labels == ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"] and info.window == 96
    assert info.task == "dna-species-classification" and info.tokenizer["iupac"] == "n" and info.steps == 4
    assert info.metrics["test_accuracy"] == json.loads((ft / "metrics.json").read_text())["test_accuracy"]
    card = (ft / "README.md").read_text()
    assert "library_name: mamba-seq-suite" in card and "python -m genomics classify --checkpoint ft" in card
    assert read_model_info(workspace["lm"]).task == "dna-language-modeling"
    copy = tmp_path / "shared" / "apes_classifier"
    copy.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        (copy / name).write_bytes((ft / name).read_bytes())
    query = write_fasta(tmp_path / "q.fa", {"r": "ACGTTGCAAGGCTTAC" * 20})
    outputs = []
    for checkpoint in (ft, copy):
        assert run_cli("classify", "--checkpoint", checkpoint, "--fasta", query) == 0
        outputs.append(read_tsv(capsys.readouterr().out))
    assert outputs[1] == outputs[0] and "p_orangutan" in outputs[1][0]


def test_a_model_of_another_kind_is_named_for_what_it_is(workspace, tmp_path, capsys, monkeypatch):
    from audio.sashimi import SashimiConfig, SashimiModel
    from ssm_core import save_model

    good = write_fasta(tmp_path / "good.fa", {"fine": "ACGT" * 10})
    audio_run = save_model(SashimiModel(SashimiConfig.from_preset("tiny")), tmp_path / "sc09")
    assert run_cli("classify", "--checkpoint", audio_run, "--fasta", good) == 1
    assert error_line(capsys.readouterr().err) == (f"error: --checkpoint {audio_run} is an audio waveform model "
                                                   "(SashimiModel), not a DNA classifier")
    # a model.json naming a module to import is refused before anything is imported
    marker = tmp_path / "imported"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    planted = tmp_path / "planted_run"
    planted.mkdir()
    (planted / "model.json").write_text(json.dumps({"model_class": "planted.Model", "config": {}}))
    (planted / "model.safetensors").write_bytes((workspace["ft"] / "model.safetensors").read_bytes())
    assert run_cli("classify", "--checkpoint", planted, "--fasta", good) == 1
    message = error_line(capsys.readouterr().err)
    assert f"{planted / 'model.json'}: model_class 'planted.Model' is not a model of this suite" in message
    assert not marker.exists()


def test_plot_lengths(workspace, tmp_path, capsys):
    second = tmp_path / "ft2"
    assert run_cli("finetune", "--fasta-dir", workspace["apes"], "--out", second, "--window", 48, "--steps", 2,
                   "--batch-size", 4, "--valid-samples", 4, "--test-samples", 10, "--device", "cpu") == 0
    png = tmp_path / "acc.png"
    assert run_cli("plot-lengths", workspace["ft"], second, "--out", png) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 1000
    assert "96" in out and "48" in out
    assert run_cli("plot-lengths", workspace["lm"], "--out", png) == 1  # a pretraining run has no test accuracy
    assert "test_accuracy" in capsys.readouterr().err


# --- bad input ------------------------------------------------------------------------------------------------


BAD_FASTA = {
    "empty.fa": (b"", "empty file"),
    "no_sequence.fa": (b">good\nACGT\n>hollow\n>after\nACGT\n", "'hollow' has no sequence"),
    "not_fasta.fa": (b"chrom\tstart\tend\nchr1\t0\t100\n", "not a FASTA file"),
    "binary.fa": (bytes(range(256)) * 4, "not a FASTA file"),
    "digits.fa": (b">ok\nACGT\n>bad_record\nACGT7ACGT\n", "'bad_record'"),
    "gap_dash.fa": (b">aligned\nACGT--ACGT\n", "'aligned'"),
    "truncated.fq": (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n", "line 6: FASTQ record 'r2' (line 5) is not valid"),
}


@pytest.mark.parametrize("name", sorted(BAD_FASTA))
def test_classify_refuses_bad_fasta_naming_file_and_record(workspace, tmp_path, capsys, name):
    content, expected = BAD_FASTA[name]
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "results.tsv"
    good = write_fasta(tmp_path / "good.fa", {"fine": "ACGT" * 10})
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", good, path, "--out", out) == 1
    err = error_line(capsys.readouterr().err)
    assert name in err and expected in err, err
    assert "b'" not in err  # never a Python bytes repr
    assert not out.exists()  # nothing written: a bad record never silently disappears from a finished output


def test_iupac_codes_mapped_by_default_refused_on_request(workspace, tmp_path, capsys):
    path = write_fasta(tmp_path / "iupac.fa", {"amb": "ACGTRYACGT" * 5})
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", path) == 0
    assert read_tsv(capsys.readouterr().out)[0]["record"] == "amb"
    assert run_cli("classify", "--checkpoint", workspace["ft"], "--fasta", path, "--iupac", "error") == 1
    err = capsys.readouterr().err
    assert "iupac.fa" in err and "'amb'" in err and "'R'" in err and "position 5" in err


def test_other_bad_inputs(workspace, tmp_path, capsys):
    good = write_fasta(tmp_path / "good.fa", {"fine": "ACGT" * 10})
    foreign = tmp_path / "foreign_run"  # a finetune run's config beside a model.json written by another program
    foreign.mkdir()
    (foreign / "config.json").write_text((workspace["ft"] / "config.json").read_text())
    (foreign / "model.json").write_text('{"format": "something else"}')
    (foreign / "model.safetensors").write_bytes(b"\0" * 64)
    cases = [
        (["classify", "--checkpoint", workspace["ft"], "--fasta", tmp_path / "missing.fa"], "missing.fa"),
        (["classify", "--checkpoint", workspace["ft"], "--fasta", workspace["apes"]], "a directory, not a FASTA"),
        (["classify", "--checkpoint", workspace["ft"], "--fasta", good, "--out", tmp_path], "--out"),
        (["classify", "--checkpoint", tmp_path / "no_run", "--fasta", good], "no_run"),
        (["classify", "--checkpoint", workspace["lm"], "--fasta", good], "a pretraining run, which has no classes"),
        (["classify", "--checkpoint", workspace["ft"], "--fasta", "-", good, "-"], "given more than once"),
        (["embed", "--checkpoint", workspace["ft"], "--fasta", tmp_path / "missing.fq", "--out", tmp_path / "e.npz"],
         "missing.fq: FASTA/FASTQ file not found"),
        (["embed", "--checkpoint", tmp_path / "no_run", "--fasta", good, "--out", tmp_path / "e.npz"], "no_run"),
        (["embed", "--checkpoint", workspace["ft"], "--fasta", good, "--out", tmp_path], "--out"),
        (["classify", "--checkpoint", foreign, "--fasta", good],
         "not a model config written by save_model (no model_class or config)"),
        (["finetune", "--fasta-dir", workspace["apes"], "--out", tmp_path / "r0", "--init", tmp_path / "no_lm"],
         "--init"),
        (["finetune", "--fasta-dir", tmp_path / "nowhere", "--out", tmp_path / "r1", "--steps", 1], "nowhere"),
        (["pretrain", "--fasta", tmp_path / "missing.fa", "--out", tmp_path / "r2", "--steps", 1], "missing.fa"),
        (["finetune", "--fasta-dir", workspace["apes"], "--out", workspace["ft"], "--steps", 1],
         "already holds a run"),
    ]
    for args, expected in cases:
        assert run_cli(*args) == 1, args
        err = error_line(capsys.readouterr().err)
        assert expected in err, (args, err)
    # a plain-gzip genome cannot be read at random positions: finetune says how to fix it
    species = tmp_path / "gz_species"
    species.mkdir()
    for name in ("a", "b"):
        (species / f"{name}.fa.gz").write_bytes(gzip.compress(b">chr1\n" + b"ACGT" * 500 + b"\n"))
    assert run_cli("finetune", "--fasta-dir", species, "--out", tmp_path / "r3", "--steps", 1) == 1
    err = capsys.readouterr().err
    assert "a.fa.gz" in err and "bgzip" in err


@pytest.mark.parametrize("command", ["pretrain", "finetune", "classify", "embed"])
def test_device_cuda_without_a_gpu_is_a_clear_error(workspace, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever this runs
    good = write_fasta(tmp_path / "good.fa", {"fine": "ACGT" * 10})
    args = {"pretrain": ["--fasta-dir", workspace["apes"], "--out", tmp_path / "run", "--steps", 1],
            "finetune": ["--fasta-dir", workspace["apes"], "--out", tmp_path / "run", "--steps", 1],
            "classify": ["--checkpoint", workspace["ft"], "--fasta", good],
            "embed": ["--checkpoint", workspace["ft"], "--fasta", good, "--out", tmp_path / "run" / "e.npz"]}[command]
    assert run_cli(command, *args, "--device", "cuda") == 1
    assert error_line(capsys.readouterr().err) == "error: --device cuda was requested but no CUDA GPU is available"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["presets", "simulate", "fetch", "plot-lengths"])
def test_commands_that_use_no_device_hide_device_and_ignore_it_with_a_warning(capsys, monkeypatch, command):
    subcommands = cli.build_parser()._subparsers._group_actions[0].choices
    assert "--device" not in subcommands[command].format_help()
    ran = []
    monkeypatch.setattr(cli, f"cmd_{command.replace('-', '_')}", lambda args: ran.append(args) or 0)
    required = {"presets": [], "simulate": ["--out", "x"], "fetch": ["hg38"], "plot-lengths": ["r", "--out", "x"]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # `presets --device cuda` failed on a CPU machine
    assert run_cli(command, *required[command], "--device", "cuda") == 0 and ran
    assert "warning: --device cuda is ignored: this command runs nothing on a device" in capsys.readouterr().err


def test_the_command_exits_non_zero_with_the_message_on_stderr(workspace, tmp_path):
    bad = tmp_path / "hollow.fa"
    bad.write_text(">empty_record\n>next\nACGT\n")
    proc = subprocess.run([sys.executable, "-m", "genomics", "classify", "--checkpoint", str(workspace["ft"]),
                           "--fasta", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == f"error: {bad}: record 'empty_record' has no sequence"
    assert "Traceback" not in proc.stderr


# --- learning -------------------------------------------------------------------------------------------------


def test_a_tiny_finetune_beats_chance_on_held_out_chromosomes(tmp_path):
    data = species_genomes(tmp_path / "species")
    run = tmp_path / "run"
    assert run_cli("finetune", "--fasta-dir", data, "--out", run, "--window", 128, "--steps", 150,
                   "--batch-size", 16, "--lr", "5e-3", "--valid-samples", 16, "--test-samples", 300,
                   "--device", "cpu") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == list(SPECIES)
    # chance is 20 %; 300 test windows from held-out chromosomes (5, 7, 9, 10, 11): 45 % is > 8 sigma above it
    assert metrics["test_accuracy"] > 0.45, metrics["per_class_accuracy"]


def test_embed_never_writes_over_its_input_or_a_file_it_did_not_write(workspace, tmp_path, capsys):
    query = write_fasta(tmp_path / "q.fa", {"r": "ACGTTGCA" * 30})
    assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", query) == 1
    assert "also an input" in capsys.readouterr().err and query.read_text().startswith(">r")
    notes = tmp_path / "notes.npz"
    notes.write_bytes(b"my notes")
    assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", notes) == 1
    assert notes.read_bytes() == b"my notes"
    out = tmp_path / "e.npz"
    for _ in range(2):  # its own output is written again
        assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", out) == 0
    assert run_cli("embed", "--checkpoint", workspace["ft"], "--fasta", query, "--out", notes, "--overwrite") == 0
    assert set(np.load(notes, allow_pickle=False).files) >= {"records", "lengths", "embeddings"}
