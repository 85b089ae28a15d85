"""Helpers of the billing-document tests: a month of rollups and a finalised invoice built
through the real services, and the text of a laid-out PDF.

The text is read from WeasyPrint's own layout of the document (its pages' boxes), the same
layout ``write_pdf`` paints: the project has no PDF parser, and the PDF's text streams are
compressed."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing import services
from billing.models import Invoice
from tenants.models import ApiKey, Organization
from tests.billing.usage_data import add_rollup, make_key

PERIOD = "2026-10"
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("VLINDERS_SCREENSHOTS_DIR", ROOT / "artifacts" / "screenshots"))

# (day of October, hour, key index, model, requests, prompt, completion, cached, cost)
ROLLUPS = [
    (1, 9, 0, "llama-8b", 3, 1200, 300, 100, "0.000360000001"),
    (1, 10, 0, "llama-8b", 2, 800, 200, 0, "0.000240000000"),
    (1, 10, 1, "llama-8b", 1, 100, 50, 0, "0.000045000000"),
    (1, 10, 0, "qwen-0.5b", 5, 5000, 2500, 1000, "0.000200000000"),
    (2, 0, 1, "qwen-0.5b", 7, 70000, 1000, 0, "0.001440000000"),
    (17, 23, 1, "llama-8b", 4, 4_000_000, 1_000_000, 0, "1.200000000000"),
    (31, 23, 0, "minilm", 9, 9000, 0, 0, "0.000090000009"),
]

# Rollups metered with the prices they were served at (USD per million input, output tokens);
# the others are usage of gateways that sent only the cost.
PRICED = {(17, 23): (Decimal("0.150000"), Decimal("0.600000"))}


def make_month(org: Organization) -> list[ApiKey]:
    """Two keys and the rollups above in October 2026 (plus one hour in September and one in
    November, which must stay off both the invoice and the statement)."""
    keys = [make_key(org, "production"), make_key(org, "=cmd|' /C calc'!A0")]
    for day, hour, k, model, requests, prompt, completion, cached, cost in ROLLUPS:
        row = add_rollup(
            keys[k],
            START.replace(day=day, hour=hour),
            model=model,
            requests=requests,
            prompt=prompt,
            completion=completion,
            cached=cached,
            cost=cost,
        )
        if (day, hour) in PRICED:  # metered with its prices: "quantity x unit price" lines
            row.price_input_per_mtok, row.price_output_per_mtok = PRICED[(day, hour)]
            row.save(update_fields=["price_input_per_mtok", "price_output_per_mtok"])
    add_rollup(keys[0], START - dt.timedelta(hours=1), model="llama-8b", cost="5", prompt=1)
    add_rollup(keys[0], START.replace(month=11), model="llama-8b", cost="7", prompt=1)
    return keys


def finalised_invoice(org: Organization, staff: Any) -> Invoice:
    """October's invoice: usage, the standard plan's base fee and a credit note."""
    services.plan_price_set(plan=org.plan, monthly_fee=Decimal("19.00"))
    services.invoice_adjustment_create(
        organization_id=org.pk,
        kind="credit",
        amount=Decimal("2.50"),
        reason="Outage on 3 October",
        actor=staff,
        period=PERIOD,
    )
    invoice = services.invoice_finalise(organization_id=org.pk, period=PERIOD).invoice
    assert invoice is not None
    return invoice


def layout_text(document: Any) -> str:
    """Every piece of text on every page of a WeasyPrint ``Document``, in layout order."""
    out: list[str] = []

    def walk(box: Any) -> None:
        text = getattr(box, "text", None)
        if isinstance(text, str):
            out.append(text)
        for child in getattr(box, "children", None) or []:
            walk(child)

    for page in document.pages:
        walk(page._page_box)
    return " ".join(out)
