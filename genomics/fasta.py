"""Random access to FASTA files (plain or bgzip) and fixed-length token windows from BED intervals.

Reading goes through pyfaidx, which keeps only the ``.fai`` index in memory: fetching a window reads just
that window's bytes, so memory stays flat however large the genome. The ``.fai`` (and ``.gzi`` for bgzip)
is built next to the file the first time, with one line on stderr saying so.

A plain-gzip FASTA cannot be read at random positions. :func:`open_fasta` refuses it with a message saying
how to recompress it with ``bgzip``, or, given ``decompress_to=DIR``, decompresses it once into that cache
directory and reads the copy.

Window protocol of :class:`FastaWindows` (our reading of HyenaDNA's hg38 set; see its docstring): an
interval at least as long as the window gives a window inside it (random offset when sampling, centred
otherwise); a shorter interval gives a window centred on it that extends into the flanking sequence;
optional random shifts and reverse-complement augmentation; positions beyond a record's ends are PAD.
"""
from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from genomics.bed import BedInterval
from genomics.errors import GenomicsInputError
from genomics.tokenizer import PAD, encode, reverse_complement

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".faa", ".seq")
COMPRESSED_SUFFIXES = (".gz", ".bgz", ".bgzf")


def fasta_stem(path: str | Path) -> str:
    """File name without its FASTA and compression extensions: ``chimp.fa.bgz`` -> ``chimp``."""
    name = Path(path).name
    lowered = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lowered.endswith(suffix):
            name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
            break
    for suffix in FASTA_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_fasta_path(path: str | Path) -> bool:
    """Whether the file name ends like a FASTA file: a FASTA extension, optionally compressed
    (``human.fa.gz``), or a compressed name with no other extension (``bonobo.bgz``)."""
    name = Path(path).name.lower()
    compressed = name.endswith(COMPRESSED_SUFFIXES)
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.endswith(FASTA_SUFFIXES) or (compressed and "." not in name)


