"""Data manifests (``ssm_core/data_manifests/*.json``, one schema: its README.md) and the one ``fetch`` behind
``genomics fetch`` and ``audio fetch``.

:func:`fetch` checks every target of every file before the first download (nothing written outside ``DEST``,
nothing replaced that a stamp does not say this manifest's fetch made: :mod:`ssm_core.utils.fetch_paths`), downloads
each file into ``DEST/<downloads>/`` through :func:`ssm_core.utils.download.download` (resumed, verified against
the pinned SHA-256 or MD5, or the MD5 in the publisher's ``checksums_url`` list), names every file no pinned
SHA-256 verified, runs the file's post-processing steps to make ``DEST/<output>`` and stamps it
(``DEST/.fetch/<output>.json``); a later fetch skips a file whose stamp still vouches for its output.

ssm_core imports no domain: ``genomics.manifests`` and ``audio.manifests`` each :func:`register` a :class:`Kind`
when imported (their manifests' ``"kind"``, downloads folder, error type, notices and post-processing steps).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssm_core.utils import download as downloads  # through the module: a test's stand-in is what runs
from ssm_core.utils.download import CorruptFileError
from ssm_core.utils.fetch_paths import STAMPS, claim, inside, making, plain_name, read_stamp, replacing, write_stamp

# Package data of ssm_core, so that `fetch NAME` finds them from an installed wheel as from a checkout.
MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data_manifests"
SCHEMES = ("https", "http", "file")
LEGACY_KIND = "audio"  # manifests written before "kind" existed are audio ones (with a top-level "post_process")


class ManifestError(ValueError):
    """A manifest that cannot be used, or a checksum list it points to that cannot be read; the message names the
    manifest (or list), the entry and the field."""


@dataclass(frozen=True)
class Step:
    """A post-processing step that a domain registers under a name a manifest's ``"post"`` list may use.

    ``run(download, output, quiet)``: a step that ``makes_output`` writes ``output`` (a file or a folder, atomically)
    from the verified ``download`` and returns True, or returns False when the download is already what it would
    make (it is then moved or copied there as it is); at most one such step per file, and it runs first. Any
    other step works on the finished ``output`` (builds an index, say) and returns None.
    """
    run: Callable[[Path, Path, bool], bool | None]
    makes_output: bool = True
    side_files: tuple[str, ...] = ()  # suffixes of the files it writes beside the output (checked like the output)


@dataclass(frozen=True)
class Kind:
    """What one domain brings to fetch: its manifests carry ``"kind": name`` and are fetched by
    ``python -m <name> fetch``."""
    name: str
    downloads: str  # DEST/<downloads>/<filename> holds a download until it is post-processed
    error: type[ManifestError]  # raised for this kind's bad manifests: a subclass the domain's CLI reports
    notice: Callable[[str], None]  # tells the user something that is not an error (a file nothing verified)
    steps: dict[str, Step]


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make ``kind``'s manifests loadable and its steps usable (each domain's manifests module does, on import)."""
    KINDS[kind.name] = kind
    return kind


@dataclass(frozen=True)
class ManifestFile:
    filename: str  # name of the download
    url: str
    output: str  # name of the usable file or folder in DEST after post-processing
    sha256: str | None = None
    md5: str | None = None
    checksums_url: str | None = None  # the publisher's checksum list (md5sum format), used when none is pinned
    size: int | None = None
    post: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: Kind
    description: str
    files: tuple[ManifestFile, ...]
    path: Path
    info: dict = field(default_factory=dict)  # licence, citation, used_by, ...: documentation, not used by fetch

    @property
    def licence(self) -> str:
        return self.info.get("licence", "")

    @property
    def post_process(self) -> str | None:
        """The step that makes the first file's output, or None (an audio manifest's one archive, which the
        legacy form named at the top level)."""
        making = [name for name in self.files[0].post if self.kind.steps[name].makes_output]
        return making[0] if making else None


def is_hex(value, digits: int) -> bool:
    """Whether ``value`` is a hex digest of ``digits`` digits (either case)."""
    return isinstance(value, str) and len(value) == digits and all(c in "0123456789abcdef" for c in value.lower())


def unpinned_notice(name: str, digest: str, verified_by: str) -> str:
    """The notice for a file without a pinned SHA-256: its digest, to pin, and what (if anything) verified it;
    ``verified_by`` is what the fetch stamp records (``"none"`` when nothing did)."""
    checked = "nothing verified it" if verified_by == "none" else f"verified by {verified_by}"
    return f"{name}: sha256 {digest} ({checked}; add it to the manifest to pin this file)"


