"""Durable settles (contract 3, ``docs/limits.md``) against real Redis servers: a settle that
fails (a full connection pool, a Redis killed) is journalled and replayed, the counters end
exactly right (nothing lost, nothing settled twice), its lease is kept while it waits, the
journal survives the death of its process, and replicas sharing the directory replay only the
files they can claim."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from inference.serving.limits import Limiter, LimitSet, Refusal, Reservation
from inference.serving.settle_journal import SettleJournal
from tests.billing.processes import ROOT, RedisServer
from tests.serving.limiter_support import REDIS_URL, admitted, client_for, limiter, metric, reserve

pytestmark = pytest.mark.redis

JOURNALLED = "vlinders_gateway_settles_journalled_total"
RETRIED = "vlinders_gateway_settles_retried_total"
BACKLOG = "vlinders_gateway_settle_journal_backlog"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that keeps its data across a kill and restart."""
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    server.kill()


def journal_lines(directory: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.journal"))
        for line in path.read_text().splitlines()
    ]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def month_fields(lim: Limiter, scope: str, ident: str, month: str) -> dict[str, int]:
    raw = await lim.redis.hgetall(f"{lim.base}{scope}:{ident}:month:{month}")
    return {k.decode(): int(v) for k, v in raw.items()}


async def reconnect(lim: Limiter) -> None:
    """Drop the connections a Redis restart left stale (the test's clients never retry)."""
    for _ in range(5):
        try:
            await lim.redis.ping()
            return
        except RedisError:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not come back")


LEASE = 0.8  # a shortened lease (seconds)
USAGE = {"prompt_tokens": 100, "completion_tokens": 400, "spend": Decimal("5")}


def test_a_settle_failing_once_keeps_its_slot_while_journalled_and_settles_exactly_once(
    tmp_path: Path,
) -> None:
    """The settle meets redis-py's "Too many connections" (a real pool of one connection, held
    elsewhere); it is journalled, its lease renewed for three leases, then replayed."""

    async def main() -> None:
        pool = aioredis.ConnectionPool.from_url(
            REDIS_URL, max_connections=1, retry=Retry(NoBackoff(), 0)
        )
        gateway_client = aioredis.Redis(connection_pool=pool)
        async with (
            limiter(LEASE) as other,
            limiter(
                LEASE, prefix=other.base.removesuffix("limits:v1:"), client=gateway_client
            ) as lim,
        ):
            journal = SettleJournal(lim, tmp_path / "settles", retry_interval=5 * LEASE)
            res = await admitted(lim, tokens=600, spend="6")
            before = {name: metric(name) for name in (JOURNALLED, RETRIED, BACKLOG)}
            errors = metric("vlinders_gateway_limiter_errors_total", operation="settle")

            held = await pool.get_connection()  # the pool is exhausted now
            await journal.settle(res, **USAGE)  # type: ignore[arg-type]
            await pool.release(held)

            assert journal.backlog == 1
            assert metric(JOURNALLED) == before[JOURNALLED] + 1
            assert metric(BACKLOG) == before[BACKLOG] + 1
            assert metric("vlinders_gateway_limiter_errors_total", operation="settle") == (
                errors + 1
            )
            [line] = journal_lines(tmp_path / "settles")
            assert line["request_id"] == res.request_id
            assert (line["prompt_tokens"], line["completion_tokens"], line["spend"]) == (
                100,
                400,
                "5",
            )

            journal.start()  # its first retry comes five leases later
            try:
                started = time.monotonic()
                while time.monotonic() - started < 3 * LEASE:
                    refusal = await reserve(other, tokens=0, spend="0")
                    assert isinstance(refusal, Refusal), "the journalled request lost its slot"
                    assert refusal.limit == "key.max_concurrent_requests"
                    await asyncio.sleep(0.05)
                assert journal.backlog == 1  # still waiting: its lease was renewed meanwhile
                await until(lambda: journal.backlog == 0)
            finally:
                await journal.aclose()

            assert journal.retried == 1
            assert metric(RETRIED) == before[RETRIED] + 1
            assert metric(BACKLOG) == before[BACKLOG]
            for scope, ident in (("key", "k1"), ("org", "o1")):
                usage = await other.month_usage(scope, ident)  # type: ignore[arg-type]
                assert usage == (500, Decimal(5), 0, Decimal(0))
                fields = await month_fields(other, scope, ident, res.month)
                assert (fields["settled_tokens"], fields["settled_micros"]) == (500, 5_000_000)
            assert not list((tmp_path / "settles").glob("*.journal"))
            assert not await lim.settle(res, **USAGE)  # type: ignore[arg-type]
            await admitted(other, tokens=0, spend="0")  # the slot is free

    asyncio.run(main())


