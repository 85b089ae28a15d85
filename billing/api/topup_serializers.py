"""Shapes of the top-up API: the amount in USD as a decimal string in whole cents."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import TopUp


class TopUpCreateSerializer(serializers.Serializer[TopUp]):
    amount = serializers.DecimalField(
        max_digits=12,
        decimal_places=2,
        help_text="USD, in whole cents, between VLINDERS_TOPUP_MIN and VLINDERS_TOPUP_MAX.",
    )


class TopUpSerializer(serializers.ModelSerializer[TopUp]):
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)

    class Meta:
        model = TopUp
        fields = ["id", "amount", "status", "checkout_url", "created_at", "completed_at"]
        read_only_fields = fields
