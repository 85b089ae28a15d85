"""Limits and budgets enforced by the gateway across replicas (contract 3), end to end."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest

from tests.serving.conftest import month_usage

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGE = [{"role": "user", "content": "x"}]


def _client(gateway, secret):
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)


def test_requests_per_minute_refuses_with_retry_after_and_headers(gateway, make_tenant):
    _, _, secret = make_tenant(requests_per_minute=3)
    client = _client(gateway, secret)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="syn-fast", messages=MESSAGE)
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="syn-fast", messages=MESSAGE)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    # The sliding window may ask for more than 60 s: the previous minute still weighs in.
    assert 1 <= int(error.response.headers["retry-after"]) <= 120
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_organisation_limit_applies_across_its_keys(gateway, make_tenant):
    org, _, first = make_tenant(org_limits={"requests_per_minute": 2})
    from tenants import services, snapshot
    from tenants.models import ApiKey, Role

    key, second = services.api_key_create(
        organization=org, name="second", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    _client(gateway, first).chat.completions.create(model="syn-fast", messages=MESSAGE)
    _client(gateway, second).chat.completions.create(model="syn-fast", messages=MESSAGE)
    with pytest.raises(openai.RateLimitError):
        _client(gateway, second).chat.completions.create(model="syn-fast", messages=MESSAGE)


def test_request_larger_than_tokens_per_minute_is_refused_without_retry(gateway, make_tenant):
    _, _, secret = make_tenant(tokens_per_minute=100)
    client = _client(gateway, secret)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="syn-fast", messages=MESSAGE, max_tokens=500)
    assert "retry-after" not in caught.value.response.headers
    client.chat.completions.create(model="syn-fast", messages=MESSAGE, max_tokens=5)


def test_concurrency_limit(gateway, make_tenant):
    _, _, secret = make_tenant(max_concurrent_requests=1)
    client = _client(gateway, secret)
    stream = client.chat.completions.create(model="syn-slow", messages=MESSAGE, stream=True)
    next(iter(stream))  # the first request is being served
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="syn-fast", messages=MESSAGE)
    assert caught.value.response.headers["retry-after"] == "1"
    stream.close()
    # The slot comes back once the gateway has settled the cancelled stream.
    for _ in range(50):
        try:
            client.chat.completions.create(model="syn-fast", messages=MESSAGE)
            break
        except openai.RateLimitError:
            asyncio.run(asyncio.sleep(0.1))
    else:
        pytest.fail("the concurrency slot was not released")


async def _fire(gateway, secret, count, max_tokens):
    client = openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)

    async def one():
        try:
            response = await client.chat.completions.create(
                model="syn-fast", messages=MESSAGE, max_tokens=max_tokens
            )
            return response.usage
        except openai.RateLimitError as error:
            return error.code

    try:
        return await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


def test_spend_budget_is_never_overspent_under_concurrency(gateway, make_tenant):
    # Prices of the test models: 1 per million input tokens, 2 per million output tokens.
    # Each request reserves (1 byte + 24 template) prompt + 10 completion tokens = 0.000045.
    budget = Decimal("0.000500")
    org, _key, secret = make_tenant(org_limits={"monthly_spend_budget": budget})
    usages = asyncio.run(_fire(gateway, secret, 40, max_tokens=10))
    admitted = [u for u in usages if not isinstance(u, str)]
    assert {u for u in usages if isinstance(u, str)} == {"insufficient_quota"}
    assert 0 < len(admitted) < 40  # some were refused for the budget
    used = month_usage("org", str(org.id))
    settled = sum(Decimal(u.prompt_tokens) + 2 * Decimal(u.completion_tokens) for u in admitted)
    settled /= Decimal(1_000_000)
    assert used.reserved_spend == 0  # every reservation was settled
    assert used.used_spend >= settled  # rounding is up, per request, never down
    assert used.used_spend - settled < Decimal("0.000001") * len(admitted)
    assert used.used_spend <= budget


def test_token_budget_is_never_overspent_under_concurrency(gateway, make_tenant):
    _org, key, secret = make_tenant(monthly_token_budget=400)
    usages = asyncio.run(_fire(gateway, secret, 30, max_tokens=8))
    admitted = [u for u in usages if not isinstance(u, str)]
    assert {u for u in usages if isinstance(u, str)} == {"insufficient_quota"}
    assert 0 < len(admitted) < 30
    used = month_usage("key", str(key.id))
    assert used.used_tokens == sum(u.total_tokens for u in admitted)
    assert used.used_tokens <= 400
    assert used.reserved_tokens == 0
