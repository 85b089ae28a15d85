"""The tax rule of invoices, written once. ``apply_tax`` sets an invoice's tax when it is built
(the draft, and so the finalised invoice, which is the draft saved): the name, the rate and the
amount are stored on the invoice, so the documents, the console, the API and the Stripe push all
read the same amount, and a later change of the settings changes no finalised invoice
(docs/billing.md, "Tax").

Tax is configured by ``VLINDERS_TAX_NAME`` and ``VLINDERS_TAX_RATE_PERCENT`` (default none: no
tax line anywhere). It applies to an invoice's ``total`` (the exact subtotal already rounded once
to cents) and is itself rounded once, to cents, ROUND_HALF_UP: 21 % of 0.05 is 0.0105 → 0.01.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from billing.models import Invoice

CENT = Decimal("0.01")


def tax_rate_percent() -> Decimal | None:
    """The configured rate in percent (``Decimal("21")``), or ``None`` when no tax is set (an
    empty or zero rate). A rate that is not a non-negative decimal is a configuration error."""
    raw = str(getattr(settings, "VLINDERS_TAX_RATE_PERCENT", "") or "").strip()
    if not raw:
        return None
    try:
        rate = Decimal(raw)
    except InvalidOperation as exc:
        raise ValueError(f"VLINDERS_TAX_RATE_PERCENT must be a decimal, not {raw!r}") from exc
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"VLINDERS_TAX_RATE_PERCENT must be 0 or more, not {raw!r}")
    return rate if rate else None


def tax_name() -> str:
    """What the tax line is called (``VAT``); ``Tax`` when only a rate is set."""
    return str(getattr(settings, "VLINDERS_TAX_NAME", "") or "").strip() or "Tax"


def tax_configured() -> bool:
    return tax_rate_percent() is not None


def tax_of(total: Decimal, rate: Decimal | None = None) -> Decimal:
    """The tax on an invoice's ``total`` at ``rate`` percent (default: the configured rate),
    rounded once to cents ROUND_HALF_UP; ``0.00`` without a rate. Negative totals (credits) give
    negative tax, symmetrically."""
    if not isinstance(total, Decimal):
        raise TypeError("total must be a Decimal")
    if rate is None:
        rate = tax_rate_percent()
    if rate is None:
        return Decimal("0.00")
    return (total * rate / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def apply_tax(invoice: Invoice) -> None:
    """Set ``invoice``'s tax from the settings in force now; its ``total`` must be set."""
    rate = tax_rate_percent()
    invoice.tax_rate_percent = rate
    invoice.tax_name = tax_name() if rate is not None else ""
    invoice.tax = tax_of(invoice.total, rate)
