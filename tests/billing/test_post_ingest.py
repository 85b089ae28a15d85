"""after_batch: reconcile what the batch touched, check alerts, push live updates; never raise."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from billing import live, spend
from billing.ingest_result import IngestResult
from billing.models import BudgetAlert
from billing.post_ingest import after_batch
from tests.billing.usage_data import add_rollup, channel_layer, make_key, redis_month  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("channel_layer")]


def _this_hour():
    return timezone.now().replace(minute=0, second=0, microsecond=0)


def test_reconciles_the_touched_scopes_for_every_month_of_the_batch(org, owner):
    key = make_key(org)
    result = IngestResult()
    now = _this_hour()
    last_month = now.replace(day=1, hour=0) - timedelta(hours=1)
    add_rollup(key, now, prompt=10, completion=5, cost="0.5", result=result)
    add_rollup(key, last_month, prompt=3, completion=0, cost="0.1", result=result)  # a late event

    after_batch(result)

    this = redis_month("org", org.pk, spend.month_of(now))
    assert (this.used_tokens, this.used_spend) == (15, Decimal("0.5"))
    late = redis_month("key", key.pk, spend.month_of(last_month))
    assert (late.used_tokens, late.used_spend) == (3, Decimal("0.1"))


def test_raises_budget_alerts_for_the_current_month(org, owner, django_capture_on_commit_callbacks):
    org.monthly_token_budget = 100
    org.save()
    result = IngestResult()
    add_rollup(make_key(org), _this_hour(), prompt=90, result=result)

    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction never commits
        after_batch(result)

    assert list(BudgetAlert.objects.values_list("kind", "threshold_percent")) == [("tokens", 80)]
    assert len(mail.outbox) == 1


def test_a_failing_step_does_not_stop_the_others_nor_raise(org, owner, monkeypatch):
    org.monthly_token_budget = 10
    org.save()
    result = IngestResult()
    add_rollup(make_key(org), _this_hour(), prompt=90, result=result)
    pushed = []

    def redis_down(usages):
        list(usages)
        raise ConnectionError("redis down")

    monkeypatch.setattr(spend, "write_month_used", redis_down)
    monkeypatch.setattr(live, "push", lambda result, **kw: pushed.append(kw["month_used"]))

    after_batch(result)  # does not raise

    assert BudgetAlert.objects.count() == 2
    assert pushed[0][str(org.pk)].tokens == 90

    monkeypatch.setattr(spend, "month_usage", lambda **kw: 1 / 0)
    after_batch(result)  # reading Postgres failed too: still no exception
    assert pushed[1] == {}


def test_a_batch_of_duplicates_only_does_nothing(org, monkeypatch):
    monkeypatch.setattr(spend, "month_usage", lambda **kw: pytest.fail("should not read"))
    after_batch(IngestResult(received=5, inserted=0))


@pytest.mark.django_db(transaction=True)
def test_the_ingest_lag_never_frees_budget_and_nothing_is_counted_twice(org, owner, redis_client):
    """The gateway settles a request in Redis; its usage event reaches Postgres later. A
    reconciliation in between must keep it counted, and ingesting it must not count it again."""
    from billing.ingest import ingest_events, notify_after_batch
    from inference.serving.limits import LimitSet
    from inference.serving.usage import utc_iso
    from tests.billing.metering_support import make_event
    from tests.billing.usage_data import limiter_call

    key = make_key(org)
    now = timezone.now()
    month = spend.month_of(now)
    reservation = limiter_call(
        "reserve",
        key_id=str(key.pk),
        org_id=str(org.pk),
        key_limits=LimitSet(),
        org_limits=LimitSet(),
        tokens=100,
        spend=Decimal("0.01"),
        request_id="req_lagging",
    )
    limiter_call(
        "settle", reservation, prompt_tokens=60, completion_tokens=15, spend=Decimal("0.0000451")
    )

    spend.reconcile(org_ids=[str(org.pk)], keys=[(str(org.pk), str(key.pk))], months=[month])
    for scope, ident in (("org", org.pk), ("key", key.pk)):
        counters = redis_month(scope, ident, month)
        assert (counters.used_tokens, counters.used_spend) == (75, Decimal("0.000046"))

    event = make_event(
        request_id="req_lagging",
        org_id=str(org.pk),
        key_id=str(key.pk),
        status=200,
        prompt_tokens=60,
        completion_tokens=15,
        cost=Decimal("0.0000451"),
        started_at=utc_iso(now.timestamp()),
    )
    notify_after_batch(ingest_events([event]))
    spend.reconcile(org_ids=[str(org.pk)], keys=[(str(org.pk), str(key.pk))], months=[month])
    for scope, ident in (("org", org.pk), ("key", key.pk)):
        counters = redis_month(scope, ident, month)
        # Postgres holds 0.0000451; the limiter rounds money up to whole micro-units.
        assert (counters.used_tokens, counters.used_spend) == (75, Decimal("0.000046"))
