"""``POST /api/v1/models/{name}/scale/``: staff only, as the rest of the catalog API; a bad
request is a 400 naming the fields (the API's ``ValidationError`` shape) with nothing stored;
a good one is stored, audited and applied, and the answer says whether Ray accepted it."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from inference.models import CatalogModel, DeploymentRevision
from tenants import services as tenant_services
from tenants.models import AuditEvent, Role, Scope
from tests.factories import CatalogModelFactory
from tests.ray_fixtures import free_port

pytestmark = pytest.mark.django_db


def scale_url(name: str) -> str:
    return f"/api/v1/models/{name}/scale/"


@pytest.fixture(autouse=True)
def unreachable(settings):  # type: ignore[no-untyped-def]
    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"
    settings.VLINDERS_RAY_AUTH_TOKEN = "irrelevant"
    return settings


@pytest.fixture
def model(db) -> CatalogModel:  # type: ignore[no-untyped-def]
    return CatalogModelFactory(name="meta/llama-3.1:8b", min_replicas=1, max_replicas=1)


def test_staff_scales_to_a_fixed_count(as_staff, model) -> None:
    response = as_staff.post(scale_url(model.name), {"replicas": 3}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["model"] == model.name
    assert (body["min_replicas"], body["max_replicas"], body["scale_to_zero"]) == (3, 3, False)
    # Ray is unreachable here: stored, but not applied, and the answer says why.
    assert body["applied"] is False
    assert body["revision"]["outcome"] == "failed"
    assert "unreachable" in body["revision"]["error"]
    assert body["revision"]["applied_by"] == "staff"
    assert "3 replicas ask for 3 CPU" in body["capacity_note"]
    assert "capacity is unknown" in body["capacity_note"]
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas) == (3, 3)
    assert DeploymentRevision.objects.get().outcome == DeploymentRevision.Outcome.FAILED
    event = AuditEvent.objects.get(action="catalog_model.scaled")
    assert (event.before["max_replicas"], event.after["max_replicas"]) == (1, 3)


def test_staff_sets_autoscaling_bounds_and_scale_to_zero(as_staff, model) -> None:
    response = as_staff.post(
        scale_url(model.name),
        {"min_replicas": 0, "max_replicas": 4, "scale_to_zero": True},
        format="json",
    )
    assert response.status_code == 200, response.json()
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas, model.scale_to_zero) == (0, 4, True)


def test_unknown_model_is_404(as_staff) -> None:
    response = as_staff.post(scale_url("nope"), {"replicas": 1}, format="json")
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize("actor", ["as_owner", "as_viewer", "as_member", "as_outsider"])
def test_non_staff_get_403(actor, request, model) -> None:
    client = request.getfixturevalue(actor)
    response = client.post(scale_url(model.name), {"replicas": 2}, format="json")
    assert response.status_code == 403
    model.refresh_from_db()
    assert model.max_replicas == 1


def test_anonymous_gets_401(anonymous, model) -> None:
    assert anonymous.post(scale_url(model.name), {"replicas": 2}, format="json").status_code == 401


def test_an_api_key_is_never_staff(org, owner, model) -> None:
    _, plaintext = tenant_services.api_key_create(
        organization=org,
        name="admin key",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=[Scope.MANAGEMENT_READ, Scope.MANAGEMENT_WRITE],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.post(scale_url(model.name), {"replicas": 2}, format="json").status_code == 403
    assert not DeploymentRevision.objects.exists()


def test_only_post(as_staff, model) -> None:
    assert as_staff.get(scale_url(model.name)).status_code == 405


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas", "Must not exceed max_replicas"),
        ({"min_replicas": 0, "max_replicas": 2}, "min_replicas", "set scale_to_zero"),
        ({"replicas": 2, "min_replicas": 1}, "replicas", "not both"),
        ({"replicas": 0}, "replicas", "greater than or equal to 1"),
        ({"replicas": "2"}, "replicas", "whole number"),
        ({"replicas": 1001}, "replicas", "less than or equal to 1000"),
        ({"max_replicas": 2}, "min_replicas", "Required"),
        ({}, "min_replicas", "Required"),
        ({"replicas": 1, "scale_to_zero": True}, "scale_to_zero", "never scales to zero"),
        ({"min_replicas": 1, "max_replicas": 2, "scale_to_zero": True}, "scale_to_zero", "has "),
    ],
)
def test_bad_requests_are_400_naming_the_field(as_staff, model, body, field, message) -> None:
    response = as_staff.post(scale_url(model.name), body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert all(isinstance(m, str) for m in errors[field])
    assert any(message in m for m in errors[field]), errors
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas) == (1, 1)
    assert not DeploymentRevision.objects.exists()
    assert not AuditEvent.objects.exists()


def test_malformed_json_is_400(as_staff, model) -> None:
    response = as_staff.post(scale_url(model.name), "{", content_type="application/json")
    assert response.status_code == 400


def test_the_console_session_needs_csrf(staff, model) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(scale_url(model.name), {"replicas": 2}, content_type="application/json")
    assert response.status_code == 403


def test_the_schema_lists_the_operation(as_staff) -> None:
    response = as_staff.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    operation = schema["paths"]["/api/v1/models/{name}/scale/"]["post"]
    assert operation["operationId"] == "models_scale_create"
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "404"}
    request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = schema["components"]["schemas"][request_ref.rsplit("/", 1)[1]]
    assert set(request_schema["properties"]) == {
        "replicas",
        "min_replicas",
        "max_replicas",
        "scale_to_zero",
    }
    response_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    response_schema = schema["components"]["schemas"][response_ref.rsplit("/", 1)[1]]
    assert {"applied", "revision", "capacity_note"} <= set(response_schema["properties"])
