"""The one way the suite writes a matplotlib figure to disk (Agg backend: no display needed)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Written into every PNG the suite makes (text chunk "Software"), so a later run knows the file is its own.
FIGURE_MARK = "mamba-seq-suite"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, tight: bool = True) -> Path:
    """Lay out ``fig`` (``tight=False``: the caller has, e.g. around a colour bar's own axes), write it to ``path``
    (creating its folder; atomically, through a temporary file in the same folder) and close it. A PNG carries
    FIGURE_MARK (see `is_suite_figure`). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fmt = path.suffix[1:].lower() or "png"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format=fmt, metadata={"Software": FIGURE_MARK} if fmt == "png" else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def is_suite_figure(path: str | os.PathLike) -> bool:
    """True when ``path`` is a PNG written by `save_figure` (its text chunk Software is FIGURE_MARK)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            while header := f.read(8):  # chunks: length, type, data, CRC; text chunks come before the image data
                if len(header) < 8:
                    return False
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    return False
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)
                if kind == b"tEXt" and data == b"Software\0" + FIGURE_MARK.encode():
                    return True
    except OSError:
        return False
    return False
