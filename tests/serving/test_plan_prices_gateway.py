"""The gateway charges the requesting organisation's plan price (the class Serve runs, called
in-process through ASGI, no Ray; the synthetic engine, a labelled test engine, answers; the routes
rendered from the catalog by the control plane's own renderer): a premium organisation pays the
price book's premium price of the model, a standard one the catalog's; the reservation, the settle
and the usage event use the same prices, and the event carries them; ingested, they are the
invoice's unit prices."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing import selectors
from billing.ingest import ingest_events
from billing.models import InvoiceLine
from inference.models import PlanModelPrice
from inference.serving.engines.synthetic import SyntheticEngine
from tenants.models import Organization
from tests.factories import CatalogModelFactory, OrganizationFactory
from tests.serving.gateway_harness import InProcessGateway, publish_key, rendered_config

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

MODEL = "syn-priced"
CATALOG = (Decimal("0.600000"), Decimal("0.800000"))
PREMIUM = (Decimal("0.450000"), Decimal("0.550000"))
MESSAGES = [{"role": "user", "content": "one two three"}]


def _tenant(plan: str) -> tuple[Organization, str]:
    org = OrganizationFactory(slug=f"org-{plan}", plan=plan)
    return org, publish_key(org)


def test_a_premium_organisation_pays_its_plans_price_and_a_standard_one_the_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    harness = InProcessGateway(
        tmp_path,
        monkeypatch,
        SyntheticEngine(model=MODEL, default_max_tokens=16),
        config=rendered_config(),
    )
    events, reserved, settled = harness.events, harness.reserved, harness.settled

    async def run() -> list[Any]:
        replies = []
        for secret in (premium_secret, standard_secret):
            client = harness.client(secret)
            replies.append(
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
            )
        return replies

    replies = harness.run(run)
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
