"""Ingest on a real Postgres: every request id counted once, to the token and the cent, whatever
is redelivered; invalid events parked without poisoning their batch; dead letters replayed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from billing import post_ingest
from billing.ingest import dead_letter_replay, ingest_events, notify_after_batch
from billing.ingest_result import IngestResult
from billing.models import DeadLetterBatch, UsageEvent, UsageRollup
from tests.billing.metering_support import (
    expected_totals,
    make_event,
    make_events,
    stored_event_ids,
    stored_totals,
)

pytestmark = pytest.mark.django_db


def test_a_batch_is_stored_with_its_rollups() -> None:
    events = make_events(300)
    result = ingest_events(events)
    assert (result.received, result.inserted, result.duplicates) == (300, 300, 0)
    assert stored_event_ids() == {e["request_id"] for e in events}
    assert stored_totals() == expected_totals(events)
    stored = UsageEvent.objects.get(request_id=events[0]["request_id"])
    assert stored.cost == Decimal(events[0]["cost"])
    assert stored.started_at == dt.datetime.fromisoformat(events[0]["started_at"])


def test_the_same_batch_twice_counts_once() -> None:
    events = make_events(200, seed=1)
    ingest_events(events)
    again = ingest_events(events)
    assert (again.received, again.inserted, again.duplicates) == (200, 0, 200)
    assert again.by_org == {}
    assert stored_totals() == expected_totals(events)
    assert UsageEvent.objects.count() == 200


def test_overlapping_batches_count_each_event_once() -> None:
    events = make_events(300, seed=2)
    first = ingest_events(events[:200])
    second = ingest_events(events[100:])
    assert (first.inserted, second.inserted, second.duplicates) == (200, 100, 100)
    assert stored_totals() == expected_totals(events)
    # The second result describes only what it added.
    added = expected_totals(events[200:])
    assert second.by_org.keys() == {org for org, *_ in added}
    assert sum(t.requests for t in second.by_org.values()) == 100
    assert sum((t.cost for t in second.by_org.values()), Decimal(0)) == sum(
        (row[5] for row in added.values()), Decimal(0)
    )


def test_a_request_id_repeated_inside_a_batch_counts_once() -> None:
    events = make_events(50, seed=3)
    repeated = [*events, *events[:10], events[0]]
    result = ingest_events(repeated)
    assert (result.received, result.inserted, result.duplicates) == (61, 50, 11)
    assert stored_totals() == expected_totals(events)


def test_money_stays_exact_to_the_last_decimal_place() -> None:
    events = [make_event(cost=Decimal("0.000000000001")) for _ in range(1000)]
    events += [make_event(cost=Decimal("0.1")) for _ in range(3)]  # 0.1 * 3 is not 0.3 in floats
    ingest_events(events)
    total = sum((row.cost for row in UsageRollup.objects.all()), Decimal(0))
    assert total == Decimal("0.300000001000")


def test_rollups_key_on_the_served_model_and_the_hour_the_request_started() -> None:
    org, key = "6b3a0e51-6f42-4a47-9b0e-2b1f5a1d7a01", "4c1e6c1b-7a6d-4f0c-8d0a-77a1ad3f0b02"
    base: dict[str, Any] = {
        "org_id": org,
        "key_id": key,
        "model": "smol",
        "status": 200,
        "error_type": None,
    }
    events = [
        make_event(**base, served_model="s1", started_at="2026-11-22T03:59:59.999999Z"),
        make_event(**base, served_model="s1", started_at="2026-11-22T03:00:00.000000Z"),
        # Another zone's notation of 04:30 UTC goes to the 04:00 UTC hour.
        make_event(**base, served_model="s1", started_at="2026-11-22T05:30:00+01:00"),
        # Refused before a model was resolved: kept under the name the client asked for.
        make_event(
            **{**base, "status": 404, "error_type": "invalid_request_error"}, served_model=""
        ),
    ]
    ingest_events(events)
    # Summed per model and hour: the rollup key also holds the prices, and a random event may be
    # one without them (a separate row of the same hour).
    hours: dict[Any, tuple[int, int]] = {}
    for r in UsageRollup.objects.filter(model="s1"):
        requests, errors = hours.get((r.model, r.hour), (0, 0))
        hours[(r.model, r.hour)] = (requests + r.requests, errors + r.errors)
    assert hours == {
        (("s1"), dt.datetime(2026, 11, 22, 3, tzinfo=dt.UTC)): (2, 0),
        (("s1"), dt.datetime(2026, 11, 22, 4, tzinfo=dt.UTC)): (1, 0),
    }
    refused = UsageRollup.objects.get(model="smol")
    assert (refused.requests, refused.errors) == (1, 1)


def test_the_result_lists_what_changed() -> None:
    events = make_events(40, seed=4)
    result = ingest_events(events)
    assert result.keys == {(e["org_id"], e["key_id"]) for e in events}
    assert result.months == {"2026-11"}
    for org, totals in result.by_org.items():
        mine = [e for e in events if e["org_id"] == org]
        assert totals.requests == len(mine)
        assert totals.errors == sum(e["status"] >= 400 for e in mine)
        assert totals.prompt_tokens == sum(e["prompt_tokens"] for e in mine)
        assert totals.cost == sum((Decimal(e["cost"]) for e in mine), Decimal(0))


MALFORMED: list[tuple[str, Any]] = [
    ("unknown schema", {"schema": 2}),
    ("cost as a float", {"cost": 0.25}),
    ("cost with 13 places", {"cost": "0.0000000000001"}),
    ("negative cost", {"cost": "-1"}),
    ("org not a uuid", {"org_id": "org-1"}),
    ("tokens negative", {"prompt_tokens": -1}),
    ("tokens as string", {"completion_tokens": "12"}),
    ("status out of range", {"status": 99_999}),
    ("no time zone", {"started_at": "2026-11-22T03:04:05"}),
    ("not a date", {"started_at": "yesterday"}),
    ("unknown endpoint", {"endpoint": "images"}),
    ("request id too long", {"request_id": "r" * 65}),
    ("NUL in a string", {"model": "sm\x00ol"}),
    ("missing field", {"request_id": None}),
]


@pytest.mark.parametrize(("label", "change"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_event_is_parked_and_the_rest_ingested(label: str, change: Any) -> None:
    events = make_events(20, seed=5)
    bad = {**make_event(), **change}
    batch = [*events[:10], bad, *events[10:]]
    result = ingest_events(batch, task_id="task-1")
    assert result.inserted == 20
    assert stored_totals() == expected_totals(events)
    dead = DeadLetterBatch.objects.get()
    assert dead.task_id == "task-1"
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert len(dead.events) == 1
    assert "event 10" in dead.error


def test_not_an_object_is_parked_too() -> None:
    events = make_events(3, seed=6)
    ingest_events([events[0], "garbage", 42, None, *events[1:]])
    assert UsageEvent.objects.count() == 3
    assert DeadLetterBatch.objects.get().events == ["garbage", 42, None]


def test_a_redelivered_batch_with_a_malformed_event_parks_it_once() -> None:
    batch = [*make_events(5, seed=7), {"schema": 99}]
    ingest_events(batch, task_id="task-2")
    ingest_events(batch, task_id="task-2")
    assert DeadLetterBatch.objects.count() == 1
    assert UsageEvent.objects.count() == 5


def test_replay_ingests_a_dead_letter_once() -> None:
    events = make_events(30, seed=8)
    ingest_events(events[:10])  # some of the parked batch are in already
    dead = DeadLetterBatch.objects.create(task_id="t", events=events, error="db down", attempts=9)
    outcome = dead_letter_replay(dead_letter_id=dead.pk)
    assert outcome.replayed
    assert (outcome.result.inserted, outcome.result.duplicates) == (20, 10)
    assert stored_totals() == expected_totals(events)
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.REPLAYED
    assert dead.replayed_at is not None
    assert dead.attempts == 10
    again = dead_letter_replay(dead_letter_id=dead.pk)
    assert again.already_replayed
    assert again.result.inserted == 0
    assert stored_totals() == expected_totals(events)


def test_replay_keeps_what_is_still_invalid_pending() -> None:
    events = make_events(4, seed=9)
    # Without prices, so the fixed cost below need not be what the tokens cost at them.
    bad = {**make_event(), "cost": 1.5, "price_input_per_mtok": None, "price_output_per_mtok": None}
    dead = DeadLetterBatch.objects.create(events=[*events, bad], error="x", attempts=1)
    outcome = dead_letter_replay(dead_letter_id=dead.pk)
    assert (outcome.result.inserted, outcome.still_invalid, outcome.replayed) == (4, 1, False)
    dead.refresh_from_db()
    assert dead.status == DeadLetterBatch.Status.PENDING
    assert dead.events == [bad]
    assert "cost" in dead.error
    # The operator fixes the event; the next replay takes it in.
    dead.events = [{**bad, "cost": "1.5"}]
    dead.save()
    assert dead_letter_replay(dead_letter_id=dead.pk).replayed
    assert stored_totals() == expected_totals([*events, {**bad, "cost": "1.5"}])


def test_post_ingest_steps_get_what_was_inserted_and_their_failure_is_contained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[IngestResult] = []

    def failing(result: IngestResult) -> None:
        seen.append(result)
        raise RuntimeError("dashboard down")

    monkeypatch.setattr(post_ingest, "after_batch", failing)
    result = ingest_events(make_events(5, seed=10))
    notify_after_batch(result)  # does not raise
    assert seen == [result]
    notify_after_batch(IngestResult(received=5, inserted=0))  # nothing new: nothing to do
    assert len(seen) == 1
