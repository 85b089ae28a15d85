"""Cost of tokens at a model's prices (decimal, per million tokens): never a float.

``Prices`` is the pair of prices one request is charged at: the gateway decides it once per
request (``RouteSpec.prices_for``: the organisation's plan price of the model, else the catalog
price), reserves at it, settles at it and writes it into the usage event beside the cost, so the
budget, the bill and the invoice's unit prices are one number.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

_MILLION = Decimal(1_000_000)


def cost(
    prompt_tokens: int, completion_tokens: int, *, input_per_mtok: Decimal, output_per_mtok: Decimal
) -> Decimal:
    """Exact: a token count (< 2**31) times a price of 6 decimal places, over a million, has at
    most 12 decimal places and 23 digits, within Decimal's default 28-digit precision."""
    return (prompt_tokens * input_per_mtok + completion_tokens * output_per_mtok) / _MILLION


class Prices(NamedTuple):
    """USD per million input (prompt) and output (completion) tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return cost(
            prompt_tokens,
            completion_tokens,
            input_per_mtok=self.input_per_mtok,
            output_per_mtok=self.output_per_mtok,
        )
