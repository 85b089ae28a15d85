"""Only a real Redis outage answers 503: the gateway (the class Serve runs, called directly here,
no Ray) against a Redis address where nothing listens refuses in OpenAI's shape with
``Retry-After``, fails closed, and still emits nothing it should not. And a slow event loop is
no outage: a reply read after the socket timeout is retried, and the retry is harmless."""

from __future__ import annotations

import asyncio
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from fastapi import Request
from redis.asyncio.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference.serving.gateway import Gateway, redis_client, redis_pool_size
from inference.serving.limits import Limiter, LimitSet, Reservation
from tests.ray_fixtures import free_port
from tests.serving.limiter_support import metric

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

KEY = "vlk_" + "b" * 52


def _request(body: dict[str, Any]) -> Request:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "query_string": b"",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


def _args(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    return {
        "spec_version": 1,
        "redis_url": redis_url,
        "redis_prefix": "vltest:outage:",
        "broker_url": redis_url,
        "usage_spool_dir": str(tmp_path / "spool"),
        "max_ongoing_requests": 64,
    }


def test_the_pool_holds_one_connection_per_request_a_replica_may_serve() -> None:
    assert redis_pool_size(1024) >= 1024
    assert redis_pool_size(8) >= 8


def test_an_unreachable_redis_is_a_503_in_openais_shape(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VLINDERS_KEY_PEPPER", "test-pepper")
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens here

    async def run() -> list[Any]:
        gateway = Gateway(_args(tmp_path, down), handle_factory=lambda name: (None, None))
        await gateway.reconfigure({"revision": "r", "models": []})
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(
                *(gateway.handle(_request(body), "chat.completions") for _ in range(20))
            )
        finally:
            await gateway.__del__()

    responses = asyncio.run(run())
    for response in responses:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = json.loads(response.body)["error"]
        assert error["code"] == "auth_unavailable"
        assert error["type"] == "server_error"


@pytest.mark.redis
def test_a_reserve_read_after_the_socket_timeout_is_retried_and_counted_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The load test's 500s (1,000 streams on one replica, on 2 cores): the event loop was busy for
    longer than the socket timeout right after a reserve went out, so the reply Redis sent at once
    was read too late; redis-py timed the call out and retried it, and the retry found the
    reservation its first run had made. The replay is the same reservation, counted once."""
    sent: dict[int, str] = {}
    stalled: list[int] = []
    send_command, read_response = Connection.send_command, Connection.read_response

    async def send(self: Connection, *args: Any, **kwargs: Any) -> None:
        sent[id(self)] = str(args[0]).upper()
        await send_command(self, *args, **kwargs)

    async def read(self: Connection, *args: Any, **kwargs: Any) -> Any:
        response = await read_response(self, *args, **kwargs)
        if sent.get(id(self)) == "EVALSHA" and not stalled:
            # The script ran and its reply came, but too late: redis-py gives up on it exactly as
            # after its socket timeout (drop the connection, raise TimeoutError). Blocking the
            # loop instead was a race: a reply already buffered is read without waiting, so the
            # timeout fired in some runs only.
            stalled.append(1)
            await self.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading from {self.host}:{self.port}")
        return response

    monkeypatch.setattr(Connection, "send_command", send)
    monkeypatch.setattr(Connection, "read_response", read)

    async def run() -> tuple[Reservation, Any, bool]:
        client = redis_client(REDIS_URL, max_ongoing_requests=8)
        prefix = f"vltest:replay:{uuid4().hex}:"
        limiter = Limiter(client, prefix)
        try:
            await client.script_load(limiter._reserve.script)  # no NOSCRIPT round first
            res = await limiter.reserve(
                key_id="k1",
                org_id="o1",
                key_limits=LimitSet(max_concurrent_requests=1),
                org_limits=LimitSet(),
                tokens=10,
                spend=Decimal("0.01"),
                request_id="req_" + uuid4().hex,
            )
            assert isinstance(res, Reservation), res
            usage = await limiter.month_usage("org", "o1")
            settled = await limiter.settle(
                res, prompt_tokens=1, completion_tokens=1, spend=Decimal("0.001")
            )
            return res, usage, settled
        finally:
            keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    replays = metric("vlinders_gateway_reserve_replays_total")
    _, usage, settled = asyncio.run(run())
    assert stalled, "the reserve's reply was never stalled"
    assert metric("vlinders_gateway_reserve_replays_total") == replays + 1
    assert (usage.reserved_tokens, usage.reserved_spend) == (10, Decimal("0.01"))
    assert settled
