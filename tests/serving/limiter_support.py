"""Helpers for the limiter tests that run their own event loop: a limiter on a real Redis under a
prefix of its own, reservations, and Prometheus samples."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from uuid import uuid4

import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from inference.serving.limits import Limiter, LimitSet, Refusal, Reservation

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ONE_SLOT = LimitSet(max_concurrent_requests=1)


def metric(name: str, **labels: str) -> float:
    """A sample of the in-process registry (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def client_for(url: str = REDIS_URL, **options: object) -> aioredis.Redis:
    """A client that fails at once when Redis is down (no retries), as outage tests need."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=5,  # the shared Redis can be slow on a busy machine
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
        **options,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def limiter(
    lease_seconds: float,
    url: str = REDIS_URL,
    *,
    prefix: str | None = None,
    client: aioredis.Redis | None = None,
) -> AsyncIterator[Limiter]:
    """A limiter under a prefix of its own (or ``prefix``); its keys are deleted afterwards."""
    client = client_for(url) if client is None else client
    prefix = f"vltest:leases:{uuid4().hex}:" if prefix is None else prefix
    try:
        yield Limiter(client, prefix, lease_seconds=lease_seconds)
    finally:
        try:
            # A test that stopped its own Redis leaves nothing to clean there.
            with contextlib.suppress(RedisError):
                keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
                if keys:
                    await client.delete(*keys)
        finally:
            await client.aclose()


async def reserve(
    lim: Limiter,
    *,
    key_id: str = "k1",
    key: LimitSet = ONE_SLOT,
    tokens: int = 100,
    spend: str = "1",
    now: float | None = None,
) -> Reservation | Refusal:
    return await lim.reserve(
        key_id=key_id,
        org_id="o1",
        key_limits=key,
        org_limits=LimitSet(),
        tokens=tokens,
        spend=Decimal(spend),
        request_id=uuid4().hex,
        now=now,
    )


async def admitted(lim: Limiter, **options: object) -> Reservation:
    res = await reserve(lim, **options)  # type: ignore[arg-type]
    assert isinstance(res, Reservation), res
    return res
