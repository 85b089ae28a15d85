"""Finalised invoices pushed to Stripe (docs/billing.md, "Stripe"), through the official SDK
against the local test double for Stripe's servers: one customer per organisation, items that
add up to exactly our total, idempotency keys that make retries harmless, Stripe down, and no
Stripe at all."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import stripe

from billing import services, stripe_sync
from billing.ingest import ingest_events
from billing.models import Invoice, StripeCustomer
from billing.stripe_tasks import stripe_push_invoice, stripe_push_pending
from tenants.models import AuditEvent, Role
from tests.billing.metering_support import make_event
from tests.billing.stripe_double import (  # noqa: F401 (fixtures)
    eager_tasks_fixture,
    free_port_url,
    stripe_double_fixture,
)
from tests.billing.usage_data import make_key
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

PERIOD = "2026-10"
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _org(slug: str = "acme"):  # type: ignore[no-untyped-def]
    org = OrganizationFactory(slug=slug, name=slug.title(), created_at=START)
    MembershipFactory(organization=org, user=UserFactory(username=f"{slug}-owner"), role=Role.OWNER)
    return org


def _usage(org, costs: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org, "k")
    ingest_events(
        [
            make_event(
                org_id=str(org.pk),
                key_id=str(key.pk),
                model=model,
                served_model=model,
                status=200,
                error_type=None,
                prompt_tokens=1000,
                completion_tokens=100,
                cached_tokens=0,
                cost=Decimal(cost),
                started_at=(START + dt.timedelta(days=3)).isoformat().replace("+00:00", "Z"),
            )
            for model, cost in costs.items()
        ]
    )


# Three lines of x.xx4 USD: each rounds down, the total (13.012 → 13.01) does not.
COSTS = {"llama-8b": "4.004", "qwen-0.5b": "4.004", "mistral-7b": "5.004"}


def _finalise(org, django_capture_on_commit_callbacks) -> Invoice:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.invoice_finalise(
            organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
        )
    assert outcome.invoice is not None
    return Invoice.objects.get(pk=outcome.invoice.pk)


def test_finalisation_pushes_the_invoice_with_its_lines_and_an_exact_total(
    stripe_double, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = _finalise(org, django_capture_on_commit_callbacks)

    assert invoice.total == Decimal("13.01")
    assert invoice.stripe_invoice_id.startswith("in_")
    assert invoice.payment_url == f"{stripe_double.base}/pay/{invoice.stripe_invoice_id}"
    assert invoice.due_at is not None
    remote = stripe_double.invoices[invoice.stripe_invoice_id]
    assert remote["status"] == "open"
    assert remote["metadata"]["vl_invoice_id"] == str(invoice.pk)
    # Every line as an item in cents, plus the rounding item: Stripe's total is ours exactly.
    items = [stripe_double.items[i] for i in remote["_items"]]
    assert sorted(i["amount"] for i in items[:3]) == [400, 400, 500]
    assert items[3]["amount"] == 1
    assert items[-1]["description"] == "Rounding"
    assert stripe_double.invoice_total(invoice.stripe_invoice_id) == 1301
    keys = [c.idempotency_key for c in stripe_double.calls]
    assert keys == [
        f"vl-customer-{org.pk}",
        f"vl-invoice-{invoice.pk}",
        *[f"vl-invoice-{invoice.pk}-item-{n}" for n in (1, 2, 3)],
        f"vl-invoice-{invoice.pk}-item-rounding",
        f"vl-invoice-{invoice.pk}-finalize",
    ]
    customer = StripeCustomer.objects.get(organization=org)
    assert stripe_double.customers[customer.customer_id]["email"] == "acme-owner@example.test"
    assert AuditEvent.objects.filter(action="invoice.pushed", target_id=str(invoice.pk)).exists()


def test_a_line_rounding_up_gets_a_negative_rounding_item(stripe_double):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, {"llama-8b": "1.005", "qwen-0.5b": "1.005", "mistral-7b": "1.005"})
    outcome = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    )
    invoice = stripe_sync.invoice_push(outcome.invoice.pk)  # type: ignore[union-attr]
    assert invoice.total == Decimal("3.02")  # 3.015 rounded once, half up
    amounts = [
        stripe_double.items[i]["amount"]
        for i in stripe_double.invoices[invoice.stripe_invoice_id]["_items"]
    ]
    assert amounts == [101, 101, 101, -1]
    assert sum(amounts) == 302


def test_the_invoices_tax_is_one_more_item_so_stripe_collects_the_total_due(
    stripe_double, settings
):  # type: ignore[no-untyped-def]
    settings.VLINDERS_TAX_NAME = "VAT"
    settings.VLINDERS_TAX_RATE_PERCENT = "21"
    org = _org()
    _usage(org, COSTS)
    outcome = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    )
    settings.VLINDERS_TAX_RATE_PERCENT = "10"  # a later change: the invoice keeps its own tax
    invoice = stripe_sync.invoice_push(outcome.invoice.pk)  # type: ignore[union-attr]
    assert invoice.tax == Decimal("2.73")  # 21 % of 13.01 = 2.7321, rounded once
    items = [
        stripe_double.items[i] for i in stripe_double.invoices[invoice.stripe_invoice_id]["_items"]
    ]
    assert (items[-1]["description"], items[-1]["amount"]) == ("VAT 21%", 273)
    assert stripe_double.invoice_total(invoice.stripe_invoice_id) == 1301 + 273
    assert invoice.total_due == Decimal("15.74")
    keys = [c.idempotency_key for c in stripe_double.calls]
    assert f"vl-invoice-{invoice.pk}-item-tax" in keys


def test_a_repeated_push_creates_nothing_twice(stripe_double):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    outcome = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    )
    invoice = outcome.invoice
    assert invoice is not None
    first = stripe_sync.invoice_push(invoice.pk)
    # A worker that pushed but died before it stored anything: the same steps again.
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="", payment_url="")
    StripeCustomer.objects.filter(organization=org).delete()
    again = stripe_sync.invoice_push(invoice.pk)

    assert again.stripe_invoice_id == first.stripe_invoice_id
    assert again.payment_url == first.payment_url
    assert len(stripe_double.customers) == 1
    assert len(stripe_double.invoices) == 1
    assert len(stripe_double.items) == 4
    assert len(stripe_double.posts("/v1/", replayed=True)) == 7  # every call answered from its key
    # Pushed: a third push calls nothing.
    calls = len(stripe_double.calls)
    stripe_sync.invoice_push(invoice.pk)
    assert len(stripe_double.calls) == calls


def test_a_push_interrupted_half_way_is_completed_by_beat(stripe_double, monkeypatch):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    outcome = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    )
    invoice = outcome.invoice
    assert invoice is not None
    # Stripe stops answering after the invoice and its first item were created.
    real = stripe_double.handle
    budget = {"left": 3}

    def flaky(method, path, params, key):  # type: ignore[no-untyped-def]
        if budget["left"] == 0:
            return 500, {"error": {"type": "api_error", "message": "Stripe had a problem."}}
        budget["left"] -= 1
        return real(method, path, params, key)

    monkeypatch.setattr(stripe_double, "handle", flaky)
    assert stripe_push_invoice(str(invoice.pk)) is False
    half = Invoice.objects.get(pk=invoice.pk)
    assert half.stripe_invoice_id
    assert not half.payment_url

    monkeypatch.setattr(stripe_double, "handle", real)
    assert stripe_push_pending() == {"pushed": 1, "failed": 0}
    done = Invoice.objects.get(pk=invoice.pk)
    assert done.payment_url
    assert len(stripe_double.invoices) == 1
    assert stripe_double.invoice_total(done.stripe_invoice_id) == 1301  # no item twice


def test_stripe_down_loses_nothing_and_beat_pushes_later(
    stripe_double, settings, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    up = settings.STRIPE_API_BASE
    settings.STRIPE_API_BASE = free_port_url()  # connection refused
    org = _org()
    _usage(org, COSTS)
    invoice = _finalise(org, django_capture_on_commit_callbacks)
    assert invoice.status == Invoice.Status.OPEN  # finalised all the same
    assert not invoice.stripe_invoice_id
    assert not invoice.payment_url
    with pytest.raises(stripe.APIConnectionError):
        stripe_sync.invoice_push(invoice.pk)
    assert stripe_push_pending() == {"pushed": 0, "failed": 1}

    settings.STRIPE_API_BASE = up
    assert stripe_push_pending() == {"pushed": 1, "failed": 0}
    assert stripe_push_pending() == {"pushed": 0, "failed": 0}
    assert Invoice.objects.get(pk=invoice.pk).payment_url
    assert len(stripe_double.invoices) == 1


def test_only_open_invoices_with_something_to_pay_are_pushed(stripe_double):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    outcome = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    )
    invoice = outcome.invoice
    assert invoice is not None
    services.invoice_mark_paid(invoice_id=invoice.pk, actor=None)
    assert stripe_sync.invoices_to_push() == []
    assert stripe_sync.invoice_push(invoice.pk).stripe_invoice_id == ""
    assert stripe_double.calls == []


def test_without_stripe_nothing_is_pushed_and_staff_mark_paid(
    settings, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_API_BASE = free_port_url()  # would fail loudly if anything called it
    org = _org()
    _usage(org, COSTS)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        outcome = services.invoice_finalise(
            organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
        )
    assert callbacks == []  # no push queued
    invoice = outcome.invoice
    assert invoice is not None
    assert invoice.status == Invoice.Status.OPEN
    assert stripe_sync.invoices_to_push() == []
    assert stripe_push_pending() == {"pushed": 0, "failed": 0}
    paid = services.invoice_mark_paid(invoice_id=invoice.pk, actor=UserFactory(is_staff=True))
    assert paid.status == Invoice.Status.PAID
    assert paid.paid_at is not None


def test_staff_push_an_invoice_from_the_admin_and_see_stripe_rows(stripe_double, client):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    ).invoice
    assert invoice is not None
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    response = client.post(
        "/admin/billing/invoice/",
        {"action": "push_to_stripe", "_selected_action": [str(invoice.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 invoice(s) on Stripe." in response.content.decode()
    pushed = Invoice.objects.get(pk=invoice.pk)
    assert pushed.payment_url
    listing = client.get("/admin/billing/invoice/").content.decode()
    assert pushed.stripe_invoice_id in listing
    for page in ("stripecustomer", "topup", "stripeevent"):
        assert client.get(f"/admin/billing/{page}/").status_code == 200


def test_staff_paying_a_pushed_invoice_marks_it_paid_on_stripe_once(
    stripe_double, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = _finalise(org, django_capture_on_commit_callbacks)
    staff = UserFactory(username="staff", is_staff=True)
    with django_capture_on_commit_callbacks(execute=True):
        services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)
        services.invoice_mark_paid(invoice_id=invoice.pk, actor=staff)  # idempotent
    remote = stripe_double.invoices[invoice.stripe_invoice_id]
    assert remote["status"] == "paid"
    assert remote["paid_out_of_band"] is True
    [call] = stripe_double.posts(f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
    assert call.idempotency_key == f"vl-invoice-{invoice.pk}-paid-out-of-band"


def test_a_payment_reported_by_stripe_is_not_sent_back_to_stripe(
    stripe_double, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = _finalise(org, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.invoice_mark_paid(invoice_id=invoice.pk, actor=None, from_stripe=True)
    assert stripe_double.posts(f"/v1/invoices/{invoice.stripe_invoice_id}/pay") == []


def test_staff_paying_an_invoice_the_customer_paid_on_stripe_meanwhile(
    stripe_double, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = _finalise(org, django_capture_on_commit_callbacks)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)  # its webhook is still on the way
    with django_capture_on_commit_callbacks(execute=True):
        paid = services.invoice_mark_paid(invoice_id=invoice.pk, actor=None)
    assert paid.status == Invoice.Status.PAID  # ours is paid; Stripe's refusal is only logged
    [call] = stripe_double.posts(f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
    assert call.status == 400


def test_a_push_retried_after_stripe_forgot_its_keys_duplicates_nothing(stripe_double, monkeypatch):  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    ).invoice
    assert invoice is not None
    real = stripe_double.handle
    budget = {"left": 4}  # customer, invoice, two items; then Stripe fails for a day

    def flaky(method, path, params, key):  # type: ignore[no-untyped-def]
        if budget["left"] == 0:
            return 500, {"error": {"type": "api_error", "message": "Stripe had a problem."}}
        budget["left"] -= 1
        return real(method, path, params, key)

    monkeypatch.setattr(stripe_double, "handle", flaky)
    assert stripe_push_invoice(str(invoice.pk)) is False
    monkeypatch.setattr(stripe_double, "handle", real)
    stripe_double.forget_idempotency_keys()  # more than 24 hours later

    assert stripe_push_invoice(str(invoice.pk)) is True
    pushed = Invoice.objects.get(pk=invoice.pk)
    remote = stripe_double.invoices[pushed.stripe_invoice_id]
    assert len(remote["_items"]) == 4
    assert stripe_double.invoice_total(pushed.stripe_invoice_id) == 1301
    assert remote["status"] == "open"


def test_a_push_whose_stripe_invoice_is_finalised_only_stores_its_url(stripe_double) -> None:  # type: ignore[no-untyped-def]
    org = _org()
    _usage(org, COSTS)
    invoice = services.invoice_finalise(
        organization_id=org.pk, period=PERIOD, now=END + dt.timedelta(hours=2)
    ).invoice
    assert invoice is not None
    first = stripe_sync.invoice_push(invoice.pk)
    # The worker died after Stripe finalised, before our row kept the URL; a day goes by.
    Invoice.objects.filter(pk=invoice.pk).update(payment_url="")
    stripe_double.forget_idempotency_keys()
    calls = len(stripe_double.calls)
    again = stripe_sync.invoice_push(invoice.pk)
    assert again.payment_url == first.payment_url
    assert [c.path for c in stripe_double.calls[calls:]] == [
        f"/v1/invoices/{first.stripe_invoice_id}"
    ]
    assert len(stripe_double.items) == 4
