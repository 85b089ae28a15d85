"""The Cluster page and scaling against a REAL local Ray (the session's ``ray_cluster``, token
auth): the page shows the head node with its CPUs and memory as Ray reports them, and scaling a
model (the synthetic engine: the labelled test engine, not a model) to a fixed 2 replicas brings
2 running replicas in Ray, then back to 1."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from inference.deploy_services import deployment_apply, deployment_wait
from inference.deployment import deployment_name
from inference.models import DeploymentRevision
from inference.ray_client import RayDashboardClient
from inference.scaling import catalog_model_scale
from tests.factories import CatalogModelFactory
from tests.ray_fixtures import METRICS_TOKEN

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

DEPLOY_TIMEOUT = 180.0


def running_replicas(client: RayDashboardClient, name: str) -> tuple[int, int]:
    """(replicas RUNNING, replicas in any state) of the model deployment ``name``."""
    app = (client.get_applications().get("applications") or {}).get(name) or {}
    deployment = (app.get("deployments") or {}).get(name) or {}
    replicas = deployment.get("replicas") or []
    return sum(1 for r in replicas if r.get("state") == "RUNNING"), len(replicas)


def wait_for_replicas(client: RayDashboardClient, name: str, count: int) -> None:
    """Until exactly ``count`` replicas run and no other is starting or stopping."""
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    seen: tuple[int, int] = (0, 0)
    while time.monotonic() < deadline:
        seen = running_replicas(client, name)
        if seen == (count, count):
            return
        time.sleep(1)
    raise AssertionError(f"{name}: wanted {count} running replicas, saw {seen} (running, all)")


def row_of(overview: Any, model: str) -> Any:
    return next(d for d in overview.deployments if d.model == model)


@pytest.mark.timeout(900)
def test_cluster_page_and_scaling_on_real_ray(ray_settings, serve, staff, ray_cluster) -> None:
    ray_settings.VLINDERS_METRICS_TOKEN = METRICS_TOKEN
    model = CatalogModelFactory(name="synthetic-scale", replica_cpus=Decimal("0.5"))
    name = deployment_name(model.name)
    record = deployment_apply()
    assert record.outcome == DeploymentRevision.Outcome.APPLIED, record.error
    assert deployment_wait(revision=record.revision, timeout=DEPLOY_TIMEOUT) == "RUNNING"
    wait_for_replicas(serve, name, 1)

    client = Client()
    client.force_login(staff)
    response = client.get("/staff/cluster/")
    assert response.status_code == 200
    overview = response.context["overview"]
    assert overview.reachable, overview.ray_error
    head = overview.nodes[0]
    assert head.head
    assert head.state == "ALIVE"
    assert head.cpus.total == 8.0  # the session cluster's logical CPUs
    assert head.memory.total > 0
    assert head.memory.used is not None
    assert head.memory.used > 0
    body = response.content.decode()
    assert head.hostname in body
    assert 'id="ray-unreachable"' not in body
    row = row_of(overview, "synthetic-scale")
    assert row.running == 1
    assert row.autoscaling is not None
    assert row.autoscaling.fixed
    assert row.ongoing == 0.0, overview.metrics_error  # the gateway's metrics were read

    outcome = catalog_model_scale(model=model, fixed=2, actor=staff)
    assert outcome.applied, outcome.revision.error
    assert "the cluster has 8 CPU" in outcome.capacity_note
    wait_for_replicas(serve, name, 2)
    overview = client.get("/staff/cluster/live/").context["overview"]
    row = row_of(overview, "synthetic-scale")
    assert (row.running, row.target) == (2, 2)
    assert (row.autoscaling.min_replicas, row.autoscaling.max_replicas) == (2, 2)

    # Back to 1, through the page's form this time.
    response = client.post(
        "/staff/cluster/scale/", {"model": "synthetic-scale", "replicas": "1"}, follow=True
    )
    assert response.status_code == 200
    assert "Ray accepted the catalog" in response.content.decode()
    wait_for_replicas(serve, name, 1)
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas) == (1, 1)
