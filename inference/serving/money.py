"""Money as integer micro-units: the one conversion, shared by both planes.

The limiter (``inference/serving/limits.py``) keeps spend in Redis as integer micro-units
(1e-6 of the platform currency), and billing's ingest reports what it inserted in the same units,
so both must round every amount the same way. This module is that single rule. It is neutral
ground: no Django, no Redis, nothing of either plane, so the data plane and the control plane
can both import it without importing each other's machinery.

Money is never a float. Amounts are exact in Lua's doubles up to 2**53 micro-units (~9e9
currency units), which is why the limiter's scripts can add them without rounding.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation, getcontext, localcontext

MICROS_PER_UNIT = 1_000_000


def to_micros(amount: Decimal | int | str, *, rounding: str = ROUND_CEILING) -> int:
    """An amount of the platform currency as integer micro-units; the one conversion.

    Rounds up by default, so a reserved or settled spend is never under-counted; budgets use
    ``ROUND_FLOOR`` so a budget is never exceeded by its own rounding. Exact for any Decimal
    (computed at a precision that cannot round). Floats are refused: money is never a float.
    """
    if isinstance(amount, float | bool):
        raise TypeError("money must be a Decimal, an int or a decimal string, never a float")
    try:
        value = Decimal(amount)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {amount!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    if value < 0:
        raise ValueError(f"amounts are never negative: {amount!r}")
    precision = len(value.as_tuple().digits) + 12
    if precision <= getcontext().prec:
        # The common case (every price and cost the gateway computes): exact in the current
        # context already, without the cost of entering a local one.
        return int(value.scaleb(6).to_integral_value(rounding=rounding))
    with localcontext() as ctx:
        ctx.prec = precision
        return int(value.scaleb(6).to_integral_value(rounding=rounding))


def from_micros(micros: int) -> Decimal:
    """Integer micro-units back to an exact Decimal amount (six decimal places)."""
    return Decimal(micros).scaleb(-6)
