"""Cost of tokens at a model's prices (decimal, per million tokens): never a float."""

from __future__ import annotations

from decimal import Decimal

_MILLION = Decimal(1_000_000)


def cost(
    prompt_tokens: int, completion_tokens: int, *, input_per_mtok: Decimal, output_per_mtok: Decimal
) -> Decimal:
    return (prompt_tokens * input_per_mtok + completion_tokens * output_per_mtok) / _MILLION
