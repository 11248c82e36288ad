"""Data manifests (``data_manifests/*.json``) and ``python -m genomics fetch``.

A manifest names the files of one real data set with their URL, size and checksum, licence, citation and the
post-processing that makes them usable (format: ``data_manifests/README.md``). A checksum is a pinned SHA-256 or
MD5, or, where none could be pinned, ``checksums_url``: the publisher's own checksum list in ``md5sum`` format
(UCSC's ``md5sum.txt`` beside every assembly), read at fetch time. ``fetch`` downloads each file into
``DEST/.downloads/`` through :func:`ssm_core.utils.download.download` (resumes a partial ``.part`` file,
verifies size and checksum, deletes and re-fetches a corrupt file, never uses it), then post-processes it into
``DEST/<output>``:

``decompress``  plain-gzip -> uncompressed file (fastest random access)
``bgzip``       plain-gzip -> BGZF (blocked gzip: random access at a third of the disk space)
``faidx``       build the FASTA index (``.fai``, plus ``.gzi`` for BGZF) so the first run does not have to

Fetch prints the SHA-256 of every file no pinned SHA-256 verified, so it can be pinned, and says plainly when
nothing verified a file. A stamp ``DEST/.fetch/<output>.json`` records the source's SHA-256, what verified it
and the output's size; a later fetch skips
files whose stamp agrees with the manifest and whose output still has that size, and redoes the others (a
checksum the manifest now pins differently, an output truncated or overwritten since).

Nothing is written outside ``DEST`` and nothing a user had there is replaced (``ssm_core.utils.fetch_paths``):
``filename`` and ``output`` must be plain file names, every target must resolve inside ``DEST`` (also through
symlinks there), and an existing output is replaced only when its stamp says this manifest's fetch made it; all
of it is checked for every file before the first download.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genomics.errors import GenomicsInputError
from ssm_core.utils.download import (MANIFEST_DIR, CorruptFileError, check_url, is_hex, reading_gzip,
                                     unpinned_notice)
from ssm_core.utils.fetch_paths import (STAMPS, claim, inside, making, plain_name, read_stamp, replacing,
                                        write_stamp)

DOWNLOADS = ".downloads"  # DEST/.downloads/<filename>, until post-processed
POST_STEPS = ("decompress", "bgzip", "faidx")


@dataclass(frozen=True)
class ManifestFile:
    name: str  # file name of the download
    url: str
    output: str  # file name after post-processing (the one to use)
    sha256: str | None = None
    md5: str | None = None
    checksums_url: str | None = None  # the publisher's checksum list (md5sum format), used when none is pinned
    size: int | None = None
    post: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Manifest:
    name: str
    description: str
    files: tuple[ManifestFile, ...]
    path: Path
    info: dict = field(default_factory=dict)  # licence, citation, ... (documentation, not used by fetch)


def available_manifests() -> list[str]:
    """Names of the genomics manifests in ``data_manifests/`` (the audio ones live there too)."""
    names = []
    for path in sorted(MANIFEST_DIR.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("kind") == "genomics":
                names.append(path.stem)
        except (json.JSONDecodeError, AttributeError):
            continue
    return names


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A manifest by name (``hg38`` -> ``data_manifests/hg38.json``) or by path; validated."""
    path = Path(name_or_path)
    if not path.is_file():
        path = MANIFEST_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise GenomicsInputError(f"no manifest {str(name_or_path)!r}: not a file, and not one of "
                                 f"{available_manifests()} in {MANIFEST_DIR}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GenomicsInputError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or not data["files"]:
        raise GenomicsInputError(f"{path}: a manifest is a JSON object with a non-empty 'files' list")
    if data.get("kind") != "genomics":
        raise GenomicsInputError(f"{path}: not a genomics manifest (it lacks \"kind\": \"genomics\"; audio "
                                 "manifests are fetched with `python -m audio fetch`)")
    files, filenames, outputs = [], set(), set()
    for i, entry in enumerate(data["files"]):
        where = f"{path}, files[{i}]"
        if not isinstance(entry, dict):
            raise GenomicsInputError(f"{where}: each file entry is a JSON object")
        missing = [key for key in ("filename", "url") if not entry.get(key)]
        if missing:
            raise GenomicsInputError(f"{where}: missing {missing}")
        if not isinstance(entry.get("post", []), list):
            raise GenomicsInputError(f"{where}: post must be a list of steps, got {entry['post']!r}")
        post = tuple(entry.get("post", ()))
        unknown = [step for step in post if step not in POST_STEPS]
        if unknown:
            raise GenomicsInputError(f"{where}: unknown post-processing step(s) {unknown}; known: {POST_STEPS}")
        if "decompress" in post and "bgzip" in post:
            raise GenomicsInputError(f"{where}: choose one of 'decompress' and 'bgzip'")
        digests = {}
        for key, digits in (("sha256", 64), ("md5", 32)):
            value = entry.get(key)
            if value is not None and not is_hex(value, digits):
                raise GenomicsInputError(f"{where}: {key} must be {digits} hex digits or null, got {value!r}")
            digests[key] = value.lower() if value else None
        try:
            check_url(entry["url"], f'{where}, "url"')
            if entry.get("checksums_url") is not None:
                check_url(entry["checksums_url"], f'{where}, "checksums_url"')
        except ValueError as exc:
            raise GenomicsInputError(str(exc)) from None
        size = entry.get("size")
        if size is not None and (type(size) is not int or size < 0):
            raise GenomicsInputError(f"{where}: size must be a number of bytes or null, got {size!r}")
        filename = plain_name(entry["filename"], f'{where}, "filename"')
        output = plain_name(entry.get("output", filename), f'{where}, "output"', reserved=(DOWNLOADS, STAMPS))
        for key, value, seen in (("filename", filename, filenames), ("output", output, outputs)):
            if value in seen:
                raise GenomicsInputError(f"{where}: {key} {value!r} is repeated (an earlier file has it)")
            seen.add(value)
        files.append(ManifestFile(name=filename, url=entry["url"], output=output, **digests,
                                  checksums_url=entry.get("checksums_url"), size=size, post=post,
                                  note=entry.get("note", "")))
    info = {k: v for k, v in data.items() if k not in ("name", "description", "files")}
    return Manifest(name=data.get("name", path.stem), description=data.get("description", ""),
                    files=tuple(files), path=path, info=info)


def published_md5(entry: ManifestFile, dest: Path, quiet: bool = False) -> str:
    """The MD5 that ``entry.checksums_url`` (lines ``<md5>  [*][./]<file name>``) lists for ``entry.name``.

    The list is small and publishers update it with their files, so it is downloaded afresh each time."""
    from ssm_core.utils.download import download

    listing = dest / DOWNLOADS / f"{entry.name}.checksums"
    listing.unlink(missing_ok=True)
    try:
        download(entry.checksums_url, listing, quiet=True)
        lines = listing.read_text(errors="replace").splitlines()
    finally:
        listing.unlink(missing_ok=True)
    found = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*").removeprefix("./")
        if not is_hex(digest, 32) or not name:
            raise GenomicsInputError(f"{entry.checksums_url}, line {number}: not an md5sum line "
                                     f"('<32 hex digits>  <file name>'): {line[:80]!r}")
        if name.rsplit("/", 1)[-1] == entry.name:
            found = digest.lower()
    if found is None:
        raise GenomicsInputError(f"{entry.checksums_url} lists no checksum for {entry.name}")
    if not quiet:
        print(f"{entry.name}: md5 {found} from {entry.checksums_url}", file=sys.stderr)
    return found


def _recompress_bgzf(src: Path, dest: Path):
    """Plain gzip (or uncompressed) -> BGZF, streamed, written atomically; a truncated or damaged gzip raises
    :class:`CorruptFileError` naming ``src``."""
    from Bio import bgzf

    with open(src, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    with (replacing(dest) as tmp, reading_gzip(src),
          (gzip.open(src, "rb") if gzipped else open(src, "rb")) as fin, bgzf.BgzfWriter(str(tmp), "wb") as fout):
        while block := fin.read(1 << 22):
            fout.write(block)


def _post_process(entry: ManifestFile, download: Path, output: Path, keep_download: bool):
    from genomics.fasta import gzip_kind, open_fasta
    from ssm_core.utils.download import decompress_gzip

    if "decompress" in entry.post:
        if gzip_kind(download) is None:
            raise GenomicsInputError(f"{download}: 'decompress' asked for, but the file is not gzip-compressed")
        print(f"decompressing {download.name} -> {output.name}", file=sys.stderr)
        decompress_gzip(download, output)
    elif "bgzip" in entry.post and gzip_kind(download) != "bgzf":
        print(f"recompressing {download.name} as BGZF -> {output.name}", file=sys.stderr)
        _recompress_bgzf(download, output)
    elif keep_download:
        with replacing(output) as tmp:
            shutil.copyfile(download, tmp)
    else:
        os.replace(download, output)
    if "faidx" in entry.post:
        open_fasta(output).close()  # builds .fai (and .gzi) next to the output, saying so


def _check_targets(manifest: Manifest, dest: Path, entry: ManifestFile, overwrite: bool = False) -> None:
    """Refuse, before any download, an entry whose paths lead outside ``dest`` through a symlink there, or whose
    output exists but was not made by this manifest's fetch."""
    where = f"{manifest.path}, files[{manifest.files.index(entry)}]"
    for field, parts in (("filename", (DOWNLOADS, entry.name)), ("filename", (DOWNLOADS, f"{entry.name}.part")),
                         ("filename", (DOWNLOADS, f"{entry.name}.checksums")), ("output", (entry.output,)),
                         ("output", (entry.output + ".fai",)), ("output", (entry.output + ".gzi",)),
                         ("output", (STAMPS, f"{entry.output}.json"))):
        inside(dest, *parts, where=f'{where}, "{field}"')
    claim(dest, entry.output, manifest.name, where, overwrite)


def fetch_manifest(manifest: Manifest | str | Path, dest: str | Path, *, only: list[str] | None = None,
                   keep_downloads: bool = False, force: bool = False, quiet: bool = False,
                   overwrite: bool = False) -> list[Path]:
    """Download, verify and post-process the files of a manifest into ``dest``; returns the output paths.

    ``only``: a subset of file names or outputs (e.g. ``["human.fa.bgz"]``), or of output stems (``human``).
    An output already in ``dest`` that no earlier fetch of this manifest stamped is refused (ExistingPathError,
    before any download) unless ``overwrite``.
    """
    from genomics.fasta import fasta_stem
    from ssm_core.utils.download import download, sha256sum

    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    dest = Path(dest)
    entries = list(manifest.files)
    if only:
        wanted = set(only)
        entries = [e for e in entries if wanted & {e.name, e.output, fasta_stem(e.output)}]
        if not entries:
            raise GenomicsInputError(f"{manifest.path}: none of {sorted(wanted)} is a file of this manifest "
                                     f"(files: {[fasta_stem(e.output) for e in manifest.files]})")
    for entry in entries:  # every target of every file, before the first download
        _check_targets(manifest, dest, entry, overwrite)
    outputs = []
    for entry in entries:
        output = dest / entry.output
        stamp = read_stamp(dest, entry.output)
        # a stamped output whose size changed since (truncated, overwritten) is fetched again, not trusted
        intact = (output.is_file() and stamp and not stamp.get("pending")
                  and stamp.get("output_size") in (None, output.stat().st_size))
        if intact and not force and (entry.sha256 is None or stamp.get("sha256") == entry.sha256):
            if not quiet:
                print(f"{output}: already fetched (sha256 {stamp.get('sha256')})", file=sys.stderr)
            outputs.append(output)
            continue
        download_path = dest / DOWNLOADS / entry.name
        if force:
            download_path.unlink(missing_ok=True)
        md5, verified_by = entry.md5, ("sha256 pinned" if entry.sha256 else "md5 pinned" if entry.md5 else "none")
        if entry.sha256 is None and md5 is None and entry.checksums_url:
            md5, verified_by = published_md5(entry, dest, quiet), f"md5 from {entry.checksums_url}"
        download(entry.url, download_path, sha256=entry.sha256, md5=md5, size=entry.size, quiet=quiet)
        digest = entry.sha256 or sha256sum(download_path)
        if entry.sha256 is None:
            print(unpinned_notice(entry.name, digest, verified_by), file=sys.stderr)
        with making(dest, entry.output, manifest.name):
            try:
                _post_process(entry, download_path, output, keep_downloads)
            except CorruptFileError as exc:  # the download is damaged: never reuse it
                download_path.unlink(missing_ok=True)
                raise CorruptFileError(f"{entry.url}: {exc}; the download was deleted") from None
            if not keep_downloads:
                download_path.unlink(missing_ok=True)
            write_stamp(dest, entry.output, {"url": entry.url, "name": entry.name, "sha256": digest,
                                             "verified_by": verified_by, "output_size": output.stat().st_size,
                                             "manifest": manifest.name})
        outputs.append(output)
    return outputs
