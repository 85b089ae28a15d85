"""redis-py's reply parsers and command encoders side by side: the client CPU of one
limiter-like script call.

The gateway sends its limiter scripts (reserve, settle) as pipelines of ``EVALSHA`` calls of
about 40 arguments (``inference/serving/limits.py``); replies are small arrays. This measures
the client's CPU time per call, alternating, in one run, against the local Redis:

- ``python``: redis-py's pure-Python parser and encoder;
- ``hiredis``: hiredis's C parser (what redis-py uses when ``hiredis`` is installed), redis-py's
  Python encoder (its asyncio client has no other);
- ``hiredis + packing``: both in C, the gateway's connection class
  (``inference/serving/redis_packing.py``).

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
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.serving.redis_packing import HiredisPackingConnection  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# A reply shaped like the limiter's: a few strings and integers.
SCRIPT = "return {KEYS[1], ARGV[1], 1, 2, 3}"
# Arguments shaped like a reserve's: 15 keys, 21 arguments (times as text, counts as ints).
KEYS = [f"vlbench:parser:limits:v1:key:{index}:rpm:29512345" for index in range(15)]
ARGS: list[Any] = ["1770000000.123456", "0.5", "req_" + "0" * 32, 120, 1200, "2026-02"]
ARGS += ["1770000600.123456", 180, 2419200, 1200, *([10**9] * 10), 0]
VARIANTS: dict[str, tuple[Any, Any]] = {
    "python": (_AsyncRESP2Parser, aioredis.Connection),
    "hiredis": (_AsyncHiredisParser, aioredis.Connection),
    "hiredis + packing": (_AsyncHiredisParser, HiredisPackingConnection),
}


async def cpu_per_call(url: str, variant: tuple[Any, Any], calls: int, batch: int) -> float:
    """Client CPU microseconds per script call, sent ``batch`` to a pipeline."""
    parser, connection = variant
    client = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(
            url, parser_class=parser, connection_class=connection
        )
    )
    try:
        sha = await client.script_load(SCRIPT)
        began = time.process_time()
        for _ in range(calls // batch):
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.evalsha(sha, len(KEYS), *KEYS, *ARGS)
            await pipe.execute()
        return (time.process_time() - began) / calls * 1e6
    finally:
        await client.aclose()


async def measure(url: str, calls: int, batch: int, rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(rounds):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            runs[name].append(await cpu_per_call(url, VARIANTS[name], calls, batch))
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
    packing = medians["hiredis + packing"] / medians["python"]
    print("| parser, encoder | client CPU per call (median) | rounds |")
    print("|---|---:|---|")
    for name, values in runs.items():
        print(f"| {name} | {medians[name]:.1f} us | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nhiredis / python: {ratio:.2f}; hiredis + packing / python: {packing:.2f}")
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
        "ratio_hiredis_packing_over_python": packing,
    }
    path = RESULTS / "redis_parser.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Saved {path}")


if __name__ == "__main__":
    main()
