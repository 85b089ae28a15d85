"""Raw usage events are pruned after the retention period, in bounded batches; rollups stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing import periodic, retention
from billing.models import UsageEvent, UsageRollup
from tests.billing.usage_data import add_event, add_rollup, make_key

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
def key(org):
    return make_key(org)


def test_events_older_than_the_retention_are_deleted_and_rollups_kept(key):
    old = [add_event(key, NOW - timedelta(days=91, minutes=i)) for i in range(3)]
    kept = [add_event(key, NOW - timedelta(days=89)), add_event(key, NOW)]
    rollup = add_rollup(key, NOW - timedelta(days=200), cost="1")

    result = retention.prune_usage_events(now=NOW, retention_days=90)

    assert (result.deleted, result.finished) == (3, True)
    assert result.cutoff == NOW - timedelta(days=90)
    assert set(UsageEvent.objects.values_list("pk", flat=True)) == {e.pk for e in kept}
    assert not UsageEvent.objects.filter(pk__in=[e.pk for e in old]).exists()
    assert UsageRollup.objects.filter(pk=rollup.pk).exists()


def test_a_run_stops_at_its_cap_oldest_first_and_the_next_run_continues(key):
    events = [add_event(key, NOW - timedelta(days=100 + i)) for i in range(5)]  # [0] newest

    first = retention.prune_usage_events(now=NOW, retention_days=90, batch_size=2, max_batches=2)

    assert (first.deleted, first.batches, first.finished) == (4, 2, False)
    assert list(UsageEvent.objects.values_list("pk", flat=True)) == [events[0].pk]

    second = retention.prune_usage_events(now=NOW, retention_days=90, batch_size=2, max_batches=2)
    assert (second.deleted, second.batches, second.finished) == (1, 1, True)
    assert not UsageEvent.objects.exists()


def test_the_beat_task_uses_the_settings(key, settings):
    settings.VLINDERS_USAGE_RETENTION_DAYS = 1
    settings.VLINDERS_USAGE_PRUNE_BATCH_SIZE = 1
    settings.VLINDERS_USAGE_PRUNE_MAX_BATCHES = 10
    now = datetime.now(tz=UTC)
    add_event(key, now - timedelta(days=2))
    add_event(key, now - timedelta(days=3))
    fresh = add_event(key, now - timedelta(hours=1))

    assert periodic.prune_usage_events() == {"deleted": 2, "batches": 3, "finished": True}
    assert list(UsageEvent.objects.values_list("pk", flat=True)) == [fresh.pk]


@pytest.mark.parametrize("kwargs", [{"retention_days": 0}, {"batch_size": 0}, {"max_batches": 0}])
def test_nonsense_settings_are_refused_rather_than_deleting_everything(key, kwargs):
    add_event(key, NOW)
    with pytest.raises(ValueError, match=r"at least one day|positive"):
        retention.prune_usage_events(now=NOW, **{"retention_days": 90, **kwargs})
    assert UsageEvent.objects.count() == 1
