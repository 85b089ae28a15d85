"""Console pages: server render time of the Usage and Requests pages with a year of data.

Builds one organisation with ``--keys`` API keys (500) and ``--events`` usage events (1,000,000)
spread over the last 365 days (a few keys busy, most of them used most days; six models; about
5% errors), written with ``COPY``, and their hourly rollups computed from them in one
``INSERT … SELECT … GROUP BY`` with the ingest's rules (the served model, else the asked one;
``status >= 400`` is an error); the totals are checked against the events. Then it signs the
owner in with Django's test ``Client`` and asks each page ``--repeat`` times (after one warm-up),
reporting the median and the slowest server time (the request through every middleware, the
queries and the template, without a network or a browser):

* Usage: the current month by day, the last 365 days by day, by day grouped by key and by model,
  the last 31 days by hour grouped by key, and the CSV export of a year by day and key;
* Requests: the first page, filtered by a key, by a model, by errors only, a date range, and a
  deep page (20 pages of ``Older`` links in, then a page 60 days back).

    .venv/bin/python bench/console_pages.py [--events 1000000] [--keys 500] [--repeat 7]
    .venv/bin/python bench/console_pages.py --reuse   # keep the data of an earlier --keep run

Prints a table and writes bench/results/console_pages.json. Needs Postgres (DATABASE_URL's
server, default postgres://postgres@127.0.0.1:5432); the data goes in its own database,
``vl_bench``, dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from bench_db import throwaway_database
from common import RESULTS, markdown_table, run_header, write_results

BENCH_DB = "vl_bench"
SLUG = "bench"
# (asked name, served catalog model, USD per million input tokens, per million output tokens)
MODELS = [
    ("smol", "SmolLM2-135M-Instruct", "0.05", "0.10"),
    ("qwen", "qwen2.5-7b-instruct", "0.20", "0.60"),
    ("llama", "llama-3.1-8b-instruct", "0.18", "0.50"),
    ("gpt-4", "llama-3.3-70b-instruct", "0.60", "1.80"),
    ("mistral", "mistral-small-24b", "0.30", "0.90"),
    ("embed", "all-MiniLM-L6-v2", "0.02", "0"),
]
MODEL_WEIGHTS = [30, 25, 20, 10, 10, 5]


def build_data(*, events: int, keys: int, now: datetime, seed: int = 1) -> dict[str, Any]:
    """The organisation, its owner, ``keys`` keys, ``events`` events over the 365 days before
    ``now`` and their rollups. Returns what was built and how long each part took."""
    from django.contrib.auth.models import User
    from django.db import connection

    from billing.models import UsageEvent, UsageRollup
    from tenants.models import ApiKey, Membership, Organization, Role

    rng = random.Random(seed)  # noqa: S311 (test data)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    org = Organization.objects.create(name="Bench", slug=SLUG)
    owner = User.objects.create_user("bench-owner", "owner@example.test", "x")
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    api_keys = ApiKey.objects.bulk_create(
        [
            ApiKey(
                organization=org,
                name=f"service-{i:03d}",
                prefix=uuid.uuid4().hex[:16],
                last_four=f"{i:04d}"[-4:],
                secret_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                created_by=owner,
                created_at=now - timedelta(days=400),
            )
            for i in range(keys)
        ],
        batch_size=1000,
    )
    key_ids = [str(k.pk) for k in api_keys]
    # A long tail: the busiest key has ~25x the quietest's traffic, most keys are used most days.
    key_weights = [1 / (rank + 20) for rank in range(keys)]
    span = 365 * 86400
    oldest = now - timedelta(seconds=span)
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    columns = (
        "request_id, organization_id, api_key_id, model, served_model, endpoint, stream, status, "
        "error_type, finish_reason, prompt_tokens, completion_tokens, cached_tokens, cost, "
        "latency_ms, ttft_ms, started_at, http_request_id, received_at"
    )
    connection.ensure_connection()
    raw = connection.connection
    chunk = 50_000
    # In time order, as the gateway emits them: rows of an hour sit together on disk.
    moments = sorted(rng.random() * span for _ in range(events))
    copy_sql = f"COPY {table} ({columns}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:  # type: ignore[arg-type]
        for offset in range(0, events, chunk):
            count = min(chunk, events - offset)
            picked_keys = rng.choices(key_ids, weights=key_weights, k=count)
            picked_models = rng.choices(MODELS, weights=MODEL_WEIGHTS, k=count)
            for moment, key_id, (asked, served, price_in, price_out) in zip(
                moments[offset : offset + count], picked_keys, picked_models, strict=True
            ):
                at = oldest + timedelta(seconds=moment)
                roll = rng.random()
                status = 200 if roll < 0.95 else (429 if roll < 0.98 else 400)
                ok = status == 200
                prompt = rng.randint(20, 3000) if ok else 0
                completion = rng.randint(1, 800) if ok and asked != "embed" else 0
                cost = (
                    Decimal(prompt) * Decimal(price_in) + Decimal(completion) * Decimal(price_out)
                ) / 1_000_000
                latency = rng.uniform(30, 4000) if ok else rng.uniform(1, 10)
                copy.write_row(
                    (
                        f"req_{uuid.UUID(int=rng.getrandbits(128)).hex}",
                        org.pk,
                        key_id,
                        asked,
                        served if status != 400 else "",
                        "embeddings" if asked == "embed" else "chat.completions",
                        ok and rng.random() < 0.6,
                        status,
                        ""
                        if ok
                        else ("rate_limit_error" if status == 429 else "invalid_request_error"),
                        "stop" if ok else "",
                        prompt,
                        completion,
                        prompt // 5,
                        cost,
                        latency,
                        min(latency, rng.uniform(15, 400)) if ok else None,
                        at,
                        uuid.UUID(int=rng.getrandbits(128)).hex,
                        at + timedelta(seconds=2),
                    )
                )
    timings["events_copy_s"] = time.perf_counter() - started

    started = time.perf_counter()
    rollups = connection.ops.quote_name(UsageRollup._meta.db_table)
    with connection.cursor() as cursor:
        # The ingest's rules (billing.events.UsageRecord): the hour the request started in (UTC),
        # the served model else the asked one, status >= 400 is an error.
        cursor.execute(
            f"""
            INSERT INTO {rollups} (hour, organization_id, api_key_id, model, requests, errors,
                                   prompt_tokens, completion_tokens, cached_tokens, cost)
            SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                   organization_id, api_key_id, coalesce(nullif(served_model, ''), model),
                   count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens),
                   sum(completion_tokens), sum(cached_tokens), sum(cost)
            FROM {table}
            GROUP BY 1, 2, 3, 4
            ORDER BY 1, 2, 3, 4
            """  # noqa: S608
        )
        cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute(f"VACUUM ANALYZE {rollups}")
        cursor.execute(f"SELECT count(*), sum(requests) FROM {rollups}")  # noqa: S608
        rollup_rows, rolled_up = cursor.fetchone()
    timings["rollups_s"] = time.perf_counter() - started
    if rolled_up != events:
        raise SystemExit(f"rollups hold {rolled_up} requests for {events} events")
    return {
        "events": events,
        "keys": keys,
        "models": len(MODELS),
        "rollup_rows": rollup_rows,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


def _cases(now: datetime) -> list[tuple[str, str, str]]:
    """(page, what, URL) of every view measured."""
    from billing.models import UsageEvent
    from tenants.models import ApiKey

    today = now.date()
    usage = f"/orgs/{SLUG}/usage/"
    requests = f"/orgs/{SLUG}/requests/"
    year = {"from": (today - timedelta(days=365)).isoformat(), "to": today.isoformat()}
    month = {"from": (today - timedelta(days=30)).isoformat(), "to": today.isoformat()}
    end_of_last = today.replace(day=1) - timedelta(days=1)
    last_month = {"from": end_of_last.replace(day=1).isoformat(), "to": end_of_last.isoformat()}
    keys = list(
        ApiKey.objects.filter(organization__slug=SLUG, name__startswith="service-").order_by("name")
    )
    busy, quiet = keys[0], keys[-1]  # the weights fall with the rank (see build_data)
    # A cursor 60 days back: the page a reader reaches after ~3,000 pages of "Older".
    deep = (
        UsageEvent.objects.filter(started_at__lte=now - timedelta(days=60))
        .order_by("-started_at", "-request_id")
        .values_list("started_at", "request_id")
        .first()
    )
    assert deep is not None
    week = {
        "from": (today - timedelta(days=37)).isoformat(),
        "to": (today - timedelta(days=31)).isoformat(),
    }

    def url(base: str, **query: Any) -> str:
        return f"{base}?{urlencode(query)}" if query else base

    return [
        ("usage", "this month by day (default)", url(usage)),
        ("usage", "last month by day", url(usage, **last_month)),
        ("usage", "365 days by day", url(usage, **year)),
        ("usage", "365 days by day, by model", url(usage, **year, group_by="model")),
        ("usage", "365 days by day, by key", url(usage, **year, group_by="key")),
        (
            "usage",
            "365 days by day, by key, cost",
            url(usage, **year, group_by="key", metric="cost"),
        ),
        ("usage", "31 days by hour", url(usage, **month, granularity="hour")),
        (
            "usage",
            "31 days by hour, by key",
            url(usage, **month, granularity="hour", group_by="key"),
        ),
        (
            "usage CSV",
            "365 days by day, by key (API usage.csv)",
            url(
                f"/api/v1/orgs/{SLUG}/usage.csv",
                **{"from": year["from"], "to": (today + timedelta(days=1)).isoformat()},
                granularity="day",
                group_by="key",
            ),
        ),
        ("requests", "first page", url(requests)),
        ("requests", "busiest key", url(requests, key=str(busy.pk))),
        ("requests", "quietest key", url(requests, key=str(quiet.pk))),
        ("requests", "one model", url(requests, model="llama-3.3-70b-instruct")),
        ("requests", "a model with no requests", url(requests, model="no-such-model")),
        ("requests", "errors only", url(requests, outcome="error")),
        (
            "requests",
            "quietest key, errors only",
            url(requests, key=str(quiet.pk), outcome="error"),
        ),
        ("requests", "a week a month ago", url(requests, **week)),
        (
            "requests",
            "deep: 60 days back (keyset)",
            url(requests, before=f"{deep[0].isoformat()},{deep[1]}"),
        ),
    ]


class QueryClock:
    """Counts the queries of a request and adds up their time (``execute_wrapper``), so the
    figures split into database time and the rest (Python, template)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.count += 1
            self.seconds += time.perf_counter() - started


