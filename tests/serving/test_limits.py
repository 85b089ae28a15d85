"""The data plane's limiter (contract 3) against the real Redis: every limit at its boundary for
both scopes, the sliding window, leases, idempotent settle, budgets under concurrency, month
rollover, reconciliation, money rounding, and an unreachable Redis."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from inference.serving.limits import (
    DuplicateReservation,
    Limiter,
    LimiterUnavailable,
    LimitSet,
    RateLimitStatus,
    Refusal,
    Reservation,
)
from inference.serving.money import from_micros, to_micros

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T = TypeVar("T")
UNLIMITED = LimitSet()


def ts(iso: str) -> float:
    """A UTC ISO time as a unix timestamp."""
    return datetime.fromisoformat(iso + "+00:00").timestamp()


MID_MONTH = ts("2026-03-15T12:00:30")


def run(
    body: Callable[[Limiter], Awaitable[T]],
    *,
    lease_seconds: float = 600.0,
    max_connections: int | None = None,
) -> T:
    """Run ``body`` with a limiter on the real Redis under a prefix of its own; delete the
    prefix's keys afterwards."""

    async def main() -> T:
        if max_connections:
            pool = aioredis.BlockingConnectionPool.from_url(
                REDIS_URL, max_connections=max_connections
            )
            client = aioredis.Redis.from_pool(pool)
        else:
            client = aioredis.Redis.from_url(REDIS_URL)
        prefix = f"vltest:limits:{uuid4().hex}:"
        try:
            return await body(Limiter(client, prefix, lease_seconds=lease_seconds))
        finally:
            keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return asyncio.run(main())


async def reserve(
    lim: Limiter,
    *,
    key: LimitSet = UNLIMITED,
    org: LimitSet = UNLIMITED,
    tokens: int = 1,
    spend: Decimal | str = "0",
    now: float = MID_MONTH,
    request_id: str | None = None,
    key_id: str = "k1",
    org_id: str = "o1",
) -> Reservation | Refusal:
    return await lim.reserve(
        key_id=key_id,
        org_id=org_id,
        key_limits=key,
        org_limits=org,
        tokens=tokens,
        spend=Decimal(spend),
        request_id=request_id or uuid4().hex,
        now=now,
    )


async def settle(lim: Limiter, res: Reservation | Refusal, tokens: int, spend: str = "0") -> bool:
    assert isinstance(res, Reservation), res
    return await lim.settle(res, prompt_tokens=0, completion_tokens=tokens, spend=Decimal(spend))


# --- each limit at its boundary, for each scope -------------------------------------------------

# field, limit, the admitted costs (tokens, spend) in order, settle each, the refused cost
BOUNDARIES: list[tuple[str, Any, list[tuple[int, str]], bool, tuple[int, str]]] = [
    ("requests_per_minute", 3, [(1, "0")] * 3, False, (1, "0")),
    ("tokens_per_minute", 100, [(60, "0"), (40, "0")], False, (1, "0")),
    ("max_concurrent_requests", 2, [(1, "0")] * 2, False, (1, "0")),
    ("monthly_token_budget", 100, [(60, "0"), (40, "0")], True, (1, "0")),
    ("monthly_spend_budget", Decimal("1.00"), [(1, "0.6"), (1, "0.4")], True, (1, "0.000001")),
]


@pytest.mark.parametrize("scope", ["key", "org"])
@pytest.mark.parametrize(
    ("field", "limit", "admitted", "settle_each", "refused"),
    BOUNDARIES,
    ids=[b[0] for b in BOUNDARIES],
)
def test_each_limit_refuses_at_its_boundary_and_says_which(
    scope: str,
    field: str,
    limit: Any,
    admitted: list[tuple[int, str]],
    settle_each: bool,
    refused: tuple[int, str],
) -> None:
    limits = LimitSet(**{field: limit})
    key, org = (limits, UNLIMITED) if scope == "key" else (UNLIMITED, limits)

    async def body(lim: Limiter) -> None:
        for tokens, spend in admitted:
            res = await reserve(lim, key=key, org=org, tokens=tokens, spend=spend)
            assert isinstance(res, Reservation), res
            if settle_each:  # budgets count what was used: settle at the reserved amount
                await settle(lim, res, tokens, spend)
        out = await reserve(lim, key=key, org=org, tokens=refused[0], spend=refused[1])
        assert isinstance(out, Refusal)
        assert out.limit == f"{scope}.{field}"
        assert out.scope == scope
        assert out.retry_after is not None
        assert out.retry_after > 0
        if field == "max_concurrent_requests":
            assert out.retry_after == 1.0
        if field.startswith("monthly_"):  # used up: wait for April, UTC
            assert out.retry_after == pytest.approx(ts("2026-04-01T00:00:00") - MID_MONTH)

    run(body)


