"""Prometheus metrics of the gateway, correct across replicas.

Ray Serve runs each replica in its own process, and a scrape through the load balancer reaches
one replica at random, so per-process counters would be wrong. Replicas therefore record into
``prometheus_client``'s multiprocess mode: the Ray cluster is started with
``PROMETHEUS_MULTIPROC_DIR`` set (one directory per node), every replica writes its values there,
and ``/metrics`` on any gateway replica of a node returns the sum over that node's replicas.
Prometheus scrapes each node's gateway (one per node in a cluster) and sums across nodes.

Without ``PROMETHEUS_MULTIPROC_DIR`` (a single process, unit tests) the in-process registry is
served instead.

Labels: ``model`` (the public name asked for, only names that routed), ``endpoint``,
``status``. No label grows with the number of tenants unless the operator switches it on:
``VLINDERS_METRICS_TENANT_LABELS=1`` in the Ray cluster's environment adds ``org`` (the
organisation slug) to the request and token counters, never to histograms. Per-tenant figures
otherwise come from the usage API, which is built for them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

TENANT_LABELS = os.environ.get("VLINDERS_METRICS_TENANT_LABELS", "0") == "1"
_ORG = ["org"] if TENANT_LABELS else []

REQUESTS = Counter(
    "vlinders_requests_total",
    "Requests that reached the gateway, by outcome.",
    ["model", "endpoint", "status", *_ORG],
)
ERRORS = Counter(
    "vlinders_errors_total",
    "Refused or failed requests, by OpenAI error type and code.",
    ["model", "type", "code"],
)
LATENCY = Histogram(
    "vlinders_request_latency_seconds",
    "Time from request to the last byte of the response.",
    ["model", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "vlinders_time_to_first_token_seconds",
    "Time from request to the first token of a stream.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter(
    "vlinders_tokens_total",
    "Tokens metered, by direction (prompt, completion).",
    ["model", "direction", *_ORG],
)
ENGINE_CANCELLED = Counter(
    "vlinders_engine_requests_cancelled_total",
    "Engine requests aborted before they finished (the client went away).",
    ["model"],
)
IN_FLIGHT = Gauge(
    "vlinders_requests_in_flight",
    "Requests being served now.",
    ["model"],
    multiprocess_mode="livesum",
)

ALIAS_REQUESTS = Counter(
    "vlinders_alias_requests_total",
    "Requests to a weighted alias, by the target that served them (docs/deployment-spec.md, "
    "'Weighted aliases'): a canary's share is its served_model's rate over the alias's.",
    ["alias", "served_model", "status"],
)
QUEUE_REJECTIONS = Counter(
    "vlinders_queue_rejections_total",
    "Requests refused with 503 because the model's queue (max_queued_requests) was full.",
    ["model"],
)
TIMEOUTS = Counter(
    "vlinders_request_timeouts_total",
    "Requests cancelled because they ran past the model's request timeout.",
    ["model"],
)
AUTH_ERRORS = Counter(
    "vlinders_gateway_auth_errors_total",
    "Authorisations that failed for the platform's reasons (the snapshot's Redis unreachable, "
    "a malformed record), answered 503.",
    ["reason"],
)
USAGE_SPOOL_BACKLOG = Gauge(
    "vlinders_usage_spool_backlog_batches",
    "Usage batches spooled to disk (the broker was unreachable) and not yet replayed; every "
    "replica of a node sees the node's spool folder, so the node's value is the maximum.",
    multiprocess_mode="max",
)


# Child metrics by (metric, label values): ``labels()`` takes a lock and builds a tuple on each
# call; the label values are routed model names and fixed words, so this stays small.
_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, made once per label values."""
    found = _CHILDREN.get((metric, labels))
    if found is None:
        found = _CHILDREN[(metric, labels)] = metric.labels(*labels)
    return found


def request_finished(
    *,
    model: str,
    endpoint: str,
    status: int,
    org: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Count one finished request and its tokens (``org`` only when tenant labels are on)."""
    extra = (org,) if TENANT_LABELS else ()
    child(REQUESTS, model, endpoint, str(status), *extra).inc()
    if prompt_tokens:
        child(TOKENS, model, "prompt", *extra).inc(prompt_tokens)
    if completion_tokens:
        child(TOKENS, model, "completion", *extra).inc(completion_tokens)


def render() -> tuple[bytes, str]:
    """The metrics page: summed over the node's replicas in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- limiter leases and settles (contract 3, docs/limits.md) ---------------------------------
# No tenant label: these count the limiter's own health, and their series stay fixed in number.

LEASES_RECLAIMED = Counter(
    "vlinders_gateway_leases_reclaimed_total",
    "Reservations whose lease expired and was reclaimed by a reserve (counted as fully used): "
    "their gateway died, or could not renew them.",
)
RESERVE_REPLAYS = Counter(
    "vlinders_gateway_reserve_replays_total",
    "Reserves that Redis had already admitted: the client retried a call whose reply it read too "
    "late (a socket timeout, typically an event loop busy for longer than it). Answered with the "
    "recorded reservation, counted once; a rising rate means a replica is overloaded.",
)
LIMITER_ERRORS = Counter(
    "vlinders_gateway_limiter_errors_total",
    "Limiter calls that failed because Redis did (connection, timeout, full pool, refusal).",
    ["operation"],  # reserve, settle, renew, month_usage, set_month_used
)
SETTLES_JOURNALLED = Counter(
    "vlinders_gateway_settles_journalled_total",
    "Settles that failed and were written to the settle journal for a later retry.",
)
SETTLES_RETRIED = Counter(
    "vlinders_gateway_settles_retried_total",
    "Journalled settles that reached Redis on a retry (the journal's replay).",
)
SETTLE_JOURNAL_BACKLOG = Gauge(
    "vlinders_gateway_settle_journal_backlog",
    "Settles waiting in the settle journal of this replica (its own and those it took over).",
    multiprocess_mode="livesum",
)

# --- response cache (docs/response-cache.md) -------------------------------------------------

RESPONSE_CACHE = Counter(
    "vlinders_response_cache_total",
    "Response-cache outcomes of requests the cache applied to: hit, miss (looked up), stored "
    "(a miss's answer kept), ineligible (asked for, but not deterministic), too_large, error "
    "(Redis failed: a lookup counts as a miss too).",
    ["model", "result"],
)
