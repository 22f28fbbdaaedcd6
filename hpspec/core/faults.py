"""Fault injection at named points of a compile, for tests: `HPSPEC_FAULT_AT=POINT[:ACTION]`.

A point is named after what is about to happen there (`stage.before_rename`). ACTION is `kill`
(SIGKILL this process, as a power cut or the OOM killer would: no cleanup runs), `raise` (an
exception hpspec does not expect: a bug; the default), `enospc` (the disk is full) or `stop`
(SIGSTOP: the run pauses there, alive, until a SIGCONT, so that a test can race it deterministically). Faults fire
at a point, never at a random time, so every outcome is reproducible. With the variable unset a
point costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from hpspec.core.errors import HpspecError

ENV = "HPSPEC_FAULT_AT"
ACTIONS = ("kill", "raise", "enospc", "stop")

# Every point, in the order a compile reaches them.
POINTS = (
    "prune.before_write",  # the temporary directory exists, empty
    "prune.after_shard",  # one output shard's bytes are copied, its header still holds placeholders
    "prune.before_metadata",  # every byte is copied; final headers, index, config and plan come next
    "stage.before_provenance",  # the stage's files are written; provenance.json and report.html come next
    "stage.before_rename",  # the temporary directory is complete and synced
    "stage.after_set_aside",  # (--force over an existing output) the old output is moved aside
    "stage.after_rename",  # the new output is in place; the old one (if any) is not yet deleted
)
# Points outside a compile (tests/test_hostile.py runs a compile at each of POINTS).
ANALYZE_POINTS = ("analyze.after_entry",)  # an entry's line is appended to the .partial file and synced


_STOPPED: set[str] = set()  # `stop` points this process has paused at


class InjectedFault(RuntimeError):
    """The `raise` action: deliberately not an HpspecError, so it stands for a bug."""


def point(name: str, path: Path | None = None) -> None:
    """Fire the configured fault if it names this point; `path` is the file a disk-full error names."""
    configured = os.environ.get(ENV)
    if configured is None:
        return
    _fire(name, path, configured)


def _fire(name: str, path: Path | None, configured: str) -> None:
    where, _, action = configured.partition(":")
    if where not in POINTS + ANALYZE_POINTS or (action or "raise") not in ACTIONS:
        # A typo would otherwise make a fault test pass without injecting anything.
        raise HpspecError(
            f"{ENV}={configured}: expected POINT[:ACTION], POINT one of {', '.join(POINTS + ANALYZE_POINTS)}, ACTION one of {', '.join(ACTIONS)}"
        )
    if where != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "stop":  # paused until a SIGCONT: a test acts at this exact point while the run is alive
        if name not in _STOPPED:  # the first time only: a point reached per shard pauses the run once
            _STOPPED.add(name)
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))
    raise InjectedFault(f"fault injected at {name} ({ENV}={configured})")
