"""Prepaid organisations on the control plane (docs/billing.md, "Prepaid"): the staff services
(mode switch, adjustments: audited, prepaid_since, republished), the balance counters written to
the gateway's Redis (publish, the beat task, after each batch counting only usage from
prepaid_since), the ledger and the invoice's prepaid usage, and the admin (the API is in
test_prepaid_api.py)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.contrib.admin.sites import site
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import RequestFactory
from django.utils import timezone

from billing import prepaid, prepaid_services
from billing.ingest import ingest_events
from billing.models import CreditEntry
from billing.periodic import reconcile_spend
from billing.post_ingest import after_batch
from tenants.models import AuditEvent, BillingMode, Organization
from tenants.snapshot import org_record_name
from tests.billing.metering_support import make_event
from tests.billing.usage_data import add_rollup, limiter_call, make_key

pytestmark = pytest.mark.django_db

HOUR = dt.datetime(2026, 10, 14, 9, tzinfo=dt.UTC)


def _balance(org: Organization):  # type: ignore[no-untyped-def]
    return limiter_call("balance", str(org.pk))


def _prepaid(org: Organization, staff, since: dt.datetime = HOUR) -> Organization:  # type: ignore[no-untyped-def]
    return prepaid_services.billing_mode_set(
        org, BillingMode.PREPAID, staff, now=since + dt.timedelta(minutes=37)
    )


def _event(org: Organization, key, started: dt.datetime, cost: str) -> dict:  # type: ignore[no-untyped-def]
    return make_event(
        org_id=str(org.pk),
        key_id=str(key.pk),
        status=200,
        error_type=None,
        prompt_tokens=10,
        completion_tokens=5,
        cost=Decimal(cost),
        price_input_per_mtok=None,
        price_output_per_mtok=None,
        started_at=started.isoformat().replace("+00:00", "Z"),
    )


# --- services ---------------------------------------------------------------------------------
def test_switching_to_prepaid_sets_the_hour_audits_and_publishes(
    org, staff, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    prepaid.credit(org, Decimal("5"), kind="topup", reference="checkout:cs_1")
    with django_capture_on_commit_callbacks(execute=True):
        _prepaid(org, staff)

    org.refresh_from_db()
    assert org.billing_mode == BillingMode.PREPAID
    assert org.prepaid_since == HOUR  # the start of the UTC hour of the switch
    event = AuditEvent.objects.get(action="organization.billing_mode_changed")
    assert (event.actor, event.organization) == (staff, org)
    assert event.before["billing_mode"] == "postpaid"
    assert event.after["billing_mode"] == "prepaid"
    # The gateway's view: the org record says prepaid, and the balance is there.
    record = json.loads(redis_client.get(org_record_name(org.pk)))
    assert record["billing_mode"] == "prepaid"
    state = _balance(org)
    assert state is not None
    assert (state.credited_micros, state.used_micros) == (5_000_000, 0)


def test_switching_back_clears_prepaid_since_and_the_same_mode_records_nothing(
    org, staff, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    _prepaid(org, staff)
    _prepaid(org, staff)
    assert AuditEvent.objects.filter(action="organization.billing_mode_changed").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        prepaid_services.billing_mode_set(org, BillingMode.POSTPAID, staff)
    org.refresh_from_db()
    assert (org.billing_mode, org.prepaid_since) == (BillingMode.POSTPAID, None)
    assert json.loads(redis_client.get(org_record_name(org.pk)))["billing_mode"] == "postpaid"
    assert AuditEvent.objects.filter(action="organization.billing_mode_changed").count() == 2


def test_only_staff_switch_modes_and_adjust(org, owner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied):
        prepaid_services.billing_mode_set(org, BillingMode.PREPAID, owner)
    with pytest.raises(PermissionDenied):
        prepaid_services.credit_adjust(org, Decimal(5), "goodwill", owner)
    org.refresh_from_db()
    assert org.billing_mode == BillingMode.POSTPAID
    assert not CreditEntry.objects.exists()
    assert not AuditEvent.objects.exists()


def test_an_unknown_mode_is_refused(org, staff) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        prepaid_services.billing_mode_set(org, "free-lunch", staff)


def test_adjustments_are_signed_exact_audited_and_published(
    org, staff, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    _prepaid(org, staff)
    with django_capture_on_commit_callbacks(execute=True):
        up = prepaid_services.credit_adjust(org, Decimal("10.123456"), " goodwill ", staff)
        down = prepaid_services.credit_adjust(org, "-0.123456", "correction", staff)

    assert up.reference.startswith("adjustment:")
    assert up.reference != down.reference
    assert (up.kind, up.amount, up.description) == ("adjustment", Decimal("10.123456"), "goodwill")
    assert prepaid.balance_of(org) == Decimal(10)
    audits = AuditEvent.objects.filter(action="credit.adjusted").order_by("created_at")
    assert [Decimal(a.after["amount"]) for a in audits] == [
        Decimal("10.123456"),
        Decimal("-0.123456"),
    ]
    assert all(a.actor == staff for a in audits)
    state = _balance(org)
    assert state is not None
    assert state.credited_micros == 10_000_000


@pytest.mark.parametrize(
    ("amount", "reason"),
    [("0", "x"), ("0.0000001", "x"), ("abc", "x"), ("5", "  "), ("NaN", "x"), ("1e12", "x")],
)
def test_bad_adjustments_are_refused(org, staff, amount, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        prepaid_services.credit_adjust(org, amount, reason, staff)
    assert not CreditEntry.objects.exists()


# --- the gateway's counters -------------------------------------------------------------------
def test_after_batch_counts_only_usage_from_prepaid_since(org, staff, redis_client) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    prepaid.credit(org, Decimal(10), kind="topup", reference="checkout:cs_1")
    _prepaid(org, staff)
    prepaid.publish_balance(org)
    before = HOUR - dt.timedelta(minutes=1)  # postpaid usage: on the monthly invoice
    result = ingest_events(
        [
            _event(org, key, before, "4"),
            _event(org, key, HOUR, "1.25"),
            _event(org, key, HOUR + dt.timedelta(hours=3), "0.000001"),
        ]
    )
    assert prepaid.ingested_since(result.ingested_hours) == {str(org.pk): 1_250_001}

    after_batch(result)

    state = _balance(org)
    assert state is not None
    assert state.used_micros == 1_250_001
    assert state.ingested_micros == 1_250_001
    assert prepaid.balance_of(org) == Decimal("8.749999")


def test_the_balance_keeps_settled_usage_postgres_has_not_ingested_yet(
    org, staff, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """A request settled by the gateway whose event is not ingested: reconciling from Postgres
    does not forget it; its batch then makes Postgres count it, once."""
    key = make_key(org)
    prepaid.credit(org, Decimal(10), kind="topup", reference="checkout:cs_1")
    since = timezone.now().replace(minute=0, second=0, microsecond=0)
    prepaid_services.billing_mode_set(org, BillingMode.PREPAID, staff, now=since)
    prepaid.publish_balance(org)
    from inference.serving.limits import LimitSet

    held = limiter_call(
        "reserve",
        key_id=str(key.pk),
        org_id=str(org.pk),
        key_limits=LimitSet(),
        org_limits=LimitSet(),
        tokens=15,
        spend=Decimal(3),
        request_id="req_settled",
        prepaid=True,
    )
    limiter_call("settle", held, prompt_tokens=10, completion_tokens=5, spend=Decimal(2))

    reconcile_spend()  # the beat, before the batch: Postgres knows nothing of it
    state = _balance(org)
    assert state is not None
    assert state.used_micros == 2_000_000

    after_batch(ingest_events([_event(org, key, since, "2")]))
    state = _balance(org)
    assert state is not None
    assert state.used_micros == 2_000_000
    reconcile_spend()
    assert _balance(org).used_micros == 2_000_000


def test_the_beat_restores_every_prepaid_balance_redis_lost(org, staff, redis_client) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    postpaid = Organization.objects.create(name="Post", slug="post")
    prepaid.credit(org, Decimal("7.5"), kind="topup", reference="checkout:cs_1")
    _prepaid(org, staff)
    add_rollup(key, HOUR, cost="0.5")
    add_rollup(key, HOUR - dt.timedelta(hours=1), cost="100")  # before prepaid_since
    assert _balance(org) is None  # never published (or Redis restarted empty)

    outcome = reconcile_spend()

    assert outcome["prepaid_balances"] == 1
    state = _balance(org)
    assert state is not None
    assert (state.credited_micros, state.used_micros) == (7_500_000, 500_000)
    assert _balance(postpaid) is None


def test_publish_does_nothing_for_a_postpaid_organisation_and_never_raises(
    org, staff, redis_client, settings
) -> None:  # type: ignore[no-untyped-def]
    prepaid.publish_balance(org)
    assert _balance(org) is None
    _prepaid(org, staff)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    prepaid.publish_balance(org)  # logged, not raised: the beat repairs it


# --- selectors --------------------------------------------------------------------------------
def test_the_ledger_has_entries_usage_by_day_and_a_running_balance(org, staff) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    _prepaid(org, staff)
    day = HOUR.date()
    old, _ = prepaid.credit(org, Decimal(20), kind="topup", reference="checkout:cs_0")
    CreditEntry.objects.filter(pk=old.pk).update(created_at=HOUR - dt.timedelta(days=3))
    topup, _ = prepaid.credit(org, Decimal(5), kind="topup", reference="checkout:cs_1")
    CreditEntry.objects.filter(pk=topup.pk).update(created_at=HOUR + dt.timedelta(hours=10))
    add_rollup(key, HOUR, cost="1.5")
    add_rollup(key, HOUR + dt.timedelta(hours=1), cost="0.25", model="m2")
    add_rollup(key, HOUR + dt.timedelta(days=1), cost="2")
    add_rollup(key, HOUR - dt.timedelta(hours=1), cost="99")  # postpaid, before prepaid_since

    book = prepaid.ledger(org, day, day + dt.timedelta(days=2))

    assert book.opening == Decimal(20)
    assert [(r.kind, r.amount, r.balance) for r in book.rows] == [
        ("topup", Decimal(5), Decimal(25)),
        ("usage", Decimal("-1.75"), Decimal("23.25")),
        ("usage", Decimal(-2), Decimal("21.25")),
    ]
    assert book.closing == Decimal("21.25") == prepaid.balance_of(org)
    # Usage before the range is in the opening balance.
    later = prepaid.ledger(org, day + dt.timedelta(days=1), day + dt.timedelta(days=2))
    assert later.opening == Decimal("23.25")
    with pytest.raises(ValueError, match="366"):
        prepaid.ledger(org, day, day + dt.timedelta(days=367))
    with pytest.raises(ValueError, match="empty"):
        prepaid.ledger(org, day, day)


def test_usage_in_counts_the_range_from_prepaid_since(org, staff) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    month = (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    add_rollup(key, HOUR - dt.timedelta(hours=1), cost="3")
    add_rollup(key, HOUR, cost="0.000000000001")
    add_rollup(key, dt.datetime(2026, 11, 1, tzinfo=dt.UTC), cost="7")
    assert prepaid.usage_in(org, *month) == 0  # postpaid
    _prepaid(org, staff)
    assert prepaid.usage_in(org, *month) == Decimal("0.000000000001")


# --- admin --------------------------------------------------------------------------------------
def test_the_admin_switches_modes_and_adjusts_through_the_services(org, staff) -> None:  # type: ignore[no-untyped-def]
    org_admin = site._registry[Organization]
    request = RequestFactory().post("/")
    request.user = staff
    org_admin.message_user = lambda *args, **kwargs: None  # type: ignore[method-assign]
    actions = org_admin.get_actions(request)
    assert "billing_mode" in org_admin.get_readonly_fields(request, org)
    func = actions["make_prepaid"][0]
    func(org_admin, request, Organization.objects.filter(pk=org.pk))
    org.refresh_from_db()
    assert org.billing_mode == BillingMode.PREPAID
    assert org.prepaid_since is not None
    assert AuditEvent.objects.filter(action="organization.billing_mode_changed").count() == 1

    entry_admin = site._registry[CreditEntry]
    form = entry_admin.get_form(request)(
        data={"organization": org.pk, "amount": "-2.5", "description": "refund of a test"}
    )
    assert form.is_valid(), form.errors
    entry_admin.save_model(request, form.save(commit=False), form, change=False)
    entry = CreditEntry.objects.get()
    assert (entry.kind, entry.amount, entry.created_by) == ("adjustment", Decimal("-2.5"), staff)
    assert AuditEvent.objects.filter(action="credit.adjusted").count() == 1
    assert not entry_admin.has_delete_permission(request, entry)
    assert not entry_admin.has_change_permission(request, entry)
    bad = entry_admin.get_form(request)(
        data={"organization": org.pk, "amount": "0", "description": "nothing"}
    )
    assert not bad.is_valid()
