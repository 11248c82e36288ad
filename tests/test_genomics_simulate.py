"""The simulated great-apes benchmark: divergences, realism, determinism, the CLI contract."""
from dataclasses import replace

import numpy as np
import pytest

from genomics.cli import main
from genomics.errors import GenomicsInputError
from genomics.datasets import SpeciesWindows
from genomics.simulate import (SPECIES, N_, SimConfig, _delete, _insert, config_for_size, markov_table,
                               sample_markov, simulate, simulate_genomes)

EXPECTED_DIVERGENCE = {("human", "chimpanzee"): 0.012, ("chimpanzee", "bonobo"): 0.004,
                       ("human", "gorilla"): 0.016, ("bonobo", "gorilla"): 0.016,
                       ("human", "orangutan"): 0.030, ("gorilla", "orangutan"): 0.030}


@pytest.fixture(scope="module")
def aligned_genomes():
    """Substitutions only (no indels, insertions or gaps): species stay base-to-base aligned."""
    config = replace(SimConfig(total_length=1_500_000), indel_ratio=0.0, lineage_insert_rate=0.0,
                     assembly_gaps=False)
    return dict(simulate_genomes(config, seed=3))


def test_pairwise_divergences_match_the_tree(aligned_genomes):
    shared = [name for name in aligned_genomes["chimpanzee"] if name in aligned_genomes["human"]]  # not chr2
    for (a, b), expected in EXPECTED_DIVERGENCE.items():
        x = np.concatenate([aligned_genomes[a][name] & 7 for name in shared])
        y = np.concatenate([aligned_genomes[b][name] & 7 for name in shared])
        observed = float(np.mean(x != y))
        # multiple hits and back-mutations make the observed difference a little smaller than the tree length
        assert expected * 0.88 < observed < expected * 1.05, (a, b, observed)


def test_composition_repeats_gaps_and_names():
    genomes = dict(simulate_genomes(config_for_size("tiny", "realistic"), seed=0))
    assert list(genomes) == ["orangutan", "gorilla", "human", "chimpanzee", "bonobo"]
    assert list(genomes["human"]) == [f"chr{c}" for c in list(range(1, 23)) + ["X"]]
    assert list(genomes["chimpanzee"])[:3] == ["chr1", "chr2A", "chr2B"] and len(genomes["chimpanzee"]) == 24
    codes = np.concatenate(list(genomes["human"].values()))
    bases = codes & 7
    acgt = bases[bases < N_]
    gc = np.isin(acgt, [1, 2]).mean()
    assert 0.39 < gc < 0.43
    cpg = np.mean((acgt[:-1] == 1) & (acgt[1:] == 2)) / (np.mean(acgt == 1) * np.mean(acgt == 2))
    assert cpg < 0.5  # CpG depleted
    assert 0.25 < np.mean(codes >= 8) < 0.5  # soft-masked repeats
    assert 0.001 < np.mean(bases == N_) < 0.05  # assembly gaps
    human_chr2 = genomes["human"]["chr2"]
    chimp_2 = len(genomes["chimpanzee"]["chr2A"]) + len(genomes["chimpanzee"]["chr2B"])
    assert abs(len(human_chr2) - chimp_2) < 0.02 * chimp_2  # the fusion of 2A and 2B
    lengths = {s: sum(len(v) for v in g.values()) for s, g in genomes.items()}
    assert max(lengths.values()) < 1.02 * min(lengths.values())  # indels and insertions are small changes


def test_the_strong_signal_is_the_default_for_tiny_only_and_adds_lineage_insertions():
    realistic, strong = config_for_size("tiny", "realistic"), config_for_size("tiny")
    assert config_for_size("small") == config_for_size("small", "realistic") != config_for_size("small", "strong")
    assert strong.lineage_insert_rate == pytest.approx(20 * realistic.lineage_insert_rate)
    assert strong.lineage_family_divergence > realistic.lineage_family_divergence
    with pytest.raises(GenomicsInputError, match="signal must be one of"):
        config_for_size("tiny", "loud")

    def lengths(config):  # lineage insertions are the only source of extra sequence once indels are off
        config = replace(config, total_length=400_000, indel_ratio=0.0, assembly_gaps=False)
        return {s: sum(len(v) for v in g.values()) for s, g in simulate_genomes(config, seed=1)}

    few, many = lengths(realistic), lengths(strong)
    for species in SPECIES:  # every species' path from the root has the same length (ultrametric tree)
        assert 0.3 * few[species] < many[species] - few[species] < 0.7 * few[species], species