def test_budget_blocked_only_by_in_flight_reservations_asks_for_a_short_wait() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(monthly_token_budget=100)
        assert isinstance(await reserve(lim, key=key, tokens=100), Reservation)
        out = await reserve(lim, key=key, tokens=1)
        assert isinstance(out, Refusal)
        assert out.limit == "key.monthly_token_budget"
        assert out.retry_after == 1.0

    run(body)


def test_a_cost_above_the_limit_itself_can_never_fit() -> None:
    async def body(lim: Limiter) -> None:
        out = await reserve(lim, org=LimitSet(tokens_per_minute=100), tokens=101)
        assert isinstance(out, Refusal)
        assert out.limit == "org.tokens_per_minute"
        assert out.retry_after is None
        out = await reserve(lim, key=LimitSet(max_concurrent_requests=0))
        assert isinstance(out, Refusal)
        assert out.retry_after is None

    run(body)


def test_when_several_limits_refuse_the_longest_wait_is_reported() -> None:
    async def body(lim: Limiter) -> None:
        key, org = LimitSet(requests_per_minute=1), LimitSet(monthly_spend_budget=Decimal("1"))
        res = await reserve(lim, key=key, org=org, spend="1")
        await settle(lim, res, 1, "1")
        out = await reserve(lim, key=key, org=org, spend="0.5")
        assert isinstance(out, Refusal)
        assert out.limit == "org.monthly_spend_budget"

    run(body)


# --- key and organisation together --------------------------------------------------------------


@pytest.mark.parametrize(("key_rpm", "org_rpm", "expected"), [(5, 2, "org"), (2, 5, "key")])
def test_the_tighter_of_key_and_org_wins(key_rpm: int, org_rpm: int, expected: str) -> None:
    async def body(lim: Limiter) -> None:
        key, org = LimitSet(requests_per_minute=key_rpm), LimitSet(requests_per_minute=org_rpm)
        first = await reserve(lim, key=key, org=org)
        assert isinstance(first, Reservation)
        assert first.headers()["x-ratelimit-limit-requests"] == "2"
        assert first.headers()["x-ratelimit-remaining-requests"] == "1"
        assert isinstance(await reserve(lim, key=key, org=org), Reservation)
        out = await reserve(lim, key=key, org=org)
        assert isinstance(out, Refusal)
        assert out.limit == f"{expected}.requests_per_minute"

    run(body)


def test_organisation_limits_count_every_key_of_the_organisation() -> None:
    async def body(lim: Limiter) -> None:
        org = LimitSet(max_concurrent_requests=2)
        assert isinstance(await reserve(lim, org=org, key_id="a"), Reservation)
        assert isinstance(await reserve(lim, org=org, key_id="b"), Reservation)
        out = await reserve(lim, org=org, key_id="c")
        assert isinstance(out, Refusal)
        assert out.limit == "org.max_concurrent_requests"
        # Another organisation is not affected.
        assert isinstance(await reserve(lim, org=org, key_id="c", org_id="o2"), Reservation)

    run(body)


def test_unlimited_never_refuses_and_sends_no_headers() -> None:
    async def body(lim: Limiter) -> None:
        for _ in range(300):
            res = await reserve(lim, tokens=1_000_000, spend="1000000")
            assert isinstance(res, Reservation)
            assert res.headers() == {}

    run(body)


