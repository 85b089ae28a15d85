"""The one place that builds a Stripe API client (docs/billing.md, "Stripe").

Stripe is optional: without ``STRIPE_SECRET_KEY`` :func:`configured` is false and
:func:`client` raises :class:`StripeNotConfigured`, so no code path can call Stripe by accident.
``STRIPE_API_BASE`` points the official SDK elsewhere (the tests' local test double).

The SDK's own network retries are off: a failed call raises, the caller's transaction is not
committed, and the Celery task (or beat) retries the whole step with the same idempotency keys.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import stripe
from django.conf import settings

CENT = Decimal("0.01")


class StripeNotConfigured(Exception):
    """Payments are not configured (``STRIPE_SECRET_KEY`` is empty)."""

    def __init__(self) -> None:
        super().__init__("Payments are not configured on this installation.")


def configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def client() -> stripe.StripeClient:
    """A client with the configured key and API address; ``StripeNotConfigured`` without a key."""
    if not configured():
        raise StripeNotConfigured()
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=0,
    )


def to_cents(amount: Decimal) -> int:
    """An amount in USD as Stripe's integer minor units, rounded half up (docs: "Totals")."""
    return int((amount / CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))
