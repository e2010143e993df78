"""What can go wrong with a SQLite file, said in one line: path checks and SQLite errors as faults.

The store (``sqlite.py``) asks :func:`access_problem` before opening and on every health check, and
turns SQLite's own errors into a :class:`~tracecanary.daemon.store.base.StoreFault` with
:func:`fault_of`, so ``/readyz``, the log, the alert and ``tracecanary run``'s exit message all name
the file and the cause rather than ``disk I/O error``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass

from tracecanary.daemon.store.base import StoreFault

_HINTS = (
    ("readonly", "is read-only (file mode, immutable flag or read-only file system)"),
    ("unable to open database file", "cannot be opened (missing folder or no permission)"),
    ("disk is full", "cannot grow: the disk is full"),
    ("disk i/o error", "cannot be written: I/O error (read-only, immutable or failing storage)"),
    ("database is locked", "is locked by another process (another tracecanary on the same file?)"),
    ("not a database", "is not a SQLite database"),
    ("malformed", "is corrupt (database disk image is malformed)"),
)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """The inode a connection opened: a different one at the same path means the file was replaced."""

    dev: int
    ino: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino)


def is_fault(exc: BaseException) -> bool:
    """A fault of the storage (I/O, permissions, space, locks, corruption), not a constraint or a bug."""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError | OSError) or type(exc) is sqlite3.DatabaseError


def fault_of(exc: BaseException, path: str) -> StoreFault:
    """One line naming the file and the cause; the original error stays attached as ``__cause__``."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EPERM, errno.EACCES):
        return _chained(StoreFault(f"{path} is read-only ({exc.strerror})"), exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _chained(StoreFault(f"{path} cannot grow: the disk is full"), exc)
    low = text.lower()
    for needle, hint in _HINTS:
        if needle in low:
            return _chained(StoreFault(f"{path} {hint}: {text}"), exc)
    return _chained(StoreFault(f"{path}: {type(exc).__name__}: {text}"), exc)


def _chained(fault: StoreFault, cause: BaseException) -> StoreFault:
    fault.__cause__ = cause
    return fault


def access_problem(path: str) -> str | None:
    """Why SQLite could not write ``path`` (and its ``-wal``/``-shm`` beside it), or None.

    ``os.access`` answers for the real process, root included: an immutable file (``chattr +i``) or
    a read-only mount is refused even to root, a file mode is not.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"folder {folder} is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable (SQLite creates {os.path.basename(path)}-wal and -shm there)"
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
            return f"{name} is read-only (file mode, immutable flag or read-only file system)"
    return None


SIDECARS = ("-wal", "-shm")


def sidecars_of(path: str) -> dict[str, FileIdentity]:
    """The identities of the ``-wal`` and ``-shm`` files beside ``path`` (those that exist)."""
    out = {}
    for suffix in SIDECARS:
        try:
            out[suffix] = FileIdentity.of(path + suffix)
        except FileNotFoundError:
            continue
    return out


def remove_sidecars(path: str, ours: dict[str, FileIdentity]) -> list[str]:
    """Delete the ``-wal``/``-shm`` beside ``path`` that are still the files in ``ours``; the removed."""
    removed = []
    for suffix, identity in ours.items():
        name = path + suffix
        try:
            if FileIdentity.of(name) == identity:
                os.unlink(name)
                removed.append(name)
        except FileNotFoundError:
            continue
    return removed
