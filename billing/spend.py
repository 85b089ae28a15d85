"""Month-to-date usage per organisation and per API key, and its reconciliation into the
gateway's Redis budget counters (contract 3, ``docs/limits.md``; ``docs/billing.md``).

Postgres is the authority for spend: the numbers come from the hourly ``UsageRollup`` rows, never
from raw events (those are pruned). Redis only mirrors them so the gateway can enforce monthly
budgets without reading Postgres. Reconciling *overwrites* a month's ``used`` counters with these
numbers through :meth:`Limiter.set_month_used` — the data plane's own limiter, so the Redis key
layout exists in exactly one place; this module imports that pure (Django-free) module and never
builds a limiter key itself.

Tokens are ``prompt_tokens + completion_tokens``: what the gateway settles against a token budget
(cached prompt tokens are part of ``prompt_tokens`` and are not counted twice). Spend is the sum of
the events' ``cost`` (Decimal); the limiter rounds it up to micro-units once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from billing.models import UsageRollup
from inference.serving.limits import Limiter, Scope

logger = logging.getLogger(__name__)

# How many counters are written concurrently (one Redis script call each).
_WRITE_CHUNK = 200


@dataclass(frozen=True, slots=True)
class MonthUsed:
    """Month-to-date usage of one scope: tokens (prompt + completion) and spend (currency)."""

    tokens: int = 0
    spend: Decimal = field(default_factory=lambda: Decimal(0))


@dataclass(slots=True)
class MonthUsage:
    """Usage of one UTC month for some organisations and keys, as read from the rollups.

    ``orgs`` maps an organisation id and ``keys`` a key id (both ``str``) to its usage; a scope
    that was asked for and has no rollup rows is present with zero usage. ``key_orgs`` maps each
    key id to its organisation id.
    """

    month: str
    orgs: dict[str, MonthUsed] = field(default_factory=dict)
    keys: dict[str, MonthUsed] = field(default_factory=dict)
    key_orgs: dict[str, str] = field(default_factory=dict)


# --- months ------------------------------------------------------------------------------------
def month_of(moment: datetime) -> str:
    """The UTC calendar month (``YYYY-MM``) of an aware datetime, as the limiter counts it."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def current_month(now: datetime | None = None) -> str:
    return month_of(now or timezone.now())


def month_range(month: str) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of a ``YYYY-MM`` month in UTC; ``ValueError`` for
    anything else."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"month must be YYYY-MM, not {month!r}") from exc
    if len(month) != 7:
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


# --- reading the rollups -----------------------------------------------------------------------
def _used(row: dict[str, object]) -> MonthUsed:
    prompt = int(row["prompt"] or 0)  # type: ignore[call-overload]
    completion = int(row["completion"] or 0)  # type: ignore[call-overload]
    cost = row["cost"]
    return MonthUsed(
        tokens=prompt + completion,
        spend=cost if isinstance(cost, Decimal) else Decimal(0),
    )


_SUMS = {
    "prompt": Sum("prompt_tokens"),
    "completion": Sum("completion_tokens"),
    "cost": Sum("cost"),
}


def month_usage(
    *, month: str, org_ids: Collection[str] = (), keys: Collection[tuple[str, str]] = ()
) -> MonthUsage:
    """Month-to-date usage of the given organisations and ``(org_id, key_id)`` keys, summed over
    that month's rollups. Two grouped queries, both served by the rollup's
    ``(organization, hour, …)`` unique index."""
    start, end = month_range(month)
    result = MonthUsage(month=month)
    org_set = {str(o) for o in org_ids}
    if org_set:
        result.orgs = dict.fromkeys(org_set, MonthUsed())
        rows = (
            UsageRollup.objects.filter(organization_id__in=org_set, hour__gte=start, hour__lt=end)
            .values("organization_id")
            .annotate(**_SUMS)
        )
        for row in rows:
            result.orgs[str(row["organization_id"])] = _used(row)
    key_pairs = {(str(o), str(k)) for o, k in keys}
    if key_pairs:
        result.key_orgs = {k: o for o, k in key_pairs}
        result.keys = dict.fromkeys(result.key_orgs, MonthUsed())
        rows = (
            UsageRollup.objects.filter(
                organization_id__in={o for o, _ in key_pairs},
                api_key_id__in=set(result.key_orgs),
                hour__gte=start,
                hour__lt=end,
            )
            .values("api_key_id")
            .annotate(**_SUMS)
        )
        for row in rows:
            result.keys[str(row["api_key_id"])] = _used(row)
    return result


