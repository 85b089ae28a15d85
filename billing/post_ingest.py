"""Work that follows a committed batch: reconcile the gateway's Redis budget counters from
Postgres, raise budget alerts, push live dashboard updates. Each step is best effort: the batch
is already committed, and the beat schedule repeats reconciliation and alert checks anyway."""

from __future__ import annotations

import logging

from billing import alerts, live, prepaid, spend
from billing.ingest_result import IngestResult
from billing.spend import MonthUsage

logger = logging.getLogger(__name__)


def after_batch(result: IngestResult) -> None:
    """Run every post-ingest step for ``result``; never raises.

    Only what the batch newly inserted is touched: the organisations and keys in it, for the
    months its events fall in. The steps, each isolated from the others' failures:

    1. read those scopes' month-to-date usage from the rollups and write it to the limiter's
       Redis counters (``billing.spend``), and the prepaid balances of the prepaid organisations
       in it, with what the batch inserted from each one's ``prepaid_since`` (``billing.prepaid``);
    2. check the current month's usage against budgets, creating alerts (``billing.alerts``);
    3. push live updates to the dashboards (``billing.live``).
    """
    if not result.inserted or not result.by_org:
        return
    month = spend.current_month()
    usages: list[MonthUsage] = []
    try:
        usages = [
            spend.month_usage(month=m, org_ids=result.by_org.keys(), keys=result.keys)
            for m in sorted(result.months | {month})
        ]
    except Exception:
        logger.exception("after_batch: reading month-to-date usage failed")
    this_month = next((u for u in usages if u.month == month), None)
    try:
        # Only the months the batch touched: the current one is read above for alerts and the
        # dashboards even when the batch held nothing of it, but then nothing changed there.
        spend.write_month_used(
            (u for u in usages if u.month in result.months), ingested=result.ingested
        )
    except Exception:
        logger.exception("after_batch: reconciling the budget counters failed")
    try:
        ingested = prepaid.ingested_since(result.ingested_hours)
        if ingested:
            prepaid.reconcile_balances(ingested.keys(), ingested=ingested)
    except Exception:
        logger.exception("after_batch: reconciling the prepaid balances failed")
    if this_month is not None:
        try:
            alerts.check(this_month)
        except Exception:
            logger.exception("after_batch: checking budget alerts failed")
    try:
        live.push(result, month=month, month_used=this_month.orgs if this_month else {})
    except Exception:
        logger.exception("after_batch: pushing live usage failed")
