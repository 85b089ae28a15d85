"""Regressions from the control-plane review: full-republish races, stale key updates, key roles
capped by their creator, and bodies that used to produce a 500."""

import json
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import keys, services, snapshot
from tenants.models import ApiKey, Membership, Role

pytestmark = pytest.mark.django_db


def _create_key(org, creator, scopes=None):
    return services.api_key_create(
        organization=org,
        name="k",
        created_by=creator,
        actor_role=Role.OWNER,
        scopes=scopes or ["inference"],
    )


def _read(redis_client, name):
    raw = redis_client.get(name)
    return None if raw is None else json.loads(raw)


# --- 1. the full republish never overwrites or sweeps what was published during it -------------


@pytest.mark.redis
def test_full_republish_keeps_a_revocation_published_during_the_pass(
    org, owner, redis_client, monkeypatch
):
    key, secret = _create_key(org, owner)
    name = snapshot.key_record_name(keys.hash_key(secret))
    original = snapshot.key_record
    raced = []

    def key_record_racing_a_revocation(row, version):
        # The pass has read ``row`` (still active). Before it writes, a revocation commits and
        # its targeted publish lands.
        if not raced and row.pk == key.pk:
            raced.append(True)
            ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
            snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
            assert _read(redis_client, name)["status"] == "revoked"
        return original(row, version)

    monkeypatch.setattr(snapshot, "key_record", key_record_racing_a_revocation)
    snapshot.publish_full()

    assert raced
    assert _read(redis_client, name)["status"] == "revoked"


@pytest.mark.redis
def test_full_republish_keeps_a_suspension_published_during_the_pass(
    org, redis_client, monkeypatch
):
    name = snapshot.org_record_name(org.id)
    original = snapshot.org_record
    raced = []

    def org_record_racing_a_suspension(row, model_names, version):
        if not raced and row.pk == org.pk:
            raced.append(True)
            type(org).objects.filter(pk=org.pk).update(status="suspended")
            snapshot.publish_organizations(type(org).objects.filter(pk=org.pk))
        return original(row, model_names, version)

    monkeypatch.setattr(snapshot, "org_record", org_record_racing_a_suspension)
    snapshot.publish_full()

    assert raced
    assert _read(redis_client, name)["status"] == "suspended"


@pytest.mark.redis
def test_full_republish_sweeps_only_records_older_than_the_pass(
    org, owner, redis_client, monkeypatch
):
    born_during = snapshot.key_record_name("1" * 64)  # a key created while the pass ran
    old_stale = snapshot.key_record_name("2" * 64)  # a deleted key, published long ago
    unreadable = snapshot.key_record_name("3" * 64)
    redis_client.set(old_stale, json.dumps({"version": 1}))
    redis_client.set(unreadable, "not json")
    original = snapshot.org_record

    def org_record_while_a_key_is_created(row, model_names, version):
        # Published after the pass took its version, for a row the pass never read.
        redis_client.set(born_during, json.dumps({"version": snapshot._take_version(redis_client)}))
        return original(row, model_names, version)

    monkeypatch.setattr(snapshot, "org_record", org_record_while_a_key_is_created)
    result = snapshot.publish_full()

    assert redis_client.get(born_during) is not None
    assert redis_client.get(old_stale) is None
    assert redis_client.get(unreadable) is None
    assert result.removed == 2


@pytest.mark.redis
def test_full_republish_still_rewrites_records_older_than_the_pass(org, owner, redis_client):
    key, secret = _create_key(org, owner)
    name = snapshot.key_record_name(keys.hash_key(secret))
    old = {"status": "active", "version": 1}
    redis_client.set(name, json.dumps(old))
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())

    snapshot.publish_full()

    record = _read(redis_client, name)
    assert record["status"] == "revoked"
    assert record["version"] > old["version"]


def test_published_at_always_has_microseconds_so_strings_order_as_moments(org, monkeypatch):
    whole_second = timezone.now().replace(microsecond=0)
    monkeypatch.setattr(snapshot.timezone, "now", lambda: whole_second)
    at = snapshot.org_record(org, [], 1)["published_at"]
    assert at == whole_second.isoformat(timespec="microseconds")
    assert at.endswith(".000000+00:00")


# --- 2. updating a key never undoes a concurrent revocation or stretches a rotated-out key ------


def test_update_with_a_stale_instance_does_not_undo_a_revocation(org, owner):
    key, _ = _create_key(org, owner)
    stale = ApiKey.objects.get(pk=key.pk)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())  # revoked meanwhile

    with pytest.raises(ValidationError):
        services.api_key_update(api_key=stale, actor_role=Role.OWNER, actor=owner, name="new")

    key.refresh_from_db()
    assert key.revoked_at is not None
    assert key.name == "k"


