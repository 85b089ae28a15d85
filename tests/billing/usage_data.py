"""Helpers of the usage-metering tests: keys, rollup rows and raw events written directly, and
the IngestResult a batch with those rows would have produced."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from billing.ingest_result import IngestResult, Totals
from billing.models import UsageEvent, UsageRollup
from inference.serving.limits import Limiter, MonthUsage
from tenants.models import ApiKey, Organization


def make_key(org: Organization, name: str = "key", **limits: Any) -> ApiKey:
    return ApiKey.objects.create(
        organization=org,
        name=name,
        prefix=uuid.uuid4().hex[:16],
        last_four="abcd",
        secret_hash=uuid.uuid4().hex + uuid.uuid4().hex,
        **limits,
    )


def add_rollup(
    key: ApiKey,
    hour: datetime,
    *,
    model: str = "m1",
    requests: int = 1,
    errors: int = 0,
    prompt: int = 0,
    completion: int = 0,
    cached: int = 0,
    cost: str = "0",
    result: IngestResult | None = None,
) -> UsageRollup:
    """One rollup row; when ``result`` is given, also what ingesting it would have reported."""
    row = UsageRollup.objects.create(
        organization_id=key.organization_id,
        api_key=key,
        hour=hour,
        model=model,
        requests=requests,
        errors=errors,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cost=Decimal(cost),
    )
    if result is not None:
        org_id = str(key.organization_id)
        totals = result.by_org.setdefault(org_id, Totals())
        totals.requests += requests
        totals.errors += errors
        totals.prompt_tokens += prompt
        totals.completion_tokens += completion
        totals.cached_tokens += cached
        totals.cost += Decimal(cost)
        result.received += requests
        result.inserted += requests
        result.keys.add((org_id, str(key.pk)))
        result.months.add(f"{hour:%Y-%m}")
    return row


def add_event(key: ApiKey, started_at: datetime, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "organization_id": key.organization_id,
        "api_key": key,
        "model": "m1",
        "served_model": "m1",
        "endpoint": "chat.completions",
        "stream": False,
        "status": 200,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "cost": Decimal("0.000001"),
        "latency_ms": 1.0,
        "started_at": started_at,
    }
    return UsageEvent.objects.create(**(values | fields))


def limiter_call(method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a method of the gateway's own limiter against the test's Redis prefix."""

    async def go() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            limiter = Limiter(client, settings.VLINDERS_REDIS_PREFIX)
            return await getattr(limiter, method)(*args, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


def redis_month(scope: str, ident: object, month: str) -> MonthUsage:
    return limiter_call("month_usage", scope, str(ident), month=month)


@pytest.fixture
def channel_layer(settings, redis_client):  # type: ignore[no-untyped-def]
    """The real Redis channel layer under the test's own prefix (removed afterwards by
    ``redis_client``), so tests never see each other's groups."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # As settings.py: a read timeout longer than the layer's 5 s blocking read.
                "hosts": [{"address": settings.REDIS_URL, "socket_timeout": 15}],
                "prefix": f"{settings.VLINDERS_REDIS_PREFIX}channels:",
            },
        }
    }
    return settings.CHANNEL_LAYERS
