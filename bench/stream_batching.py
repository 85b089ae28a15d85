"""Stream batching across Ray: chunks that are ready together cross in one Ray message, against
one Ray message per chunk, side by side on one cluster.

Two copies of the same application (gateway + one model server on the synthetic engine, a
labelled test engine and not a model, producing ``--tokens`` tokens at ``--tpot-ms`` each) run on
one Ray cluster; the second has ``VLINDERS_STREAM_BATCHING=0`` in its replicas' environment, so
its model server sends every chunk as its own Ray message (``inference/serving/model_server.py``).
The load alternates between them at each concurrency level: streamed chat completions, usage
included. Per target: delivered tokens/s, time to first token p50/p99 (to the first SSE event),
and how long a whole stream takes (p50).

    .venv/bin/python bench/stream_batching.py [--concurrency 1,16,64] [--tokens 256]

Prints a table and writes bench/results/stream_batching.json. Needs the local Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
MODEL = "bench-syn"


def applications(
    spec: dict[str, Any], suffix: str, route: str, env: dict[str, str]
) -> list[dict[str, Any]]:
    """The applications of ``spec`` as the control plane renders them, renamed with ``suffix``
    (gateway and model alike) so that two copies run side by side, each with ``env``."""
    from inference.deployment import render_applications

    spec = {
        **spec,
        "models": [{**m, "deployment": m["deployment"] + suffix} for m in spec["models"]],
    }
    apps = render_applications(spec)
    apps[0]["name"] += suffix
    apps[0]["route_prefix"] = route
    for app in apps:
        app["runtime_env"] = {"env_vars": env}
    return apps


def serve_config(
    port: int, prefix: str, queue: str, spool: str, tpot_ms: float, tokens: int
) -> dict[str, Any]:
    from django.conf import settings

    model = {
        "name": MODEL,
        "deployment": f"model-{MODEL}",
        "engine": "synthetic",
        "source": {},
        "engine_args": {"ttft_ms": 0, "tpot_ms": tpot_ms, "default_max_tokens": tokens},
        "context_length": 8192,
        "price_input_per_mtok": "0.1",
        "price_output_per_mtok": "0.2",
        "aliases": [],
        "scaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 256},
        "resources": {"num_cpus": 0.5, "num_gpus": 0, "accelerator_type": None},
    }
    spec = {
        "spec_version": 1,
        "revision": "bench",
        "redis_url": settings.REDIS_URL,
        "redis_prefix": prefix,
        "broker_url": settings.REDIS_URL,
        "usage_queue": queue,
        "usage_spool_dir": spool,
        "gateway": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5},
        "models": [model],
    }
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            *applications(spec, "-batched", "/", {"VLINDERS_STREAM_BATCHING": "1"}),
            *applications(spec, "-unbatched", "/unbatched", {"VLINDERS_STREAM_BATCHING": "0"}),
        ],
    }


async def load(url: str, key: str, concurrency: int, total: int, tokens: int) -> dict[str, Any]:
    import aiohttp

    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "benchmark prompt"}],
        }
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    ttfts: list[float] = []
    durations: list[float] = []
    produced = 0
    failures: list[str] = []
    remaining = total

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal produced
        start = time.perf_counter()
        first = None
        tail = b""
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                failures.append(f"HTTP {response.status}: {(await response.read())[:200]!r}")
                return
            async for piece in response.content.iter_any():
                first = first or time.perf_counter()
                tail = (tail + piece)[-4096:]
        events = [line[6:] for line in tail.split(b"\n") if line.startswith(b"data: {")]
        usage = json.loads(events[-1]).get("usage") if events else None
        if first is None or not usage or usage["completion_tokens"] != tokens:
            failures.append(f"no usage or a short answer: {tail[-300:]!r}")
            return
        produced += usage["completion_tokens"]
        ttfts.append(first - start)
        durations.append(time.perf_counter() - start)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(session)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    ttfts.sort()
    return {
        "requests": total,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "tok_s": produced / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000 if ttfts else None,
        "stream_p50_ms": statistics.median(durations) * 1000 if durations else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=128, help="per target, level and round")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--tpot-ms", type=float, default=1.0, help="synthetic time per token")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from gateway_overhead import _clean_redis, deploy_apps, setup_control_plane

    from inference.ray_local import LocalRay
    from tests.ray_fixtures import free_port

    workdir = tempfile.mkdtemp(prefix="vl-bench-batch-")
    prefix = f"vlbench:{secrets.token_hex(4)}:"
    queue = f"vlbench-usage-{secrets.token_hex(4)}"
    key = setup_control_plane(workdir, prefix)
    from django.conf import settings

    port = free_port()
    cluster = LocalRay(
        token=secrets.token_hex(32),
        gcs_port=free_port(),
        dashboard_port=free_port(),
        temp_dir=f"{workdir}/ray",
        metrics_dir=f"{workdir}/metrics",
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        num_cpus=4,
        env={"VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER},
    )
    targets = {
        "one message per chunk": f"http://127.0.0.1:{port}/unbatched/v1/chat/completions",
        "batched": f"http://127.0.0.1:{port}/v1/chat/completions",
    }
    results = []
    try:
        cluster.start(log_path=f"{workdir}/ray.log")
        config = serve_config(port, prefix, queue, f"{workdir}/spool", args.tpot_ms, args.tokens)
        deploy_apps(
            cluster.dashboard_url,
            cluster.token,
            config,
            [app["name"] for app in config["applications"]],
        )
        for name, url in targets.items():
            warm = asyncio.run(load(url, key, 4, 16, args.tokens))
            if warm["failures"]:
                raise RuntimeError(f"{name} fails: {warm['first_failure']}")
        for level in levels:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
                    run = asyncio.run(load(targets[name], key, level, args.requests, args.tokens))
                    if run["failures"]:
                        raise RuntimeError(f"{name} at {level} clients: {run['first_failure']}")
                    runs[name].append(run)
            row: dict[str, Any] = {"concurrency": level}
            for name, measured in runs.items():
                row[name] = {
                    field: statistics.mean(m[field] for m in measured)
                    for field in ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "stream_p50_ms")
                }
                row[name]["failures"] = sum(m["failures"] for m in measured)
            row["tok_s_ratio"] = row["batched"]["tok_s"] / row["one message per chunk"]["tok_s"]
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        cluster.stop()
        _clean_redis(prefix, queue)

    print()
    print(
        f"synthetic test engine: {args.tokens} tokens at {args.tpot_ms} ms/token; "
        "batched vs one Ray message per chunk"
    )
    print(
        f"{'clients':>7} | {'tok/s 1-per-chunk':>17} {'tok/s batched':>13} {'ratio':>6} | "
        f"{'TTFT p50 1/b':>16} | {'stream p50 1/b':>18}"
    )
    for row in results:
        one, bat = row["one message per chunk"], row["batched"]
        print(
            f"{row['concurrency']:>7} | {one['tok_s']:17.0f} {bat['tok_s']:13.0f} "
            f"{row['tok_s_ratio']:6.2f} | {one['ttft_p50_ms']:6.1f} / {bat['ttft_p50_ms']:6.1f} ms"
            f" | {one['stream_p50_ms']:7.0f} / {bat['stream_p50_ms']:7.0f} ms"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "stream_batching",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "engine": f"synthetic (test engine, not a model): {args.tokens} tokens, "
        f"{args.tpot_ms} ms per token",
        "requests": args.requests,
        "rounds": args.rounds,
        "results": results,
    }
    path = RESULTS / "stream_batching.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nSaved {path}")


if __name__ == "__main__":
    main()
