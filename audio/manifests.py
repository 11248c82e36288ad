"""Data manifests for the audio sets (``data_manifests/sc09.json``, ``youtubemix.json``) and fetching them.

A manifest names its files with URL, size and SHA-256 (either may be null when not established), the
licence and citation, and a ``post_process`` step run after the verified download:

* ``extract_sc09`` -- stream the Speech Commands tarball once and keep only the ten digit words, plus
  ``validation_list.txt`` / ``testing_list.txt`` cut down to those words: DEST/sc09 in SC09's layout.
* ``unzip`` -- extract a zip archive into DEST/<name>.
* null -- nothing.
Downloads go through ``ssm_core.utils.download.download`` (resume, checksum, ``file://`` URLs).
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from audio.datasets import DIGITS, SPLIT_LISTS
from ssm_core.utils.download import download

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data_manifests"
POST_PROCESS = ("extract_sc09", "unzip", None)


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
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid data manifest ({type(err).__name__}: {err})") from None
    if manifest.post_process not in POST_PROCESS:
        raise ValueError(f"{path}: unknown post_process {manifest.post_process!r}; known: {POST_PROCESS}")
    for f in files:
        if not f.url or not f.filename or Path(f.filename).name != f.filename:
            raise ValueError(f"{path}: every file needs a url and a plain filename, got {f}")
    return manifest


def _member_path(name: str) -> PurePosixPath | None:
    """A safe relative path for an archive member (None for absolute paths or ones climbing out with ..)."""
    path = PurePosixPath(name.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


def extract_sc09(tarball: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract SC09 (the digit words of Speech Commands) from its tarball into ``dest``, atomically.

    Writes ``dest/<word>/*.wav`` for the ten digit words, ``validation_list.txt`` and ``testing_list.txt``
    keeping only digit entries, and the dataset's LICENSE/README when present. Returns ``dest``.
    """
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lists: dict[str, list[str]] = {}
    n_clips = 0
    with tarfile.open(tarball, "r:*") as archive:
        for member in tqdm(archive, desc=f"extracting {Path(tarball).name}", unit="file", disable=not progress):
            path = _member_path(member.name)
            if path is None or not member.isfile():
                continue
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
    if n_clips == 0:
        shutil.rmtree(tmp)
        raise ValueError(f"{tarball}: holds no digit-word WAV files (zero/ .. nine/); is it Speech Commands?")
    for name in SPLIT_LISTS.values():
        if name in lists:
            (tmp / name).write_text("".join(f"{entry}\n" for entry in lists[name]))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def unzip(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip archive into ``dest`` (members with unsafe paths are skipped), atomically."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            path = _member_path(info.filename)
            if path is None or info.is_dir():
                continue
            target = tmp.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def fetch(manifest: Manifest, dest: str | os.PathLike, progress: bool = True, overwrite: bool = False) -> Path:
    """Download (and verify) a manifest's files into ``dest/downloads``, then post-process; returns the data dir.

    The data dir ``dest/<name>`` is replaced whole: one that exists without this manifest's downloads beside it
    (so not made by an earlier fetch) is refused (OutputRefusedError, before any download) unless ``overwrite``."""
    from ssm_core.utils.outputs import check_output

    dest = Path(dest)
    if manifest.post_process in ("extract_sc09", "unzip"):
        check_output(dest / manifest.name, lambda _: all((dest / "downloads" / f.filename).is_file()
                                                          for f in manifest.files), option="--dest", overwrite=overwrite)
    paths = [download(f.url, dest / "downloads" / f.filename, sha256=f.sha256, size=f.size, quiet=not progress)
             for f in manifest.files]
    if manifest.post_process == "extract_sc09":
        return extract_sc09(paths[0], dest / manifest.name, progress=progress)
    if manifest.post_process == "unzip":
        return unzip(paths[0], dest / manifest.name)
    return dest / "downloads"
