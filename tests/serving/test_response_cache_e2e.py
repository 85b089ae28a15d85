"""The response cache through the deployed data plane (a real Ray Serve gateway with two replicas,
the synthetic test engine behind it, the official openai SDK): a miss then a hit with the
``x-vlinders-cache`` header, a stream replayed as a stream, never across organisations, requests
that are not deterministic bypassing it, the hit's usage event at the hit price ingested into
billing, the hit/miss metric, and a rate limit that still refuses a hit. The in-process tests
(``test_response_cache.py``) cover revision changes and TTL expiry."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing.ingest import ingest_events
from billing.models import UsageEvent
from tests.serving.conftest import usage_events

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MODEL = "syn-cached"
HIT_PRICE = Decimal("0.1")
USE = {"x-vlinders-cache": "use"}
MESSAGES = [{"role": "user", "content": "cache me if you can"}]


def _client(gateway, secret: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)


def _opted_in(make_tenant, **limits):  # type: ignore[no-untyped-def]
    from tenants import snapshot
    from tenants.models import Organization

    org, key, secret = make_tenant(limits or None)
    Organization.objects.filter(pk=org.pk).update(response_cache_enabled=True)
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    return org, key, secret


def test_miss_then_hit_metered_at_the_hit_price(gateway, usage_broker, make_tenant) -> None:  # type: ignore[no-untyped-def]
    org, _, secret = _opted_in(make_tenant)
    client = _client(gateway, secret)
    hits_before = gateway.metric("vlinders_response_cache_total", model=MODEL, result="hit")
    replies = [
        client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, temperature=0, extra_headers=USE
        )
        for _ in range(3)
    ]
    assert [r.headers["x-vlinders-cache"] for r in replies] == ["miss", "hit", "hit"]
    answers = [r.parse() for r in replies]
    # The same answer, replayed: one engine run (its id) for all three, whichever replica.
    assert len({a.id for a in answers}) == 1
    assert {a.choices[0].message.content for a in answers} == {
        answers[0].choices[0].message.content
    }

    ids = {r.headers["x-request-id"] for r in replies}
    events = usage_events(usage_broker, wait_for=lambda e: ids <= {x["http_request_id"] for x in e})
    mine = sorted((e for e in events if e["http_request_id"] in ids), key=lambda e: e["started_at"])
    assert [e["cache"] for e in mine] == ["miss", "hit", "hit"]
    miss, hit = mine[0], mine[1]
    prices = [
        (Decimal(e["price_input_per_mtok"]), Decimal(e["price_output_per_mtok"])) for e in mine
    ]
    assert prices == [(Decimal(1), Decimal(2)), (HIT_PRICE, HIT_PRICE), (HIT_PRICE, HIT_PRICE)]
    tokens = hit["prompt_tokens"] + hit["completion_tokens"]
    assert tokens == miss["prompt_tokens"] + miss["completion_tokens"] > 0
    assert Decimal(hit["cost"]) == tokens * HIT_PRICE / 10**6
    ingest_events(mine)
    rows = UsageEvent.objects.filter(organization=org).order_by("started_at")
    assert [row.cache_hit for row in rows] == [False, True, True]
    assert rows[1].cost == tokens * HIT_PRICE / 10**6
    hits = gateway.metric("vlinders_response_cache_total", model=MODEL, result="hit")
    assert hits - hits_before == 2


def test_a_stream_is_replayed_as_a_stream(gateway, make_tenant) -> None:  # type: ignore[no-untyped-def]
    _, _, secret = _opted_in(make_tenant)
    client = _client(gateway, secret)
    runs = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MESSAGES,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=USE,
        )
        runs.append((raw.headers["x-vlinders-cache"], [c.model_dump() for c in raw.parse()]))
    (first, miss), (second, hit) = runs
    assert (first, second) == ("miss", "hit")
    assert hit[:-1] == miss[:-1]  # chunk for chunk
    assert hit[-1]["usage"] == miss[-1]["usage"]
    assert hit[-1]["choices"] == []
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in hit if c["choices"])


def test_never_across_organisations_and_only_when_asked(gateway, make_tenant) -> None:  # type: ignore[no-untyped-def]
    _, _, first = _opted_in(make_tenant)
    _, _, second = _opted_in(make_tenant)
    _, _, not_opted = make_tenant()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "whose is it"}]}

    def outcome(secret: str, **extra) -> str | None:  # type: ignore[no-untyped-def]
        raw = _client(gateway, secret).chat.completions.with_raw_response.create(
            **body, **{"temperature": 0, "extra_headers": USE, **extra}
        )
        return raw.headers.get("x-vlinders-cache")

    assert [outcome(first), outcome(second), outcome(first), outcome(second)] == [
        "miss",
        "miss",
        "hit",
        "hit",
    ]
    assert outcome(not_opted) is None  # the organisation did not opt in
    assert outcome(first, extra_headers={}) is None  # the request did not ask
    assert outcome(first, temperature=0.8) is None  # not deterministic
    assert outcome(first, temperature=0.8, seed=11) == "miss"  # a fixed seed is


def test_a_hit_is_still_rate_limited(gateway, make_tenant) -> None:  # type: ignore[no-untyped-def]
    _, _, secret = _opted_in(make_tenant, requests_per_minute=2)
    client = _client(gateway, secret)
    seen = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, temperature=0, extra_headers=USE
        )
        seen.append(raw.headers["x-vlinders-cache"])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, temperature=0, extra_headers=USE
        )
    assert seen == ["miss", "hit"]
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"]
