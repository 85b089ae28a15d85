"""The operator's live platform figures (``/staff/usage/``): per model, over a recent window of
usage events, requests/s, tokens/s, errors by type and time to first token p50/p95, and the
platform's usage revenue month to date.

Contract:

* The window is ``[now - window, now]`` on the events' ``started_at`` (served by the
  ``usage_event_time`` index, so the cost is the window's events, not the table's). Rates are the
  window's totals divided by its length in seconds; events still on their way from the gateway
  (batched, at most a few seconds) are counted when they arrive.
* A model is the served (priced) model, else the one asked for, as the rollups key them. An
  error is an event with ``status >= 400``; its type is the event's ``error_type``, or
  ``http_<status>`` when the gateway sent none.
* TTFT percentiles are continuous (``percentile_cont``: linear interpolation between the two
  nearest ranks) over the events that have a ``ttft_ms``; ``None`` when none has.
* Postgres computes every figure of the window in ONE grouped query (``GROUPING SETS`` over
  model, model and error type, error type, and the whole platform, with ``percentile_cont``).
  SQLite, the single-machine default, has neither, so :func:`_window_portable` takes two plain
  queries: the sums grouped by model and error type (the other groupings are sums of those), and
  the ranks around each percentile found with ``ROW_NUMBER()``, interpolated here exactly as
  Postgres does. Tests run both on Postgres and compare them.
* Revenue month to date is the sum of the month's hourly rollups (one more query; the rollups
  are the dashboards' source of truth, and the raw events are pruned after a retention period).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import DecimalField, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import UsageEvent, UsageRollup
from billing.spend import month_of, month_range

WINDOW = timedelta(minutes=5)
PERCENTILES = (0.5, 0.95)
ZERO = Decimal(0)


@dataclass(slots=True)
class ErrorFigures:
    """One error type's events in the window (of a model, or of the platform)."""

    error_type: str
    count: int
    share: float  # of the group's requests, 0..1
    per_second: float


@dataclass(slots=True)
class WindowFigures:
    """One model's (or, with ``model=None``, the platform's) usage in the window."""

    model: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    window_seconds: float = WINDOW.total_seconds()
    by_error: list[ErrorFigures] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.window_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.window_seconds

    @property
    def error_rate(self) -> float:
        """Errors per request, 0..1 (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0


@dataclass(slots=True)
class PlatformUsage:
    """What the live platform page shows. ``models`` is sorted by requests, busiest first."""

    since: datetime
    until: datetime
    total: WindowFigures
    models: list[WindowFigures]
    errors: list[ErrorFigures]  # the platform's, by type, most frequent first
    month: str
    revenue_mtd: Decimal
    requests_mtd: int
    tokens_mtd: int

    @property
    def window_seconds(self) -> float:
        return (self.until - self.since).total_seconds()


# The window's events, with the two derived keys; ``{where}`` binds since and until.
_EVENTS = """
SELECT COALESCE(NULLIF(served_model, ''), model) AS m,
       CASE WHEN status >= 400 THEN COALESCE(NULLIF(error_type, ''), 'http_' || status)
            ELSE '' END AS e,
       status, prompt_tokens, completion_tokens, ttft_ms
FROM {table} WHERE started_at >= %s AND started_at <= %s
"""

# One pass over the window (Postgres). GROUPING(m, e) has a bit set per column *not* grouped by.
_GROUPED_SQL = """
SELECT GROUPING(m, e), m, e, COUNT(*), COALESCE(SUM(prompt_tokens), 0),
       COALESCE(SUM(completion_tokens), 0), COUNT(*) FILTER (WHERE status >= 400),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms)
FROM ({events}) AS w
GROUP BY GROUPING SETS ((m), (m, e), (e), ())
"""
_BY_MODEL_AND_ERROR, _BY_MODEL, _BY_ERROR, _ALL = 0b00, 0b01, 0b10, 0b11

# The fallback's sums (any database).
_SUMS_SQL = """
SELECT m, e, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
       SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)
