"""The Deploy page against the session's REAL local Ray (``console.pages.staff_deploy``): apply
from the page, watch the rollout partial until the models run, change the catalog, then roll
back from the page and find the earlier revision running in Ray again.

The models are on the synthetic engine (a labelled test engine, not a model). The module ends
by removing every application, so later modules start from an empty Serve.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.test import Client

from inference.deploy_services import deployed_revision
from inference.deployment import APP_NAME, deployment_name
from inference.models import CatalogModel, DeploymentRevision
from inference.ray_client import RayDashboardClient
from tests.factories import CatalogModelFactory, UserFactory
from tests.inference.test_deploy_apply import clear_applications

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

SETTLE_TIMEOUT = 180.0
FAST = {"ttft_ms": 0, "tpot_ms": 1, "default_max_tokens": 8}


@pytest.fixture
def staff_client(ray_settings, serve) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(UserFactory(username="operator", is_staff=True))
    yield client
    clear_applications(serve, ray_settings)


def watch_rollout(client: Client, timeout: float = SETTLE_TIMEOUT) -> tuple[str, list[str]]:
    """Fetch the rollout partial as htmx does, every second, until it says it settled (its
    answer then has no polling trigger); return it and every state line seen on the way."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        response = client.get("/staff/deploy/rollout/", HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        text = response.content.decode()
        seen.extend(re.findall(r'data-model="[^"]+" data-state="[^"]+"', text))
        if 'data-settled="yes"' in text:
            assert "hx-trigger" not in text
            return text, seen
        assert "hx-trigger" in text  # still polling
        assert time.monotonic() < deadline, text
        time.sleep(1.0)


def gateway_revision(serve: RayDashboardClient) -> str:
    return deployed_revision(serve.get_applications()["applications"].get(APP_NAME))


def test_apply_watch_change_and_roll_back_from_the_page(staff_client, serve) -> None:
    first_model = CatalogModelFactory(
        name="synthetic-a", engine_args=FAST, replica_cpus=Decimal("0.5")
    )
    CatalogModelFactory(name="synthetic-b", engine_args=FAST, replica_cpus=Decimal("0.5"))

    # Apply from the page; the rollout partial shows both models coming up, then settles.
    page = staff_client.post("/staff/deploy/apply/", follow=True).content.decode()
    first = DeploymentRevision.objects.get()
    assert first.outcome == "applied", first.error
    assert f"revision #{first.pk}" in page
    text, _ = watch_rollout(staff_client)
    for name in ("synthetic-a", "synthetic-b"):
        assert f'data-model="{name}" data-state="running"' in text
    assert text.count("1 / 1") >= 2
    assert gateway_revision(serve) == first.revision

    # The catalog changes: a model removed, an engine argument changed; apply again.
    CatalogModel.objects.filter(name="synthetic-b").update(status=CatalogModel.Status.DISABLED)
    first_model.engine_args = {**FAST, "default_max_tokens": 4}
    first_model.save()
    staff_client.post("/staff/deploy/apply/")
    second = DeploymentRevision.objects.first()
    assert second is not None
    assert second.outcome == "applied", second.error
    text, _ = watch_rollout(staff_client)
    assert 'data-model="synthetic-a" data-state="running"' in text
    assert "synthetic-b" not in text
    assert gateway_revision(serve) == second.revision

    # The history says what changed; roll back to the first revision, confirmed.
    page = staff_client.get("/staff/deploy/").content.decode()
    assert "1 removed (synthetic-b); 1 changed (synthetic-a)" in page
    assert 'data-field="engine_args.default_max_tokens"' in page
    rollback = f"/staff/deploy/revisions/{first.pk}/rollback/"
    assert rollback in page
    assert "synthetic-b" in staff_client.get(rollback).content.decode()
    staff_client.post(rollback, {"confirm": "yes"})
    third = DeploymentRevision.objects.first()
    assert third is not None
    assert third.pk not in (first.pk, second.pk)
    assert third.outcome == "applied", third.error
    assert third.config == first.config

    text, seen = watch_rollout(staff_client)
    for name in ("synthetic-a", "synthetic-b"):
        assert f'data-model="{name}" data-state="running"' in text
    assert gateway_revision(serve) == first.revision
    apps = serve.get_applications()["applications"]
    assert deployment_name("synthetic-b") in apps
    args = apps[deployment_name("synthetic-a")]["deployed_app_config"]["args"]
    assert args["engine_args"]["default_max_tokens"] == FAST["default_max_tokens"]
    assert seen  # the partial was watched through the rollout
