"""The usage emitter (contract 4, ``docs/usage-events.md``): usage events from the gateway to
billing, through Celery, in batches, with a disk spool for broker outages.

Every request that reached the gateway produces one :class:`UsageEvent`. The gateway calls
:meth:`UsageEmitter.emit` (synchronous, non-blocking, never raises) and a background asyncio task
sends the buffered events as ONE Celery task message per batch, by task name
(``billing.ingest_usage``, ``args=[[event_dict, ...]]``, JSON), so the data plane never imports
the consumer. Blocking broker I/O runs in a worker thread, never on the event loop.

Batching
    A batch is sent as soon as ``batch_size`` events are buffered (count), and every
    ``flush_interval`` seconds whatever is buffered is sent (time), so an event waits at most about
    ``flush_interval`` plus one send before it leaves the process.

Spooling and replay
    When a send fails (broker unreachable, publish timeout) the batch is appended as one JSON line
    to this process's spool file in ``spool_dir`` (``usage-<pid>-<random>.jsonl``, written with
    flush + fsync, held under an exclusive ``flock`` while open). For ``replay_interval`` seconds
    after a failure the emitter does not try the broker again and spools directly, so an outage
    costs one timeout per interval, not one per batch. Every ``replay_interval`` (and once at
    start) spool files are replayed oldest first: a file is claimed by taking its ``flock``
    without waiting and renaming it atomically to ``replay-<pid>-<random>.jsonl``; a file whose
    lock is held belongs to a live process (its writer, or another replayer) and is skipped, so two
    processes never replay the same file and files of dead processes are taken over. A file is
    removed only after all of its batches were sent; when a send fails part-way, the batches not
    yet sent are written to a new file that atomically replaces the claimed one. This process's own
    spool file is replayed only after every other file was, so an outage does not rotate it.

Ordering
    Within the live path batches leave in emit order. Spooled batches are replayed later, in order
    within a file and files oldest first, so they can arrive after newer live batches: the
    consumer must not rely on arrival order (events carry ``started_at``).

Delivery: at least once
    Nothing is dropped while the process lives: a batch is either acknowledged by the broker or
    written to the spool (if the spool write fails too the events go back into the buffer and
    are retried). The consumer is idempotent on ``request_id``, which turns this into exactly-once
    accounting. A batch can be delivered twice only when
    (1) a publish raised but the broker had in fact received the message (e.g. the reply was lost
        to a timeout): the batch was also spooled and is replayed later;
    (2) a process dies (or its spool rewrite fails) after sending some batches of a claimed spool
        file but before removing or rewriting it: those batches are replayed again.
    Events are lost only if the process is killed (SIGKILL, OOM, power loss) while they are still
    in memory, i.e. at most about ``flush_interval`` worth of events, or if the disk loses fsynced
    data.

Memory bound
    The buffer holds at most ``max_buffer`` events (default 50,000). An ``emit`` that finds it full
    spools the whole buffer synchronously (one write, one fsync) instead of growing it; this is
    the only case where ``emit`` touches the disk. Only if that spool write fails too does the
    buffer grow past the bound (logged; nothing is dropped).

Shutdown
    ``await aclose()`` stops accepting into the background path, sends (or, if the broker is down,
    spools) everything buffered, and releases this process's spool file so a later process can
    replay it. It does not wait for the spool backlog to be replayed. ``emit`` after ``aclose``
    spools the event synchronously. If the background task is cancelled instead, whatever is
    still buffered is spooled synchronously.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from celery import Celery

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SPOOL_FORMAT_VERSION = 1
DEFAULT_MAX_BUFFER = 50_000

Endpoint = Literal["chat.completions", "completions", "embeddings"]


def utc_iso(timestamp: float | None = None) -> str:
    """``timestamp`` (seconds since the epoch, default now) as ISO 8601 UTC, e.g.
    ``2026-11-22T03:04:05.678901Z``."""
    moment = dt.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEvent:
    """One request that reached the gateway. See ``docs/usage-events.md`` for every field."""

    request_id: str
    org_id: str
    key_id: str
    model: str
    served_model: str
    endpoint: Endpoint
    stream: bool
    status: int
    error_type: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: Decimal
    latency_ms: float
    ttft_ms: float | None
    started_at: str
    http_request_id: str | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict that is sent."""
        return {
            "schema": self.schema,
            "request_id": self.request_id,
            "org_id": self.org_id,
            "key_id": self.key_id,
            "model": self.model,
            "served_model": self.served_model,
            "endpoint": self.endpoint,
            "stream": self.stream,
            "status": self.status,
            "error_type": self.error_type,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            # A decimal string, never a float, never exponent notation.
            "cost": format(self.cost, "f"),
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "started_at": self.started_at,
            "http_request_id": self.http_request_id,
        }


