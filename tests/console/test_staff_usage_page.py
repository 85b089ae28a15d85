"""Operator console: Live platform usage (``console.pages.staff_usage``, figures from
``billing.platform_usage``): staff only; every figure (requests/s, tokens/s, errors by type,
TTFT p50/p95 per model, revenue month to date) equals what is computed here, independently, from
the events and rollups the test writes; the SQLite fallback gives the very figures of the
Postgres query; and the page's queries do not grow with the events in the window."""

from __future__ import annotations

import random
import statistics
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import UsageEvent
from billing.platform_usage import platform_usage
from billing.spend import month_range
from tests.billing.usage_data import add_rollup, make_key

pytestmark = pytest.mark.django_db

PAGE = "/staff/usage/"
LIVE = "/staff/usage/live/"
WINDOW_SECONDS = 300.0
NOT_STAFF = {"owner": 404, "admin": 404, "member": 404, "viewer": 404, "outsider": 404}
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="generate_series and percentile_cont: Postgres"
)


@dataclass
class Made:
    """What the test wrote, as plain values: the window's events and the month's revenue."""

    events: list[dict[str, Any]]
    revenue: Decimal


def _event(org_id: Any, key_id: Any, started_at: datetime, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "organization_id": org_id,
        "api_key_id": key_id,
        "model": "alpha",
        "served_model": "alpha",
        "endpoint": "chat.completions",
        "stream": True,
        "status": 200,
        "error_type": "",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "cost": Decimal("0.000001"),
        "latency_ms": 100.0,
        "ttft_ms": None,
        "started_at": started_at,
    }
    return UsageEvent(**(values | fields))


@pytest.fixture
def made(org) -> Made:  # type: ignore[no-untyped-def]
    """Random events in the last five minutes over three models (one only ever an error, with
    no served model), events just before the window, and rollups this month and last month."""
    rng = random.Random(12)
    key = make_key(org)
    now = timezone.now()
    window: list[dict[str, Any]] = []
    rows: list[UsageEvent] = []
    for _ in range(400):
        kind = rng.random()
        fields: dict[str, Any] = {"model": rng.choice(["alpha", "beta", "beta-alias"])}
        fields["served_model"] = "beta" if fields["model"] == "beta-alias" else fields["model"]
        if kind < 0.10:
            fields |= {"status": 429, "error_type": "rate_limit_exceeded"}
        elif kind < 0.13:
            fields |= {"status": 500, "error_type": ""}  # no type sent: "http_500"
        elif kind < 0.18:
            fields |= {"model": "ghost", "served_model": "", "status": 404}
            fields["error_type"] = "model_not_found"
        else:
            fields["prompt_tokens"] = rng.randint(1, 3000)
            fields["completion_tokens"] = rng.randint(0, 800)
            fields["ttft_ms"] = None if rng.random() < 0.1 else rng.uniform(5, 900)
        started = now - timedelta(seconds=rng.uniform(5, 250))
        rows.append(_event(org.pk, key.pk, started, **fields))
        window.append(fields)
    for seconds in (WINDOW_SECONDS + 60, 3600, 86_400):  # before the window: not counted
        rows.append(_event(org.pk, key.pk, now - timedelta(seconds=seconds), ttft_ms=1.0))
    UsageEvent.objects.bulk_create(rows)

    start, _end = month_range(f"{now:%Y-%m}")
    hour = now.replace(minute=0, second=0, microsecond=0)
    add_rollup(key, hour, cost="1.234567890123", requests=3, prompt=10, completion=5)
    add_rollup(key, start, model="beta", cost="0.000000000001")
    add_rollup(key, start - timedelta(hours=1), cost="1000")  # last month: not counted
    return Made(window, Decimal("1.234567890124"))


