"""Invoice lines with unit prices (docs/billing.md, "Invoices"): per served model and price an
input-tokens and an output-tokens line (quantity x unit price = amount, exactly), usage metered
without prices as one amount per model, then the base fee, the usage paid from prepaid credit and
the adjustments; and their sum is the sum of the events' cost to the 12th decimal place, with
prices changing mid-month, old events without prices mixed in, through finalisation and the API."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from billing import selectors, services
from billing.ingest import ingest_events
from billing.models import Invoice, InvoiceLine
from tenants.models import BillingMode
from tests.billing.invoice_support import (
    MILLION,
    expected_lines,
    ingest,
    month_of_events,
)
from tests.billing.metering_support import make_event
from tests.billing.usage_data import make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

PERIOD = "2026-10"
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _org(slug: str, **fields: Any) -> Any:
    return OrganizationFactory(slug=slug, name=slug, plan="standard", created_at=START, **fields)


def _usage(lines: list[InvoiceLine]) -> list[InvoiceLine]:
    return [line for line in lines if line.kind == InvoiceLine.Kind.USAGE]


def _line_key(line: InvoiceLine) -> tuple[str, str | None, Decimal | None]:
    return (line.model, line.unit or None, line.unit_price_per_mtok)


def _priced(org, key, started: dt.datetime, prompt: int, completion: int, prices):  # type: ignore[no-untyped-def]
    price_in, price_out = (Decimal(p) for p in prices)
    return make_event(
        org_id=str(org.pk),
        key_id=str(key.pk),
        model="llama-8b",
        served_model="llama-8b",
        status=200,
        error_type=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=0,
        cost=(prompt * price_in + completion * price_out) / MILLION,
        price_input_per_mtok=price_in,
        price_output_per_mtok=price_out,
        started_at=started.isoformat(),
    )


def test_lines_are_quantity_times_unit_price_and_sum_to_the_events_cost_exactly() -> None:
    """Thousands of random events, four models whose prices change on the 15th, a tenth of them
    from a gateway that sent no prices: every line is what the events say, and the lines add up
    to the events' cost to the 12th decimal place (no rounding before the total)."""
    orgs = [_org(f"lines{i}") for i in range(2)]
    orgs_keys = [(org, [make_key(org, f"k{j}") for j in range(3)]) for org in orgs]
    events = month_of_events(orgs_keys, month_start=START, count=4000, seed=5, legacy_share=0.1)
    ingest(events)
    for org in orgs:
        expected = expected_lines(events, org, START, END)
        usage = _usage(selectors.invoice_draft(organization=org, period=PERIOD).lines)
        got = {_line_key(line): line for line in usage}
        assert len(got) == len(usage)  # one line per model, unit and price
        assert set(got) == set(expected)
        for key, (quantity, amount) in expected.items():
            line = got[key]
            assert line.amount == amount
            if line.unit:  # priced: quantity x unit price / 1M, exactly
                assert line.quantity == quantity
                assert line.amount == line.quantity * line.unit_price_per_mtok / MILLION
                assert line.input_tokens + line.output_tokens == quantity
            else:  # without prices: the amount alone, as before
                assert (line.quantity, line.unit_price_per_mtok) == (0, None)
                assert line.input_tokens + line.output_tokens == quantity
        # Each model has two prices this month (the change on the 15th), in the order charged.
        llama = [line.unit_price_per_mtok for line in usage if line.model == "llama-8b"]
        assert llama == [None, Decimal("0.15"), Decimal("0.60"), Decimal("0.175"), Decimal("0.7")]
        cost_of_events = sum(
            (
                Decimal(e["cost"])
                for e in events
                if e["org_id"] == str(org.pk)
                and START <= dt.datetime.fromisoformat(e["started_at"]) < END
            ),
            Decimal(0),
        )
        assert sum((line.amount for line in usage), Decimal(0)) == cost_of_events
        # Requests are counted once per model, not once per line (a model's refused requests,
        # kept under the name asked for, are in its price-less group).
        assert sum(line.requests for line in usage) == sum(
            1
            for e in events
            if e["org_id"] == str(org.pk)
            and START <= dt.datetime.fromisoformat(e["started_at"]) < END
        )


