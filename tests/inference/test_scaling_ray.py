"""Scale to zero and scheduled scaling against a REAL local Ray (the session's ``ray_cluster``).

1. A scale-to-zero model (the synthetic engine, a labelled test engine, with a simulated cold
   start: ``start_delay_s``) goes to 0 replicas after its idle delay, as Serve's status shows;
   then concurrent requests through the gateway with the ``openai`` SDK, streamed and not, all
   wait for the cold start and succeed (never a 503), and each is metered (a usage event with
   the engine's token counts).
2. A scaling window applied by the schedule service changes a model's minimum replicas in place:
   the replica that ran before still runs afterwards (same replica and actor id), and the
   model's application ``args`` are unchanged.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime
from datetime import time as clock
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from inference.deploy_services import deployment_apply, deployment_wait
from inference.deployment import deployment_name
from inference.models import CatalogModel, DeploymentRevision, ScalingWindow
from inference.ray_client import RayDashboardClient
from inference.scaling_schedule import scaling_schedule_apply
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

DEPLOY_TIMEOUT = 180.0
COLD_START_S = 3.0
ENGINE = {"ttft_ms": 0, "tpot_ms": 1, "default_max_tokens": 4}
MESSAGES: Any = [{"role": "user", "content": "wake up"}]


def deployment_of(serve: RayDashboardClient, name: str) -> dict[str, Any]:
    app = (serve.get_applications().get("applications") or {}).get(name) or {}
    return dict((app.get("deployments") or {}).get(name) or {})


def replicas(serve: RayDashboardClient, name: str) -> list[dict[str, Any]]:
    return list(deployment_of(serve, name).get("replicas") or [])


def wait_until(what: str, check: Any, timeout: float = DEPLOY_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def apply() -> DeploymentRevision:
    record = deployment_apply()
    assert record.outcome == DeploymentRevision.Outcome.APPLIED, record.error
    assert deployment_wait(revision=record.revision, timeout=DEPLOY_TIMEOUT) == "RUNNING"
    return record


def usage_events(queue: str, wanted: set[str], timeout: float = 30.0) -> dict[str, Any]:
    """The usage events in the module's broker queue, by ``http_request_id``, once every id in
    ``wanted`` has one (Celery protocol 2 messages, read without taking them)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            found = {}
            for raw in client.lrange(queue, 0, -1):
                body = json.loads(base64.b64decode(json.loads(raw)["body"]))
                for event in body[0][0]:
                    found.setdefault(event["http_request_id"], []).append(event)
            if wanted <= found.keys():
                return found
            time.sleep(0.3)
    finally:
        client.close()
    return found


def tenant_key() -> str:
    org = OrganizationFactory()
    key, secret = services.api_key_create(
        organization=org, name="cold", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    return secret


@pytest.mark.timeout(600)
def test_scale_to_zero_cold_start_serves_every_request(ray_settings, serve, usage_queue) -> None:  # type: ignore[no-untyped-def]
    ray_settings.VLINDERS_SCALE_TO_ZERO_IDLE_S = 1.0
    model = CatalogModelFactory(
        name="cold-start",
        engine_args={**ENGINE, "start_delay_s": COLD_START_S},
        min_replicas=0,
        max_replicas=1,
        scale_to_zero=True,
        replica_cpus=Decimal("0.25"),
        price_input_per_mtok=Decimal("1"),
        price_output_per_mtok=Decimal("2"),
    )
    name = deployment_name(model.name)
    secret = tenant_key()
    apply()
    options = deployment_of(serve, name)["deployment_config"]["autoscaling_config"]
    assert options["min_replicas"] == 0
    assert options["downscale_to_zero_delay_s"] == 1.0

    # Idle: Serve takes the last replica away.
    wait_until("0 replicas", lambda: deployment_of(serve, name) and not replicas(serve, name))
    assert deployment_of(serve, name)["status"] in {"HEALTHY", "UPSCALING", "DOWNSCALING"}

    base_url = f"http://127.0.0.1:{ray_settings.VLINDERS_GATEWAY_PORT}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=120)
    results: dict[int, Any] = {}

    def ask(index: int) -> None:
        try:
            if index % 2:
                raw = client.chat.completions.with_raw_response.create(
                    model=model.name, messages=MESSAGES, max_tokens=4, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                chunks = list(raw.parse())
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                results[index] = (raw.headers["x-request-id"], text, chunks[-1].usage)
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model=model.name, messages=MESSAGES, max_tokens=4
                )
                reply = raw.parse()
                results[index] = (
                    raw.headers["x-request-id"],
                    reply.choices[0].message.content,
                    reply.usage,
                )
        except Exception as error:  # kept, so the assertion shows every failure
            results[index] = error

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    waited = time.monotonic() - started

    failures = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert failures == {}, failures
    assert len(results) == 6
    # The cold start happened while they waited: the engine's start-up delay is in every wait.
    assert waited >= COLD_START_S
    for _, text, usage in results.values():
        assert text.strip()
        assert usage.completion_tokens == 4
    assert len(replicas(serve, name)) == 1

    ids = {request_id for request_id, _, _ in results.values()}
    events = usage_events(usage_queue, ids)
    assert ids <= events.keys()
    for request_id in ids:
        [event] = events[request_id]
        assert event["status"] == 200
        assert event["served_model"] == model.name
        assert event["completion_tokens"] == 4
        assert Decimal(event["cost"]) > 0


@pytest.mark.timeout(600)
def test_a_cold_start_past_its_bound_is_a_504(ray_settings, serve, usage_queue) -> None:  # type: ignore[no-untyped-def]
    """The bound: a cold start longer than the model's request timeout ends the request with a
    504 (``timeout``, ``Retry-After``), never a 503, and the request is metered as such."""
    ray_settings.VLINDERS_SCALE_TO_ZERO_IDLE_S = 1.0
    model = CatalogModelFactory(
        name="slow-start",
        engine_args={**ENGINE, "start_delay_s": 8},
        min_replicas=0,
        max_replicas=1,
        scale_to_zero=True,
        request_timeout_s=2,
        replica_cpus=Decimal("0.25"),
    )
    name = deployment_name(model.name)
    secret = tenant_key()
    apply()
    wait_until("0 replicas", lambda: deployment_of(serve, name) and not replicas(serve, name))

    base_url = f"http://127.0.0.1:{ray_settings.VLINDERS_GATEWAY_PORT}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=60)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model=model.name, messages=MESSAGES, max_tokens=4, stream=stream
            )
        assert caught.value.status_code == 504
        assert caught.value.body["code"] == "timeout"
        assert "scaled to zero" in caught.value.body["message"]
        assert caught.value.response.headers["retry-after"] == "10"
        request_id = caught.value.response.headers["x-request-id"]
        [event] = usage_events(usage_queue, {request_id})[request_id]
        assert event["status"] == 504
        assert event["completion_tokens"] == 0


