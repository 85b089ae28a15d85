"""Members API: three actors (owner, read-only member, outsider), plus admin/owner rules."""

import pytest

from tenants.models import Membership, Role
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/members/"


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 200), ("as_outsider", 404), ("as_staff", 200)],
)
def test_list(request, client_name, expected, owner, viewer):
    response = request.getfixturevalue(client_name).get(URL)
    assert response.status_code == expected
    if expected == 200:
        users = {row["user"]["username"]: row["role"] for row in response.json()["results"]}
        assert users == {"owner": "owner", "viewer": "viewer"}


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 403), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 201)],
)
def test_add(request, client_name, expected, org, owner, viewer):
    """Adding an existing user directly is for platform staff: for anyone else its answer would
    tell whether an address has an account (tenants invite instead)."""
    newcomer = UserFactory(username="newcomer")
    response = request.getfixturevalue(client_name).post(
        URL, {"user": "newcomer", "role": "member"}, format="json"
    )
    assert response.status_code == expected
    assert Membership.objects.filter(organization=org, user=newcomer).exists() == (expected == 201)


def test_an_owner_cannot_probe_addresses_through_members(as_owner, owner):
    """The owner's answer is the same 403 for an address with an account and one without."""
    UserFactory(username="erin", email="erin@example.test")
    known = as_owner.post(URL, {"user": "erin@example.test"}, format="json")
    unknown = as_owner.post(URL, {"user": "nobody@example.test"}, format="json")
    assert known.status_code == unknown.status_code == 403
    assert known.json() == unknown.json()


def test_add_by_email_and_validation(as_staff, owner):
    as_owner = as_staff  # the checks below are the staff path's own
    UserFactory(username="erin", email="Erin@Example.test")
    assert as_owner.post(URL, {"user": "erin@example.test"}, format="json").status_code == 201
    again = as_owner.post(URL, {"user": "erin"}, format="json")
    assert again.status_code == 400
    assert "user" in again.json()
    unknown = as_owner.post(URL, {"user": "nobody"}, format="json")
    assert unknown.status_code == 400
    assert "user" in unknown.json()
    bad_role = as_owner.post(URL, {"user": "erin", "role": "emperor"}, format="json")
    assert bad_role.status_code == 400
    assert "role" in bad_role.json()


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_change_role(request, client_name, expected, org, owner, viewer):
    membership = Membership.objects.get(organization=org, user=viewer)
    response = request.getfixturevalue(client_name).patch(
        f"{URL}{membership.pk}/", {"role": "admin"}, format="json"
    )
    assert response.status_code == expected
    membership.refresh_from_db()
    assert (membership.role == Role.ADMIN) == (expected == 200)


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 204), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 204)],
)
def test_remove(request, client_name, expected, org, owner, viewer):
    membership = Membership.objects.get(organization=org, user=viewer)
    response = request.getfixturevalue(client_name).delete(f"{URL}{membership.pk}/")
    assert response.status_code == expected
    assert Membership.objects.filter(pk=membership.pk).exists() == (expected != 204)


def test_admin_cannot_make_or_unmake_owners(org, owner):
    admin = MembershipFactory(organization=org, user=UserFactory(username="adm"), role=Role.ADMIN)
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(admin.user)
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    assert client.patch(f"{URL}{member.pk}/", {"role": "owner"}, format="json").status_code == 403
    owner_row = Membership.objects.get(organization=org, user=owner)
    assert client.delete(f"{URL}{owner_row.pk}/").status_code == 403
    assert client.patch(f"{URL}{member.pk}/", {"role": "viewer"}, format="json").status_code == 200


def test_last_owner_cannot_leave_or_be_demoted(as_owner, org, owner):
    row = Membership.objects.get(organization=org, user=owner)
    demote = as_owner.patch(f"{URL}{row.pk}/", {"role": "admin"}, format="json")
    assert demote.status_code == 400
    assert "role" in demote.json()
    assert as_owner.delete(f"{URL}{row.pk}/").status_code == 400
    second = MembershipFactory(organization=org, role=Role.OWNER)
    assert as_owner.patch(f"{URL}{row.pk}/", {"role": "admin"}, format="json").status_code == 200
    assert Membership.objects.get(pk=second.pk).role == Role.OWNER


def test_member_of_another_org_is_not_reachable(as_owner, org, outsider):
    foreign = Membership.objects.get(user=outsider)
    assert as_owner.get(f"{URL}{foreign.pk}/").status_code == 404
    assert as_owner.delete(f"{URL}{foreign.pk}/").status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()