def test_headers_report_limit_remaining_and_reset() -> None:
    async def body(lim: Limiter) -> None:
        now = ts("2026-03-15T12:00:45")  # 45 s into the minute
        key = LimitSet(requests_per_minute=10, tokens_per_minute=1000)
        org = LimitSet(tokens_per_minute=500)
        res = await reserve(lim, key=key, org=org, tokens=100, now=now)
        assert isinstance(res, Reservation)
        assert res.headers() == {
            "x-ratelimit-limit-requests": "10",
            "x-ratelimit-remaining-requests": "9",
            "x-ratelimit-reset-requests": "1m15s",  # this minute's rest, then the next one
            "x-ratelimit-limit-tokens": "500",  # the organisation's is tighter
            "x-ratelimit-remaining-tokens": "400",
            "x-ratelimit-reset-tokens": "1m15s",
        }

    run(body)


# --- the sliding window -------------------------------------------------------------------------


def test_sliding_window_weights_the_previous_minute_and_forgets_after_one() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(requests_per_minute=2)
        t0 = ts("2026-03-15T12:00:59")  # the last second of a minute
        for _ in range(2):
            assert isinstance(await reserve(lim, key=key, now=t0), Reservation)
        out = await reserve(lim, key=key, now=t0)
        assert isinstance(out, Refusal)
        # Next minute at 30 s: 2 * (1 - 30/60) + 0 + 1 = 2 fits. One second earlier it does not.
        assert out.retry_after == pytest.approx(31.0)
        assert isinstance(await reserve(lim, key=key, now=t0 + 30), Refusal)
        assert isinstance(await reserve(lim, key=key, now=t0 + 31), Reservation)
        # Once the minute of the last one has faded, the full limit again.
        t2 = ts("2026-03-15T12:03:00")
        for _ in range(2):
            assert isinstance(await reserve(lim, key=key, now=t2), Reservation)
        assert isinstance(await reserve(lim, key=key, now=t2), Refusal)

    run(body)


def test_tokens_per_minute_are_corrected_by_settle() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(tokens_per_minute=100)
        res = await reserve(lim, key=key, tokens=80)
        assert isinstance(await reserve(lim, key=key, tokens=30), Refusal)
        assert await settle(lim, res, 20)  # the window now holds 20
        big = await reserve(lim, key=key, tokens=80)
        assert isinstance(big, Reservation)
        assert big.headers()["x-ratelimit-remaining-tokens"] == "0"
        await settle(lim, big, 70)  # 20 + 70
        small = await reserve(lim, key=key, tokens=10)
        assert isinstance(small, Reservation)
        assert isinstance(await reserve(lim, key=key, tokens=1), Refusal)
        # More than reserved is counted too: 90 + (60 - 10) = 140, over the limit.
        await settle(lim, small, 60)
        out = await reserve(lim, key=key, tokens=1)
        assert isinstance(out, Refusal)
        assert out.headers()["x-ratelimit-remaining-tokens"] == "0"

    run(body)


def test_the_tokens_per_minute_correction_never_goes_below_zero() -> None:
    async def body(lim: Limiter) -> None:
        res = await reserve(lim, key=LimitSet(tokens_per_minute=100), tokens=50)
        assert isinstance(res, Reservation)
        bucket = f"{lim.base}key:k1:tpm:{res.minute}"
        await lim.redis.set(bucket, 5, keepttl=True)  # as if the bucket had been rewritten
        await settle(lim, res, 0)
        assert await lim.redis.get(bucket) == b"0"
        assert await lim.redis.ttl(bucket) > 0

    run(body)


# --- concurrency leases -------------------------------------------------------------------------


def test_concurrency_lease_is_released_by_settle_and_release() -> None:
    async def body(lim: Limiter) -> None:
        org = LimitSet(max_concurrent_requests=1)
        first = await reserve(lim, org=org)
        assert isinstance(await reserve(lim, org=org), Refusal)
        await settle(lim, first, 1)
        second = await reserve(lim, org=org)
        assert isinstance(second, Reservation)
        assert await lim.release(second)
        assert isinstance(await reserve(lim, org=org), Reservation)

    run(body)


