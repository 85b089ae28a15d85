"""Operator reports: server time of the staff revenue page and its parts with many organisations.

A throwaway Postgres database is filled (with SQL ``generate_series``) with ``--orgs``
organisations, each with ``--keys`` keys and a rollup row per hour for each of ``--models``
models over ``--months`` months ending with the reported month (exact 12-decimal costs), the
catalog models with a cost per replica-hour and a replica-hours row per model and hour, and a
finalised invoice with a base-fee line per organisation for the reported month. Then, each
``--repeat`` times after a warm-up (median and slowest):

* the selectors alone: ``revenue_by_organization``, ``revenue_by_model``, ``revenue_by_day``;
* the page ``/staff/revenue/?month=`` through Django's test ``Client`` signed in as staff (every
  middleware, the queries and the template, no network), and its three CSV exports;
* the staff API ``/api/v1/staff/reports/revenue/``.

Checks: the page's usage revenue (organisation, model and day totals) equals the sum of the
month's rollups' cost computed by one SQL ``SUM``, exactly, and the number of queries the page
makes (constant in the number of organisations).

    .venv/bin/python bench/billing_reports.py [--orgs 1000] [--keys 2] [--models 3] [--months 1]

Prints a table and writes bench/results/billing_reports.json (``--out`` for another name). Needs
Postgres (DATABASE_URL's server, default postgres://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bench_db import seed_organizations, seed_rollups, throwaway_database
from common import RESULTS, write_results

BENCH_DB = "vlinders_bench_reports"
MONTH = "2026-10"


def seed(orgs: int, keys: int, models: int, months: int) -> int:
    """Organisations, keys, catalog models, rollups, replica-hours and invoices; returns the
    number of rollup rows."""
    import datetime as dt

    from django.db import connection

    from billing import spend
    from billing.models import Invoice, InvoiceLine
    from inference.models import CatalogModel

    organizations = seed_organizations(orgs, keys, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    CatalogModel.objects.bulk_create(
        CatalogModel(
            name=f"model-{m}",
            engine_kind="synthetic",
            context_length=4096,
            cost_per_replica_hour=Decimal("1.25") * m,
        )
        for m in range(1, models + 1)
    )
    month_start, month_end = spend.month_range(MONTH)
    first = month_start
    for _ in range(months - 1):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    hours = int((month_end - first).total_seconds() // 3600)
    rows = seed_rollups(first, hours, models)
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO inference_replicahours (catalog_model_id, hour, replica_seconds)
            SELECT c.id, %s::timestamptz + make_interval(hours => h), 3600.0 * (1 + h %% 3)
            FROM inference_catalogmodel c, generate_series(0, %s - 1) AS h
            """,
            [first, hours],
        )
    invoices = Invoice.objects.bulk_create(
        Invoice(
            organization=org,
            period=MONTH,
            status=Invoice.Status.OPEN,
            number=i + 1,
            plan=org.plan,
            period_start=month_start,
            period_end=month_end,
            subtotal=Decimal("49.00"),
            total=Decimal("49.00"),
            rounding=Decimal(0),
            issued_at=month_end + dt.timedelta(hours=2),
        )
        for i, org in enumerate(organizations)
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice, position=1, kind="base_fee", description="fee", amount=Decimal(49)
        )
        for invoice in invoices
    )
    with connection.cursor() as cur:
        cur.execute("ANALYZE")
    return rows


def timed(work: Callable[[], Any], repeat: int) -> dict[str, float]:
    work()  # warm-up
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return {
        "median_ms": round(1000 * statistics.median(seconds), 1),
        "max_ms": round(1000 * max(seconds), 1),
    }


def measure(repeat: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.db.models import Sum
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment
    from rest_framework.test import APIClient

    from billing import reports, spend
    from billing.models import UsageRollup

    setup_test_environment()  # the test Client's host name, as in the test suite
    period = reports.month_period(MONTH)
    staff = User.objects.create_user("bench-staff", is_staff=True)
    client, api = Client(), APIClient()
    client.force_login(staff)
    api.force_login(staff)

    def page(url: str) -> Callable[[], None]:
        def get() -> None:
            response = (api if url.startswith("/api/") else client).get(url, {"month": MONTH})
            assert response.status_code == 200, response.status_code

        return get

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("usage_groups (the scan)", lambda: reports.usage_groups(period)),
        ("revenue_by_organization", lambda: reports.revenue_by_organization(period)),
        ("page /staff/revenue/", page("/staff/revenue/")),
        ("csv organizations", page("/staff/revenue/organizations.csv")),
        ("csv models", page("/staff/revenue/models.csv")),
        ("csv days", page("/staff/revenue/days.csv")),
        ("api revenue", page("/api/v1/staff/reports/revenue/")),
        ("api margin", page("/api/v1/staff/reports/margin/")),
        ("page /staff/invoices/", page("/staff/invoices/")),
    ]
    results = [{"case": name, **timed(work, repeat)} for name, work in cases]

    start, end = spend.month_range(MONTH)
    truth = UsageRollup.objects.filter(hour__gte=start, hour__lt=end).aggregate(s=Sum("cost"))["s"]
    by_org = reports.revenue_by_organization(period)
    by_model = reports.revenue_by_model(period)
    by_day = reports.revenue_by_day(period)
    with CaptureQueriesContext(connection) as queries:
        client.get("/staff/revenue/", {"month": MONTH})
    checks = {
        "month_rollup_rows": UsageRollup.objects.filter(hour__gte=start, hour__lt=end).count(),
        "organizations_shown": len(by_org),
        "exact_by_org": reports.revenue_totals(by_org).revenue == truth,
        "exact_by_model": reports.model_totals(by_model).revenue == truth,
        "exact_by_day": sum((r["revenue"] for r in by_day), Decimal(0)) == truth,
        "page_queries": len(queries),
        "month_usage_revenue": f"{truth:f}",
    }
    return results, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=2)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--months", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="billing_reports.json")
    args = parser.parse_args()
    with throwaway_database(BENCH_DB):
        t0 = time.perf_counter()
        rows = seed(args.orgs, args.keys, args.models, args.months)
        seed_s = time.perf_counter() - t0
        results, checks = measure(args.repeat)
    print(
        f"{args.orgs} organisations x {args.keys} keys x {args.models} models, {args.months} "
        f"month(s): {rows} rollup rows ({checks['month_rollup_rows']} in {MONTH}), "
        f"seeded in {seed_s:.0f} s"
    )
    print(f"{'case':<26} {'median ms':>10} {'max ms':>8}")
    for r in results:
        print(f"{r['case']:<26} {r['median_ms']:>10} {r['max_ms']:>8}")
    print(
        f"exact: org {checks['exact_by_org']}, model {checks['exact_by_model']}, day "
        f"{checks['exact_by_day']}; page queries: {checks['page_queries']}"
    )
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "month": MONTH,
        "orgs": args.orgs,
        "keys": args.keys,
        "models": args.models,
        "months": args.months,
        "rollup_rows": rows,
        "seed_s": round(seed_s, 1),
        "repeat": args.repeat,
        "results": results,
        "checks": checks,
    }
    write_results(out, RESULTS / args.out)


if __name__ == "__main__":
    main()
