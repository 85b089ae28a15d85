"""Load shedding and timeouts, end to end through Ray Serve (``syn-tight``: the synthetic
engine, a labelled test engine and not a model, at 50 ms a token; one replica takes 8 requests
at once, each gateway replica queues 4 more, and a request may run 3.5 s).

- Past the queue bound the client gets 503 with ``Retry-After`` in OpenAI's shape at once, not
  after waiting in a queue: every refusal arrives before the first admitted request finishes.
- A request past its timeout is cancelled in the engine and metered for what it produced.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from tests.serving.conftest import usage_events

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGE: Any = [{"role": "user", "content": "shed me"}]


async def _concurrent(base_url: str, key: str, n: int) -> list[tuple[str, float, Any]]:
    """``n`` requests of 10 tokens (0.5 s of engine time) at once: (outcome, when, error)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    start = time.monotonic()

    async def one() -> tuple[str, float, Any]:
        try:
            await client.chat.completions.create(model="syn-tight", messages=MESSAGE, max_tokens=10)
            return "200", time.monotonic() - start, None
        except openai.APIStatusError as error:
            return str(error.status_code), time.monotonic() - start, error

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await client.close()


def test_past_the_queue_bound_requests_are_refused_at_once(gateway, tenant) -> None:
    outcomes = asyncio.run(_concurrent(f"{gateway.base_url}/v1", tenant[2], 60))
    statuses = {status for status, _, _ in outcomes}
    assert statuses == {"200", "503"}, outcomes
    admitted = [when for status, when, _ in outcomes if status == "200"]
    refused = [(when, error) for status, when, error in outcomes if status == "503"]
    # 8 running + 4 queued per gateway replica (2): at most 16 admitted at once, at least 8.
    assert len(admitted) >= 8
    assert max(when for when, _ in refused) < min(admitted)  # refused before any finished
    for _, error in refused:
        assert error.response.headers["retry-after"] == "1"
        assert error.body["code"] == "model_overloaded"
        assert error.body["type"] == "server_error"
    assert gateway.metric("vlinders_queue_rejections_total", model="syn-tight") >= len(refused)


def test_a_request_past_its_timeout_is_cancelled_and_metered(gateway, usage_broker, client):
    cancelled = gateway.metric("vlinders_engine_requests_cancelled_total", model="syn-tight")
    # 100 tokens at 50 ms: 5 s of work, against a 3.5 s timeout.
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.with_raw_response.create(
            model="syn-tight", messages=MESSAGE, max_tokens=100
        )
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "timeout"
    whole_id = caught.value.response.headers["x-request-id"]

    streamed = client.chat.completions.with_raw_response.create(
        model="syn-tight", messages=MESSAGE, max_tokens=100, stream=True
    )
    stream_id = streamed.headers["x-request-id"]
    received, stream_error = 0, None
    try:
        for chunk in streamed.parse():
            received += sum(1 for choice in chunk.choices if choice.delta.content)
    except openai.APIError as error:
        stream_error = error
    assert stream_error is not None, "the stream ended without its timeout error"
    assert "timeout" in str(stream_error)
    assert 0 < received < 100

    def ours(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            e["http_request_id"]: e for e in events if e["http_request_id"] in (whole_id, stream_id)
        }

    events = ours(usage_events(usage_broker, wait_for=lambda e: len(ours(e)) == 2))
    whole, stream = events[whole_id], events[stream_id]
    assert (whole["status"], whole["error_type"]) == (504, "server_error")
    assert whole["prompt_tokens"] > 0
    assert whole["completion_tokens"] == 0
    assert stream["status"] == 504
    # Metered for what the engine produced: at least what the client received, not the 100.
    assert received <= stream["completion_tokens"] < 100
    deadline = time.monotonic() + 10
    while (
        gateway.metric("vlinders_engine_requests_cancelled_total", model="syn-tight")
        < cancelled + 2
    ):
        assert time.monotonic() < deadline, "the engine was not cancelled twice"
        time.sleep(0.2)
    assert gateway.metric("vlinders_request_timeouts_total", model="syn-tight") >= 2
