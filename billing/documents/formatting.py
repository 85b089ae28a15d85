"""How amounts and counts read on a document. Exact: an amount is never rounded for display;
only trailing zeros beyond the cents are dropped (``1.234500000000`` → ``1.2345``)."""

from __future__ import annotations

from decimal import Decimal


def exact(amount: Decimal) -> str:
    """An amount with at least two decimals, as many as it has beyond, grouped by thousands."""
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{amount.quantize(Decimal(1).scaleb(-places)):,f}"


def cents(amount: Decimal) -> str:
    """An amount that is in cents already (a total, a tax), grouped by thousands."""
    return f"{amount.quantize(Decimal('0.01')):,f}"


def plain(amount: Decimal, places: int) -> str:
    """An exact decimal string with a fixed number of places, for CSV (no grouping, no exponent):
    ``plain(Decimal("1.5"), 12)`` → ``1.500000000000``. Refuses to drop digits."""
    quantized = amount.quantize(Decimal(1).scaleb(-places))
    if quantized != amount:
        raise ValueError(f"{amount} has more than {places} decimal places")
    return f"{quantized:f}"


def count(value: int) -> str:
    return f"{value:,}"
