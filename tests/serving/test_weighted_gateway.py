"""A weighted alias through the gateway class Serve runs, called in-process through ASGI (no Ray),
with the routes rendered from the catalog by the control plane's own renderer: each request is
served by the target the split chose, and everything about it is that target's: the response's
``model`` (each stream chunk's too), the prices reserved and billed, the usage event's
``served_model``, the alias metric. The synthetic engine (a labelled test engine) answers.

The same through a real Ray Serve gateway, 2,000 requests: ``test_weighted_aliases_e2e.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY

from inference import services as catalog_services
from inference.deployment import deployment_name, render_spec
from inference.models import ModelAlias, Visibility
from inference.serving.engines.synthetic import SyntheticEngine
from inference.serving.gateway import Gateway
from inference.serving.spec import DeploymentSpec
from inference.serving.usage import UsageEvent
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

MESSAGES = [{"role": "user", "content": "one two three"}]
PRICES = {
    "chat-v1": (Decimal("1.000000"), Decimal("2.000000")),
    "chat-v2": (Decimal("3.000000"), Decimal("5.000000")),
}


class _Stream:
    """A Serve streaming response's shape: ``__anext__`` gives lists of chunks; ``cancel``."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        return [await self.chunks.__anext__()]

    def cancel(self) -> None:
        pass


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class _Handle:
    """One model's handle: its own synthetic engine, counting the requests that reached it."""

    def __init__(self, engine: SyntheticEngine, served: Counter[str]) -> None:
        def complete(endpoint: Any, body: dict[str, Any], priority: int) -> Any:
            served[engine.model] += 1
            return asyncio.get_running_loop().create_task(engine.complete(endpoint, body))

        def stream(endpoint: Any, body: dict[str, Any], priority: int) -> _Stream:
            served[engine.model] += 1
            return _Stream(engine.stream(endpoint, body).__aiter__())

        self.complete = _Method(complete)
        self.stream = _Method(stream)


def _tenant(org: Organization, **key_options: Any) -> str:
    key, secret = services.api_key_create(
        organization=org, name="k", created_by=None, actor_role=Role.OWNER, **key_options
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    return secret


def _client(gateway: Gateway, secret: str) -> openai.AsyncOpenAI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await gateway.handle(request, "chat.completions")

    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=secret,
        max_retries=0,
        http_client=httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ),
    )


def _config() -> dict[str, Any]:
    """What the control plane would apply: the gateway's user_config rendered from the catalog."""
    return DeploymentSpec.model_validate(render_spec()).gateway_config().model_dump(mode="json")


def _alias_count(alias: str, served: str) -> float:
    """``vlinders_alias_requests_total`` of one alias and target (this process's registry)."""
    return float(
        REGISTRY.get_sample_value(
            "vlinders_alias_requests_total",
            {"alias": alias, "served_model": served, "status": "200"},
        )
        or 0.0
    )


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Counter[str]]:
    monkeypatch.setenv("VLINDERS_KEY_PEPPER", settings.VLINDERS_KEY_PEPPER)
    served: Counter[str] = Counter()
    handles = {
        deployment_name(name): _Handle(SyntheticEngine(model=name, default_max_tokens=4), served)
        for name in PRICES
    }
    gateway = Gateway(
        {
            "spec_version": 1,
            "redis_url": settings.REDIS_URL,
            "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
            "broker_url": settings.REDIS_URL,
            "usage_spool_dir": str(tmp_path / "spool"),
            "max_ongoing_requests": 64,
        },
        handle_factory=lambda name: (handles[name], handles[name]),
    )
    return gateway, served


@pytest.fixture
def catalog() -> tuple[Organization, Organization]:
    """chat-v1 (public) and chat-v2 (restricted to ``insider``), and ``chat`` at 50/50."""
    insider = OrganizationFactory(slug="insider")
    outsider = OrganizationFactory(slug="outsider")
    stable = CatalogModelFactory(
        name="chat-v1",
        price_input_per_mtok=PRICES["chat-v1"][0],
        price_output_per_mtok=PRICES["chat-v1"][1],
    )
    canary = CatalogModelFactory(
        name="chat-v2",
        price_input_per_mtok=PRICES["chat-v2"][0],
        price_output_per_mtok=PRICES["chat-v2"][1],
        visibility=Visibility.RESTRICTED,
    )
    canary.organizations.set([insider])
    catalog_services.model_alias_create(
        name="chat", target=stable, weight=50, splits=[(canary, 50)]
    )
    return insider, outsider


async def _settle(gateway: Gateway) -> None:
    while gateway._background:  # the settles run after each response
        await asyncio.gather(*list(gateway._background), return_exceptions=True)


