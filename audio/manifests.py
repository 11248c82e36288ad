"""``python -m audio fetch``: the audio manifests (``"kind": "audio"``: ``data_manifests/sc09.json``,
``youtubemix.json``) and their post-processing steps.

Loading, path checks, checksums, stamps and the fetch itself are :mod:`ssm_core.utils.manifests` (format:
``data_manifests/README.md``); this module registers what is particular to the audio sets, each made from one
archive into the folder ``DEST/<output>``:

* ``extract_sc09`` -- stream the Speech Commands tarball once and keep only the ten digit words, plus
  ``validation_list.txt`` / ``testing_list.txt`` cut down to those words: DEST/sc09 in SC09's layout.
* ``unzip`` -- extract a zip archive.

Archive members that are absolute, climb out with ``..``, or are links or devices are skipped, with a notice.
Downloads stay in ``DEST/downloads`` (a second fetch reuses them); a file that nothing verified is named in an
:class:`AudioNotice` with its SHA-256, to pin.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

from ssm_core.utils.progress import progress_bar

from audio.datasets import DIGITS, SPLIT_LISTS
from audio.errors import AudioNotice
from ssm_core.utils import manifests
from ssm_core.utils.download import GZIP_ERRORS, CorruptFileError
from ssm_core.utils.fetch_paths import ExistingPathError, archive_member, temp_beside
from ssm_core.utils.manifests import Kind, Manifest, ManifestError, Step

ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, NotImplementedError, *GZIP_ERRORS)  # truncated, damaged


def _unsafe_tar_member(member: tarfile.TarInfo, root: Path) -> bool:
    """Whether a member must not be extracted under ``root``: an absolute or ``..`` path, a link or a device
    (tarfile's own ``data`` filter, where this Python has it, must agree that it is safe too)."""
    if archive_member(member.name) is None or member.issym() or member.islnk() or member.isdev():
        return True
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, str(root))
        except tarfile.FilterError:
            return True
    return False


def _unsafe_notice(archive: str | os.PathLike, skipped: list[str]) -> None:
    if skipped:
        warnings.warn(f"{archive}: skipped {len(skipped)} member(s) with an absolute or '..' path, or that are "
                      f"links or devices: {skipped[:3]}", AudioNotice, stacklevel=3)