def _percentile(values: list[float], p: int) -> float | None:
    """Linear interpolation between the closest ranks (Python's own quantiles)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _expected(events: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    """Per model (and ``None``: the platform), the figures computed from the events here."""
    groups: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        groups[event.get("served_model") or event["model"]].append(event)
        groups[None].append(event)
    out: dict[str | None, dict[str, Any]] = {}
    for model, items in groups.items():
        errors: dict[str, int] = defaultdict(int)
        for item in items:
            if item.get("status", 200) >= 400:
                errors[item.get("error_type") or f"http_{item['status']}"] += 1
        ttfts = sorted(item["ttft_ms"] for item in items if item.get("ttft_ms") is not None)
        tokens = sum(
            item.get("prompt_tokens", 1) + item.get("completion_tokens", 1) for item in items
        )
        out[model] = {
            "requests": len(items),
            "tokens": tokens,
            "errors": sum(errors.values()),
            "by_error": dict(errors),
            "p50": _percentile(ttfts, 50),
            "p95": _percentile(ttfts, 95),
        }
    return out


def _figures(group: Any) -> dict[str, Any]:
    return {
        "requests": group.requests,
        "tokens": group.tokens,
        "errors": group.errors,
        "by_error": {item.error_type: item.count for item in group.by_error},
        "p50": group.ttft_p50_ms,
        "p95": group.ttft_p95_ms,
    }


def _approx(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (pytest.approx(value, rel=1e-9) if name in ("p50", "p95") and value else value)
        for name, value in figures.items()
    }


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


def test_the_pages_are_for_staff_only(assert_matrix) -> None:  # type: ignore[no-untyped-def]
    for url in (PAGE, LIVE):
        assert_matrix(url, {**NOT_STAFF, "staff": 200, "anonymous": 302})


def test_the_page_shows_the_figures_computed_from_the_events(
    staff_client: Client, made: Made
) -> None:
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    usage = response.context["usage"]
    expected = _expected(made.events)

    assert usage.window_seconds == WINDOW_SECONDS
    assert [group.model for group in usage.models] == sorted(
        (m for m in expected if m is not None), key=lambda m: (-expected[m]["requests"], m)
    )
    for group in [*usage.models, usage.total]:
        assert _figures(group) == _approx(expected[group.model]), group.model
        want = expected[group.model]
        assert group.requests_per_second == want["requests"] / WINDOW_SECONDS
        assert group.tokens_per_second == want["tokens"] / WINDOW_SECONDS
        assert group.error_rate == want["errors"] / want["requests"]
    assert {e.error_type: e.count for e in usage.errors} == expected[None]["by_error"]
    assert set(expected[None]["by_error"]) == {
        "rate_limit_exceeded",
        "http_500",
        "model_not_found",
    }
    assert expected["ghost"]["p50"] is None  # only errors: no TTFT
    assert usage.revenue_mtd == made.revenue
    assert (usage.requests_mtd, usage.tokens_mtd) == (4, 15)

    html = unescape(response.content.decode())
    total = expected[None]
    assert f'id="requests-per-second">{total["requests"] / WINDOW_SECONDS:.2f}<' in html
    assert f'id="tokens-per-second">{total["tokens"] / WINDOW_SECONDS:.2f}<' in html
    assert f'id="error-count">{total["errors"]}<' in html
    assert f'id="ttft-p50">{total["p50"]:.1f}<' in html
    assert f'id="ttft-p95">{total["p95"]:.1f}<' in html
    assert f'id="revenue-mtd">{made.revenue}<' in html
    for model in ("alpha", "beta", "ghost"):
        figures = expected[model]
        assert f">{model}</th>" in html
        if figures["p95"] is not None:
            assert f">{figures['p95']:.1f}</td>" in html
    assert 'aria-current="page">Live usage<' in html  # the staff navigation, this section
    assert 'hx-get="/staff/usage/live/"' in html
    assert 'id="orgs"' in html  # the per-organisation table the websocket fills


def test_the_live_partial_has_the_figures_without_the_page(
    staff_client: Client, made: Made
) -> None:
    response = staff_client.get(LIVE, headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert "<html" not in html
    assert 'id="models-table"' in html
    assert 'id="errors-table"' in html
    assert f'id="revenue-mtd">{made.revenue}<' in html
    assert response.context["usage"].total.requests == len(made.events)


def test_an_empty_window_shows_zeros_not_errors(staff_client: Client) -> None:
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert 'id="requests-per-second">0.00<' in html
    assert 'id="ttft-p50">\u2013<' in html
    assert "No requests in the window." in html
    assert 'id="revenue-mtd">0.000000000000<' in html


def test_the_portable_fallback_gives_the_figures_of_the_grouped_query(made: Made) -> None:
    """SQLite has no percentile_cont nor GROUPING SETS: the fallback (plain SQL with
    ROW_NUMBER) must give the same figures; both run here on the test's database."""
    now = timezone.now()
    grouped = platform_usage(now=now, portable=connection.vendor != "postgresql")
    portable = platform_usage(now=now, portable=True)
    assert [g.model for g in portable.models] == [g.model for g in grouped.models]
    for mine, theirs in zip(
        [portable.total, *portable.models], [grouped.total, *grouped.models], strict=True
    ):
        assert _figures(mine) == _approx(_figures(theirs))
        assert [(e.error_type, e.count) for e in mine.by_error] == [
            (e.error_type, e.count) for e in theirs.by_error
        ]
    assert [(e.error_type, e.count) for e in portable.errors] == [
        (e.error_type, e.count) for e in grouped.errors
    ]
    assert _figures(portable.total) == _approx(_expected(made.events)[None])
    assert portable.revenue_mtd == grouped.revenue_mtd == made.revenue


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 20, 21, 101])
def test_percentiles_at_every_rank_position(org, count: int) -> None:  # type: ignore[no-untyped-def]
    """Small groups, where p*(n-1) falls on a rank or between two: both paths interpolate as
    Python's quantiles do."""
    key = make_key(org)
    now = timezone.now()
    rng = random.Random(count)
    values = [round(rng.uniform(1, 100), 3) for _ in range(count)]
    UsageEvent.objects.bulk_create(
        [_event(org.pk, key.pk, now - timedelta(seconds=10), ttft_ms=v) for v in values]
    )
    ordered = sorted(values)
    for portable in (True, False) if connection.vendor == "postgresql" else (True,):
        total = platform_usage(now=now, portable=portable).total
        assert total.ttft_p50_ms == pytest.approx(_percentile(ordered, 50), rel=1e-9)
        assert total.ttft_p95_ms == pytest.approx(_percentile(ordered, 95), rel=1e-9)


