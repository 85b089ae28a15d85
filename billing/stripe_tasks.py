"""Celery tasks of Stripe and dunning (docs/billing.md, "Stripe" and "Dunning").

Registered by ``BillingConfig.ready`` (Celery's autodiscovery imports only ``billing.tasks``);
the beat entries are in ``settings.CELERY_BEAT_SCHEDULE``. Stripe unreachable is not an error of
the task: the push or the event stays pending and the beat task retries it, with the same
idempotency keys, so nothing is lost and nothing is created twice.
"""

from __future__ import annotations

import logging

import stripe
from celery import shared_task

from billing import dunning, stripe_events, stripe_sync

logger = logging.getLogger(__name__)


@shared_task(name="billing.stripe_push_invoice", ignore_result=True)
def stripe_push_invoice(invoice_id: str) -> bool:
    """Push one finalised invoice to Stripe (queued after finalisation commits). Returns whether
    it is pushed now; a Stripe error leaves it to ``stripe_push_pending``."""
    try:
        invoice = stripe_sync.invoice_push(invoice_id)
    except stripe.StripeError:
        logger.exception("stripe: pushing invoice %s failed; beat retries", invoice_id)
        return False
    return bool(invoice.payment_url)


@shared_task(
    name="billing.stripe_invoice_paid_out_of_band",
    ignore_result=True,
    autoretry_for=(stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=12,
)
def stripe_invoice_paid_out_of_band(invoice_id: str) -> bool:
    """Tell Stripe that an invoice staff marked paid was paid outside Stripe (queued after the
    staff's change commits); retried with backoff while Stripe is unreachable. An invoice Stripe
    already has as paid is logged and left (nothing to do there)."""
    try:
        return stripe_sync.invoice_paid_out_of_band(invoice_id)
    except stripe.InvalidRequestError:
        logger.exception("stripe: invoice %s could not be marked paid out of band", invoice_id)
        return False


@shared_task(name="billing.stripe_push_pending", ignore_result=True)
def stripe_push_pending() -> dict[str, int]:
    """Beat: push every open invoice that is not on Stripe yet (nothing without Stripe)."""
    pushed = failed = 0
    for invoice_id in stripe_sync.invoices_to_push():
        if stripe_push_invoice(str(invoice_id)):
            pushed += 1
        else:
            failed += 1
    return {"pushed": pushed, "failed": failed}


@shared_task(name="billing.stripe_process_event", ignore_result=True)
def stripe_process_event(event_id: str) -> bool:
    """Process one stored webhook event (queued when it was received). A failure is recorded on
    the event and left to ``stripe_process_pending_events``."""
    try:
        return stripe_events.process(event_id)
    except Exception:
        logger.exception("stripe: processing event %s failed; beat retries", event_id)
        return False


@shared_task(name="billing.stripe_process_pending_events", ignore_result=True)
def stripe_process_pending_events() -> dict[str, int]:
    """Beat: process the stored events that are not processed (a lost queue message, a failed
    handler)."""
    done = failed = 0
    for event_id in stripe_events.pending_events():
        if stripe_process_event(event_id):
            done += 1
        else:
            failed += 1
    return {"processed": done, "failed": failed}


@shared_task(name="billing.dunning_suspend_due", ignore_result=True)
def dunning_suspend_due() -> dict[str, int]:
    """Beat: suspend the organisations whose failed payment is older than the grace."""
    return {"suspended": len(dunning.suspend_due())}
