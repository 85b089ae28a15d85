"""Helpers for the tests of the real model engines (vLLM and llama.cpp on SmolLM2), driven
directly (``test_vllm_engine.py``, ``test_llamacpp_engine.py``) and through the deployed gateway
with the official ``openai`` SDK (``test_vllm_gateway.py``, ``test_llamacpp_gateway.py``).

It provides the event loop an engine lives on for a test module, a stream collected, the JSON
schema both engines are asked to fill, and the steps the gateway tests of both engines take: a
JSON-schema reply, a request's usage event, a stream the client drops after a few tokens and the
engine's cancellation of it.

Why: the two engines are tested the same way on the same questions; these steps were written
once per engine and per file, and a change of the harness (the loop, the usage queue's reader)
had to be made in each copy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import openai

from inference.serving.engines.base import Endpoint, Engine
from tests.serving.conftest import Deployed, RedisServer, usage_events

T = TypeVar("T")

# What both engines are asked to answer as JSON: the capital of France, as city and country.
CAPITAL = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


class Loop:
    """One event loop for the module: the engines live on it between tests."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        self.runner.close()


async def collect(eng: Engine, endpoint: Endpoint, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chunk of an engine's stream."""
    return [chunk async for chunk in eng.stream(endpoint, body)]


# --- through the deployed gateway, with the openai SDK ---


def capital_as_json(client: openai.OpenAI, model: str) -> dict[str, Any]:
    """Ask ``model`` for the capital of France under the strict :data:`CAPITAL` schema; the reply
    parsed as JSON."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": CAPITAL, "strict": True},
        },
    )
    answer: dict[str, Any] = json.loads(reply.choices[0].message.content)  # type: ignore[arg-type]
    return answer


def usage_event(usage_broker: RedisServer, request_id: str) -> dict[str, Any]:
    """The usage event of one request (by its ``x-request-id``), once the gateway sent it."""
    events = usage_events(
        usage_broker, wait_for=lambda es: any(e["http_request_id"] == request_id for e in es)
    )
    return next(e for e in events if e["http_request_id"] == request_id)


def drop_after_three_tokens(raw: Any) -> str:
    """Read a raw streamed response until three chunks with text arrived, then close it, as a
    client that goes away does; the request's id."""
    request_id = str(raw.headers["x-request-id"])
    stream = raw.parse()
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    stream.close()
    return request_id


def wait_for_cancellation(gateway: Deployed, model: str, before: float) -> None:
    """Wait (10 s at most) until the model server counted an engine request cancelled beyond
    ``before`` (``vlinders_engine_requests_cancelled_total``)."""
    deadline = time.monotonic() + 10
    while gateway.metric("vlinders_engine_requests_cancelled_total", model=model) <= before:
        assert time.monotonic() < deadline, "the model server did not cancel the engine request"
        time.sleep(0.1)
