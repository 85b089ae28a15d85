"""The prices in the usage event and the rollup's key (contract 4, migration billing 0004): events
keep the prices they were served at, a price change starts a new rollup row, events without
prices (an older gateway's spool) still ingest, into one price-less row per group, and an event
whose cost its prices do not explain is parked, never stored."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction

from billing import selectors, spend
from billing.ingest import ingest_events
from billing.models import DeadLetterBatch, UsageEvent, UsageRollup
from tests.billing.metering_support import make_event
from tests.billing.usage_data import make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

HOUR = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)
MILLION = Decimal(10**6)


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return make_key(OrganizationFactory(slug="acme"))


def _event(key, *, prompt: int, completion: int, prices: tuple[str, str] | None, **extra: Any):  # type: ignore[no-untyped-def]
    cost = Decimal(0)
    if prices is not None:
        cost = (prompt * Decimal(prices[0]) + completion * Decimal(prices[1])) / MILLION
    else:
        cost = (prompt * Decimal("0.15") + completion * Decimal("0.6")) / MILLION
    fields: dict[str, Any] = {
        "org_id": str(key.organization_id),
        "key_id": str(key.pk),
        "model": "llama",
        "served_model": "llama",
        "status": 200,
        "error_type": None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "cost": cost,
        "price_input_per_mtok": Decimal(prices[0]) if prices else None,
        "price_output_per_mtok": Decimal(prices[1]) if prices else None,
        "started_at": (HOUR + dt.timedelta(minutes=5)).isoformat(),
    }
    fields.update(extra)
    return make_event(**fields)


def _rows() -> list[tuple[Any, ...]]:
    return sorted(
        UsageRollup.objects.values_list(
            "model", "price_input_per_mtok", "price_output_per_mtok", "requests", "cost"
        ),
        key=lambda row: (row[1] is not None, row[1] or 0),
    )


def test_the_event_carries_its_prices_as_decimal_strings(key) -> None:  # type: ignore[no-untyped-def]
    event = _event(key, prompt=1000, completion=10, prices=("0.6", "0.8"))
    assert event["price_input_per_mtok"] == "0.6"
    assert event["price_output_per_mtok"] == "0.8"
    assert event["schema"] == 1
    ingest_events([event])
    stored = UsageEvent.objects.get()
    assert (stored.price_input_per_mtok, stored.price_output_per_mtok) == (
        Decimal("0.6"),
        Decimal("0.8"),
    )
    assert stored.cost == Decimal("0.000608")


def test_a_price_change_within_the_hour_starts_a_new_rollup_row(key) -> None:  # type: ignore[no-untyped-def]
    old = [_event(key, prompt=1000, completion=100, prices=("0.6", "0.8")) for _ in range(3)]
    new = [_event(key, prompt=1000, completion=100, prices=("0.5", "0.7")) for _ in range(2)]
    ingest_events(old[:2] + new[:1])
    ingest_events(old[2:] + new[1:] + old[:1])  # one redelivered
    assert _rows() == [
        ("llama", Decimal("0.5"), Decimal("0.7"), 2, Decimal("0.00114")),
        ("llama", Decimal("0.6"), Decimal("0.8"), 3, Decimal("0.00204")),
    ]
    # Every reader sums the rows of a group: the month's spend is both prices together.
    org_id = str(key.organization_id)
    used = spend.month_usage(month="2026-11", org_ids=[org_id]).orgs[org_id]
    assert used.spend == Decimal("0.00318")
    assert used.tokens == 5 * 1100
    totals = selectors.usage_totals(
        organization=key.organization, start=HOUR, end=HOUR + dt.timedelta(hours=1)
    )
    assert (totals["requests"], totals["cost"]) == (5, Decimal("0.00318"))
    by_model = selectors.usage_by_group(
        organization=key.organization, start=HOUR, end=HOUR + dt.timedelta(hours=1), group="model"
    )
    assert [(row["model"], row["requests"]) for row in by_model] == [("llama", 5)]


def test_events_without_prices_share_one_row_per_group(key) -> None:  # type: ignore[no-untyped-def]
    """An older gateway's events (no price keys at all) and ``null`` prices are the same: one
    row with empty prices, found again by the next batch's upsert (the partial unique constraint
    of usage without prices)."""
    legacy = _event(key, prompt=100, completion=10, prices=None)
    del legacy["price_input_per_mtok"], legacy["price_output_per_mtok"]
    nulls = _event(key, prompt=100, completion=10, prices=None)
    assert nulls["price_input_per_mtok"] is None
    ingest_events([legacy])
    ingest_events([nulls])
    ingest_events([_event(key, prompt=100, completion=10, prices=("0.15", "0.6"))])
    assert _rows() == [
        ("llama", None, None, 2, Decimal("0.000042")),
        ("llama", Decimal("0.15"), Decimal("0.6"), 1, Decimal("0.000021")),
    ]
    assert UsageEvent.objects.filter(price_input_per_mtok__isnull=True).count() == 2


def test_requests_that_ran_no_model_have_no_prices(key) -> None:  # type: ignore[no-untyped-def]
    refused = _event(
        key, prompt=0, completion=0, prices=None, status=404, served_model="", error_type="x"
    )
    ingest_events([refused])
    assert _rows() == [("llama", None, None, 1, Decimal(0))]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"cost": "0.000609"}, "not what the tokens cost at the event's prices"),
        ({"price_output_per_mtok": None}, "one without the other"),
        ({"price_input_per_mtok": 0.6}, "expected a decimal string"),
        ({"price_input_per_mtok": "0.1234567"}, "more than 6 decimal places"),
        ({"price_input_per_mtok": "-1"}, "is not in 0.."),
        ({"price_input_per_mtok": "1000000"}, "is not in 0.."),
        ({"price_input_per_mtok": "NaN"}, "is not in 0.."),
    ],
)
def test_an_event_whose_prices_do_not_explain_its_cost_is_parked(key, change, reason) -> None:  # type: ignore[no-untyped-def]
    good = _event(key, prompt=1000, completion=10, prices=("0.6", "0.8"))
    bad = {**_event(key, prompt=1000, completion=10, prices=("0.6", "0.8")), **change}
    result = ingest_events([good, bad], task_id="batch")
    assert result.inserted == 1
    dead = DeadLetterBatch.objects.get()
    assert dead.events == [bad]
    assert reason in dead.error
    assert _rows() == [("llama", Decimal("0.6"), Decimal("0.8"), 1, Decimal("0.000608"))]


def test_trailing_zeros_of_a_price_are_the_same_price(key) -> None:  # type: ignore[no-untyped-def]
    a = _event(key, prompt=1000, completion=10, prices=("0.6", "0.8"))
    b = _event(key, prompt=1000, completion=10, prices=("0.600000", "0.8000000"))
    ingest_events([a, b])
    assert _rows() == [("llama", Decimal("0.6"), Decimal("0.8"), 2, Decimal("0.001216"))]


def test_the_database_refuses_a_rollup_row_with_one_price(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRollup.objects.create(
            organization_id=key.organization_id,
            api_key=key,
            hour=HOUR,
            model="llama",
            price_input_per_mtok=Decimal("0.6"),
        )
