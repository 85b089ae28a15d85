"""The data plane's Redis connection class encodes commands with hiredis, byte for byte as
redis-py does, and works against the real Redis (pipelines, scripts, errors)."""

from __future__ import annotations

import asyncio
import os
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from inference.serving.gateway import redis_client
from inference.serving.redis_packing import HiredisPackingConnection

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "k:1", "k:2", "1770000000.25", -3, 10**18, "é ü"),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETNAME", b"x"),
    (b"SET", b"k", b"\x00\xff\r\n"),
    ("ZADD", "z", 1.5, "m"),  # a float: redis-py's own encoder formats it
    ("SET", "k", memoryview(b"abc")),
    ("GET", ""),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_bytes_are_redis_pys(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisPackingConnection().pack_command(*command))
    theirs = b"".join(aioredis.Connection().pack_command(*command))
    assert ours == theirs


def test_what_redis_py_refuses_is_refused() -> None:
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", True)


@pytest.mark.redis
def test_the_gateways_client_uses_it_against_the_real_redis() -> None:
    async def main() -> tuple[Any, ...]:
        client = redis_client(REDIS_URL, 8)
        key = f"vltest:packing:{uuid4().hex}"
        try:
            assert client.connection_pool.connection_class is HiredisPackingConnection
            script = client.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
            pipe = client.pipeline(transaction=False)
            pipe.set(key, "é")
            pipe.get(key)
            pipe.incrby(key + ":n", 41)
            replies = await pipe.execute()
            scripted = await script(keys=[key], args=["ü", 41])
            with pytest.raises(aioredis.ResponseError):
                await client.execute_command("NOSUCHCOMMAND", "x")
            return (*replies, scripted, key)
        finally:
            await client.delete(key, key + ":n")
            await client.aclose()

    ok, value, counted, scripted, key = asyncio.run(main())
    assert ok is True
    assert value == "é".encode()
    assert counted == 41
    assert scripted == [key.encode(), "ü".encode(), 42]


def test_tls_and_unix_urls_keep_their_own_connection_classes() -> None:
    secure = redis_client("rediss://127.0.0.1:6380/0", 8)
    local = redis_client("unix:///tmp/redis.sock", 8)
    assert secure.connection_pool.connection_class is aioredis.SSLConnection
    assert local.connection_pool.connection_class is aioredis.UnixDomainSocketConnection
