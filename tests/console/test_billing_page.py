"""The console's billing page (``console/pages/billing.py``): the role matrix of every view,
the payment-status banners and pay links, the upcoming invoice, statements, the prepaid
balance and ledger, top-ups through Stripe Checkout (against the labelled test double for
Stripe's servers), and downloads identical to the API's."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import prepaid
from billing.models import Invoice, TopUp
from tenants.models import AuditEvent, BillingMode
from tests.billing.documents_support import PERIOD, START, finalised_invoice, make_month
from tests.billing.stripe_double import stripe_double_fixture  # noqa: F401  (fixture)
from tests.billing.usage_data import add_rollup, make_key

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/billing/"
MANAGERS_READ = {"owner": 200, "admin": 200, "staff": 200}
REFUSED = {"member": 403, "viewer": 403, "outsider": 404, "anonymous": 302}


@pytest.fixture
def billed(org, owner, staff):  # type: ignore[no-untyped-def]
    org.created_at = START
    org.save()
    make_month(org)
    return finalised_invoice(org, staff)


@pytest.fixture
def prepaid_org(org):  # type: ignore[no-untyped-def]
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    org.billing_mode = BillingMode.PREPAID
    org.prepaid_since = hour
    org.save()
    prepaid.credit(
        org, Decimal("50.00"), kind="topup", reference="checkout:cs_1", description="Card"
    )
    add_rollup(make_key(org), hour + dt.timedelta(hours=1), cost="1.250000000001", prompt=9)
    return org


# --- the role matrix ------------------------------------------------------------------------------
def test_page_role_matrix(assert_matrix, billed) -> None:  # type: ignore[no-untyped-def]
    assert_matrix(URL, MANAGERS_READ | REFUSED)


def test_downloads_role_matrix(assert_matrix, billed) -> None:  # type: ignore[no-untyped-def]
    for path in (
        f"invoices/{billed.number}/pdf/",
        f"invoices/{billed.number}/csv/",
        "invoices/upcoming/csv/",
        f"statements/{PERIOD}/csv/",
        f"statements/{PERIOD}/pdf/",
    ):
        assert_matrix(URL + path, MANAGERS_READ | REFUSED)


def test_topup_role_matrix(assert_matrix, prepaid_org, stripe_double) -> None:  # type: ignore[no-untyped-def]
    to_checkout = {"owner": 302, "admin": 302, "staff": 302}
    assert_matrix(URL + "topup/", to_checkout | REFUSED, method="post", data={"amount": "25.00"})
    assert TopUp.objects.filter(organization=prepaid_org).count() == 3


def test_the_page_refuses_other_methods(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    assert role_client("owner").post(URL).status_code == 405
    assert role_client("owner").get(URL + "topup/").status_code == 405


# --- what the page shows --------------------------------------------------------------------------
def test_invoices_with_status_documents_and_no_pay_link_without_a_payment_page(
    role_client, billed
) -> None:  # type: ignore[no-untyped-def]
    page = role_client("owner").get(URL).content.decode()
    assert billed.display_number in page
    assert f"USD {billed.total}" in page
    assert "Open" in page
    assert f"{URL}invoices/{billed.number}/pdf/" in page
    assert f"{URL}invoices/{billed.number}/csv/" in page
    assert ">Pay<" not in page
    assert 'id="billing-past-due"' not in page
    assert 'id="billing-suspended"' not in page


def test_past_due_banner_and_pay_link(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    billed.status = Invoice.Status.PAST_DUE
    billed.payment_failed_at = timezone.now()
    billed.payment_url = "https://pay.example.test/inv_42"
    billed.save()
    page = role_client("admin").get(URL).content.decode()
    assert 'id="billing-past-due"' in page
    assert "Past due" in page
    assert page.count('href="https://pay.example.test/inv_42"') == 2  # banner and the row


def test_an_open_invoice_past_its_due_date_is_past_due(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    billed.due_at = timezone.now() - dt.timedelta(hours=1)
    billed.save()
    page = role_client("owner").get(URL).content.decode()
    assert 'id="billing-past-due"' in page
    billed.due_at = timezone.now() + dt.timedelta(days=3)
    billed.save()
    assert 'id="billing-past-due"' not in role_client("owner").get(URL).content.decode()


def test_a_paid_invoice_has_no_pay_link(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    billed.status = Invoice.Status.PAID
    billed.paid_at = timezone.now()
    billed.payment_url = "https://pay.example.test/inv_43"
    billed.save()
    page = role_client("owner").get(URL).content.decode()
    assert "https://pay.example.test/inv_43" not in page
    assert "Paid" in page


def test_suspension_banner(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    organization = billed.organization
    organization.payment_suspended_at = timezone.now()
    organization.save()
    page = role_client("owner").get(URL).content.decode()
    assert 'id="billing-suspended"' in page
    assert "keys suspended" in page


def test_upcoming_invoice_and_statements(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    add_rollup(make_key(billed.organization, "new"), now, model="qwen-0.5b", cost="0.25", prompt=3)
    page = role_client("owner").get(URL).content.decode()
    month = timezone.now().strftime("%Y-%m")
    assert f'Upcoming invoice <span class="muted">({month}' in page
    assert "qwen-0.5b" in page
    assert f"{URL}invoices/upcoming/pdf/" in page
    for shown in (month, "2026-10", "2026-09"):
        assert f"{URL}statements/{shown}/csv/" in page
        assert f"{URL}statements/{shown}/pdf/" in page


def test_postpaid_organisations_see_no_prepaid_section(role_client, billed, stripe_double) -> None:  # type: ignore[no-untyped-def]
    page = role_client("owner").get(URL).content.decode()
    assert 'id="billing-prepaid"' not in page
    assert 'id="billing-topup"' not in page


def test_prepaid_balance_and_ledger(role_client, prepaid_org) -> None:  # type: ignore[no-untyped-def]
    page = role_client("owner").get(URL).content.decode()
    assert 'id="billing-prepaid"' in page
    assert prepaid.balance_of(prepaid_org) == Decimal("48.749999999999")
    # Exact, as the ledger is: never rounded for display.
    assert '<div class="value" id="billing-balance">48.749999999999</div>' in page
    assert 'id="billing-ledger"' in page
    assert "Top-up" in page
    assert '<td class="num">-1.250000000001</td>' in page  # the day's usage, exact
    # Without Stripe there is no form, and the page says so.
    assert 'id="billing-topup"' not in page
    assert 'id="billing-topup-off"' in page


def test_topup_sends_the_member_to_stripe_checkout(role_client, prepaid_org, stripe_double) -> None:  # type: ignore[no-untyped-def]
    client = role_client("owner")
    assert 'id="billing-topup"' in client.get(URL).content.decode()
    response = client.post(URL + "topup/", {"amount": "25.00"})
    assert response.status_code == 302
    topup = TopUp.objects.get(organization=prepaid_org)
    assert topup.amount == Decimal("25.00")
    assert response["Location"] == topup.checkout_url
    assert topup.checkout_url.startswith(stripe_double.base)
    session = stripe_double.sessions[topup.stripe_session_id]
    assert session["success_url"].endswith(f"{URL}?topup=success")
    assert AuditEvent.objects.filter(organization=prepaid_org, action="topup.started").exists()
    # Back from Stripe: a note, no credit until the webhook.
    page = client.get(URL + "?topup=success").content.decode()
    assert 'id="billing-topup-success"' in page
    assert prepaid.balance_of(prepaid_org) == Decimal("48.749999999999")


@pytest.mark.parametrize(
    ("amount", "message"),
    [("abc", "Enter a number."), ("0.001", "decimal places"), ("1.00", "between")],
)
def test_a_bad_top_up_amount_is_shown_on_the_form(
    role_client, prepaid_org, stripe_double, amount: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    response = role_client("owner").post(URL + "topup/", {"amount": amount})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not TopUp.objects.exists()


def test_a_postpaid_organisation_cannot_top_up(role_client, billed, stripe_double) -> None:  # type: ignore[no-untyped-def]
    response = role_client("owner").post(URL + "topup/", {"amount": "25.00"}, follow=True)
    assert response.redirect_chain == [(URL, 302)]
    assert "Only prepaid organisations top up" in response.content.decode()
    assert not TopUp.objects.exists()


def test_nav_link_only_for_roles_that_see_billing(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    link = f'href="{URL}"'
    assert link in role_client("owner").get("/orgs/acme/").content.decode()
    assert link not in role_client("member").get("/orgs/acme/").content.decode()
    assert link not in role_client("viewer").get("/orgs/acme/").content.decode()


# --- downloads ------------------------------------------------------------------------------------
def test_downloads_are_the_apis_bytes(role_client, billed) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_login(billed.organization.memberships.get(role="owner").user)
    for console_path, api_path in (
        (f"invoices/{billed.number}/csv/", f"invoices/{billed.number}/csv/"),
        (f"statements/{PERIOD}/csv/", f"statements/{PERIOD}/csv/"),
    ):
        mine = role_client("owner").get(URL + console_path)
        theirs = api.get(f"/api/v1/orgs/acme/{api_path}")
        assert mine.status_code == theirs.status_code == 200
        assert mine.content == theirs.content
        assert mine["Content-Disposition"] == theirs["Content-Disposition"]
    pdf = role_client("owner").get(URL + f"invoices/{billed.number}/pdf/")
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("invoices/999999/pdf/", 404),
        ("invoices/1/xlsx/", 404),
        ("statements/2026-13/csv/", 400),
        ("statements/2099-01/pdf/", 404),
        ("statements/2001-01/csv/", 404),
    ],
)
def test_download_errors(role_client, billed, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    assert role_client("owner").get(URL + path).status_code == status