FROM ({events}) AS w GROUP BY m, e
"""

# The fallback's percentiles: every event's rank among its model's (and among all) TTFTs, kept
# only next to a percentile's position p * (n - 1); "" is the platform's partition.
_RANKS_SQL = """
SELECT part, rn, n, ttft_ms FROM (
    SELECT m AS part, ttft_ms,
           ROW_NUMBER() OVER (PARTITION BY m ORDER BY ttft_ms) - 1 AS rn,
           COUNT(*) OVER (PARTITION BY m) AS n
    FROM ({events}) AS w WHERE ttft_ms IS NOT NULL
    UNION ALL
    SELECT '' AS part, ttft_ms,
           ROW_NUMBER() OVER (ORDER BY ttft_ms) - 1 AS rn,
           COUNT(*) OVER () AS n
    FROM ({events}) AS w WHERE ttft_ms IS NOT NULL
) AS ranked
WHERE {near}
"""


def _near(p: float) -> str:
    # The two ranks around p * (n - 1) lie within one of it (no floor/ceil: SQLite may lack them).
    return f"(rn >= {p!r} * (n - 1) - 1 AND rn <= {p!r} * (n - 1) + 1)"


def percentile_cont(p: float, value_at: dict[int, float], n: int) -> float | None:
    """Postgres's ``percentile_cont(p)`` over ``n`` sorted values, of which ``value_at`` holds at
    least the ranks ``floor(p*(n-1))`` and ``ceil(p*(n-1))`` (0-based)."""
    if n == 0:
        return None
    position = p * (n - 1)
    low, high = math.floor(position), math.ceil(position)
    first = value_at[low]
    if high == low:
        return first
    return first + (position - low) * (value_at[high] - first)


def _sql(template: str, **parts: str) -> str:
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    return template.format(events=_EVENTS.format(table=table), **parts)


def _error(error_type: str, count: int, requests: int, seconds: float) -> ErrorFigures:
    return ErrorFigures(error_type, count, count / requests if requests else 0.0, count / seconds)


def _finish(
    total: WindowFigures,
    models: dict[str, WindowFigures],
    errors: Iterable[tuple[str | None, str, int]],
) -> tuple[list[WindowFigures], list[ErrorFigures]]:
    """Attach the ``(model or None for the platform, type, count)`` error groups and sort."""
    platform: list[ErrorFigures] = []
    for model, error_type, count in errors:
        group = total if model is None else models[model]
        item = _error(error_type, count, group.requests, group.window_seconds)
        (platform if model is None else group.by_error).append(item)
    for group in [total, *models.values()]:
        group.by_error.sort(key=lambda item: (-item.count, item.error_type))
    platform.sort(key=lambda item: (-item.count, item.error_type))
    total.by_error = platform
    ordered = sorted(models.values(), key=lambda item: (-item.requests, item.model or ""))
    return ordered, platform


def _window_grouped(
    since: datetime, until: datetime
) -> tuple[WindowFigures, list[WindowFigures], list[ErrorFigures]]:
    """The window's figures in one query (Postgres)."""
    seconds = (until - since).total_seconds()
    total = WindowFigures(model=None, window_seconds=seconds)
    models: dict[str, WindowFigures] = {}
    errors: list[tuple[str | None, str, int]] = []
    with connection.cursor() as cursor:
        cursor.execute(_sql(_GROUPED_SQL), [since, until])
        rows = cursor.fetchall()
    for grouping, model, error_type, count, prompt, completion, failed, p50, p95 in rows:
        if grouping in (_BY_MODEL, _ALL):
            group = (
                total
                if grouping == _ALL
                else models.setdefault(model, WindowFigures(model=model, window_seconds=seconds))
            )
            group.requests, group.errors = int(count), int(failed)
            group.prompt_tokens, group.completion_tokens = int(prompt), int(completion)
            group.ttft_p50_ms = None if p50 is None else float(p50)
            group.ttft_p95_ms = None if p95 is None else float(p95)
        elif error_type:  # success rows of the error groupings have the type ""
            errors.append((model if grouping == _BY_MODEL_AND_ERROR else None, error_type, count))
    ordered, platform = _finish(total, models, errors)
    return total, ordered, platform


