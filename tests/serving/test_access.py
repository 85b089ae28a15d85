"""The gateway's authorisation against real Redis records (no Ray): what a malformed record and
the plan's priority do."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from inference.serving.access import AccessCache
from inference.serving.errors import ApiError

PEPPER = "test-pepper"
SECRET = "vlk_" + "a" * 52


def _records(org: dict[str, object]) -> dict[str, dict[str, object]]:
    key = {
        "schema": 1,
        "key_id": "key-1",
        "org_id": "org-1",
        "name": "k",
        "status": "active",
        "expires_at": None,
        "scopes": ["inference"],
        "allowed_models": [],
        "limits": {},
    }
    base_org = {"schema": 1, "org_id": "org-1", "slug": "acme", "status": "active", "models": []}
    return {"key": key, "org": {**base_org, **org}}


def _authorize(records: dict[str, dict[str, object]]):  # type: ignore[no-untyped-def]
    prefix = f"vltest:access:{uuid.uuid4().hex[:8]}:"

    async def run():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        cache = AccessCache(client, prefix=prefix, pepper=PEPPER)
        try:
            await client.set(
                f"{prefix}access:v1:key:{cache.key_hash(SECRET)}", json.dumps(records["key"])
            )
            await client.set(f"{prefix}access:v1:org:org-1", json.dumps(records["org"]))
            return await cache.authorize(f"Bearer {SECRET}")
        finally:
            await client.delete(*[k async for k in client.scan_iter(match=prefix + "*")])
            await client.aclose()

    return asyncio.run(run())


def test_the_plans_priority_reaches_the_principal():
    assert _authorize(_records({"priority": -10})).priority == -10
    assert _authorize(_records({})).priority == 0  # a record from before plans existed


@pytest.mark.parametrize(
    "org",
    [{"limits": {"requests_per_minute": "many"}}, {"priority": "high"}, {"models": 7}],
    ids=["bad-limit", "bad-priority", "bad-models"],
)
def test_a_malformed_record_is_a_503_not_a_crash(org):
    with pytest.raises(ApiError) as caught:
        _authorize(_records(org))
    assert caught.value.status == 503
