"""Budget alerts: created once per threshold, e-mailed to owners and admins after commit."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core import mail

from billing import alerts, spend
from billing.models import BudgetAlert
from tenants.models import Role
from tests.billing.usage_data import add_rollup, make_key
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

HOUR = datetime(2026, 3, 10, 14, tzinfo=UTC)


@pytest.fixture
def people(org, owner, viewer, member):
    admin = MembershipFactory(
        organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
    ).user
    return {"owner": owner, "admin": admin, "viewer": viewer, "member": member}


def _usage(org, keys=()):
    return spend.month_usage(
        month="2026-03", org_ids=[str(org.pk)], keys=[(str(org.pk), str(k.pk)) for k in keys]
    )


@pytest.fixture
def check(django_capture_on_commit_callbacks):
    """alerts.check, then what it deferred to the commit (the test's transaction never commits)."""

    def run(org, keys=()):
        with django_capture_on_commit_callbacks(execute=True):
            return alerts.check(_usage(org, keys))

    return run


def test_crossing_80_percent_of_the_spend_budget_alerts_owners_and_admins_once(org, people, check):
    org.monthly_spend_budget = Decimal("10")
    org.save()
    key = make_key(org)
    add_rollup(key, HOUR, cost="7.99")
    assert check(org) == []
    assert mail.outbox == []

    add_rollup(key, HOUR.replace(hour=15), cost="0.01")  # exactly 80 %
    created = check(org)

    assert [(a.kind, a.threshold_percent, a.api_key_id) for a in created] == [("spend", 80, None)]
    alert = BudgetAlert.objects.get()
    assert (alert.used, alert.budget, alert.month) == (Decimal("8"), Decimal("10"), "2026-03")
    assert alert.notified_at is not None
    assert len(mail.outbox) == 1
    assert sorted(mail.outbox[0].to) == ["admin@example.test", "owner@example.test"]
    assert "80%" in mail.outbox[0].subject
    assert "Acme" in mail.outbox[0].subject

    assert check(org) == []  # still at 80 %: nothing new
    assert len(mail.outbox) == 1


def test_jumping_past_several_thresholds_records_each_and_sends_one_mail(org, people, check):
    org.monthly_token_budget = 1000
    org.save()
    add_rollup(make_key(org), HOUR, prompt=900, completion=300)

    created = check(org)

    assert sorted(a.threshold_percent for a in created) == [80, 100]
    assert {a.kind for a in created} == {"tokens"}
    assert len(mail.outbox) == 1
    assert "100%" in mail.outbox[0].subject
    assert "1,200" in mail.outbox[0].body
    assert BudgetAlert.objects.filter(notified_at__isnull=True).count() == 0


def test_key_budget_alerts_name_the_key(org, people, check):
    key = make_key(org, "batch jobs", monthly_spend_budget=Decimal("2"))
    add_rollup(key, HOUR, cost="2.5")

    created = check(org, keys=[key])

    assert [(a.api_key_id, a.threshold_percent) for a in created] == [(key.pk, 80), (key.pk, 100)]
    assert "batch jobs" in mail.outbox[0].subject


def test_no_budget_no_alert_and_thresholds_come_from_settings(org, people, settings, check):
    key = make_key(org)
    add_rollup(key, HOUR, cost="100", prompt=10**9)
    assert check(org, keys=[key]) == []

    settings.VLINDERS_BUDGET_ALERT_THRESHOLDS = [50]
    org.monthly_spend_budget = Decimal("150")
    org.save()
    assert [a.threshold_percent for a in check(org)] == [50]


def test_losing_the_race_to_another_worker_creates_and_sends_nothing(
    org, people, monkeypatch, check
):
    org.monthly_spend_budget = Decimal("1")
    org.save()
    add_rollup(make_key(org), HOUR, cost="0.9")
    assert len(check(org)) == 1
    sent = len(mail.outbox)
    # Another worker's insert lands between this worker's pre-check and its insert.
    monkeypatch.setattr(alerts, "existing_alerts", lambda usage: set())

    assert check(org) == []
    assert BudgetAlert.objects.count() == 1
    assert len(mail.outbox) == sent


def test_mail_is_sent_only_after_the_transaction_commits(
    org, people, django_capture_on_commit_callbacks
):
    org.monthly_spend_budget = Decimal("1")
    org.save()
    add_rollup(make_key(org), HOUR, cost="1")
    with django_capture_on_commit_callbacks(execute=True):
        assert len(alerts.check(_usage(org))) == 2
        assert mail.outbox == []
    assert len(mail.outbox) == 1


def test_a_failed_send_is_retried_by_notify_pending(org, people, monkeypatch, check):
    org.monthly_spend_budget = Decimal("1")
    org.save()
    add_rollup(make_key(org), HOUR, cost="0.8")

    def broken(*args, **kwargs):
        raise ConnectionRefusedError("mail server down")

    monkeypatch.setattr(alerts, "send_mail", broken)
    assert len(check(org)) == 1
    assert BudgetAlert.objects.get().notified_at is None

    monkeypatch.undo()
    assert alerts.notify_pending() == 1
    assert BudgetAlert.objects.get().notified_at is not None
    assert len(mail.outbox) == 1
    assert alerts.notify_pending() == 0  # claimed: never sent twice
    assert len(mail.outbox) == 1


def test_an_organisation_without_owner_or_admin_email_keeps_the_alert_pending(org, viewer, check):
    org.monthly_spend_budget = Decimal("1")
    org.save()
    add_rollup(make_key(org), HOUR, cost="5")
    assert len(check(org)) == 2
    assert mail.outbox == []
    assert BudgetAlert.objects.filter(notified_at__isnull=True).count() == 2


@pytest.mark.parametrize(
    ("used", "budget", "expected"),
    [
        (0, 0, []),
        (1, 0, [80, 100]),
        (79, 100, []),
        (80, 100, [80]),
        (Decimal("100.0"), 100, [80, 100]),
    ],
)
def test_crossed(used, budget, expected):
    assert alerts.crossed(used, budget, [80, 100]) == expected
