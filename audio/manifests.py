"""Data manifests for the audio sets (``data_manifests/sc09.json``, ``youtubemix.json``) and fetching them.

A manifest names its files with URL, size and SHA-256 (either may be null when not established), the
licence and citation, and a ``post_process`` step run after the verified download:

* ``extract_sc09`` -- stream the Speech Commands tarball once and keep only the ten digit words, plus
  ``validation_list.txt`` / ``testing_list.txt`` cut down to those words: DEST/sc09 in SC09's layout.
* ``unzip`` -- extract a zip archive into DEST/<name>.
* null -- nothing.
Downloads go through ``ssm_core.utils.download.download`` (resume, checksum, ``file://`` URLs).

Nothing is written outside DEST and nothing a user had there is replaced (``ssm_core.utils.fetch_paths``): the
manifest's ``name`` and ``filename`` must be plain names whose targets resolve inside DEST (also through symlinks
there), checked for every file before the first download; archive members that are absolute, climb out with
``..``, or are links or devices are skipped; and DEST/<name> is replaced only when its stamp
``DEST/.fetch/<name>.json`` says that an earlier fetch of this manifest made it. The stamp also records what
verified each download (``"verified_by"``: ``sha256 pinned`` or ``none``); a file that nothing verified is
named in a notice with its SHA-256, to pin.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ssm_core.utils.progress import progress_bar

from audio.datasets import DIGITS, SPLIT_LISTS
from audio.errors import AudioNotice
from ssm_core.utils.download import (GZIP_ERRORS, MANIFEST_DIR, CorruptFileError, check_url, download, is_hex,
                                     sha256sum, unpinned_notice)
from ssm_core.utils.fetch_paths import (STAMPS, ExistingPathError, archive_member, claim, inside, making,
                                        plain_name, temp_beside, write_stamp)

POST_PROCESS = ("extract_sc09", "unzip", None)
DOWNLOADS = "downloads"  # DEST/downloads/<filename>
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, NotImplementedError, *GZIP_ERRORS)  # truncated, damaged


@dataclass(frozen=True)
class ManifestFile:
    url: str
    filename: str
    size: int | None
    sha256: str | None
    note: str = ""


@dataclass(frozen=True)
class Manifest:
    name: str
    description: str
    licence: str
    citation: str
    files: tuple[ManifestFile, ...]
    post_process: str | None
    path: Path


def load_manifest(spec: str | os.PathLike) -> Manifest:
    """A manifest from a JSON path, or by name from the repository's ``data_manifests/`` (e.g. ``sc09``)."""
    path = Path(spec)
    if not path.is_file():
        path = MANIFEST_DIR / f"{spec}.json"
    if not path.is_file():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.json")) if MANIFEST_DIR.is_dir() else []
        raise FileNotFoundError(f"no manifest {spec!r}: not a file, and not one of {known} in {MANIFEST_DIR}")
    try:
        raw = json.loads(path.read_text())
        files = tuple(ManifestFile(**{k: f.get(k) for k in ("url", "filename", "size", "sha256")}, note=f.get("note", ""))
                      for f in raw["files"])
        manifest = Manifest(raw["name"], raw["description"], raw["licence"], raw["citation"], files,
                            raw.get("post_process"), path)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a valid data manifest ({type(err).__name__}: {err})") from None
    if manifest.post_process not in POST_PROCESS:
        raise ValueError(f"{path}: unknown post_process {manifest.post_process!r}; known: {POST_PROCESS}")
    if not files:
        raise ValueError(f"{path}: not a valid data manifest (its 'files' list is empty)")
    plain_name(manifest.name, f'{path}, "name"', reserved=(DOWNLOADS, STAMPS))
    filenames = set()
    for i, f in enumerate(files):
        where = f"{path}, files[{i}]"
        check_url(f.url, f'{where}, "url"')
        if plain_name(f.filename, f'{where}, "filename"') in filenames:
            raise ValueError(f'{where}, "filename": {f.filename!r} is repeated (an earlier file has it)')
        filenames.add(f.filename)
        if f.size is not None and (type(f.size) is not int or f.size < 0):
            raise ValueError(f'{where}, "size": must be a number of bytes or null, got {f.size!r}')
        if f.sha256 is not None and not is_hex(f.sha256, 64):
            raise ValueError(f'{where}, "sha256": must be 64 hex digits or null, got {f.sha256!r}')
    return manifest


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


def fetch(manifest: Manifest, dest: str | os.PathLike, progress: bool = True, overwrite: bool = False) -> Path:
    """Download (and verify) a manifest's files into ``dest/downloads``, then post-process; returns the data dir.

    Before the first download, every target is checked: inside ``dest`` (also through symlinks there), and
    ``dest/<name>`` replaced only if an earlier fetch of this manifest made it (or ``overwrite``). A file that nothing verified (no
    sha256) is named in a notice; one that turns out damaged when unpacked is deleted, and the error names its URL.
    """
    dest = Path(dest)
    where = str(manifest.path)
    for i, f in enumerate(manifest.files):
        for name in (f.filename, f"{f.filename}.part"):
            inside(dest, DOWNLOADS, name, where=f'{where}, files[{i}], "filename"')
    inside(dest, STAMPS, f"{manifest.name}.json", where=f'{where}, "name"')
    if manifest.post_process is not None:
        inside(dest, manifest.name, where=f'{where}, "name"')
        claim(dest, manifest.name, manifest.name, where, overwrite)
    paths, records = [], []
    for f in manifest.files:
        path = download(f.url, dest / DOWNLOADS / f.filename, sha256=f.sha256, size=f.size, quiet=not progress)
        verified_by = "sha256 pinned" if f.sha256 else "none"
        digest = f.sha256 or sha256sum(path)
        if f.sha256 is None:
            warnings.warn(unpinned_notice(f.filename, digest, verified_by), AudioNotice, stacklevel=2)
        paths.append(path)
        records.append({"url": f.url, "name": f.filename, "sha256": digest, "verified_by": verified_by})
    if manifest.post_process is None:
        write_stamp(dest, manifest.name, {"files": records, "manifest": manifest.name})
        return dest / DOWNLOADS
    with making(dest, manifest.name, manifest.name):
        try:
            if manifest.post_process == "extract_sc09":
                data = extract_sc09(paths[0], dest / manifest.name, progress=progress, replace=True)
            else:
                data = unzip(paths[0], dest / manifest.name, replace=True)
        except CorruptFileError as err:  # the download is damaged: never reuse it
            paths[0].unlink(missing_ok=True)
            raise CorruptFileError(f"{manifest.files[0].url}: {err}; the download was deleted") from None
        write_stamp(dest, manifest.name, {"files": records, "manifest": manifest.name})
    return data
