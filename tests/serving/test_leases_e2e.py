"""A lease lives exactly as long as its request (contract 3, docs/limits.md), end to end.

The package's gateway runs with a lease of ``LEASE_S`` (2 s) instead of 10 minutes. A stream that
runs three times as long keeps its concurrency slot the whole time (the gateway renews it), so
a second request of the same key is refused throughout, and the final settle records the real
usage: nothing stays reserved, and the tokens used are exactly the stream's.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.serving.conftest import LEASE_S, month_usage

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGE: Any = [{"role": "user", "content": "hold the slot"}]


def test_a_request_three_times_the_lease_keeps_its_slot_and_settles(gateway, make_tenant):
    _, key, secret = make_tenant(max_concurrent_requests=1)
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)
    # syn-slow: 20 ms to the first token, then 40 ms each: 150 tokens take 6 s = 3 leases.
    stream = client.chat.completions.create(
        model="syn-slow",
        messages=MESSAGE,
        max_tokens=150,
        stream=True,
        stream_options={"include_usage": True},
    )
    started = checked = time.monotonic()
    refused_at: list[float] = []  # seconds after the start, of each refused second request
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        if time.monotonic() - checked > 0.5:  # every half second, while the stream runs
            checked = time.monotonic()
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="syn-fast", messages=MESSAGE, max_tokens=1)
            assert "concurrent" in caught.value.message
            refused_at.append(time.monotonic() - started)
    # About three leases long (6 s of tokens, timed from the first chunk, so a hair under 6 s).
    assert time.monotonic() - started > 2.75 * LEASE_S
    # Refused all along (every check above was a refusal), and still refused well past the
    # second renewal: without renewal the slot would have been reclaimed after one lease.
    assert len(refused_at) >= 3
    assert refused_at[-1] > 2.5 * LEASE_S
    assert usage is not None
    assert usage.completion_tokens == 150

    # Settled with the real usage: nothing left reserved, exactly the stream's tokens used.
    deadline = time.monotonic() + 10
    while True:
        used = month_usage("key", str(key.id))
        if used.reserved_tokens == 0:
            break
        assert time.monotonic() < deadline, used
        time.sleep(0.1)
    assert used.used_tokens == usage.prompt_tokens + usage.completion_tokens
    client.chat.completions.create(model="syn-fast", messages=MESSAGE, max_tokens=1)
