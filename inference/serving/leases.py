"""Keep the limiter's leases of requests in flight alive (contract 3, ``docs/limits.md``).

A reservation's concurrency slot and reserved budget are a *lease* in Redis that expires
``lease_seconds`` after it was last written; an expired lease is reclaimed by the next reserve
of its scope and counted as fully used, so a gateway that dies cannot hold a slot forever. A
live gateway must therefore renew the leases of the requests it is still serving, or a
generation longer than one lease would lose its slot (another request is admitted in its place)
and its final settle would do nothing.

:class:`LeaseKeeper` is that renewal for one gateway replica: the replica adds every reservation
when it is admitted and discards it once it is settled; a background task renews all of them
every ``interval`` seconds (a third of the lease by default) with ONE limiter call
(:meth:`Limiter.renew_each`, chunked by the limiter), however many requests are in flight.

The guarantee: a lease renewed at ``t`` expires at ``t + lease_seconds``, and the next renewal
comes at ``t + interval`` (``interval < lease_seconds``), so while Redis answers, a held lease
never expires. A renewal that fails (Redis unreachable, a full connection pool) is logged and
tried again every ``retry_interval`` seconds (1 s by default) until one succeeds; it is never
fatal, and the reservation stays held. Redis reclaims nothing while it is down, so a lease
survives any outage that ends at least ``retry_interval`` before the lease would expire: any
outage shorter than ``lease_seconds - interval - retry_interval`` (399 s with the defaults of a
600 s lease), wherever it falls between two renewals. A reservation whose lease Redis no longer
has (settled elsewhere, reclaimed after a longer outage, a Redis that restarted empty) cannot be
brought back; the keeper stops renewing it and keeps nothing for it.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from inference.serving.limits import Limiter, LimiterUnavailable, Reservation

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds this replica's in-flight reservations and renews their leases periodically.

    ``interval`` defaults to ``limiter.lease_seconds / 3`` and must be shorter than the lease.
    Reservations are keyed by request id: adding the same one twice holds it once, and one
    :meth:`discard` releases it. Use it from the event loop's thread only.
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        interval: float | None = None,
        retry_interval: float | None = None,
    ) -> None:
        lease = limiter.lease_seconds
        self.interval = lease / 3 if interval is None else interval
        if not 0 < self.interval < lease:
            raise ValueError("interval must be positive and shorter than the lease")
        self.retry_interval = (
            min(1.0, self.interval / 4) if retry_interval is None else retry_interval
        )
        if self.retry_interval <= 0:
            raise ValueError("retry_interval must be positive")
        self.limiter = limiter
        self._held: dict[str, Reservation] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Counters for observability (limiter failures are counted by the limiter itself).
        self.renewals = 0  # successful renewal rounds
        self.failures = 0  # failed renewal rounds
        self.lost = 0  # reservations dropped because Redis no longer had their lease

    # -- the set of reservations ------------------------------------------------------------

    def add(self, reservation: Reservation) -> None:
        """Renew ``reservation``'s lease until it is discarded. Call right after reserve."""
        self._held[reservation.request_id] = reservation

    def discard(self, reservation: Reservation) -> None:
        """Stop renewing ``reservation`` (it was settled or released). Unknown ones are ignored."""
        self._held.pop(reservation.request_id, None)

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, reservation: object) -> bool:
        return isinstance(reservation, Reservation) and reservation.request_id in self._held

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing on the running event loop (idempotent)."""
        if self._closed:
            raise RuntimeError("the lease keeper is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-keeper")

    async def aclose(self) -> None:
        """Stop renewing. The held leases then expire by themselves, one lease later at most."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew_now(self) -> bool:
        """One renewal round for everything held; False when Redis failed (logged, not raised).

        One limiter call for all of them. A reservation Redis reports as no longer pending is
        dropped, unless it was discarded and added again meanwhile.
        """
        held = list(self._held.values())
        if not held:
            return True
        try:
            flags = await self.limiter.renew_each(held)
        except LimiterUnavailable as exc:
            self.failures += 1
            logger.warning(
                "renewing %d leases failed (%s); retrying in %ss",
                len(held),
                exc,
                self.retry_interval,
            )
            return False
        self.renewals += 1
        for reservation, renewed in zip(held, flags, strict=True):
            if not renewed and self._held.get(reservation.request_id) is reservation:
                # Settled meanwhile (it will be discarded anyway), or reclaimed: nothing to keep.
                del self._held[reservation.request_id]
                self.lost += 1
                logger.info(
                    "lease of request %s is gone; no longer renewed", reservation.request_id
                )
        return True

    async def _run(self) -> None:
        delay = self.interval
        # Checked after every await, not only cancelled: a cancellation that lands while the
        # Redis client waits on its socket timeout can come back as a TimeoutError (swallowed
        # below as a failed round), and the loop must end anyway.
        while not self._closed:
            await asyncio.sleep(delay)
            if self._closed:
                break
            try:
                ok = await self.renew_now()
            except Exception:  # never let the keeper die: the next round tries again
                logger.exception("lease renewal round failed")
                ok = False
            delay = self.interval if ok else self.retry_interval
