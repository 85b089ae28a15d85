"""The usage emitter's disk spool (contract 4, ``docs/usage-events.md``): where batches of usage
events wait while the broker is unreachable, and how they are replayed.

Format
    One JSON line per batch, ``{"v": 1, "batch_id", "spooled_at", "events": [...]}``; the batch
    id is the Celery task id the batch was (or will be) sent with, so a replayed batch keeps it.

Files
    This process appends to its own file ``usage-<pid>-<random>.jsonl`` (flush + fsync, under an
    exclusive ``flock`` while open). Replay claims files oldest first (``flock`` without waiting,
    then an atomic rename to ``replay-<pid>-<random>.jsonl``): a file whose lock is held belongs
    to a live process and is skipped, so two processes never replay the same file and files of
    dead processes are taken over. A file is removed only after all of its batches were sent;
    when a send fails part-way, the batches not yet sent atomically replace the claimed file. This
    process's own file is replayed only after every other file was, so an outage does not rotate
    it. Unreadable lines go to ``corrupt-<pid>.bad``. Every ``*.jsonl`` file in the directory is
    the spool's. The rules themselves (own file, claiming, rewriting) are ``spool_files.py``'s,
    shared with the settle journal.

Nothing here talks to the broker: :meth:`UsageSpool.replay` hands each batch to a ``send``
callable. Blocking file I/O: call it from a worker thread, never on the event loop.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from inference.serving import spool_files

logger = logging.getLogger(__name__)

SPOOL_FORMAT_VERSION = 1

Batch = list[dict[str, Any]]
# Publish one batch (batch id, events); True when the broker took it.
SendBatch = Callable[[str, Batch], bool]


class UsageSpool:
    """The spool directory of usage batches, shared by the processes of a node."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own = spool_files.OwnFile(self.directory, prefix="usage", suffix=".jsonl")
        self._backlog_cache: dict[tuple[int, int], tuple[int, int]] = {}

    def append(self, batches: Sequence[tuple[str, Batch]], *, spooled_at: str) -> None:
        """Append batches (id, events) to this process's file, one line each, and fsync.

        Raises ``OSError`` when they could not be written; then nothing of them was kept."""
        data = b"".join(
            json.dumps(
                {
                    "v": SPOOL_FORMAT_VERSION,
                    "batch_id": batch_id,
                    "spooled_at": spooled_at,
                    "events": events,
                },
                separators=(",", ":"),
                default=str,  # never fail to spool over an odd value
            ).encode()
            + b"\n"
            for batch_id, events in batches
        )
        self._own.append(data)

    def release(self) -> None:
        """Close this process's file, so any process (this one included) may replay it."""
        self._own.release()

    def files(self) -> list[Path]:
        """Every spool file in the directory (all processes'), oldest first."""
        return spool_files.list_files(self.directory, "*.jsonl")

    def replay(self, send: SendBatch) -> bool:
        """Replay every claimable spool file, oldest first, this process's own file last; stop
        at the first failed send. Returns whether everything claimable was sent."""
        own = self._own.path
        if not all(self._replay_file(path, send) for path in self.files() if path != own):
            return False
        own = self._own.release(only_if_written=True)  # claimable now
        return own is None or self._replay_file(own, send)

    def backlog(self) -> int:
        """Count the batches waiting in the directory (all processes), reading only the bytes
        appended since the last count."""
        total = 0
        cache: dict[tuple[int, int], tuple[int, int]] = {}
        for path in self.files():
            try:
                stat = path.stat()
                key = (stat.st_dev, stat.st_ino)
                size, count = self._backlog_cache.get(key, (0, 0))
                if stat.st_size < size:
                    size, count = 0, 0
                if stat.st_size > size:
                    with open(path, "rb") as reader:
                        reader.seek(size)
                        chunk = reader.read(stat.st_size - size)
                    size, count = size + len(chunk), count + chunk.count(b"\n")
            except OSError:
                continue
            cache[key] = (size, count)
            total += count
        self._backlog_cache = cache
        return total

    def _replay_file(self, path: Path, send: SendBatch) -> bool:
        """Claim ``path`` and send its batches in order. False when a send failed (stop)."""
        claimed = spool_files.claim(path, claimed_prefix="replay", suffix=".jsonl")
        if claimed is None:
            return True  # gone or held by a live process: not ours to replay
        fd, claimed_path = claimed
        try:
            with spool_files.lines_of(fd) as lines:
                changed = False  # a batch was sent or a line quarantined: rewrite on failure
                for line in lines:
                    batch = _parse_line(line)
                    if batch is None:
                        self._quarantine(line)
                        changed = True
                        continue
                    if not send(*batch):
                        if changed:
                            self._keep_unsent(fd, claimed_path, _chain(line, lines))
                        return False
                    changed = True
            os.unlink(claimed_path)
            return True
        finally:
            os.close(fd)  # releases the flock

    def _keep_unsent(self, fd: int, claimed_path: Path, lines: Iterator[bytes]) -> None:
        try:
            spool_files.replace_with(fd, claimed_path, lines)
        except OSError:
            # The claimed file is still whole: its sent batches will be sent again (duplicates).
            logger.exception("could not rewrite usage spool file %s", claimed_path)

    def _quarantine(self, line: bytes) -> None:
        if not line.strip():
            return
        path = self.directory / f"corrupt-{os.getpid()}.bad"
        logger.error("unreadable usage spool line moved to %s", path)
        spool_files.quarantine(path, line)


def _parse_line(line: bytes) -> tuple[str, Batch] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("events"), list):
        return None
    batch_id = record.get("batch_id")
    return (batch_id if isinstance(batch_id, str) else uuid.uuid4().hex), record["events"]


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
