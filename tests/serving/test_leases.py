"""Lease renewal (contract 3, ``docs/limits.md``) against the real Redis: ``Limiter.renew`` keeps
a lease past its first expiry and never brings back a settled or reclaimed one; the
``LeaseKeeper`` keeps a request that runs three times the lease in its concurrency slot and
settles it with its real usage, renews everything in one call per round, and survives a Redis
outage (a real redis-server of the test's own, killed and restarted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from inference.serving.leases import LeaseKeeper
from inference.serving.limits import Limiter, LimitSet, Refusal, Reservation
from tests.billing.processes import RedisServer
from tests.serving.limiter_support import admitted, limiter, metric, reserve

pytestmark = pytest.mark.redis


# --- Limiter.renew --------------------------------------------------------------------------


def test_a_renewed_lease_outlives_its_first_expiry_and_an_unrenewed_one_is_reclaimed() -> None:
    async def main() -> None:
        async with limiter(lease_seconds=30) as lim:
            t = time.time()
            kept = await admitted(lim, key_id="kept", now=t)
            left = await admitted(lim, key_id="left", now=t)
            assert await lim.renew([kept], now=t + 20) == 1  # now expires at t + 50
            reclaimed_before = metric("vlinders_gateway_leases_reclaimed_total")

            # Past the first expiry: the renewed lease still holds its slot ...
            refusal = await reserve(lim, key_id="kept", now=t + 31)
            assert isinstance(refusal, Refusal)
            assert refusal.limit == "key.max_concurrent_requests"
            # ... the other one is reclaimed by the next reserve, counted as used.
            await admitted(lim, key_id="left", tokens=5, spend="0.05", now=t + 31)
            assert metric("vlinders_gateway_leases_reclaimed_total") == reclaimed_before + 1
            left_usage = await lim.month_usage("key", "left", now=t)
            assert left_usage == (100, Decimal(1), 5, Decimal("0.05"))
            assert not await lim.settle(
                left, prompt_tokens=1, completion_tokens=1, spend=Decimal("0.01")
            )
            assert await lim.month_usage("key", "left", now=t) == left_usage

            # The renewed request settles with its real usage, in both scopes.
            assert await lim.settle(
                kept, prompt_tokens=10, completion_tokens=30, spend=Decimal("0.4")
            )
            assert await lim.month_usage("key", "kept", now=t) == (40, Decimal("0.4"), 0, 0)
            # Renewing after a settle brings nothing back.
            assert await lim.renew([kept], now=t + 32) == 0
            await admitted(lim, key_id="kept", now=t + 32)

    asyncio.run(main())


def test_renew_never_brings_back_a_reclaimed_lease_nor_shortens_one() -> None:
    async def main() -> None:
        async with limiter(lease_seconds=30) as lim:
            t = time.time()
            gone = await admitted(lim, key_id="a", now=t)
            await admitted(lim, key_id="a", now=t + 31)  # reclaims ``gone``
            assert await lim.renew_each([gone], now=t + 32) == [False]
            refusal = await reserve(lim, key_id="a", now=t + 33)
            assert isinstance(refusal, Refusal)  # still one slot, held by the newer request

            held = await admitted(lim, key_id="b", now=t)
            assert await lim.renew([held], now=t + 20) == 1  # expires at t + 50
            assert await lim.renew([held], now=t + 5) == 1  # a lagging clock: still t + 50
            refusal = await reserve(lim, key_id="b", now=t + 49)
            assert isinstance(refusal, Refusal)
            await admitted(lim, key_id="b", now=t + 51)

    asyncio.run(main())


def test_renew_takes_one_script_call_per_chunk_for_many_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with limiter(lease_seconds=30) as lim:
            t = time.time()
            many = [
                await admitted(lim, key_id=f"k{i % 7}", key=LimitSet(), now=t) for i in range(1500)
            ]
            settled = many[::10]
            for res in settled:
                await lim.release(res)
            calls: list[str] = []
            real_call = lim._call

            async def counting(operation: str, *args: Any) -> Any:
                calls.append(operation)
                return await real_call(operation, *args)

            monkeypatch.setattr(lim, "_call", counting)
            flags = await lim.renew_each(many, now=t + 20)
            assert calls == ["renew", "renew"]  # 1,500 reservations: two chunks of 1,000
            assert flags == [i % 10 != 0 for i in range(1500)]
            assert await lim.renew(many[1:10], now=t + 21) == 9
            assert calls == ["renew"] * 3

    asyncio.run(main())


# --- LeaseKeeper ----------------------------------------------------------------------------


async def hold_for(
    lim: Limiter, seconds: float, every: float, check: Callable[[Reservation | Refusal], None]
) -> int:
    """Try a competing reserve of key ``k1`` every ``every`` seconds for ``seconds``; each
    answer goes to ``check``. Returns how many were tried."""
    deadline = time.monotonic() + seconds
    tried = 0
    while time.monotonic() < deadline:
        answer = await reserve(lim, tokens=0, spend="0")
        check(answer)
        tried += 1
        await asyncio.sleep(every)
    return tried


LEASE = 0.8  # a shortened lease; renewed every third of it, so a stall of 0.5 s is survived


def test_a_request_running_three_leases_keeps_its_slot_and_settles_its_real_usage() -> None:
    async def main() -> None:
        async with limiter(lease_seconds=LEASE) as lim:
            keeper = LeaseKeeper(lim)
            assert keeper.interval == pytest.approx(LEASE / 3)
            keeper.start()
            try:
                long = await admitted(lim, tokens=600, spend="6")
                keeper.add(long)

                def refused(answer: Reservation | Refusal) -> None:
                    assert isinstance(answer, Refusal), "the running request lost its slot"
                    assert answer.limit == "key.max_concurrent_requests"

                assert await hold_for(lim, 3 * LEASE, 0.05, refused) > 10
                assert keeper.renewals >= 3
                assert await lim.settle(
                    long, prompt_tokens=100, completion_tokens=400, spend=Decimal("5")
                )
                keeper.discard(long)
                assert len(keeper) == 0
                for scope, ident in (("key", "k1"), ("org", "o1")):
                    usage = await lim.month_usage(scope, ident)  # type: ignore[arg-type]
                    assert usage == (500, Decimal(5), 0, Decimal(0))
                await admitted(lim, tokens=1, spend="0")  # the slot is free again
            finally:
                await keeper.aclose()

    asyncio.run(main())


def test_without_renewal_the_same_request_loses_its_slot() -> None:
    """The control for the test above: the scenario does fail when nothing renews."""

    async def main() -> None:
        async with limiter(lease_seconds=LEASE) as lim:
            long = await admitted(lim, tokens=600, spend="6")
            answers: list[Reservation | Refusal] = []
            await hold_for(lim, 3 * LEASE, 0.05, answers.append)
            assert any(isinstance(a, Reservation) for a in answers)
            # Its late settle does nothing: the reclaim counted the whole reservation as used.
            assert not await lim.settle(
                long, prompt_tokens=100, completion_tokens=400, spend=Decimal("5")
            )
            used_tokens, used_spend, _, _ = await lim.month_usage("key", "k1")
            assert (used_tokens, used_spend) == (600, Decimal(6))

    asyncio.run(main())


def test_the_keeper_renews_everything_in_one_call_and_drops_what_redis_no_longer_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with limiter(lease_seconds=30) as lim:
            keeper = LeaseKeeper(lim)
            held = [await admitted(lim, key_id=f"k{i}", key=LimitSet()) for i in range(50)]
            for res in held:
                keeper.add(res)
            keeper.add(held[0])  # twice: held once
            assert len(keeper) == 50
            await lim.release(held[1])  # settled without telling the keeper
            calls: list[int] = []
            real_renew_each = lim.renew_each

            async def counting(reservations: Any, **options: Any) -> list[bool]:
                calls.append(len(reservations))
                return await real_renew_each(reservations, **options)

            monkeypatch.setattr(lim, "renew_each", counting)
            assert await keeper.renew_now()
            assert calls == [50]
            assert held[1] not in keeper
            assert len(keeper) == 49
            assert keeper.lost == 1
            keeper.discard(held[2])
            assert await keeper.renew_now()
            assert calls == [50, 48]

    asyncio.run(main())


def test_the_keeper_survives_a_redis_outage_and_renews_again_after_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()

    async def main() -> None:
        async with limiter(lease_seconds=5, url=server.url) as lim:
            keeper = LeaseKeeper(lim, interval=0.2, retry_interval=0.05)
            res = await admitted(lim)
            leases = f"{lim.base}key:k1:leases"
            first_expiry = await lim.redis.zscore(leases, res.request_id)
            errors_before = metric("vlinders_gateway_limiter_errors_total", operation="renew")
            keeper.add(res)
            keeper.start()
            try:
                server.kill()
                deadline = time.monotonic() + 5
                while keeper.failures < 2:
                    assert time.monotonic() < deadline, "no failed renewal seen"
                    await asyncio.sleep(0.02)
                assert (
                    metric("vlinders_gateway_limiter_errors_total", operation="renew")
                    >= errors_before + 2
                )
                assert res in keeper  # a failed renewal is not fatal and drops nothing
                server.start()
                renewals = keeper.renewals
                while keeper.renewals < renewals + 1:
                    assert time.monotonic() < deadline, "no renewal after the outage"
                    await asyncio.sleep(0.02)
                expiry = await lim.redis.zscore(leases, res.request_id)
                assert first_expiry is not None
                assert expiry is not None
                assert expiry > first_expiry
                assert isinstance(await reserve(lim), Refusal)
            finally:
                await keeper.aclose()

    try:
        asyncio.run(main())
    finally:
        server.kill()
