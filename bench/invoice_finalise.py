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
import os
import platform
import threading
import time
from decimal import Decimal
from typing import Any

from bench_db import seed_organizations, seed_rollups, throwaway_database
from common import RESULTS, write_results

BENCH_DB = "vlinders_bench_invoice"
PERIOD = "2026-10"


def seed(orgs: int, keys: int, models: int) -> int:
    """Organisations, keys and a month of rollups in SQL; returns the number of rollup rows."""
    import datetime as dt

    from django.db import connection

    seed_organizations(orgs, keys, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    rows = seed_rollups(dt.datetime(2026, 10, 1, tzinfo=dt.UTC), 744, models)
    with connection.cursor() as cur:
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
    for workers in [int(w) for w in args.workers.split(",")]:
        with throwaway_database(BENCH_DB):
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
    header = f"{'workers':>7} {'orgs':>5} {'rollups':>9} {'finalise s':>10} {'ms/inv':>7} "
    header += f"{'rerun s':>8} {'1/org':>5} {'gapless':>7} {'exact':>5}"
    print(header)
    for r in runs:
        print(
            f"{r['workers']:>7} {r['orgs']:>5} {r['rollup_rows']:>9} {r['finalise_s']:>10} "
            f"{r['per_invoice_ms']:>7} {r['rerun_s']:>8} {r['one_per_org']!s:>5} "
            f"{r['gap_free']!s:>7} {r['exact']!s:>5}"
        )
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "period": PERIOD,
        "runs": runs,
    }
    write_results(out, RESULTS / "invoice_finalise.json")


if __name__ == "__main__":
    main()
