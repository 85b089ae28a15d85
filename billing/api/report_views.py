"""The operator's report API, platform staff only (docs/billing.md, "Operator reports"):

- ``GET /api/v1/staff/reports/revenue/?month=YYYY-MM``: a month's usage revenue by organisation,
  model and day, what was invoiced, and the totals;
- ``GET /api/v1/staff/reports/margin/?month=YYYY-MM``: per model, tokens, usage revenue,
  replica-hours, cost, cost per million tokens and gross margin.

``month`` defaults to the current UTC month (month to date). Staff only (``IsAdminUser``, like the
catalog API): anyone else gets 403 (401 without credentials). A malformed or future month is a
400 naming ``month``. The figures come from ``billing.reports``; money is a JSON string (usage
revenue, cost and margin with 12 decimal places, invoice amounts with 2, per-million-token
figures with 6, margin percent with 1), ``null`` where unknown.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import reports


def _exact(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=30, decimal_places=12, **kwargs)


def _per_mtok(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=30, decimal_places=6, **kwargs)


def _cents(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=16, decimal_places=2, **kwargs)


class MonthQuerySerializer(serializers.Serializer[Any]):
    month = serializers.RegexField(
        r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$",
        required=False,
        allow_blank=True,
        help_text="UTC month, YYYY-MM; default: the current month (month to date).",
    )

    def validate_month(self, value: str) -> str:
        try:
            reports.month_period(value or None)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from error
        return value


class PeriodSerializer(serializers.Serializer[Any]):
    month = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Exclusive.")
    until = serializers.DateTimeField(help_text="Where the data ends: `end`, or now.")
    month_to_date = serializers.BooleanField()


class OrganizationRevenueSerializer(serializers.Serializer[Any]):
    organization_id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    plan = serializers.CharField()
    billing_mode = serializers.CharField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usage_revenue = _exact(source="revenue")
    invoice_number = serializers.IntegerField(allow_null=True)
    invoice_status = serializers.CharField(allow_null=True)
    invoiced = _cents(allow_null=True, help_text="The invoice's total; null without one or void.")
    base_fee = _exact(help_text="On the invoice, or (upcoming) what it will charge.")
    adjustments = _exact(help_text="Credit notes and one-off charges, signed.")
    upcoming = serializers.BooleanField(help_text="No finalised invoice yet.")


class RevenueTotalsSerializer(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usage_revenue = _exact(source="revenue")
    invoices = serializers.IntegerField(help_text="Finalised invoices, void ones excluded.")
    invoiced = _cents()
    invoiced_base_fees = _exact()
    invoiced_adjustments = _exact()
    upcoming_base_fees = _exact()
    pending_adjustments = _exact()


class ModelRevenueSerializer(serializers.Serializer[Any]):
    model = serializers.CharField(help_text='The served model; "" for requests without one.')
    in_catalog = serializers.BooleanField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usage_revenue = _exact(source="revenue")
    revenue_per_mtok = _per_mtok(allow_null=True)
    replica_seconds = serializers.IntegerField(help_text="Whole seconds, rounded half up once.")
    replica_hours = serializers.DecimalField(max_digits=30, decimal_places=3)
    cost_per_replica_hour = _per_mtok(allow_null=True)
    cost = _exact(allow_null=True, help_text="null: unknown (no cost per replica-hour).")
    cost_per_mtok = _per_mtok(allow_null=True)
    margin = _exact(allow_null=True)
    margin_percent = serializers.DecimalField(max_digits=30, decimal_places=1, allow_null=True)


class ModelTotalsSerializer(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usage_revenue = _exact(source="revenue")
    replica_seconds = serializers.IntegerField()
    cost = _exact(help_text="Of the models whose cost is known.")
    costed_revenue = _exact(help_text="Usage revenue of the models whose cost is known.")
    cost_known = serializers.BooleanField(help_text="Whether every model's cost is known.")
    margin = _exact()
    margin_percent = serializers.DecimalField(max_digits=30, decimal_places=1, allow_null=True)


class DayRevenueSerializer(serializers.Serializer[Any]):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usage_revenue = _exact(source="revenue")


class RevenueReportSerializer(serializers.Serializer[Any]):
    period = PeriodSerializer()
    totals = RevenueTotalsSerializer()
    organizations = OrganizationRevenueSerializer(many=True)
    models = ModelRevenueSerializer(many=True)
    days = DayRevenueSerializer(many=True)


class MarginReportSerializer(serializers.Serializer[Any]):
    period = PeriodSerializer()
    totals = ModelTotalsSerializer()
    models = ModelRevenueSerializer(many=True)


def _organization(row: reports.OrganizationRevenue) -> dict[str, Any]:
    return {
        "organization_id": row.organization_id,
        "name": row.name,
        "slug": row.slug,
        "plan": row.plan,
        "billing_mode": row.billing_mode,
        "requests": row.requests,
        "tokens": row.tokens,
        "revenue": row.revenue,
        "invoice_number": row.invoice.number if row.invoice else None,
        "invoice_status": row.invoice.status if row.invoice else None,
        "invoiced": row.invoiced,
        "base_fee": row.base_fee,
        "adjustments": row.adjustments,
        "upcoming": row.upcoming,
    }


def _day(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "day": row["day"].date()}


class _StaffReport(APIView):
    permission_classes = [permissions.IsAdminUser]

    def period(self, request: Request) -> reports.Period:
        query = MonthQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return reports.month_period(query.validated_data.get("month") or None)


class RevenueReportView(_StaffReport):
    @extend_schema(
        operation_id="staff_reports_revenue",
        summary="Revenue of a month by organisation, model and day (staff)",
        tags=["reports"],
        parameters=[MonthQuerySerializer],
        responses=RevenueReportSerializer,
    )
    def get(self, request: Request) -> Response:
        period = self.period(request)
        usage = reports.usage_groups(period)  # one scan of the month's rollups for all three
        organizations = reports.revenue_by_organization(period, usage)
        data = {
            "period": period,
            "totals": reports.revenue_totals(organizations),
            "organizations": [_organization(row) for row in organizations],
            "models": reports.revenue_by_model(period, usage),
            "days": [_day(row) for row in reports.revenue_by_day(period, usage)],
        }
        return Response(RevenueReportSerializer(data).data)


class MarginReportView(_StaffReport):
    @extend_schema(
        operation_id="staff_reports_margin",
        summary="Cost per million tokens and gross margin per model (staff)",
        tags=["reports"],
        parameters=[MonthQuerySerializer],
        responses=MarginReportSerializer,
    )
    def get(self, request: Request) -> Response:
        period = self.period(request)
        models = reports.revenue_by_model(period)
        data = {"period": period, "totals": reports.model_totals(models), "models": models}
        return Response(MarginReportSerializer(data).data)
