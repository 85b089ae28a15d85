"""The usage emitter (contract 4) against the real Redis broker.

Every test publishes to a queue of its own and reads it back with kombu, decoding Celery
protocol v2, so no real worker's messages are ever taken."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from inference.serving.usage import UsageEmitter, UsageEvent, utc_iso

pytestmark = pytest.mark.redis

BROKER = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_BROKER = "redis://127.0.0.1:1/0"
TASK = "billing.ingest_usage"


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"vltest-usage-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(BROKER)
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    client.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def make_event(i: int, **overrides: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}-{i}",
        "org_id": "org-1",
        "key_id": "key-1",
        "model": "smol",
        "served_model": "SmolLM2-135M-Instruct",
        "endpoint": "chat.completions",
        "stream": i % 2 == 0,
        "status": 200,
        "error_type": None,
        "finish_reason": "stop",
        "prompt_tokens": 10 + i,
        "completion_tokens": 20 + i,
        "cached_tokens": 0,
        "cost": Decimal("0.000012345678"),
        "latency_ms": 12.5,
        "ttft_ms": 3.25,
        "started_at": utc_iso(),
    }
    fields.update(overrides)
    return UsageEvent(**fields)


def drain(queue: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """Every message already on ``queue`` as (headers, [args, kwargs, embed])."""
    messages = []
    with Connection(BROKER) as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get_nowait()
                except simple.Empty:
                    break
                assert message.content_type == "application/json"
                messages.append((message.headers, message.decode()))
                message.ack()
        finally:
            simple.close()
    return messages


def batches_of(messages: list[tuple[dict[str, Any], list[Any]]]) -> list[list[dict[str, Any]]]:
    batches = []
    for headers, (args, kwargs, _embed) in messages:
        assert headers["task"] == TASK
        assert kwargs == {}
        assert len(args) == 1
        batches.append(args[0])
    return batches


def request_ids(messages: list[tuple[dict[str, Any], list[Any]]]) -> Counter[str]:
    return Counter(e["request_id"] for batch in batches_of(messages) for e in batch)


def spooled_ids(spool_dir: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for path in spool_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            ids.update(e["request_id"] for e in json.loads(line)["events"])
    return ids


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def emitter(spool_dir: Path, queue: str, **options: Any) -> UsageEmitter:
    options.setdefault("broker_url", BROKER)
    return UsageEmitter(spool_dir=spool_dir, queue=queue, **options)


def write_spool_file(path: Path, batches: list[list[UsageEvent]]) -> None:
    with open(path, "w") as out:
        for events in batches:
            record = {"v": 1, "batch_id": uuid.uuid4().hex, "spooled_at": utc_iso()}
            record["events"] = [e.to_dict() for e in events]
            out.write(json.dumps(record) + "\n")


def test_batches_by_count(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue, batch_size=200, flush_interval=30, replay_interval=60)
    events = [make_event(i) for i in range(450)]

    async def scenario() -> None:
        usage.start()
        await asyncio.sleep(0.05)  # past the start-up replay round: only the count wakes it
        for i, event in enumerate(events):
            usage.emit(event)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await until(lambda: usage.batches_sent == 2, timeout=2)
        assert usage.stats()["events_buffered"] == 50  # the time flush is far away
        await usage.aclose()

    asyncio.run(scenario())
    messages = drain(queue)
    assert [len(batch) for batch in batches_of(messages)] == [200, 200, 50]
    assert request_ids(messages) == Counter(e.request_id for e in events)
    assert [e["request_id"] for b in batches_of(messages) for e in b] == [
        e.request_id for e in events
    ]
    stats = usage.stats()
    assert stats["events_emitted"] == 450
    assert stats["batches_sent"] == 3
    assert stats["batches_spooled"] == 0
    assert not list(spool.glob("*.jsonl"))


def test_batches_by_time(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue, batch_size=200, flush_interval=0.1)
    events = [make_event(i) for i in range(5)]

    async def scenario() -> None:
        usage.start()
        for event in events:
            usage.emit(event)
        await asyncio.sleep(0)
        assert usage.batches_sent == 0
        await until(lambda: usage.batches_sent == 1, timeout=2)
        await usage.aclose()

    asyncio.run(scenario())
    assert [len(batch) for batch in batches_of(drain(queue))] == [5]


def test_message_is_a_celery_task_by_name_with_every_field(spool: Path, queue: str) -> None:
    event = make_event(
        1,
        model="smol-alias",
        endpoint="embeddings",
        stream=False,
        status=429,
        error_type="rate_limit_exceeded",
        finish_reason=None,
        completion_tokens=0,
        cached_tokens=4,
        ttft_ms=None,
        cost=Decimal("0.0000055"),
        price_input_per_mtok=Decimal("0.500000"),
        price_output_per_mtok=Decimal("1.5"),
    )
    usage = emitter(spool, queue, flush_interval=0.05)

    async def scenario() -> None:
        usage.start()
        usage.emit(event)
        await usage.aclose()

    asyncio.run(scenario())
    [(headers, (args, kwargs, embed))] = drain(queue)
    assert headers["task"] == TASK
    assert headers["id"]
    assert kwargs == {}
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    assert args == [[event.to_dict()]]
    sent = args[0][0]
    assert sent == {
        "schema": 1,
        "request_id": event.request_id,
        "org_id": "org-1",
        "key_id": "key-1",
        "model": "smol-alias",
        "served_model": "SmolLM2-135M-Instruct",
        "endpoint": "embeddings",
        "stream": False,
        "status": 429,
        "error_type": "rate_limit_exceeded",
        "finish_reason": None,
        "prompt_tokens": 11,
        "completion_tokens": 0,
        "cached_tokens": 4,
        "cost": "0.0000055",
        # The prices the cost is at, decimal strings as given (11 tokens x 0.5 / 1M).
        "price_input_per_mtok": "0.500000",
        "price_output_per_mtok": "1.5",
        "cache": None,  # the response cache did not apply (docs/response-cache.md)
        "latency_ms": 12.5,
        "ttft_ms": None,
        "started_at": event.started_at,
        "http_request_id": None,
    }
    assert sent["started_at"].endswith("Z")


def test_outage_spools_everything_then_a_new_emitter_replays_it_once(
    spool: Path, queue: str
) -> None:
    events = [make_event(i) for i in range(450)]
    down = emitter(spool, queue, broker_url=DEAD_BROKER, batch_size=200, flush_interval=0.05)

    async def outage() -> None:
        down.start()
        for event in events[:300]:
            down.emit(event)
        await asyncio.sleep(0.15)  # some flushes happen during the outage
        for event in events[300:]:
            down.emit(event)
        await down.aclose()

    asyncio.run(outage())
    assert spooled_ids(spool) == Counter(e.request_id for e in events)
    assert down.batches_sent == 0
    assert down.batches_spooled >= 3
    assert down.send_failures >= 1
    assert drain(queue) == []
    batch_ids = {
        json.loads(line)["batch_id"]
        for path in spool.glob("*.jsonl")
        for line in path.read_text().splitlines()
    }

    up = emitter(spool, queue, batch_size=200, flush_interval=0.05, replay_interval=0.1)

    async def recovery() -> None:
        up.start()
        await until(lambda: not list(spool.glob("*.jsonl")))
        await up.aclose()

    asyncio.run(recovery())
    messages = drain(queue)
    assert request_ids(messages) == Counter(e.request_id for e in events)  # each exactly once
    assert up.batches_replayed == down.batches_spooled == len(messages)
    assert {headers["id"] for headers, _ in messages} == batch_ids  # the task id is kept
    assert up.spool_backlog == 0
    assert not list(spool.iterdir())


def test_a_dead_process_file_is_taken_over_but_a_live_one_is_not(spool: Path, queue: str) -> None:
    spool.mkdir()
    dead_events = [[make_event(i) for i in range(3)], [make_event(i) for i in range(3, 5)]]
    live_events = [[make_event(i) for i in range(2)]]
    write_spool_file(spool / "usage-999999-deadbeef.jsonl", dead_events)
    live = spool / "usage-888888-cafecafe.jsonl"
    write_spool_file(live, live_events)
    usage = emitter(spool, queue, replay_interval=0.05, flush_interval=0.05)

    holder = os.open(live, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live replica still writes this file
    dead_ids = Counter(e.request_id for b in dead_events for e in b)
    live_ids = Counter(e.request_id for b in live_events for e in b)

    async def scenario() -> None:
        usage.start()
        await until(lambda: usage.batches_replayed == 2)
        await asyncio.sleep(0.15)  # a few more replay rounds: the live file stays put
        assert live.exists()
        assert [p.name for p in spool.glob("*.jsonl")] == [live.name]
        assert usage.spool_backlog == 1
        messages = drain(queue)
        assert request_ids(messages) == dead_ids
        assert [len(b) for b in batches_of(messages)] == [3, 2]  # in file order
        os.close(holder)  # the writer dies
        await until(lambda: usage.batches_replayed == 3)
        await usage.aclose()

    try:
        asyncio.run(scenario())
    finally:
        with contextlib.suppress(OSError):
            os.close(holder)
    assert request_ids(drain(queue)) == live_ids
    assert not list(spool.glob("*.jsonl"))


def test_two_emitters_never_replay_the_same_file(spool: Path, queue: str) -> None:
    spool.mkdir()
    everything: list[str] = []
    for n in range(20):
        batches = [[make_event(i) for i in range(5)] for _ in range(3)]
        everything += [e.request_id for b in batches for e in b]
        write_spool_file(spool / f"usage-{700000 + n}-{n:08x}.jsonl", batches)
    first = emitter(spool, queue, replay_interval=0.02)
    second = emitter(spool, queue, replay_interval=0.02)

    async def scenario() -> None:
        first.start()
        second.start()
        await until(lambda: first.batches_replayed + second.batches_replayed == 60)
        await asyncio.gather(first.aclose(), second.aclose())

    asyncio.run(scenario())
    assert request_ids(drain(queue)) == Counter(everything)
    assert not list(spool.iterdir())


def test_a_failed_replay_keeps_exactly_what_was_not_sent(
    spool: Path, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.mkdir()
    batches = [[make_event(10 * b + i) for i in range(4)] for b in range(3)]
    write_spool_file(spool / "usage-999999-00000001.jsonl", batches)
    usage = emitter(spool, queue, replay_interval=0.05)
    real_send = usage._send
    calls = 0

    def send_then_fail(batch_id: str, events: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("broker went away")
        real_send(batch_id, events)

    monkeypatch.setattr(usage, "_send", send_then_fail)
    usage._replay_sync()
    assert usage.batches_replayed == 1
    assert usage.spool_backlog == 2
    assert sorted(spooled_ids(spool)) == sorted(e.request_id for b in batches[1:] for e in b)

    usage._broker_down_until = 0.0  # the broker is back
    usage._replay_sync()
    assert usage.batches_replayed == 3
    messages = drain(queue)
    assert request_ids(messages) == Counter(e.request_id for b in batches for e in b)
    assert [len(b) for b in batches_of(messages)] == [4, 4, 4]
    assert not list(spool.iterdir())


def test_aclose_flushes_the_buffer(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue, flush_interval=60)
    events = [make_event(i) for i in range(10)]

    async def scenario() -> None:
        usage.start()
        for event in events:
            usage.emit(event)
        await asyncio.sleep(0.05)
        assert usage.batches_sent == 0
        await usage.aclose()

    asyncio.run(scenario())
    assert request_ids(drain(queue)) == Counter(e.request_id for e in events)
    assert usage.stats()["events_buffered"] == 0


def test_aclose_without_start_and_emit_after_close_lose_nothing(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue)
    before, after = make_event(1), make_event(2)
    usage.emit(before)
    asyncio.run(usage.aclose())
    usage.emit(after)  # after close: spooled synchronously
    assert request_ids(drain(queue)) == Counter([before.request_id])
    assert spooled_ids(spool) == Counter([after.request_id])


def test_emit_past_the_memory_bound_spools_and_never_raises(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue, batch_size=50, max_buffer=100, flush_interval=0.05)
    events = [make_event(i) for i in range(250)]
    for event in events:  # no loop running, nobody flushes: the bound must hold
        usage.emit(event)
        assert usage.stats()["events_buffered"] < 100
    assert usage.batches_spooled == 4  # two spills of 100 events, 50 per batch
    assert sum(spooled_ids(spool).values()) == 200

    async def scenario() -> None:
        usage.start()
        await until(lambda: not list(spool.glob("*.jsonl")))
        await usage.aclose()

    asyncio.run(scenario())
    assert request_ids(drain(queue)) == Counter(e.request_id for e in events)


def test_emit_never_raises_even_when_the_spool_fails(
    spool: Path, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = emitter(spool, queue, batch_size=10, max_buffer=20)
    events = [make_event(i) for i in range(50)]

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    for event in events:
        usage.emit(event)
    assert usage.stats()["events_buffered"] == 50  # kept in memory, past the bound
    assert usage.spool_failures > 0
    assert all(path.stat().st_size == 0 for path in spool.glob("*.jsonl"))  # no half lines
    monkeypatch.undo()

    asyncio.run(usage.aclose())
    assert request_ids(drain(queue)) == Counter(e.request_id for e in events)


def test_a_hung_broker_is_given_up_on_within_send_timeout(spool: Path, queue: str) -> None:
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    usage = emitter(
        spool,
        queue,
        broker_url=f"redis://127.0.0.1:{port}/0",
        send_timeout=0.3,
        flush_interval=0.05,
    )
    event = make_event(1)

    async def scenario() -> None:
        usage.start()
        usage.emit(event)
        started = time.monotonic()
        await until(lambda: usage.batches_spooled == 1, timeout=3)
        assert time.monotonic() - started < 2
        await usage.aclose()

    try:
        asyncio.run(scenario())
    finally:
        silent.close()
    assert usage.send_failures == 1
    assert spooled_ids(spool) == Counter([event.request_id])


def test_a_cancelled_flusher_spools_what_it_still_holds(spool: Path, queue: str) -> None:
    usage = emitter(spool, queue, flush_interval=60)
    events = [make_event(i) for i in range(3)]

    async def scenario() -> None:
        usage.start()
        await asyncio.sleep(0.05)
        for event in events:
            usage.emit(event)
        # asyncio.run() ends here and cancels the flusher without aclose()

    asyncio.run(scenario())
    assert drain(queue) == []
    assert spooled_ids(spool) == Counter(e.request_id for e in events)
    asyncio.run(usage.aclose())  # its loop is gone: still safe
