"""The billing app's beat tasks (scheduled in ``settings.CELERY_BEAT_SCHEDULE``).

Kept apart from ``billing.tasks`` (the ingest task) and registered by ``BillingConfig.ready``.
Each task takes no arguments, is idempotent and safe to run concurrently with itself.
"""

from __future__ import annotations

from celery import shared_task

from billing import alerts, prepaid, retention, services, spend


@shared_task(name="billing.reconcile_spend", ignore_result=True)
def reconcile_spend() -> dict[str, int]:
    """Rewrite the limiter's month counters of every organisation and key with usage this month
    from Postgres (repairs a Redis that restarted empty, corrects reclaimed leases), and the
    balance of every prepaid organisation (so a lost balance hash is back within one interval),
    check their budget alerts (a lowered budget alerts without new usage), and retry unsent
    alert e-mails."""
    usage = spend.reconcile_active()
    balances = prepaid.reconcile_balances()
    created = alerts.check(usage)
    sent = alerts.notify_pending()
    return {
        "organizations": len(usage.orgs),
        "keys": len(usage.keys),
        "prepaid_balances": balances,
        "alerts": len(created),
        "emails_retried": sent,
    }


@shared_task(name="billing.prune_usage_events", ignore_result=True)
def prune_usage_events() -> dict[str, int | bool]:
    """Delete raw usage events past their retention, in bounded batches (rollups are kept)."""
    result = retention.prune_usage_events()
    return {"deleted": result.deleted, "batches": result.batches, "finished": result.finished}


@shared_task(name="billing.finalise_invoices", ignore_result=True)
def finalise_invoices() -> dict[str, object]:
    """Finalise last month's invoices once its grace period has passed (docs/billing.md,
    "Invoices"). Runs every ``VLINDERS_INVOICE_FINALISE_SECONDS``; already finalised invoices are
    skipped, so a repeated or concurrent run creates nothing twice."""
    result = services.invoices_finalise_due()
    if result is None:
        return {"period": None}
    return {
        "period": result.period,
        "created": len(result.created),
        "existing": result.existing,
        "empty": result.empty,
    }
