"""Training windows that no record can fill, or batches whose activations cannot fit in memory, are refused before
a run starts (they were killed by the kernel, exit 137, or died on a 19 GB allocation)."""
from __future__ import annotations

import numpy as np
import pytest

from genomics import cli
from ssm_core.utils import memory
from fasta_text import write_fasta


@pytest.fixture()
def genomes(tmp_path):
    """Two species, chromosomes chr1..chr13 of 500-1,100 bases (chr2 the longest)."""
    rng = np.random.default_rng(0)
    for species in ("ape1", "ape2"):
        records = {f"chr{c}": "".join(rng.choice(list("ACGT"), 1100 if c == 2 else 500 + 20 * c)) for c in range(1, 14)}
        write_fasta(tmp_path / f"{species}.fa", records)
    return tmp_path


def run(capsys, *args) -> tuple[int, str]:
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr().err.strip().splitlines()[-1]


TINY_RUN = ("--steps", 1, "--batch-size", 2, "--valid-samples", 2, "--test-samples", 2, "--device", "cpu")


def test_finetune_window_longer_than_every_training_record_is_refused(genomes, tmp_path, capsys):
    status, err = run(capsys, "finetune", "--fasta-dir", genomes, "--out", tmp_path / "run", "--window", 1500,
                      *TINY_RUN)
    assert status == 1 and not (tmp_path / "run").exists()
    assert err == (f"error: --window 1,500 is longer than every training record of {genomes / 'ape1.fa'} (longest: "
                   f"chr2, 1,100 bp), {genomes / 'ape2.fa'} (longest: chr2, 1,100 bp); the longest window every "
                   "genome can fill is 1,100 bp")


def test_pretrain_seqlen_longer_than_every_training_record_is_refused(genomes, tmp_path, capsys):
    status, err = run(capsys, "pretrain", "--fasta", genomes / "ape1.fa", "--out", tmp_path / "run", "--seqlen",
                      4096, "--steps", 1, "--batch-size", 2, "--device", "cpu")
    assert status == 1 and not (tmp_path / "run").exists()
    assert err.startswith(f"error: --seqlen 4,096 is longer than every training record of {genomes / 'ape1.fa'} "
                          "(longest: chr2, 1,100 bp)")


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_what_to_change(genomes, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 50_000_000)  # 50 MB free
    status, err = run(capsys, "finetune", "--fasta-dir", genomes, "--out", tmp_path / "run", "--window", 1024,
                      "--steps", 1, "--batch-size", 16, "--valid-samples", 2, "--test-samples", 2, "--device", "cpu")
    assert status == 1 and not (tmp_path / "run").exists()
    # tiny preset: 2 layers x 8 values x 96 inner channels x 4 bytes per base, 16 x 1,024 bases
    assert err == ("error: a micro-batch of 16 sequence(s) of 1,024 bases needs at least 100.7 MB for the activations "
                   "of a 2-layer, width-48 model, but 50.0 MB is available on cpu: use a smaller --batch-size or "
                   "--window, --max-batch-tokens below 16,384 (smaller micro-batches, accumulated) or "
                   "--activation-checkpointing")
    status, err = run(capsys, "pretrain", "--fasta", genomes / "ape1.fa", "--out", tmp_path / "lm", "--seqlen", 1024,
                      "--steps", 1, "--batch-size", 16, "--device", "cpu", "--activation-checkpointing")
    assert status == 1 and not (tmp_path / "lm").exists()
    assert "a micro-batch of 16 sequence(s) of 1,024 bases needs at least 56.6 MB" in err
    assert err.endswith("use a smaller --batch-size or --seqlen or --set train.grad_accum=2 (accumulated halves)")


def test_memory_estimate_and_available_memory():
    from ssm_core import MambaConfig

    config = MambaConfig(d_model=256, n_layer=16)  # the 7m DNA preset's shape
    # 72 bytes per d_model per layer and base measured on CPU: the estimate stays below it
    assert memory.mamba_training_bytes(config, 1, 2**15) < 72 * 256 * 16 * 2**15
    assert memory.mamba_training_bytes(config, 1, 2**15) == 64 * 256 * 16 * 2**15
    checkpointed = memory.mamba_training_bytes(config, 1, 2**20, activation_checkpointing=True, bytes_per_value=2)
    assert checkpointed < 28.5e9  # the 7m preset at 2^20 bases, bf16, checkpointed: 28.5 GB measured on an H100
    free = memory.available_memory("cpu")
    assert free is None or 0 < free <= int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
