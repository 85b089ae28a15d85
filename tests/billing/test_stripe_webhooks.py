"""Stripe's webhooks (docs/billing.md, "Stripe"): signature and tolerance checked by the SDK,
events stored once by id, processed in Celery with their effect, duplicates and out-of-order
deliveries harmless. Deliveries are signed by the test double exactly as Stripe signs them."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal

import pytest
from django.test import Client

from billing import prepaid, stripe_events
from billing.models import CreditEntry, Invoice, StripeCustomer, StripeEvent, TopUp
from billing.stripe_tasks import stripe_process_pending_events
from tenants.models import AuditEvent, BillingMode
from tests.billing.stripe_double import (  # noqa: F401 (fixtures)
    WEBHOOK_SECRET,
    eager_tasks_fixture,
    signed_event,
    stripe_double_fixture,
)
from tests.billing.test_dunning import make_invoice, make_org

pytestmark = pytest.mark.django_db

URL = "/stripe/webhook/"


@pytest.fixture
def stripe_client_http():  # type: ignore[no-untyped-def]
    """A browser-like client that enforces CSRF: the webhook must not need a token."""
    return Client(enforce_csrf_checks=True)


def post(client, payload: str, header: str | None):  # type: ignore[no-untyped-def]
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return client.post(URL, data=payload, content_type="application/json", **extra)


def deliver(client, event_type: str, obj: dict, **kwargs):  # type: ignore[no-untyped-def]
    payload, header = signed_event(event_type, obj, **kwargs)
    return post(client, payload, header)


def stripe_invoice(invoice: Invoice, **fields: object) -> dict:
    return {
        "id": invoice.stripe_invoice_id,
        "object": "invoice",
        "metadata": {"vl_invoice_id": str(invoice.pk)},
        "hosted_invoice_url": invoice.payment_url,
        **fields,
    }


@pytest.fixture
def deliver_processed(
    stripe_double, stripe_client_http, eager_tasks, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    """Deliver an event and run what commits queue (the processing task, its e-mails)."""

    def run(event_type: str, obj: dict, **kwargs):  # type: ignore[no-untyped-def]
        with django_capture_on_commit_callbacks(execute=True):
            response = deliver(stripe_client_http, event_type, obj, **kwargs)
        assert response.status_code == 200, response.content
        return response

    return run


# --- the endpoint -------------------------------------------------------------------------------


def test_bad_or_missing_signatures_are_refused_and_nothing_is_stored(
    stripe_double, stripe_client_http
):  # type: ignore[no-untyped-def]
    payload, header = signed_event("invoice.paid", {"id": "in_1"})
    assert post(stripe_client_http, payload, None).status_code == 400
    assert post(stripe_client_http, payload, "garbage").status_code == 400
    _, wrong = signed_event("invoice.paid", {"id": "in_1"}, secret="whsec_someone_else")
    assert post(stripe_client_http, payload, wrong).status_code == 400
    tampered = payload.replace('"in_1"', '"in_2"')
    response = post(stripe_client_http, tampered, header)
    assert response.status_code == 400
    assert "signature" in response.json()["error"].lower()
    assert StripeEvent.objects.count() == 0


def test_a_delivery_older_than_the_tolerance_is_refused(
    stripe_double, stripe_client_http, settings
):  # type: ignore[no-untyped-def]
    settings.STRIPE_WEBHOOK_TOLERANCE_S = 300
    old = int(time.time()) - 3600  # a captured delivery replayed an hour later
    response = deliver(stripe_client_http, "invoice.paid", {"id": "in_1"}, timestamp=old)
    assert response.status_code == 400
    assert "tolerance" in response.json()["error"]
    assert StripeEvent.objects.count() == 0


def test_only_post_and_no_secret_means_not_configured(stripe_client_http, settings):  # type: ignore[no-untyped-def]
    assert stripe_client_http.get(URL).status_code == 405
    settings.STRIPE_WEBHOOK_SECRET = ""
    payload, header = signed_event("invoice.paid", {"id": "in_1"})
    assert post(stripe_client_http, payload, header).status_code == 503


def test_an_event_is_stored_once_and_a_duplicate_queues_nothing(
    stripe_double, stripe_client_http, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    payload, header = signed_event("customer.created", {"id": "cus_1"}, event_id="evt_dup")
    with django_capture_on_commit_callbacks() as first:
        response = post(stripe_client_http, payload, header)
    assert response.status_code == 200
    assert response.json() == {"received": "evt_dup", "duplicate": False}
    assert len(first) == 1  # the processing task
    with django_capture_on_commit_callbacks() as second:
        again = post(stripe_client_http, payload, header)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert second == []
    event = StripeEvent.objects.get()
    assert event.type == "customer.created"
    assert event.payload == json.loads(payload)
    assert event.processed_at is None


def test_an_unknown_event_type_is_stored_and_marked_processed(deliver_processed) -> None:  # type: ignore[no-untyped-def]
    deliver_processed("charge.dispute.created", {"id": "dp_1"}, event_id="evt_unknown")
    event = StripeEvent.objects.get(pk="evt_unknown")
    assert event.processed_at is not None
    assert stripe_events.process("evt_unknown") is False  # already processed


# --- invoices -----------------------------------------------------------------------------------


def test_invoice_paid_marks_ours_paid(stripe_double, deliver_processed) -> None:  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org, stripe_id="in_9")
    paid_at = 1_790_000_000
    deliver_processed(
        "invoice.paid",
        stripe_invoice(invoice, status="paid", status_transitions={"paid_at": paid_at}),
    )
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.paid_at == dt.datetime.fromtimestamp(paid_at, tz=dt.UTC)
    assert AuditEvent.objects.filter(action="invoice.paid", target_id=str(invoice.pk)).exists()


def test_an_invoice_found_by_its_stripe_id_alone(stripe_double, deliver_processed) -> None:  # type: ignore[no-untyped-def]
    invoice = make_invoice(make_org(), stripe_id="in_only_id")
    deliver_processed("invoice.paid", {"id": "in_only_id", "object": "invoice", "metadata": {}})
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.PAID


def test_payment_failed_then_paid_reactivates_a_suspended_organisation(
    stripe_double, deliver_processed, mailoutbox, settings
):  # type: ignore[no-untyped-def]
    from billing import dunning

    org = make_org()
    invoice = make_invoice(org, stripe_id="in_9")
    failed = int(time.time()) - 8 * 86400
    deliver_processed("invoice.payment_failed", stripe_invoice(invoice), created=failed)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAST_DUE
    assert invoice.payment_failed_at == dt.datetime.fromtimestamp(failed, tz=dt.UTC)
    assert len(mailoutbox) == 1
    # Stripe retries and fails again: no second e-mail.
    deliver_processed("invoice.payment_failed", stripe_invoice(invoice), created=failed + 3600)
    assert len(mailoutbox) == 1

    assert dunning.suspend_due() == [org.pk]
    deliver_processed("invoice.paid", stripe_invoice(invoice, status="paid"))
    org.refresh_from_db()
    assert org.payment_suspended_at is None
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.PAID


def test_a_late_payment_failed_does_not_undo_a_payment(
    stripe_double, deliver_processed, mailoutbox
):  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org, stripe_id="in_9")
    now = int(time.time())
    deliver_processed("invoice.paid", stripe_invoice(invoice, status="paid"), created=now)
    # The failure of an earlier attempt arrives after the payment.
    deliver_processed("invoice.payment_failed", stripe_invoice(invoice), created=now - 60)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.payment_failed_at is None
    assert mailoutbox == []
    assert StripeEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_payment_action_required_emails_the_payment_link(
    stripe_double, deliver_processed, mailoutbox
):  # type: ignore[no-untyped-def]
    org = make_org()
    invoice = make_invoice(org, stripe_id="in_9")
    deliver_processed(
        "invoice.payment_action_required",
        stripe_invoice(invoice, hosted_invoice_url="https://pay.example/confirm/in_9"),
    )
    assert len(mailoutbox) == 1
    assert "https://pay.example/confirm/in_9" in mailoutbox[0].body
    assert sorted(mailoutbox[0].to) == ["acme-admin@example.test", "acme-owner@example.test"]
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.OPEN


def test_an_invoice_that_is_not_ours_is_ignored(stripe_double, deliver_processed) -> None:  # type: ignore[no-untyped-def]
    deliver_processed("invoice.paid", {"id": "in_other", "metadata": {"vl_invoice_id": "nope"}})
    assert StripeEvent.objects.get().processed_at is not None


# --- top-ups ------------------------------------------------------------------------------------


def prepaid_org():  # type: ignore[no-untyped-def]
    org = make_org()
    org.billing_mode = BillingMode.PREPAID
    org.prepaid_since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    org.save()
    return org


def session(topup: TopUp, session_id: str = "cs_1", **fields: object) -> dict:
    return {
        "id": session_id,
        "object": "checkout.session",
        "client_reference_id": str(topup.pk),
        "metadata": {"vl_topup_id": str(topup.pk)},
        "amount_total": int(topup.amount * 100),
        "payment_status": "paid",
        "status": "complete",
        **fields,
    }


def test_a_checkout_completed_twice_credits_once(
    stripe_double, deliver_processed, redis_client, monkeypatch
):  # type: ignore[no-untyped-def]
    published = []
    real = prepaid.publish_balance
    monkeypatch.setattr(
        prepaid, "publish_balance", lambda org: (published.append(org.pk), real(org))
    )
    org = prepaid_org()
    topup = TopUp.objects.create(
        organization=org, amount=Decimal("25.00"), stripe_session_id="cs_1"
    )
    deliver_processed("checkout.session.completed", session(topup), event_id="evt_a")
    # Stripe sends it again under the same id, then a second event about the same session.
    deliver_processed("checkout.session.completed", session(topup), event_id="evt_a")
    deliver_processed("checkout.session.completed", session(topup), event_id="evt_b")

    entry = CreditEntry.objects.get(organization=org)
    assert entry.amount == Decimal("25.00")
    assert entry.reference == "checkout:cs_1"
    assert prepaid.balance_of(org) == Decimal("25.00")
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.COMPLETED
    assert published == [org.pk]  # the balance went to the gateway once, after the credit
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == 2


def test_an_expiry_after_the_completion_leaves_the_top_up_completed(
    stripe_double, deliver_processed
):  # type: ignore[no-untyped-def]
    org = prepaid_org()
    topup = TopUp.objects.create(
        organization=org, amount=Decimal("10.00"), stripe_session_id="cs_1"
    )
    now = int(time.time())
    deliver_processed("checkout.session.completed", session(topup), created=now)
    deliver_processed(
        "checkout.session.expired", session(topup, payment_status="unpaid"), created=now - 10
    )
    assert TopUp.objects.get(pk=topup.pk).status == TopUp.Status.COMPLETED
    other = TopUp.objects.create(
        organization=org, amount=Decimal("10.00"), stripe_session_id="cs_2"
    )
    deliver_processed("checkout.session.expired", session(other, "cs_2", payment_status="unpaid"))
    assert TopUp.objects.get(pk=other.pk).status == TopUp.Status.EXPIRED
    assert AuditEvent.objects.filter(action="topup.expired").count() == 1


def test_an_unpaid_completed_session_credits_nothing_until_its_payment_succeeds(
    stripe_double, deliver_processed, redis_client
):  # type: ignore[no-untyped-def]
    org = prepaid_org()
    topup = TopUp.objects.create(
        organization=org, amount=Decimal("10.00"), stripe_session_id="cs_1"
    )
    deliver_processed("checkout.session.completed", session(topup, payment_status="unpaid"))
    assert CreditEntry.objects.count() == 0
    deliver_processed("checkout.session.async_payment_succeeded", session(topup))
    assert prepaid.balance_of(org) == Decimal("10.00")


def test_a_failing_event_is_kept_with_its_error_and_retried_by_beat(
    stripe_double, deliver_processed, redis_client
):  # type: ignore[no-untyped-def]
    org = prepaid_org()
    topup = TopUp.objects.create(
        organization=org, amount=Decimal("10.00"), stripe_session_id="cs_1"
    )
    # Stripe says a different amount was paid: nothing is credited, the event waits.
    deliver_processed("checkout.session.completed", session(topup, amount_total=999), event_id="e1")
    event = StripeEvent.objects.get(pk="e1")
    assert event.processed_at is None
    assert event.attempts == 1
    assert "999 cents" in event.error
    assert CreditEntry.objects.count() == 0
    assert stripe_process_pending_events() == {"processed": 0, "failed": 1}
    # Repaired (the payload corrected by an operator): beat applies it.
    payload = event.payload
    payload["data"]["object"]["amount_total"] = 1000
    StripeEvent.objects.filter(pk="e1").update(payload=payload)
    assert stripe_process_pending_events() == {"processed": 1, "failed": 0}
    assert prepaid.balance_of(org) == Decimal("10.00")


def test_customer_updated_keeps_the_email(stripe_double, deliver_processed) -> None:  # type: ignore[no-untyped-def]
    org = make_org()
    StripeCustomer.objects.create(organization=org, customer_id="cus_7", email="old@example.test")
    deliver_processed(
        "customer.updated", {"id": "cus_7", "object": "customer", "email": "new@example.test"}
    )
    assert StripeCustomer.objects.get(organization=org).email == "new@example.test"


def test_the_webhook_secret_is_the_one_configured(stripe_double, stripe_client_http) -> None:  # type: ignore[no-untyped-def]
    assert WEBHOOK_SECRET.startswith("whsec_")
    payload, header = signed_event("customer.updated", {"id": "cus_1"})
    assert post(stripe_client_http, payload, header).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_workers_processing_one_event_credit_once(
    stripe_double, redis_client, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The event row's lock serialises workers given the same event (a redelivered task, the
    beat retry racing the first task): the second finds it processed."""
    import threading

    from celery import current_app
    from django.db import connection

    from billing.webhooks import PROCESS_TASK, event_store

    # This test commits for real, so the store's on-commit enqueue would reach the machine's
    # broker (and a worker of a local install would pick it up): record it instead.
    queued: list[tuple[object, ...]] = []
    monkeypatch.setattr(current_app.tasks[PROCESS_TASK], "delay", lambda *a: queued.append(a))
    org = prepaid_org()
    topup = TopUp.objects.create(organization=org, amount=Decimal("7.00"), stripe_session_id="cs_1")
    payload, _ = signed_event("checkout.session.completed", session(topup), event_id="evt_race")

    event_store(json.loads(payload))
    assert queued == [("evt_race",)]
    barrier = threading.Barrier(4)
    results: list[object] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(stripe_events.process("evt_race"))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=str) == [False, False, False, True]
    assert CreditEntry.objects.filter(organization=org).count() == 1
    assert prepaid.balance_of(org) == Decimal("7.00")
