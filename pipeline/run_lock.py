"""The run lock: one `textclf run` at a time per root of run directories.

`textclf run` holds `RunLock(root)` for its whole invocation (every date of a backfill, the
promotion gate included), so two runs on the same root never interleave: two dates scored at
once could both read a champion the other is replacing. `RunLock(directory)` takes
`fcntl.flock` on `<directory>/.run.lock`, non-blocking, and holds it
until it is released or the process ends: the kernel drops the lock with the process, however it
died, so there is no stale lock to detect or clean up. The file itself stays (removing it would
let two runs lock two different files); it holds the pid of the run that last took it, for
people. Stage child processes do not inherit the descriptor. An object-store run directory
(gs://, s3://) has no lock: a scheduler must not start two runs on the same root there.
"""

from __future__ import annotations

import fcntl
import os

from pipeline import outputs
from transforms.contracts import RUN_LOCK_FILE


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """`with RunLock(directory):` holds the directory (a run root), or raises RunLocked at once."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, RUN_LOCK_FILE) if outputs.is_local(directory) else None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.path is None:
            return self
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise RunLocked(
                f"another textclf run{f' (pid {holder})' if holder.isdigit() else ''} is "
                f"running on {self.directory}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
