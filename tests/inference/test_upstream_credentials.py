"""The data plane's reader of upstream API keys (``inference.serving.credentials``) against the
real Redis: decrypts what is published, caches for a few seconds, re-reads after a 401, keeps a
key it has when Redis fails and refuses (503) when it has none."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from inference.serving.credentials import UpstreamCredentials, UpstreamCredentialsUnavailable

pytestmark = pytest.mark.redis

KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()
DEPLOYMENT = "model-upstream-4o-abc123"


class FlakyRedis(aioredis.Redis):
    """The real Redis, with GETs counted and, while ``down``, failing as an outage would."""

    down = False
    gets = 0

    async def get(self, name: Any) -> Any:
        type(self).gets += 1
        if type(self).down:
            raise RedisConnectionError("Connection refused (test outage)")
        return await super().get(name)


@pytest.fixture
def record(redis_client):  # type: ignore[no-untyped-def]
    """Write the record as the control plane does: the key's token under the first key."""
    name = f"{settings.VLINDERS_REDIS_PREFIX}upstream:v1:{DEPLOYMENT}"

    def write(plain: str, key: str = KEY) -> None:
        redis_client.set(name, Fernet(key).encrypt(plain.encode()))

    return write


def run(body: Any) -> Any:
    async def main() -> Any:
        FlakyRedis.down, FlakyRedis.gets = False, 0
        client = FlakyRedis.from_url(settings.REDIS_URL)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def reader(client: aioredis.Redis, keys: str | None = KEY) -> UpstreamCredentials:
    return UpstreamCredentials(
        client, prefix=settings.VLINDERS_REDIS_PREFIX, deployment=DEPLOYMENT, keys=keys
    )


def test_no_record_means_no_key(redis_client) -> None:  # type: ignore[no-untyped-def]
    assert run(lambda client: reader(client).api_key()) == ""


def test_the_published_token_is_decrypted(record) -> None:  # type: ignore[no-untyped-def]
    record("sk-upstream-1")
    assert run(lambda client: reader(client).api_key()) == "sk-upstream-1"


def test_any_of_several_keys_opens_the_token_during_a_rotation(record) -> None:  # type: ignore[no-untyped-def]
    record("sk-under-the-old-key", key=OLD_KEY)
    keys = f"{KEY}, {OLD_KEY}"
    assert run(lambda client: reader(client, keys).api_key()) == "sk-under-the-old-key"


def test_the_keys_default_to_the_environment(record, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VLINDERS_SECRETS_KEY", f"{OLD_KEY},{KEY}")
    record("sk-env")
    assert run(lambda client: reader(client, keys=None).api_key()) == "sk-env"


def test_a_new_key_is_read_once_the_cache_expires(record) -> None:  # type: ignore[no-untyped-def]
    assert UpstreamCredentials.ttl_s <= 5  # rotation reaches every replica within seconds

    async def body(client: aioredis.Redis) -> list[str]:
        credentials = reader(client)
        credentials.ttl_s = 0.3
        seen = [await credentials.api_key()]
        record("sk-rotated")
        seen.append(await credentials.api_key())  # cached: no read
        await asyncio.sleep(0.35)
        seen.append(await credentials.api_key())
        return seen

    record("sk-first")
    assert run(body) == ["sk-first", "sk-first", "sk-rotated"]
    assert FlakyRedis.gets == 2


def test_invalidate_reads_again_at_once(record) -> None:  # type: ignore[no-untyped-def]
    async def body(client: aioredis.Redis) -> list[str]:
        credentials = reader(client)
        seen = [await credentials.api_key()]
        record("sk-rotated")
        credentials.invalidate()  # the upstream answered 401
        seen.append(await credentials.api_key())
        return seen

    record("sk-first")
    assert run(body) == ["sk-first", "sk-rotated"]


def test_concurrent_requests_share_one_read(record) -> None:  # type: ignore[no-untyped-def]
    async def body(client: aioredis.Redis) -> set[str]:
        credentials = reader(client)
        return set(await asyncio.gather(*(credentials.api_key() for _ in range(50))))

    record("sk-shared")
    assert run(body) == {"sk-shared"}
    assert FlakyRedis.gets == 1


def test_a_redis_outage_keeps_the_key_read_before_and_backs_off(record) -> None:  # type: ignore[no-untyped-def]
    async def body(client: aioredis.Redis) -> list[str]:
        credentials = reader(client)
        credentials.ttl_s = 0.2
        seen = [await credentials.api_key()]
        FlakyRedis.down = True
        credentials.invalidate()
        seen.append(await credentials.api_key())  # the read fails: the cached key serves
        seen.append(await credentials.api_key())  # and Redis is not asked again at once
        assert FlakyRedis.gets == 2
        FlakyRedis.down = False
        record("sk-after-the-outage")
        await asyncio.sleep(0.25)
        seen.append(await credentials.api_key())
        return seen

    record("sk-before")
    assert run(body) == ["sk-before", "sk-before", "sk-before", "sk-after-the-outage"]


def test_without_a_key_read_before_an_unreachable_redis_is_a_503() -> None:
    async def body() -> None:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        try:
            await reader(client).api_key()
        finally:
            await client.aclose()

    with pytest.raises(UpstreamCredentialsUnavailable, match="cannot be read"):
        asyncio.run(body())


def test_a_token_no_key_opens_is_refused(record) -> None:  # type: ignore[no-untyped-def]
    record("sk-x", key=Fernet.generate_key().decode())
    with pytest.raises(UpstreamCredentialsUnavailable, match="No key of VLINDERS_SECRETS_KEY"):
        run(lambda client: reader(client).api_key())


def test_a_record_without_any_key_configured_is_refused(record) -> None:  # type: ignore[no-untyped-def]
    record("sk-x")
    with pytest.raises(UpstreamCredentialsUnavailable, match="not set in the Ray cluster"):
        run(lambda client: reader(client, keys="").api_key())


def test_a_model_without_a_key_needs_no_secrets_key(redis_client) -> None:  # type: ignore[no-untyped-def]
    assert run(lambda client: reader(client, keys="").api_key()) == ""


def test_the_reader_imports_no_django() -> None:
    code = (
        "import sys, inference.serving.credentials; "
        "sys.exit(any(m == 'django' or m.startswith('django.') for m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
