"""redis-py's reply parsers side by side: the client CPU of one limiter-like script call.

The gateway sends its limiter scripts (reserve, settle) as pipelines of ``EVALSHA`` calls
(``inference/serving/limits.py``); replies are small arrays. This measures the client's CPU
time per call with redis-py's pure-Python parser and with hiredis (the C parser redis-py uses
when ``hiredis`` is installed), alternating, in one run, against the local Redis.

    .venv/bin/python bench/redis_parser.py [--calls 20000] [--batch 32] [--rounds 3]

Prints a table and writes bench/results/redis_parser.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

RESULTS = Path(__file__).resolve().parent / "results"
# A reply shaped like the limiter's: a few strings and integers.
SCRIPT = "return {KEYS[1], ARGV[1], 1, 2, 3}"
PARSERS: dict[str, Any] = {"python": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


async def cpu_per_call(url: str, parser: Any, calls: int, batch: int) -> float:
    """Client CPU microseconds per script call, sent ``batch`` to a pipeline."""
    client = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(url, parser_class=parser)
    )
    try:
        sha = await client.script_load(SCRIPT)
        began = time.process_time()
        for _ in range(calls // batch):
            pipe = client.pipeline(transaction=False)
            for index in range(batch):
                pipe.evalsha(sha, 1, f"vlbench:parser:{index}", "v")
            await pipe.execute()
        return (time.process_time() - began) / calls * 1e6
    finally:
        await client.aclose()


async def measure(url: str, calls: int, batch: int, rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in PARSERS}
    for round_ in range(rounds):
        order = list(PARSERS) if round_ % 2 == 0 else list(reversed(PARSERS))
        for name in order:
            runs[name].append(await cpu_per_call(url, PARSERS[name], calls, batch))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    runs = asyncio.run(measure(args.redis, args.calls, args.batch, args.rounds))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    ratio = medians["hiredis"] / medians["python"]
    print("| parser | client CPU per call (median) | rounds |")
    print("|---|---:|---|")
    for name, values in runs.items():
        print(f"| {name} | {medians[name]:.1f} us | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nhiredis / python: {ratio:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "redis_parser",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "calls": args.calls,
        "batch": args.batch,
        "us_per_call": runs,
        "median_us_per_call": medians,
        "ratio_hiredis_over_python": ratio,
    }
    path = RESULTS / "redis_parser.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Saved {path}")


if __name__ == "__main__":
    main()
