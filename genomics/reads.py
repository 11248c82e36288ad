"""Streaming reader for the sequences to classify or embed: FASTA or FASTQ, plain, gzip or bgzip, from a file, a
pipe or FIFO (``<(zcat reads.fq.gz)``) or standard input (``-``).

The format is recognised from the content, never from the name: gzip (plain or bgzip: any number of members) by
its magic bytes, then FASTA by a first line starting with '>' (';' comment lines before it are skipped) and FASTQ by
one starting with '@'. Biopython parses the records (``SimpleFastaParser``; ``FastqGeneralIterator``, which reads
multi-line FASTQ and quality lines starting with '@') in one pass that never seeks and holds one record at a time:
memory is bounded by the longest record, not the file. Lines may end in LF, CRLF or CR. Record names may repeat
(interleaved paired reads share theirs): records are told apart by their order.

Every problem is a :class:`GenomicsInputError` naming the file (``<stdin>`` for ``-``) and, where it can be told,
the line and record: a missing file, a directory, not FASTA or FASTQ, a truncated or inconsistent FASTQ record, a
header without a name, a record with no sequence, a corrupt or truncated gzip stream. The sequence's characters are
checked where it is encoded (:func:`genomics.tokenizer.encode` names the record and the position).
"""
from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqIO.QualityIO import FastqGeneralIterator

from genomics.errors import GenomicsInputError

STDIN = "-"
GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_LIMIT = 1 << 16  # longest first line read to recognise the format (a binary file may have no line breaks)


@dataclass(frozen=True)
class SequenceRecord:
    name: str  # the header up to the first whitespace
    sequence: str  # as in the file (case kept), line breaks removed
    line: int  # 1-based line of its header


def source_name(path: str | Path) -> str:
    """How messages name an input: its path, or ``<stdin>`` for ``-``."""
    return "<stdin>" if str(path) == STDIN else str(path)


class _Replay(io.RawIOBase):
    """A read-once binary stream with the bytes already taken from its front (to recognise it) put back."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._pending, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending:
            self._pending = self._rest.read1(len(buffer))  # what is there now: a pipe is never waited on to fill
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _CountedLines:
    """Text lines handed to a parser, counting them: ``number`` and ``last`` are the last line read."""

    def __init__(self, lines: Iterator[str], number: int):
        self._lines, self.number, self.last = lines, number, ""

    def __iter__(self):
        return self

    def __next__(self) -> str:
        self.last = next(self._lines)
        self.number += 1
        return self.last

    def readline(self) -> str:
        return next(self, "")

    def read(self, size: int = -1) -> str:  # FastqGeneralIterator checks for text mode with read(0)
        if size != 0:
            raise io.UnsupportedOperation("read whole lines")
        return ""


def _open(path: str | Path) -> BinaryIO:
    if str(path) == STDIN:
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # a FIFO or /dev/fd/N opens like a file; nothing below seeks
    except FileNotFoundError:
        raise GenomicsInputError(f"{path}: FASTA/FASTQ file not found") from None
    except IsADirectoryError:
        raise GenomicsInputError(f"{path}: a directory, not a FASTA/FASTQ file") from None
    except OSError as exc:
        raise GenomicsInputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _text(raw: BinaryIO) -> io.TextIOWrapper:
    """The decompressed text of a binary stream: gzip is recognised by its first two bytes."""
    head = b""
    while len(head) < 2 and (more := raw.read1(2 - len(head))):
        head += more
    stream = io.BufferedReader(_Replay(head, raw))
    if head == GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    # Invalid UTF-8 becomes U+FFFD, refused with its record and position when the sequence is encoded.
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)


def _first_line(text: io.TextIOWrapper, source: str) -> tuple[str, int]:
    """The first line that is not blank (nor a FASTA ';' comment) and its number; refuses what is not FASTA/FASTQ."""
    number = 0
    while True:
        line = text.readline(_SNIFF_LIMIT)
        number += 1
        if not line:
            raise GenomicsInputError(f"{source}: empty file (no FASTA/FASTQ records)")
        if line.strip() and not line.startswith(";"):
            break
    if not line.startswith((">", "@")):
        shown = line.rstrip("\n")
        if "\ufffd" in shown or any(ord(c) < 32 and c != "\t" for c in shown):
            found = "binary content"
        else:
            found = f"found {shown[:60]!r}"
        raise GenomicsInputError(f"{source}: not a FASTA file, nor FASTQ (line {number} should start with '>' or "
                                 f"'@'; {found})")
    if not line.endswith("\n"):  # a header longer than the sniffing limit: the rest of it
        line += text.readline()
    return line, number


def read_records(path: str | Path) -> Iterator[SequenceRecord]:
    """The records of a FASTA or FASTQ file (plain, gzip or bgzip; ``-`` is stdin) in file order, streamed."""
    source = source_name(path)
    raw = _open(path)
    try:
        text = _text(raw)
        try:
            first, number = _first_line(text, source)
        except (OSError, EOFError, zlib.error) as exc:
            raise GenomicsInputError(f"{source}: cannot read: {exc}") from None
        fastq = first.startswith("@")
        lines = _CountedLines(chain([first], text), number - 1)
        parser = FastqGeneralIterator(lines) if fastq else SimpleFastaParser(lines)
        header, header_line = first, number  # of the record the parser is reading
        while True:
            try:
                item = next(parser)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:  # corrupt or truncated gzip, a failing read
                raise GenomicsInputError(f"{source}: cannot read after line {lines.number}: {exc}") from None
            except ValueError as exc:  # FastqGeneralIterator's refusals (truncated record, lengths differ ...)
                name = header[1:].split(maxsplit=1)[0] if header[1:].strip() else ""
                raise GenomicsInputError(f"{source}, line {lines.number}: FASTQ record {name!r} (line "
                                         f"{header_line}) is not valid: {exc}") from None
            title, sequence = item[0], item[1]
            if not title.strip():
                raise GenomicsInputError(f"{source}, line {header_line}: header without a record name")
            name = title.split(maxsplit=1)[0]
            if not sequence:
                raise GenomicsInputError(f"{source}: record {name!r} has no sequence")
            yield SequenceRecord(name, sequence, header_line)
            # The parser has read the next record's header to know this one had ended.
            header, header_line = lines.last, lines.number
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
