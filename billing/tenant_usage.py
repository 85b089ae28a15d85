"""Every organisation with its month-to-date usage, for the operator console's Tenants list
(``console.pages.staff_tenants``).

Contract:

* ``organizations_with_month_usage`` returns a lazy queryset of organisations, each annotated
  with ``mtd_requests``, ``mtd_tokens`` (prompt + completion, what a token budget counts, as in
  ``billing.spend``) and ``mtd_spend`` (the exact ``Decimal`` sum of ``cost``), summed over the
  hourly ``UsageRollup`` rows of one UTC month (the current one unless ``month``); zero for an
  organisation without usage. Never the raw events (they are pruned).
* The figures are correlated subqueries of that one statement, each grouped over the
  organisation's rows of the month and served by the rollups' ``(organization, hour, …)``
  index; nothing loops over organisations in Python. Sorting by a usage column is an
  ``ORDER BY`` of the annotation, so paging a thousand organisations reads one page of rows.
  When sorted by name or date, Postgres evaluates the figures only for the rows of the page
  (it postpones target-list expressions past ``ORDER BY … LIMIT``).
* Portable: plain ORM expressions, so the single-machine SQLite install runs it too.
* Ties are broken by slug (unique), so pages never overlap or skip a row.

The rollups have no reverse relation on ``Organization`` (``related_name="+"``: they outlive the
organisation they name), which is why the figures are subqueries rather than a join.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import (
    BigIntegerField,
    DecimalField,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, Lower

from billing import spend
from billing.models import UsageRollup
from tenants.models import Organization

# What the list may be sorted by: each a name the page offers, the ordering it means ascending.
SORTS: dict[str, tuple[str, ...]] = {
    "name": ("name_lower", "slug"),
    "created": ("created_at", "slug"),
    "requests": ("mtd_requests", "slug"),
    "tokens": ("mtd_tokens", "slug"),
    "spend": ("mtd_spend", "slug"),
}
# Columns whose natural first direction is largest first.
USAGE_SORTS = frozenset({"requests", "tokens", "spend"})

_COUNT: BigIntegerField[int, int] = BigIntegerField()
_MONEY: DecimalField[Decimal, Decimal] = DecimalField(max_digits=24, decimal_places=12)


def _month_sum(expression: Any, start: datetime, end: datetime, output: Any) -> Coalesce:
    """``SUM(expression)`` over the organisation's rollups of ``[start, end)``, 0 without any."""
    rows = (
        UsageRollup.objects.filter(organization_id=OuterRef("pk"), hour__gte=start, hour__lt=end)
        .order_by()
        .values("organization_id")
        .annotate(total=Sum(expression, output_field=output))
        .values("total")
    )
    zero = Value(Decimal(0) if output is _MONEY else 0, output_field=output)
    return Coalesce(Subquery(rows, output_field=output), zero, output_field=output)


def with_month_usage(
    organizations: QuerySet[Organization], *, month: str | None = None
) -> QuerySet[Organization]:
    """``organizations`` annotated with the month's ``mtd_requests``, ``mtd_tokens`` and
    ``mtd_spend`` (see the module docstring)."""
    start, end = spend.month_range(month or spend.current_month())
    return organizations.annotate(
        mtd_requests=_month_sum(F("requests"), start, end, _COUNT),
        mtd_tokens=_month_sum(F("prompt_tokens") + F("completion_tokens"), start, end, _COUNT),
        mtd_spend=_month_sum(F("cost"), start, end, _MONEY),
    )


def organizations_with_month_usage(
    *,
    search: str = "",
    sort: str = "name",
    descending: bool = False,
    month: str | None = None,
) -> QuerySet[Organization]:
    """Every organisation whose name or slug contains ``search`` (any case), with its usage of
    ``month`` (default: the current UTC month), ordered by ``sort`` (a name of ``SORTS``;
    ``ValueError`` for another), largest/latest/last first when ``descending``."""
    if sort not in SORTS:
        raise ValueError(f"Cannot sort organisations by {sort!r}.")
    rows = Organization.objects.all()
    search = search.strip()
    if search:
        rows = rows.filter(Q(name__icontains=search) | Q(slug__icontains=search))
    rows = with_month_usage(rows, month=month).annotate(name_lower=Lower("name"))
    first, *rest = SORTS[sort]
    ordering = [F(first).desc() if descending else F(first).asc()]
    # The tie-breaker (slug) keeps the same direction, so reversing a sort reverses the list.
    ordering += [F(name).desc() if descending else F(name).asc() for name in rest]
    return rows.order_by(*ordering)