def gzip_kind(path: str | Path) -> str | None:
    """``"bgzf"`` for a blocked gzip (bgzip) file, ``"gzip"`` for plain gzip, ``None`` if not compressed."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return None
    # BGZF: FEXTRA flag set and a 'BC' extra subfield right after XLEN (SAM/BAM specification, section 4.1).
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _check_file(path: Path):
    if path.is_dir():
        raise GenomicsInputError(f"{path}: a directory, not a FASTA file")
    if not path.is_file():
        raise GenomicsInputError(f"{path}: FASTA file not found")


def _first_text(path: Path, compressed: bool, nbytes: int = 4096) -> bytes:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            return f.read(nbytes)
    except (OSError, EOFError) as exc:
        raise GenomicsInputError(f"{path}: cannot read: {exc}") from None


def _decompressed_copy(path: Path, cache_dir: Path) -> Path:
    """Decompress a plain-gzip FASTA into ``cache_dir`` once; later calls reuse the copy while it is newer."""
    from ssm_core.utils.download import decompress_gzip

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / path.name[: -len(path.suffix)] if path.suffix else cache_dir / (path.name + ".fa")
    if not target.exists() or target.stat().st_mtime < path.stat().st_mtime:
        print(f"{path}: plain gzip, decompressing to {target} for random access", file=sys.stderr)
        decompress_gzip(path, target)
    return target


def _first_duplicate_name(index: Path) -> str | None:
    """The first record name that a FASTA index (.fai: one tab-separated line per record) lists twice, if any."""
    seen = set()
    with open(index) as lines:
        for line in lines:
            name = line.split("\t", 1)[0]
            if name in seen:
                return name
            seen.add(name)
    return None


class FastaFile:
    """One FASTA file opened for random access.

    Attributes: ``path`` (the file read; a decompressed copy when one was made), ``source`` (the file the user
    named), ``lengths`` (record name -> length, in file order). Picklable: a DataLoader worker reopens the
    file on its first fetch.
    """

    def __init__(self, path: str | Path, *, decompress_to: str | Path | None = None, quiet: bool = False):
        self.source = Path(path)
        self.path = self._resolve(self.source, decompress_to)
        self._fasta = None
        self._open(announce=not quiet)
        self.lengths = {name: len(self._fasta[name]) for name in self._fasta.keys()}
        if not self.lengths:
            raise GenomicsInputError(f"{self.source}: no FASTA records")
        empty = [name for name, n in self.lengths.items() if n == 0]
        if empty:
            raise GenomicsInputError(f"{self.source}: record {empty[0]!r} has no sequence"
                                     + (f" (and {len(empty) - 1} more empty records)" if len(empty) > 1 else ""))

    @staticmethod
    def _resolve(path: Path, decompress_to) -> Path:
        _check_file(path)
        if path.stat().st_size == 0:
            raise GenomicsInputError(f"{path}: empty file")
        kind = gzip_kind(path)
        head = _first_text(path, compressed=kind is not None).lstrip()
        if not head:
            raise GenomicsInputError(f"{path}: empty file (no sequence data)")
        if b"\r" in head[:-1] and b"\n" not in head:  # the whole file would read as one header line
            raise GenomicsInputError(f"{path}: lines end in CR only (classic Mac OS); convert them first, e.g. "
                                     f"`tr '\\r' '\\n' < {path.name} > {fasta_stem(path)}.unix.fa`")
        if not head.startswith((b">", b";")):
            line = head.split(b"\n", 1)[0][:60]
            raise GenomicsInputError(f"{path}: not a FASTA file (expected a '>' header line, found {line!r})")
        if kind == "gzip":
            if decompress_to is None:
                raise GenomicsInputError(
                    f"{path}: plain gzip, which cannot be read at random positions; recompress it with bgzip "
                    f"(`gunzip -c {path.name} | bgzip > {fasta_stem(path)}.fa.bgz`) or pass a cache "
                    "directory to decompress it into (--decompress-cache DIR / decompress_to=DIR)")
            return _decompressed_copy(path, Path(decompress_to))
        return path

    def _open(self, announce: bool = False):
        import pyfaidx

        index = Path(str(self.path) + ".fai")
        building = not index.exists() or index.stat().st_mtime < self.path.stat().st_mtime
        if building and announce:
            print(f"{self.source}: building FASTA index {index.name}", file=sys.stderr)
        self._pid = os.getpid()
        try:
            # duplicates are read from the index below: pyfaidx names them only in the text of a ValueError
            self._fasta = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=False,
                                        read_ahead=None, duplicate_action="first")
            duplicate = _first_duplicate_name(index)
            problem = f'duplicate record name "{duplicate}"' if duplicate is not None else None
        except Exception as exc:  # pyfaidx raises ValueError, FastaIndexingError, OSError ...: name the file
            problem = str(exc)
        if problem is not None:
            self.close()
            if building:  # never leave a half-built or wrong index behind
                for stale in (index, Path(str(self.path) + ".gzi")):
                    stale.unlink(missing_ok=True)
            raise GenomicsInputError(f"{self.source}: cannot index FASTA: {problem}")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fasta"] = None
        return state

    def _record(self, name: str):
        # A forked DataLoader worker must not share the parent's file handle (concurrent seeks): reopen.
        if self._fasta is None or self._pid != os.getpid():
            self._open()
        try:
            return self._fasta[name]
        except KeyError:
            raise GenomicsInputError(f"{self.source}: no record named {name!r}") from None

    def fetch(self, name: str, start: int, end: int, *, iupac: str = "n") -> np.ndarray:
        """Tokens of ``name[start:end]`` (0-based, half-open), uint8 (end - start,).

        Coordinates may reach past the record's ends: those positions are PAD.
        """
        if name not in self.lengths:
            raise GenomicsInputError(f"{self.source}: no record named {name!r}")
        out = np.full(end - start, PAD, dtype=np.uint8)
        lo, hi = max(start, 0), min(end, self.lengths[name])
        if hi > lo:
            text = self._record(name)[lo:hi]
            out[lo - start: hi - start] = encode(text, iupac=iupac, source=f"{self.source}, record {name!r}",
                                                 offset=lo)
        return out

    def iter_tokens(self, name: str, chunk: int = 1 << 22, *, iupac: str = "n") -> Iterator[np.ndarray]:
        """A whole record as consecutive token chunks (memory bounded by ``chunk``)."""
        for start in range(0, self.lengths[name], chunk):
            yield self.fetch(name, start, min(start + chunk, self.lengths[name]), iupac=iupac)

    def close(self):
        if self._fasta is not None:
            self._fasta.close()
            self._fasta = None


def open_fasta(path: str | Path, *, decompress_to: str | Path | None = None, quiet: bool = False) -> FastaFile:
    """Open a FASTA file (plain or bgzip; plain gzip only with ``decompress_to``) for random access."""
    return FastaFile(path, decompress_to=decompress_to, quiet=quiet)


def place_window(start: int, end: int, window: int, record_length: int, *, rng: np.random.Generator | None = None,
                 max_shift: int = 0) -> int:
    """Start coordinate of a ``window``-long window for the interval [start, end) of a record.

    Long interval: a window inside it (uniform offset with ``rng``, centred without). Short interval: the window
    is centred on it. A random shift in [-max_shift, max_shift] (with ``rng``) never pushes the window further
    past the record's ends than it already was.
    """
    if end - start >= window:
        begin = int(rng.integers(start, end - window + 1)) if rng is not None else start + (end - start - window) // 2
    else:
        begin = (start + end) // 2 - window // 2
    if rng is not None and max_shift > 0:
        lowest, highest = min(begin, 0), max(begin, record_length - window)
        begin = int(np.clip(begin + rng.integers(-max_shift, max_shift + 1), lowest, highest))
    return begin


@dataclass(frozen=True)
class WindowOptions:
    window: int
    max_shift: int = 0  # random shift of each window, in bases, both directions (sampling only)
    rc_aug: bool = False  # reverse-complement half of the sampled windows
    iupac: str = "n"  # how IUPAC ambiguity codes are read: "n" or "error"


class FastaWindows:
    """Fixed-length token windows from a FASTA file and a list of intervals (e.g. a BED split).

    ``window(i, rng=None)``: tokens uint8 (window,) for interval ``i``; deterministic (centred, no
    augmentation) without ``rng``, sampled (random offset and shift, reverse complement) with it.
    ``len()`` is the number of intervals. Picklable for DataLoader workers.
    """

    def __init__(self, fasta: str | Path | FastaFile, intervals: Sequence[BedInterval], options: WindowOptions,
                 *, bed_name: str = "BED"):
        if options.window <= 0:
            raise GenomicsInputError(f"window must be positive, got {options.window}")
        self.fasta = fasta if isinstance(fasta, FastaFile) else open_fasta(fasta)
        self.options = options
        self.intervals = list(intervals)
        if not self.intervals:
            raise GenomicsInputError(f"{bed_name}: no intervals to draw windows from")
        for interval in self.intervals:
            if interval.chrom not in self.fasta.lengths:
                raise GenomicsInputError(f"{bed_name}, line {interval.line}: chromosome {interval.chrom!r} "
                                         f"is not a record of {self.fasta.source}")

    def __len__(self) -> int:
        return len(self.intervals)

    def window(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        interval = self.intervals[i]
        opts = self.options
        begin = place_window(interval.start, interval.end, opts.window, self.fasta.lengths[interval.chrom],
                             rng=rng, max_shift=opts.max_shift)
        tokens = self.fasta.fetch(interval.chrom, begin, begin + opts.window, iupac=opts.iupac)
        if rng is not None and opts.rc_aug and rng.random() < 0.5:
            tokens = reverse_complement(tokens)
        return tokens


def list_fasta_dir(directory: str | Path) -> dict[str, Path]:
    """The FASTA files of a species directory: class name -> path, sorted by name.

    The class name is the file name without its FASTA and compression extensions, and only those, so dots
    inside a name stay: ``Homo_sapiens.fa.gz`` -> ``Homo_sapiens``, ``E.coli.fasta.bgz`` -> ``E.coli``,
    ``bonobo.bgz`` -> ``bonobo``. Other files (notes, BED files) are skipped and named on stderr; index files
    (.fai, .gzi) and hidden files silently.
    """
    directory = Path(directory)
    if not directory.exists():
        raise GenomicsInputError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise GenomicsInputError(f"{directory}: not a directory (expected a directory of FASTA files, one per class)")
    classes: dict[str, Path] = {}
    skipped = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.name.endswith((".fai", ".gzi")):
            continue
        if not path.is_file() or not is_fasta_path(path):
            skipped.append(path.name)
            continue
        name = fasta_stem(path)
        if name in classes:
            raise GenomicsInputError(f"{directory}: two FASTA files for class {name!r}: {classes[name].name} "
                                     f"and {path.name}")
        classes[name] = path
    if skipped:
        print(f"{directory}: skipped, not FASTA file names: {', '.join(skipped)}", file=sys.stderr)
    if len(classes) < 1:
        raise GenomicsInputError(f"{directory}: no FASTA files (.fa/.fasta/.fna, optionally .gz/.bgz)")
    return classes
