"""Where a command may write: never over one of its own inputs, never over a file or folder it did not write.

Every command that writes a path the user names (``--out``, ``--json``, ``--dest``) calls :func:`check_output`
before it starts its work (so a refusal comes at once, not after an hour of computing), then writes atomically
(a temporary file in the same folder, then ``os.replace``; ``ssm_core.train.checkpoint.atomic_write_bytes``).

- An output that is one of the command's inputs (the same file, however it is spelled: compared with
  ``os.path.samefile``) is refused, even with ``--overwrite``: the command would destroy what it reads.
- An output that already exists is written over only if it is recognisably what an earlier run of the same
  command wrote, or the user passed ``--overwrite`` (which does not reach inside an input folder: a file there
  may be one the command reads, so only our own is written over).

How each kind of output is recognised as written by an earlier run of the same command (the ``ours`` predicate
each command passes to :func:`check_output`):

==============================================  =====================================================================
output                                          written by us earlier when
==============================================  =====================================================================
training run directory (every training --out)   it holds a config.json JSON object and checkpoints/; a new run still
                                                needs an empty folder, --resume a run (ssm_core/train/run_dir.py)
main job run (``suite run --out``)              it holds stages.json (suite/stages.py)
main job report (RUN/report/)                   each file is listed in report/.files, the list the report writes
``genomics classify --out`` TSV                 its first line is classify's header: file, record, length,
                                                [start, end,] predicted, p_<class>..., strand, p_forward,
                                                p_reverse, flag (tab-separated)
``genomics embed --out`` .npz                   a zip holding records.npy, lengths.npy and embeddings.npy
``genomics classify --json --out``              it starts with classify's opening ``{"classes": [``
``audio metrics --json``                        a JSON object with fid, is, mis, am, n_generated and n_reference
PNG plots (``audio plot``, ``plot-lengths``)    its PNG text chunk ``Software`` is ``mamba-seq-suite`` (every figure
                                                goes through ssm_core/utils/plots.save_figure, which writes it)
``audio generate --out`` folder                 its nll.csv starts with ``file,nll`` and lists every clip the run
                                                would write over (older clips it lists are removed on a rerun)
``genomics simulate --out`` FASTA files         each <species>.fa that exists starts with ``>chr... simulated
                                                <species> (seed N)``, the header simulate writes
``audio make-digits --out``                     (its own rule, kept: the folder must be empty unless --force)
==============================================  =====================================================================
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

Recogniser = Callable[[Path], bool]

_HEAD_BYTES = 1 << 16  # recognisers read at most this much of a file


class OutputRefusedError(FileExistsError):
    """An output path was refused: it is an input of the same command, or an existing file or folder the
    command did not write (and --overwrite was not given)."""


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (links and relative spellings resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | os.PathLike, ours: Recogniser, *, inputs: Iterable[str | os.PathLike] = (),
                 files: Iterable[str] = (), overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse to write ``path`` (named by the user through ``option``) over an input or over what we did not write.

    ``inputs`` are the paths the command reads; ``files`` the names it writes inside ``path`` when ``path`` is a
    folder (each is checked against the inputs too). ``ours(path)`` says whether an existing ``path`` was
    written by an earlier run of this command (see the table above); ``overwrite`` (the command's --overwrite)
    lets an existing path be written over anyway, but never an input nor a path inside an input folder. Raises
    OutputRefusedError; returns ``path``.
    """
    path = Path(path)
    inputs = [Path(p) for p in inputs if p is not None]
    for target in [path, *(path / name for name in files)]:
        for source in inputs:
            if same_path(target, source):
                also = "" if target == path else f" ({target})"
                raise OutputRefusedError(f"{option} {path}{also} is also an input of this command ({source}); "
                                         "write the output elsewhere")
    if not (path.exists() or path.is_symlink()) or ours(path):
        return path
    kind = "folder" if path.is_dir() else "file"
    folder = next((source for source in inputs if source.is_dir() and is_inside(path, source)), None)
    if folder is not None:
        raise OutputRefusedError(f"{option} {path}: an existing {kind} inside the input folder {folder} that this "
                                 "command did not write; write the output elsewhere")
    if not overwrite:
        raise OutputRefusedError(f"{option} {path}: an existing {kind} that this command did not write; choose "
                                 "another path, or pass --overwrite to write over it")
    return path


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` lies somewhere below ``folder`` (links resolved)."""
    return Path(folder).resolve() in Path(path).resolve().parents


def read_head(path: Path, size: int = _HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of a regular file (b"" for a folder or an unreadable file)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def first_line_matches(pattern: str) -> Recogniser:
    """A recogniser: the file's first line (without its newline) matches the regular expression ``pattern``."""
    compiled = re.compile(pattern)

    def recognise(path: Path) -> bool:
        line = read_head(path).split(b"\n", 1)[0].rstrip(b"\r")
        return compiled.fullmatch(line.decode("utf-8", "replace")) is not None
    return recognise


def starts_with(prefix: bytes) -> Recogniser:
    """A recogniser: the file begins with ``prefix``."""
    return lambda path: read_head(path, len(prefix)) == prefix


def json_object_with(keys: Iterable[str]) -> Recogniser:
    """A recogniser: the file is a JSON object holding every one of ``keys``."""
    wanted = frozenset(keys)

    def recognise(path: Path) -> bool:
        if not path.is_file() or path.stat().st_size > _HEAD_BYTES:  # our JSON reports are small
            return False
        try:
            value = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(value, dict) and wanted <= value.keys()
    return recognise