def replica_actors(serve: RayDashboardClient, name: str) -> set[tuple[str, str]]:
    """(replica id, actor id) of the RUNNING replicas of a model deployment."""
    return {
        (str(r["replica_id"]), str(r["actor_id"]))
        for r in replicas(serve, name)
        if r.get("state") == "RUNNING"
    }


def app_args(serve: RayDashboardClient, name: str) -> Any:
    app = (serve.get_applications().get("applications") or {}).get(name) or {}
    return (app.get("deployed_app_config") or {}).get("args")


@pytest.mark.timeout(600)
def test_a_schedule_change_is_applied_in_place(ray_settings, serve) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(
        name="scheduled",
        engine_args=ENGINE,
        min_replicas=1,
        max_replicas=2,
        replica_cpus=Decimal("0.25"),
    )
    name = deployment_name(model.name)
    apply()
    before = wait_until("1 running replica", lambda: replica_actors(serve, name))
    args_before = app_args(serve, name)
    assert args_before

    # A busy-hours window (09:00-17:00) at noon: the minimum becomes 2, one apply, in place.
    ScalingWindow.objects.create(
        catalog_model=model, starts_at=clock(9), ends_at=clock(17), min_replicas=2
    )
    noon = timezone_aware(datetime(2026, 12, 1, 12, 0))
    outcome = scaling_schedule_apply(now=noon)
    assert outcome.changed == {"scheduled": (None, 2)}
    assert outcome.applied, outcome.revision
    assert deployment_wait(revision=outcome.revision.revision, timeout=DEPLOY_TIMEOUT) == "RUNNING"
    options = deployment_of(serve, name)["deployment_config"]["autoscaling_config"]
    assert options["min_replicas"] == 2
    after = wait_until("2 running replicas", lambda: len(replica_actors(serve, name)) == 2)
    assert after
    running = replica_actors(serve, name)
    assert before <= running  # the replica that ran before still runs: nothing restarted
    assert app_args(serve, name) == args_before

    # The same minute again: nothing changes, nothing is applied.
    assert scaling_schedule_apply(now=noon).revision is None

    # Evening: outside the window, back to the catalog's 1; still in place.
    outcome = scaling_schedule_apply(now=timezone_aware(datetime(2026, 12, 1, 18, 0)))
    assert outcome.changed == {"scheduled": (2, None)}
    assert outcome.applied
    assert deployment_wait(revision=outcome.revision.revision, timeout=DEPLOY_TIMEOUT) == "RUNNING"
    options = deployment_of(serve, name)["deployment_config"]["autoscaling_config"]
    assert options["min_replicas"] == 1
    assert app_args(serve, name) == args_before
    assert CatalogModel.objects.get(pk=model.pk).scheduled_min_replicas is None


def timezone_aware(moment: datetime) -> datetime:
    return timezone.make_aware(moment)
