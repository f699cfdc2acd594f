"""One writer per run folder, and no leftovers from killed runs.

A run folder (checkpoints, ``log.csv``, generated files) has one writer at a time:
:func:`lock_run_directory` takes an exclusive ``fcntl.flock`` on ``<folder>/.lock`` and writes
the holder's process id, host, command and start time into it. The kernel releases the lock when
the process ends, however it ends (``kill -9`` included), so a lock is never stale; a second
process asking for it stops at once with :class:`RunDirectoryLocked`, naming the holder.

Files are written through a hidden temporary beside them
(:func:`surrogate.data.hdf5.atomic_output`: ``.NAME.<host>-<pid>.<random>.tmpSUFFIX``). A
process killed while writing leaves its temporary behind; :func:`remove_abandoned_temporaries`
removes those whose writer, on this host, is no longer alive. Temporaries written on other
hosts (a run folder on a shared file system) are left alone: their writers' liveness cannot be
seen from here.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import Iterator

__all__ = [
    "LOCK_NAME",
    "RunDirectoryLocked",
    "abandoned",
    "lock_run_directory",
    "remove_abandoned_temporaries",
    "temporary_name",
]

LOCK_NAME = ".lock"
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[0-9a-f]{12}\.tmp[^/]*$")


class RunDirectoryLocked(RuntimeError):
    """Another live process writes to this run folder (the message names it)."""


def _host_tag() -> str:
    """Eight hex digits of this host's name (host names may hold dots, which file names parse)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temporary_name(path: Path, token: str) -> Path:
    """The hidden temporary beside ``path`` for a writer with random ``token`` (12 hex digits):
    ``.NAME.<host>-<pid>.<token>.tmpSUFFIX`` (the suffix kept for writers that infer the format)."""
    return path.with_name(f".{path.name}.{_host_tag()}-{os.getpid()}.{token}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def abandoned(path: Path) -> bool:
    """True when ``path`` is a temporary of :func:`temporary_name` written on this host by a
    process that no longer runs."""
    match = _TEMPORARY.match(path.name)
    return bool(match) and match["host"] == _host_tag() and not _alive(int(match["pid"]))


def remove_abandoned_temporaries(directory: str | os.PathLike, *, recursive: bool = False,
                                 target: str | None = None) -> list[Path]:
    """Removes the abandoned temporaries (see :func:`abandoned`) in ``directory``.

    Arguments:
        directory: the folder to clean (a missing folder has nothing to clean).
        recursive: also clean its subfolders.
        target: only temporaries of this file name (``.TARGET.*``), e.g. the file about to be
            written.

    Returns:
        The files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{target}.*" if target is not None else ".*"
    removed = []
    for candidate in directory.rglob(pattern) if recursive else directory.glob(pattern):
        if candidate.is_file() and abandoned(candidate):
            with contextlib.suppress(FileNotFoundError):  # another process cleaned it first
                candidate.unlink()
                removed.append(candidate)
    return removed


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process (it wrote no details)"


@contextlib.contextmanager
def lock_run_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Holds the run folder's lock for the body; then removes abandoned temporaries in it.

    Arguments:
        directory: the run folder (created if missing).

    Yields:
        The lock file's path.

    Raises:
        RunDirectoryLocked: another live process holds the lock (named: process id, host,
            command and start time).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_file = directory / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunDirectoryLocked(f"run folder {directory} is in use by {_holder(lock_file)}; wait for it to "
                                     "end or use another output_dir") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}), started {started}\n".encode())
        remove_abandoned_temporaries(directory, recursive=True)
        yield lock_file
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new holder)
