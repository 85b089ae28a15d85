"""One gateway replica under 1,000 concurrent requests, through the real Ray Serve path.

The package's gateway runs two replicas; these tests scale it to one in place (an autoscaling
change: Serve removes a replica and restarts nothing) and restore two afterwards. The model is
``syn-load`` on the synthetic engine (a labelled test engine, not a model), whose one replica
takes 1,024 requests at once, so every refusal seen here would be the gateway's own.

Cold caches are part of the load: the first burst uses a key nobody used before (every replica's
access cache misses it at once), the second comes right after a full snapshot republish (which
drops every replica's cache). Only a real Redis outage may answer 503: here, zero 5xx.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from inference.ray_client import RayDashboardClient
from tenants import snapshot
from tests.serving.conftest import Deployed, GatewayLog, serve_config

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

CONCURRENCY = 1000


def _gateway_replicas(client: RayDashboardClient) -> list[str]:
    app = client.get_applications()["applications"]["vlinders"]
    return [
        replica["replica_id"]
        for replica in app["deployments"]["Gateway"]["replicas"]
        if replica["state"] == "RUNNING"
    ]


def _scale_gateway(ray_cluster: Any, gateway: Deployed, replicas: int) -> list[str]:
    spec = copy.deepcopy(gateway.spec)
    spec["gateway"]["min_replicas"] = spec["gateway"]["max_replicas"] = replicas
    port = int(gateway.base_url.rsplit(":", 1)[1])
    client = RayDashboardClient(base_url=ray_cluster.dashboard_url, token=ray_cluster.token)
    client.put_applications(serve_config(spec, port))
    deadline = time.monotonic() + 120
    while True:
        running = _gateway_replicas(client)
        app = client.get_applications()["applications"]["vlinders"]
        if len(running) == replicas and app["status"] == "RUNNING":
            return running
        assert time.monotonic() < deadline, app
        time.sleep(0.5)


@pytest.fixture(scope="module")
def one_gateway_replica(ray_cluster, gateway) -> Iterator[str]:  # type: ignore[no-untyped-def]
    (replica,) = _scale_gateway(ray_cluster, gateway, 1)
    yield replica
    _scale_gateway(ray_cluster, gateway, 2)


async def _burst(base_url: str, key: str, n: int, *, stream: bool) -> Counter[str]:
    """``n`` requests at once with the ``openai`` SDK; the outcome of each by status."""
    http = openai.DefaultAsyncHttpxClient(
        limits=httpx.Limits(max_connections=n + 50, max_keepalive_connections=n + 50)
    )
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=key, max_retries=0, timeout=180, http_client=http
    )
    start = asyncio.Event()

    async def one() -> str:
        await start.wait()
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    model="syn-load",
                    messages=[{"role": "user", "content": "load"}],
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                usage = None
                async for chunk in chunks:
                    usage = chunk.usage or usage
                return "200" if usage is not None and usage.completion_tokens == 8 else "short"
            reply = await client.chat.completions.create(
                model="syn-load", messages=[{"role": "user", "content": "load"}], max_tokens=8
            )
            return "200" if reply.usage and reply.usage.completion_tokens == 8 else "short"
        except openai.APIStatusError as error:
            return f"{error.status_code} {error.code or error.message[:80]}"
        except openai.APIConnectionError as error:
            return f"connection: {error!r}"

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    start.set()
    try:
        return Counter(await asyncio.gather(*tasks))
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_thousand_concurrent_requests_with_a_new_key(
    one_gateway_replica, ray_cluster, gateway, make_tenant, stream
) -> None:
    _, _, secret = make_tenant()  # never used before: every cache misses it at once
    log = GatewayLog(ray_cluster)
    outcomes = asyncio.run(_burst(f"{gateway.base_url}/v1", secret, CONCURRENCY, stream=stream))
    assert outcomes == Counter({"200": CONCURRENCY}), f"{outcomes}\n{log.report()}"


def test_a_thousand_concurrent_requests_right_after_a_full_republish(
    one_gateway_replica, ray_cluster, gateway, make_tenant
) -> None:
    _, _, secret = make_tenant()
    warm = asyncio.run(_burst(f"{gateway.base_url}/v1", secret, 10, stream=False))
    assert warm == Counter({"200": 10})
    snapshot.publish_full()  # drops every replica's cache: the burst below starts cold
    log = GatewayLog(ray_cluster)
    outcomes = asyncio.run(_burst(f"{gateway.base_url}/v1", secret, CONCURRENCY, stream=False))
    assert outcomes == Counter({"200": CONCURRENCY}), f"{outcomes}\n{log.report()}"
