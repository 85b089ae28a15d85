"""The prepaid balance API (docs/billing.md, "Prepaid"): ``balance/`` (the billing mode and the
balance: credited, usage, balance) and ``ledger/`` (top-ups, adjustments and usage by UTC day
with a running balance, over a bounded range).

Billing is visible to owners and admins only (``MANAGE``), as the invoice API: members and
viewers get 403, outsiders 404 through ``OrganizationAccess``, the one scoping mechanism.
Read-only: credit changes through the Stripe webhook (top-ups) and staff (adjustments)."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from billing import prepaid
from billing.api.prepaid_serializers import (
    BalanceSerializer,
    LedgerQuerySerializer,
    LedgerSerializer,
)
from billing.models import CreditEntry
from tenants.api.scoping import OrganizationScopedViewSet
from tenants.models import Organization
from tenants.roles import MANAGE


class PrepaidViewSet(OrganizationScopedViewSet):
    queryset = CreditEntry.objects.none()
    serializer_class = BalanceSerializer
    pagination_class = None
    action_roles = {"balance": MANAGE, "ledger": MANAGE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[CreditEntry]:
        return CreditEntry.objects.filter(organization=organization)

    @extend_schema(responses=BalanceSerializer)
    def balance(self, request: Request, org_slug: str) -> Response:
        """The billing mode and the balance as Postgres knows it (events not ingested yet,
        about a second of traffic, are not in it)."""
        return Response(BalanceSerializer(prepaid.summary(self.organization)).data)

    @extend_schema(parameters=[LedgerQuerySerializer], responses=LedgerSerializer)
    def ledger(self, request: Request, org_slug: str) -> Response:
        """Top-ups, adjustments and usage per UTC day in ``[from, to)``, oldest first, each
        with the balance after it, between the opening and the closing balance."""
        query = LedgerQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end = query.validated_data["from"], query.validated_data["to"]
        return Response(LedgerSerializer(prepaid.ledger(self.organization, start, end)).data)
