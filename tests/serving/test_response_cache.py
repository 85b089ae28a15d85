"""The response cache (docs/response-cache.md).

Unit tests of what decides a hit (the request header, eligibility, the normalised request and its
key, the model revision, the stored entry), then the gateway class Serve runs, called in-process
through ASGI with the official openai SDK (no Ray; the synthetic engine, a labelled test engine,
answers and counts its calls), with the routes the control plane's renderer makes from the catalog
and the real Redis and Postgres: a miss then a hit, streams replayed as streams, never across
organisations or model revisions, TTL expiry, non-deterministic requests bypassing it, hits metered
at the hit price into billing, and every limit still applied to hits. The same flow through a real
Ray Serve deployment is ``test_response_cache_e2e.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pytest

from billing.ingest import ingest_events
from billing.models import UsageEvent as BillingEvent
from inference.serving import requests, response_cache
from inference.serving.engines.synthetic import SyntheticEngine
from inference.serving.response_cache import Entry, entry_key, ineligible, normalised
from inference.serving.spec import ModelSpec, RouteSpec
from inference.serving.usage import UsageEvent
from tenants.models import Organization
from tests.factories import CatalogModelFactory, OrganizationFactory
from tests.serving.gateway_harness import InProcessGateway, publish_key, rendered_config

MODEL = "syn-cached"
PRICES = (Decimal("1.000000"), Decimal("2.000000"))
HIT_PRICE = Decimal("0.100000")
MESSAGES = [{"role": "user", "content": "one two three"}]
USE = {"x-vlinders-cache": "use"}


# --- units: what decides a hit ---------------------------------------------------------------


def _parsed(body: dict[str, Any], endpoint: str = "chat.completions") -> requests.ParsedRequest:
    return requests.parse(body, endpoint)  # type: ignore[arg-type]


def _route(**extra: Any) -> RouteSpec:
    return RouteSpec(
        name=MODEL,
        deployment=f"model-{MODEL}",
        engine="synthetic",
        context_length=4096,
        cache_ttl_s=60,
        model_revision="r1",
        **extra,
    )


def test_only_the_header_value_use_asks_for_the_cache() -> None:
    assert response_cache.requested({"x-vlinders-cache": "use"})
    assert response_cache.requested({"x-vlinders-cache": " USE "})
    assert not response_cache.requested({})
    assert not response_cache.requested({"x-vlinders-cache": "hit"})


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"temperature": 0}, None),
        ({"temperature": 0.0}, None),
        ({"seed": 7}, None),
        ({"temperature": 0.9, "seed": 7}, None),
        ({"temperature": 0, "tools": [{"type": "function", "function": {"name": "f"}}]}, None),
        ({}, "not_deterministic"),  # the default temperature is 1
        ({"temperature": 0.7}, "not_deterministic"),
        ({"temperature": 0, "n": 2}, "n"),
        ({"seed": 7, "n": 3}, "n"),
    ],
)
def test_only_deterministic_single_answer_requests_are_eligible(
    extra: dict[str, Any], reason: str | None
) -> None:
    assert ineligible(_parsed({"model": MODEL, "messages": MESSAGES, **extra})) == reason


def test_embeddings_are_always_eligible() -> None:
    parsed = _parsed({"model": "m", "input": "hello"}, "embeddings")
    assert ineligible(parsed) is None


def test_the_normalised_request_leaves_out_what_does_not_change_the_answer() -> None:
    base = {"model": MODEL, "messages": MESSAGES, "temperature": 0}
    same = {
        "messages": MESSAGES,
        "temperature": 0,
        "model": "an-alias",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "someone",
        "n": 1,
        "metadata": {"a": "b"},
    }
    assert normalised(base) == normalised(same)
    assert (
        normalised(base)
        == '{"messages":[{"content":"one two three","role":"user"}],"temperature":0}'
    )
    for change in ({"max_tokens": 3}, {"seed": 1}, {"stop": ["x"]}, {"temperature": 0.0001}):
        assert normalised(base) != normalised({**base, **change})
    assert normalised(base) != normalised(
        {**base, "messages": [{"role": "user", "content": "one"}]}
    )


def test_the_key_holds_the_organisation_the_revision_and_the_mode() -> None:
    plain = _parsed({"model": MODEL, "messages": MESSAGES, "temperature": 0})
    streamed = _parsed({"model": MODEL, "messages": MESSAGES, "temperature": 0, "stream": True})
    key = entry_key("vl:", "org-a", _route(), plain)
    assert key.startswith(f"vl:rcache:v1:org-a:model-{MODEL}:r1:chat.completions:plain:")
    assert key != entry_key("vl:", "org-b", _route(), plain)
    assert key != entry_key(
        "vl:", "org-a", _route().model_copy(update={"model_revision": "r2"}), plain
    )
    assert key != entry_key("vl:", "org-a", _route(), streamed)
    assert entry_key("vl:", "org-a", _route(), streamed).split(":")[-2] == "stream"


def _model_spec(**extra: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": MODEL,
            "deployment": f"model-{MODEL}",
            "engine": "synthetic",
            "engine_args": {"ttft_ms": 0},
            "context_length": 4096,
            **extra,
        }
    )


def test_the_model_revision_changes_with_what_decides_the_answers_only() -> None:
    base = _model_spec()
    assert base.route().model_revision == base.model_revision != ""
    assert _model_spec(engine_args={"ttft_ms": 1}).model_revision != base.model_revision
    assert _model_spec(engine="vllm").model_revision != base.model_revision
    assert _model_spec(source={"path": "/m"}).model_revision != base.model_revision
    # Prices, scaling, TTL and the upstream's secret do not change the answers.
    for same in (
        _model_spec(price_input_per_mtok="3"),
        _model_spec(cache_ttl_s=5),
        _model_spec(scaling={"min_replicas": 2, "max_replicas": 2}),
    ):
        assert same.model_revision == base.model_revision
    upstream = {"base_url": "http://u/v1", "model": "m"}
    assert (
        _model_spec(engine="openai", source={**upstream, "api_key": "a"}).model_revision
        == _model_spec(engine="openai", source={**upstream, "api_key": "b"}).model_revision
    )


def test_an_entry_survives_its_json_and_an_unreadable_one_is_a_miss() -> None:
    entry = Entry(
        stream=True,
        prompt_tokens=3,
        completion_tokens=4,
        cached_tokens=1,
        finish_reason="stop",
        response=None,
        chunks=[{"id": "c", "choices": [{"index": 0, "delta": {"content": "é"}}]}],
    )
    assert Entry.from_json(entry.to_json()) == entry
    assert Entry.from_json("not json") is None
    assert Entry.from_json('{"v": 99}') is None
    assert Entry.from_json('{"v": 1, "stream": true}') is None


# --- the gateway, in-process -----------------------------------------------------------------


def _tenant(*, cache: bool = True, **limits: Any) -> tuple[Organization, str]:
    org = OrganizationFactory(response_cache_enabled=cache, **limits)
    return org, publish_key(org)


class Harness(InProcessGateway):
    """The gateway on the catalog's rendered routes, with the cache's requests: each asks for
    the cache (``USE``) unless told otherwise, and waits for the stores after its response."""

    async def chat(self, secret: str, *, headers: dict[str, str] | None = None, **body: Any) -> Any:
        """A plain chat request through the SDK: (the raw response, the parsed completion)."""
        raw = await self.client(secret).chat.completions.with_raw_response.create(
            model=body.pop("model", MODEL),
            messages=body.pop("messages", MESSAGES),
            extra_headers=headers if headers is not None else USE,
            **body,
        )
        await self.drain()
        return raw, raw.parse()

    async def stream(self, secret: str, **body: Any) -> tuple[Any, list[Any]]:
        raw = await self.client(secret).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=USE, **body
        )
        chunks = [chunk async for chunk in raw.parse()]
        await self.drain()
        return raw, chunks

    async def outcome(self, secret: str, **body: Any) -> str:
        """What the cache did with a deterministic chat request (``x-vlinders-cache``)."""
        raw, _ = await self.chat(secret, temperature=0, **body)
        return str(raw.headers["x-vlinders-cache"])

    async def refused(
        self,
        secret: str,
        times: int,
        refusal: Callable[[openai.RateLimitError], Any],
        **body: Any,
    ) -> list[Any]:
        """The :meth:`outcome` of ``times`` identical requests, or for each one refused with a
        429, ``refusal`` of its error."""
        outcomes: list[Any] = []
        for _ in range(times):
            try:
                outcomes.append(await self.outcome(secret, **body))
            except openai.RateLimitError as error:
                outcomes.append(refusal(error))
        return outcomes


@pytest.fixture
def cached_model(db):  # type: ignore[no-untyped-def]
    return CatalogModelFactory(
        name=MODEL,
        engine_args={"ttft_ms": 0, "tpot_ms": 0, "default_max_tokens": 8},
        price_input_per_mtok=PRICES[0],
        price_output_per_mtok=PRICES[1],
        cache_ttl_s=60,
        price_cache_hit_per_mtok=HIT_PRICE,
    )


@pytest.fixture
def harness(cached_model, tmp_path, monkeypatch) -> Harness:  # type: ignore[no-untyped-def]
    engine = SyntheticEngine(model=MODEL, default_max_tokens=8)
    return Harness(tmp_path, monkeypatch, engine, config=rendered_config(), embeddings=True)


def _text(completion: Any) -> str:
    return str(completion.choices[0].message.content)


@pytest.mark.django_db
@pytest.mark.redis
def test_a_miss_then_a_hit_metered_at_the_hit_price_into_billing(harness: Harness) -> None:
    org, secret = _tenant()

    async def run() -> list[Any]:
        return [await harness.chat(secret, temperature=0) for _ in range(2)]

    (miss_raw, miss), (hit_raw, hit) = harness.run(run)
    assert miss_raw.headers["x-vlinders-cache"] == "miss"
    assert hit_raw.headers["x-vlinders-cache"] == "hit"
    assert len(harness.calls) == 1  # the hit never reached the engine
    assert hit.model_dump() == miss.model_dump()  # the same answer, id and usage included
    prompt, completion = miss.usage.prompt_tokens, miss.usage.completion_tokens
    full = (prompt * PRICES[0] + completion * PRICES[1]) / 10**6
    cached = (prompt + completion) * HIT_PRICE / 10**6
    miss_event, hit_event = harness.events
    assert (miss_event.cache, miss_event.cost) == ("miss", full)
    assert (hit_event.cache, hit_event.cost) == ("hit", cached)
    assert (hit_event.price_input_per_mtok, hit_event.price_output_per_mtok) == (
        HIT_PRICE,
        HIT_PRICE,
    )
    assert (hit_event.prompt_tokens, hit_event.completion_tokens) == (prompt, completion)
    assert harness.settled == [(prompt, completion, full), (prompt, completion, cached)]
    # Billing validates (cost = tokens x prices) and stores the flag.
    result = ingest_events([event.to_dict() for event in harness.events])
    assert result.inserted == 2
    rows = {row.request_id: row for row in BillingEvent.objects.filter(organization=org)}
    assert rows[miss_event.request_id].cache_hit is False
    assert rows[hit_event.request_id].cache_hit is True
    assert rows[hit_event.request_id].cost == cached


@pytest.mark.django_db
@pytest.mark.redis
def test_a_stream_is_replayed_as_a_stream_with_usage_and_done(harness: Harness) -> None:
    _, secret = _tenant()

    async def run() -> list[Any]:
        first = await harness.stream(secret, seed=5, stream_options={"include_usage": True})
        second = await harness.stream(secret, seed=5, stream_options={"include_usage": True})
        # Without include_usage: the same entry, no usage chunk.
        third = await harness.stream(secret, seed=5)
        # A plain request does not share the stream's entry.
        plain = await harness.chat(secret, seed=5)
        return [first, second, third, plain]

    (miss_raw, miss), (hit_raw, hit), (_, bare), (plain_raw, _) = harness.run(run)
    assert miss_raw.headers["x-vlinders-cache"] == "miss"
    assert hit_raw.headers["x-vlinders-cache"] == "hit"
    assert hit_raw.headers["content-type"].startswith("text/event-stream")
    assert plain_raw.headers["x-vlinders-cache"] == "miss"
    assert len(harness.calls) == 2  # the first stream and the plain request
    # Chunk for chunk as relayed; the usage chunk (the gateway's own) has the request's id.
    assert [c.model_dump() for c in hit[:-1]] == [c.model_dump() for c in miss[:-1]]
    assert hit[-1].usage == miss[-1].usage
    assert hit[-1].usage is not None
    assert hit[-1].choices == []
    assert hit[-1].usage.completion_tokens == miss[-1].usage.completion_tokens > 0
    assert [c.model_dump() for c in bare] == [c.model_dump() for c in miss[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in hit if c.choices)
    assert text.split()
    assert all(c.model == MODEL for c in hit)
    events = harness.events
    assert [(e.cache, e.stream) for e in events] == [
        ("miss", True),
        ("hit", True),
        ("hit", True),
        ("miss", False),
    ]
    assert events[1].ttft_ms is not None
    assert (
        events[1].cost
        == (events[1].prompt_tokens + events[1].completion_tokens) * HIT_PRICE / 10**6
    )


@pytest.mark.django_db
@pytest.mark.redis
def test_embeddings_are_cached_too(harness: Harness) -> None:
    _, secret = _tenant()

    async def run() -> list[Any]:
        client = harness.client(secret)
        replies = []
        for _ in range(2):
            raw = await client.embeddings.with_raw_response.create(
                model=MODEL, input="three little words", extra_headers=USE
            )
            await harness.drain()
            replies.append(raw)
        return replies

    miss, hit = harness.run(run)
    assert (miss.headers["x-vlinders-cache"], hit.headers["x-vlinders-cache"]) == ("miss", "hit")
    assert hit.parse().data[0].embedding == miss.parse().data[0].embedding == [0.25, -0.5, 3.0]
    assert len(harness.calls) == 1
    assert [(e.cache, e.prompt_tokens, e.cost) for e in harness.events] == [
        ("miss", 3, 3 * PRICES[0] / 10**6),
        ("hit", 3, 3 * HIT_PRICE / 10**6),
    ]


@pytest.mark.django_db
@pytest.mark.redis
def test_an_entry_never_crosses_organisations(harness: Harness) -> None:
    _, first = _tenant()
    _, second = _tenant()

    async def run() -> list[str]:
        return [await harness.outcome(secret) for secret in (first, second, second, first)]

    assert harness.run(run) == ["miss", "miss", "hit", "hit"]
    assert len(harness.calls) == 2


@pytest.mark.django_db
@pytest.mark.redis
def test_without_the_opt_ins_or_determinism_the_cache_does_not_apply(harness: Harness) -> None:
    _, opted_in = _tenant()
    _, opted_out = _tenant(cache=False)

    async def run() -> list[Any]:
        return [
            # the organisation did not opt in
            *[await harness.chat(opted_out, temperature=0) for _ in range(2)],
            # the request did not ask
            *[await harness.chat(opted_in, temperature=0, headers={}) for _ in range(2)],
            # not deterministic: the default temperature, or two answers
            *[await harness.chat(opted_in) for _ in range(2)],
            *[await harness.chat(opted_in, temperature=0, n=2) for _ in range(2)],
        ]

    replies = harness.run(run)
    assert all("x-vlinders-cache" not in raw.headers for raw, _ in replies)
    assert len(harness.calls) == len(replies)  # every one ran in the engine
    assert all(event.cache is None for event in harness.events)
    assert all(event.price_input_per_mtok == PRICES[0] for event in harness.events)


@pytest.mark.django_db
@pytest.mark.redis
def test_a_changed_model_revision_misses(harness: Harness, cached_model: Any) -> None:
    _, secret = _tenant()
    # The model's engine arguments change (a new revision: the model restarts).
    cached_model.engine_args = {**cached_model.engine_args, "default_max_tokens": 9}
    cached_model.save()
    changed = rendered_config()
    assert changed["models"][0]["model_revision"] != harness.config["models"][0]["model_revision"]

    async def run() -> list[str]:
        outcomes = [await harness.outcome(secret) for _ in range(2)]
        await harness.configure(changed)
        return outcomes + [await harness.outcome(secret) for _ in range(2)]

    assert harness.run(run) == ["miss", "hit", "miss", "hit"]


def _set_ttl(harness: Harness, cached_model: Any, seconds: int) -> None:
    """The catalog model's cache TTL set to ``seconds``; the harness applies the config the
    control plane renders from it."""
    cached_model.cache_ttl_s = seconds
    cached_model.save()
    harness.config = rendered_config()


@pytest.mark.django_db
@pytest.mark.redis
def test_an_entry_expires_after_the_catalogs_ttl(harness: Harness, cached_model: Any) -> None:
    _set_ttl(harness, cached_model, 1)
    _, secret = _tenant()

    async def run() -> list[str]:
        outcomes = []
        for pause in (0, 0, 2.2, 0):
            time.sleep(pause)  # past the TTL of 1 s (Redis expires the key)
            outcomes.append(await harness.outcome(secret))
        return outcomes

    assert harness.run(run) == ["miss", "hit", "miss", "hit"]


@pytest.mark.django_db
@pytest.mark.redis
def test_a_ttl_of_zero_turns_the_cache_off(harness: Harness, cached_model: Any) -> None:
    _set_ttl(harness, cached_model, 0)
    _, secret = _tenant()

    async def run() -> list[Any]:
        return [await harness.chat(secret, temperature=0) for _ in range(2)]

    assert all("x-vlinders-cache" not in raw.headers for raw, _ in harness.run(run))
    assert len(harness.calls) == 2


@pytest.mark.django_db
@pytest.mark.redis
def test_hits_are_still_refused_by_rate_limits(harness: Harness) -> None:
    _, secret = _tenant(requests_per_minute=2)

    refused = harness.run(lambda: harness.refused(secret, 3, lambda error: error.status_code))
    assert refused == ["miss", "hit", 429]
    assert [event.status for event in harness.events] == [200, 200, 429]


@pytest.mark.django_db
@pytest.mark.redis
def test_hits_are_still_refused_by_a_token_budget(harness: Harness) -> None:
    """A hit reserves its token estimate like any request (tokens are tokens, whatever their
    price): the miss reserves 41 (13 prompt bytes, 24 template tokens, max_tokens 4) and uses
    13; the hit's 41 more would pass the budget of 45, so it is refused."""
    _, secret = _tenant(monthly_token_budget=45)

    refused = harness.run(
        lambda: harness.refused(secret, 2, lambda error: error.code, max_tokens=4)
    )
    assert refused == ["miss", "insufficient_quota"]
    assert len(harness.calls) == 1
    assert [event.cache for event in harness.events] == ["miss", "hit"]


def test_the_usage_event_says_what_the_cache_did() -> None:
    event = UsageEvent(
        request_id="req_1",
        org_id="o",
        key_id="k",
        model=MODEL,
        served_model=MODEL,
        endpoint="chat.completions",
        stream=False,
        status=200,
        error_type=None,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        cached_tokens=0,
        cost=Decimal(0),
        latency_ms=1.0,
        ttft_ms=None,
        started_at="2026-12-01T00:00:00Z",
    )
    assert event.to_dict()["cache"] is None
    assert json.loads(json.dumps(event.to_dict()))["cache"] is None
