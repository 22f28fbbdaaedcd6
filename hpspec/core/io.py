"""Reading user inputs with clear errors, and writing outputs atomically.

Outputs are written into a temporary sibling and renamed into place, so a reader (or a killed run)
sees either the old file, the complete new one, or nothing; inputs are only ever opened for reading.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpspec.core import faults
from hpspec.core.errors import HpspecError, SpecError
from hpspec.core.lock import output_lock

TMP_MARKER = ".hpspec-tmp-"
MAX_SPEC_BYTES = 1 << 20  # a spec is a few lines; refuse megabytes of anything
BOM = "\ufeff"  # a UTF-8 byte-order mark, which some editors write first


def read_text_input(path: Path, what: str = "file", limit: int = MAX_SPEC_BYTES) -> str:
    """A small UTF-8 text input, or an HpspecError that names the file and the problem.

    Only a regular file (or a character device such as /dev/null) is read: a FIFO or a socket is
    refused before a read could block on it (it is opened without blocking, then checked). A UTF-8 byte-order mark first is dropped."""
    try:
        if path.is_dir():
            raise HpspecError(f"{path}: is a directory, expected a {what} file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # /dev/null stays an empty input
                raise HpspecError(f"{path}: not a regular file (a FIFO or a socket?), expected a {what} file")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise HpspecError(f"{path}: no such {what} file") from None
    except OSError as error:
        raise HpspecError(f"{path}: cannot read {what}: {error.strerror or error}") from None
    if len(data) > limit:
        raise HpspecError(f"{path}: {what} is larger than {limit} bytes")
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as error:
        raise HpspecError(f"{path}: {what} is not UTF-8 text (byte {error.start})") from None


def read_json_input(path: Path, what: str = "JSON file", limit: int = 64 << 20) -> Any:
    """A JSON input file, parsed by `parse_json`: every way it can be wrong is one HpspecError."""
    return parse_json(read_text_input(path, what, limit), str(path), what)


def parse_json(data: str | bytes, where: str, what: str = "JSON", error: type[HpspecError] = HpspecError) -> Any:
    """The one JSON reader of every input (a config, a header, a plan, an index, a table): any
    malformed text, a number too long for Python to convert or nesting too deep to decode becomes
    one `error` naming `where`, never a traceback."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as problem:
        raise error(f"{where}:{problem.lineno}:{problem.colno}: {what} is not valid JSON: {problem.msg}") from None
    except UnicodeDecodeError as problem:
        raise error(f"{where}: {what} is not valid JSON: not UTF-8 text (byte {problem.start})") from None
    except RecursionError:
        raise error(f"{where}: {what} is not valid JSON hpspec can read: arrays or objects nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        limit = sys.get_int_max_str_digits()
        raise error(
            f"{where}: {what} holds an integer of more than {limit} digits; no real value is that long"
        ) from None


FileState = tuple[int, int, int, int, int]  # device, inode, size, mtime and ctime in ns


def file_states(paths: Iterable[Path]) -> dict[Path, FileState]:
    """What identifies each file's content without reading it: a rewrite in place changes it."""
    states = {}
    for path in paths:
        info = os.stat(path)
        states[Path(path)] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return states


def require_unchanged(states: dict[Path, FileState], what: str, error: type[HpspecError] = HpspecError) -> None:
    """Refuse inputs that changed since `states` was taken (rewritten, replaced or removed mid-read)."""
    for path, state in states.items():
        try:
            info = os.stat(path)
            now = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        except OSError:
            now = None
        if now != state:
            raise error(
                f"{path}: the {what} changed while hpspec was reading it (size, time or inode differ); "
                "nothing was written: run again once nothing else writes it"
            )


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a bounded input (a spec of at most 1 MB) is parsed and
    checked: its hundreds of thousands of live tree objects would be rescanned by every collection,
    and the time grow faster than the input. Reference counting still frees what is dropped; the
    collector runs again (and finds any cycle) when the block ends. Nothing global stays changed."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cache_dir() -> Path | None:
    """hpspec's per-user cache: `$HPSPEC_CACHE_DIR` (empty: none), else `$XDG_CACHE_HOME/hpspec`, else `~/.cache/hpspec`."""
    configured = os.environ.get("HPSPEC_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpspec"


def dumps_json(data: Any) -> str:
    """The one JSON form hpspec writes: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename; a crash leaves the old file or the new one.

    An OSError names `path`, not the temporary file (which is gone)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARKER}", dir=path.parent or Path("."))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600; a new file gets the usual mode
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(out: Path, force: bool = False) -> Iterator[Path]:
    """A temporary sibling to write; renamed onto `out` when the block ends, removed on any error.

    An existing `out` needs `force`. The temporary file gets the mode a new file would (not
    mkstemp's 0600); an OSError (a full disk) names `out`, not the temporary file. Held under
    `out`'s lock, as `atomic_directory` is."""
    out = Path(out)
    with output_lock(out):
        with _atomic_file(out, force) as tmp:
            yield tmp


def _clear_way(out: Path, force: bool) -> None:
    """Under `out`'s lock: what a killed run left is swept, and an existing `out` needs `force`."""
    sweep_stale_siblings(out)
    if out.exists() and not force:
        raise HpspecError(f"{out}: already exists (use --force to replace it)")


@contextmanager
def _atomic_file(out: Path, force: bool) -> Iterator[Path]:
    _clear_way(out, force)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}{TMP_MARKER}", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, out)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise HpspecError(f"{out}: cannot write: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then rename it to `out`.

    An existing `out` needs `force`: it is moved aside, the new one renamed in, the old deleted.
    Stale siblings left by a killed run are swept first. On any error nothing is left at `out`
    (or the old one stays, untouched). The whole run holds `out`'s lock (`core.lock`), so a second
    writer is refused rather than sweeping this one's files.
    """
    out = Path(out)
    with output_lock(out):
        with _atomic_directory(out, force) as tmp:
            yield tmp


@contextmanager
def _atomic_directory(out: Path, force: bool) -> Iterator[Path]:
    _clear_way(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARKER}", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; the output gets what mkdir would give
    aside: Path | None = None  # where an existing output waits while the new one is renamed in
    try:
        yield tmp
        _fsync_dir(tmp)
        faults.point("stage.before_rename")
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARKER}old-", dir=out.parent))
            os.replace(out, aside / "old")
            faults.point("stage.after_set_aside")
            os.replace(tmp, out)
            faults.point("stage.after_rename")
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
            faults.point("stage.after_rename")
        _fsync_dir(out.parent)
    except OSError as error:  # a full disk, a lost mount: said in one line, nothing left at `out`
        _abandon(tmp, aside, out)
        where = (
            f" ({os.fsdecode(error.filename).replace(str(tmp), str(out))})" if error.filename else ""
        )  # as it would be named
        raise HpspecError(f"{out}: cannot write: {error.strerror or error}{where}") from None
    except HpspecError as error:  # one that names the temporary directory (gone now) names the output instead
        _abandon(tmp, aside, out)
        if str(tmp) not in str(error) or isinstance(error, SpecError):
            raise
        raise type(error)(str(error).replace(str(tmp), str(out))) from None
    except BaseException:
        _abandon(tmp, aside, out)
        raise


def _abandon(tmp: Path, aside: Path | None, out: Path) -> None:
    """After a failure the temporary directory goes, and an old output set aside comes back."""
    shutil.rmtree(tmp, ignore_errors=True)
    if aside is None:
        return
    if not out.exists() and (aside / "old").exists():
        os.replace(aside / "old", out)
    shutil.rmtree(aside, ignore_errors=True)


def sweep_stale_siblings(out: Path) -> list[Path]:
    """Remove `.NAME.hpspec-tmp-*` siblings of `out` that a killed run left behind.

    Only under `out`'s lock: a live run holds it, so its files are never swept (a second run is
    refused instead). An old output that a killed `--force` run had set aside, with nothing
    renamed in its place, is put back at `out`, not deleted."""
    swept: list[Path] = []
    if not out.parent.is_dir():
        return swept
    with output_lock(out):
        _restore_set_aside(out)
        return _sweep(out)


def _restore_set_aside(out: Path) -> None:
    if out.exists() or out.is_symlink():
        return
    for old in sorted(out.parent.glob(f".{out.name}{TMP_MARKER}old-*/old")):
        os.replace(old, out)
        return


def _sweep(out: Path) -> list[Path]:
    swept = []
    for stale in out.parent.glob(f".{out.name}{TMP_MARKER}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        swept.append(stale)
    return swept


def umask() -> int:
    """The process's umask (read by setting and restoring it): the mode a new output file gets."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
