"""The genomics model side end to end on generated FASTA files: presets, pretrain (sequence-length warmup, loss on
bases only), finetune, classify (TSV/JSON contract, windows and aggregation, chunked reading), every bad-input
case, and a tiny fine-tune that beats chance on held-out windows."""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genomics import cli
from genomics.classify import SpeciesClassifier, window_starts
from genomics.errors import GenomicsInputError
from genomics.models import parameter_count, preset_config
from genomics.pretrain import StagedWindows, length_schedule, next_base_nll
from genomics.tokenizer import A, N, PAD, T
from ssm_core import MambaLMHeadModel
from fasta_text import write_fasta

SPECIES = ("ape1", "ape2", "ape3", "ape4", "ape5")


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
    assert header == ["file", "record", "length", "predicted"] + [f"p_{c}" for c in classes]
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


def test_window_starts():
    assert window_starts(10, 20) == [(0, 10)]
    assert window_starts(40, 20) == [(0, 20), (20, 40)]
    assert window_starts(45, 20) == [(0, 20), (20, 40), (25, 45)]


def test_record_probability_is_the_normalised_mean_of_window_log_probabilities(workspace, tmp_path):
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 300))
    query = write_fasta(tmp_path / "q.fa", {"r": seq})
    classifier = SpeciesClassifier(workspace["ft"], "cpu", window=100)
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
    "mac_cr.fa": (b">old\rACGT\rACGT\r", "CR only"),
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


@pytest.mark.parametrize("command", ["simulate", "pretrain", "finetune", "classify"])
def test_device_cuda_without_a_gpu_is_a_clear_error(workspace, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever this runs
    good = write_fasta(tmp_path / "good.fa", {"fine": "ACGT" * 10})
    args = {"simulate": ["--out", tmp_path / "sim", "--size", "tiny"],
            "pretrain": ["--fasta-dir", workspace["apes"], "--out", tmp_path / "run", "--steps", 1],
            "finetune": ["--fasta-dir", workspace["apes"], "--out", tmp_path / "run", "--steps", 1],
            "classify": ["--checkpoint", workspace["ft"], "--fasta", good]}[command]
    assert run_cli(command, *args, "--device", "cuda") == 1
    assert error_line(capsys.readouterr().err) == "error: --device cuda was requested but no CUDA GPU is available"
    assert not (tmp_path / "run").exists() and not (tmp_path / "sim").exists()


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
