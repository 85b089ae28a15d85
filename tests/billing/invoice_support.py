"""Helpers of the invoice tests: random usage of a month, ingested through the real ingest path,
and the totals computed from the events independently of the invoice code."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

from billing.ingest import ingest_events
from tenants.models import ApiKey, Organization
from tests.billing.metering_support import make_event

# Prices per million tokens (input, output) before and after a change in the middle of the month.
PRICES = {
    "llama-8b": [(Decimal("0.15"), Decimal("0.60")), (Decimal("0.175"), Decimal("0.7"))],
    "qwen-0.5b": [(Decimal("0.02"), Decimal("0.04")), (Decimal("0.025"), Decimal("0.05"))],
    "mistral-7b": [(Decimal("0.123457"), Decimal("0.987654")), (Decimal("0.1"), Decimal("1"))],
    "minilm": [(Decimal("0.01"), Decimal("0")), (Decimal("0.011"), Decimal("0"))],
}
MILLION = Decimal(10**6)


def event_at(
    rng: random.Random,
    org: Organization,
    key: ApiKey,
    started: dt.datetime,
    price_change: Any,
    *,
    legacy: bool = False,
) -> dict[str, Any]:
    """An event as the gateway sends it, with the prices it was served at (``legacy``: as a
    gateway from before the prices were in the event sent it, without them)."""
    model = rng.choice(sorted(PRICES))
    ok = rng.random() < 0.9
    prompt = rng.randint(1, 8000) if ok else 0
    completion = rng.randint(0, 2000) if ok and model != "minilm" else 0
    price_in, price_out = PRICES[model][0 if started < price_change else 1]
    cost = (prompt * price_in + completion * price_out) / MILLION if ok else Decimal(0)
    priced = ok and not legacy
    return make_event(
        rng,
        org_id=str(org.pk),
        key_id=str(key.pk),
        model=model,
        served_model=model if ok else "",
        status=200 if ok else 400,
        error_type=None if ok else "invalid_request_error",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=prompt // 5,
        cost=cost,
        price_input_per_mtok=price_in if priced else None,
        price_output_per_mtok=price_out if priced else None,
        started_at=started.isoformat().replace("+00:00", "Z"),
    )


def month_of_events(
    orgs_keys: list[tuple[Organization, list[ApiKey]]],
    *,
    month_start: dt.datetime,
    count: int,
    seed: int = 1,
    legacy_share: float = 0.0,
) -> list[dict[str, Any]]:
    """``count`` events spread over the month and the organisations' keys, with each model's
    price changing on the 15th at noon; a few in the neighbouring months; ``legacy_share`` of
    them without prices (an older gateway's, replayed from its spool)."""
    rng = random.Random(seed)
    next_month = (month_start + dt.timedelta(days=32)).replace(day=1)
    change = month_start.replace(day=15, hour=12)
    span = (next_month - month_start).total_seconds()
    events = []
    for i in range(count):
        org, keys = orgs_keys[i % len(orgs_keys)]
        if i % 50 == 0:  # outside the month: must not be billed on it
            started = rng.choice([month_start - dt.timedelta(microseconds=1), next_month])
        else:
            started = month_start + dt.timedelta(seconds=rng.uniform(0, span - 1e-3))
        legacy = rng.random() < legacy_share
        events.append(event_at(rng, org, rng.choice(keys), started, change, legacy=legacy))
    return events


def ingest(events: list[dict[str, Any]], batch: int = 500) -> None:
    for i in range(0, len(events), batch):
        ingest_events(events[i : i + batch])


def expected_by_model(
    events: list[dict[str, Any]], org: Organization, start: dt.datetime, end: dt.datetime
) -> dict[str, tuple[int, int, Decimal]]:
    """(input tokens, output tokens, exact cost) per served model of ``org``'s events in the
    month, from the events alone."""
    totals: dict[str, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for event in events:
        started = dt.datetime.fromisoformat(event["started_at"].replace("Z", "+00:00"))
        if event["org_id"] != str(org.pk) or not (start <= started < end):
            continue
        if not event["served_model"]:
            continue
        row = totals[event["served_model"]]
        row[0] += event["prompt_tokens"]
        row[1] += event["completion_tokens"]
        row[2] += Decimal(event["cost"])
    return {model: (a, b, c) for model, (a, b, c) in totals.items()}


# (model, unit, unit price) -> [quantity, amount]; unit and price None for usage without prices.
LineKey = tuple[str, str | None, Decimal | None]


def expected_lines(
    events: list[dict[str, Any]], org: Organization, start: dt.datetime, end: dt.datetime
) -> dict[LineKey, list[Any]]:
    """The usage lines ``org``'s invoice must have, from the events alone: per served model and
    price an input-tokens and an output-tokens line (quantity, amount = quantity x price / 1M),
    one line of the summed cost per model for events without prices; no line of no tokens."""
    lines: dict[LineKey, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for event in events:
        started = dt.datetime.fromisoformat(event["started_at"].replace("Z", "+00:00"))
        if event["org_id"] != str(org.pk) or not (start <= started < end):
            continue
        if not event["served_model"]:
            continue
        model = event["served_model"]
        if event["price_input_per_mtok"] is None:
            row = lines[(model, None, None)]
            row[0] += event["prompt_tokens"] + event["completion_tokens"]
            row[1] += Decimal(event["cost"])
            continue
        for unit, tokens, price in (
            ("input_tokens", event["prompt_tokens"], Decimal(event["price_input_per_mtok"])),
            ("output_tokens", event["completion_tokens"], Decimal(event["price_output_per_mtok"])),
        ):
            if tokens:
                row = lines[(model, unit, price)]
                row[0] += tokens
                row[1] += tokens * price / MILLION
    return dict(lines)
