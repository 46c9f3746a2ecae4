"""Exclusive advisory locks (``fcntl.flock``) on a run directory or a private store, held for as
long as one process works on it: a second ServerApp on the same run directory, or two ClientApps
on one client's private prompts, stop with an error naming the holder instead of interleaving
their writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock."""


class DirLock:
    """An exclusive lock on ``directory``: the file ``<directory>.lock`` beside it (created mode
    0600; outside the directory, so listings of what it holds stay as they were)."""

    def __init__(self, directory: str | Path, what: str) -> None:
        directory = Path(directory)
        self.directory = directory
        self.path = directory.with_name(directory.name + ".lock")
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{self.what} {self.directory} is in use by {holder}. Wait for it to finish "
                f"or stop it; if no such process is alive, the lock frees itself"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(directory: str | Path, what: str) -> Iterator[DirLock]:
    lock = DirLock(directory, what).acquire()
    try:
        yield lock
    finally:
        lock.release()