def test_an_expired_lease_is_reclaimed_and_counted_as_used() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(max_concurrent_requests=1)
        crashed = await reserve(lim, key=key, tokens=40, spend="0.4", now=MID_MONTH)
        assert isinstance(crashed, Reservation)
        assert isinstance(await reserve(lim, key=key, now=MID_MONTH + 29), Refusal)
        later = await reserve(lim, key=key, tokens=5, spend="0.05", now=MID_MONTH + 31)
        assert isinstance(later, Reservation)
        usage = await lim.month_usage("key", "k1", now=MID_MONTH)
        # The crashed request may have run: its reservation became used, never lost.
        assert usage == (40, Decimal("0.4"), 5, Decimal("0.05"))
        # Its gateway coming back late to settle changes nothing more.
        assert not await settle(lim, crashed, 1, "0.01")
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == usage

    run(body, lease_seconds=30)


# --- settle -------------------------------------------------------------------------------------


def test_settle_is_idempotent() -> None:
    async def body(lim: Limiter) -> None:
        res = await reserve(lim, tokens=100, spend="1")
        assert isinstance(res, Reservation)
        assert await lim.settle(res, prompt_tokens=10, completion_tokens=20, spend=Decimal("0.25"))
        assert not await lim.settle(
            res, prompt_tokens=10, completion_tokens=20, spend=Decimal("0.25")
        )
        assert not await lim.release(res)
        for scope, ident in (("key", "k1"), ("org", "o1")):
            assert await lim.month_usage(scope, ident, now=MID_MONTH) == (  # type: ignore[arg-type]
                30,
                Decimal("0.25"),
                0,
                Decimal(0),
            )
        # Concurrent retries of one settle: exactly one counts.
        again = await reserve(lim, tokens=10, spend="0.1")
        assert isinstance(again, Reservation)
        done = await asyncio.gather(*(settle(lim, again, 10, "0.1") for _ in range(20)))
        assert sum(done) == 1
        usage = await lim.month_usage("org", "o1", now=MID_MONTH)
        assert usage == (40, Decimal("0.35"), 0, Decimal(0))

    run(body)


def test_a_request_id_cannot_hold_two_reservations() -> None:
    async def body(lim: Limiter) -> None:
        one_slot = LimitSet(max_concurrent_requests=1)
        res = await reserve(lim, key=one_slot, tokens=5, request_id="req-1")
        assert isinstance(res, Reservation)
        # The very same call again, as the Redis client repeats one whose reply it read too late:
        # the same reservation, counted once (not refused for the slot it holds itself).
        again = await reserve(lim, key=one_slot, tokens=5, request_id="req-1")
        assert again == res
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (0, Decimal(0), 5, Decimal(0))
        # A different reservation under a pending request id is a caller's bug.
        with pytest.raises(DuplicateReservation):
            await reserve(lim, key=one_slot, tokens=6, request_id="req-1")
        assert await settle(lim, res, 1)
        assert not await settle(lim, again, 1)
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (1, Decimal(0), 0, Decimal(0))
        assert isinstance(await reserve(lim, request_id="req-1"), Reservation)

    run(body)


# --- budgets under concurrency ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["org_spend", "key_tokens"])
def test_budget_holds_under_200_concurrent_reservations(scenario: str) -> None:
    rng = random.Random(42)
    if scenario == "org_spend":
        key, org = UNLIMITED, LimitSet(monthly_spend_budget=Decimal("1.00"))
        tokens, spend, fits, limit = 10, Decimal("0.03"), 33, "org.monthly_spend_budget"
    else:
        key, org = LimitSet(monthly_token_budget=1000), UNLIMITED
        tokens, spend, fits, limit = 70, Decimal("0.001"), 14, "key.monthly_token_budget"

    async def body(lim: Limiter) -> None:
        outs = await asyncio.gather(
            *(reserve(lim, key=key, org=org, tokens=tokens, spend=spend) for _ in range(200))
        )
        admitted = [o for o in outs if isinstance(o, Reservation)]
        assert len(admitted) == fits
        assert {o.limit for o in outs if isinstance(o, Refusal)} == {limit}
        actual = [(rng.randint(0, tokens), spend * rng.randint(0, 100) / 100) for _ in admitted]
        await asyncio.gather(
            *(
                lim.settle(r, prompt_tokens=0, completion_tokens=t, spend=s)
                for r, (t, s) in zip(admitted, actual, strict=True)
            )
        )
        for scope, ident in (("key", "k1"), ("org", "o1")):
            usage = await lim.month_usage(scope, ident, now=MID_MONTH)  # type: ignore[arg-type]
            assert usage.used_tokens == sum(t for t, _ in actual)
            assert usage.used_spend == sum(
                (from_micros(to_micros(s)) for _, s in actual), Decimal(0)
            )
            assert usage.reserved_tokens == 0
            assert usage.reserved_spend == 0
            if key.monthly_token_budget is not None:
                assert usage.used_tokens <= key.monthly_token_budget
            if org.monthly_spend_budget is not None:
                assert usage.used_spend <= org.monthly_spend_budget

    run(body, max_connections=32)


