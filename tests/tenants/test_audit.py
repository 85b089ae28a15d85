"""The audit log: every mutating service writes one record in its own transaction (actor,
organisation, action, target, before and after, never secrets); the API reads it for owners and
admins only, filtered and paginated, and exports it as CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from tenants import audit, services
from tenants.models import ApiKey, AuditEvent, Membership, Role
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/audit/"
CSV_URL = "/api/v1/orgs/acme/audit.csv"
SECRET_WORDS = ("secret_hash", "token_hash", "password", "vlk_", "vli_")


def _only(action: str) -> AuditEvent:
    events = list(AuditEvent.objects.filter(action=action))
    assert len(events) == 1, [e.action for e in AuditEvent.objects.all()]
    return events[0]


def _no_secrets(event: AuditEvent, *plaintexts: str) -> None:
    text = json.dumps([event.before, event.after])
    for word in (*SECRET_WORDS[:3], *plaintexts):
        assert word not in text


@pytest.fixture
def admin_user(org):  # type: ignore[no-untyped-def]
    return MembershipFactory(
        organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
    ).user


@pytest.fixture
def as_admin(admin_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_login(admin_user)
    return client


# --- the services write the records -------------------------------------------------------------


def test_api_key_lifecycle_is_audited_without_secrets(org, owner):
    key, secret = services.api_key_create(
        organization=org, name="ci", created_by=owner, actor_role=Role.OWNER
    )
    created = _only("api_key.created")
    assert (created.organization, created.actor, created.actor_username) == (org, owner, "owner")
    assert (created.target_type, created.target_id) == ("apikey", str(key.pk))
    assert created.before is None
    assert created.after["name"] == "ci"
    assert created.after["scopes"] == ["inference"]
    _no_secrets(created, secret, key.secret_hash)

    services.api_key_update(api_key=key, actor_role=Role.OWNER, actor=owner, name="ci-2")
    updated = _only("api_key.updated")
    assert (updated.before, updated.after) == ({"name": "ci"}, {"name": "ci-2"})

    new_key, new_secret = services.api_key_rotate(api_key=key, actor_role=Role.OWNER, actor=owner)
    rotated = _only("api_key.rotated")
    assert rotated.target_id == str(key.pk)
    assert rotated.before["replaced_by"] is None
    assert rotated.after["replaced_by"] == str(new_key.pk)
    _no_secrets(rotated, secret, new_secret, new_key.secret_hash)
    # Rotation is one record, not also an "api_key.created" for the new key.
    assert AuditEvent.objects.filter(action="api_key.created").count() == 1

    services.api_key_revoke(api_key=new_key, actor_role=Role.OWNER, actor=owner)
    services.api_key_revoke(api_key=new_key, actor_role=Role.OWNER, actor=owner)  # a no-op
    revoked = _only("api_key.revoked")
    assert revoked.before == {"revoked_at": None}
    assert revoked.after["revoked_at"]


def test_a_change_that_changes_nothing_records_nothing(org, owner):
    key, _ = services.api_key_create(
        organization=org, name="ci", created_by=owner, actor_role=Role.OWNER
    )
    services.api_key_update(api_key=key, actor_role=Role.OWNER, actor=owner, name="ci")
    services.organization_update(organization=org, name=org.name, actor=owner)
    assert not AuditEvent.objects.filter(action__in=["api_key.updated", "organization.updated"])


def test_organisation_changes_are_audited(org, staff):
    services.organization_update(organization=org, name="Acme Ltd", actor=staff)
    services.organization_set_limits(organization=org, actor=staff, requests_per_minute=60)
    services.organization_set_plan(organization=org, plan="premium", actor=staff)
    services.organization_set_status(organization=org, status="suspended", actor=staff)
    renamed, limited = AuditEvent.objects.filter(action="organization.updated").order_by("id")
    assert (renamed.before, renamed.after) == ({"name": "Acme"}, {"name": "Acme Ltd"})
    assert (limited.before, limited.after) == (
        {"requests_per_minute": None},
        {"requests_per_minute": 60},
    )
    assert _only("organization.plan_changed").after == {"plan": "premium"}
    status = _only("organization.status_changed")
    assert (status.before, status.after) == ({"status": "active"}, {"status": "suspended"})
    assert {e.actor for e in AuditEvent.objects.all()} == {staff}


def test_membership_changes_are_audited(org, owner, viewer):
    membership = Membership.objects.get(organization=org, user=viewer)
    services.membership_change_role(
        membership=membership, role=Role.ADMIN, actor_role=Role.OWNER, actor=owner
    )
    changed = _only("member.role_changed")
    assert changed.before == {"user": viewer.pk, "role": "viewer"}
    assert changed.after == {"user": viewer.pk, "role": "admin"}
    membership_id = membership.pk
    services.membership_remove(membership=membership, actor_role=Role.OWNER, actor=owner)
    removed = _only("member.removed")
    assert removed.target_id == str(membership_id)
    assert removed.after is None
    newcomer = UserFactory()
    services.membership_add(
        organization=org, user=newcomer, role=Role.MEMBER, actor_role=Role.OWNER, actor=owner
    )
    assert _only("member.added").after == {"user": newcomer.pk, "role": "member"}


def test_a_refused_change_leaves_no_record(org, owner):
    row = Membership.objects.get(organization=org, user=owner)
    with pytest.raises(Exception, match="at least one owner"):
        services.membership_remove(membership=row, actor_role=Role.OWNER, actor=owner)
    assert not AuditEvent.objects.exists()


def test_the_record_rolls_back_with_its_change(org, owner):
    def change_then_fail() -> None:
        with transaction.atomic():
            services.organization_update(organization=org, name="Gone", actor=owner)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert not AuditEvent.objects.exists()


def test_audit_record_refuses_secrets_unknown_actions_and_no_transaction(org, owner):
    with transaction.atomic():
        with pytest.raises(ValueError, match="secrets"):
            audit.audit_record(
                organization=org,
                actor=owner,
                action="organization.updated",
                target=org,
                after={"secret_hash": "x"},
            )
        with pytest.raises(ValueError, match="Unknown audit action"):
            audit.audit_record(organization=org, actor=owner, action="org.nuked", target=org)


def test_an_api_key_request_records_the_key_and_its_creator(org, owner):
    key, secret = services.api_key_create(
        organization=org,
        name="ops",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=["management:read", "management:write"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.patch("/api/v1/orgs/acme/", {"name": "By key"}, format="json").status_code == 200
    event = _only("organization.updated")
    assert (event.actor, event.api_key_id) == (owner, key.pk)
    assert client.get(URL).json()["results"][0]["api_key"] == str(key.pk)


def test_api_writes_are_audited_with_the_signed_in_actor(as_owner, owner, org):
    response = as_owner.post("/api/v1/orgs/acme/keys/", {"name": "web"}, format="json")
    assert response.status_code == 201
    event = _only("api_key.created")
    assert (event.actor, event.api_key) == (owner, None)
    _no_secrets(event, response.json()["key"])


# --- the API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [
        ("as_owner", 200),
        ("as_admin", 200),
        ("as_member", 403),
        ("as_viewer", 403),
        ("as_outsider", 404),
        ("as_staff", 200),
    ],
)
@pytest.mark.parametrize("url", [URL, CSV_URL])
def test_role_matrix(request, client_name, expected, url, org, owner):
    services.organization_update(organization=org, name="Audited", actor=owner)
    response = request.getfixturevalue(client_name).get(url)
    assert response.status_code == expected
    if expected == 200 and url == URL:
        assert [row["action"] for row in response.json()["results"]] == ["organization.updated"]


def test_a_read_only_api_key_gets_403(org, owner):
    _, secret = services.api_key_create(
        organization=org,
        name="ro",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=["management:read"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(URL).status_code == 403
    assert client.get(CSV_URL).status_code == 403


def test_other_organisations_records_are_not_listed(as_owner, org, owner, outsider):
    other = Membership.objects.get(user=outsider).organization
    services.organization_update(organization=other, name="Elsewhere", actor=outsider)
    assert as_owner.get(URL).json()["count"] == 0


def _seed_history(org, owner, admin_user):  # type: ignore[no-untyped-def]
    services.organization_update(organization=org, name="One", actor=owner)
    services.organization_update(organization=org, name="Two", actor=admin_user)
    key, _ = services.api_key_create(
        organization=org, name="k", created_by=admin_user, actor_role=Role.ADMIN
    )
    old = AuditEvent.objects.get(action="organization.updated", after={"name": "One"})
    AuditEvent.objects.filter(pk=old.pk).update(created_at=datetime(2026, 1, 10, tzinfo=UTC))
    return key


def test_filters(as_owner, org, owner, admin_user):
    _seed_history(org, owner, admin_user)

    def actions(**params: str) -> list[str]:
        response = as_owner.get(URL, params)
        assert response.status_code == 200, response.json()
        return [row["action"] for row in response.json()["results"]]

    assert actions() == ["api_key.created", "organization.updated", "organization.updated"]
    assert actions(action="api_key.created") == ["api_key.created"]
    assert actions(actor="admin") == ["api_key.created", "organization.updated"]
    assert actions(actor="owner") == ["organization.updated"]
    assert actions(to="2026-01-11") == ["organization.updated"]
    assert actions(**{"from": "2026-01-11T00:00:00Z"}) == [
        "api_key.created",
        "organization.updated",
    ]
    assert actions(**{"from": "2026-01-10", "to": "2026-01-10T12:00+01:00"}) == [
        "organization.updated"
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"action": "api_key.exploded"}, "action"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-03-01", "to": "2026-02-01"}, "to"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_filters_are_400s_naming_the_parameter(as_owner, org, params, field):
    response = as_owner.get(URL, params)
    assert response.status_code == 400
    assert field in response.json()


def test_pagination(as_owner, org, owner):
    for n in range(5):
        services.organization_update(organization=org, name=f"Name {n}", actor=owner)
    first = as_owner.get(URL, {"limit": 2}).json()
    assert first["count"] == 5
    assert len(first["results"]) == 2
    assert first["next"]
    assert first["results"][0]["after"] == {"name": "Name 4"}  # newest first
    last = as_owner.get(URL, {"limit": 2, "offset": 4}).json()
    assert [row["after"] for row in last["results"]] == [{"name": "Name 0"}]
    assert last["next"] is None


def test_csv_export_streams_the_filtered_rows(as_owner, org, owner, admin_user):
    key = _seed_history(org, owner, admin_user)
    response = as_owner.get(CSV_URL, {"actor": "admin"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="audit-acme.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["action"] for row in rows] == ["api_key.created", "organization.updated"]
    assert rows[0]["target_id"] == str(key.pk)
    assert rows[0]["actor"] == "admin"
    assert json.loads(rows[0]["after"])["name"] == "k"
    assert json.loads(rows[1]["before"]) == {"name": "One"}
    assert "secret_hash" not in b"".join(as_owner.get(CSV_URL).streaming_content).decode()


def test_csv_cells_cannot_run_as_formulas(as_owner, org, owner):
    services.api_key_create(organization=org, name="x", created_by=owner, actor_role=Role.OWNER)
    AuditEvent.objects.update(actor_username="=HYPERLINK(1)")
    body = b"".join(as_owner.get(CSV_URL).streaming_content).decode()
    assert "'=HYPERLINK(1)" in body


def test_records_outlive_their_actor_and_key(org, owner):
    key, _ = services.api_key_create(
        organization=org, name="k", created_by=owner, actor_role=Role.OWNER
    )
    ApiKey.objects.filter(pk=key.pk).delete()
    event = _only("api_key.created")
    event.refresh_from_db()
    assert event.actor_username == "owner"
    assert event.target_id == str(key.pk)
    assert event.created_at > datetime.now(UTC) - timedelta(minutes=1)


def test_admin_pages_are_read_only_lists(org, owner):
    as_staff = APIClient()
    as_staff.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    services.organization_update(organization=org, name="Seen", actor=owner)
    assert as_staff.get("/admin/tenants/auditevent/").status_code == 200
    event = AuditEvent.objects.get()
    assert as_staff.get(f"/admin/tenants/auditevent/{event.pk}/change/").status_code == 200
    assert as_staff.get("/admin/tenants/auditevent/add/").status_code == 403
    assert as_staff.post(f"/admin/tenants/auditevent/{event.pk}/delete/").status_code == 403


def test_membership_changes_in_the_admin_go_through_the_services(org, owner, member):
    """The admin adds, re-roles and removes members with the services' rules and audit."""
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    as_staff = APIClient()
    as_staff.force_login(root)
    mine = Membership.objects.get(organization=org, user=member)
    changed = as_staff.post(
        f"/admin/tenants/membership/{mine.pk}/change/", {"role": "admin"}, format="multipart"
    )
    assert changed.status_code == 302, changed.content.decode()[:2000]
    assert Membership.objects.get(pk=mine.pk).role == "admin"
    event = AuditEvent.objects.get(action="member.role_changed")
    assert event.actor_username == "root"
    assert (event.before["role"], event.after["role"]) == ("member", "admin")

    # The last owner can be neither demoted nor removed.
    theirs = Membership.objects.get(organization=org, user=owner)
    refused = as_staff.post(
        f"/admin/tenants/membership/{theirs.pk}/change/", {"role": "viewer"}, format="multipart"
    )
    assert refused.status_code == 200
    assert "keeps at least one owner" in refused.content.decode()
    assert Membership.objects.get(pk=theirs.pk).role == "owner"
    assert as_staff.get(f"/admin/tenants/membership/{theirs.pk}/delete/").status_code == 403

    removed = as_staff.post(f"/admin/tenants/membership/{mine.pk}/delete/", {"post": "yes"})
    assert removed.status_code == 302
    assert not Membership.objects.filter(pk=mine.pk).exists()
    assert AuditEvent.objects.filter(action="member.removed", actor_username="root").exists()

    newcomer = UserFactory(username="newcomer")
    added = as_staff.post(
        "/admin/tenants/membership/add/",
        {"organization": str(org.pk), "user": str(newcomer.pk), "role": "viewer"},
        format="multipart",
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    assert Membership.objects.get(organization=org, user=newcomer).role == "viewer"
    assert AuditEvent.objects.filter(action="member.added", actor_username="root").exists()