def test_each_request_is_the_served_targets_in_every_respect(gateway, catalog) -> None:
    gw, served = gateway
    insider, outsider = catalog
    insider_secret, outsider_secret = _tenant(insider), _tenant(outsider)
    events: list[UsageEvent] = []
    gw.usage.emit = events.append  # type: ignore[method-assign]
    before = {name: _alias_count("chat", name) for name in PRICES}
    config = _config()

    async def run() -> dict[str, Any]:
        await gw.reconfigure(config)
        out: dict[str, Any] = {}
        client = _client(gw, insider_secret)
        out["replies"] = [
            await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
            for _ in range(120)
        ]
        # Streamed: every chunk (and the usage chunk) names the served target.
        out["streams"] = []
        for _ in range(20):
            chunks = await client.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            out["streams"].append([chunk async for chunk in chunks])
        # The same user: the same target every time.
        out["alice"] = {
            (
                await client.chat.completions.create(
                    model="chat", messages=MESSAGES, max_tokens=1, user="alice"
                )
            ).model
            for _ in range(15)
        }
        # The outsider may not use the canary: the stable target serves all of its requests.
        other = _client(gw, outsider_secret)
        out["outsider"] = Counter(
            [
                (
                    await other.chat.completions.create(
                        model="chat", messages=MESSAGES, max_tokens=1, user=f"u{i}"
                    )
                ).model
                for i in range(40)
            ]
        )
        await _settle(gw)
        await gw.__del__()
        return out

    out = asyncio.run(run())
    replies = out["replies"]
    models = Counter(reply.model for reply in replies)
    assert set(models) == {"chat-v1", "chat-v2"}, models  # both arms served (50/50 of 120)
    for stream in out["streams"]:
        assert {chunk.model for chunk in stream} in ({"chat-v1"}, {"chat-v2"})
        assert stream[-1].usage is not None
    assert len(out["alice"]) == 1
    assert out["outsider"] == Counter({"chat-v1": 40})

    # The usage events: asked for the alias, served by the target the response named, charged
    # that target's prices.
    assert len(events) == 120 + 20 + 15 + 40
    by_request = events[:120]
    for event, reply in zip(by_request, replies, strict=True):
        assert event.model == "chat"
        assert event.served_model == reply.model
        price_in, price_out = PRICES[reply.model]
        assert (event.price_input_per_mtok, event.price_output_per_mtok) == (price_in, price_out)
        assert (
            event.cost
            == (event.prompt_tokens * price_in + event.completion_tokens * price_out) / 10**6
        )
    # The engines saw exactly what the responses say.
    all_models = [r.model for r in replies] + [s[0].model for s in out["streams"]]
    all_models += list(out["alice"]) * 15 + ["chat-v1"] * 40
    assert served == Counter(all_models)
    # The alias metric counts each request under the target that served it.
    after = {name: _alias_count("chat", name) for name in PRICES}
    assert after["chat-v2"] - before["chat-v2"] == served["chat-v2"]
    assert after["chat-v1"] - before["chat-v1"] == served["chat-v1"]


def test_a_weight_of_zero_drains_the_target_in_place(gateway, catalog) -> None:
    gw, served = gateway
    insider, _ = catalog
    secret = _tenant(insider)
    gw.usage.emit = lambda event: None  # type: ignore[method-assign]

    async def burst(n: int) -> Counter[str]:
        client = _client(gw, secret)
        return Counter(
            [
                (
                    await client.chat.completions.create(
                        model="chat", messages=MESSAGES, max_tokens=1
                    )
                ).model
                for _ in range(n)
            ]
        )

    # The two configs the control plane would apply: 50/50, then the canary drained (rendered
    # here: the ORM is not for the event loop).
    split = _config()
    alias = ModelAlias.objects.get(name="chat")
    catalog_services.model_alias_splits_set(
        alias=alias, weight=100, splits=[(alias.splits.get().catalog_model, 0)]
    )
    drained = _config()
    assert drained["aliases"][0]["targets"][1] == {"model": "chat-v2", "weight": 0}

    async def run() -> tuple[Counter[str], Counter[str]]:
        await gw.reconfigure(split)
        first = await burst(60)
        handles = dict(gw.handles)
        await gw.reconfigure(drained)  # in place: the same handles, no restart
        assert gw.handles == handles
        canary_before = served["chat-v2"]
        second = await burst(100)
        assert served["chat-v2"] == canary_before  # not one request reached the drained target
        await _settle(gw)
        await gw.__del__()
        return first, second

    first, second = asyncio.run(run())
    assert first["chat-v2"] > 0
    assert second == Counter({"chat-v1": 100})


def test_a_key_allowed_the_alias_is_served_by_its_targets_and_only_the_alias(
    gateway, catalog
) -> None:
    """A key's allowed models name public names: a key allowed only ``chat`` is served by either
    target through the alias (the split checks the organisation's models, not the key's), and
    may not call a target by its own name; a key allowed only a target may not call the alias."""
    gw, _ = gateway
    insider, _ = catalog
    alias_only = _tenant(insider, allowed_models=["chat"])
    target_only = _tenant(insider, allowed_models=["chat-v1"])
    gw.usage.emit = lambda event: None  # type: ignore[method-assign]
    config = _config()

    async def run() -> tuple[Counter[str], list[int]]:
        await gw.reconfigure(config)
        client = _client(gw, alias_only)
        served = Counter(
            [
                (
                    await client.chat.completions.create(
                        model="chat", messages=MESSAGES, max_tokens=1
                    )
                ).model
                for _ in range(60)
            ]
        )
        refused = []
        for secret, model in ((alias_only, "chat-v2"), (target_only, "chat")):
            try:
                await _client(gw, secret).chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=1
                )
            except openai.PermissionDeniedError as error:
                refused.append(error.status_code)
        await _settle(gw)
        await gw.__del__()
        return served, refused

    served, refused = asyncio.run(run())
    assert set(served) == {"chat-v1", "chat-v2"}, served
    assert refused == [403, 403]
