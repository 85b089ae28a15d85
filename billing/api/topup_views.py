"""The top-up API of prepaid organisations (docs/billing.md, "Stripe"): ``GET`` lists the
organisation's top-ups, ``POST`` starts one and answers the Stripe Checkout URL to pay at.

Owners and admins only (``MANAGE``; members and viewers 403, outsiders 404 through
``OrganizationAccess``). The credit itself arrives by Stripe's webhook, never through this API.
Refusals: 400 for a bad amount, 409 for a postpaid organisation or an installation without
payments configured, 503 when Stripe cannot be reached."""

from __future__ import annotations

import stripe
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import stripe_client, topups
from billing.api.topup_serializers import TopUpCreateSerializer, TopUpSerializer
from billing.models import TopUp
from tenants.api.scoping import OrganizationScopedViewSet
from tenants.models import Organization
from tenants.roles import MANAGE
from vlinders.openapi import ErrorSerializer


class PaymentsUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "payments_unavailable"


class TopUpConflict(exceptions.APIException):
    """The installation or the organisation does not take top-ups: no retry will help."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "topup_not_possible"


_CONFLICT = (
    "Top-ups are not possible: payments are not configured on this installation, or the "
    "organisation is postpaid (it pays invoices)."
)


class TopUpViewSet(mixins.ListModelMixin, OrganizationScopedViewSet):
    queryset = TopUp.objects.none()
    serializer_class = TopUpSerializer
    action_roles = {"list": MANAGE, "create": MANAGE}

    def scoped_queryset(self, organization: Organization) -> QuerySet[TopUp]:
        return TopUp.objects.filter(organization=organization).order_by("-created_at")

    @extend_schema(
        request=TopUpCreateSerializer,
        responses={
            201: TopUpSerializer,
            409: OpenApiResponse(ErrorSerializer, description=_CONFLICT),
            503: OpenApiResponse(
                ErrorSerializer, description="The payment provider could not be reached."
            ),
        },
    )
    def create(self, request: Request, org_slug: str) -> Response:
        """Start a top-up: answers the top-up with ``checkout_url``, Stripe's payment page."""
        body = TopUpCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            topup = topups.topup_start(
                self.organization,
                body.validated_data["amount"],
                request.user,
                base_url=request.build_absolute_uri("/"),
            )
        except stripe_client.StripeNotConfigured as exc:
            raise TopUpConflict("Payments are not configured on this installation.") from exc
        except topups.TopUpNotAllowed as exc:
            raise TopUpConflict(str(exc)) from exc
        except stripe.StripeError as exc:
            raise PaymentsUnavailable(
                "The payment provider could not be reached; try again in a moment."
            ) from exc
        return Response(TopUpSerializer(topup).data, status=status.HTTP_201_CREATED)
