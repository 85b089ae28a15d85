"""Shapes of the invoice API. Money is a decimal string: amounts and the subtotal exactly (12
decimal places, the sum of the events' cost), the total in cents, and the rounding between them;
the tax stored on the invoice and ``total_due`` (total + tax), what is paid at ``payment_url``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import Invoice, InvoiceLine


def _exact() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=24, decimal_places=12, read_only=True)


class InvoiceLineSerializer(serializers.ModelSerializer[InvoiceLine]):
    """A line. A usage line of one token kind at one price has ``unit`` (``input_tokens`` or
    ``output_tokens``), ``quantity`` (tokens) and ``unit_price_per_mtok`` (USD per million, a
    decimal string with 6 places): ``amount`` = quantity x price / 1,000,000 exactly. Usage
    metered without prices, and every other line, has an empty unit, quantity 0 and no price."""

    amount = _exact()
    unit_price_per_mtok = serializers.DecimalField(
        max_digits=12, decimal_places=6, read_only=True, allow_null=True
    )

    class Meta:
        model = InvoiceLine
        fields = [
            "position",
            "kind",
            "description",
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "unit",
            "quantity",
            "unit_price_per_mtok",
            "amount",
        ]
        read_only_fields = fields


class InvoiceSummarySerializer(serializers.ModelSerializer[Invoice]):
    number = serializers.SerializerMethodField()
    subtotal = _exact()
    rounding = _exact()
    total = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)
    tax_rate_percent = serializers.DecimalField(
        max_digits=7, decimal_places=4, read_only=True, allow_null=True
    )
    tax = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)
    total_due = serializers.DecimalField(
        max_digits=14, decimal_places=2, read_only=True, help_text="total + tax: what is paid."
    )
    payment_url = serializers.SerializerMethodField(
        help_text="Where the organisation pays (Stripe's hosted page); null until pushed."
    )

    class Meta:
        model = Invoice
        fields = [
            "number",
            "display_number",
            "period",
            "status",
            "currency",
            "plan",
            "period_start",
            "period_end",
            "subtotal",
            "rounding",
            "total",
            "tax_name",
            "tax_rate_percent",
            "tax",
            "total_due",
            "issued_at",
            "due_at",
            "paid_at",
            "voided_at",
            "payment_url",
        ]
        read_only_fields = fields

    def get_number(self, invoice: Invoice) -> int | None:
        return invoice.number

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_payment_url(self, invoice: Invoice) -> str | None:
        return invoice.payment_url or None


class InvoiceSerializer(InvoiceSummarySerializer):
    """An invoice with its lines. Also serialises an unsaved draft: its lines are then passed in
    the context (``lines``) instead of read from the database."""

    lines = serializers.SerializerMethodField()

    class Meta(InvoiceSummarySerializer.Meta):
        fields = [*InvoiceSummarySerializer.Meta.fields, "lines"]
        read_only_fields = fields

    def get_lines(self, invoice: Invoice) -> list[dict[str, Any]]:
        lines = self.context.get("lines")
        if lines is None:
            lines = list(invoice.lines.order_by("position"))
        return InvoiceLineSerializer(lines, many=True).data  # type: ignore[return-value]
