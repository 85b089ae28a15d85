"""The control plane's ``/metrics``: django-prometheus' request metrics plus platform gauges
computed when Prometheus scrapes (docs/observability.md lists every metric).

Protection: ``/metrics`` names organisations (the per-tenant month-to-date gauges) and the
platform's revenue, so it is for the platform's scraper only, exactly like the gateway's: the
scraper sends ``Authorization: Bearer $VLINDERS_METRICS_TOKEN`` (the same secret the gateway
checks); without it, or with the wrong one, the URL answers 404 as if it did not exist. A token
rather than an IP allowlist because the web tier runs behind proxies and in pods whose addresses
change, and Prometheus' ``authorization`` block sends a token everywhere the same way.

The platform gauges (:class:`PlatformCollector`) are read at scrape time, never kept in
counters of this process: a web tier of several processes or pods then reports the same value
from each, and Prometheus' ``max`` over instances is the platform's value. Each part is read on
its own; a part that fails (the broker down) is left out of that scrape and
``vlinders_platform_collector_up{part}`` says so, instead of failing the whole page.

Parts and their cost per scrape:

- ``usage_queue``: the Celery broker's usage queue (``LLEN`` and the oldest message): two Redis
  calls;
- ``dead_letters``: one ``COUNT`` over the dead-letter table (small by construction);
- ``ingest``: the newest ingested event (``MAX(started_at)``, served by its index);
- ``month`` (cached for ``VLINDERS_METRICS_MONTH_CACHE_S``, default 60 s): the month's rollups
  grouped by organisation and by model (one scan, the revenue report's query), replica-hours and
  the limiter's month counters of every organisation with usage this month (one pipelined
  ``HMGET`` each) compared with those rollups.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# An organisation outside the largest VLINDERS_METRICS_TOP_ORGS by spend is summed under this
# label value, so the number of series stays bounded whatever the number of tenants.
OTHER_ORGS = "(other)"


# --- the view ----------------------------------------------------------------------------------
def _authorised(request: HttpRequest) -> bool:
    token = settings.VLINDERS_METRICS_TOKEN
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(presented.encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text for the scraper holding ``VLINDERS_METRICS_TOKEN``; 404 for anyone else
    (a JSON 404, as the rest of the site answers an unknown URL's API client)."""
    if not _authorised(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    body = generate_latest(REGISTRY) + generate_latest(platform_registry())
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")


class MetricsEndpointMiddleware(MiddlewareMixin):
    """Answers ``/metrics`` (and nothing else) before the rest of the stack, first in
    ``MIDDLEWARE``.

    Prometheus scrapes each web pod by its IP, so the request's Host is ``<pod IP>:<port>``,
    which ``ALLOWED_HOSTS`` refuses (400), and in production ``SECURE_SSL_REDIRECT`` would send
    the plain-HTTP in-cluster scrape to https. Neither protects this endpoint: it builds no URL
    from the Host header and is guarded by its own token (:func:`metrics_view`), so it is
    answered here, before host validation and the redirect. This is its only route."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.path_info == "/metrics":
            return metrics_view(request)
        return None


_REGISTRY: CollectorRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def platform_registry() -> CollectorRegistry:
    """A registry of its own for :class:`PlatformCollector` (not the global one: a Celery
    worker or a management command that imports this module must never run its queries)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = CollectorRegistry(auto_describe=False)
            _REGISTRY.register(PlatformCollector())
        return _REGISTRY


# --- the collector -----------------------------------------------------------------------------
@dataclass(slots=True)
class MonthFigures:
    """The month-to-date figures of the cached ``month`` part."""

    month: str
    by_model: list[dict[str, Any]] = field(default_factory=list)
    by_org: list[tuple[str, int, int, Decimal]] = field(default_factory=list)  # slug, req, tok, $
    counters_checked: int = 0
    counters_under: int = 0
    counters_over: int = 0


class PlatformCollector(Collector):
    """Platform gauges read at scrape time (module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._month: MonthFigures | None = None
        self._month_at = float("-inf")
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "vlinders_platform_collector_up",
            "1 when this part of the platform gauges was read in this scrape, 0 when it failed "
            "(its gauges are then absent; the control plane's log says why).",
            labels=["part"],
        )
        parts: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
            ("usage_queue", self._usage_queue),
            ("dead_letters", self._dead_letters),
            ("ingest", self._ingest),
            ("month", self._month_metrics),
        ]
        for name, part in parts:
            try:
                metrics = list(part())
            except Exception:
                logger.exception("platform metrics: reading %s failed", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up

    # --- usage queue (the Celery broker) ---

    def _usage_queue(self) -> Iterator[Metric]:
        """Backlog of the usage queue and the age of its oldest message. kombu's Redis
        transport LPUSHes and BRPOPs, so the oldest message is the list's last element; its
        age is that of the earliest ``started_at`` of the events it carries."""
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            queue = settings.VLINDERS_USAGE_QUEUE
            pipe = client.pipeline(transaction=False)
            pipe.llen(queue)
            pipe.lindex(queue, -1)
            length, oldest = pipe.execute()
        finally:
            client.close()
        backlog = GaugeMetricFamily(
            "vlinders_usage_queue_backlog_messages",
            "Usage batches waiting in the Celery broker's usage queue (not yet taken by a worker).",
        )
        backlog.add_metric([], int(length))
        yield backlog
        age = GaugeMetricFamily(
            "vlinders_usage_ingest_lag_seconds",
            "Age of the oldest usage event still waiting in the usage queue (0 when the queue is "
            "empty): how far ingest is behind the gateways.",
        )
        started = _oldest_started_at(oldest) if oldest else None
        age.add_metric([], max(0.0, self.clock() - started) if started is not None else 0.0)
        yield age

    # --- dead letters ---

    def _dead_letters(self) -> Iterator[Metric]:
        from billing.models import DeadLetterBatch

        pending = DeadLetterBatch.objects.filter(status=DeadLetterBatch.Status.PENDING).count()
        gauge = GaugeMetricFamily(
            "vlinders_usage_dead_letter_batches",
            "Usage batches that failed every ingest retry and wait for an operator's replay "
            "(console: staff usage page; manage.py usage_dead_letters).",
        )
        gauge.add_metric([], pending)
        yield gauge

    # --- ingest ---

    def _ingest(self) -> Iterator[Metric]:
        from billing.models import UsageEvent

        newest = UsageEvent.objects.aggregate(newest=Max("started_at"))["newest"]
        gauge = GaugeMetricFamily(
            "vlinders_usage_last_ingested_event_timestamp_seconds",
            "Start time (Unix seconds) of the newest usage event in Postgres; absent before the "
            "first. With traffic flowing, time() minus this is the end-to-end ingest delay.",
        )
        if newest is not None:
            gauge.add_metric([], newest.timestamp())
        yield gauge

    # --- the month: revenue, cost, tokens, per-tenant figures, counter reconciliation ---

    def _month_metrics(self) -> Iterator[Metric]:
        figures = self._month_figures()
        revenue = GaugeMetricFamily(
            "vlinders_revenue_month_to_date_usd",
            "Usage revenue of the current UTC month, by served model (from the usage rollups).",
            labels=["model"],
        )
        tokens = GaugeMetricFamily(
            "vlinders_tokens_month_to_date",
            "Tokens (prompt + completion) of the current UTC month, by served model.",
            labels=["model"],
        )
        cost = GaugeMetricFamily(
            "vlinders_serving_cost_month_to_date_usd",
            "Serving cost of the current UTC month, by model: its replica-hours times the "
            "catalog's cost_per_replica_hour (absent for a model without one).",
            labels=["model"],
        )
        replica_hours = GaugeMetricFamily(
            "vlinders_replica_hours_month_to_date",
            "Replica-hours each model's deployment ran in the current UTC month.",
            labels=["model"],
        )
        for row in figures.by_model:
            revenue.add_metric([row["model"]], float(row["revenue"]))
            tokens.add_metric([row["model"]], row["tokens"])
            replica_hours.add_metric([row["model"]], row["replica_hours"])
            if row["cost"] is not None:
                cost.add_metric([row["model"]], float(row["cost"]))
        yield from (revenue, tokens, cost, replica_hours)

        org_spend = GaugeMetricFamily(
            "vlinders_org_spend_month_to_date_usd",
            "Usage spend of the current UTC month per organisation (slug), for the largest "
            f'VLINDERS_METRICS_TOP_ORGS spenders; the rest are summed under org="{OTHER_ORGS}".',
            labels=["org"],
        )
        org_tokens = GaugeMetricFamily(
            "vlinders_org_tokens_month_to_date",
            "Tokens of the current UTC month per organisation (same organisations as the spend).",
            labels=["org"],
        )
        org_requests = GaugeMetricFamily(
            "vlinders_org_requests_month_to_date",
            "Requests of the current UTC month per organisation (same organisations).",
            labels=["org"],
        )
        for slug, requests, count, spend in figures.by_org:
            org_spend.add_metric([slug], float(spend))
            org_tokens.add_metric([slug], count)
            org_requests.add_metric([slug], requests)
        yield from (org_spend, org_tokens, org_requests)

        checked = GaugeMetricFamily(
            "vlinders_budget_counters_checked",
            "Organisations with usage this month whose limiter month counter (Redis) was "
            "compared with Postgres' rollups in the last check.",
        )
        checked.add_metric([], figures.counters_checked)
        drift = GaugeMetricFamily(
            "vlinders_budget_counters_out_of_reconciliation",
            "Organisations whose limiter month counter of used tokens disagrees with Postgres: "
            "'under' = Redis below Postgres (budgets under-enforced: Redis lost counters and "
            "billing.reconcile_spend has not repaired them), 'over' = Redis above (normal while "
            "settled events wait to be ingested; lasting, it means ingest is stuck).",
            labels=["direction"],
        )
        drift.add_metric(["under"], figures.counters_under)
        drift.add_metric(["over"], figures.counters_over)
        yield from (checked, drift)

    def _month_figures(self) -> MonthFigures:
        ttl = float(getattr(settings, "VLINDERS_METRICS_MONTH_CACHE_S", 60))
        with self._lock:
            now = time.monotonic()
            if self._month is None or now - self._month_at >= ttl:
                self._month = read_month_figures()
                self._month_at = now
            return self._month


def _oldest_started_at(raw: bytes) -> float | None:
    """The earliest ``started_at`` (Unix seconds) of the events in one queued Celery message
    (protocol 2: a JSON envelope, base64 body ``[args, kwargs, embed]``, ``args[0]`` the
    events); ``None`` when it cannot be read (another task's message, a format change)."""
    try:
        envelope = json.loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        events = body[0][0]
        stamps = [
            datetime.fromisoformat(str(e["started_at"]).replace("Z", "+00:00")).timestamp()
            for e in events
            if isinstance(e, dict) and e.get("started_at")
        ]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return min(stamps) if stamps else None


def read_month_figures() -> MonthFigures:
    """Read the ``month`` part from Postgres and the limiter's Redis (module docstring)."""
    from billing import reports
    from tenants.models import Organization

    period = reports.month_period()
    usage = reports.usage_groups(period)
    figures = MonthFigures(month=period.month)
    for model in reports.revenue_by_model(period, usage):
        figures.by_model.append(
            {
                "model": model.model,
                "revenue": model.revenue,
                "tokens": model.tokens,
                "replica_hours": float(model.replica_hours),
                "cost": model.cost,
            }
        )
    top = int(getattr(settings, "VLINDERS_METRICS_TOP_ORGS", 50))
    rows = sorted(
        usage.by_organization.values(), key=lambda r: (r["revenue"], r["tokens"]), reverse=True
    )
    slugs = dict(
        Organization.objects.filter(pk__in=[r["organization_id"] for r in rows[:top]]).values_list(
            "pk", "slug"
        )
    )
    other_requests, other_tokens, other_spend = 0, 0, Decimal(0)
    for row in rows:
        slug = slugs.get(row["organization_id"])
        if slug is None:
            other_requests += row["requests"]
            other_tokens += row["tokens"]
            other_spend += row["revenue"]
        else:
            figures.by_org.append((slug, row["requests"], row["tokens"], row["revenue"]))
    if len(rows) > len(figures.by_org):
        figures.by_org.append((OTHER_ORGS, other_requests, other_tokens, other_spend))

    # Reconciliation: the limiter's used-token counter of each organisation with usage this
    # month against the rollups, the same figures billing.reconcile_spend writes.
    used = {str(r["organization_id"]): r["tokens"] for r in rows}
    counters = _limiter_used_tokens(list(used), period.month)
    figures.counters_checked = len(counters)
    for org_id, redis_tokens in counters.items():
        if redis_tokens < used[org_id]:
            figures.counters_under += 1
        elif redis_tokens > used[org_id]:
            figures.counters_over += 1
    return figures


def _limiter_used_tokens(org_ids: list[str], month: str) -> dict[str, int]:
    """The limiter's used-token counter of each organisation for ``month`` (0 when absent),
    read through the data plane's own ``Limiter`` so its key layout stays in one place."""
    if not org_ids:
        return {}
    import asyncio

    from billing import spend
    from inference.serving.limits import Limiter

    out: dict[str, int] = {}

    async def read(client: Any) -> None:
        limiter = Limiter(client, settings.VLINDERS_REDIS_PREFIX)
        results = await asyncio.gather(
            *(limiter.month_usage("org", org, month=month) for org in org_ids)
        )
        for org, usage in zip(org_ids, results, strict=True):
            out[org] = int(usage.used_tokens)

    spend.run_redis(read)
    return out
