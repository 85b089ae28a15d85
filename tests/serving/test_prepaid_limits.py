"""The prepaid balance in the limiter's scripts, against the real Redis (docs/limits.md,
"Prepaid balance"): 200 concurrent reserve→settle against a small balance never hold more than
the credit and settle to the exact cost; replayed reserves count once; a missing balance fails
closed as ``balance_unavailable``; reconciliation keeps settled-but-not-ingested spend; reclaimed
leases move into ``used``; postpaid organisations never touch the balance."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import TypeVar
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from inference.serving.limits import Limiter, LimitSet, Refusal, Reservation
from inference.serving.money import to_micros

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T = TypeVar("T")
UNLIMITED = LimitSet()
NOW = datetime.fromisoformat("2026-03-15T12:00:30+00:00").timestamp()


def run(body: Callable[[Limiter, aioredis.Redis], Awaitable[T]], **options: float) -> T:
    async def main() -> T:
        # Waits for a free connection instead of failing: 200 requests share 64 connections.
        pool = aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64)
        client = aioredis.Redis.from_pool(pool)
        prefix = f"vltest:prepaid:{uuid4().hex}:"
        try:
            return await body(Limiter(client, prefix, **options), client)
        finally:
            keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return asyncio.run(main())


async def reserve(
    lim: Limiter,
    spend: str | Decimal,
    *,
    prepaid: bool = True,
    request_id: str | None = None,
    org: LimitSet = UNLIMITED,
    now: float = NOW,
) -> Reservation | Refusal:
    return await lim.reserve(
        key_id="k1",
        org_id="o1",
        key_limits=UNLIMITED,
        org_limits=org,
        tokens=10,
        spend=Decimal(spend),
        request_id=request_id or uuid4().hex,
        prepaid=prepaid,
        now=now,
    )


def test_reserve_is_refused_once_the_balance_cannot_hold_it() -> None:
    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal("1.000000"), used=Decimal("0.25"))
        first = await reserve(lim, "0.75")
        assert isinstance(first, Reservation)
        refused = await reserve(lim, "0.000001")
        assert isinstance(refused, Refusal)
        assert refused.limit == "org.prepaid_balance"
        assert refused.retry_after is None  # waiting does not help: a top-up does
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros) == (250_000, 750_000)
        assert state.available == 0

        await lim.settle(first, prompt_tokens=3, completion_tokens=4, spend=Decimal("0.5"))
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros, state.settled_micros) == (
            750_000,
            0,
            500_000,
        )
        assert isinstance(await reserve(lim, "0.25"), Reservation)
        assert isinstance(await reserve(lim, "0.000001"), Refusal)

    run(body)


def test_the_balance_refusal_wins_over_transient_limits() -> None:
    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal(1), used=Decimal(0))
        assert isinstance(
            await reserve(lim, "1", org=LimitSet(max_concurrent_requests=1)), Reservation
        )
        refused = await reserve(lim, "1", org=LimitSet(max_concurrent_requests=1))
        assert isinstance(refused, Refusal)
        assert refused.limit == "org.prepaid_balance"

    run(body)


def test_a_missing_balance_fails_closed_as_unavailable_not_as_the_tenants_fault() -> None:
    async def body(lim: Limiter, client: aioredis.Redis) -> None:
        refused = await reserve(lim, "0")
        assert isinstance(refused, Refusal)
        assert refused.limit == "org.balance_unavailable"
        assert refused.retry_after is not None
        assert refused.retry_after > 0
        assert await lim.balance("o1") is None
        # Nothing was recorded for the refused request.
        assert await client.hlen(f"{lim.base}org:o1:pending") == 0

        # A settle arriving after Redis lost the hash does not make it present again.
        await lim.set_balance("o1", credited=Decimal(5), used=Decimal(0))
        held = await reserve(lim, "1")
        assert isinstance(held, Reservation)
        await client.delete(f"{lim.base}org:o1:balance")
        await lim.settle(held, prompt_tokens=1, completion_tokens=1, spend=Decimal("0.5"))
        assert await lim.balance("o1") is None
        refused = await reserve(lim, "0.1")
        assert isinstance(refused, Refusal)
        assert refused.limit == "org.balance_unavailable"

    run(body)


def test_postpaid_requests_never_touch_the_balance() -> None:
    async def body(lim: Limiter, client: aioredis.Redis) -> None:
        held = await reserve(lim, "3", prepaid=False)
        assert isinstance(held, Reservation)  # no balance hash, and no need of one
        await lim.settle(held, prompt_tokens=1, completion_tokens=1, spend=Decimal(2))
        assert not await client.exists(f"{lim.base}org:o1:balance")

        # An organisation switched to prepaid while a postpaid request was in flight: that
        # request's settle does not charge the balance it never reserved against.
        in_flight = await reserve(lim, "3", prepaid=False)
        assert isinstance(in_flight, Reservation)
        await lim.set_balance("o1", credited=Decimal(10), used=Decimal(0))
        await lim.settle(in_flight, prompt_tokens=1, completion_tokens=1, spend=Decimal(2))
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros, state.settled_micros) == (0, 0, 0)

    run(body)


def test_a_replayed_reserve_counts_once_in_the_balance() -> None:
    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal(2), used=Decimal(0))
        first = await reserve(lim, "1.5", request_id="r1")
        again = await reserve(lim, "1.5", request_id="r1")
        assert isinstance(first, Reservation)
        assert isinstance(again, Reservation)
        state = await lim.balance("o1")
        assert state is not None
        assert state.reserved_micros == 1_500_000
        assert await lim.settle(first, prompt_tokens=1, completion_tokens=1, spend=Decimal(1))
        assert not await lim.settle(again, prompt_tokens=1, completion_tokens=1, spend=Decimal(1))
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros) == (1_000_000, 0)

    run(body)


def test_200_concurrent_requests_never_overdraw_and_settle_to_the_exact_cost() -> None:
    """Every request reserves its upper estimate and settles a random actual cost up to it; a
    watcher samples the hash throughout. The balance admits exactly what fits: ``used +
    reserved`` never exceeds the credit, and ``used`` ends as the exact sum of what was settled."""
    rng = random.Random(11)
    credited = Decimal("3.000000")
    estimates = [Decimal(rng.randint(1, 100_000)).scaleb(-6) for _ in range(200)]
    actuals = [Decimal(rng.randint(0, int(e.scaleb(6)))).scaleb(-6) for e in estimates]

    async def body(lim: Limiter, client: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=credited, used=Decimal(0))
        key = f"{lim.base}org:o1:balance"
        settled: list[Decimal] = []
        done = asyncio.Event()
        worst = 0

        async def one(i: int) -> bool:
            await asyncio.sleep(rng.random() / 100)
            got = await reserve(lim, estimates[i])
            if isinstance(got, Refusal):
                assert got.limit == "org.prepaid_balance"
                return False
            await asyncio.sleep(rng.random() / 100)
            assert await lim.settle(got, prompt_tokens=1, completion_tokens=1, spend=actuals[i])
            settled.append(actuals[i])
            return True

        async def watch() -> None:
            nonlocal worst
            while not done.is_set():
                used, reserved = await client.hmget(key, "used_micros", "reserved_micros")
                worst = max(worst, int(used or 0) + int(reserved or 0))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        admitted = await asyncio.gather(*(one(i) for i in range(200)))
        done.set()
        await watcher
        state = await lim.balance("o1")
        assert state is not None
        assert worst <= to_micros(credited)
        assert state.reserved_micros == 0
        assert state.used_micros == sum(to_micros(a) for a in settled)
        assert state.used_micros == to_micros(sum(settled, Decimal(0)))  # exact, all 6 places
        assert state.used_micros <= to_micros(credited)
        # The balance really was the limit: some were refused, and most were admitted.
        assert admitted.count(False) > 0
        assert admitted.count(True) > 50
        # After every settle, nothing that still fits was turned away for good: one more
        # request of what is left is admitted, one micro-unit more is refused.
        left = state.available
        if left > 0:
            assert isinstance(await reserve(lim, left), Reservation)
        assert isinstance(await reserve(lim, "0.000001"), Refusal)

    run(body)


def test_reconciliation_keeps_what_is_settled_but_not_ingested() -> None:
    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal(10), used=Decimal(0))
        held = await reserve(lim, "2")
        assert isinstance(held, Reservation)
        await lim.settle(held, prompt_tokens=1, completion_tokens=1, spend=Decimal("1.5"))
        # The beat reconciles before the event is ingested: Postgres knows nothing of it yet.
        await lim.set_balance("o1", credited=Decimal(10), used=Decimal(0))
        state = await lim.balance("o1")
        assert state is not None
        assert state.used_micros == 1_500_000
        # The batch with the event: Postgres now has it, and it is ingested.
        await lim.set_balance(
            "o1", credited=Decimal(10), used=Decimal("1.5"), ingested_micros=1_500_000
        )
        state = await lim.balance("o1")
        assert state is not None
        assert state.used_micros == 1_500_000
        # A top-up: credited changes, used does not.
        await lim.set_balance("o1", credited=Decimal(20), used=Decimal("1.5"))
        state = await lim.balance("o1")
        assert state is not None
        assert (state.credited_micros, state.used_micros) == (20_000_000, 1_500_000)
        # Adjusted below zero: nothing is admitted.
        await lim.set_balance("o1", credited=Decimal(-1), used=Decimal("1.5"))
        assert isinstance(await reserve(lim, "0"), Refusal)

    run(body)


def test_an_expired_lease_is_counted_as_used_in_the_balance() -> None:
    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal(5), used=Decimal(0))
        crashed = await reserve(lim, "2", now=NOW)
        assert isinstance(crashed, Reservation)
        # Past the lease: the next reserve reclaims it into used (the crashed request may have
        # run; reconciliation corrects it) and admits what is left.
        later = NOW + 61
        assert isinstance(await reserve(lim, "3", now=later), Reservation)
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros) == (2_000_000, 3_000_000)
        assert isinstance(await reserve(lim, "0.000001", now=later), Refusal)
        # Its late settle does nothing.
        assert not await lim.settle(crashed, prompt_tokens=1, completion_tokens=1, spend=Decimal(1))

    run(body, lease_seconds=60)


def test_a_postpaid_reserve_reclaims_an_expired_prepaid_lease_into_the_balance() -> None:
    """The organisation went back to postpaid while a prepaid request's gateway died: the next
    reserve (postpaid now) still moves that reservation out of the balance's reserved."""

    async def body(lim: Limiter, _: aioredis.Redis) -> None:
        await lim.set_balance("o1", credited=Decimal(5), used=Decimal(0))
        assert isinstance(await reserve(lim, "2", now=NOW), Reservation)
        assert isinstance(await reserve(lim, "9", prepaid=False, now=NOW + 61), Reservation)
        state = await lim.balance("o1")
        assert state is not None
        assert (state.used_micros, state.reserved_micros) == (2_000_000, 0)

    run(body, lease_seconds=60)