def test_settles_during_an_outage_are_all_replayed_when_redis_returns(
    tmp_path: Path, server: RedisServer
) -> None:
    async def main() -> None:
        async with limiter(30, server.url) as lim:
            journal = SettleJournal(lim, tmp_path / "settles", retry_interval=0.05)
            journal.start()
            try:
                several = [
                    await admitted(lim, key_id=f"k{i % 2}", key=LimitSet(), tokens=50, spend="1")
                    for i in range(6)
                ]
                server.kill()
                for i, res in enumerate(several):
                    await journal.settle(
                        res, prompt_tokens=i, completion_tokens=10, spend=Decimal("0.25")
                    )
                assert journal.backlog == 6
                assert len(journal_lines(tmp_path / "settles")) == 6
                await asyncio.sleep(0.3)  # several failed retry rounds: nothing lost
                assert journal.backlog == 6
                server.start()
                await until(lambda: journal.backlog == 0)
            finally:
                await journal.aclose()
            assert journal.retried == 6
            for ident, indexes in (("k0", (0, 2, 4)), ("k1", (1, 3, 5))):
                usage = await lim.month_usage("key", ident)
                tokens = sum(i + 10 for i in indexes)
                assert usage == (tokens, Decimal("0.75"), 0, Decimal(0))
            assert await lim.month_usage("org", "o1") == (75, Decimal("1.5"), 0, Decimal(0))
            assert not list((tmp_path / "settles").glob("*.journal"))

    asyncio.run(main())


CRASHING_GATEWAY = """
import asyncio, json, os, sys
from decimal import Decimal
from inference.serving.limits import Limiter, RateLimitStatus, Reservation
from inference.serving.settle_journal import SettleJournal
from tests.serving.limiter_support import client_for

url, prefix, directory, reservations = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

async def main():
    journal = SettleJournal(Limiter(client_for(url), prefix), directory)
    for i, fields in enumerate(json.loads(reservations)):
        res = Reservation(**{**fields, "rate": RateLimitStatus()})
        await journal.settle(res, prompt_tokens=i, completion_tokens=20, spend=Decimal("0.5"))
    print(journal.stats()["settles_journalled"], flush=True)
    os._exit(0)  # dies: no aclose; the journal file stays, its lock dies with the process

asyncio.run(main())
"""


