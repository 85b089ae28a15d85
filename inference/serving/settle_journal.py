"""Durable settles (contract 3, ``docs/limits.md``): a settle that fails because Redis did is
written down and retried until it reaches Redis, never dropped.

Why
    A settle releases the request's concurrency slot, turns its reservation into its real usage
    and corrects the tokens-per-minute window. Dropped on a Redis blip (a timeout, a restart,
    redis-py's "Too many connections"), the slot and the whole reservation stay held until the
    lease expires and a reserve reclaims it as fully used: with a tight
    ``max_concurrent_requests`` that locks a tenant out for a lease (10 minutes by default).

How
    :meth:`SettleJournal.settle` calls :meth:`Limiter.settle` once. When that raises
    :class:`LimiterUnavailable` (any Redis or socket error) or is cancelled, the settle — every
    field of the reservation and the actual usage — is appended as one JSON line to this
    process's journal file in ``directory`` (``settles-<pid>-<random>.journal``, fsynced, under
    an exclusive ``flock`` while open) and kept in memory; ``settle`` then returns without
    raising. A background task (:meth:`start`) retries the waiting settles, oldest first, after
    ``retry_interval`` seconds, doubling up to ``max_retry_interval`` while Redis keeps failing.
    A file is deleted once every settle in it reached Redis.

Exactly once, although replayed at least once
    The settle script deletes the reservation's pending record in the same atomic step that
    applies the usage, and does nothing where that record is absent. So a settle applied twice
    — replayed after a call that had in fact reached Redis (only its reply was lost), replayed
    again because a process died before deleting its file, or replayed by two processes — changes
    the counters once. The journal relies on that, and needs no bookkeeping of its own in Redis.

The lease while a settle waits
    A journalled settle's reservation is handed to the journal's own :class:`LeaseKeeper`, which
    renews it every ``lease_seconds / 3`` until the settle reaches Redis, so the slot is released
    by the real settle, not by expiry. The gateway's own keeper may drop the reservation as soon
    as :meth:`settle` returns. Redis reclaims nothing while it is down, and the renewal is retried
    every second once it fails, so the lease survives any outage that ends a little before it
    would expire: with the gateway's keeper having renewed it up to ``lease_seconds / 3`` before
    the failure, any outage shorter than about two thirds of the lease (399 s of a 600 s lease).
    Longer outages, or a reservation that was not renewed before, may lose the lease to a
    reclaim; its settle then does nothing (the reclaim counted the whole reservation as used, and
    reconciliation from Postgres corrects ``used``; the usage event carries the real usage).

The limit: a process that dies with settles in its journal
    The file stays on disk. Its lock died with the process, so the next process using the same
    directory (a restarted replica, or another replica sharing it) claims it within
    ``claim_interval`` seconds — ``flock`` without waiting, atomic rename to
    ``settles-replay-<pid>-<random>.journal``, the rules of ``spool_files.py`` that the usage
    spool follows too — and replays it. Nobody renews those leases meanwhile: a lease that
    expired and was reclaimed before the replay is handled as above. A file is only ever claimed
    by one live process, so replicas sharing a directory never replay the same file at once.
    Settles lost for good: only those whose journal write failed too (a full disk; logged,
    counted, retried from memory while the process lives) when the process then dies.

Use it from the event loop's thread. The directory should be the journal's own (a
``settles`` folder beside the usage spool, say); its files end in ``.journal`` so even a shared
folder does not mix them with the usage spool's ``.jsonl`` files.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from inference.serving import metrics, spool_files
from inference.serving.leases import LeaseKeeper
from inference.serving.limits import Limiter, LimiterUnavailable, RateLimitStatus, Reservation

logger = logging.getLogger(__name__)

JOURNAL_FORMAT_VERSION = 1
SUFFIX = ".journal"
_FAILURES = (LimiterUnavailable, RedisError, OSError)


@dataclass
class _Entry:
    """One settle waiting for Redis."""

    reservation: Reservation
    prompt_tokens: int
    completion_tokens: int
    spend: Decimal
    line: bytes  # its journal line, for the quarantine


@dataclass
class _Claimed:
    """A journal file of another (dead) process that this one claimed and holds locked."""

    fd: int
    path: Path
    ids: set[str] = field(default_factory=set)  # its settles not done yet


class SettleJournal:
    """Settles that survive a Redis outage: tried once, journalled on failure, retried until
    they reach Redis. See the module's docstring for the guarantees and their limits."""

    def __init__(
        self,
        limiter: Limiter,
        directory: str | Path,
        *,
        retry_interval: float = 0.5,
        max_retry_interval: float = 10.0,
        claim_interval: float = 5.0,
        lease_interval: float | None = None,
    ) -> None:
        if retry_interval <= 0 or max_retry_interval < retry_interval or claim_interval <= 0:
            raise ValueError("intervals must be positive, max_retry_interval >= retry_interval")
        self.limiter = limiter
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.claim_interval = claim_interval
        self.leases = LeaseKeeper(limiter, interval=lease_interval)
        self._own = spool_files.OwnFile(self.directory, prefix="settles", suffix=SUFFIX)
        self._own_path: Path | None = None  # the own file the ids below were written to
        self._own_ids: set[str] = set()  # settles in it not done yet
        self._appending = 0  # own-file appends in flight (in worker threads)
        self._claimed: dict[Path, _Claimed] = {}
        self._waiting: dict[str, _Entry] = {}  # request id -> settle, oldest first
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        # Counters for observability (also exported as metrics).
        self.journalled = 0
        self.retried = 0
        self.journal_failures = 0

    @property
    def backlog(self) -> int:
        """Settles waiting in this process (its own and those of files it took over)."""
        return len(self._waiting)

    def stats(self) -> dict[str, int]:
        return {
            "settles_waiting": self.backlog,
            "settles_journalled": self.journalled,
            "settles_retried": self.retried,
            "journal_failures": self.journal_failures,
            "files_claimed": len(self._claimed),
        }

    # -- the hot path -----------------------------------------------------------------------

    async def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        spend: Decimal,
    ) -> None:
        """Settle ``reservation`` with the actual usage, now or, if Redis fails, later.

        Returns once the settle reached Redis or is journalled; never raises for a Redis
        failure (``ValueError`` for negative counts, as :meth:`Limiter.settle`). Cancelled
        while settling, it journals the settle before the cancellation propagates.
        """
        try:
            await self.limiter.settle(
                reservation,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                spend=spend,
            )
            return
        except _FAILURES as exc:
            logger.warning("settle of %s failed (%s); journalled", reservation.request_id, exc)
            entry = self._entry(reservation, prompt_tokens, completion_tokens, spend)
            if self._hold(entry):
                # Shielded: a cancelled caller must not leave the settle unwritten.
                await asyncio.shield(self._write(entry))
        except asyncio.CancelledError:
            entry = self._entry(reservation, prompt_tokens, completion_tokens, spend)
            if self._hold(entry):
                self._write_now(entry)
            raise

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start retrying (and taking over files of dead processes) on the running loop."""
        if self._closed:
            raise RuntimeError("the settle journal is closed")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self.leases.start()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="settle-journal")

    async def aclose(self) -> None:
        """Stop: one last try for what waits, then leave the rest on disk for the next process
        (files unlocked, claimable). ``settle`` still journals afterwards, without retrying."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            assert self._wake is not None
            self._wake.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._waiting:
            await self._retry_round()
        await self.leases.aclose()
        self._remove_own_if_done()
        self._own.release()
        for claimed in self._claimed.values():
            os.close(claimed.fd)  # releases its lock: the next process takes it over
        self._claimed.clear()
        metrics.SETTLE_JOURNAL_BACKLOG.dec(len(self._waiting))
        self._waiting.clear()

    # -- journalling ------------------------------------------------------------------------

    def _entry(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, spend: Decimal
    ) -> _Entry:
        line = _encode(reservation, prompt_tokens, completion_tokens, spend)
        return _Entry(reservation, prompt_tokens, completion_tokens, spend, line)

    def _hold(self, entry: _Entry) -> bool:
        """Keep ``entry`` waiting in memory and its lease renewed; False if already waiting."""
        if self._closed:
            return True  # only written down now: the next process replays it
        rid = entry.reservation.request_id
        if rid in self._waiting:
            return False  # the same reservation settled twice: the first settle stands
        self._waiting[rid] = entry
        metrics.SETTLE_JOURNAL_BACKLOG.inc()
        self.leases.add(entry.reservation)
        if self._wake is not None:
            self._wake.set()
        return True

    async def _write(self, entry: _Entry) -> None:
        """Append ``entry`` to this process's journal file (fsynced) in a worker thread."""
        self._appending += 1
        try:
            path: Path | None = await asyncio.to_thread(self._own.append, entry.line)
        except OSError:
            path = None
            self._write_failed(entry)
        finally:
            self._appending -= 1
        if path is not None:
            self._written(entry, path)

    def _write_now(self, entry: _Entry) -> None:
        """The same, synchronously (a cancelled settle cannot await)."""
        try:
            path = self._own.append(entry.line)
        except OSError:
            self._write_failed(entry)
        else:
            self._written(entry, path)

    def _write_failed(self, entry: _Entry) -> None:
        self.journal_failures += 1
        logger.exception(
            "settle journal write failed in %s; %s is retried from memory only",
            self.directory,
            entry.reservation.request_id,
        )

    def _written(self, entry: _Entry, path: Path) -> None:
        rid = entry.reservation.request_id
        self.journalled += 1
        metrics.SETTLES_JOURNALLED.inc()
        if rid not in self._waiting:
            return  # retried successfully while it was being written
        if path != self._own_path:
            # A new file: the previous one was removed, or closed after a failed write (then it
            # is on disk, unlocked, and the next claim round takes its settles over).
            self._own_path, self._own_ids = path, set()
        self._own_ids.add(rid)

    # -- retrying (the background task) ------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_claim = loop.time()
        next_retry = math.inf
        delay = self.retry_interval
        # Checked after every await, not only cancelled: a cancellation that lands while the
        # Redis client waits on its socket timeout can come back as a TimeoutError (a failed
        # round), and the loop must end anyway.
        while not self._closed:
            self._wake.clear()
            try:
                if loop.time() >= next_claim:
                    if await self._claim_round():
                        next_retry = loop.time()  # settles of a dead process: retry at once
                    next_claim = loop.time() + self.claim_interval
                if self._waiting and loop.time() >= next_retry:
                    ok = await self._retry_round()
                    delay = self.retry_interval if ok else min(delay * 2, self.max_retry_interval)
                    next_retry = math.inf
                if self._waiting and next_retry == math.inf:
                    next_retry = loop.time() + delay
            except Exception:  # keep retrying whatever happens
                logger.exception("settle journal round failed")
                next_retry = loop.time() + self.max_retry_interval
                next_claim = max(next_claim, loop.time() + self.claim_interval)
            if self._closed:
                break
            timeout = max(0.0, min(next_claim, next_retry) - loop.time())
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as
            # the event is set, and aclose() would then wait for ever.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()

    async def _retry_round(self) -> bool:
        """Settle what waits, oldest first; stop at the first Redis failure (False)."""
        for rid, entry in list(self._waiting.items()):
            if rid not in self._waiting:
                continue
            try:
                await self.limiter.settle(
                    entry.reservation,
                    prompt_tokens=entry.prompt_tokens,
                    completion_tokens=entry.completion_tokens,
                    spend=entry.spend,
                )
            except _FAILURES as exc:
                logger.info("journalled settles still wait for Redis (%s)", exc)
                return False
            except Exception:
                # Refused for what it is (a malformed record): retrying can never help.
                logger.exception("journalled settle of %s refused; quarantined", rid)
                self._quarantine(entry.line)
            else:
                self.retried += 1
                metrics.SETTLES_RETRIED.inc()
            self._done(rid)
        return True

    def _done(self, rid: str) -> None:
        """The settle reached Redis: forget it, and delete every file left with nothing to do."""
        entry = self._waiting.pop(rid, None)
        if entry is None:
            return
        metrics.SETTLE_JOURNAL_BACKLOG.dec()
        self.leases.discard(entry.reservation)
        self._own_ids.discard(rid)
        self._remove_own_if_done()
        for path, claimed in list(self._claimed.items()):
            claimed.ids.discard(rid)
            if not claimed.ids:
                self._remove_claimed(path)

    def _remove_own_if_done(self) -> None:
        if self._own_path is None or self._own_ids or self._appending:
            return
        if self._own.path == self._own_path:
            self._own.remove()  # no append in flight: its lock is free, this is quick
        self._own_path = None

    def _remove_claimed(self, path: Path) -> None:
        claimed = self._claimed.pop(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(claimed.fd)

    # -- taking over files of dead processes --------------------------------------------------

    async def _claim_round(self) -> bool:
        """Claim every journal file no live process holds; hold its settles. True if any."""
        skip = {*self._claimed, *([self._own.path] if self._own.path else [])}
        found = await asyncio.to_thread(self._claim_sync, skip)
        took = False
        for fd, path, lines in found:
            claimed = _Claimed(fd, path)
            self._claimed[path] = claimed
            for line in lines:
                entry = _decode(line)
                if entry is None:
                    self._quarantine(line)
                    continue
                rid = entry.reservation.request_id
                claimed.ids.add(rid)
                took |= self._hold(entry)
            if not claimed.ids:
                self._remove_claimed(path)
        return took

    def _claim_sync(self, skip: set[Path]) -> list[tuple[int, Path, list[bytes]]]:
        found = []
        for path in spool_files.list_files(self.directory, f"*{SUFFIX}"):
            if path in skip:
                continue
            claimed = spool_files.claim(path, claimed_prefix="settles-replay", suffix=SUFFIX)
            if claimed is None:
                continue  # gone, or a live process holds it
            fd, claimed_path = claimed
            try:
                with spool_files.lines_of(fd) as lines:
                    found.append((fd, claimed_path, list(lines)))
            except OSError:
                os.close(fd)
                logger.exception("could not read journal file %s", claimed_path)
        return found

    def _quarantine(self, line: bytes) -> None:
        path = self.directory / f"settles-corrupt-{os.getpid()}.bad"
        logger.error("unusable settle journal line moved to %s", path)
        try:
            spool_files.quarantine(path, line)
        except OSError:
            logger.exception("could not quarantine a settle journal line: %r", line)


def _encode(
    reservation: Reservation, prompt_tokens: int, completion_tokens: int, spend: Decimal
) -> bytes:
    """Everything a replay needs: the reservation's fields and the actual usage."""
    record = {
        "v": JOURNAL_FORMAT_VERSION,
        "request_id": reservation.request_id,
        "key_id": reservation.key_id,
        "org_id": reservation.org_id,
        "month": reservation.month,
        "minute": reservation.minute,
        "tokens": reservation.tokens,
        "spend_micros": reservation.spend_micros,
        "lease_expires_at": reservation.lease_expires_at,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "spend": format(spend, "f"),  # a decimal string: money is never a float
        "journalled_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> _Entry | None:
    """A journal line back to its settle; None when it is not one."""
    try:
        record: Any = json.loads(line)
        if not isinstance(record, dict) or record.get("v") != JOURNAL_FORMAT_VERSION:
            return None
        texts = [record[name] for name in ("request_id", "key_id", "org_id", "month")]
        ints = [
            record[name]
            for name in ("minute", "tokens", "spend_micros", "prompt_tokens", "completion_tokens")
        ]
        if not all(isinstance(v, str) for v in texts):
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            return None
        spend = Decimal(record["spend"]) if isinstance(record["spend"], str) else None
        expires = record["lease_expires_at"]
        if spend is None or not isinstance(expires, int | float):
            return None
    except (ValueError, KeyError, InvalidOperation):
        return None
    reservation = Reservation(
        request_id=texts[0],
        key_id=texts[1],
        org_id=texts[2],
        month=texts[3],
        minute=ints[0],
        tokens=ints[1],
        spend_micros=ints[2],
        lease_expires_at=float(expires),
        rate=RateLimitStatus(),
    )
    return _Entry(reservation, ints[3], ints[4], spend, line)
