"""Writes of the price book's per-plan model prices (``PlanModelPrice``; docs/billing.md, "Price
book"), for the management API. The admin edits the same rows through its inline formset.

A plan's prices of a model override the catalog's for the organisations on that plan. Like the
catalog's own prices, they reach the gateway with the next apply of the deployment spec
(``models[].plan_prices``), in place; requests served before keep the prices their usage events
carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from inference.models import CatalogModel, PlanModelPrice
from tenants.plans import Plan


def plan_prices_set(*, model: CatalogModel, prices: Iterable[Mapping[str, Any]]) -> None:
    """Make ``prices`` (each ``plan``, ``price_input_per_mtok``, ``price_output_per_mtok``) the
    model's overrides: plans listed are set, plans not listed lose theirs. One row per plan;
    prices are non-negative decimals."""
    wanted: dict[str, tuple[Decimal, Decimal]] = {}
    for row in prices:
        plan = row["plan"]
        if plan not in Plan.values:
            raise ValidationError({"plan_prices": f"Unknown plan {plan!r}."})
        if plan in wanted:
            raise ValidationError({"plan_prices": f"The plan {plan!r} is listed twice."})
        pair = (Decimal(row["price_input_per_mtok"]), Decimal(row["price_output_per_mtok"]))
        if min(pair) < 0:
            raise ValidationError({"plan_prices": "Prices cannot be negative."})
        wanted[plan] = pair
    with transaction.atomic():
        PlanModelPrice.objects.filter(catalog_model=model).exclude(plan__in=list(wanted)).delete()
        for plan, (price_in, price_out) in wanted.items():
            PlanModelPrice.objects.update_or_create(
                catalog_model=model,
                plan=plan,
                defaults={"price_input_per_mtok": price_in, "price_output_per_mtok": price_out},
            )