def test_a_dead_process_journal_is_replayed_by_the_next_process(
    tmp_path: Path, server: RedisServer
) -> None:
    directory = tmp_path / "settles"

    async def reserve_some(lim: Limiter) -> list[Reservation]:
        return [await admitted(lim, key=LimitSet(), tokens=40, spend="2") for _ in range(3)]

    async def main() -> None:
        async with limiter(600, server.url) as lim:
            several = await reserve_some(lim)
            server.kill()
            fields = [{k: v for k, v in asdict(r).items() if k != "rate"} for r in several]
            prefix = lim.base.removesuffix("limits:v1:")
            args = [server.url, prefix, str(directory), json.dumps(fields)]
            child = subprocess.run(
                [sys.executable, "-c", CRASHING_GATEWAY, *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert child.returncode == 0, child.stderr
            assert child.stdout.strip() == "3"
            assert len(journal_lines(directory)) == 3

            server.start()
            await reconnect(lim)
            assert await lim.month_usage("key", "k1") == (0, 0, 120, Decimal(6))
            journal = SettleJournal(lim, directory, retry_interval=0.05)  # the next process
            journal.start()
            try:
                await until(lambda: journal.retried == 3 and journal.backlog == 0)
            finally:
                await journal.aclose()
            for scope, ident in (("key", "k1"), ("org", "o1")):
                usage = await lim.month_usage(scope, ident)  # type: ignore[arg-type]
                assert usage == (63, Decimal("1.5"), 0, Decimal(0))
            assert not list(directory.glob("*.journal"))

    asyncio.run(main())


def test_replicas_sharing_the_directory_replay_only_files_they_can_claim(tmp_path: Path) -> None:
    directory = tmp_path / "settles"

    async def main() -> None:
        async with limiter(600) as lim:
            prefix = lim.base.removesuffix("limits:v1:")
            down = Limiter(client_for("redis://127.0.0.1:1/0"), prefix, lease_seconds=600)
            # Four replicas whose Redis is unreachable journal their settles.
            dead = [SettleJournal(down, directory) for _ in range(4)]
            settles: list[Reservation] = []
            for n, journal in enumerate(dead):
                for _ in range(n + 1):
                    res = await admitted(lim, key=LimitSet(), tokens=10, spend="1")
                    settles.append(res)
                    await journal.settle(
                        res, prompt_tokens=1, completion_tokens=2, spend=Decimal(0)
                    )
            assert len(list(directory.glob("*.journal"))) == 4

            # Two healthy replicas on the same directory: the live replicas' files are theirs.
            live = [
                SettleJournal(lim, directory, retry_interval=0.05, claim_interval=0.02)
                for _ in range(2)
            ]
            for journal in live:
                journal.start()
            try:
                await asyncio.sleep(0.3)  # many claim rounds
                assert [j.backlog for j in live] == [0, 0]
                assert len(list(directory.glob("*.journal"))) == 4
                for journal in dead:  # they stop (their last try fails): files unlocked
                    await journal.aclose()
                await until(lambda: sum(j.retried for j in live) == len(settles))
                await until(lambda: not list(directory.glob("*.journal")))
                assert [j.backlog for j in live] == [0, 0]
            finally:
                for journal in live:
                    await journal.aclose()
                await down.redis.aclose()
            assert sum(j.retried for j in live) == 10  # each settle replayed exactly once
            assert await lim.month_usage("org", "o1") == (30, Decimal(0), 0, Decimal(0))
            fields = await month_fields(lim, "org", "o1", settles[0].month)
            assert fields["settled_tokens"] == 30

    asyncio.run(main())


def test_a_settle_that_reaches_redis_is_not_journalled(tmp_path: Path) -> None:
    async def main() -> None:
        async with limiter(600) as lim:
            journal = SettleJournal(lim, tmp_path / "settles")
            res = await admitted(lim)
            await journal.settle(res, **USAGE)  # type: ignore[arg-type]
            assert journal.backlog == 0
            assert journal.journalled == 0
            assert not list((tmp_path / "settles").glob("*.journal"))
            assert await lim.month_usage("key", "k1") == (500, Decimal(5), 0, Decimal(0))
            await journal.aclose()

    asyncio.run(main())


def test_an_unreadable_journal_line_is_quarantined_and_the_rest_replayed(tmp_path: Path) -> None:
    directory = tmp_path / "settles"
    directory.mkdir()

    async def main() -> None:
        async with limiter(600) as lim:
            res = await admitted(lim)
            fields = {k: v for k, v in asdict(res).items() if k != "rate"}
            good = {**fields, "v": 1, "prompt_tokens": 3, "completion_tokens": 4, "spend": "0.5"}
            (directory / f"settles-999999-{uuid4().hex[:8]}.journal").write_text(
                "not json\n" + json.dumps(good) + "\n"
            )
            journal = SettleJournal(lim, directory, retry_interval=0.05)
            journal.start()
            try:
                await until(lambda: journal.retried == 1)
            finally:
                await journal.aclose()
            assert await lim.month_usage("key", "k1") == (7, Decimal("0.5"), 0, Decimal(0))
            assert not list(directory.glob("*.journal"))
            [bad] = directory.glob("settles-corrupt-*.bad")
            assert bad.read_text() == "not json\n"

    asyncio.run(main())
