"""A plain-Python FASTA writer for the tests: independent of the library's own writer, so reading tests check the
library against text written another way (lowercase, IUPAC codes and odd line widths included)."""
from __future__ import annotations

from pathlib import Path


def write_fasta(path, records: dict[str, str], width: int = 60, opener=open) -> Path:
    """Write {name: sequence text} with lines of ``width``; ``opener`` = gzip.open writes plain gzip."""
    with opener(path, "wt") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), width):
                f.write(seq[i: i + width] + "\n")
    return Path(path)
