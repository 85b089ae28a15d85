"""Durable JSON-lines files in a directory that several processes share: the one implementation
of the rules that the usage spool (``usage_spool.py``) and the settle journal
(``settle_journal.py``) both follow.

The rules
    Writing. Each process appends only to a file of its own (``<prefix>-<pid>-<random><suffix>``),
    created with ``O_EXCL`` and held under an exclusive ``flock`` for as long as it is open. An
    append is one ``write`` of whole lines followed by ``fsync``: when it returns, the lines are
    on disk. An append that fails is cut back to where it started, so no half line is left for
    the next append to merge with, and the file is closed (the next append starts a new one).

    Claiming. A file is another process's to replay only if that process can take its ``flock``
    without waiting (so no live process writes or replays it: the kernel drops a dead process's
    locks) and then rename it atomically to a name of its own (``<claimed_prefix>-<pid>-<random>
    <suffix>``). The inode is checked after locking, so a file another process claimed meanwhile
    is never taken twice. The claimer holds the lock until it closes the file; if it dies, the
    claimed file is claimable again.

    Rewriting. A claimed file whose first lines were dealt with is replaced atomically (write a
    temporary file, fsync, ``rename``, fsync the directory) by the lines still to do, keeping its
    modification time so it keeps its place in the oldest-first order.

Nothing here knows what a line means; the callers parse and act on them.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


class OwnFile:
    """This process's append-only file in ``directory``, created and locked on first append.

    Thread-safe: appends, releases and removals are serialised by one lock.
    """

    def __init__(self, directory: Path, *, prefix: str, suffix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.suffix = suffix
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None

    @property
    def path(self) -> Path | None:
        """The file's path while it is open, else None."""
        return self._path

    def append(self, data: bytes) -> Path:
        """Append ``data`` (whole lines) and fsync; return the file's path. Raises ``OSError``;
        nothing half-written stays behind, and the file is closed (left on disk, unlocked, for
        a replayer to claim) so the next append starts a fresh one."""
        with self._lock:
            try:
                fd = self._open_locked()
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            except OSError:
                self._close_locked()
                raise
            assert self._path is not None
            return self._path

    def release(self, *, only_if_written: bool = False) -> Path | None:
        """Close the file, which releases its lock: from now on any process may claim it.
        Returns its path, or None when none was open (or, with ``only_if_written``, it was
        empty and stays open)."""
        with self._lock:
            if self._fd is None:
                return None
            if only_if_written and os.fstat(self._fd).st_size == 0:
                return None
            path = self._path
            self._close_locked()
            return path

    def remove(self) -> None:
        """Delete the file and close it (everything in it was dealt with)."""
        with self._lock:
            if self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
            self._close_locked()

    def _open_locked(self) -> int:
        while self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{self.prefix}-{os.getpid()}-{secrets.token_hex(4)}{self.suffix}"
            path = self.directory / name
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, path):  # a replayer may have claimed it before we locked it
                self._fd, self._path = fd, path
            else:
                os.close(fd)
        return self._fd

    def _close_locked(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # also releases the flock
        self._fd = self._path = None


def list_files(directory: Path, pattern: str) -> list[Path]:
    """The files in ``directory`` matching ``pattern``, oldest first (modification time, then
    name); files that vanish meanwhile are left out."""
    found = []
    for path in directory.glob(pattern):
        try:
            found.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:
            continue
    return [path for _, _, path in sorted(found)]


def claim(path: Path, *, claimed_prefix: str, suffix: str) -> tuple[int, Path] | None:
    """Lock ``path`` without waiting and rename it to a claimed name of this process.

    Returns the open (read-only, locked) descriptor and the new path, or None when the file is
    gone or a live process holds it. Closing the descriptor releases the claim."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        if not same_file(fd, path):
            os.close(fd)
            return None
        name = f"{claimed_prefix}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        claimed = path.parent / name
        os.rename(path, claimed)
    except FileNotFoundError:  # claimed and removed by another process meanwhile
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd, claimed


@contextlib.contextmanager
def lines_of(fd: int) -> Iterator[Iterator[bytes]]:
    """The lines of the claimed file open as ``fd``, read as they are iterated (a spool file
    can be large); ``fd`` itself stays open, and with it the claim."""
    with os.fdopen(os.dup(fd), "rb") as reader:
        yield iter(reader)


def replace_with(fd: int, claimed_path: Path, lines: Iterable[bytes]) -> None:
    """Atomically replace the claimed file (open as ``fd``) by ``lines``; delete it when there
    are none. Raises ``OSError`` with the claimed file still whole."""
    tmp = claimed_path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as out:
            wrote_any = False
            for line in lines:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                wrote_any = True
            out.flush()
            os.fsync(out.fileno())
        if not wrote_any:
            os.unlink(tmp)
            os.unlink(claimed_path)
            return
        stat = os.fstat(fd)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keep its place in line
        os.replace(tmp, claimed_path)
        fsync_dir(claimed_path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def quarantine(path: Path, line: bytes) -> None:
    """Append an unreadable line to ``path`` (kept for a person to look at), fsynced."""
    if not line.strip():
        return
    with open(path, "ab") as out:
        out.write(line if line.endswith(b"\n") else line + b"\n")
        out.flush()
        os.fsync(out.fileno())


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
