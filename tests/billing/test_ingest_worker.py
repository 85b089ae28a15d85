"""The whole metering path with real processes: the gateway's UsageEmitter → a private
redis-server → ``celery -A vlinders worker -Q usage`` subprocesses → the pytest test database.

Workers see committed data only, so these tests use ``transaction=True``; the worker's
DATABASE_URL names the test database pytest-django created. Workers run with a short broker
visibility timeout (4 s) so that the batch of a killed worker is redelivered quickly. Nothing is
timed: every eventual result is polled for with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from django.db import connection

from billing.models import UsageEvent
from inference.serving.usage import UsageEmitter
from tests.billing.metering_support import (
    expected_totals,
    make_events,
    make_gateway_event,
    stored_totals,
)
from tests.billing.processes import CeleryWorker, RedisServer, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

TASK = "billing.ingest_usage"
QUEUE = "usage"
VISIBILITY_TIMEOUT_S = 4


def database_url() -> str:
    """The URL of the database this test runs against (pytest-django's test database)."""
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{quote(db['USER'])}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def workers(broker: RedisServer, tmp_path: Path) -> Iterator[Callable[..., CeleryWorker]]:
    """Start workers on demand (extra environment as keyword arguments); all stopped after."""
    assert connection.vendor == "postgresql", "these tests need the Postgres test database"
    env = {
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker.url,
        "REDIS_URL": broker.url,
        "VLINDERS_VAR_DIR": str(tmp_path / "var"),
        "VLINDERS_USAGE_QUEUE": QUEUE,
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    }
    started: list[CeleryWorker] = []

    def start(**extra: str) -> CeleryWorker:
        worker = CeleryWorker(env={**env, **extra}, log=tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()


def send_batch(broker_url: str, events: list[dict[str, Any]]) -> str:
    """Publish one batch exactly as the gateway's emitter does; return its task id."""
    app = Celery("test-gateway", broker=broker_url, set_as_current=False)
    task_id = uuid.uuid4().hex
    try:
        app.send_task(TASK, args=[events], queue=QUEUE, task_id=task_id, serializer="json")
    finally:
        app.close()
    return task_id


def broker_idle(broker: RedisServer) -> bool:
    """Nothing waiting in the usage queue and nothing delivered but unacknowledged."""
    client = redis.Redis.from_url(broker.url)
    try:
        return client.llen(QUEUE) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def test_a_worker_ingests_what_the_gateway_emitter_sends(
    broker: RedisServer, workers: Callable[..., CeleryWorker], tmp_path: Path
) -> None:
    workers()
    rng = random.Random(30)
    events = [make_gateway_event(rng) for _ in range(600)]
    resent = events[100:140]  # at-least-once delivery: some events arrive twice

    async def emit_all() -> dict[str, int]:
        emitter = UsageEmitter(
            broker_url=broker.url,
            spool_dir=tmp_path / "spool",
            queue=QUEUE,
            batch_size=50,
            flush_interval=0.05,
        )
        emitter.start()
        for event in [*events, *resent]:
            emitter.emit(event)
        await emitter.aclose()
        return emitter.stats()

    stats = asyncio.run(emit_all())
    assert stats["batches_spooled"] == 0
    assert stats["batches_sent"] == 13

    expected = expected_totals([event.to_dict() for event in events])
    wait_for(lambda: stored_totals() == expected, 90, "the rollups to equal the events sent")
    wait_for(lambda: broker_idle(broker), 30, "every batch to be acknowledged")
    assert stored_totals() == expected
    assert UsageEvent.objects.count() == 600


def test_a_dropped_database_connection_is_replaced_before_the_next_batch(
    broker: RedisServer, workers: Callable[..., CeleryWorker]
) -> None:
    worker = workers()
    first, second = make_events(100, seed=33), make_events(100, seed=34)
    first_id = send_batch(broker.url, first)
    wait_for(lambda: worker.logged(f"[{first_id}] succeeded"), 90, "the first batch")
    # As a database restart or an idle-connection killer would: end the worker's session.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchall(), "the worker kept its connection between batches"
    second_id = send_batch(broker.url, second)
    wait_for(lambda: worker.logged(f"[{second_id}] succeeded"), 90, "the second batch")
    # Django's health check (CONN_HEALTH_CHECKS) replaced it when the transaction began: the
    # batch went in at the first try.
    assert not worker.logged("retry"), worker.tail()
    assert stored_totals() == expected_totals([*first, *second])


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_worker_killed_in_the_middle_of_a_batch_is_replaced_and_counts_once(
    point: str, broker: RedisServer, workers: Callable[..., CeleryWorker], tmp_path: Path
) -> None:
    marker = tmp_path / "paused"
    first = workers(VLINDERS_TEST_PAUSE_AT=point, VLINDERS_TEST_PAUSE_MARKER=str(marker))
    events = make_events(150, seed=31)
    expected = expected_totals(events)
    task_id = send_batch(broker.url, events)

    wait_for(marker.exists, 90, f"the worker to pause at {point}")
    if point == "before_commit":
        assert UsageEvent.objects.count() == 0  # inserted, not committed: invisible
    else:
        assert stored_totals() == expected  # committed, not yet acknowledged
    first.kill()

    second = workers()
    succeeded = f"Task {TASK}[{task_id}] succeeded"
    wait_for(lambda: second.logged(succeeded), 90, "the batch to be redelivered and ingested")
    wait_for(lambda: broker_idle(broker), 30, "the redelivered batch to be acknowledged")
    assert stored_totals() == expected
    assert UsageEvent.objects.count() == 150
    # The redelivery inserted everything (nothing had committed) or nothing (all had).
    inserted = 150 if point == "before_commit" else 0
    assert second.logged(f"'received': 150, 'inserted': {inserted}}}"), second.tail()


def test_a_broker_outage_spools_then_replays_and_counts_once(
    broker: RedisServer, workers: Callable[..., CeleryWorker], tmp_path: Path
) -> None:
    workers()
    rng = random.Random(32)
    before, during, after = (
        [make_gateway_event(rng) for _ in range(count)] for count in (200, 150, 100)
    )
    spool = tmp_path / "spool"

    async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def scenario() -> dict[str, int]:
        emitter = UsageEmitter(
            broker_url=broker.url,
            spool_dir=spool,
            queue=QUEUE,
            batch_size=50,
            flush_interval=0.05,
            replay_interval=0.5,
            send_timeout=0.5,
        )
        emitter.start()
        for event in before:
            emitter.emit(event)
        await until(lambda: emitter.stats()["batches_sent"] == 4, "the first batches to be sent")

        broker.kill()
        for event in during:
            emitter.emit(event)
        await until(
            lambda: (
                emitter.stats()["batches_spooled"] >= 3 and emitter.stats()["events_buffered"] == 0
            ),
            "the batches emitted during the outage to be spooled",
        )
        spooled = {
            line_event["request_id"]
            for path in spool.glob("*.jsonl")
            for line in path.read_text().splitlines()
            for line_event in json.loads(line)["events"]
        }
        assert spooled == {event.request_id for event in during}

        broker.start()  # same port and data directory: what it had acknowledged is still there
        for event in after:
            emitter.emit(event)
        batches = (len(before) + len(during) + len(after)) // 50

        def all_delivered() -> bool:
            stats = emitter.stats()
            return (
                stats["batches_sent"] + stats["batches_replayed"] >= batches
                and stats["batches_replayed"] >= stats["batches_spooled"]
            )

        await until(all_delivered, "every batch to be sent or replayed")
        await emitter.aclose()
        return emitter.stats()

    stats = asyncio.run(scenario())
    assert stats["send_failures"] >= 1
    assert not list(spool.glob("*.jsonl")), "the spool is empty once replayed"

    expected = expected_totals([event.to_dict() for event in [*before, *during, *after]])
    wait_for(lambda: stored_totals() == expected, 120, "the rollups to equal every event once")
    wait_for(lambda: broker_idle(broker), 30, "every batch to be acknowledged")
    assert stored_totals() == expected
    assert UsageEvent.objects.count() == 450
