"""Shapes of the prepaid balance API: the balance, the ledger's query and the ledger. Money is
a decimal string, never a float (``coerce_to_string``)."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from billing.api.serializers import _KeywordNames
from billing.prepaid import MAX_LEDGER_DAYS


def _money() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=24, decimal_places=12, coerce_to_string=True)


class BalanceSerializer(serializers.Serializer[Any]):
    mode = serializers.CharField(help_text="'prepaid' or 'postpaid'.")
    prepaid_since = serializers.DateTimeField(
        allow_null=True, help_text="Usage from this UTC hour on is charged to the balance."
    )
    credited = _money()
    usage = _money()
    balance = _money()


class LedgerQuerySerializer(_KeywordNames, serializers.Serializer[Any]):
    """``from`` (inclusive) and ``to`` (exclusive): UTC dates; default the current month up to
    and including today; at most ``MAX_LEDGER_DAYS`` days."""

    from_ = serializers.DateField(
        required=False, help_text="First UTC day (inclusive). Default: the month's first day."
    )
    to = serializers.DateField(
        required=False, help_text="UTC day after the last one (exclusive). Default: tomorrow."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = timezone.now().astimezone(UTC).date()
        start: date = attrs.get("from") or today.replace(day=1)
        end: date = attrs.get("to") or today + timedelta(days=1)
        if end <= start:
            raise serializers.ValidationError({"to": "Must be after 'from'."})
        if (end - start).days > MAX_LEDGER_DAYS:
            raise serializers.ValidationError(
                {"to": f"The range is longer than {MAX_LEDGER_DAYS} days."}
            )
        return {"from": start, "to": end}


class LedgerRowSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField(help_text="'topup', 'adjustment' or 'usage' (one UTC day).")
    at = serializers.DateTimeField()
    amount = _money()
    description = serializers.CharField()
    reference = serializers.CharField()
    balance = _money()


class LedgerSerializer(serializers.Serializer[Any]):
    start = serializers.DateField()
    end = serializers.DateField()
    opening = _money()
    closing = _money()
    rows = LedgerRowSerializer(many=True)
