"""Species and genome window datasets: determinism by (seed, epoch, index), split discipline, workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genomics.datasets import GenomeWindows, SpeciesWindows
from genomics.errors import GenomicsInputError
from genomics.fasta import open_fasta
from genomics.tokenizer import N, PAD

CHROMS = [str(c) for c in range(1, 14)] + ["X"]


def write_genome(path, rng, names, length, gc):
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    with open(path, "w") as f:
        for name in names:
            n = int(length * rng.uniform(0.5, 1.5))
            seq = "".join(np.array(list("ACGT"))[rng.choice(4, size=n, p=p)])
            f.write(f">{name}\n" + "\n".join(seq[i:i + 70] for i in range(0, n, 70)) + "\n")


@pytest.fixture(scope="module")
def species_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("species")
    rng = np.random.default_rng(0)
    for species, gc in (("alpha", 0.35), ("beta", 0.5), ("gamma", 0.65)):
        write_genome(directory / f"{species}.fa", rng, [f"chr{c}" for c in CHROMS], 3000, gc)
    return directory


def test_species_windows_are_deterministic_and_inside_their_split(species_dir):
    ds = SpeciesWindows(species_dir, "test", 512, samples=60, seed=7)
    assert ds.classes == ["alpha", "beta", "gamma"]
    assert all(plan.strategy == "chromosome" for plan in ds.plans.values())
    again = SpeciesWindows(species_dir, "test", 512, samples=60, seed=7)
    labels = []
    for i in range(len(ds)):
        tokens, label = ds[i]
        assert tokens.dtype == torch.int64 and tokens.shape == (512,)
        torch.testing.assert_close(tokens, again[i][0])
        example = ds.sample(i)
        assert example["record"] in {"chr5", "chr7", "chr9", "chr10", "chr11"}
        fasta = open_fasta(species_dir / f"{example['class']}.fa", quiet=True)
        np.testing.assert_array_equal(example["tokens"], fasta.fetch(example["record"], example["start"],
                                                                     example["start"] + 512))
        labels.append(label)
    assert set(labels) == {0, 1, 2}
    ds.set_epoch(3)
    torch.testing.assert_close(ds[0][0], again[0][0])  # evaluation windows do not change with the epoch


def test_training_windows_change_with_the_epoch_and_seed(species_dir):
    ds = SpeciesWindows(species_dir, "train", 256, samples=10, seed=1, rc_aug=True)
    first = torch.stack([ds[i][0] for i in range(10)])
    ds.set_epoch(1)
    second = torch.stack([ds[i][0] for i in range(10)])
    assert not torch.equal(first, second)
    ds.set_epoch(0)
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(10)]), first)  # resume reproduces
    other = SpeciesWindows(species_dir, "train", 256, samples=10, seed=2, rc_aug=True)
    assert not torch.equal(first, torch.stack([other[i][0] for i in range(10)]))
    assert all(ds.sample(i)["record"] not in {"chr1", "chr3", "chr12", "chr13", "chr5", "chr7", "chr9",
                                              "chr10", "chr11"} for i in range(10))


def test_dataloader_workers_give_the_same_batches(species_dir):
    ds = SpeciesWindows(species_dir, "valid", 300, samples=24, seed=0)
    direct = torch.stack([ds[i][0] for i in range(24)])
    loaded = torch.cat([tokens for tokens, _ in DataLoader(ds, batch_size=8, num_workers=2)])
    torch.testing.assert_close(loaded, direct)


def test_short_regions_are_left_padded(species_dir):
    ds = SpeciesWindows(species_dir, "valid", 8000, samples=5, seed=0)  # longer than every chromosome
    for i in range(5):
        example = ds.sample(i)
        tokens = example["tokens"]
        length = ds.fastas[example["class"]].lengths[example["record"]]
        assert (tokens[: 8000 - length] == PAD).all() and (tokens[8000 - length:] != PAD).all()


def test_block_split_windows_never_touch_training_sequence(tmp_path):
    rng = np.random.default_rng(1)
    for species, gc in (("one", 0.4), ("two", 0.6)):
        write_genome(tmp_path / f"{species}.fasta", rng, ["contig_a"], 200_000, gc)
    test = SpeciesWindows(tmp_path, "test", 1000, samples=40, seed=0)
    for i in range(40):
        example = test.sample(i)
        plan = test.plans[example["class"]]
        assert plan.strategy == "block"
        train = plan.regions["train"]
        lo, hi = example["start"], example["start"] + 1000
        assert all(hi <= r.start or r.end <= lo for r in train)


def test_species_dataset_errors(species_dir, tmp_path):
    with pytest.raises(GenomicsInputError, match="split must be one of"):
        SpeciesWindows(species_dir, "training", 100)
    with pytest.raises(GenomicsInputError, match="window must be a positive integer"):
        SpeciesWindows(species_dir, "train", 0)
    with pytest.raises(GenomicsInputError, match=r"no FASTA file for class\(es\) \['delta'\]"):
        SpeciesWindows(species_dir, "train", 100, classes=["alpha", "delta"])
    (tmp_path / "solo.fa").write_text(">chr1\nACGT\n")
    with pytest.raises(GenomicsInputError, match="needs at least 2 FASTA files"):
        SpeciesWindows(tmp_path, "train", 100)


def test_genome_windows_from_bed(species_dir, tmp_path):
    fasta_path = species_dir / "beta.fa"
    bed = tmp_path / "sequences.bed"
    bed.write_text("chr2\t100\t1100\ttrain\nchr4\t0\t2000\ttrain\nchr1\t500\t900\tvalid\nchr1\t2000\t2100\ttest\n")
    train = GenomeWindows(fasta_path, bed, split="train", window=512, seed=0, max_shift=50, rc_aug=True)
    assert len(train) == 2 and train.plan.strategy == "bed"
    # the printed plan covers every split of the BED, not just the one this dataset draws from
    assert [train.plan.bases(s) for s in ("train", "valid", "test")] == [3000, 400, 100]
    assert train[0].shape == (512,) and train[0].dtype == torch.int64
    valid = GenomeWindows(fasta_path, bed, split="valid", window=256)
    fasta = open_fasta(fasta_path, quiet=True)
    np.testing.assert_array_equal(valid.window_tokens(0), fasta.fetch("chr1", 572, 828))  # centred on 500..900
    valid.set_epoch(5)
    np.testing.assert_array_equal(valid.window_tokens(0), fasta.fetch("chr1", 572, 828))
    repeated = GenomeWindows(fasta_path, bed, split="train", window=512, samples=6)
    assert len(repeated) == 6  # cycles over the intervals


def test_genome_windows_without_bed(species_dir):
    ds = GenomeWindows(species_dir / "gamma.fa", split="valid", window=1000, seed=0)
    assert ds.plan.strategy == "chromosome"
    assert len(ds) == ds.plan.bases("valid") // 1000
    torch.testing.assert_close(ds[3], GenomeWindows(species_dir / "gamma.fa", split="valid", window=1000)[3])
    with pytest.raises(IndexError):
        ds.window_tokens(len(ds))


def test_windows_that_are_mostly_n_are_redrawn(tmp_path):
    rng = np.random.default_rng(4)
    for species in ("gappy", "other"):
        with open(tmp_path / f"{species}.fa", "w") as f:
            for name in ("chr5", "chr1", "chr2"):
                seq = "N" * 8000 + "".join(np.array(list("ACGT"))[rng.integers(0, 4, size=2000)])
                f.write(f">{name}\n{seq}\n")
    kept = SpeciesWindows(tmp_path, "test", 1000, samples=50, seed=0, max_n_fraction=0.5)
    raw = SpeciesWindows(tmp_path, "test", 1000, samples=50, seed=0, max_n_fraction=1.0)
    n_fraction = lambda ds: np.mean([np.mean(ds.sample(i)["tokens"] == N) for i in range(50)])
    assert n_fraction(raw) > 0.6  # most of the sequence is an N-run
    assert n_fraction(kept) < 0.25  # redrawn windows mostly avoid it