def test_update_writes_only_the_changed_columns(org, owner):
    key, _ = _create_key(org, owner)
    stale = ApiKey.objects.get(pk=key.pk)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())

    updated = services.api_key_update(
        api_key=stale, actor_role=Role.OWNER, actor=owner, name="new", requests_per_minute=5
    )

    key.refresh_from_db()
    assert (key.name, key.requests_per_minute) == ("new", 5)
    assert key.last_used_at is not None  # not overwritten with the stale instance's None
    assert updated.last_used_at is not None


def test_rotated_out_key_cannot_be_updated(as_owner, org, owner):
    key, _ = _create_key(org, owner)
    services.api_key_rotate(
        api_key=key, actor_role=Role.OWNER, actor=owner, grace=timedelta(hours=1)
    )
    key.refresh_from_db()
    grace_ends = key.expires_at

    far = (timezone.now() + timedelta(days=365)).isoformat()
    response = as_owner.patch(
        f"/api/v1/orgs/acme/keys/{key.pk}/", {"expires_at": far}, format="json"
    )

    assert response.status_code == 400
    assert "rotated" in json.dumps(response.json())
    key.refresh_from_db()
    assert key.expires_at == grace_ends


# --- 3. a key's management role is capped by its creator's current role ------------------------


def _client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_key_of_a_demoted_creator_acts_with_the_creators_role(org, owner):
    _, secret = _create_key(org, owner, ["management:write"])
    client = _client(secret)
    assert client.patch("/api/v1/orgs/acme/", {"name": "A"}, format="json").status_code == 200

    Membership.objects.filter(organization=org, user=owner).update(role=Role.VIEWER)

    assert client.get("/api/v1/orgs/acme/keys/").status_code == 200
    assert client.patch("/api/v1/orgs/acme/", {"name": "B"}, format="json").status_code == 403
    response = client.post("/api/v1/orgs/acme/keys/", {"name": "x"}, format="json")
    assert response.status_code == 403


def test_key_of_a_removed_creator_has_no_management_access(org, owner):
    _, secret = _create_key(org, owner, ["management:write"])
    client = _client(secret)
    Membership.objects.filter(organization=org, user=owner).delete()

    for response in (client.get("/api/v1/orgs/acme/keys/"), client.get("/api/v1/orgs/")):
        assert response.status_code == 403
        assert "no longer a member" in response.json()["detail"]


def test_key_of_a_staff_creator_is_not_capped(org, staff):
    _, secret = _create_key(org, staff, ["management:write"])
    response = _client(secret).patch("/api/v1/orgs/acme/", {"name": "A"}, format="json")
    assert response.status_code == 200


def test_key_without_a_creator_acts_with_its_scopes(org):
    _, secret = _create_key(org, None, ["management:write"])
    response = _client(secret).patch("/api/v1/orgs/acme/", {"name": "A"}, format="json")
    assert response.status_code == 200


# --- 4. bad bodies are 400s, never 500s ---------------------------------------------------------


def test_deeply_nested_body_is_a_400(as_owner, org):
    response = as_owner.post("/api/v1/orgs/", "[" * 5000, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.json()["detail"]
    response = as_owner.post(
        "/api/v1/orgs/", '{"name": ' + "[" * 100000, content_type="application/json"
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/orgs/", '{"name": "\\ud800", "slug": "ok-slug"}'),
        ("/api/v1/orgs/", '{"name": "ok", "slug": "\\ud800"}'),
        # Error messages that quote the input used to fail while rendering the 400.
        ("/api/v1/orgs/acme/keys/", '{"name": "x", "scopes": ["\\ud800"]}'),
        ("/api/v1/orgs/acme/invitations/", '{"email": "a@example.test", "role": "\\ud800"}'),
    ],
)
def test_lone_surrogate_is_a_400(as_owner, org, viewer, url, body):
    response = as_owner.post(url, body, content_type="application/json")
    assert response.status_code == 400
    assert "\\ud800" in response.content.decode() or "U+D800" in response.content.decode()


def test_lone_surrogate_in_a_key_update_is_a_400(as_owner, org, owner):
    key, _ = _create_key(org, owner)
    response = as_owner.patch(
        f"/api/v1/orgs/acme/keys/{key.pk}/", '{"name": "\\ud800"}', content_type="application/json"
    )
    assert response.status_code == 400
    key.refresh_from_db()
    assert key.name == "k"


def test_lone_surrogate_from_the_database_layer_is_a_400():
    from vlinders.api import exception_handler

    try:
        "\ud800".encode()
    except UnicodeEncodeError as exc:
        wrapped = RuntimeError("query failed")
        wrapped.__cause__ = exc
        response = exception_handler(wrapped, {})
    assert response is not None
    assert response.status_code == 400
    assert "surrogate" in response.data["detail"]
