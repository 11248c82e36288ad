"""The streaming FASTA/FASTQ reader: formats recognised from the content (plain, gzip, bgzip), pipes and FIFOs read
in one pass without waiting for the end, memory bounded by a record, every bad input named with file, line and
record."""
from __future__ import annotations

import gzip
import io
import os
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from Bio import bgzf

from genomics.errors import GenomicsInputError
from genomics.reads import SequenceRecord, read_records
from fasta_text import write_fasta

RECORDS = {"chr1 first record": "ACGTNacgtn" * 13 + "GAT", "r2": "TTGCA", "r2 again, as interleaved pairs do": "GGC"}


def fastq_text(records: dict[str, str], width: int | None = None) -> str:
    """FASTQ with '@' as the first quality character (a quality line that looks like a header), sequence and
    quality wrapped at ``width`` when given (multi-line FASTQ)."""
    out = []
    for title, seq in records.items():
        qual = "@" + "I" * (len(seq) - 1)
        wrap = (lambda s: [s[i:i + width] for i in range(0, len(s), width)]) if width else (lambda s: [s])
        out += [f"@{title}", *wrap(seq), "+", *wrap(qual)]
    return "\n".join(out) + "\n"


def expected(records: dict[str, str], lines_per_record: list[int]) -> list[SequenceRecord]:
    starts = np.cumsum([0] + lines_per_record[:-1]) + 1
    return [SequenceRecord(title.split()[0], seq, int(line)) for (title, seq), line in zip(records.items(), starts)]


def test_fasta_and_fastq_plain_gzip_and_bgzip_read_the_same(tmp_path):
    fasta = write_fasta(tmp_path / "a.fa", RECORDS, width=60)
    want = expected(RECORDS, [4, 2, 2])  # header + 3 lines of 60, 60, 13
    assert list(read_records(fasta)) == want
    fq_text = fastq_text(RECORDS)
    fq_want = expected(RECORDS, [4, 4, 4])
    for name, data in [("plain.txt", fq_text.encode()), ("reads.fq.gz", gzip.compress(fq_text.encode())),
                       # gzip members one after another (what `cat a.gz b.gz` gives)
                       ("two_members", gzip.compress(fq_text[:30].encode()) + gzip.compress(fq_text[30:].encode()))]:
        (tmp_path / name).write_bytes(data)
        assert list(read_records(tmp_path / name)) == fq_want, name
    with bgzf.BgzfWriter(tmp_path / "reads.bgz", "wb") as f:
        f.write(fq_text.encode())
    assert list(read_records(tmp_path / "reads.bgz")) == fq_want
    (tmp_path / "wrapped.fastq").write_text(fastq_text(RECORDS, width=7))  # multi-line, '@' quality lines
    assert [(r.name, r.sequence) for r in read_records(tmp_path / "wrapped.fastq")] == \
        [(r.name, r.sequence) for r in fq_want]


def test_line_endings_blank_lines_and_comments(tmp_path):
    lf = b">a\nACGT\nAC\n>b\nGG\n"
    for name, data in [("crlf.fa", lf.replace(b"\n", b"\r\n")), ("cr.fa", lf.replace(b"\n", b"\r")),
                       ("lead.fa", b"\n\n;comment\n" + lf)]:
        (tmp_path / name).write_bytes(data)
        got = [(r.name, r.sequence) for r in read_records(tmp_path / name)]
        assert got == [("a", "ACGTAC"), ("b", "GG")], name
    assert [r.line for r in read_records(tmp_path / "lead.fa")] == [4, 7]


def test_stdin(monkeypatch):
    data = gzip.compress(fastq_text(RECORDS).encode())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    assert [r.name for r in read_records("-")] == ["chr1", "r2", "r2"]


def test_a_fifo_is_read_as_it_comes(tmp_path):
    """Records come out while the writer is still writing: one pass, no seeking, no waiting for the end."""
    fifo = tmp_path / "reads.fifo"
    os.mkfifo(fifo)
    first_seen, finished = threading.Event(), threading.Event()

    def writer():
        with open(fifo, "w") as f:
            f.write("@read1\nACGT\n+\nIIII\n@read2\nGG\n")
            f.flush()
            first_seen.wait(timeout=10)  # the rest only once the reader has yielded read1
            f.write("+\nII\n")
        finished.set()

    thread = threading.Thread(target=writer)
    thread.start()
    records = read_records(fifo)
    assert next(records).name == "read1"
    assert not finished.is_set()  # read1 came out before the input ended
    first_seen.set()
    assert [r.name for r in records] == ["read2"]
    thread.join()


def test_memory_holds_a_record_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    reads = 50_000
    seqs = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=(reads, 100))]
    text = b"".join(b"@read%d\n%s\n+\n%s\n" % (i, s.tobytes(), b"I" * 100) for i, s in enumerate(seqs))
    path = tmp_path / "many.fq.gz"
    path.write_bytes(gzip.compress(text, compresslevel=1))
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == reads
    assert len(text) > 10_000_000 and peak < 1_000_000, peak  # 10 MB of reads through well under 1 MB


BAD = {
    "empty.fa": (b"", "empty file"),
    "blank.fq": (b"\n \n", "empty file"),
    "not_fasta.bed": (b"chrom\tstart\tend\n", "not a FASTA file, nor FASTQ (line 1 should start with '>' or '@'; "
                                              "found 'chrom\\tstart\\tend')"),
    "binary.fa": (bytes(range(256)) * 4, "binary content"),
    "truncated.fq": (b"@r1\nACGT\n+\nIIII\n@r2 x\nACGT\n",
                     "line 6: FASTQ record 'r2' (line 5) is not valid: End of file without quality information."),
    "lengths.fq": (b"@r1\nACGT\n+\nIII\n", "line 4: FASTQ record 'r1' (line 1) is not valid: Lengths of sequence "
                                          "and quality values differs for r1 (4 and 3)."),
    "captions.fq": (b"@r1\nACGT\n+r9\nIIII\n", "FASTQ record 'r1' (line 1) is not valid: Sequence and quality "
                                              "captions differ."),
    "no_name.fa": (b">ok\nAC\n>\nACGT\n", "line 3: header without a record name"),
    "hollow.fa": (b">ok\nAC\n>hollow\n>next\nAC\n", "record 'hollow' has no sequence"),
    "cut.fa.gz": (gzip.compress(b">a\n" + np.random.default_rng(0).choice(list(b"ACGT"), 20_000).astype(np.uint8)
                                .tobytes())[:2000], "cannot read after line 1: Compressed file ended"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_named(tmp_path, name):
    content, message = BAD[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GenomicsInputError) as caught:
        list(read_records(path))
    text = str(caught.value)
    assert text.startswith(f"{path}") and message in text, text
    assert "b'" not in text and 'b"' not in text  # no Python bytes repr reaches the user


def test_missing_file_directory_and_stdin_are_named(tmp_path, monkeypatch):
    with pytest.raises(GenomicsInputError, match="missing.fq: FASTA/FASTQ file not found"):
        next(read_records(tmp_path / "missing.fq"))
    with pytest.raises(GenomicsInputError, match="a directory, not a FASTA/FASTQ file"):
        next(read_records(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"@r1\nAC\n"))))
    with pytest.raises(GenomicsInputError, match=r"^<stdin>, line 2: FASTQ record 'r1' \(line 1\) is not valid"):
        list(read_records("-"))
