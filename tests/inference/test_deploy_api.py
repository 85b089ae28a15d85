"""Deployment revisions and per-model status: staff-only read API and read-only admin."""

from __future__ import annotations

import pytest
from django.test import Client

from inference.deployment import config_revision, deployment_name, render_serve_config
from inference.models import DeploymentRevision, ModelDeploymentStatus
from tests.factories import CatalogModelFactory, UserFactory

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-never-shown"


@pytest.fixture
def recorded(staff):  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(
        name="upstream",
        engine_kind="openai",
        engine_args={},
        upstream_base_url="https://api.example.test/v1",
        upstream_model="m",
        upstream_api_key=SECRET,
    )
    config = render_serve_config()
    revision = DeploymentRevision.objects.create(
        revision=config_revision(config),
        config_hash="0" * 64,
        config=config,
        applied_by=staff,
        outcome="failed",
        error="Ray refused the config: bad",
    )
    status = ModelDeploymentStatus.objects.create(
        catalog_model=model,
        deployment=deployment_name(model.name),
        state="running",
        replicas_running=1,
        replicas_target=2,
        revision=revision.revision,
        message="",
    )
    return revision, status


@pytest.mark.parametrize("url", ["/api/v1/deployments/", "/api/v1/deployments/status/"])
def test_staff_only(url, recorded, as_owner, as_viewer, as_outsider, anonymous) -> None:
    for client in (as_owner, as_viewer, as_outsider):
        assert client.get(url).status_code == 403
    assert anonymous.get(url).status_code in (401, 403)


def test_revisions_list_without_secrets(recorded, as_staff) -> None:
    revision, _ = recorded
    response = as_staff.get("/api/v1/deployments/")
    assert response.status_code == 200
    (item,) = response.json()["results"]
    assert item["revision"] == revision.revision
    assert item["outcome"] == "failed"
    assert item["error"] == "Ray refused the config: bad"
    assert item["applied_by"] == "staff"
    assert SECRET not in response.content.decode()


def test_status_list(recorded, as_staff) -> None:
    _, status = recorded
    response = as_staff.get("/api/v1/deployments/status/")
    assert response.status_code == 200
    (item,) = response.json()["results"]
    assert item["model"] == "upstream"
    assert item["deployment"] == status.deployment
    assert (item["state"], item["replicas_running"], item["replicas_target"]) == ("running", 1, 2)


def test_admin_is_read_only_and_hides_upstream_keys(recorded) -> None:
    revision, status = recorded
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    base = "/admin/inference/deploymentrevision/"
    assert client.get(base).status_code == 200
    page = client.get(f"{base}{revision.pk}/change/")
    assert page.status_code == 200
    assert revision.revision in page.content.decode()
    assert SECRET not in page.content.decode()
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{revision.pk}/delete/", {"post": "yes"}).status_code == 403
    assert DeploymentRevision.objects.filter(pk=revision.pk).exists()

    base = "/admin/inference/modeldeploymentstatus/"
    assert client.get(base).status_code == 200
    assert client.get(f"{base}{status.pk}/change/").status_code == 200
    assert client.get(f"{base}add/").status_code == 403
