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


class CountingRedis(aioredis.Redis):
    """The real Redis client, counting the GETs it sends (a spy, not a double)."""

    gets = 0
    fetched: asyncio.Event | None = None  # set when the first GET has its answer
    release: asyncio.Event | None = None  # that answer is returned only once this is set

    async def get(self, name):  # type: ignore[no-untyped-def,override]
        cls = type(self)
        cls.gets += 1
        first = cls.gets == 1
        value = await super().get(name)
        if first and cls.fetched is not None and cls.release is not None:
            cls.fetched.set()
            await cls.release.wait()  # a slow read: the concurrent misses overlap it
        else:
            await asyncio.sleep(0.01)
        return value


def _concurrent_authorize(records, n, *, invalidate_midway=False):  # type: ignore[no-untyped-def]
    """``n`` concurrent first uses of one key on a cold cache; returns (results, GETs sent)."""
    prefix = f"vltest:access:{uuid.uuid4().hex[:8]}:"

    async def run():  # type: ignore[no-untyped-def]
        client = CountingRedis.from_url(settings.REDIS_URL)
        CountingRedis.gets = 0
        CountingRedis.fetched = asyncio.Event() if invalidate_midway else None
        CountingRedis.release = asyncio.Event() if invalidate_midway else None
        cache = AccessCache(client, prefix=prefix, pepper=PEPPER)
        try:
            await client.set(
                f"{prefix}access:v1:key:{cache.key_hash(SECRET)}", json.dumps(records["key"])
            )
            await client.set(f"{prefix}access:v1:org:org-1", json.dumps(records["org"]))
            CountingRedis.gets = 0
            first = [cache.authorize(f"Bearer {SECRET}") for _ in range(n)]
            tasks = [asyncio.ensure_future(call) for call in first]
            if invalidate_midway:
                assert CountingRedis.fetched is not None
                assert CountingRedis.release is not None
                await CountingRedis.fetched.wait()  # the shared read has the active record
                revoked = {**records["key"], "status": "revoked"}
                await client.set(
                    f"{prefix}access:v1:key:{cache.key_hash(SECRET)}", json.dumps(revoked)
                )
                cache._apply(json.dumps({"kind": "key", "id": cache.key_hash(SECRET)}))
                tasks.append(asyncio.ensure_future(cache.authorize(f"Bearer {SECRET}")))
                await asyncio.sleep(0.05)  # the late request is waiting on its own read
                CountingRedis.release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, CountingRedis.gets
        finally:
            await client.delete(*[k async for k in client.scan_iter(match=prefix + "*")])
            await client.aclose()

    return asyncio.run(run())


def test_concurrent_misses_for_one_key_share_one_read_per_record():
    results, gets = _concurrent_authorize(_records({}), 500)
    assert all(result.key_id == "key-1" for result in results)
    assert gets == 2  # one for the key's record, one for its organisation's


def test_a_read_started_before_an_invalidation_is_not_shared_after_it():
    """A request that arrives after a revocation's message must not join a read that began
    before it (that read may return the key as active)."""
    results, gets = _concurrent_authorize(_records({}), 50, invalidate_midway=True)
    *early, last = results
    assert all(result.key_id == "key-1" for result in early)  # they came before the revocation
    assert isinstance(last, ApiError), last
    assert last.status == 401
    assert gets == 3  # key and organisation once for the early ones, the key again for the late


def test_the_principal_is_reused_while_its_records_are_cached_and_no_longer():
    """A cached key and organisation give the same principal without rebuilding it; an
    invalidation (a revocation), and the key's expiry, still apply at once."""
    from datetime import UTC, datetime, timedelta

    prefix = f"vltest:access:{uuid.uuid4().hex[:8]}:"
    records = _records({})
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    records["key"]["expires_at"] = expires.isoformat()

    async def run():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        cache = AccessCache(client, prefix=prefix, pepper=PEPPER)
        key_name = f"{prefix}access:v1:key:{cache.key_hash(SECRET)}"
        try:
            await client.set(key_name, json.dumps(records["key"]))
            await client.set(f"{prefix}access:v1:org:org-1", json.dumps(records["org"]))
            cache.start()
            while not cache.subscribed:
                await asyncio.sleep(0.01)
            first = await cache.authorize(f"Bearer {SECRET}")
            second = await cache.authorize(f"Bearer {SECRET}")
            assert second is first  # not rebuilt

            # The organisation's record changes: a new principal, with the new plan.
            await client.set(
                f"{prefix}access:v1:org:org-1", json.dumps({**records["org"], "plan": "premium"})
            )
            cache._apply(json.dumps({"kind": "org", "id": "org-1"}))
            third = await cache.authorize(f"Bearer {SECRET}")
            assert third is not first
            assert third.plan == "premium"

            # Expiry is checked on the reused principal too.
            await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
            with pytest.raises(ApiError) as expired:
                await cache.authorize(f"Bearer {SECRET}")
            assert expired.value.code == "expired_api_key"

            # A revocation's message drops the reuse at once.
            await client.set(
                key_name, json.dumps({**records["key"], "expires_at": None, "status": "revoked"})
            )
            cache._apply(json.dumps({"kind": "key", "id": cache.key_hash(SECRET)}))
            with pytest.raises(ApiError) as revoked:
                await cache.authorize(f"Bearer {SECRET}")
            assert revoked.value.code == "revoked_api_key"
        finally:
            await cache.aclose()
            await client.delete(*[k async for k in client.scan_iter(match=prefix + "*")])
            await client.aclose()

    asyncio.run(run())