def test_finalisation_keeps_the_unit_prices_and_a_later_price_change_touches_nothing() -> None:
    org = _org("final")
    key = make_key(org)
    ingest_events(
        [
            _priced(org, key, START + dt.timedelta(days=2), 1_000_000, 10, ("0.6", "0.8")),
            _priced(org, key, START + dt.timedelta(days=20), 3, 1_000_001, ("0.5", "0.700001")),
        ]
    )
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    stored = [
        (line.unit, line.quantity, line.unit_price_per_mtok, line.amount)
        for line in invoice.lines.order_by("position")
    ]
    assert stored == [
        ("input_tokens", 1_000_000, Decimal("0.6"), Decimal("0.6")),
        ("output_tokens", 10, Decimal("0.8"), Decimal("0.000008")),
        ("input_tokens", 3, Decimal("0.5"), Decimal("0.0000015")),
        ("output_tokens", 1_000_001, Decimal("0.700001"), Decimal("0.700001700001")),
    ]
    assert invoice.subtotal == Decimal("1.300011200001")
    assert invoice.total == Decimal("1.30")
    assert [line.description for line in invoice.lines.order_by("position")][:2] == [
        "llama-8b: 1,000,000 input tokens at 0.600000 USD per million",
        "llama-8b: 10 output tokens at 0.800000 USD per million",
    ]


def test_a_prepaid_organisation_sees_the_usage_paid_from_its_credit() -> None:
    """Prepaid from the 10th: the whole month's usage is on the invoice, the part charged to
    the balance (``billing.prepaid.usage_in``: from ``prepaid_since``) comes off it, after the
    base fee and before the adjustments."""
    since = START + dt.timedelta(days=10)
    org = _org("pre", billing_mode=BillingMode.PREPAID, prepaid_since=since)
    key = make_key(org)
    before = _priced(org, key, START + dt.timedelta(days=3), 1000, 100, ("0.6", "0.8"))
    after = _priced(org, key, since + dt.timedelta(hours=5), 2000, 300, ("0.6", "0.8"))
    ingest_events([before, after])
    services.plan_price_set(plan="standard", monthly_fee=Decimal("10.00"))
    services.invoice_adjustment_create(
        organization_id=org.pk,
        period=PERIOD,
        kind="charge",
        amount=Decimal("1.00"),
        reason="x",
        actor=None,
    )
    draft = selectors.invoice_draft(organization=org, period=PERIOD)
    assert [line.kind for line in draft.lines] == [
        "usage",
        "usage",
        "base_fee",
        "prepaid",
        "charge",
    ]
    prepaid_line = draft.lines[3]
    assert prepaid_line.amount == -Decimal(after["cost"])
    assert prepaid_line.description == "Paid from prepaid credit, 2026-10"
    assert draft.invoice.subtotal == Decimal(before["cost"]) + Decimal("11.00")


def test_the_api_shows_unit_quantity_and_unit_price(as_owner, org) -> None:  # type: ignore[no-untyped-def]
    org.created_at = START
    org.save()
    key = make_key(org)
    ingest_events([_priced(org, key, START + dt.timedelta(days=1), 1234, 56, ("0.6", "0.8"))])
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert isinstance(invoice, Invoice)
    detail = as_owner.get(f"/api/v1/orgs/{org.slug}/invoices/{invoice.number}/").json()
    assert [
        (line["unit"], line["quantity"], line["unit_price_per_mtok"], line["amount"])
        for line in detail["lines"]
    ] == [
        ("input_tokens", 1234, "0.600000", "0.000740400000"),
        ("output_tokens", 56, "0.800000", "0.000044800000"),
    ]
    assert detail["subtotal"] == "0.000785200000"
