"""Request routers on the session's REAL local Ray Serve (``request_router``,
docs/deployment-spec.md).

Two models of two replicas each on the synthetic engine (the labelled test engine, not a model),
one with ``prefix_affinity`` and one with Serve's ``default``, behind the real gateway, called
with the official ``openai`` SDK. The model applications are the rendered ones (same args, same
deployment options, the rendered ``request_router_config`` included) with one change: their
server is ``tests.inference.router_support.TaggedModelServer``, the real ``ModelServer`` whose
answers also say which replica produced them. So each test sees where Serve's router, in the
gateway's handle, sent every request.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings

from inference.deployment import APP_NAME, render_serve_config
from inference.ray_client import RayDashboardClient
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory
from tests.inference import router_support

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

REPO = str(Path(__file__).resolve().parents[2])
DEPLOY_TIMEOUT = 180.0
SYNTHETIC = {"ttft_ms": 0, "tpot_ms": 1, "default_max_tokens": 4}
# Two long system prompts that share nothing (about 2,000 characters each), and short questions.
PREFIX_A = "You are the archive's assistant. " + " ".join(f"rule-a-{i}" for i in range(220))
PREFIX_B = "Tu es l'assistant du musée. " + " ".join(f"regle-b-{i}" for i in range(220))


def _model(name: str, router: str) -> dict[str, Any]:
    return {
        "name": name,
        "deployment": f"model-{name}",
        "engine": "synthetic",
        "source": {},
        "engine_args": SYNTHETIC,
        "context_length": 8192,
        "scaling": {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 4},
        "resources": {"num_cpus": 0.25, "num_gpus": 0, "accelerator_type": None},
        "request_router": router,
    }


def spec(routers: dict[str, str], spool: str) -> dict[str, Any]:
    return {
        "spec_version": 1,
        "revision": "router-test-" + "-".join(f"{k}={v}" for k, v in sorted(routers.items())),
        "redis_url": settings.REDIS_URL,
        "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
        "broker_url": settings.CELERY_BROKER_URL,
        "usage_task": "billing.ingest_usage",
        "usage_queue": settings.VLINDERS_USAGE_QUEUE,
        "usage_spool_dir": spool,
        "gateway": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.25},
        "models": [_model(name, router) for name, router in sorted(routers.items())],
    }


def tagged_config(spec_: dict[str, Any], port: int) -> dict[str, Any]:
    """The rendered Serve config, the model applications' server swapped for the tagged one
    (found through ``PYTHONPATH``: the tests are not an installed package)."""
    config = copy.deepcopy(render_serve_config(spec_, host="127.0.0.1", port=port))
    for app in config["applications"]:
        if app["name"] != APP_NAME:
            app["import_path"] = router_support.IMPORT_PATH
            app["runtime_env"] = {"env_vars": {"PYTHONPATH": REPO}}
    return config


def replica_ids(serve: RayDashboardClient, app: str) -> set[str]:
    """The running replicas of a model application's model server (its deployment has the
    application's name; a stub ingress beside it is not a model server)."""
    details = (serve.get_applications().get("applications") or {}).get(app) or {}
    deployment = (details.get("deployments") or {}).get(app) or {}
    return {
        str(replica["replica_id"])
        for replica in deployment.get("replicas") or []
        if replica.get("state") == "RUNNING"
    }


def apply(serve: RayDashboardClient, config: dict[str, Any]) -> None:
    serve.put_applications(config)
    serve.wait_running([app["name"] for app in config["applications"]], timeout=DEPLOY_TIMEOUT)
    for app in config["applications"][1:]:  # both replicas of each model up
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while len(replica_ids(serve, app["name"])) < 2:
            assert time.monotonic() < deadline, serve.get_applications()
            time.sleep(1.0)


@pytest.fixture
def client(ray_settings, serve) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    for name in ("syn-affinity", "syn-default"):
        CatalogModelFactory(name=name)
    org = OrganizationFactory()
    key, secret = services.api_key_create(
        organization=org, name="router", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    base_url = f"http://127.0.0.1:{ray_settings.VLINDERS_GATEWAY_PORT}/v1"
    return openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, model: str, prefix: str, question: str) -> str:
    """One whole answer; the id of the replica that produced it."""
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": prefix},
            {"role": "user", "content": question},
        ],
        max_tokens=4,
    )
    assert reply.choices[0].message.content
    return str(reply.to_dict()["replica"])


