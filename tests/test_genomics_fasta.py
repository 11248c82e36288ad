"""FASTA access: windows against a plain-Python reading of the same file, indexes, bgzip, bad inputs."""
import gzip

import numpy as np
import pytest
from Bio import bgzf

from genomics.bed import BedInterval
from genomics.errors import GenomicsInputError
from genomics.fasta import (FastaWindows, WindowOptions, fasta_stem, gzip_kind, list_fasta_dir, open_fasta,
                            place_window)
from genomics.tokenizer import PAD, decode, encode, reverse_complement
from fasta_text import write_fasta


def make_records(seed=0):
    """Records with soft-masked stretches, N-runs and lengths that do not fill the last line."""
    rng = np.random.default_rng(seed)
    records = {}
    for name, length in [("chr1", 5003), ("chr2", 1200), ("scaffold_7 some description", 61)]:
        seq = np.array(list("ACGT"))[rng.integers(0, 4, size=length)]
        lower = rng.integers(0, length // 2)
        seq[lower: lower + length // 3] = np.char.lower(seq[lower: lower + length // 3])
        seq[20:40] = "N"
        records[name] = "".join(seq)
    return records


def python_reading(path):
    """The reference: read the whole file line by line, names up to the first space."""
    records, name = {}, None
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith(">"):
            name = line[1:].split()[0]
            records[name] = []
        else:
            records[name].append(line)
    return {k: "".join(v) for k, v in records.items()}


def reference_window(sequence, start, end):
    """Tokens of sequence[start:end] with PAD beyond the ends, computed position by position."""
    return np.array([encode(sequence[i])[0] if 0 <= i < len(sequence) else PAD for i in range(start, end)],
                    dtype=np.uint8)


@pytest.fixture
def fasta_file(tmp_path):
    return write_fasta(tmp_path / "genome.fa", make_records())


def check_random_windows(fasta, reference, rng, count=200):
    for _ in range(count):
        name = rng.choice(list(reference))
        length = len(reference[name])
        start = int(rng.integers(-100, length + 50))
        end = start + int(rng.integers(1, 700))
        np.testing.assert_array_equal(fasta.fetch(name, start, end), reference_window(reference[name], start, end))


def test_windows_match_plain_python_reading(fasta_file, capfd):
    reference = python_reading(fasta_file)
    fasta = open_fasta(fasta_file)
    assert "building FASTA index genome.fa.fai" in capfd.readouterr().err
    assert (fasta_file.parent / "genome.fa.fai").exists()
    assert fasta.lengths == {name: len(seq) for name, seq in reference.items()}
    check_random_windows(fasta, reference, np.random.default_rng(0))
    open_fasta(fasta_file)
    assert capfd.readouterr().err == ""  # the index is reused, silently


def test_width_50_and_whole_record_iteration(tmp_path):
    path = write_fasta(tmp_path / "w50.fasta", make_records(3), width=50)
    reference = python_reading(path)
    fasta = open_fasta(path, quiet=True)
    joined = np.concatenate(list(fasta.iter_tokens("chr1", chunk=777)))
    assert decode(joined) == reference["chr1"].upper()


def test_bgzip_file_gives_the_same_windows(tmp_path):
    records = make_records(1)
    plain = write_fasta(tmp_path / "plain.fa", records)
    compressed = tmp_path / "genome.fa.gz"
    with open(plain, "rb") as src, bgzf.BgzfWriter(str(compressed), "wb") as dst:
        dst.write(src.read())
    assert gzip_kind(compressed) == "bgzf"
    fasta = open_fasta(compressed, quiet=True)
    check_random_windows(fasta, python_reading(plain), np.random.default_rng(1), count=100)


def test_plain_gzip_is_refused_or_decompressed_to_a_cache(tmp_path):
    records = make_records(2)
    path = write_fasta(tmp_path / "genome.fa.gz", records, opener=gzip.open)
    assert gzip_kind(path) == "gzip"
    with pytest.raises(GenomicsInputError, match=r"genome\.fa\.gz: plain gzip.*bgzip"):
        open_fasta(path)
    fasta = open_fasta(path, decompress_to=tmp_path / "cache", quiet=True)
    assert fasta.path == tmp_path / "cache" / "genome.fa"
    assert decode(fasta.fetch("chr2", 0, 1200)) == records["chr2"].upper()


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\n\n  \n", "empty file"),
    (b">a\nACGT\n>b\n>c\nGG\n", "record 'b' has no sequence"),
    (b"hello world\nthis is not a genome\n", "not a FASTA file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a FASTA file"),
    (b">a\nACGT\n>a\nGGCC\n", "duplicate record name"),
])
def test_bad_fasta_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(GenomicsInputError, match=message) as info:
        open_fasta(path, quiet=True)
    assert "bad.fa" in str(info.value)
    assert not (tmp_path / "bad.fa.fai").exists() or message == "record 'b' has no sequence"


