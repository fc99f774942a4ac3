"""Who may write a feature store: one writer at a time (an advisory file lock, with the holder named
when another command waits), readers never locked out."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fsl.errors import FslError


def _holder_of(handle, patience_s: float = 1.0) -> str:
    """Who holds a lock, as its holder wrote it: the holder writes its name just after taking the
    lock, so a reader that comes in between waits a moment rather than naming nobody."""
    deadline = time.monotonic() + patience_s
    while True:
        handle.seek(0)
        who = handle.read().strip()
        if who or time.monotonic() > deadline:
            return who or "another process"
        time.sleep(0.02)


@contextmanager
def file_lock(file: Path, shared: bool = False, wait: bool = True, holder: str = "", what: str = "") -> Iterator[None]:
    """An flock on `file`; the OS drops it when the process dies, even by kill -9. Refused at once
    (wait=False) it is a message naming `what` is locked (default: the store the file is in) and who holds it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a+") as handle:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            who = _holder_of(handle)
            raise FslError(
                f"{what or f'feature store {file.parent}'} is being written by {who}; wait for it to finish "
                "(or stop it), then run the command again"
            ) from None
        if holder:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holder_name(who: str) -> str:
    """What a lock's holder writes into it: the command, its pid and host, and since when."""
    return f"{who} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"


def writer_lock(path: Path, rank: int = 0, world_size: int = 1):
    """One writer per store: a second `fsl embed` fails at once, naming the first. The ranks of
    one torchrun job share it (each writes its own chunks)."""
    who = "fsl embed" + (f" rank {rank} of {world_size}" if world_size > 1 else "")
    return file_lock(path / "writer.lock", shared=world_size > 1, wait=False, holder=holder_name(who))
