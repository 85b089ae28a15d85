"""Top-ups of prepaid organisations through Stripe Checkout (docs/billing.md, "Stripe"): the API
with the three actors, the Checkout session Stripe receives, the refusals, and a top-up from the
API to the credited balance through the signed webhook."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from billing import prepaid
from billing.models import TopUp
from tenants.models import AuditEvent, BillingMode
from tests.billing.stripe_double import (  # noqa: F401 (fixtures)
    eager_tasks_fixture,
    free_port_url,
    signed_event,
    stripe_double_fixture,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/topups/"


@pytest.fixture
def prepaid_acme(org):  # type: ignore[no-untyped-def]
    org.billing_mode = BillingMode.PREPAID
    org.prepaid_since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    org.save()
    return org


@pytest.fixture
def admin_client(org):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    from tenants.models import Role
    from tests.factories import MembershipFactory, UserFactory

    user = MembershipFactory(
        organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
    ).user
    client = APIClient()
    client.force_login(user)
    return client


def test_an_owner_starts_a_top_up_and_gets_the_checkout_url(
    stripe_double, prepaid_acme, owner, as_owner
):  # type: ignore[no-untyped-def]
    response = as_owner.post(URL, {"amount": "25.00"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    topup = TopUp.objects.get(pk=body["id"])
    assert body["amount"] == "25.00"
    assert body["status"] == "pending"
    assert body["checkout_url"] == f"{stripe_double.base}/checkout/{topup.stripe_session_id}"
    assert topup.created_by == owner

    session = stripe_double.sessions[topup.stripe_session_id]
    assert session["mode"] == "payment"
    assert session["amount_total"] == 2500
    assert session["client_reference_id"] == str(topup.pk)
    assert session["metadata"]["vl_topup_id"] == str(topup.pk)
    assert session["success_url"] == "http://testserver/orgs/acme/billing/?topup=success"
    assert session["cancel_url"] == "http://testserver/orgs/acme/billing/?topup=cancelled"
    call = stripe_double.posts("/v1/checkout/sessions")[0]
    assert call.idempotency_key == f"vl-topup-{topup.pk}"
    assert AuditEvent.objects.filter(action="topup.started", target_id=str(topup.pk)).exists()

    listed = as_owner.get(URL)
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["results"]] == [str(topup.pk)]


def test_an_admin_may_too(stripe_double, prepaid_acme, admin_client) -> None:  # type: ignore[no-untyped-def]
    assert admin_client.post(URL, {"amount": "5.00"}, format="json").status_code == 201
    assert admin_client.get(URL).status_code == 200


def test_a_viewer_gets_403_and_an_outsider_404(
    stripe_double, prepaid_acme, as_viewer, as_member, as_outsider, anonymous
):  # type: ignore[no-untyped-def]
    for client in (as_viewer, as_member):
        assert client.post(URL, {"amount": "25.00"}, format="json").status_code == 403
        assert client.get(URL).status_code == 403
    assert as_outsider.post(URL, {"amount": "25.00"}, format="json").status_code == 404
    assert as_outsider.get(URL).status_code == 404
    assert anonymous.get(URL).status_code in (401, 403)
    assert TopUp.objects.count() == 0
    assert stripe_double.calls == []


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("4.99", "greater than or equal to 5.00"),
        ("10000.01", "less than or equal to 10000.00"),
        ("12.345", "decimal places"),
        ("abc", "valid number"),
        ("-5", "greater than or equal to 5.00"),
    ],
)
def test_a_bad_amount_is_a_400(stripe_double, prepaid_acme, as_owner, amount, message):  # type: ignore[no-untyped-def]
    response = as_owner.post(URL, {"amount": amount}, format="json")
    assert response.status_code == 400
    assert message in str(response.json()["amount"])
    assert TopUp.objects.count() == 0


def test_missing_amount_is_a_400(stripe_double, prepaid_acme, as_owner) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.post(URL, {}, format="json")
    assert response.status_code == 400
    assert "amount" in response.json()


def test_a_postpaid_organisation_gets_409(stripe_double, org, as_owner) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.post(URL, {"amount": "25.00"}, format="json")
    assert response.status_code == 409
    assert "prepaid" in response.json()["detail"]
    assert stripe_double.calls == []


def test_without_stripe_top_ups_are_refused_clearly(settings, prepaid_acme, as_owner) -> None:  # type: ignore[no-untyped-def]
    settings.STRIPE_SECRET_KEY = ""
    response = as_owner.post(URL, {"amount": "25.00"}, format="json")
    assert response.status_code == 409
    assert response.json()["detail"] == "Payments are not configured on this installation."
    assert TopUp.objects.count() == 0


def test_stripe_down_is_a_503_and_the_top_up_is_not_left_pending(
    stripe_double, settings, prepaid_acme, as_owner
):  # type: ignore[no-untyped-def]
    settings.STRIPE_API_BASE = free_port_url()
    response = as_owner.post(URL, {"amount": "25.00"}, format="json")
    assert response.status_code == 503
    assert "could not be reached" in response.json()["detail"]
    assert TopUp.objects.get().status == TopUp.Status.EXPIRED


def test_a_retried_session_creation_reuses_the_session(stripe_double, prepaid_acme, owner) -> None:  # type: ignore[no-untyped-def]
    from billing import stripe_client, stripe_sync

    topup = TopUp.objects.create(organization=prepaid_acme, amount=Decimal("25.00"))
    customer = stripe_sync.customer_for(prepaid_acme)
    params = {
        "mode": "payment",
        "customer": customer.customer_id,
        "client_reference_id": str(topup.pk),
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 2500,
                    "product_data": {"name": "x"},
                },
            }
        ],
        "success_url": "http://x/",
        "cancel_url": "http://x/",
    }
    options = {"idempotency_key": f"vl-topup-{topup.pk}"}
    first = stripe_client.client().v1.checkout.sessions.create(params=params, options=options)  # type: ignore[arg-type]
    second = stripe_client.client().v1.checkout.sessions.create(params=params, options=options)  # type: ignore[arg-type]
    assert first.id == second.id
    assert len(stripe_double.sessions) == 1


def test_from_the_api_to_the_credited_balance(
    stripe_double,
    prepaid_acme,
    as_owner,
    eager_tasks,
    django_capture_on_commit_callbacks,
    redis_client,
):  # type: ignore[no-untyped-def]
    topup_id = as_owner.post(URL, {"amount": "25.00"}, format="json").json()["id"]
    topup = TopUp.objects.get(pk=topup_id)
    paid_session = stripe_double.complete_session(topup.stripe_session_id)
    payload, header = signed_event("checkout.session.completed", paid_session)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_owner.post(
            "/stripe/webhook/",
            data=payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )
    assert response.status_code == 200
    assert prepaid.balance_of(prepaid_acme) == Decimal("25.00")
    listed = as_owner.get(URL).json()["results"]
    assert listed[0]["status"] == "completed"


def test_the_service_checks_the_amount_too(settings) -> None:  # type: ignore[no-untyped-def]
    from django.core.exceptions import ValidationError

    from billing import topups

    settings.VLINDERS_TOPUP_MIN, settings.VLINDERS_TOPUP_MAX = "10.00", "20.00"
    assert topups.topup_check_amount("10.00") == Decimal("10.00")
    for bad in ("9.99", "20.01", "10.001", "NaN", "ten"):
        with pytest.raises(ValidationError):
            topups.topup_check_amount(bad)
