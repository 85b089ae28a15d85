"""A weighted alias (a canary) through the real Ray Serve gateway, with the official ``openai`` SDK.

The package's gateway routes ``syn-ab`` to ``syn-fast`` at 90 and ``syn-slow`` at 10 (both on the
synthetic engine, a labelled test engine, not a model). Checked here, counting by the response's
``model`` (which names the target that served each request):

- 2,000 requests without a ``user`` converge to the weights: the canary's count is within five
  standard deviations of 200 (sd = sqrt(2000 x 0.1 x 0.9) = 13.4, so 133..267);
- the same ``user`` is always served by the same target;
- every request's usage event says the same ``served_model`` as its response, and the alias
  metric counts them by target;
- the canary's weight set to 0 and the config applied again (the gateway's ``user_config``,
  in place: no replica restarts) drains it: no request reaches it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from inference.ray_client import RayDashboardClient
from tests.serving.conftest import Deployed, serve_config, usage_events

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

N = 2000
CONCURRENCY = 32
ALIAS = "syn-ab"
MESSAGES = [{"role": "user", "content": "ab"}]


async def _burst(
    base_url: str, key: str, n: int, *, users: list[str | None] | None = None
) -> list[tuple[str, str | None]]:
    """``n`` requests, ``CONCURRENCY`` at a time; (the response's model, x-request-id) each."""
    http = openai.DefaultAsyncHttpxClient(
        limits=httpx.Limits(max_connections=CONCURRENCY + 8, max_keepalive_connections=CONCURRENCY)
    )
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=key, max_retries=0, timeout=120, http_client=http
    )
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> tuple[str, str | None]:
        user = users[i] if users else None
        extra: dict[str, Any] = {"user": user} if user else {}
        async with gate:
            raw = await client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=MESSAGES, max_tokens=1, **extra
            )
        return raw.parse().model, raw.headers.get("x-request-id")

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def _apply(ray_cluster: Any, gateway: Deployed, spec: dict[str, Any]) -> None:
    """Apply ``spec`` and wait until every gateway replica routes by it (``/health`` names the
    revision; Serve reaches a replica at random, so several answers in a row must agree)."""
    port = int(gateway.base_url.rsplit(":", 1)[1])
    client = RayDashboardClient(base_url=ray_cluster.dashboard_url, token=ray_cluster.token)
    client.put_applications(serve_config(spec, port))
    client.wait_running(
        [app["name"] for app in serve_config(spec, port)["applications"]], timeout=120
    )
    deadline, agreed = time.monotonic() + 60, 0
    while agreed < 12:
        status, body = gateway.get("/health")
        agreed = (
            agreed + 1 if status == 200 and json.loads(body)["revision"] == spec["revision"] else 0
        )
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


@pytest.fixture
def drained_spec(ray_cluster, gateway) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The package's spec with the canary at weight 0; the original is applied again after."""
    spec = copy.deepcopy(gateway.spec)
    spec["revision"] = "test-canary-drained"
    (alias,) = [a for a in spec["aliases"] if a["name"] == ALIAS]
    alias["targets"] = [
        {**t, "weight": 0 if t["model"] == "syn-slow" else 90} for t in alias["targets"]
    ]
    yield spec
    _apply(ray_cluster, gateway, gateway.spec)


def test_2000_requests_converge_to_the_weights_and_are_metered_by_the_served_target(
    gateway, usage_broker, tenant
) -> None:
    org, _, secret = tenant
    before = {
        name: gateway.metric(
            "vlinders_alias_requests_total", alias=ALIAS, served_model=name, status="200"
        )
        for name in ("syn-fast", "syn-slow")
    }
    results = asyncio.run(_burst(f"{gateway.base_url}/v1", secret, N))
    counts = Counter(model for model, _ in results)
    assert set(counts) == {"syn-fast", "syn-slow"}, counts
    assert sum(counts.values()) == N
    # 5 standard deviations: 200 +- 67 (a false failure about once in three million runs).
    assert abs(counts["syn-slow"] - 200) <= 67, counts

    # Every response's usage event: asked for the alias, served by the target it named.
    served = {request_id: model for model, request_id in results}

    def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["org_id"] == str(org.id) and e["http_request_id"] in served]

    events = mine(usage_events(usage_broker, wait_for=lambda e: len(mine(e)) >= N, timeout=60))
    assert len(events) == N
    assert all(e["model"] == ALIAS and e["status"] == 200 for e in events)
    assert all(e["served_model"] == served[e["http_request_id"]] for e in events)

    # The alias metric, by served target (summed over the node's gateway replicas).
    deadline = time.monotonic() + 20
    while True:
        after = {
            name: gateway.metric(
                "vlinders_alias_requests_total", alias=ALIAS, served_model=name, status="200"
            )
            for name in before
        }
        delta = {name: after[name] - before[name] for name in before}
        if delta == {"syn-fast": counts["syn-fast"], "syn-slow": counts["syn-slow"]}:
            break
        assert time.monotonic() < deadline, (delta, counts)
        time.sleep(0.5)


def test_the_same_user_is_served_by_the_same_target(gateway, tenant) -> None:
    _, _, secret = tenant
    users = [f"user-{i}" for i in range(40)]
    results = asyncio.run(
        _burst(f"{gateway.base_url}/v1", secret, 200, users=[users[i % 40] for i in range(200)])
    )
    by_user: dict[str, set[str]] = {}
    for i, (model, _) in enumerate(results):
        by_user.setdefault(users[i % 40], set()).add(model)
    assert all(len(models) == 1 for models in by_user.values()), by_user


def test_a_weight_of_zero_drains_the_canary_after_the_apply(
    ray_cluster, gateway, tenant, drained_spec
) -> None:
    _, _, secret = tenant
    _apply(ray_cluster, gateway, drained_spec)
    results = asyncio.run(_burst(f"{gateway.base_url}/v1", secret, 300))
    assert Counter(model for model, _ in results) == Counter({"syn-fast": 300})
