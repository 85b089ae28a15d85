"""Invoice finalisation: a month of hourly rollups for ``--orgs`` organisations, finalised.

A throwaway Postgres database is filled (with SQL ``generate_series``) with ``--orgs``
organisations, each with ``--keys`` keys and a rollup row per hour of the month for each of
``--models`` models (744 hours x keys x models rows per organisation, exact 12-decimal costs),
and a base fee for one plan. Then, timed:

* ``finalise``: ``invoices_finalise_period`` for the month with ``--workers`` concurrent workers
  (threads with their own connections; the same call the beat task makes);
* ``rerun``: the same call again (a beat run twice: every invoice exists, nothing is created).

Checks: one invoice per organisation, numbers gap-free, and the sum of the invoices' subtotals
equals the sum of the rollups' cost exactly.

    .venv/bin/python bench/invoice_finalise.py [--orgs 1000] [--models 3] [--keys 2] [--workers 1,4]

Prints a table and writes bench/results/invoice_finalise.json. Needs Postgres (DATABASE_URL's
server, default postgres://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_db import drop_database, setup_database  # noqa: E402  (bench/ is sys.path[0])

RESULTS = ROOT / "bench" / "results"
BENCH_DB = "vlinders_bench_invoice"
PERIOD = "2026-10"


def seed(orgs: int, keys: int, models: int) -> int:
    """Organisations, keys and a month of rollups in SQL; returns the number of rollup rows."""
    import datetime as dt
    import uuid

    from django.db import connection

    from tenants.models import ApiKey, Organization

    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    organizations = Organization.objects.bulk_create(
        Organization(
            name=f"Org {i}",
            slug=f"org-{i}",
            plan="premium" if i % 3 == 0 else "standard",
            created_at=created,
        )
        for i in range(orgs)
    )
    ApiKey.objects.bulk_create(
        ApiKey(
            organization=org,
            name=f"key {k}",
            prefix=uuid.uuid4().hex[:16],
            last_four="abcd",
            secret_hash=uuid.uuid4().hex * 2,
        )
        for org in organizations
        for k in range(keys)
    )
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO billing_usagerollup
              (hour, organization_id, api_key_id, model, requests, errors, prompt_tokens,
               completion_tokens, cached_tokens, cost)
            SELECT timestamptz '2026-10-01 00:00+00' + make_interval(hours => h),
                   k.organization_id, k.id, 'model-' || m, 10 + h %% 7, h %% 2,
                   1000 * (1 + h %% 13), 300 * (1 + h %% 5), 100,
                   ((1000 * (1 + h %% 13)) * 0.123457 + (300 * (1 + h %% 5)) * 0.987654)
                     / 1000000.0 + m * 0.000000000001
            FROM tenants_apikey k, generate_series(0, 743) AS h, generate_series(1, %s) AS m
            """,
            [models],
        )
        rows = cur.rowcount
        cur.execute("ANALYZE")
    from billing.services import plan_price_set

    plan_price_set(plan="premium", monthly_fee=Decimal("49.00"))
    return rows


def finalise(workers: int) -> tuple[float, int]:
    from django.db import connection

    from billing.services import invoices_finalise_period

    created: list[int] = []
    barrier = threading.Barrier(workers)

    def run() -> None:
        try:
            barrier.wait()
            created.extend(invoices_finalise_period(period=PERIOD).created)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, len(created)


def check(orgs: int) -> dict[str, Any]:
    from django.db.models import Sum

    from billing.models import Invoice, UsageRollup

    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    subtotal = Invoice.objects.aggregate(s=Sum("subtotal"))["s"]
    fees = Invoice.objects.filter(plan="premium").count() * Decimal("49.00")
    usage = UsageRollup.objects.aggregate(s=Sum("cost"))["s"]
    return {
        "invoices": len(numbers),
        "one_per_org": len(numbers) == orgs,
        "gap_free": numbers == list(range(numbers[0], numbers[0] + len(numbers))),
        "exact": subtotal == usage + fees,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=2)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--workers", default="1,4")
    args = parser.parse_args()
    runs = []
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            setup_database(BENCH_DB)
            t0 = time.perf_counter()
            rows = seed(args.orgs, args.keys, args.models)
            seed_s = time.perf_counter() - t0
            seconds, created = finalise(workers)
            rerun_s, recreated = finalise(workers)
            checks = check(args.orgs)
            runs.append(
                {
                    "workers": workers,
                    "orgs": args.orgs,
                    "rollup_rows": rows,
                    "seed_s": round(seed_s, 2),
                    "finalise_s": round(seconds, 3),
                    "per_invoice_ms": round(1000 * seconds / max(created, 1), 2),
                    "created": created,
                    "rerun_s": round(rerun_s, 3),
                    "rerun_created": recreated,
                    **checks,
                }
            )
            drop_database(BENCH_DB)
    finally:
        if "DATABASE_URL" in os.environ and BENCH_DB in os.environ["DATABASE_URL"]:
            drop_database(BENCH_DB)
    header = f"{'workers':>7} {'orgs':>5} {'rollups':>9} {'finalise s':>10} {'ms/inv':>7} "
    header += f"{'rerun s':>8} {'1/org':>5} {'gapless':>7} {'exact':>5}"
    print(header)
    for r in runs:
        print(
            f"{r['workers']:>7} {r['orgs']:>5} {r['rollup_rows']:>9} {r['finalise_s']:>10} "
            f"{r['per_invoice_ms']:>7} {r['rerun_s']:>8} {r['one_per_org']!s:>5} "
            f"{r['gap_free']!s:>7} {r['exact']!s:>5}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "period": PERIOD,
        "runs": runs,
    }
    (RESULTS / "invoice_finalise.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
