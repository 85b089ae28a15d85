"""The invoice API: an organisation's finalised invoices and its upcoming (draft) invoice.

Billing is visible to owners and admins only (``MANAGE``): members and viewers get 403, outsiders
404 through ``OrganizationAccess``, the one scoping mechanism. Read-only: invoices change only
through the services (finalisation by beat, status and adjustments by staff)."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors
from billing.api.invoice_serializers import InvoiceSerializer, InvoiceSummarySerializer
from billing.models import Invoice
from tenants.api.scoping import OrganizationScopedViewSet
from tenants.models import Organization
from tenants.roles import MANAGE


class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    queryset = Invoice.objects.none()
    serializer_class = InvoiceSerializer
    lookup_field = "number"
    lookup_value_regex = "[0-9]+"
    action_roles = {"list": MANAGE, "retrieve": MANAGE, "upcoming": MANAGE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[Invoice]:
        return selectors.invoices_of(organization)

    def get_serializer_class(self) -> type[InvoiceSummarySerializer]:
        return InvoiceSummarySerializer if self.action == "list" else InvoiceSerializer

    @extend_schema(responses=InvoiceSerializer)
    def upcoming(self, request: Request, org_slug: str) -> Response:
        """The current month's invoice as it stands now (a draft: computed, not stored)."""
        draft = selectors.upcoming_invoice(organization=self.organization)
        serializer = InvoiceSerializer(draft.invoice, context={"lines": draft.lines})
        return Response(serializer.data)
