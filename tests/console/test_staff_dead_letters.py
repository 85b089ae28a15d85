"""Operator console: dead-lettered usage batches and their replay
(``console.pages.staff_dead_letters``): staff only; the list filters by state; a dead letter's
page shows its events and why; replay goes through ingest, asks first, counts nothing twice, and
a dead letter whose events are still invalid stays pending and says why."""

from __future__ import annotations

from html import unescape

import pytest
from django.test import Client

from billing.models import DeadLetterBatch, UsageEvent
from tenants.models import AuditEvent
from tests.billing.metering_support import (
    expected_totals,
    make_event,
    make_events,
    stored_totals,
)

pytestmark = pytest.mark.django_db

LIST = "/staff/dead-letters/"
NOT_STAFF = {"owner": 404, "admin": 404, "member": 404, "viewer": 404, "outsider": 404}


def _detail(dead: DeadLetterBatch) -> str:
    return f"{LIST}{dead.pk}/"


def _replay(dead: DeadLetterBatch) -> str:
    return f"{LIST}{dead.pk}/replay/"


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


def _text(response) -> str:  # type: ignore[no-untyped-def]
    return unescape(response.content.decode())


def test_every_view_is_for_staff_only(assert_matrix) -> None:  # type: ignore[no-untyped-def]
    dead = DeadLetterBatch.objects.create(events=make_events(2, seed=1), error="db down")
    for url in (LIST, _detail(dead), _replay(dead)):
        assert_matrix(url, {**NOT_STAFF, "staff": 200, "anonymous": 302})
    # A POST without the confirmation: staff are asked, the others do not see the page.
    assert_matrix(_replay(dead), {**NOT_STAFF, "staff": 200, "anonymous": 302}, method="post")
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert not UsageEvent.objects.exists()


def test_a_post_to_replay_by_a_non_staff_user_replays_nothing(role_client) -> None:  # type: ignore[no-untyped-def]
    dead = DeadLetterBatch.objects.create(events=make_events(3, seed=2), error="db down")
    for role in ("owner", "viewer", "outsider"):
        assert role_client(role).post(_replay(dead), {"confirm": "yes"}).status_code == 404
    response = role_client("anonymous").post(_replay(dead), {"confirm": "yes"})
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (DeadLetterBatch.Status.PENDING, 0)
    assert not UsageEvent.objects.exists()


def test_the_list_filters_by_state(staff_client: Client) -> None:
    waiting = DeadLetterBatch.objects.create(
        events=make_events(3, seed=3),
        error="Traceback (most recent call last):\n  ...\nOperationalError: db went away",
        attempts=4,
    )
    done = DeadLetterBatch.objects.create(
        events=make_events(2, seed=4), error="db down", status="replayed"
    )
    pending = staff_client.get(LIST)
    assert pending.status_code == 200
    html = _text(pending)
    assert _detail(waiting) in html
    assert _detail(done) not in html
    assert "OperationalError: db went away" in html  # the reason: the exception, not "Traceback"
    assert pending.context["table"].rows[0][0][2:5] == [3, 4, "Waiting for an operator"]
    assert html.count('id="pending-count">1<') == 1

    replayed = _text(staff_client.get(LIST, {"state": "replayed"}))
    assert _detail(done) in replayed
    assert _detail(waiting) not in replayed
    every = _text(staff_client.get(LIST, {"state": "all"}))
    assert _detail(done) in every
    assert _detail(waiting) in every


def test_an_unknown_state_is_a_400_with_the_error(staff_client: Client) -> None:
    response = staff_client.get(LIST, {"state": "lost"})
    assert response.status_code == 400
    assert "Select a valid choice" in _text(response)


def test_the_detail_shows_the_payload_and_why(staff_client: Client) -> None:
    good = make_event()
    bad = {**make_event(), "cost": "not money"}
    dead = DeadLetterBatch.objects.create(
        events=[good, bad], error="invalid usage events:\nevent 1 (x): cost: not a decimal"
    )
    response = staff_client.get(_detail(dead))
    assert response.status_code == 200
    html = _text(response)
    assert good["request_id"] in html
    assert bad["request_id"] in html
    assert "not money" in html
    assert "1 invalid event: event 1 (x): cost: not a decimal" in html
    assert _replay(dead) in html  # pending: the replay is offered
    assert staff_client.get(f"{LIST}00000000-0000-0000-0000-000000000000/").status_code == 404