Batch = list[dict[str, Any]]


class UsageEmitter:
    """Buffers usage events and sends them to Celery in batches; spools and replays on outage."""

    def __init__(
        self,
        *,
        broker_url: str,
        task_name: str = "billing.ingest_usage",
        spool_dir: str | Path,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        replay_interval: float = 5.0,
        queue: str = "celery",
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_timeout: float = 3.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval <= 0 or replay_interval <= 0 or send_timeout <= 0:
            raise ValueError("flush_interval, replay_interval and send_timeout must be positive")
        self.broker_url = broker_url
        self.task_name = task_name
        self.queue = queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.replay_interval = replay_interval
        self.max_buffer = max(max_buffer, batch_size)
        self.send_timeout = send_timeout
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)

        # Counters (exported as Prometheus metrics by the gateway).
        self.events_emitted = 0
        self.batches_sent = 0
        self.batches_spooled = 0
        self.batches_replayed = 0
        self.spool_backlog = 0
        self.send_failures = 0
        self.spool_failures = 0

        self._buffer: Batch = []
        self._buffer_lock = threading.Lock()
        self._spool_lock = threading.Lock()  # guards this process's own spool file
        self._spool_file: int | None = None
        self._spool_path: Path | None = None
        self._backlog_cache: dict[tuple[int, int], tuple[int, int]] = {}
        self._app: Celery | None = None
        self._broker_down_until = 0.0  # time.monotonic(); spool directly until then
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- hot path ---------------------------------------------------------------------------

    def emit(self, event: UsageEvent) -> None:
        """Buffer one event. Synchronous, non-blocking (except past the memory bound), never
        raises."""
        try:
            record = event.to_dict()
            with self._buffer_lock:
                self._buffer.append(record)
                self.events_emitted += 1
                size = len(self._buffer)
                closed = self._closed
            if closed or size >= self.max_buffer:
                self._spool_buffer_now()
            elif size >= self.batch_size:
                self._wake_flusher()
        except Exception:  # the hot path must never fail because of accounting
            logger.exception("usage emit failed; the event stays buffered if it was appended")

    def stats(self) -> dict[str, int]:
        """Counters for observability."""
        with self._buffer_lock:
            buffered = len(self._buffer)
        return {
            "events_emitted": self.events_emitted,
            "events_buffered": buffered,
            "batches_sent": self.batches_sent,
            "batches_spooled": self.batches_spooled,
            "batches_replayed": self.batches_replayed,
            "spool_backlog": self.spool_backlog,
            "send_failures": self.send_failures,
            "spool_failures": self.spool_failures,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flusher on the running event loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        if self._closed:
            raise RuntimeError("the usage emitter is closed")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="usage-emitter")

    async def aclose(self) -> None:
        """Send (or spool) everything buffered, release the spool file and stop."""
        if self._closed:
            return
        with self._buffer_lock:
            self._closed = True  # from now on emit() spools by itself
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            assert self._wake is not None
            self._wake.set()
            await task
        else:  # never started, or its loop is gone
            await asyncio.to_thread(self._final_flush_sync)

    # -- background task --------------------------------------------------------------------

    def _wake_flusher(self) -> None:
        wake, loop = self._wake, self._loop
        if wake is None or loop is None or wake.is_set():
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.flush_interval
        next_replay = loop.time()  # replay what earlier processes left, right away
        try:
            while not self._closed:
                timeout = max(0.0, min(next_flush, next_replay) - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                if self._closed:
                    break
                try:
                    if loop.time() >= next_flush:
                        next_flush = loop.time() + self.flush_interval
                        await self._flush(full_only=False)
                    else:
                        await self._flush(full_only=True)
                    if loop.time() >= next_replay:
                        next_replay = loop.time() + self.replay_interval
                        await asyncio.to_thread(self._replay_sync)
                except Exception:  # keep the flusher alive whatever happens
                    logger.exception("usage flusher iteration failed")
                    await asyncio.sleep(min(self.flush_interval, 1.0))
            await asyncio.to_thread(self._final_flush_sync)
        finally:
            # Cancelled (or crashed): do not lose what is still in memory.
            with self._buffer_lock:
                left = bool(self._buffer)
            if left:
                self._spool_buffer_now()
            self._release_own_spool()

    def _take(self, *, full_only: bool) -> list[Batch]:
        with self._buffer_lock:
            count = len(self._buffer)
            if full_only:
                count -= count % self.batch_size
            taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return [taken[i : i + self.batch_size] for i in range(0, len(taken), self.batch_size)]

    async def _flush(self, *, full_only: bool) -> None:
        while batches := self._take(full_only=full_only):
            await asyncio.to_thread(self._deliver_sync, batches)
            if not full_only:
                return

    def _final_flush_sync(self) -> None:
        if batches := self._take(full_only=False):
            self._deliver_sync(batches)
        self._release_own_spool()
        app, self._app = self._app, None
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()

    # -- sending (worker thread) ------------------------------------------------------------

    def _celery(self) -> Celery:
        if self._app is None:
            app = Celery("vlinders-usage", broker=self.broker_url, set_as_current=False)
            app.conf.update(
                task_serializer="json",
                accept_content=["json"],
                task_publish_retry=False,
                broker_connection_timeout=self.send_timeout,
                broker_connection_retry=False,
                broker_connection_max_retries=0,
                broker_transport_options={
                    "max_retries": 0,  # no reconnect loop when taking the channel
                    "socket_connect_timeout": self.send_timeout,
                    "socket_timeout": self.send_timeout,
                },
            )
            self._app = app
        return self._app

    def _send(self, batch_id: str, events: Batch) -> None:
        """Publish one batch as one Celery task message; raises when it was not published."""
        self._celery().send_task(
            self.task_name,
            args=[events],
            queue=self.queue,
            task_id=batch_id,
            serializer="json",
            retry=False,  # an outage must surface now, not after kombu's retry loop
        )

    def _try_send(self, batch_id: str, events: Batch) -> bool:
        if time.monotonic() < self._broker_down_until:
            return False
        try:
            self._send(batch_id, events)
        except Exception as exc:
            self.send_failures += 1
            self._broker_down_until = time.monotonic() + self.replay_interval
            app, self._app = self._app, None  # start from fresh connections next time
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close()
            logger.warning("usage batch not sent (%s); spooling to %s", exc, self.spool_dir)
            return False
        if self._broker_down_until:
            self._broker_down_until = 0.0
            logger.info("usage broker reachable again")
        return True

    def _deliver_sync(self, batches: list[Batch]) -> None:
        """Send each batch; spool the ones that could not be sent; never lose one."""
        unsent: list[tuple[str, Batch]] = []
        for events in batches:
            batch_id = uuid.uuid4().hex  # the Celery task id; a spooled batch keeps it
            if not unsent and self._try_send(batch_id, events):
                self.batches_sent += 1  # only the one flushing thread sends: no lock needed
            else:
                unsent.append((batch_id, events))
        if unsent and not self._spool(unsent):
            with self._buffer_lock:  # put them back in front, in order
                self._buffer[:0] = [event for _, events in unsent for event in events]

    # -- spool: writing ---------------------------------------------------------------------

    def _spool_buffer_now(self) -> None:
        """Spool the whole buffer synchronously (memory bound reached, closed, or cancelled)."""
        batches = self._take(full_only=False)
        if batches and not self._spool([(uuid.uuid4().hex, events) for events in batches]):
            with self._buffer_lock:
                self._buffer[:0] = [event for events in batches for event in events]

    def _spool(self, batches: list[tuple[str, Batch]]) -> bool:
        """Append batches to this process's spool file, one JSON line each, then fsync."""
        now = utc_iso()
        data = b"".join(
            json.dumps(
                {
                    "v": SPOOL_FORMAT_VERSION,
                    "batch_id": batch_id,
                    "spooled_at": now,
                    "events": events,
                },
                separators=(",", ":"),
                default=str,  # never fail to spool over an odd value
            ).encode()
            + b"\n"
            for batch_id, events in batches
        )
        with self._spool_lock:
            try:
                fd = self._own_spool_fd()
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    # Never leave half a line behind for the next append to merge with.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            except OSError:
                self.spool_failures += 1
                self._close_own_spool_locked()
                logger.exception(
                    "usage spool write failed in %s; keeping events in memory", self.spool_dir
                )
                return False
            self.batches_spooled += len(batches)
            self.spool_backlog += len(batches)
        return True

    def _own_spool_fd(self) -> int:
        """This process's spool file, created and locked on first use (call under _spool_lock)."""
        while self._spool_file is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"usage-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):  # a replayer may have claimed it before we locked it
                self._spool_file, self._spool_path = fd, path
            else:
                os.close(fd)
        return self._spool_file

    def _close_own_spool_locked(self) -> None:
        if self._spool_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._spool_file)  # also releases the flock
        self._spool_file = self._spool_path = None

    def _release_own_spool(self) -> None:
        with self._spool_lock:
            self._close_own_spool_locked()

    # -- spool: replay (worker thread) ------------------------------------------------------

    def _replay_sync(self) -> None:
        """Replay every claimable spool file, oldest first; stop at the first failed send."""
        with self._spool_lock:
            own = self._spool_path
        if all(self._replay_file(path) for path in self._spool_files() if path != own):
            with self._spool_lock:
                own = None
                if self._spool_file is not None and os.fstat(self._spool_file).st_size:
                    own = self._spool_path
                    self._close_own_spool_locked()  # releases the flock: claimable now
            if own is not None:
                self._replay_file(own)
        self._recount_backlog()

    def _spool_files(self) -> list[Path]:
        found = []
        for path in self.spool_dir.glob("*.jsonl"):
            try:
                found.append((path.stat().st_mtime, path.name, path))
            except FileNotFoundError:
                continue
        return [path for _, _, path in sorted(found)]

    def _replay_file(self, path: Path) -> bool:
        """Claim ``path`` and send its batches in order. False when a send failed (stop)."""
        claimed = _claim(path, self.spool_dir)
        if claimed is None:
            return True  # gone or held by a live process: not ours to replay
        fd, claimed_path = claimed
        try:
            with os.fdopen(os.dup(fd), "rb") as reader:
                lines = iter(reader)
                changed = False  # a batch was sent or a line quarantined: rewrite on failure
                for line in lines:
                    batch = _parse_spool_line(line)
                    if batch is None:
                        self._quarantine(line)
                        changed = True
                        continue
                    batch_id, events = batch
                    if not self._try_send(batch_id, events):
                        if changed:
                            self._keep_unsent(fd, claimed_path, _chain(line, lines))
                        return False
                    self.batches_replayed += 1
                    changed = True
            os.unlink(claimed_path)
            return True
        finally:
            os.close(fd)  # releases the flock

    def _keep_unsent(self, fd: int, claimed_path: Path, lines: Iterator[bytes]) -> None:
        """Atomically replace the claimed file by its batches not yet sent."""
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
            _fsync_dir(self.spool_dir)
        except OSError:
            # The claimed file is still whole: its sent batches will be sent again (duplicates).
            logger.exception("could not rewrite usage spool file %s", claimed_path)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _quarantine(self, line: bytes) -> None:
        if not line.strip():
            return
        path = self.spool_dir / f"corrupt-{os.getpid()}.bad"
        logger.error("unreadable usage spool line moved to %s", path)
        with open(path, "ab") as out:
            out.write(line if line.endswith(b"\n") else line + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def _recount_backlog(self) -> None:
        """Count the batches waiting in spool_dir (all processes), reading only appended bytes."""
        total = 0
        cache: dict[tuple[int, int], tuple[int, int]] = {}
        for path in self._spool_files():
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
        self.spool_backlog = total


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _claim(path: Path, spool_dir: Path) -> tuple[int, Path] | None:
    """Lock ``path`` without waiting and rename it to a name of this process.

    The flock proves no live process writes or replays it; the rename is atomic, and checking
    the inode after locking rules out a file another process claimed meanwhile."""
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
        if not _same_file(fd, path):
            os.close(fd)
            return None
        claimed = spool_dir / f"replay-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        os.rename(path, claimed)
    except FileNotFoundError:  # claimed and removed by another process meanwhile
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd, claimed


def _parse_spool_line(line: bytes) -> tuple[str, Batch] | None:
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
