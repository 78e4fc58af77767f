"""Atomic publication of files and directories: the one home of temp-name-fsync-rename.

Every output of the project (store shards, manifests, stats, converted checkpoints, packed
datasets, exports) appears under its final name only when complete. A reader therefore sees
either nothing or the whole thing, and a killed writer leaves only a temporary that a later
run can recognise and clean (``OUT.tmp-<pid>``, removed once that pid is dead).

    with atomic_path(path) as temp:        # a file: write to ``temp``, it is renamed on success
        temp.write_bytes(data)
    write_text_atomic(path, text)           # the same for a small text file
    temp = temp_dir_for(out)                # a directory: build under ``temp`` ...
    publish_dir(temp, out, replace=force)   # ... then rename it into place
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary beside ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        yield temp
        fsync_path(temp)
        os.replace(temp, path)
        fsync_path(path.parent)
    finally:
        if temp.exists():
            temp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(out: str | Path) -> list[Path]:
    """Temporaries ``OUT.tmp-<pid>`` of ``out`` whose writing process no longer runs."""
    out = Path(out)
    found = []
    for candidate in out.parent.glob(f"{out.name}{TEMP_MARK}*"):
        pid = candidate.name.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            found.append(candidate)
    return found


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Delete the temporaries of dead writers of ``out``; returns what was removed (for a log line)."""
    removed = stale_temps(out)
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def temp_dir_for(out: str | Path) -> Path:
    """A fresh ``OUT.tmp-<pid>`` directory beside ``out`` (stale ones of dead writers are removed first)."""
    out = Path(out)
    remove_stale_temps(out)
    temp = out.with_name(f"{out.name}{TEMP_MARK}{os.getpid()}")
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    return temp


def publish_dir(temp: Path, out: str | Path, *, replace: bool = False) -> None:
    """Rename the finished directory ``temp`` to ``out``; an existing ``out`` only with ``replace``."""
    out = Path(out)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists")
    old = out.with_name(f"{out.name}{TEMP_MARK}old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(temp, out)
    except OSError:
        if old.exists():  # put the previous output back: a failed publish loses nothing
            os.replace(old, out)
        raise
    fsync_path(out.parent)
    if old.exists():
        shutil.rmtree(old)