def test_missing_file_and_unknown_record(fasta_file):
    with pytest.raises(GenomicsInputError, match="FASTA file not found"):
        open_fasta(fasta_file.parent / "nope.fa")
    with pytest.raises(GenomicsInputError, match="no record named 'chrZ'"):
        open_fasta(fasta_file, quiet=True).fetch("chrZ", 0, 10)


def test_invalid_character_names_file_record_and_position(tmp_path):
    path = tmp_path / "odd.fa"
    path.write_text(">r1\nACGTACGTAC\nGTAXGT\n")
    fasta = open_fasta(path, quiet=True)
    with pytest.raises(GenomicsInputError, match=r"odd\.fa, record 'r1': character 'X' at position 14"):
        fasta.fetch("r1", 5, 16)
    path.write_text(">r1\nACGTRYACGT\n")
    fasta = open_fasta(path, quiet=True)
    assert decode(fasta.fetch("r1", 0, 10)) == "ACGTNNACGT"
    with pytest.raises(GenomicsInputError, match="'R' at position 5 is an IUPAC"):
        fasta.fetch("r1", 0, 10, iupac="error")


def test_place_window_protocol():
    rng = np.random.default_rng(0)
    assert place_window(100, 1100, 200, 5000) == 500  # long interval, no rng: centred
    assert place_window(100, 150, 200, 5000) == 25  # short interval: centred on it, reaching beyond
    for _ in range(200):
        assert 100 <= place_window(100, 1100, 200, 5000, rng=rng) <= 900
        assert 910 <= place_window(1000, 1100, 200, 5000, rng=rng, max_shift=40) <= 990
        # a window already past the record's start may shift right but never further left
        assert -75 <= place_window(0, 50, 200, 5000, rng=rng, max_shift=40) <= -35
        # a window past both ends of a short record stays where it is
        assert place_window(0, 100, 200, 150, rng=rng, max_shift=40) == -50


def test_fasta_windows_from_intervals(fasta_file):
    reference = python_reading(fasta_file)
    intervals = [BedInterval("chr1", 100, 1100, "train", 1), BedInterval("chr2", 1150, 1190, "train", 2)]
    windows = FastaWindows(fasta_file, intervals, WindowOptions(window=256, max_shift=20, rc_aug=True))
    np.testing.assert_array_equal(windows.window(0), reference_window(reference["chr1"], 472, 728))
    np.testing.assert_array_equal(windows.window(1), reference_window(reference["chr2"], 1042, 1298))  # PAD at end
    rng = np.random.default_rng(5)
    flipped = 0
    for _ in range(50):
        tokens = windows.window(0, rng)
        text = decode(tokens)
        forward = reference["chr1"].upper()
        if text not in forward:
            text = decode(reverse_complement(tokens))
            flipped += 1
        assert text in forward
    assert 10 < flipped < 40
    with pytest.raises(GenomicsInputError, match="BED, line 3: chromosome 'chrQ' is not a record"):
        FastaWindows(fasta_file, [BedInterval("chrQ", 0, 10, None, 3)], WindowOptions(window=8))


def test_species_directory_listing(tmp_path, capsys):
    for name in ("human.fa", "chimp.fasta.gz", "gorilla.fna.bgz", "notes.txt", "human.fa.fai", "x.bed.gz",
                 "bonobo.bgz", "E.coli.fa"):
        (tmp_path / name).write_text(">a\nACGT\n")
    assert list(list_fasta_dir(tmp_path)) == ["E.coli", "bonobo", "chimp", "gorilla", "human"]
    assert "skipped, not FASTA file names: notes.txt, x.bed.gz" in capsys.readouterr().err
    assert fasta_stem("hg38.ml.fa.gz") == "hg38.ml" and fasta_stem("bonobo.fa.bgz") == "bonobo"
    with pytest.raises(GenomicsInputError, match="no such directory"):
        list_fasta_dir(tmp_path / "absent")
    (tmp_path / "human.fasta").write_text(">a\nACGT\n")
    with pytest.raises(GenomicsInputError, match="two FASTA files for class 'human'"):
        list_fasta_dir(tmp_path)