def _window_portable(
    since: datetime, until: datetime
) -> tuple[WindowFigures, list[WindowFigures], list[ErrorFigures]]:
    """The same figures in two plain queries, for databases without ``GROUPING SETS`` and
    ``percentile_cont`` (SQLite); see the module doc."""
    seconds = (until - since).total_seconds()
    total = WindowFigures(model=None, window_seconds=seconds)
    models: dict[str, WindowFigures] = {}
    by_type: dict[str, int] = defaultdict(int)
    errors: list[tuple[str | None, str, int]] = []
    near = " OR ".join(_near(p) for p in PERCENTILES)
    with connection.cursor() as cursor:
        cursor.execute(_sql(_SUMS_SQL), [since, until])
        sums = cursor.fetchall()
        cursor.execute(_sql(_RANKS_SQL, near=near), [since, until, since, until])
        ranks = cursor.fetchall()
    for model, error_type, count, prompt, completion, failed in sums:
        group = models.setdefault(model, WindowFigures(model=model, window_seconds=seconds))
        for target in (group, total):
            target.requests += int(count)
            target.errors += int(failed)
            target.prompt_tokens += int(prompt)
            target.completion_tokens += int(completion)
        if error_type:
            errors.append((model, error_type, int(count)))
            by_type[error_type] += int(count)
    errors.extend((None, error_type, count) for error_type, count in by_type.items())
    values: dict[str, dict[int, float]] = defaultdict(dict)
    sizes: dict[str, int] = {}
    for part, rank, n, ttft in ranks:
        values[part][int(rank)] = float(ttft)
        sizes[part] = int(n)
    for part, n in sizes.items():
        # "" is the platform's partition; a model named "" cannot exist (model is required).
        group = total if part == "" else models[part]
        group.ttft_p50_ms = percentile_cont(PERCENTILES[0], values[part], n)
        group.ttft_p95_ms = percentile_cont(PERCENTILES[1], values[part], n)
    ordered, platform = _finish(total, models, errors)
    return total, ordered, platform


def _month_to_date(now: datetime) -> tuple[str, Decimal, int, int]:
    month = month_of(now)
    start, end = month_range(month)
    cost = UsageRollup._meta.get_field("cost")
    assert isinstance(cost, DecimalField)
    row = UsageRollup.objects.filter(hour__gte=start, hour__lt=end).aggregate(
        revenue=Coalesce(Sum("cost"), Value(ZERO), output_field=cost),
        requests=Coalesce(Sum("requests"), 0),
        prompt=Coalesce(Sum("prompt_tokens"), 0),
        completion=Coalesce(Sum("completion_tokens"), 0),
    )
    # To the column's 12 places: SQLite hands back its sum with as many as its float had.
    revenue = Decimal(row["revenue"]).quantize(Decimal(1).scaleb(-cost.decimal_places or 0))
    return month, revenue, int(row["requests"]), int(row["prompt"] + row["completion"])


def platform_usage(
    *, now: datetime | None = None, window: timedelta = WINDOW, portable: bool | None = None
) -> PlatformUsage:
    """The live figures of the whole platform as of ``now`` (default: the current time) over the
    last ``window``. Two queries on Postgres (the window, the month's revenue), three elsewhere.
    ``portable`` forces (or refuses) the fallback, for tests; by default only non-Postgres
    databases use it."""
    until = now or timezone.now()
    since = until - window
    if portable is None:
        portable = connection.vendor != "postgresql"
    compute = _window_portable if portable else _window_grouped
    total, models, errors = compute(since, until)
    month, revenue, requests, tokens = _month_to_date(until)
    return PlatformUsage(
        since=since,
        until=until,
        total=total,
        models=models,
        errors=errors,
        month=month,
        revenue_mtd=revenue,
        requests_mtd=requests,
        tokens_mtd=tokens,
    )
