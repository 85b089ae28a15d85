"""The management API authenticated by API keys: scopes, revocation, expiry, suspension."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiKey, Role

pytestmark = pytest.mark.django_db


def _key(org, owner, scopes, **extra):
    return services.api_key_create(
        organization=org, name="k", created_by=owner, actor_role=Role.OWNER, scopes=scopes, **extra
    )


def _client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_read_scope_reads_but_cannot_write(org, owner):
    _, secret = _key(org, owner, ["management:read"])
    client = _client(secret)
    assert client.get("/api/v1/orgs/acme/keys/").status_code == 200
    assert client.post("/api/v1/orgs/acme/keys/", {"name": "x"}, format="json").status_code == 403
    assert client.patch("/api/v1/orgs/acme/", {"name": "x"}, format="json").status_code == 403


def test_write_scope_manages_keys(org, owner):
    _, secret = _key(org, owner, ["management:write"])
    response = _client(secret).post(
        "/api/v1/orgs/acme/keys/", {"name": "made-by-key"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["created_by"] == "owner"


def test_inference_only_key_has_no_management_access(org, owner):
    _, secret = _key(org, owner, ["inference"])
    assert _client(secret).get("/api/v1/orgs/acme/keys/").status_code == 403
    assert _client(secret).get("/api/v1/orgs/").status_code == 403


def test_key_sees_only_its_own_organisation(org, owner, outsider):
    _, secret = _key(org, owner, ["management:write"])
    client = _client(secret)
    foreign = outsider.memberships.get().organization.slug
    assert client.get(f"/api/v1/orgs/{foreign}/").status_code == 404
    assert client.get(f"/api/v1/orgs/{foreign}/keys/").status_code == 404
    assert [o["slug"] for o in client.get("/api/v1/orgs/").json()["results"]] == ["acme"]


def test_key_cannot_create_organisations(org, owner):
    _, secret = _key(org, owner, ["management:write"])
    response = _client(secret).post("/api/v1/orgs/", {"name": "n", "slug": "n"}, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    "header",
    ["Bearer vlk_" + "a" * 52, "Bearer vlk_short", "Bearer vlk_" + "é" * 52],
)
def test_wrong_key_is_401_with_challenge(org, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/orgs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_stops_working(org, owner):
    key, secret = _key(org, owner, ["management:read"])
    client = _client(secret)
    assert client.get("/api/v1/orgs/").status_code == 200
    services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner)
    response = client.get("/api/v1/orgs/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_expired_key_stops_working(org, owner):
    key, secret = _key(org, owner, ["management:read"])
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _client(secret).get("/api/v1/orgs/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_suspended_organisations_keys_stop_working(org, owner):
    _, secret = _key(org, owner, ["management:read"])
    services.organization_set_status(organization=org, status="suspended")
    response = _client(secret).get("/api/v1/orgs/")
    assert response.status_code == 401
    assert "suspended" in response.json()["detail"]
    services.organization_set_status(organization=org, status="active")
    assert _client(secret).get("/api/v1/orgs/").status_code == 200


def test_last_used_is_recorded_coarsely(org, owner, settings):
    key, secret = _key(org, owner, ["management:read"])
    assert key.last_used_at is None
    _client(secret).get("/api/v1/orgs/")
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    _client(secret).get("/api/v1/orgs/")
    key.refresh_from_db()
    assert key.last_used_at == first  # within the resolution: no second write
    settings.VLINDERS_KEY_LAST_USED_RESOLUTION_SECONDS = 0
    _client(secret).get("/api/v1/orgs/")
    key.refresh_from_db()
    assert key.last_used_at > first