def by_prefix(client: openai.OpenAI, model: str, rounds: int) -> dict[str, list[str]]:
    """``rounds`` questions under each of the two prefixes, one at a time, alternating."""
    seen: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(rounds):
        seen["a"].append(ask(client, model, PREFIX_A, f"Question {i}: where is box {i}?"))
        seen["b"].append(ask(client, model, PREFIX_B, f"Question {i}: où est la salle {i} ?"))
    return seen


def test_prefix_affinity_keeps_a_prefix_on_one_replica_and_default_spreads(
    ray_settings, serve, client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    routers = {"syn-affinity": "prefix_affinity", "syn-default": "default"}
    apply(serve, tagged_config(spec(routers, str(tmp_path)), ray_settings.VLINDERS_GATEWAY_PORT))

    affinity = by_prefix(client, "syn-affinity", 8)
    # Every request of a prefix went to one replica, and the second prefix, which matches
    # nothing seen, went to the replica that had seen the least: the other one.
    assert len(set(affinity["a"])) == 1, affinity
    assert len(set(affinity["b"])) == 1, affinity
    assert affinity["a"][0] != affinity["b"][0], affinity
    assert set(affinity["a"]) | set(affinity["b"]) == replica_ids_short(serve, "model-syn-affinity")

    # Serve's default (two random replicas, the shorter queue; equal when idle) spreads the
    # same 16 requests over both replicas (all on one: probability 2 / 2**16).
    spread = by_prefix(client, "syn-default", 8)
    assert set(spread["a"]) | set(spread["b"]) == replica_ids_short(serve, "model-syn-default")

    # Streams are routed by the same router (it reads the body of ``stream`` calls too).
    stream = client.chat.completions.create(
        model="syn-affinity",
        messages=[{"role": "system", "content": PREFIX_A}, {"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def replica_ids_short(serve: RayDashboardClient, app: str) -> set[str]:
    """The unique ids (Serve's replica context's ``unique_id``) of an application's replicas."""
    return {replica_id.rsplit("#", 1)[-1] for replica_id in replica_ids(serve, app)}


def test_changing_the_router_replaces_the_model_replicas_only(
    ray_settings, serve, client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A model switched from ``default`` to ``prefix_affinity``: its replicas are replaced (the
    application's shape changes: a stub ingress, ``routers.py``), the gateway's are kept, the
    model answers throughout, and the gateway's replica, once the application runs in its new
    shape, routes it with the new router (a new handle: docs/deployment-spec.md, "Request
    routing")."""
    before = {"syn-affinity": "prefix_affinity", "syn-default": "default"}
    apply(serve, tagged_config(spec(before, str(tmp_path)), ray_settings.VLINDERS_GATEWAY_PORT))
    assert by_prefix(client, "syn-default", 2)
    gateway = replica_ids(serve, APP_NAME)
    model = replica_ids(serve, "model-syn-default")

    after = {"syn-affinity": "prefix_affinity", "syn-default": "prefix_affinity"}
    apply(serve, tagged_config(spec(after, str(tmp_path)), ray_settings.VLINDERS_GATEWAY_PORT))
    assert replica_ids(serve, APP_NAME) == gateway
    now = replica_ids(serve, "model-syn-default")
    assert len(now) == 2
    assert not now & model
    served = by_prefix(client, "syn-default", 4)
    assert set(served["a"]) | set(served["b"]) <= {r.rsplit("#", 1)[-1] for r in now}

    # The gateway asks Serve every second whether the application runs in its new shape, then
    # takes a new handle: from then on each prefix stays on one replica (with Serve's default
    # router, 8 requests of a prefix all on one replica: probability 2 / 2**8 per prefix).
    deadline = time.monotonic() + 60
    while True:
        affinity = by_prefix(client, "syn-default", 8)
        if len(set(affinity["a"])) == 1 and len(set(affinity["b"])) == 1:
            break
        assert time.monotonic() < deadline, affinity
        time.sleep(1)
    assert affinity["a"][0] != affinity["b"][0], affinity
