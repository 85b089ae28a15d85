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
    to this process's spool file in ``spool_dir`` (the disk spool is ``usage_spool.py``: file
    names, format, claiming, replay). For ``replay_interval`` seconds after a failure the emitter
    does not try the broker again and spools directly, so an outage costs one timeout per
    interval, not one per batch. Every ``replay_interval`` (and once at start) spool files are
    replayed oldest first, each claimed by one process only, files of dead processes taken over,
    this process's own file last; a file is removed only after all of its batches were sent.

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
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from celery import Celery

from inference.serving.usage_spool import Batch, UsageSpool

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
    # The prices ``cost`` was computed at (USD per million tokens, the requesting organisation's
    # plan price of ``served_model``); ``None`` when no model was routed. Added to schema 1:
    # consumers ignore keys they do not know, and read an event without them as price-less.
    price_input_per_mtok: Decimal | None = None
    price_output_per_mtok: Decimal | None = None
    # The response cache (docs/response-cache.md): "hit" (replayed, priced at the model's
    # cache-hit price), "miss" (looked up, served by the engine), None when it did not apply.
    # Added to schema 1 like the prices: absent reads as None.
    cache: str | None = None
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
            "price_input_per_mtok": _decimal_text(self.price_input_per_mtok),
            "price_output_per_mtok": _decimal_text(self.price_output_per_mtok),
            "cache": self.cache,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "started_at": self.started_at,
            "http_request_id": self.http_request_id,
        }


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


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
        self._disk = UsageSpool(self.spool_dir)  # the disk spool (usage_spool.py)

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
        self._spool_lock = threading.Lock()  # serialises spooling and its counters
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
        with self._spool_lock:
            try:
                self._disk.append(batches, spooled_at=utc_iso())
            except OSError:
                self.spool_failures += 1
                logger.exception(
                    "usage spool write failed in %s; keeping events in memory", self.spool_dir
                )
                return False
            self.batches_spooled += len(batches)
            self.spool_backlog += len(batches)
        return True

    def _release_own_spool(self) -> None:
        self._disk.release()

    # -- spool: replay (worker thread) ------------------------------------------------------

    def _replay_sync(self) -> None:
        """Replay every claimable spool file, oldest first; stop at the first failed send."""
        self._disk.replay(self._replay_one)
        self.spool_backlog = self._disk.backlog()

    def _replay_one(self, batch_id: str, events: Batch) -> bool:
        if not self._try_send(batch_id, events):
            return False
        self.batches_replayed += 1
        return True