def test_markov_chain_matches_its_table():
    rng = np.random.default_rng(0)
    table = markov_table(2, 0.41, 0.25, rng)
    seq = sample_markov(400_000, table, 2, rng, segment=2000)
    context = (seq[:-2].astype(np.int64) * 4 + seq[1:-1]).reshape(-1)
    following = seq[2:]
    for ctx in range(16):
        counts = np.bincount(following[context == ctx], minlength=4)
        np.testing.assert_allclose(counts / counts.sum(), table[ctx], atol=0.02)


def test_insert_and_delete_against_python_lists():
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 4, size=200).astype(np.uint8)
    positions = np.array([150, 0, 200, 150, 37])
    lengths = np.array([3, 2, 4, 1, 5])
    pieces = (np.arange(lengths.sum()) % 4 + 8).astype(np.uint8)
    expected = list(seq)
    starts = np.cumsum(lengths) - lengths
    for i in sorted(range(5), key=lambda k: (positions[k], k), reverse=True):  # right to left keeps positions valid
        expected[positions[i]:positions[i]] = list(pieces[starts[i]: starts[i] + lengths[i]])
    np.testing.assert_array_equal(_insert(seq, positions, pieces, lengths), expected)
    kept = np.ones(200, dtype=bool)
    for p, n in [(5, 3), (6, 4), (198, 10)]:
        kept[p: p + n] = False
    np.testing.assert_array_equal(_delete(seq, np.array([5, 6, 198]), np.array([3, 4, 10])), seq[kept])


def test_simulation_is_deterministic_by_seed(tmp_path):
    first = simulate(tmp_path / "a", "tiny", seed=5, progress=False)
    second = simulate(tmp_path / "b", "tiny", seed=5, progress=False)
    third = simulate(tmp_path / "c", "tiny", seed=6, progress=False)
    for a, b, c in zip(first, second, third):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()


def test_cli_writes_five_fasta_files_the_species_dataset_reads(tmp_path, capsys):
    out = tmp_path / "apes"
    assert main(["simulate", "--out", str(out), "--size", "tiny", "--seed", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.fa" for s in SPECIES)
    assert capsys.readouterr().out.split() == [str(out / f"{s}.fa") for s in SPECIES]
    assert main(["simulate", "--out", str(tmp_path / "r"), "--size", "tiny", "--seed", "2",
                 "--signal", "realistic"]) == 0
    assert "realistic signal" in capsys.readouterr().err
    assert (tmp_path / "r" / "human.fa").stat().st_size < (out / "human.fa").stat().st_size
    first_line = (out / "bonobo.fa").read_text().split("\n", 1)[0]
    assert first_line == ">chr1 simulated bonobo (seed 2)"
    ds = SpeciesWindows(out, "test", 2048, samples=10)
    assert ds.classes == sorted(SPECIES)
    assert {plan.strategy for plan in ds.plans.values()} == {"chromosome"}
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses, with status 2 and usage on stderr
        main(["simulate", "--out", str(out), "--size", "huge"])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_simulate_writes_over_its_own_genomes_only(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "gorilla.fa").write_text(">my_assembly\nACGT\n")  # a genome of the user's, named like ours
    (out / "notes.txt").write_text("mine\n")
    assert main(["simulate", "--out", str(out), "--size", "tiny"]) == 1
    err = capsys.readouterr().err
    assert f"error: --out {out / 'gorilla.fa'}: an existing file that this command did not write" in err
    assert sorted(p.name for p in out.iterdir()) == ["gorilla.fa", "notes.txt"]  # refused before writing anything
    assert (out / "gorilla.fa").read_text() == ">my_assembly\nACGT\n"
    (out / "gorilla.fa").unlink()
    (out / "human.fa.fai").write_text("an index of some other human.fa\n")
    assert main(["simulate", "--out", str(out), "--size", "tiny"]) == 1
    assert "human.fa.fai: an existing file" in capsys.readouterr().err
    assert main(["simulate", "--out", str(out), "--size", "tiny", "--overwrite"]) == 0
    assert not (out / "human.fa.fai").exists() and (out / "notes.txt").read_text() == "mine\n"
    before = (out / "human.fa").read_bytes()
    assert main(["simulate", "--out", str(out), "--size", "tiny", "--seed", "1"]) == 0  # our own: rewritten
    assert (out / "human.fa").read_bytes() != before
