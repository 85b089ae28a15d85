"""Shapes of the top-up API: the amount in USD as a decimal string in whole cents."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from billing import topups
from billing.models import TopUp


class TopUpCreateSerializer(serializers.Serializer[TopUp]):
    """The bounds come from the settings when the serializer is built, so the schema states the
    installation's own ``VLINDERS_TOPUP_MIN``/``MAX``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        low, high = topups.limits()
        self.fields["amount"] = serializers.DecimalField(
            max_digits=12,
            decimal_places=2,
            min_value=low,
            max_value=high,
            help_text=f"USD, in whole cents, from {low} to {high}.",
        )


class TopUpSerializer(serializers.ModelSerializer[TopUp]):
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)

    class Meta:
        model = TopUp
        fields = ["id", "amount", "status", "checkout_url", "created_at", "completed_at"]
        read_only_fields = fields