# --- scale: 200k events in the window, half a million in the table ----------------------------
SCALE_WINDOW, SCALE_OLDER = 200_000, 300_000
_SCALE_SQL = """
INSERT INTO billing_usageevent (request_id, organization_id, api_key_id, model, served_model,
    endpoint, stream, status, error_type, finish_reason, prompt_tokens, completion_tokens,
    cached_tokens, cost, latency_ms, ttft_ms, started_at, http_request_id, received_at)
SELECT %(prefix)s || i, %(org)s, %(key)s, 'm' || (i %% 4), 'm' || (i %% 4), 'chat.completions',
       false, CASE WHEN i %% 50 = 0 THEN 429 ELSE 200 END,
       CASE WHEN i %% 50 = 0 THEN 'rate_limit_exceeded' ELSE '' END, '', i %% 100, i %% 7, 0,
       0.000001, 10.0, CASE WHEN i %% 50 = 0 THEN NULL ELSE (i %% 1000)::float8 END,
       %(now)s - (%(offset)s + (i %% 240)) * interval '1 second', '', %(now)s
FROM generate_series(1, %(count)s) AS i
"""


def _scale_insert(
    org: Any, key: Any, now: datetime, *, prefix: str, count: int, offset: int
) -> None:
    params = {"prefix": prefix, "org": org.pk, "key": key.pk, "now": now, "count": count}
    with connection.cursor() as cursor:
        cursor.execute(_SCALE_SQL, params | {"offset": offset})


@postgres_only
def test_the_page_stays_a_fixed_number_of_queries_with_200k_events_in_the_window(
    staff_client: Client, org
) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    now = timezone.now()
    _scale_insert(org, key, now, prefix="small-", count=40, offset=5)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get(PAGE).status_code == 200

    _scale_insert(org, key, now, prefix="win-", count=SCALE_WINDOW, offset=5)
    _scale_insert(org, key, now, prefix="old-", count=SCALE_OLDER, offset=3600)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usageevent")
    with CaptureQueriesContext(connection) as many:
        response = staff_client.get(PAGE)
    assert response.status_code == 200
    assert len(many) == len(few)
    with CaptureQueriesContext(connection) as figures:
        usage = platform_usage()
    assert len(figures) == 2  # the window's one grouped query, and the month's revenue

    # The figures, from the generating formula (the 40 small ones are in the window too).
    numbers = [*range(1, 41), *range(1, SCALE_WINDOW + 1)]
    assert usage.total.requests == len(numbers)
    assert usage.total.errors == sum(1 for i in numbers if i % 50 == 0)
    assert usage.total.tokens == sum(i % 100 + i % 7 for i in numbers)
    m1 = sorted(float(i % 1000) for i in numbers if i % 4 == 1 and i % 50 != 0)
    alpha = next(group for group in usage.models if group.model == "m1")
    assert alpha.requests == sum(1 for i in numbers if i % 4 == 1)
    assert alpha.ttft_p50_ms == pytest.approx(_percentile(m1, 50), rel=1e-9)
    assert alpha.ttft_p95_ms == pytest.approx(_percentile(m1, 95), rel=1e-9)
    assert {e.error_type: e.count for e in usage.errors} == {
        "rate_limit_exceeded": usage.total.errors
    }
