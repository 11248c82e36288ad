"""Where ``fetch`` may write in the destination the user named (shared by ``genomics fetch`` and ``audio fetch``).

Every name that a manifest or a downloaded archive supplies becomes a path under ``--dest``, so each is checked
before anything is downloaded: :func:`plain_name` for a manifest's file and folder names (one plain path
component), :func:`archive_member` for an archive's members (a plain relative path), and :func:`inside` for the
target itself, which must stay inside the destination also through symlinks already there.

``fetch`` replaces or deletes only what it made itself. A stamp ``DEST/.fetch/<output>.json`` (:func:`write_stamp`)
marks an output as made by the fetch of one manifest; :func:`claim` refuses an existing output without one, and
:func:`making` stamps an output while it is being made, so that a run interrupted half-way may redo it. Temporary
files and folders get fresh hidden names beside their target (:func:`temp_beside`, :func:`replacing`): inside the
destination, and never the name of something already there.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

STAMPS = ".fetch"  # DEST/.fetch/<output>.json


class UnsafePathError(ValueError):
    """A name from a manifest or an archive that is not a plain relative name, or whose target would lie outside
    the destination; the message names the manifest, the entry and the field."""


class ExistingPathError(UnsafePathError):
    """``fetch`` would replace something at its target that it did not make itself."""


def _name_problem(value) -> str | None:
    """What makes ``value`` unfit as one plain path component, or None."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a string"
    if not value.strip():
        return "empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "it contains a control character (NUL, newline, ...)"
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive:
        return "an absolute path"
    parts = re.split(r"[/\\]", value)
    if ".." in parts:
        return "it climbs out with '..'"
    if len(parts) > 1:
        return "it has a directory part ('/' or '\\')"
    if value == ".":
        return "it names the destination itself"
    if len(os.fsencode(value)) > 255:
        return "longer than the 255 bytes a file name may have"
    return None


def plain_name(value, where: str, reserved: tuple[str, ...] = ()) -> str:
    """``value`` if it is a plain file or folder name (one path component), else :class:`UnsafePathError`.

    Refused: a non-string, an empty name, ``.`` and ``..``, any ``/`` or ``\\``, an absolute path or a drive
    (``C:``), control characters (NUL ...), more than 255 bytes, and the ``reserved`` names (fetch's own folders; compared without
    case, as macOS and Windows do). ``where`` names the manifest, entry and field, e.g. ``m.json, files[0],
    "filename"``.
    """
    problem = _name_problem(value)
    if problem is None and value.casefold() in {name.casefold() for name in reserved}:
        problem = f"the name of fetch's own folder {value!r} in the destination"
    if problem is not None:
        raise UnsafePathError(f"{where}: {value!r} is not a plain file name ({problem}); refused before any "
                              "download")
    return value


def archive_member(name) -> PurePosixPath | None:
    """The relative path of an archive member, or None for one that must not be extracted: absolute, with a
    drive or backslash, climbing out with ``..``, with control characters, or empty. ``./`` parts are dropped."""
    if not isinstance(name, str) or "\\" in name or PureWindowsPath(name).drive:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


def inside(dest: str | os.PathLike, *parts: str, where: str) -> Path:
    """``dest/<parts>``, after checking that it resolves to a path strictly inside ``dest``, also through symlinks
    already in ``dest`` (a symlinked ``dest`` itself is the user's choice and fine); else :class:`UnsafePathError`."""
    root = Path(dest).resolve()
    target = Path(dest).joinpath(*parts)
    if root not in target.resolve().parents:
        raise UnsafePathError(f"{where}: {target} leads outside {dest} (through a symlink there, to "
                              f"{target.resolve()}); refused before any download")
    return target


def temp_beside(path: Path, suffix: str) -> Path:
    """A fresh hidden name in ``path``'s folder (so inside the destination) that nothing has yet."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` when the block ends and is deleted when the
    block fails, so ``path`` is never half-written and no stray temporary file is left."""
    path = Path(path)
    tmp = temp_beside(path, ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stamp_path(dest: str | os.PathLike, output: str) -> Path:
    return Path(dest) / STAMPS / f"{output}.json"


def read_stamp(dest: str | os.PathLike, output: str) -> dict | None:
    """The stamp of ``DEST/<output>``, or None if there is none (or it is not a stamp: then nothing vouches for
    the output)."""
    try:
        stamp = json.loads(stamp_path(dest, output).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(dest: str | os.PathLike, output: str, record: dict) -> None:
    """Write the stamp of ``DEST/<output>`` atomically; ``record["manifest"]`` names the manifest that made it."""
    path = stamp_path(dest, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def claim(dest: str | os.PathLike, output: str, manifest: str, where: str, overwrite: bool = False) -> None:
    """Refuse (:class:`ExistingPathError`) when ``DEST/<output>`` exists but no stamp says that the fetch of
    ``manifest`` made it: fetch never replaces what a user (or another manifest) put there, unless ``overwrite``
    (the user's ``--overwrite``)."""
    target = Path(dest) / output
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    stamp = read_stamp(dest, output)
    if stamp is None or stamp.get("manifest") != manifest:
        made_by = (f"was made by the fetch of manifest {stamp.get('manifest')!r}, not {manifest!r}" if stamp else
                   f"fetch did not make it (there is no stamp {stamp_path(dest, output)})")
        raise ExistingPathError(f"{where}: {target} already exists and {made_by}; fetch replaces only what it "
                                "made itself: move it away, choose another --dest, or pass --overwrite")


@contextmanager
def making(dest: str | os.PathLike, output: str, manifest: str) -> Iterator[None]:
    """Stamp ``DEST/<output>`` as being made by the fetch of ``manifest`` for the duration of the block, so that a
    run interrupted half-way may redo it; if the block fails before the output exists, the stamp goes again.
    The caller writes the final stamp at the end of the block."""
    write_stamp(dest, output, {"manifest": manifest, "pending": True})
    try:
        yield
    except BaseException:
        target = Path(dest) / output
        if not (target.exists() or target.is_symlink()):
            stamp_path(dest, output).unlink(missing_ok=True)
        raise