def active_scopes(month: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Every organisation and ``(org_id, key_id)`` with at least one rollup row in ``month``."""
    start, end = month_range(month)
    pairs = {
        (str(org), str(key))
        for org, key in UsageRollup.objects.filter(hour__gte=start, hour__lt=end)
        .values_list("organization_id", "api_key_id")
        .distinct()
    }
    return {org for org, _ in pairs}, pairs


# --- writing Redis -----------------------------------------------------------------------------
def _entries(usages: Iterable[MonthUsage]) -> list[tuple[Scope, str, str, MonthUsed]]:
    out: list[tuple[Scope, str, str, MonthUsed]] = []
    for usage in usages:
        out += [("org", ident, usage.month, used) for ident, used in usage.orgs.items()]
        out += [("key", ident, usage.month, used) for ident, used in usage.keys.items()]
    return out


class _Redis:
    """One event loop and one Redis client per process, kept between batches.

    Reconciliation runs after every ingested batch; a fresh loop and client each time cost more
    than the batch's own ingest (new connections for every concurrent script call). Celery's
    prefork children are single-threaded, so one loop per process is safe; a forked child (other
    pid) builds its own instead of inheriting its parent's sockets.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.runner: asyncio.Runner | None = None
        self.clients: dict[str, aioredis.Redis] = {}

    def run(self, url: str, work: Callable[[aioredis.Redis], Coroutine[Any, Any, None]]) -> None:
        if self.pid != os.getpid() or self.runner is None:
            self.pid, self.runner, self.clients = os.getpid(), asyncio.Runner(), {}
        client = self.clients.get(url)
        if client is None:
            client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
            self.clients[url] = client
        self.runner.run(work(client))


_REDIS = _Redis()


def run_redis(work: Callable[[aioredis.Redis], Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` on this process's own event loop and limiter Redis client (the one the
    month counters use; ``billing.prepaid`` writes the prepaid balances through it too)."""
    _REDIS.run(settings.REDIS_URL, work)


async def _write(
    client: aioredis.Redis,
    entries: list[tuple[Scope, str, str, MonthUsed]],
    prefix: str,
    ingested: Mapping[tuple[str, str, str], Sequence[int]],
) -> None:
    limiter = Limiter(client, prefix)
    for i in range(0, len(entries), _WRITE_CHUNK):
        calls = []
        for scope, ident, month, used in entries[i : i + _WRITE_CHUNK]:
            tokens, micros = ingested.get((scope, ident, month), (0, 0))
            calls.append(
                limiter.set_month_used(
                    scope,
                    ident,
                    month,
                    used.tokens,
                    used.spend,
                    ingested_tokens=tokens,
                    ingested_micros=micros,
                )
            )
        await asyncio.gather(*calls)


def write_month_used(
    usages: Iterable[MonthUsage],
    ingested: Mapping[tuple[str, str, str], Sequence[int]] | None = None,
) -> int:
    """Overwrite the limiter's ``used`` counters with ``usages``; returns how many counters were
    written. Raises ``LimiterUnavailable`` when Redis fails (callers decide whether that matters).

    ``ingested`` is what the batch being reconciled newly inserted (``IngestResult.ingested``),
    so the counters keep what the gateway settled but Postgres has not ingested yet
    (``Limiter.set_month_used``). Scopes it names that are not in ``usages`` are not written.

    Synchronous (Celery, after-batch hooks): runs on this process's own event loop and client.
    """
    entries = _entries(usages)
    if entries:
        prefix, counts = settings.VLINDERS_REDIS_PREFIX, dict(ingested or {})
        _REDIS.run(settings.REDIS_URL, lambda client: _write(client, entries, prefix, counts))
    return len(entries)


def reconcile(
    *,
    org_ids: Collection[str] = (),
    keys: Collection[tuple[str, str]] = (),
    months: Collection[str],
) -> list[MonthUsage]:
    """Read the month-to-date usage of these scopes for each month from Postgres and write it to
    the gateway's Redis counters. Returns what was read (so callers can reuse it)."""
    usages = [month_usage(month=m, org_ids=org_ids, keys=keys) for m in sorted(set(months))]
    write_month_used(usages)
    return usages


def reconcile_active(*, now: datetime | None = None) -> MonthUsage:
    """Reconcile every organisation and key with usage in the current UTC month (the beat task).

    Only the current month is reconciled here: the gateway checks budgets against the current
    month alone, so an earlier month's counters limit nothing. Late events of an earlier month
    are still reconciled by the after-batch step, which reconciles every month a batch touched.
    """
    month = current_month(now)
    org_ids, keys = active_scopes(month)
    return reconcile(org_ids=org_ids, keys=keys, months=[month])[0]
