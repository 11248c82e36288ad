"""``python -m genomics fetch``: the genomics manifests (``"kind": "genomics"``) and their post-processing steps.

Loading, path checks, checksums, stamps and the fetch itself are :mod:`ssm_core.utils.manifests` (format:
``data_manifests/README.md``); this module registers what is particular to genomes, into ``DEST/<output>``:

``decompress``  plain-gzip -> uncompressed file (fastest random access)
``bgzip``       plain-gzip -> BGZF (blocked gzip: random access at a third of the disk space)
``faidx``       build the FASTA index (``.fai``, plus ``.gzi`` for BGZF) so the first run does not have to
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

from genomics.errors import GenomicsInputError
from genomics.fasta import fasta_stem, gzip_kind, open_fasta
from ssm_core.utils import manifests
from ssm_core.utils.download import decompress_gzip, reading_gzip
from ssm_core.utils.fetch_paths import replacing
from ssm_core.utils.manifests import Kind, Manifest, ManifestError, Step


class GenomicsManifestError(ManifestError, GenomicsInputError):
    """A genomics manifest (or the checksum list it names) that cannot be used."""


def _decompress(download: Path, output: Path, quiet: bool) -> bool:
    if gzip_kind(download) is None:
        raise GenomicsInputError(f"{download}: 'decompress' asked for, but the file is not gzip-compressed")
    if not quiet:
        print(f"decompressing {download.name} -> {output.name}", file=sys.stderr)
    decompress_gzip(download, output)
    return True


def _bgzip(download: Path, output: Path, quiet: bool) -> bool:
    """Plain gzip (or uncompressed) -> BGZF, streamed, written atomically; False for a download already BGZF. A
    truncated or damaged gzip raises :class:`CorruptFileError` naming the download."""
    from Bio import bgzf

    kind = gzip_kind(download)
    if kind == "bgzf":
        return False
    if not quiet:
        print(f"recompressing {download.name} as BGZF -> {output.name}", file=sys.stderr)
    with (replacing(output) as tmp, reading_gzip(download),
          (gzip.open(download, "rb") if kind else open(download, "rb")) as fin,
          bgzf.BgzfWriter(str(tmp), "wb") as fout):
        while block := fin.read(1 << 22):
            fout.write(block)
    return True


def _faidx(download: Path, output: Path, quiet: bool) -> None:
    open_fasta(output, quiet=quiet).close()  # builds .fai (and .gzi) next to the output


KIND = manifests.register(Kind(
    name="genomics", downloads=".downloads", error=GenomicsManifestError,
    notice=lambda message: print(message, file=sys.stderr),
    steps={"decompress": Step(_decompress), "bgzip": Step(_bgzip),
           "faidx": Step(_faidx, makes_output=False, side_files=(".fai", ".gzi"))}))


def available_manifests() -> list[str]:
    """Names of the genomics manifests in ``data_manifests/`` (the audio ones live there too)."""
    return manifests.available(KIND.name)


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A genomics manifest by name (``hg38`` -> ``data_manifests/hg38.json``) or by path; validated."""
    return manifests.load_manifest(name_or_path, KIND.name)


def fetch_manifest(manifest: Manifest | str | Path, dest: str | Path, *, only: list[str] | None = None,
                   keep_downloads: bool = False, force: bool = False, quiet: bool = False,
                   overwrite: bool = False) -> list[Path]:
    """Download, verify and post-process the files of a manifest into ``dest``; returns the output paths.

    ``only``: a subset of file names or outputs (e.g. ``["human.fa.bgz"]``), or of output stems (``human``).
    See :func:`ssm_core.utils.manifests.fetch` for the rest.
    """
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    files = None
    if only:
        wanted = set(only)
        files = [f for f in manifest.files if wanted & {f.filename, f.output, fasta_stem(f.output)}]
        if not files:
            raise GenomicsInputError(f"{manifest.path}: none of {sorted(wanted)} is a file of this manifest "
                                     f"(files: {[fasta_stem(f.output) for f in manifest.files]})")
    return manifests.fetch(manifest, dest, files=files, keep_downloads=keep_downloads, force=force, quiet=quiet,
                           overwrite=overwrite)
