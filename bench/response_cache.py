"""Response cache: the latency of a hit against a miss, side by side in one run.

The gateway class Ray Serve runs, called in-process by the official openai SDK (no
Ray proxy in between, so the figures are the gateway's own work), with a throwaway SQLite control
plane, the real Redis (access snapshot, limiter with limits set so every check runs, the cache),
served over real HTTP by uvicorn on the same event loop,
and the SYNTHETIC TEST ENGINE, not a model, with a labelled realistic delay: 150 ms to the first
token and 15 ms per token, 64 tokens (a ~1.1 s answer, about what a small model on one GPU
gives). Each prompt is asked twice in a row (a miss, then a hit), alternating, so misses and hits
run under the same machine load; plain and streamed requests each get their own prompts.

    .venv/bin/python bench/response_cache.py [--prompts 40]

Prints a markdown table and writes bench/results/response_cache.json. Needs the local Redis
(REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    markdown_table,
    percentile_nearest,
    run_header,
    setup_control_plane,
    write_results,
)
from fastapi import FastAPI, Request

MODEL = "bench-cached"
ENGINE = {"ttft_ms": 150, "tpot_ms": 15, "default_max_tokens": 64}
ENGINE_LABEL = "synthetic test engine (not a model): 150 ms to first token, 15 ms/token, 64 tokens"


def setup(workdir: str, prefix: str) -> str:
    """The shared throwaway control plane with one caching catalog model and its organisation
    opted in to the response cache; the access snapshot published under ``prefix``. Returns
    the key."""
    catalog = {
        "engine_kind": "synthetic",
        "engine_args": ENGINE,
        "context_length": 4096,
        "price_input_per_mtok": "1",
        "price_output_per_mtok": "2",
        "cache_ttl_s": 600,
        "price_cache_hit_per_mtok": "0.1",
    }
    secret = setup_control_plane(workdir, prefix, model=MODEL, catalog=catalog)
    from tenants import snapshot
    from tenants.models import Organization

    Organization.objects.filter(slug="bench").update(response_cache_enabled=True)
    snapshot.publish_organizations(Organization.objects.all())
    return secret


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile_nearest(values, 0.5) * 1000, 2),
        "p95_ms": round(percentile_nearest(values, 0.95) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


async def run(secret: str, workdir: str, prompts: int, config: dict[str, Any]) -> dict[str, Any]:
    import httpx
    import openai
    import uvicorn
    from django.conf import settings

    from inference.serving.engines.synthetic import SyntheticEngine
    from inference.serving.gateway import Gateway

    engine = SyntheticEngine(model=MODEL, **ENGINE)

    class Stream:
        def __init__(self, body: dict[str, Any], endpoint: Any) -> None:
            self.chunks = engine.stream(endpoint, body).__aiter__()

        async def __anext__(self) -> list[dict[str, Any]]:
            return [await self.chunks.__anext__()]

        def cancel(self) -> None:
            pass

    class Method:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def remote(self, *args: Any) -> Any:
            return self.fn(*args)

    class Handle:
        complete = Method(
            lambda endpoint, body, priority: asyncio.get_running_loop().create_task(
                engine.complete(endpoint, body)
            )
        )
        stream = Method(lambda endpoint, body, priority: Stream(body, endpoint))

    gateway = Gateway(
        {
            "spec_version": 1,
            "redis_url": settings.REDIS_URL,
            "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
            "broker_url": settings.REDIS_URL,
            "usage_queue": f"bench-usage-{uuid.uuid4().hex[:8]}",
            "usage_spool_dir": str(Path(workdir) / "spool"),
            "max_ongoing_requests": 64,
        },
        handle_factory=lambda name: (Handle(), Handle()),
    )
    gateway.usage.emit = lambda event: None  # type: ignore[method-assign]  # no broker here
    await gateway.reconfigure(config)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await gateway.handle(request, "chat.completions")

    # A real HTTP server (uvicorn, as Serve's proxy is one) on this loop: httpx's ASGI transport
    # would buffer a whole stream, hiding its time to first token.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    serving = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=secret,
        max_retries=0,
        http_client=httpx.AsyncClient(timeout=60),
    )
    use = {"x-vlinders-cache": "use"}
    latency: dict[str, list[float]] = {"plain miss": [], "plain hit": []}
    ttft: dict[str, list[float]] = {"stream miss": [], "stream hit": []}
    total: dict[str, list[float]] = {"stream miss": [], "stream hit": []}
    run_id = uuid.uuid4().hex[:8]

    async def drain() -> None:
        while gateway._background:  # the store runs after the response, off its path
            await asyncio.gather(*list(gateway._background), return_exceptions=True)

    for i in range(prompts):
        messages = [{"role": "user", "content": f"bench {run_id} plain question number {i}"}]
        for expected in ("miss", "hit"):
            started = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, temperature=0, extra_headers=use
            )
            raw.parse()
            latency[f"plain {expected}"].append(time.perf_counter() - started)
            assert raw.headers["x-vlinders-cache"] == expected, raw.headers
            await drain()
    for i in range(prompts):
        messages = [{"role": "user", "content": f"bench {run_id} streamed question number {i}"}]
        for expected in ("miss", "hit"):
            started = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, seed=1, stream=True, extra_headers=use
            )
            first = None
            async for chunk in raw.parse():
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            total[f"stream {expected}"].append(time.perf_counter() - started)
            ttft[f"stream {expected}"].append(first or 0.0)
            assert raw.headers["x-vlinders-cache"] == expected, raw.headers
            await drain()
    server.should_exit = True
    await serving
    await gateway.__del__()
    return {
        "plain": {k: _summary(v) for k, v in latency.items()},
        "stream_total": {k: _summary(v) for k, v in total.items()},
        "stream_ttft": {k: _summary(v) for k, v in ttft.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="vl-bench-rcache-")
    prefix = f"vlbench:rcache:{uuid.uuid4().hex[:8]}:"
    secret = setup(workdir, prefix)
    from django.conf import settings

    os.environ["VLINDERS_KEY_PEPPER"] = settings.VLINDERS_KEY_PEPPER
    from inference.deployment import render_spec
    from inference.serving.spec import DeploymentSpec

    # The gateway's routes as the control plane renders them from the catalog.
    config = DeploymentSpec.model_validate(render_spec()).gateway_config().model_dump(mode="json")
    figures = asyncio.run(run(secret, workdir, args.prompts, config))
    rows = [
        ("plain: latency", figures["plain"]["plain miss"], figures["plain"]["plain hit"]),
        (
            "stream: time to first token",
            figures["stream_ttft"]["stream miss"],
            figures["stream_ttft"]["stream hit"],
        ),
        (
            "stream: time to [DONE]",
            figures["stream_total"]["stream miss"],
            figures["stream_total"]["stream hit"],
        ),
    ]
    print(f"\nResponse cache: {args.prompts} prompts, each asked twice (miss, then hit).")
    print(f"Engine: {ENGINE_LABEL}.")
    print("In-process gateway on uvicorn (no Ray proxy), openai SDK, real Redis, limits set.\n")
    header = ["what", "miss p50", "miss p95", "hit p50", "hit p95", "miss/hit (p50)"]
    cells = []
    for what, miss, hit in rows:
        ratio = miss["p50_ms"] / hit["p50_ms"] if hit["p50_ms"] else float("inf")
        times = [f"{side[p]:.1f} ms" for side in (miss, hit) for p in ("p50_ms", "p95_ms")]
        cells.append([what, *times, f"{ratio:.0f}x"])
    print(markdown_table(header, cells, "lrrrrr"))
    out = {
        **run_header("response_cache"),
        "engine": ENGINE_LABEL,
        "setup": "in-process gateway on uvicorn (no Ray proxy), openai SDK, real Redis, limits set",
        "prompts": args.prompts,
        "figures": figures,
    }
    write_results(out, RESULTS / "response_cache.json")


if __name__ == "__main__":
    main()
