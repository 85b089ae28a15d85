"""Usage ingest: usage events through the real metering path, end to end.

The gateway's own ``UsageEmitter`` (batches of ``--batch-size``, sent with Celery ``send_task``)
→ a private ``redis-server`` (append-only file, fsync every second, as a broker should run) →
``celery -A vlinders worker -Q usage`` subprocesses → Postgres (a throwaway database).

Two runs per worker setting:

* ``burst``: ``--events`` events emitted as fast as the emitter sends them (at most ten batches
  buffered, so nothing is spooled); the sustained ingest rate is events / (time the last one
  became visible in the rollups - time the first was emitted), so it includes filling and
  draining the pipeline;
* ``paced``: ``--paced-events`` at ``--paced-rate`` events/s, below capacity, for the delay an
  event sees from ``emit()`` to its rollup being visible (p50/p99).

"Visible" is measured by polling the rollups' total request count every 20 ms from a separate
connection: event number k (in emission order) is visible once the total reaches k. Batches are
consumed in queue order, so this is the event's own visibility to within the batches in flight
(and the 20 ms poll). Totals are then checked against the events: every (organisation, hour, key,
model) row to the token and the cent, and the number of stored events.

    .venv/bin/python bench/usage_ingest.py [--events 100000] [--concurrency 1,2]

Prints a table and writes bench/results/usage_ingest.json. Needs Postgres (DATABASE_URL's server,
default postgres://postgres@127.0.0.1:5432) and the ``redis-server`` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from bench_db import drop_database, setup_database
from common import RESULTS, percentile, run_header, write_results

BENCH_DB = "vlinders_bench_usage"
QUEUE = "usage"


class Poller(threading.Thread):
    """Samples (time, total requests in the rollups) every 20 ms until ``target`` is reached."""

    def __init__(self, url: str, target: int, deadline_s: float) -> None:
        super().__init__(daemon=True)
        self.url = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
        self.target = target
        self.deadline = time.perf_counter() + deadline_s
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while time.perf_counter() < self.deadline:
                row = conn.execute("SELECT coalesce(sum(requests), 0) FROM billing_usagerollup")
                total = int(row.fetchone()[0])  # type: ignore[index]
                self.samples.append((time.perf_counter(), total))
                if total >= self.target:
                    return
                time.sleep(0.02)


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    """User + system CPU time so far (from /proc), in seconds, of each of ``pids`` alive."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return found


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between the two readings by the processes alive at the second (those
    started in between count in full)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def group_pids(pgid: int) -> set[int]:
    """Every process of the process group ``pgid`` (a worker and its pool)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def postgres_backend_pids() -> set[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [BENCH_DB],
        )
        return {row[0] for row in cursor.fetchall()}


def run_once(
    *,
    mode: str,
    count: int,
    rate: float,
    batch_size: int,
    broker_url: str,
    db_url: str,
    spool: Path,
    worker_pgid: int,
) -> dict[str, Any]:
    from django.db import connection

    from billing.models import UsageEvent
    from inference.serving.usage import UsageEmitter
    from tests.billing.metering_support import expected_totals, make_gateway_event, stored_totals

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE billing_usageevent, billing_usagerollup")
    rng = random.Random(count)  # noqa: S311 (test data)
    events = [make_gateway_event(rng) for _ in range(count)]
    emitted_at: list[float] = []
    poller = Poller(db_url, count, deadline_s=600)
    poller.start()
    workers = group_pids(worker_pgid)
    backends = postgres_backend_pids()  # the workers' connections (kept: CONN_MAX_AGE)
    cpu_before = cpu_seconds(workers), cpu_seconds(backends)

    async def emit() -> dict[str, int]:
        emitter = UsageEmitter(
            broker_url=broker_url, spool_dir=spool, queue=QUEUE, batch_size=batch_size
        )
        emitter.start()
        start = time.perf_counter()
        step = batch_size if mode == "burst" else max(1, int(rate / 100))
        for i in range(0, count, step):
            if mode == "paced":  # on schedule: event i is due at start + i / rate
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            for event in events[i : i + step]:
                emitter.emit(event)
                emitted_at.append(time.perf_counter())
            await asyncio.sleep(0)  # let the flusher send
            # Stay well below the emitter's memory bound, which would spool to disk instead.
            while emitter.stats()["events_buffered"] > 10 * batch_size:
                await asyncio.sleep(0.001)
        await emitter.aclose()
        return emitter.stats()

    stats = asyncio.run(emit())
    poller.join()
    worker_cpu = cpu_used(cpu_before[0], cpu_seconds(workers))
    postgres_cpu = cpu_used(cpu_before[1], cpu_seconds(backends | postgres_backend_pids()))
    samples = poller.samples
    if not samples or samples[-1][1] < count:
        raise SystemExit(f"{mode}: only {samples[-1][1] if samples else 0}/{count} visible in time")
    totals = [total for _, total in samples]
    visible_at = [samples[bisect_left(totals, k)][0] for k in range(1, count + 1)]
    delays_ms = [(v - e) * 1000 for v, e in zip(visible_at, emitted_at, strict=True)]
    elapsed = visible_at[-1] - emitted_at[0]
    correct = (
        stored_totals() == expected_totals([event.to_dict() for event in events])
        and UsageEvent.objects.count() == count
    )
    return {
        "mode": mode,
        "events": count,
        "offered_rate": None if mode == "burst" else rate,
        "batches": stats["batches_sent"] + stats["batches_replayed"],
        "batches_spooled": stats["batches_spooled"],
        "emit_s": round(emitted_at[-1] - emitted_at[0], 3),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        "delay_p50_ms": round(percentile(delays_ms, 0.50), 1),
        "delay_p99_ms": round(percentile(delays_ms, 0.99), 1),
        "totals_correct": correct,
        # CPU per 1,000 events: independent of what else runs on the machine, unlike the rates.
        "worker_cpu_ms_per_1k": round(worker_cpu * 1e6 / count, 1),
        "postgres_cpu_ms_per_1k": round(postgres_cpu * 1e6 / count, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="burst run; 0: none")
    parser.add_argument("--paced-events", type=int, default=20_000, help="0: no paced run")
    parser.add_argument("--paced-rate", type=float, default=2_000, help="events/s when paced")
    parser.add_argument("--batch-size", type=int, default=200, help="the emitter's batch size")
    parser.add_argument("--concurrency", default="1,2", help="worker processes, one run each")
    parser.add_argument("--output", default="usage_ingest", help="name of the results file")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--redis-fsync", default="everysec", choices=["always", "everysec"])
    args = parser.parse_args()

    db_url = setup_database(BENCH_DB)
    from tests.billing.processes import CeleryWorker, RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="vl-bench-usage-"))
    broker = RedisServer(workdir / "redis", appendfsync=args.redis_fsync)
    results: list[dict[str, Any]] = []
    try:
        broker.start()
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            worker = CeleryWorker(
                pool=args.pool,
                env={
                    "DATABASE_URL": db_url,
                    "CELERY_BROKER_URL": broker.url,
                    "REDIS_URL": broker.url,
                    "VLINDERS_VAR_DIR": str(workdir / "var"),
                    "VLINDERS_USAGE_QUEUE": QUEUE,
                },
                log=workdir / f"worker-{concurrency}.log",
                concurrency=concurrency,
            )
            worker.start()
            try:
                runs = [("burst", args.events, 0.0)] if args.events else []
                if args.paced_events:
                    runs.append(("paced", args.paced_events, args.paced_rate))
                for mode, count, rate in runs:
                    result = run_once(
                        mode=mode,
                        count=count,
                        rate=rate,
                        batch_size=args.batch_size,
                        broker_url=broker.url,
                        db_url=db_url,
                        spool=workdir / "spool",
                        worker_pgid=worker.pid,
                    )
                    result["worker_processes"] = concurrency
                    result["load_average_1m"] = round(os.getloadavg()[0], 2)
                    results.append(result)
                    print(json.dumps(result))
            finally:
                worker.stop()
    finally:
        broker.kill()
        drop_database(BENCH_DB)

    print()
    print(_table(results))
    out = {
        # Other work on the machine skews every figure: the 1-minute load average at the end.
        **run_header("usage_ingest", load_average_1m_after=round(os.getloadavg()[0], 2)),
        "path": "UsageEmitter -> redis-server (AOF everysec) -> celery worker -Q usage "
        "(prefork) -> Postgres, all on this machine",
        "batch_size": args.batch_size,
        "worker_pool": args.pool,
        "redis_appendfsync": args.redis_fsync,
        "results": results,
    }
    write_results(out, RESULTS / f"{args.output}.json")


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| worker processes | run | events | batches | events/s ingested | delay p50 ms "
        "| delay p99 ms | totals correct | worker CPU ms/1k events | Postgres CPU ms/1k events |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        run = r["mode"] if r["offered_rate"] is None else f"paced {r['offered_rate']:.0f}/s"
        lines.append(
            f"| {r['worker_processes']} | {run} | {r['events']} | {r['batches']} "
            f"| {r['events_per_s']} | {r['delay_p50_ms']:.0f} | {r['delay_p99_ms']:.0f} "
            f"| {'yes' if r['totals_correct'] else 'NO'} | {r['worker_cpu_ms_per_1k']:.0f} "
            f"| {r['postgres_cpu_ms_per_1k']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
