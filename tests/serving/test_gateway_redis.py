"""Only a real Redis outage answers 503: the gateway (the class Serve runs, called directly here,
no Ray) against a Redis address where nothing listens refuses in OpenAI's shape with
``Retry-After``, fails closed, and still emits nothing it should not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import Request

from inference.serving.gateway import Gateway, redis_pool_size
from tests.ray_fixtures import free_port

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
