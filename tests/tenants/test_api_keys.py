"""API keys API: three actors, the secret shown once, rotation, revocation, expiry, limits."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tenants import keys
from tenants.models import ApiKey, Role
from tests.factories import CatalogModelFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/keys/"


def _create(client, **body):
    return client.post(URL, {"name": "ci", **body}, format="json")


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [
        ("as_owner", 201),
        ("as_member", 201),
        ("as_viewer", 403),
        ("as_outsider", 404),
        ("as_staff", 201),
    ],
)
def test_create(request, client_name, expected, org, owner):
    response = _create(request.getfixturevalue(client_name))
    assert response.status_code == expected
    assert ApiKey.objects.filter(organization=org).count() == (1 if expected == 201 else 0)


def test_secret_is_shown_once_and_only_its_hash_is_stored(as_owner, org):
    created = _create(as_owner).json()
    secret = created["key"]
    assert secret.startswith("vlk_")
    row = ApiKey.objects.get(pk=created["id"])
    assert row.secret_hash == keys.hash_key(secret)
    assert secret not in {row.prefix, row.last_four, row.secret_hash, row.name}
    assert created["display"] == f"vlk_{row.prefix}…{secret[-4:]}"
    assert created["scopes"] == ["inference"]
    listed = as_owner.get(URL).json()["results"]
    detail = as_owner.get(f"{URL}{row.pk}/").json()
    for shown in (listed[0], detail):
        assert "key" not in shown
        assert "secret_hash" not in shown
        assert secret not in str(shown)


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 200), ("as_outsider", 404), ("as_staff", 200)],
)
def test_list(request, client_name, expected, as_owner):
    _create(as_owner)
    response = request.getfixturevalue(client_name).get(URL)
    assert response.status_code == expected
    if expected == 200:
        assert len(response.json()["results"]) == 1


def test_keys_of_another_organisation_are_404(as_owner, as_outsider, outsider):
    foreign_slug = outsider.memberships.get().organization.slug
    foreign = as_outsider.post(
        f"/api/v1/orgs/{foreign_slug}/keys/", {"name": "theirs"}, format="json"
    ).json()
    assert as_owner.get(f"{URL}{foreign['id']}/").status_code == 404
    assert as_owner.post(f"{URL}{foreign['id']}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=foreign["id"]).revoked_at is None


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_revoke(request, client_name, expected, as_owner):
    key_id = _create(as_owner).json()["id"]
    response = request.getfixturevalue(client_name).post(f"{URL}{key_id}/revoke/")
    assert response.status_code == expected
    row = ApiKey.objects.get(pk=key_id)
    assert (row.status == ApiKey.Status.REVOKED) == (expected == 200)


def test_revoke_twice_is_harmless(as_owner):
    key_id = _create(as_owner).json()["id"]
    first = as_owner.post(f"{URL}{key_id}/revoke/").json()["revoked_at"]
    second = as_owner.post(f"{URL}{key_id}/revoke/")
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first
    assert second.json()["status"] == "revoked"


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 201), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 201)],
)
def test_rotate(request, client_name, expected, as_owner):
    old = _create(as_owner).json()
    response = request.getfixturevalue(client_name).post(
        f"{URL}{old['id']}/rotate/", {}, format="json"
    )
    assert response.status_code == expected
    old_row = ApiKey.objects.get(pk=old["id"])
    if expected == 201:
        new = response.json()
        assert new["key"] != old["key"]
        assert new["name"] == old["name"]
        assert old_row.status == ApiKey.Status.REVOKED
        assert str(old_row.replaced_by_id) == new["id"]
    else:
        assert old_row.status == ApiKey.Status.ACTIVE


def test_rotate_with_grace_keeps_old_key_until_then(as_owner):
    old = _create(as_owner).json()
    before = timezone.now()
    response = as_owner.post(f"{URL}{old['id']}/rotate/", {"grace_seconds": 3600}, format="json")
    assert response.status_code == 201
    old_row = ApiKey.objects.get(pk=old["id"])
    assert old_row.status == ApiKey.Status.ACTIVE
    assert before + timedelta(seconds=3590) < old_row.expires_at < before + timedelta(seconds=3610)
    assert old_row.status_at(old_row.expires_at) == ApiKey.Status.EXPIRED
    again = as_owner.post(f"{URL}{old['id']}/rotate/", {}, format="json")
    assert again.status_code == 400


def test_rotate_keeps_settings(as_owner, org):
    CatalogModelFactory(name="small")
    old = _create(
        as_owner,
        scopes=["inference", "management:read"],
        allowed_models=["small"],
        requests_per_minute=7,
    ).json()
    new = as_owner.post(f"{URL}{old['id']}/rotate/", {}, format="json").json()
    for field in ("scopes", "allowed_models", "requests_per_minute", "name"):
        assert new[field] == old[field]


@pytest.mark.parametrize("grace", [-1, 8 * 24 * 3600, "soon"])
def test_rotate_refuses_bad_grace(as_owner, grace):
    key_id = _create(as_owner).json()["id"]
    response = as_owner.post(f"{URL}{key_id}/rotate/", {"grace_seconds": grace}, format="json")
    assert response.status_code == 400
    assert "grace_seconds" in response.json()


def test_rotating_a_revoked_key_is_refused(as_owner):
    key_id = _create(as_owner).json()["id"]
    as_owner.post(f"{URL}{key_id}/revoke/")
    assert as_owner.post(f"{URL}{key_id}/rotate/", {}, format="json").status_code == 400


def test_member_manages_only_own_keys(as_owner, as_member, org):
    owners_key = _create(as_owner).json()["id"]
    members_key = _create(as_member).json()["id"]
    assert as_member.post(f"{URL}{owners_key}/revoke/").status_code == 403
    assert as_member.patch(f"{URL}{owners_key}/", {"name": "x"}, format="json").status_code == 403
    assert as_member.post(f"{URL}{members_key}/revoke/").status_code == 200
    assert ApiKey.objects.get(pk=owners_key).revoked_at is None


def test_member_cannot_mint_management_write_keys(as_member, as_owner):
    response = _create(as_member, scopes=["inference", "management:write"])
    assert response.status_code == 403
    assert _create(as_member, scopes=["inference", "management:read"]).status_code == 201
    assert _create(as_owner, scopes=["management:write"]).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"allowed_models": ["not-in-catalog"]}, "allowed_models"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"requests_per_minute": -3}, "requests_per_minute"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
    ],
)
def test_create_validation_errors_name_the_field(as_owner, body, field):
    response = _create(as_owner, **body)
    assert response.status_code == 400
    assert field in response.json()


def test_key_limits_may_only_tighten_the_organisations(as_owner, org):
    org.requests_per_minute = 100
    org.monthly_spend_budget = 50
    org.save()
    looser = _create(as_owner, requests_per_minute=101)
    assert looser.status_code == 400
    assert "requests_per_minute" in looser.json()
    assert _create(as_owner, monthly_spend_budget="50.01").status_code == 400
    tighter = _create(as_owner, requests_per_minute=10, monthly_spend_budget="20")
    assert tighter.status_code == 201
    assert tighter.json()["requests_per_minute"] == 10
    loosen = as_owner.patch(
        f"{URL}{tighter.json()['id']}/", {"requests_per_minute": 1000}, format="json"
    )
    assert loosen.status_code == 400


def test_allowed_models_must_be_usable_by_the_organisation(as_owner, org, outsider):
    CatalogModelFactory(name="public-model")
    private = CatalogModelFactory(name="private-model", visibility="restricted")
    assert _create(as_owner, allowed_models=["public-model"]).status_code == 201
    assert _create(as_owner, allowed_models=["private-model"]).status_code == 400
    private.organizations.add(org)
    assert _create(as_owner, allowed_models=["private-model"]).status_code == 201


def test_update_name_models_expiry(as_owner):
    CatalogModelFactory(name="m1")
    key_id = _create(as_owner).json()["id"]
    later = (timezone.now() + timedelta(days=1)).isoformat()
    response = as_owner.patch(
        f"{URL}{key_id}/",
        {"name": "renamed", "allowed_models": ["m1"], "expires_at": later},
        format="json",
    )
    assert response.status_code == 200, response.content
    row = ApiKey.objects.get(pk=key_id)
    assert (row.name, row.allowed_models) == ("renamed", ["m1"])
    assert row.expires_at is not None


def test_scopes_cannot_be_changed_after_creation(as_owner):
    key_id = _create(as_owner).json()["id"]
    as_owner.patch(f"{URL}{key_id}/", {"scopes": ["management:write"]}, format="json")
    assert ApiKey.objects.get(pk=key_id).scopes == ["inference"]


def test_revoked_key_cannot_be_changed(as_owner):
    key_id = _create(as_owner).json()["id"]
    as_owner.post(f"{URL}{key_id}/revoke/")
    assert as_owner.patch(f"{URL}{key_id}/", {"name": "x"}, format="json").status_code == 400


def test_admin_manages_every_key(as_member, org):
    members_key = _create(as_member).json()["id"]
    admin = MembershipFactory(
        organization=org, user=UserFactory(username="adm"), role=Role.ADMIN
    ).user
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(admin)
    assert client.post(f"{URL}{members_key}/revoke/").status_code == 200