def test_budget_holds_when_reservations_and_settles_interleave() -> None:
    rng = random.Random(7)
    budget, cost = Decimal("2.00"), Decimal("0.07")
    org = LimitSet(monthly_spend_budget=budget, monthly_token_budget=5000)

    async def one(lim: Limiter) -> tuple[bool, Decimal, int]:
        res = await reserve(lim, org=org, tokens=100, spend=cost)
        if isinstance(res, Refusal):
            return False, Decimal(0), 0
        await asyncio.sleep(rng.random() / 100)
        spent, used = cost * rng.randint(0, 100) / 100, rng.randint(0, 100)
        await lim.settle(res, prompt_tokens=used, completion_tokens=0, spend=spent)
        return True, from_micros(to_micros(spent)), used

    async def body(lim: Limiter) -> None:
        outs = await asyncio.gather(*(one(lim) for _ in range(200)))
        usage = await lim.month_usage("org", "o1", now=MID_MONTH)
        assert usage.used_spend == sum((s for _, s, _ in outs), Decimal(0)) <= budget
        assert usage.used_tokens == sum(t for _, _, t in outs) <= 5000
        assert usage.reserved_spend == 0
        assert usage.reserved_tokens == 0
        # Settles free budget, so at least what fits at full price got in.
        assert sum(ok for ok, _, _ in outs) >= int(budget / cost)

    run(body, max_connections=32)


# --- months -------------------------------------------------------------------------------------


def test_budgets_roll_over_with_the_utc_month() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(monthly_token_budget=100, monthly_spend_budget=Decimal("1"))
        last = ts("2026-01-31T23:59:59.5")
        first = ts("2026-02-01T00:00:00")
        res = await reserve(lim, key=key, tokens=100, spend="0.5", now=last)
        assert isinstance(res, Reservation)
        assert res.month == "2026-01"
        out = await reserve(lim, key=key, tokens=1, now=last)
        assert isinstance(out, Refusal)
        await lim.settle(res, prompt_tokens=100, completion_tokens=0, spend=Decimal("0.5"))
        out = await reserve(lim, key=key, tokens=1, now=last)
        assert isinstance(out, Refusal)
        assert out.retry_after == pytest.approx(0.5)  # until February starts
        feb = await reserve(lim, key=key, tokens=100, spend="1", now=first)
        assert isinstance(feb, Reservation)
        assert feb.month == "2026-02"
        jan_usage = await lim.month_usage("key", "k1", month="2026-01")
        assert jan_usage == (100, Decimal("0.5"), 0, Decimal(0))
        assert await lim.month_usage("key", "k1", now=first) == (0, Decimal(0), 100, Decimal(1))
        # A January reservation settled in February is charged to January.
        await lim.settle(feb, prompt_tokens=1, completion_tokens=0, spend=Decimal(0), now=first)
        assert await lim.month_usage("key", "k1", month="2026-01") == jan_usage

    run(body)