def available(kind: str) -> list[str]:
    """Names of the shipped manifests of ``kind`` in :data:`MANIFEST_DIR`."""
    names = []
    for path in sorted(MANIFEST_DIR.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("kind", LEGACY_KIND) == kind:
                names.append(path.stem)
        except (json.JSONDecodeError, AttributeError):
            continue
    return names


def load_manifest(spec: str | os.PathLike, kind: str) -> Manifest:
    """A manifest of ``kind`` by name (``hg38`` -> ``data_manifests/hg38.json``) or by path, validated; a problem
    raises the kind's error type (a name that is not a plain file name: :class:`UnsafePathError`)."""
    want = KINDS[kind]
    path = Path(spec)
    if not path.is_file():
        path = MANIFEST_DIR / f"{spec}.json"
    if not path.is_file():
        raise want.error(f"no manifest {str(spec)!r}: not a file, and not one of {available(kind)} in "
                         f"{MANIFEST_DIR}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise want.error(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or not data["files"]:
        raise want.error(f"{path}: not a valid data manifest (a JSON object with a non-empty 'files' list)")
    got = data.get("kind", LEGACY_KIND)
    if got != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise want.error(f'{path}: not {article} {kind} manifest (it lacks "kind": "{kind}"; {got} manifests are '
                         f"fetched with `python -m {got} fetch`)")
    name = plain_name(data.get("name", path.stem), f'{path}, "name"', reserved=(want.downloads, STAMPS))
    entries = data["files"]
    if "post_process" in data and isinstance(entries[0], dict):  # the legacy audio form: one step, DEST/<name>
        step = data["post_process"]
        entries = [{**entries[0], "output": name, "post": [step]} if step is not None else entries[0], *entries[1:]]
    files, seen = [], {"filename": set(), "output": set()}
    for i, entry in enumerate(entries):
        where = f"{path}, files[{i}]"
        files.append(_file_entry(entry, where, want))
        for key, names in seen.items():
            if (value := getattr(files[-1], key)) in names:
                raise want.error(f"{where}: {key} {value!r} is repeated (an earlier file has it)")
            names.add(value)
    info = {k: v for k, v in data.items() if k not in ("name", "kind", "description", "files", "post_process")}
    return Manifest(name=name, kind=want, description=data.get("description", ""), files=tuple(files), path=path,
                    info=info)


def _file_entry(entry, where: str, kind: Kind) -> ManifestFile:
    """One validated file entry of a manifest; ``where`` names the manifest and the entry in errors."""
    error = kind.error
    if not isinstance(entry, dict):
        raise error(f"{where}: each file entry is a JSON object")
    missing = [key for key in ("filename", "url") if not entry.get(key)]
    if missing:
        raise error(f"{where}: missing {missing}")
    post = entry.get("post", [])
    if not isinstance(post, list) or not all(isinstance(step, str) for step in post):
        raise error(f"{where}: post must be a list of step names, got {post!r}")
    unknown = [step for step in post if step not in kind.steps]
    if unknown:
        raise error(f"{where}: unknown post_process step(s) {unknown}; known for {kind.name} manifests: "
                    f"{sorted(kind.steps)}")
    if len(making := [step for step in post if kind.steps[step].makes_output]) > 1:
        raise error(f"{where}: choose one of {making} (each makes the output)")
    digests = {}
    for key, digits in (("sha256", 64), ("md5", 32)):
        value = entry.get(key)
        if value is not None and not is_hex(value, digits):
            raise error(f"{where}: {key} must be {digits} hex digits or null, got {value!r}")
        digests[key] = value.lower() if value else None
    for key in ("url", "checksums_url"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or urllib.parse.urlparse(value).scheme not in SCHEMES):
            raise error(f'{where}, "{key}": {value!r} is not an https://, http:// or file:// URL')
    size = entry.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise error(f"{where}: size must be a number of bytes or null, got {size!r}")
    filename = plain_name(entry["filename"], f'{where}, "filename"')
    output = plain_name(entry.get("output", filename), f'{where}, "output"', reserved=(kind.downloads, STAMPS))
    return ManifestFile(filename=filename, url=entry["url"], output=output, **digests,
                        checksums_url=entry.get("checksums_url"), size=size, post=tuple(post),
                        note=entry.get("note", ""))


def published_md5(entry: ManifestFile, folder: Path, kind: Kind, quiet: bool = False) -> str:
    """The MD5 that ``entry.checksums_url`` (lines ``<md5>  [*][./]<file name>``) lists for ``entry.filename``.

    The list is small and publishers update it with their files, so it is downloaded afresh (into ``folder``, the
    downloads folder) each time."""
    listing = folder / f"{entry.filename}.checksums"
    listing.unlink(missing_ok=True)
    try:
        downloads.download(entry.checksums_url, listing, quiet=True)
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
            raise kind.error(f"{entry.checksums_url}, line {number}: not an md5sum line "
                             f"('<32 hex digits>  <file name>'): {line[:80]!r}")
        if name.rsplit("/", 1)[-1] == entry.filename:
            found = digest.lower()
    if found is None:
        raise kind.error(f"{entry.checksums_url} lists no checksum for {entry.filename}")
    if not quiet:
        print(f"{entry.filename}: md5 {found} from {entry.checksums_url}", file=sys.stderr)
    return found


def fetch(manifest: Manifest, dest: str | os.PathLike, *, files: Sequence[ManifestFile] | None = None,
          keep_downloads: bool = False, force: bool = False, quiet: bool = False,
          overwrite: bool = False) -> list[Path]:
    """Download, verify and post-process the files of ``manifest`` (or only ``files`` of it) into ``dest``;
    returns their outputs.

    An output already in ``dest`` that no earlier fetch of this manifest stamped is refused (ExistingPathError,
    before any download) unless ``overwrite``; ``force`` fetches again what a stamp says is already there.
    """
    dest = Path(dest)
    entries = manifest.files if files is None else files
    for entry in entries:  # every target of every file, before the first download
        _check_targets(manifest, dest, entry, overwrite)
    return [_fetch_file(manifest, dest, entry, keep_downloads, force, quiet) for entry in entries]


def _check_targets(manifest: Manifest, dest: Path, entry: ManifestFile, overwrite: bool) -> None:
    """Refuse an entry whose paths lead outside ``dest`` through a symlink there, or whose output exists but was
    not made by this manifest's fetch."""
    where = f"{manifest.path}, files[{manifest.files.index(entry)}]"
    side_files = [suffix for step in entry.post for suffix in manifest.kind.steps[step].side_files]
    targets = [("filename", (manifest.kind.downloads, entry.filename + suffix)) for suffix in
               ("", ".part", ".checksums")]
    targets += [("output", (entry.output + suffix,)) for suffix in ("", *side_files)]
    targets.append(("output", (STAMPS, f"{entry.output}.json")))
    for key, parts in targets:
        inside(dest, *parts, where=f'{where}, "{key}"')
    claim(dest, entry.output, manifest.name, where, overwrite)


def _fetch_file(manifest: Manifest, dest: Path, entry: ManifestFile, keep_download: bool, force: bool,
                quiet: bool) -> Path:
    kind, output = manifest.kind, dest / entry.output
    stamp = read_stamp(dest, entry.output)
    # a stamped output whose size changed since (truncated, overwritten) is fetched again, not trusted
    intact = (output.is_file() and stamp and not stamp.get("pending")
              and stamp.get("output_size") in (None, output.stat().st_size))
    if intact and not force and (entry.sha256 is None or stamp.get("sha256") == entry.sha256):
        if not quiet:
            print(f"{output}: already fetched (sha256 {stamp.get('sha256')})", file=sys.stderr)
        return output
    download = dest / kind.downloads / entry.filename
    if force:
        download.unlink(missing_ok=True)
    md5, verified_by = entry.md5, ("sha256 pinned" if entry.sha256 else "md5 pinned" if entry.md5 else "none")
    if entry.sha256 is None and md5 is None and entry.checksums_url:
        md5, verified_by = published_md5(entry, download.parent, kind, quiet), f"md5 from {entry.checksums_url}"
    downloads.download(entry.url, download, sha256=entry.sha256, md5=md5, size=entry.size, quiet=quiet)
    digest = entry.sha256 or downloads.sha256sum(download)
    if entry.sha256 is None:
        kind.notice(unpinned_notice(entry.filename, digest, verified_by))
    with making(dest, entry.output, manifest.name):
        try:
            _post_process([kind.steps[name] for name in entry.post], download, output, keep_download, quiet)
        except CorruptFileError as exc:  # the download is damaged: never reuse it
            download.unlink(missing_ok=True)
            raise CorruptFileError(f"{entry.url}: {exc}; the download was deleted") from None
        if not keep_download:
            download.unlink(missing_ok=True)
        made_from = {"url": entry.url, "name": entry.filename, "sha256": digest, "verified_by": verified_by}
        # the fields of both earlier stamp formats (genomics: flat; audio: a "files" list), so neither loses one
        write_stamp(dest, entry.output, {**made_from, "output_size": output.stat().st_size if output.is_file()
                                         else None, "files": [made_from], "manifest": manifest.name})
    return output


def _post_process(steps: list[Step], download: Path, output: Path, keep_download: bool, quiet: bool) -> None:
    made = [step.run(download, output, quiet) for step in steps if step.makes_output]
    if not any(made):  # no step, or the download is already what the step makes
        if keep_download:
            with replacing(output) as tmp:
                shutil.copyfile(download, tmp)
        else:
            os.replace(download, output)
    for step in steps:
        if not step.makes_output:
            step.run(download, output, quiet)
