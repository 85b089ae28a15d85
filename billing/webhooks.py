"""Stripe's webhook endpoint, ``POST /stripe/webhook/`` (docs/billing.md, "Stripe").

The raw body is verified against the ``Stripe-Signature`` header with ``STRIPE_WEBHOOK_SECRET``
and a tolerance on its timestamp (``STRIPE_WEBHOOK_TOLERANCE_S``, replays older than that are
refused) by the official SDK's ``stripe.Webhook.construct_event``; anything that does not verify
is a 400. A verified event is stored unique by its id (:func:`event_store`) and its processing is
queued after that commits; a redelivered event answers 200 and queues nothing. The endpoint does
no work of its own beyond that, so it answers Stripe quickly.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import stripe
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.models import StripeEvent

logger = logging.getLogger(__name__)

PROCESS_TASK = "billing.stripe_process_event"


def event_store(payload: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Store a verified event once per Stripe event id; ``(event, created)``. When created, its
    processing is queued after commit (a queueing failure is logged: beat processes every
    stored event that is not processed)."""
    created_at = payload.get("created")
    with transaction.atomic():
        event, created = StripeEvent.objects.get_or_create(
            event_id=str(payload["id"]),
            defaults={
                "type": str(payload["type"])[:128],
                "payload": payload,
                "stripe_created": (
                    datetime.fromtimestamp(int(created_at), tz=UTC) if created_at else None
                ),
            },
        )
        if created:
            event_id = event.event_id

            def enqueue() -> None:
                try:
                    current_app.tasks[PROCESS_TASK].delay(event_id)
                except Exception:
                    logger.exception("stripe: queueing event %s failed; beat retries", event_id)

            transaction.on_commit(enqueue)
    return event, created


def _refuse(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        return JsonResponse({"error": "Stripe webhooks are not configured."}, status=503)
    body = request.body
    try:
        stripe.Webhook.construct_event(
            body,
            request.headers.get("Stripe-Signature"),
            secret,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_S,
        )
    except stripe.SignatureVerificationError as exc:
        return _refuse(f"Invalid signature: {exc.user_message or exc}")
    except ValueError:
        return _refuse("The body is not a JSON event.")
    payload = json.loads(body)
    if not isinstance(payload, dict) or not payload.get("id") or not payload.get("type"):
        return _refuse("The event has no id or type.")
    event, created = event_store(payload)
    return JsonResponse({"received": event.event_id, "duplicate": not created})