def _install(tmp: Path, dest: Path, replace: bool) -> None:
    """Move the finished folder ``tmp`` to ``dest``; an existing ``dest`` is swapped out and deleted only when
    ``replace`` (the caller established that fetch made it)."""
    if not (dest.exists() or dest.is_symlink()):
        os.replace(tmp, dest)
        return
    if not replace:
        raise ExistingPathError(f"{dest} already exists; refusing to replace it (move it away first)")
    old = temp_beside(dest, ".old")
    os.replace(dest, old)  # a symlink is moved itself, not followed
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _extracting(archive: str | os.PathLike, dest: Path, replace: bool, extract) -> Path:
    """Run ``extract(tmp)`` into a fresh temporary folder beside ``dest`` (inside the destination), then install it
    as ``dest``; the temporary folder is deleted on every failure, and a damaged archive raises
    :class:`CorruptFileError` naming it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(dest, ".partial")
    tmp.mkdir()
    try:
        try:
            extract(tmp)
        except ARCHIVE_ERRORS as err:
            detail = " ".join(str(err).split())  # tarfile's message spans lines
            raise CorruptFileError(f"{archive}: not a complete archive ({type(err).__name__}: {detail})") from None
        _install(tmp, dest, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def extract_sc09(tarball: str | os.PathLike, dest: str | os.PathLike, progress: bool = True,
                 replace: bool = False) -> Path:
    """Extract SC09 (the digit words of Speech Commands) from its tarball into ``dest``, atomically.

    Writes ``dest/<word>/*.wav`` for the ten digit words, ``validation_list.txt`` and ``testing_list.txt``
    keeping only digit entries, and the dataset's LICENSE/README when present. Members with unsafe paths, links
    and devices are skipped (with a notice). An existing ``dest`` is replaced only when ``replace``. Returns
    ``dest``.
    """
    def extract(tmp: Path) -> None:
        lists: dict[str, list[str]] = {}
        n_clips, skipped = 0, []
        with tarfile.open(tarball, "r:*") as archive:
            for member in progress_bar(archive, desc=f"extracting {Path(tarball).name}", unit="file",
                                       disable=not progress):
                if _unsafe_tar_member(member, tmp):
                    skipped.append(member.name)
                    continue
                if not member.isfile():
                    continue
                path = archive_member(member.name)
                keep_clip = len(path.parts) == 2 and path.parts[0] in DIGITS and path.suffix.lower() == ".wav"
                if keep_clip or (len(path.parts) == 1 and path.name in ("LICENSE", "README.md")):
                    target = tmp.joinpath(*path.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    n_clips += keep_clip
                elif len(path.parts) == 1 and path.name in SPLIT_LISTS.values():
                    lines = archive.extractfile(member).read().decode("utf-8").splitlines()
                    lists[path.name] = [ln.strip() for ln in lines if ln.strip().split("/")[0] in DIGITS]
        _unsafe_notice(tarball, skipped)
        if n_clips == 0:
            raise ValueError(f"{tarball}: holds no digit-word WAV files (zero/ .. nine/); is it Speech Commands?")
        for name in SPLIT_LISTS.values():
            if name in lists:
                (tmp / name).write_text("".join(f"{entry}\n" for entry in lists[name]))

    return _extracting(tarball, Path(dest), replace, extract)


def unzip(archive: str | os.PathLike, dest: str | os.PathLike, replace: bool = False) -> Path:
    """Extract a zip archive into ``dest``, atomically; members with unsafe paths and symlinks are skipped (with a
    notice). An existing ``dest`` is replaced only when ``replace``."""
    def extract(tmp: Path) -> None:
        skipped = []
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                path = archive_member(info.filename)
                if path is None or stat.S_ISLNK(info.external_attr >> 16):
                    skipped.append(info.filename)
                    continue
                if info.is_dir():
                    continue
                target = tmp.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        _unsafe_notice(archive, skipped)

    return _extracting(archive, Path(dest), replace, extract)


def _extract_sc09_step(download: Path, output: Path, quiet: bool) -> bool:
    extract_sc09(download, output, progress=not quiet, replace=True)  # fetch has checked that it made `output`
    return True


def _unzip_step(download: Path, output: Path, quiet: bool) -> bool:
    unzip(download, output, replace=True)
    return True


KIND = manifests.register(Kind(
    name="audio", downloads="downloads", error=ManifestError,
    notice=lambda message: warnings.warn(message, AudioNotice, stacklevel=2),
    steps={"extract_sc09": Step(_extract_sc09_step), "unzip": Step(_unzip_step)}))


def load_manifest(spec: str | os.PathLike) -> Manifest:
    """An audio manifest from a JSON path, or by name from ``data_manifests/`` (e.g. ``sc09``); validated."""
    return manifests.load_manifest(spec, KIND.name)


def fetch(manifest: Manifest, dest: str | os.PathLike, progress: bool = True, overwrite: bool = False) -> Path:
    """Download (and verify) a manifest's files into ``dest/downloads``, then post-process; returns the data folder
    (``dest/<output>`` of a manifest of one file, else ``dest``).

    See :func:`ssm_core.utils.manifests.fetch`: every target is checked before the first download, and an
    existing ``dest/<output>`` is replaced only if an earlier fetch of this manifest made it (or ``overwrite``).
    """
    outputs = manifests.fetch(manifest, dest, keep_downloads=True, quiet=not progress, overwrite=overwrite)
    return outputs[0] if len(outputs) == 1 else Path(dest)
