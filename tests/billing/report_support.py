"""Helpers of the operator report tests (tests/billing/test_reports.py,
tests/console/test_staff_billing.py): random rollups of a month with the expected sums computed
independently of the report code, and finalised invoices written directly (the report only reads
them; how they are finalised is tested in test_invoices.py)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.models import Invoice, InvoiceLine, UsageRollup
from tenants.models import Organization
from tests.billing.usage_data import make_key

MODELS = ("llama-8b", "qwen-0.5b", "mistral-7b", "")  # "" = requests that reached no model
MONTH = "2026-03"
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)


def random_rollups(
    orgs: list[Organization], *, seed: int = 7, per_org: int = 60
) -> dict[str, dict[Any, dict[str, Any]]]:
    """Rollup rows of March 2026 for ``orgs`` (two keys each, random models and hours, costs with
    12 decimal places), plus rows in February and April that must not count. Returns the
    expected sums of March: ``{"org": {id: sums}, "model": {name: sums}, "day": {date: sums}}``
    with ``requests``, ``prompt``, ``completion`` and ``cost``."""
    rng = random.Random(seed)
    expected: dict[str, dict[Any, dict[str, Any]]] = {
        "org": defaultdict(_zero),
        "model": defaultdict(_zero),
        "day": defaultdict(_zero),
    }
    rows = []
    for org in orgs:
        keys = [make_key(org, "a"), make_key(org, "b")]
        seen: set[tuple[Any, ...]] = set()
        for i in range(per_org):
            key, model = rng.choice(keys), rng.choice(MODELS)
            if i % 15 == 0:  # outside March
                hour = rng.choice([START - timedelta(hours=1), END])
            else:
                hour = START + timedelta(hours=rng.randrange(31 * 24))
            if (key.pk, model, hour) in seen:
                continue
            seen.add((key.pk, model, hour))
            requests = rng.randint(1, 50)
            prompt = rng.randint(0, 90_000) if model else 0
            completion = rng.randint(0, 30_000) if model else 0
            cost = Decimal(rng.randint(0, 10**13)) / Decimal(10**12) if model else Decimal(0)
            rows.append(
                UsageRollup(
                    organization_id=org.pk,
                    api_key_id=key.pk,
                    hour=hour,
                    model=model,
                    requests=requests,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cost=cost,
                )
            )
            if START <= hour < END:
                for scope, value in (("org", org.pk), ("model", model), ("day", hour.date())):
                    sums = expected[scope][value]
                    sums["requests"] += requests
                    sums["prompt"] += prompt
                    sums["completion"] += completion
                    sums["cost"] += cost
    UsageRollup.objects.bulk_create(rows)
    return expected


def _zero() -> dict[str, Any]:
    return {"requests": 0, "prompt": 0, "completion": 0, "cost": Decimal(0)}


def finalised_invoice(
    org: Organization,
    *,
    number: int,
    period: str = MONTH,
    status: str = Invoice.Status.OPEN,
    lines: list[tuple[str, str]] = (),  # type: ignore[assignment]
    issued_at: datetime | None = None,
    due_at: datetime | None = None,
) -> Invoice:
    """A finalised invoice with ``lines`` (kind, amount) and its totals as finalisation sets
    them (subtotal exact, total rounded once to cents, half up)."""
    from billing.selectors import CENT, INVOICE_ROUNDING
    from billing.spend import month_range

    start, end = month_range(period)
    subtotal = sum((Decimal(amount) for _, amount in lines), Decimal(0))
    total = subtotal.quantize(CENT, rounding=INVOICE_ROUNDING)
    invoice = Invoice.objects.create(
        organization=org,
        period=period,
        status=status,
        number=number,
        plan=org.plan,
        period_start=start,
        period_end=end,
        subtotal=subtotal,
        total=total,
        rounding=total - subtotal,
        issued_at=issued_at or end + timedelta(hours=2),
        due_at=due_at,
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice, position=i, kind=kind, description=kind, amount=Decimal(amount)
        )
        for i, (kind, amount) in enumerate(lines, start=1)
    )
    return invoice
