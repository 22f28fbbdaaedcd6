"""One writer per output: a lock file beside OUT, held with `flock` for as long as a run writes OUT.

Two runs into one `--out` would otherwise sweep each other's temporary directories, or the second
would replace the first's output. The lock is `.NAME.hpspec-lock` beside `NAME`; the holder writes
its pid into it, so that the refusal names the process. A lock left by a killed run is stale by
construction: the kernel releases an `flock` when its holder dies, so the next run takes it.
Within one process the lock is re-entrant (a stage's engine and its `atomic_directory` both take it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpspec.core.errors import HpspecError

LOCK_SUFFIX = ".hpspec-lock"
_HELD: dict[str, int] = {}  # lock paths this process holds -> how many holders nest inside it


def lock_path(out: Path) -> Path:
    """The lock file of output `out`: a hidden sibling (never matched by the stale-sibling sweep)."""
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock, or raise "another hpspec (pid N) is writing OUT" at once (never wait)."""
    out = Path(out)
    path = lock_path(out)
    key = os.path.abspath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    created = _make_parents(out.parent)
    fd = _acquire(path, out)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        path.unlink(missing_ok=True)  # still ours: whoever opened it since waits on this very file
        os.close(fd)
        for directory in created:  # a run that wrote nothing leaves no directory behind either
            try:
                directory.rmdir()
            except OSError:
                break


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        each.mkdir(exist_ok=True)
    return missing


def _acquire(path: Path, out: Path) -> int:
    """Lock the file at `path` (created if absent), re-opening if its last holder removed it meanwhile."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a read-only or full file system: said of the output, not of the lock file
            raise HpspecError(f"{out}: cannot write: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise HpspecError(
                f"{out}: another hpspec ({holder}) is writing {out}; wait for it to finish, or write elsewhere"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous holder unlinked this file after we opened it: take the new one


def _holder(fd: int) -> str:
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return "a process"
    return f"pid {pid}"
