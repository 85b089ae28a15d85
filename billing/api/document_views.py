"""Billing documents in the API: an invoice (or the upcoming draft) as PDF or CSV, and the
monthly usage statement as CSV or PDF (docs/billing.md, "Documents").

Same roles as the invoice API (owners and admins, ``MANAGE``; members and viewers 403, outsiders
404 through ``OrganizationAccess``). Errors stay JSON whatever ``Accept`` asks for: 404 for an
unknown invoice or a month outside the organisation's life, 400 for a malformed month.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from billing import statements
from billing.documents import downloads
from billing.models import Invoice
from tenants.api.scoping import OrganizationScopedViewSet
from tenants.models import Organization
from tenants.roles import MANAGE
from vlinders import csv_export
from vlinders.openapi import ValidationErrorSerializer

_PDF = {(200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="PDF")}
_CSV = {(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV")}
# A statement's month is a path segment: one that is not YYYY-MM is a 400 naming ``month``.
_MONTH = OpenApiParameter(
    "month",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
    description="The UTC calendar month, YYYY-MM.",
)
_BAD_MONTH = {
    400: OpenApiResponse(ValidationErrorSerializer, description="The month is not a YYYY-MM.")
}


class DocumentViewSet(OrganizationScopedViewSet):
    queryset = Invoice.objects.none()
    pagination_class = None
    renderer_classes = [JSONRenderer]
    content_negotiation_class = csv_export.JSONAlways
    action_roles = {
        "invoice_pdf": MANAGE,
        "invoice_csv": MANAGE,
        "statement_pdf": MANAGE,
        "statement_csv": MANAGE,
    }

    def scoped_queryset(self, organization: Organization) -> QuerySet[Invoice]:
        return Invoice.objects.filter(organization=organization)

    @extend_schema(operation_id="orgs_invoices_pdf", responses=_PDF)
    def invoice_pdf(self, request: Request, org_slug: str, number: str) -> HttpResponse:
        """The invoice ``number`` (or ``upcoming``, the current month's draft) as a PDF."""
        return downloads.invoice_download(self.organization, number, "pdf")

    @extend_schema(operation_id="orgs_invoices_csv", responses=_CSV)
    def invoice_csv(self, request: Request, org_slug: str, number: str) -> HttpResponse:
        """The invoice's lines and totals as CSV, decimals as exact strings."""
        return downloads.invoice_download(self.organization, number, "csv")

    def _month(self, month: str) -> str:
        try:
            statements.check_month(self.organization, month)
        except ValueError as exc:
            raise exceptions.ValidationError({"month": [str(exc)]}) from exc
        except statements.MonthOutOfRange as exc:
            raise exceptions.NotFound(
                f"No statement for {month}: outside the organisation's months."
            ) from exc
        return month

    @extend_schema(
        operation_id="orgs_statements_pdf", parameters=[_MONTH], responses={**_PDF, **_BAD_MONTH}
    )
    def statement_pdf(self, request: Request, org_slug: str, month: str) -> HttpResponse:
        """The usage statement of a UTC month (``YYYY-MM``) as a PDF."""
        return downloads.statement_download(self.organization, self._month(month), "pdf")

    @extend_schema(
        operation_id="orgs_statements_csv", parameters=[_MONTH], responses={**_CSV, **_BAD_MONTH}
    )
    def statement_csv(self, request: Request, org_slug: str, month: str) -> HttpResponse:
        """The usage statement of a UTC month by day, model and key as CSV, with a total row."""
        return downloads.statement_download(self.organization, self._month(month), "csv")