def test_every_key_is_under_the_prefix_and_budget_keys_expire_after_their_month() -> None:
    async def body(lim: Limiter) -> None:
        now = ts("2026-03-15T12:00:30")
        await reserve(lim, key=LimitSet(requests_per_minute=5), now=now)
        prefix = lim.base.removesuffix("limits:v1:")
        keys = [k.decode() async for k in lim.redis.scan_iter(match=prefix + "*")]
        assert keys
        assert all(k.startswith(prefix + "limits:v1:") for k in keys)
        month_key = f"{lim.base}org:o1:month:2026-03"
        assert month_key in keys
        expected = ts("2026-04-01T00:00:00") + 40 * 86400 - now
        assert abs(await lim.redis.ttl(month_key) - expected) <= 2
        minute = int(now // 60)
        assert 0 < await lim.redis.ttl(f"{lim.base}key:k1:rpm:{minute}") <= 180

    run(body)


# --- reconciliation -----------------------------------------------------------------------------


def test_set_month_used_overwrites_used_and_never_reserved() -> None:
    async def body(lim: Limiter) -> None:
        key = LimitSet(monthly_token_budget=100)
        res = await reserve(lim, key=key, tokens=50, spend="0.5")
        assert isinstance(res, Reservation)
        await lim.set_month_used("key", "k1", "2026-03", 10, Decimal("0.1"))
        usage = await lim.month_usage("key", "k1", now=MID_MONTH)
        assert usage == (10, Decimal("0.1"), 50, Decimal("0.5"))
        await settle(lim, res, 20, "0.2")
        usage = await lim.month_usage("key", "k1", now=MID_MONTH)
        assert usage == (30, Decimal("0.3"), 0, Decimal(0))
        # The reconciled number is what the next reservation is checked against (the authority
        # has ingested the settled request: nothing is pending).
        await lim.set_month_used(
            "key", "k1", "2026-03", 95, Decimal(0), ingested_tokens=20, ingested_micros=200_000
        )
        assert isinstance(await reserve(lim, key=key, tokens=6), Refusal)
        assert isinstance(await reserve(lim, key=key, tokens=5), Reservation)
        with pytest.raises(ValueError, match="YYYY-MM"):
            await lim.set_month_used("key", "k1", "2026-13", 0, Decimal(0))

    run(body)


def test_reconciling_keeps_what_was_settled_but_not_ingested_yet() -> None:
    """The ingest lag must never free budget: a request settled here whose usage event Postgres
    has not ingested yet stays counted through a reconciliation, and is counted once after."""

    async def body(lim: Limiter) -> None:
        key = LimitSet(monthly_spend_budget=Decimal(1))
        res = await reserve(lim, key=key, tokens=30, spend="0.6")
        await settle(lim, res, 30, "0.6")
        # Postgres has nothing of it yet (the event is in the emitter or the queue).
        await lim.set_month_used("key", "k1", "2026-03", 0, Decimal(0))
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (30, Decimal("0.6"), 0, 0)
        assert isinstance(await reserve(lim, key=key, tokens=1, spend="0.5"), Refusal)
        # The batch holding it is ingested: Postgres has it, and the ingest says so once.
        await lim.set_month_used(
            "key", "k1", "2026-03", 30, Decimal("0.6"), ingested_tokens=30, ingested_micros=600_000
        )
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (30, Decimal("0.6"), 0, 0)
        # A later reconciliation (the beat) with the same authority changes nothing.
        await lim.set_month_used("key", "k1", "2026-03", 30, Decimal("0.6"))
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (30, Decimal("0.6"), 0, 0)
        # Redis forgot everything (a restart without persistence): the authority restores it.
        await lim.redis.delete(f"{lim.base}key:k1:month:2026-03")
        await lim.set_month_used("key", "k1", "2026-03", 30, Decimal("0.6"))
        assert await lim.month_usage("key", "k1", now=MID_MONTH) == (30, Decimal("0.6"), 0, 0)

    run(body)


def test_reconciling_corrects_a_reclaimed_lease_that_never_ran() -> None:
    """A lease reclaimed from a dead gateway is counted as used in full; it was never settled,
    so the authority (which never saw a usage event for it) takes it back out."""

    async def body(lim: Limiter) -> None:
        res = await reserve(lim, tokens=40, spend="0.4", now=MID_MONTH)
        assert isinstance(res, Reservation)
        later = MID_MONTH + 31
        await reserve(lim, tokens=1, now=later)  # reclaims the expired lease
        used = await lim.month_usage("key", "k1", now=later)
        assert used.used_tokens == 40
        await lim.set_month_used("key", "k1", "2026-03", 0, Decimal(0), now=later)
        assert (await lim.month_usage("key", "k1", now=later)).used_tokens == 0

    run(body, lease_seconds=30)


# --- money --------------------------------------------------------------------------------------


def test_to_micros_rounds_up_exactly_and_refuses_floats() -> None:
    assert to_micros(Decimal("0.1")) == 100_000
    assert to_micros(Decimal("0.0000001")) == 1
    assert to_micros(Decimal("1.0000001")) == 1_000_001
    assert to_micros(Decimal("1.000001")) == 1_000_001
    assert to_micros("20.0000") == 20_000_000
    assert to_micros(Decimal("9000000000.1234561")) == 9_000_000_000_123_457
    assert to_micros(Decimal("1e-30")) == 1
    assert to_micros(Decimal("0.0000019"), rounding=ROUND_FLOOR) == 1
    assert from_micros(1_000_001) == Decimal("1.000001")
    with pytest.raises(TypeError):
        to_micros(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        to_micros(Decimal("-0.01"))
    with pytest.raises(ValueError, match="finite"):
        to_micros(Decimal("NaN"))


def test_spend_is_counted_in_micro_units_rounded_up_and_decimal_exact() -> None:
    async def body(lim: Limiter) -> None:
        # 0.1 + 0.1 + 0.1 is exactly 0.3 here (with floats it is not, and the third is refused).
        org = LimitSet(monthly_spend_budget=Decimal("0.3"))
        held = [await reserve(lim, org=org, spend="0.1") for _ in range(3)]
        assert all(isinstance(r, Reservation) for r in held)
        assert isinstance(await reserve(lim, org=org, spend="0.0000001"), Refusal)
        usage = await lim.month_usage("org", "o1", now=MID_MONTH)
        assert usage.reserved_spend == Decimal("0.3")
        await settle(lim, held[0], 1, "0.0000001")  # rounds up to one micro-unit
        await settle(lim, held[1], 1, "0.1234561")
        await settle(lim, held[2], 1, "0.1")
        usage = await lim.month_usage("org", "o1", now=MID_MONTH)
        assert usage.used_spend == Decimal("0.223458")
        assert usage.reserved_spend == 0

    run(body)


def test_limit_set_from_a_snapshot_record() -> None:
    limits = LimitSet.from_record(
        {
            "requests_per_minute": 60,
            "tokens_per_minute": None,
            "max_concurrent_requests": 4,
            "monthly_token_budget": None,
            "monthly_spend_budget": "20.0000",
        }
    )
    assert limits == LimitSet(
        requests_per_minute=60, max_concurrent_requests=4, monthly_spend_budget=Decimal("20")
    )
    assert isinstance(limits.monthly_spend_budget, Decimal)
    assert LimitSet.from_record(None) == LimitSet.from_record({}) == UNLIMITED
    with pytest.raises(ValueError, match="float"):
        LimitSet.from_record({"monthly_spend_budget": 20.0})
    with pytest.raises(ValueError, match="integer"):
        LimitSet.from_record({"requests_per_minute": "60"})
    with pytest.raises(ValueError, match="negative"):
        LimitSet.from_record({"max_concurrent_requests": -1})


# --- Redis down ---------------------------------------------------------------------------------


def test_unreachable_redis_raises_limiter_unavailable() -> None:
    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        lim = Limiter(client, "vltest:limits:down:")
        try:
            with pytest.raises(LimiterUnavailable):
                await reserve(lim)
            with pytest.raises(LimiterUnavailable):
                await lim.month_usage("key", "k1")
            with pytest.raises(LimiterUnavailable):
                await lim.set_month_used("org", "o1", "2026-03", 0, Decimal(0))
            res = Reservation("r", "k1", "o1", "2026-03", 0, 1, 0, 0.0, RateLimitStatus())
            with pytest.raises(LimiterUnavailable):
                await lim.release(res)
        finally:
            await client.aclose()

    asyncio.run(main())


# --- scripts of one event-loop turn share one pipeline ------------------------------------------


class CountingPipelines:
    """Counts the pipelines the limiter's batcher sends and the calls they carry (a spy on the
    real client: every call still reaches the real Redis)."""

    def __init__(self, lim: Limiter) -> None:
        self.sizes: list[int] = []
        self.singles = 0
        real_pipeline = lim.redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            async def execute(*a: Any, **k: Any) -> Any:
                self.sizes.append(len(pipe.command_stack))
                return await real_execute(*a, **k)

            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        lim.redis.pipeline = pipeline  # type: ignore[method-assign]


def test_concurrent_reserves_and_settles_share_pipelines_and_keep_the_budget() -> None:
    """200 concurrent reserves against a budget of 50 requests' tokens: the calls travel in a
    few pipelines, each script still atomic, so exactly 50 are admitted; their settles (also
    pipelined) release everything."""

    async def body(lim: Limiter) -> tuple[list[Reservation | Refusal], list[int], Any]:
        spy = CountingPipelines(lim)
        budget = LimitSet(monthly_token_budget=500)
        held = await asyncio.gather(*(reserve(lim, key=budget, tokens=10) for _ in range(200)))
        admitted = [r for r in held if isinstance(r, Reservation)]
        settled = await asyncio.gather(*(settle(lim, r, 10) for r in admitted))
        assert all(settled)
        again = await asyncio.gather(*(settle(lim, r, 10) for r in admitted))
        assert not any(again)  # idempotent, pipelined or not
        return held, spy.sizes, await lim.month_usage("key", "k1", month="2026-03")

    held, sizes, usage = run(body)
    assert sum(isinstance(r, Reservation) for r in held) == 50
    assert max(sizes) > 1  # pipelined
    assert sum(sizes) <= 200 + 50 + 50  # nothing sent twice
    assert (usage.used_tokens, usage.reserved_tokens) == (500, 0)


def test_a_pipeline_answers_each_call_as_its_own_script_would() -> None:
    """Admissions, refusals, a replayed and a duplicate request id, a settle: a mixed pipeline
    of one turn gives every caller the answer a call of its own gives, in order."""

    async def body(lim: Limiter) -> tuple[list[Any], Any]:
        two = LimitSet(max_concurrent_requests=2)
        held = await reserve(lim, key=two, tokens=4, request_id="held")
        outs = await asyncio.gather(
            settle(lim, held, 2),
            reserve(lim, key=two, tokens=4, request_id="a"),
            reserve(lim, key=two, tokens=4, request_id="b"),
            reserve(lim, key=two, tokens=4, request_id="c"),  # refused: two slots
            reserve(lim, key=two, tokens=4, request_id="a"),  # a replay of "a"
            reserve(lim, key=two, tokens=5, request_id="b"),  # a different one under "b"
            return_exceptions=True,
        )
        return outs, await lim.month_usage("key", "k1", month="2026-03")

    outs, usage = run(body)
    settled, a, b, c, replay, duplicate = outs
    assert settled is True
    assert isinstance(a, Reservation)
    assert isinstance(b, Reservation)
    assert isinstance(c, Refusal)
    assert c.limit == "key.max_concurrent_requests"
    assert isinstance(replay, Reservation)
    assert replay.request_id == "a"
    assert isinstance(duplicate, DuplicateReservation)
    assert (usage.used_tokens, usage.reserved_tokens) == (2, 8)


def test_a_pipeline_after_redis_lost_its_scripts_loads_them_again() -> None:
    async def body(lim: Limiter) -> list[Reservation | Refusal]:
        await reserve(lim)  # the scripts are loaded
        await lim.redis.script_flush()
        return await asyncio.gather(*(reserve(lim) for _ in range(20)))

    assert all(isinstance(r, Reservation) for r in run(body))


def test_a_call_cancelled_before_its_pipeline_left_is_not_sent() -> None:
    async def body(lim: Limiter) -> tuple[int, Any]:
        calls = [asyncio.ensure_future(reserve(lim, tokens=7)) for _ in range(5)]
        await asyncio.sleep(0)  # each call is queued for the loop's next turn
        calls[0].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        admitted = sum(isinstance(r, Reservation) for r in results)
        return admitted, await lim.month_usage("key", "k1", month="2026-03")

    admitted, usage = run(body)
    assert admitted == 4
    assert usage.reserved_tokens == 4 * 7  # the cancelled one reserved nothing
