"""One process at a time in a run directory: an OS file lock (``fcntl.flock``) on ``DIR/.lock``.

The kernel releases the lock when its holder exits, however it exits (SIGKILL and crashes included), so a killed
run can be resumed at once; a second process that tries while the first runs is refused immediately, told which
process (pid and host, written into the lock file by its holder) has the directory. The lock file stays behind
(removing it would let two processes lock two different files of the same name).
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class DirectoryInUseError(BlockingIOError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    """``with DirectoryLock(run_dir): ...`` holds ``run_dir/.lock`` for the block (the directory must exist)."""

    def __init__(self, directory: str | os.PathLike, what: str = "run directory"):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DirectoryInUseError at once, naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode("utf-8", "replace").split()
            os.close(fd)
            who = f"process {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
            raise DirectoryInUseError(f"{self.what} {self.directory} is in use by {who}; wait for it to finish "
                                      "or stop it, or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