def measure(*, repeat: int, now: datetime) -> list[dict[str, Any]]:
    """Each case once to warm up, then ``repeat`` times: the server's time per request (wall),
    the part of it spent waiting for the database, and the CPU time of this process."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username="bench-owner"))
    results = []
    for page, what, url in _cases(now):

        def get(url: str = url) -> tuple[int, int]:
            response = client.get(url)
            if response.streaming:
                size = sum(len(part) for part in response.streaming_content)  # type: ignore[attr-defined]
            else:
                size = len(response.content)
            return response.status_code, size

        status, size = get()
        if status != 200:
            raise SystemExit(f"{url}: {status}")
        walls, dbs, cpus, queries = [], [], [], 0
        for _ in range(repeat):
            clock = QueryClock()
            with connection.execute_wrapper(clock):
                started, cpu = time.perf_counter(), time.process_time()
                get()
                walls.append((time.perf_counter() - started) * 1000)
                cpus.append((time.process_time() - cpu) * 1000)
            dbs.append(clock.seconds * 1000)
            queries = clock.count
        result = {
            "page": page,
            "view": what,
            "url": url,
            "median_ms": round(statistics.median(walls), 1),
            "max_ms": round(max(walls), 1),
            "db_median_ms": round(statistics.median(dbs), 1),
            "python_cpu_median_ms": round(statistics.median(cpus), 1),
            "queries": queries,
            "kb": round(size / 1024, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result))
        results.append(result)
    return results


def explain_requests(now: datetime) -> dict[str, str]:
    """The plan Postgres picks for the Requests page's query with the quietest key (the case an
    index on (organisation, time) alone serves worst)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.selectors import recent_requests
    from tenants.models import ApiKey, Organization

    org = Organization.objects.get(slug=SLUG)
    quiet = ApiKey.objects.filter(organization=org).order_by("name").last()
    assert quiet is not None
    with CaptureQueriesContext(connection) as queries:
        recent_requests(organization=org, api_key_id=quiet.pk, outcome="error")
    sql = queries.captured_queries[-1]["sql"]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return {"quietest key, errors only": plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per view")
    parser.add_argument("--reuse", action="store_true", help="keep the data of a --keep run")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--output", default="console_pages", help="name of the results file")
    args = parser.parse_args()

    with throwaway_database(BENCH_DB, fresh=not args.reuse, keep=args.keep):
        from django.test.utils import setup_test_environment

        from tenants.models import Organization

        setup_test_environment()  # the test Client's host name, as in the test suite
        now = datetime.now(UTC)
        data: dict[str, Any]
        if args.reuse and Organization.objects.filter(slug=SLUG).exists():
            from billing.models import UsageEvent, UsageRollup

            data = {
                "events": UsageEvent.objects.count(),
                "keys": args.keys,
                "rollup_rows": UsageRollup.objects.count(),
                "reused": True,
            }
        else:
            data = build_data(events=args.events, keys=args.keys, now=now)
        print(json.dumps(data))
        results = measure(repeat=args.repeat, now=now)
        plans = explain_requests(now)

    print()
    print(_table(results))
    out = {
        **run_header("console_pages", load_average_1m_after=round(os.getloadavg()[0], 2)),
        "method": "Django test Client in-process (middleware, queries, template; no network), "
        f"signed in as the owner; median and max of {args.repeat} after one warm-up; database "
        "ms: time waiting for its queries (execute_wrapper); Python CPU ms: this process's CPU "
        "time (the rest of the wall time is waiting for the CPU on a busy machine)",
        "data": data,
        "results": results,
        "plans": plans,
    }
    write_results(out, RESULTS / f"{args.output}.json")


def _table(results: list[dict[str, Any]]) -> str:
    columns = {
        "page": "page",
        "view": "view",
        "median ms": "median_ms",
        "max ms": "max_ms",
        "database ms": "db_median_ms",
        "Python CPU ms": "python_cpu_median_ms",
        "queries": "queries",
        "KB": "kb",
    }
    rows = [[r[field] for field in columns.values()] for r in results]
    return markdown_table(list(columns), rows, "llrrrrrr")


if __name__ == "__main__":
    main()
