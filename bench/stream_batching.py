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
import time
from typing import Any

import common

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
    model = common.model_entry(
        MODEL,
        "synthetic",
        {"ttft_ms": 0, "tpot_ms": tpot_ms, "default_max_tokens": tokens},
        context_length=8192,
        target_ongoing_requests=256,
    )
    spec = common.deployment_spec(prefix, queue, spool, [model])
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

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        wall = await common.drive(lambda: one(session), concurrency, total)
    return {
        "requests": total,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "tok_s": produced / wall,
        "ttft_p50_ms": common.median_ms(ttfts),
        "ttft_p99_ms": common.percentile_ms(ttfts, 0.99),
        "stream_p50_ms": common.median_ms(durations),
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

    workdir, prefix, queue = common.fresh_names("batch")
    key = common.setup_control_plane(workdir, prefix)
    from tests.ray_fixtures import free_port

    port = free_port()
    cluster = common.local_ray(workdir)
    targets = {
        "one message per chunk": f"http://127.0.0.1:{port}/unbatched/v1/chat/completions",
        "batched": f"http://127.0.0.1:{port}/v1/chat/completions",
    }
    results = []
    try:
        config = serve_config(port, prefix, queue, f"{workdir}/spool", args.tpot_ms, args.tokens)
        common.start_serve(cluster, config, f"{workdir}/ray.log")
        for name, url in targets.items():
            warm = asyncio.run(load(url, key, 4, 16, args.tokens))
            if warm["failures"]:
                raise RuntimeError(f"{name} fails: {warm['first_failure']}")
        for level in levels:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for _, name in common.alternating(list(targets), args.rounds):
                run = asyncio.run(load(targets[name], key, level, args.requests, args.tokens))
                if run["failures"]:
                    raise RuntimeError(f"{name} at {level} clients: {run['first_failure']}")
                runs[name].append(run)
            row: dict[str, Any] = {"concurrency": level}
            for name, measured in runs.items():
                row[name] = common.mean_of(
                    measured, ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "stream_p50_ms")
                )
                row[name]["failures"] = sum(m["failures"] for m in measured)
            row["tok_s_ratio"] = row["batched"]["tok_s"] / row["one message per chunk"]["tok_s"]
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        cluster.stop()
        common.clean_redis(prefix, queue)

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
    out = {
        **common.run_header("stream_batching"),
        "engine": f"synthetic (test engine, not a model): {args.tokens} tokens, "
        f"{args.tpot_ms} ms per token",
        "requests": args.requests,
        "rounds": args.rounds,
        "results": results,
    }
    common.write_results(out, common.RESULTS / "stream_batching.json")


if __name__ == "__main__":
    main()