def test_replay_asks_first(staff_client: Client) -> None:
    dead = DeadLetterBatch.objects.create(events=make_events(4, seed=5), error="db down")
    asked = staff_client.get(_replay(dead))
    assert asked.status_code == 200
    assert 'name="confirm" value="yes"' in asked.content.decode()
    # A POST without the confirmation (a form from elsewhere) only asks again.
    assert staff_client.post(_replay(dead)).status_code == 200
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert not UsageEvent.objects.exists()


def test_replay_ingests_the_events_once_and_twice_counts_nothing_twice(
    staff_client: Client,
) -> None:
    events = make_events(12, seed=6)
    first = DeadLetterBatch.objects.create(task_id="a", events=events[:8], error="db down")
    # An overlapping batch (a redelivery dead-lettered too): its common events are duplicates.
    second = DeadLetterBatch.objects.create(task_id="b", events=events[4:], error="db down")

    done = staff_client.post(_replay(first), {"confirm": "yes"}, follow=True)
    assert done.redirect_chain == [(_detail(first), 302)]
    assert "Replayed: 8 new, 0 already ingested (not counted again)." in _text(done)
    assert stored_totals() == expected_totals(events[:8])

    audit = AuditEvent.objects.get(action="dead_letter.replayed", target_id=str(first.pk))
    assert (audit.organization_id, audit.actor_username) == (None, "staff")
    assert audit.before == {"status": "pending", "attempts": 0}
    assert audit.after == {
        "status": "replayed",
        "attempts": 1,
        "inserted": 8,
        "duplicates": 0,
        "still_invalid": 0,
    }

    again = staff_client.post(_replay(first), {"confirm": "yes"}, follow=True)
    assert "Already replayed: nothing was done." in _text(again)
    assert AuditEvent.objects.filter(target_id=str(first.pk)).count() == 1  # nothing done
    assert stored_totals() == expected_totals(events[:8])

    overlap = staff_client.post(_replay(second), {"confirm": "yes"}, follow=True)
    assert "Replayed: 4 new, 4 already ingested (not counted again)." in _text(overlap)
    assert stored_totals() == expected_totals(events)
    assert UsageEvent.objects.count() == 12
    for dead in (first, second):
        dead.refresh_from_db()
        assert dead.status == DeadLetterBatch.Status.REPLAYED
        assert dead.replayed_at is not None
    # Replayed ones leave the default (pending) list; the replay is no longer offered.
    assert _detail(first) not in _text(staff_client.get(LIST))
    assert _replay(first) not in _text(staff_client.get(_detail(first)))
    assert "already replayed" in _text(staff_client.get(_replay(first)))


def test_events_still_invalid_stay_dead_lettered_and_the_page_says_why(
    staff_client: Client,
) -> None:
    valid = make_events(3, seed=7)
    invalid = {**make_event(), "schema": 7}
    dead = DeadLetterBatch.objects.create(events=[*valid, invalid], error="db down")

    response = staff_client.post(_replay(dead), {"confirm": "yes"}, follow=True)
    html = _text(response)
    assert "Ingested the 3 valid events: 3 new, 0 already ingested (not counted again); " in html
    assert "1 still invalid, so the dead letter stays pending." in html
    assert stored_totals() == expected_totals(valid)
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert dead.events == [invalid]
    assert "schema" in dead.error
    # Its page (where the replay leads) and the list say why, and offer the replay again.
    reason = response.context["reason"]
    assert reason.startswith("1 invalid event: event 3")
    assert "schema" in reason
    assert reason in html
    assert _replay(dead) in html
    assert reason in _text(staff_client.get(LIST))

    # Replaying it again ingests nothing twice and still says why.
    again = staff_client.post(_replay(dead), {"confirm": "yes"}, follow=True)
    assert "No valid event; 1 still invalid, so the dead letter stays pending." in _text(again)
    assert stored_totals() == expected_totals(valid)
    assert UsageEvent.objects.count() == 3


def test_a_message_that_was_not_a_list_is_shown_and_stays_pending(staff_client: Client) -> None:
    dead = DeadLetterBatch.objects.create(
        events={"schema": 1}, error="TypeError: expected a list of events"
    )
    page = _text(staff_client.get(_detail(dead)))
    assert '"schema": 1' in page
    staff_client.post(_replay(dead), {"confirm": "yes"})
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
