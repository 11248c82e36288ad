"""Checkpoint files: atomic writes, integrity checks, the last K kept, and `resolve_checkpoint` for `--checkpoint`.

A checkpoint file is one header line followed by a `torch.save` payload::

    SSMCKPT1 <sha256 of the payload, hex> <payload length in bytes>\\n<payload>

so a truncated or corrupted file is detected before unpickling. Files are named ``step-00001234.ckpt`` by the
number of completed optimiser steps and written through a temporary file, fsync and rename: a process killed
mid-write leaves at most a stray ``.tmp`` file, never a half-written checkpoint under the real name.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

MAGIC = b"SSMCKPT1"
_NAME = re.compile(r"^step-(\d{8,})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or made for a different model/config."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.ckpt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise `state` (tensors, numbers, strings, lists, dicts) with a checksummed header, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"%s %s %d\n" % (MAGIC, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    atomic_write_bytes(Path(path), header + payload)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by `save_checkpoint`; raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    newline = data.find(b"\n", 0, 200)
    fields = data[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 3 or fields[0] != MAGIC or not fields[2].isdigit():
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this suite (bad header); "
                              "it is corrupt or was written by another program")
    expected_sha, expected_len = fields[1].decode(), int(fields[2])
    payload = data[newline + 1:]
    if len(payload) != expected_len:
        raise CheckpointError(f"checkpoint {path} is truncated or padded: the header announces {expected_len} "
                              f"payload bytes, the file holds {len(payload)}")
    actual_sha = hashlib.sha256(payload).hexdigest()
    if actual_sha != expected_sha:
        raise CheckpointError(f"checkpoint {path} is corrupt: payload sha256 {actual_sha} does not match the "
                              f"recorded {expected_sha}")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and any temporary files left by killed writers."""
    for step, path in list_checkpoints(directory)[:-keep_last]:
        path.unlink()
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """Turn what a user passes to `--checkpoint` into a loadable path.

    Accepts a model directory (`model.safetensors` + `model.json`: a finished run, or a copy of its model), a run
    directory without them (an unfinished run: its latest checkpoint), a `checkpoints/` directory (its latest
    checkpoint), or a checkpoint file. Returns either a directory with `model.json` or a `.ckpt` file; raises
    CheckpointError when there is nothing to load, and for a directory holding only one of the two model files
    (a partial copy, or a save that was cut short), rather than loading some other model in its place.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"--checkpoint {path}: no such file or directory")
    present = [name for name in ("model.safetensors", "model.json") if (path / name).is_file()]
    if len(present) == 2:
        return path
    latest = next((found[-1][1] for d in (path / "checkpoints", path) if (found := list_checkpoints(d))), None)
    if present:
        missing = ({"model.safetensors", "model.json"} - set(present)).pop()
        raise CheckpointError(f"--checkpoint {path}: has {present[0]} but no {missing}; a model directory needs "
                              "both (copy them together)" + (f", or pass --checkpoint {latest} to use the run's "
                                                             "latest checkpoint" if latest else ""))
    if latest is not None:
        return latest
    raise CheckpointError(f"--checkpoint {path}: neither a finished run (model.safetensors + model.json) nor a "
                          "directory with checkpoints (checkpoints/step-*.ckpt)")
