"""The gateway charges the requesting organisation's plan price (the class Serve runs, called
in-process through ASGI, no Ray; the synthetic engine, a labelled test engine, answers; the routes
rendered from the catalog by the control plane's own renderer): a premium organisation pays the
price book's premium price of the model, a standard one the catalog's; the reservation, the settle
and the usage event use the same prices, and the event carries them; ingested, they are the
invoice's unit prices."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from fastapi import FastAPI, Request

from billing import selectors
from billing.ingest import ingest_events
from billing.models import InvoiceLine
from inference.deployment import render_spec
from inference.models import PlanModelPrice
from inference.serving.engines.synthetic import SyntheticEngine
from inference.serving.gateway import Gateway
from inference.serving.spec import DeploymentSpec
from inference.serving.usage import UsageEvent
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

MODEL = "syn-priced"
CATALOG = (Decimal("0.600000"), Decimal("0.800000"))
PREMIUM = (Decimal("0.450000"), Decimal("0.550000"))
MESSAGES = [{"role": "user", "content": "one two three"}]


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(self.fn(*args))


class _Handle:
    def __init__(self, engine: SyntheticEngine) -> None:
        self.complete = _Method(lambda endpoint, body, priority: engine.complete(endpoint, body))


def _tenant(plan: str) -> tuple[Organization, str]:
    org = OrganizationFactory(slug=f"org-{plan}", plan=plan)
    key, secret = services.api_key_create(
        organization=org, name="k", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    return org, secret


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


def test_a_premium_organisation_pays_its_plans_price_and_a_standard_one_the_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLINDERS_KEY_PEPPER", settings.VLINDERS_KEY_PEPPER)
    model = CatalogModelFactory(
        name=MODEL, price_input_per_mtok=CATALOG[0], price_output_per_mtok=CATALOG[1]
    )
    PlanModelPrice.objects.create(
        plan="premium",
        catalog_model=model,
        price_input_per_mtok=PREMIUM[0],
        price_output_per_mtok=PREMIUM[1],
    )
    premium, premium_secret = _tenant("premium")
    standard, standard_secret = _tenant("standard")
    # What the control plane would apply: the gateway's user_config rendered from the catalog.
    config = DeploymentSpec.model_validate(render_spec()).gateway_config().model_dump(mode="json")
    engine = SyntheticEngine(model=MODEL, default_max_tokens=16)
    gateway = Gateway(
        {
            "spec_version": 1,
            "redis_url": settings.REDIS_URL,
            "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
            "broker_url": settings.REDIS_URL,
            "usage_spool_dir": str(tmp_path / "spool"),
            "max_ongoing_requests": 64,
        },
        handle_factory=lambda name: (_Handle(engine), _Handle(engine)),
    )
    events: list[UsageEvent] = []
    reserved: list[tuple[str, int, Decimal]] = []
    settled: list[tuple[int, int, Decimal]] = []
    gateway.usage.emit = events.append  # type: ignore[method-assign]
    reserve, settle = gateway.limiter.reserve, gateway.settles.settle

    async def spy_reserve(**kwargs: Any) -> Any:
        reserved.append((kwargs["org_id"], kwargs["tokens"], kwargs["spend"]))
        return await reserve(**kwargs)

    async def spy_settle(reservation: Any, **kwargs: Any) -> Any:
        settled.append((kwargs["prompt_tokens"], kwargs["completion_tokens"], kwargs["spend"]))
        return await settle(reservation, **kwargs)

    gateway.limiter.reserve = spy_reserve  # type: ignore[method-assign]
    gateway.settles.settle = spy_settle  # type: ignore[method-assign]

    async def run() -> list[Any]:
        await gateway.reconfigure(config)
        replies = []
        for secret in (premium_secret, standard_secret):
            client = _client(gateway, secret)
            replies.append(
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
            )
        while gateway._background:  # the settles run after each response
            await asyncio.gather(*list(gateway._background), return_exceptions=True)
        await gateway.__del__()
        return replies

    replies = asyncio.run(run())
    assert [e.org_id for e in events] == [str(premium.pk), str(standard.pk)]
    for event, reply, prices, (_, tokens, reserve_spend), settle in zip(
        events, replies, (PREMIUM, CATALOG), reserved, settled, strict=True
    ):
        price_in, price_out = prices
        prompt, completion = reply.usage.prompt_tokens, reply.usage.completion_tokens
        cost = (prompt * price_in + completion * price_out) / 10**6
        assert (event.price_input_per_mtok, event.price_output_per_mtok) == prices
        assert event.cost == cost
        assert settle == (prompt, completion, cost)  # the budget is charged what is billed
        # The reservation was estimated at the same prices (its tokens: prompt + max_tokens).
        reserved_prompt = tokens - 7
        assert reserve_spend == (reserved_prompt * price_in + 7 * price_out) / 10**6
        sent = event.to_dict()
        assert (sent["price_input_per_mtok"], sent["price_output_per_mtok"]) == (
            f"{price_in:f}",
            f"{price_out:f}",
        )

    # Billing takes the events as they are and bills them at their own unit prices.
    result = ingest_events([event.to_dict() for event in events])
    assert result.inserted == 2
    period = events[0].started_at[:7]
    for org, prices in ((premium, PREMIUM), (standard, CATALOG)):
        lines = selectors.invoice_draft(organization=org, period=period).lines
        usage = [line for line in lines if line.kind == InvoiceLine.Kind.USAGE]
        assert [(line.unit, line.unit_price_per_mtok) for line in usage] == [
            ("input_tokens", prices[0]),
            ("output_tokens", prices[1]),
        ]
