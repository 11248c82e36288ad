"""Verified, resumable downloads: what :func:`ssm_core.utils.manifests.fetch` (``genomics fetch``, ``audio fetch``)
downloads with.

A download goes to ``<dest>.part``; an interrupted one resumes from the bytes already there (HTTP Range).
The finished file is checked against its SHA-256 or MD5 (and size, and the length the server announced) before it
is renamed into place, so a corrupt or truncated file is never used: on a mismatch the partial file is deleted and
the download starts over; a transfer that ends early is resumed. A file that nothing verified (no checksum) and
that turns out to be damaged when it is unpacked raises :class:`CorruptFileError`, naming it.
``file://`` URLs are supported so that the logic is testable without a network.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssm_core.utils.progress import progress_bar

from ssm_core.utils.fetch_paths import replacing

CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not match the checksum or size its manifest declares."""


class CorruptFileError(ChecksumError):
    """A file is not what it claims to be: a truncated or damaged gzip or archive, or a transfer that kept ending
    before the length the server announced. The message names the file (and URL)."""


def file_digest(path: str | os.PathLike, algorithm: str, chunk: int = CHUNK) -> str:
    """Hex digest (``"sha256"``, ``"md5"``, ...) of a file, read in chunks (memory stays flat for multi-GB
    genomes)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256sum(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def md5sum(path: str | os.PathLike) -> str:
    """MD5, for publishers that list only that (UCSC's md5sum.txt): it detects corruption, not tampering."""
    return file_digest(path, "md5")


def _mismatch(path: Path, expected: dict[str, str | None]) -> str | None:
    """``"<algorithm> <got> != expected <want>"`` for the first expected digest the file fails, else None."""
    for algorithm, want in expected.items():
        if want is not None and (got := file_digest(path, algorithm)) != want:
            return f"{algorithm} {got} != expected {want}"
    return None


def _open(url: str, offset: int):
    """Open ``url`` at byte ``offset``; return (stream, total_size or None, resumed: bool)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        f = open(path, "rb")
        f.seek(offset)
        return f, os.path.getsize(path), True
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    resp = urllib.request.urlopen(req, timeout=60)
    resumed = offset > 0 and resp.status == 206  # a server that ignores Range sends the whole file
    length = resp.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length is not None else None
    return resp, total, resumed


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, size: int | None = None,
             retries: int = 1, quiet: bool = False, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify it.

    Returns ``dest``. If ``dest`` already exists and matches ``sha256`` and ``md5`` (those given), nothing is
    downloaded. Raises :class:`ChecksumError` when the file still mismatches after ``retries`` fresh attempts.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = {"sha256": sha256, "md5": md5}
    if dest.exists():
        if _mismatch(dest, expected) is None:
            return dest
        if not quiet:
            print(f"{dest}: checksum mismatch with the manifest; fetching it again")
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        stream, total, resumed = _open(url, offset)
        with stream, open(part, "ab" if resumed else "wb") as out, progress_bar(
            total=total, initial=offset if resumed else 0, unit="B", unit_scale=True,
            desc=dest.name, disable=quiet,
        ) as bar:
            broken = None
            try:
                while block := stream.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except http.client.HTTPException as err:  # e.g. IncompleteRead: the bytes so far are resumed from below
                broken = err
            out.flush()
            os.fsync(out.fileno())
        got = part.stat().st_size
        if broken is not None or (total is not None and got < total):  # ended early (urllib may say nothing)
            problem = (f"the transfer broke off after {got} bytes ({type(broken).__name__})" if total is None
                       else f"the transfer ended after {got} of the {total} bytes the server announced")
            if not quiet:
                print(f"{dest.name}: {problem}; " + ("resuming" if attempt < retries else "giving up"))
            continue
        if total is not None and got > total:
            problem = f"{got} bytes, more than the {total} the server announced"
        elif size is not None and got != size:
            problem = f"size {got} != expected {size}"
        else:
            problem = _mismatch(part, expected)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink()  # never keep (or resume from) bytes that failed verification
        if not quiet:
            print(f"{dest.name}: {problem}; " + ("retrying from scratch" if attempt < retries else "giving up"))
    if part.exists():  # only a transfer that ended early keeps its bytes
        raise CorruptFileError(f"{url} -> {dest}: {problem}; run fetch again to resume from {part}")
    raise ChecksumError(f"{url} -> {dest}: {problem}")


GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # truncated, not gzip, damaged


@contextmanager
def reading_gzip(src: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of reading a truncated or damaged gzip file ``src`` into :class:`CorruptFileError`."""
    try:
        yield
    except GZIP_ERRORS as err:
        raise CorruptFileError(f"{src}: not a complete gzip file ({type(err).__name__}: {err})") from None


def decompress_gzip(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Decompress a .gz file to ``dest`` atomically (a fresh temporary file beside it, then rename; deleted on any
    failure). A truncated or damaged file raises :class:`CorruptFileError` naming ``src``."""
    dest = Path(dest)
    with replacing(dest) as tmp, reading_gzip(src), gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
    return dest
