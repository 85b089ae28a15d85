"""Helpers of the usage-ingest tests: events made by the gateway's own dataclass, totals computed
from the events independently of the ingest code, and the rollup totals actually stored."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from billing.models import UsageEvent, UsageRollup
from inference.serving.usage import UsageEvent as GatewayEvent
from inference.serving.usage import utc_iso

# (organization id, hour, key id, model) -> [requests, errors, prompt, completion, cached, cost]
Totals = dict[tuple[str, dt.datetime, str, str], list[Any]]

ORGS = [str(uuid.uuid4()) for _ in range(3)]
KEYS = {org: [str(uuid.uuid4()) for _ in range(2)] for org in ORGS}
MODELS = [("smol", "SmolLM2-135M-Instruct"), ("fast", "qwen-0.5b"), ("embed", "minilm")]
BASE = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)


def make_event(rng: random.Random | None = None, **overrides: Any) -> dict[str, Any]:
    """One event dict exactly as the gateway sends it (``UsageEvent.to_dict``)."""
    return make_gateway_event(rng, **overrides).to_dict()


def make_gateway_event(rng: random.Random | None = None, **overrides: Any) -> GatewayEvent:
    """One event as the gateway builds it, with realistic values (several orgs, keys, models,
    some errors, costs at catalog-like prices)."""
    rng = rng or random.Random()
    org = rng.choice(ORGS)
    asked, served = rng.choice(MODELS)
    status = rng.choice([200] * 8 + [400, 429])
    prompt = rng.randint(1, 4000) if status == 200 else 0
    completion = rng.randint(0, 1000) if status == 200 else 0
    # A price of 0.15 / 0.60 USD per million tokens: 12 decimal places at most, like the gateway.
    cost = (Decimal(prompt) * Decimal("0.15") + Decimal(completion) * Decimal("0.60")) / 10**6
    offset = dt.timedelta(seconds=rng.randint(0, 3 * 3600), microseconds=rng.randint(0, 999_999))
    started = BASE + offset
    fields: dict[str, Any] = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "org_id": org,
        "key_id": rng.choice(KEYS[org]),
        "model": asked,
        "served_model": served if status != 400 else "",
        "endpoint": "embeddings" if asked == "embed" else "chat.completions",
        "stream": rng.random() < 0.5,
        "status": status,
        "error_type": None if status == 200 else "invalid_request_error",
        "finish_reason": "stop" if status == 200 else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": prompt // 4,
        "cost": cost,
        # The prices the cost is at (none where no model was routed), as the gateway sends them.
        "price_input_per_mtok": Decimal("0.15") if status != 400 else None,
        "price_output_per_mtok": Decimal("0.60") if status != 400 else None,
        "latency_ms": rng.uniform(5, 3000),
        "ttft_ms": rng.uniform(1, 200) if status == 200 else None,
        "started_at": utc_iso(started.timestamp()),
        "http_request_id": uuid.uuid4().hex,
    }
    fields.update(overrides)
    if "price_input_per_mtok" not in overrides and fields["price_input_per_mtok"] is not None:
        prompt, completion = fields["prompt_tokens"], fields["completion_tokens"]
        at_prices = (prompt * Decimal("0.15") + completion * Decimal("0.60")) / 10**6
        if Decimal(fields["cost"]) != at_prices:
            # A test that set its own cost gets an event without prices (as a gateway from
            # before the prices were in the event sent them): its cost stays what it said.
            fields["price_input_per_mtok"] = fields["price_output_per_mtok"] = None
    return GatewayEvent(**fields)


def make_events(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_event(rng) for _ in range(count)]


def expected_totals(events: Iterable[dict[str, Any]]) -> Totals:
    """What the rollups must hold for ``events``, each request id counted once (the first)."""
    totals: Totals = {}
    seen: set[str] = set()
    for event in events:
        if event["request_id"] in seen:
            continue
        seen.add(event["request_id"])
        started = dt.datetime.fromisoformat(event["started_at"]).astimezone(dt.UTC)
        hour = started.replace(minute=0, second=0, microsecond=0)
        model = event["served_model"] or event["model"]
        row = totals.setdefault(
            (event["org_id"], hour, event["key_id"], model), [0, 0, 0, 0, 0, Decimal(0)]
        )
        row[0] += 1
        row[1] += event["status"] >= 400
        row[2] += event["prompt_tokens"]
        row[3] += event["completion_tokens"]
        row[4] += event["cached_tokens"]
        row[5] += Decimal(event["cost"])
    return totals


def stored_totals() -> Totals:
    """The rollup rows in the database, in the shape of :func:`expected_totals`."""
    return {
        (str(r.organization_id), r.hour, str(r.api_key_id), r.model): [
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.cost,
        ]
        for r in UsageRollup.objects.all()
    }


def stored_event_ids() -> set[str]:
    return set(UsageEvent.objects.values_list("request_id", flat=True))
