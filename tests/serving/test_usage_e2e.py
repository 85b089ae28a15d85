"""Usage events (contract 4) from the deployed gateway, read back from the real broker: one per
authenticated request, successes and failures alike; spooled while the broker is down and
replayed when it returns; a client that disconnects mid-stream cancels the engine and is
metered for what it received."""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest

from tests.serving.conftest import month_usage, usage_events

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGE = [{"role": "user", "content": "count me"}]


def _by_id(events):
    """Events by the ``x-request-id`` the client saw (Ray generates one per request here)."""
    out = {}
    for event in events:
        out.setdefault(event["http_request_id"], []).append(event)
    return out


def test_one_event_per_authenticated_request(gateway, usage_broker, client, tenant):
    org, key, _ = tenant
    ok = client.chat.completions.with_raw_response.create(
        model="syn-alias", messages=MESSAGE, max_tokens=3
    )
    ok_id = ok.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="syn-fast", messages=MESSAGE, n=0)
    bad_id = caught.value.response.headers["x-request-id"]
    streamed = client.chat.completions.with_raw_response.create(
        model="syn-fast", messages=MESSAGE, max_tokens=4, stream=True
    )
    stream_id = streamed.headers["x-request-id"]
    list(streamed.parse())

    wanted = {ok_id, bad_id, stream_id}
    events = _by_id(usage_events(usage_broker, wait_for=lambda e: wanted <= set(_by_id(e))))
    assert wanted <= set(events)
    assert all(len(events[i]) == 1 for i in wanted)  # exactly one each

    success = events[ok_id][0]
    assert success["org_id"] == str(org.id)
    assert success["key_id"] == str(key.id)
    assert success["model"] == "syn-alias"
    assert success["served_model"] == "syn-fast"
    assert success["endpoint"] == "chat.completions"
    assert success["status"] == 200
    assert success["stream"] is False
    assert (success["prompt_tokens"], success["completion_tokens"]) == (8, 3)
    assert success["finish_reason"] == "length"
    assert success["latency_ms"] > 0
    assert success["request_id"].startswith("req_")
    assert len({events[i][0]["request_id"] for i in wanted}) == 3
    # The prices the cost is at: the catalog's (the test spec has no plan overrides).
    prices = (success["price_input_per_mtok"], success["price_output_per_mtok"])
    assert prices == ("1.000000", "2.000000")
    assert Decimal(success["cost"]) == (8 * Decimal(1) + 3 * Decimal(2)) / 10**6

    failure = events[bad_id][0]
    assert failure["status"] == 400
    assert failure["error_type"] == "invalid_request_error"
    assert failure["completion_tokens"] == 0
    # Refused before it was routed: no model, no prices, no cost.
    assert (failure["price_input_per_mtok"], failure["price_output_per_mtok"]) == (None, None)
    assert failure["cost"] == "0"

    stream = events[stream_id][0]
    assert stream["stream"] is True
    assert stream["completion_tokens"] == 4
    assert stream["ttft_ms"] is not None


def test_unauthenticated_requests_emit_no_event(gateway, usage_broker, catalog):
    bad = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="vlk_" + "Z" * 52, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="syn-fast", messages=MESSAGE)
    request_id = caught.value.response.headers["x-request-id"]
    time.sleep(1.5)  # longer than the flush interval
    assert request_id not in _by_id(
        usage_events(usage_broker, wait_for=lambda e: False, timeout=0.1)
    )


def test_disconnect_cancels_the_engine_and_meters_what_was_sent(
    gateway, usage_broker, client, tenant
):
    _, key, _ = tenant
    cancelled_before = gateway.metric("vlinders_engine_requests_cancelled_total", model="syn-slow")
    raw = client.chat.completions.with_raw_response.create(
        model="syn-slow", messages=MESSAGE, stream=True
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 5:
            break
    stream.close()  # the client goes away mid-stream (400 tokens would take 16 s)

    events = _by_id(usage_events(usage_broker, wait_for=lambda e: request_id in _by_id(e)))
    event = events[request_id][0]
    assert event["status"] == 499
    assert event["error_type"] == "client_disconnected"
    assert 5 <= event["completion_tokens"] < 400
    for _ in range(50):
        if (
            gateway.metric("vlinders_engine_requests_cancelled_total", model="syn-slow")
            > cancelled_before
        ):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the engine was not cancelled")
    used = month_usage("key", str(key.id))
    assert used.reserved_tokens == 0
    assert used.used_tokens == event["prompt_tokens"] + event["completion_tokens"]


def test_broker_outage_spools_and_replays(gateway, usage_broker, client):
    usage_broker.stop()
    try:
        ids = []
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="syn-fast", messages=MESSAGE, max_tokens=2
            )
            ids.append(raw.headers["x-request-id"])  # requests keep working
        time.sleep(1.5)  # the gateway tries, fails, and spools
    finally:
        usage_broker.start()
    events = _by_id(
        usage_events(usage_broker, wait_for=lambda e: set(ids) <= set(_by_id(e)), timeout=30)
    )
    assert set(ids) <= set(events)
    assert all(len(events[i]) == 1 for i in ids)
