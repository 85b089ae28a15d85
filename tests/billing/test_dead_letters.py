"""The ingest task's failure handling (retries, then a dead letter), and the operator's tools:
``manage.py usage_dead_letters`` and the admin's replay action."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import DataError, OperationalError
from django.test import Client

from billing import tasks
from billing.models import DeadLetterBatch, UsageEvent, UsageRollup
from tests.billing.metering_support import expected_totals, make_event, make_events, stored_totals

pytestmark = pytest.mark.django_db


def test_the_task_ingests_a_batch() -> None:
    events = make_events(25, seed=20)
    outcome = tasks.ingest_usage.apply(args=(events,), task_id="batch-1").get()
    assert outcome == {"received": 25, "inserted": 25}
    assert stored_totals() == expected_totals(events)


def test_database_errors_are_retried_then_the_batch_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    calls: list[int] = []

    def unreachable(events: list[Any], *, task_id: str) -> Any:
        calls.append(len(events))
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(tasks, "ingest_events", unreachable)
    monkeypatch.setattr(tasks.ingest_usage, "max_retries", 3)
    events = make_events(7, seed=21)
    # Eager execution runs each retry at once, in this process (countdowns are not waited).
    outcome = tasks.ingest_usage.apply(args=(events,), task_id="batch-2").get()
    assert len(calls) == 4  # the first attempt and three retries
    dead = DeadLetterBatch.objects.get()
    assert outcome == {"dead_letter": str(dead.pk), "attempts": 4}
    assert (dead.task_id, dead.attempts, dead.events) == ("batch-2", 4, events)
    assert "could not connect to server" in dead.error
    assert UsageEvent.objects.count() == 0


def test_an_error_no_retry_can_fix_is_dead_lettered_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def refused(events: list[Any], *, task_id: str) -> Any:
        calls.append(1)
        raise DataError("value out of range")

    monkeypatch.setattr(tasks, "ingest_events", refused)
    events = make_events(3, seed=22)
    tasks.ingest_usage.apply(args=(events,), task_id="batch-3").get()
    assert len(calls) == 1
    dead = DeadLetterBatch.objects.get()
    assert (dead.attempts, dead.events) == (1, events)
    assert "DataError" in dead.error


def test_a_message_that_is_not_a_list_is_dead_lettered() -> None:
    tasks.ingest_usage.apply(args=({"schema": 1},), task_id="batch-4").get()
    dead = DeadLetterBatch.objects.get()
    assert dead.events == {"schema": 1}
    assert "expected a list" in dead.error


def test_a_dead_letter_survives_data_jsonb_refuses() -> None:
    # NaN and NUL cannot be stored in jsonb; the dead letter must still be written.
    tasks.ingest_usage.apply(args=([{"schema": 1, "x": float("nan"), "y": "a\x00b"}],)).get()
    assert DeadLetterBatch.objects.get().events == [{"schema": 1, "x": "nan", "y": "a\\u0000b"}]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("usage_dead_letters", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_command_lists_and_replays_idempotently() -> None:
    events = make_events(12, seed=23)
    first = DeadLetterBatch.objects.create(task_id="a", events=events[:8], error="db down")
    second = DeadLetterBatch.objects.create(task_id="b", events=events[4:], error="db down")
    listing = run("list")
    assert str(first.pk) in listing
    assert str(second.pk) in listing
    assert "2 dead letters (pending)" in listing

    out = run("replay", "--all")
    assert "8 new, 0 duplicates; replayed" in out
    assert "4 new, 4 duplicates; replayed" in out
    assert stored_totals() == expected_totals(events)
    assert "0 dead letters (pending)" in run("list")

    again = run("replay", "--id", str(first.pk))
    assert "already replayed" in again
    assert stored_totals() == expected_totals(events)


def test_command_reports_unknown_ids() -> None:
    with pytest.raises(CommandError):
        run("replay", "--id", "00000000-0000-0000-0000-000000000000")


def test_admin_replay_action_goes_through_ingest() -> None:
    events = [*make_events(5, seed=24), {**make_event(), "schema": 7}]
    dead = DeadLetterBatch.objects.create(events=events, error="db down")
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.test", "pw"))
    response = client.post(
        "/admin/billing/deadletterbatch/",
        {"action": "replay", "_selected_action": [str(dead.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 still hold invalid events" in response.content.decode()
    assert UsageRollup.objects.exists()
    assert stored_totals() == expected_totals(events[:5])
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert dead.events == [events[5]]


def test_admin_shows_usage_read_only() -> None:
    tasks.ingest_usage.apply(args=(make_events(3, seed=25),)).get()
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.test", "pw"))
    assert client.get("/admin/billing/usageevent/").status_code == 200
    assert client.get("/admin/billing/usagerollup/").status_code == 200
    event = UsageEvent.objects.first()
    assert event is not None
    page = client.get(f"/admin/billing/usageevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # view only
    assert client.get("/admin/billing/usageevent/add/").status_code == 403
