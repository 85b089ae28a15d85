"""Invitations through the API and the services: the role matrix, single use, expiry,
revocation, resend, and no probing of who has an account."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.invitations import InvitationUnusable
from tenants.keys import hash_key
from tenants.models import AuditEvent, Invitation, Membership, Role
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/invitations/"
LINK = re.compile(r"(?:https?://\S+)?/invitations/(vli_[A-Za-z0-9_-]+)/")


@pytest.fixture
def as_admin(org) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_login(
        MembershipFactory(
            organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
        ).user
    )
    return client


def _token_from_last_mail() -> str:
    match = LINK.search(mail.outbox[-1].body)
    assert match, mail.outbox[-1].body
    return match.group(1)


def _invite(org, owner, email="new@example.test", role=Role.MEMBER):  # type: ignore[no-untyped-def]
    return services.invitation_create(
        organization=org, email=email, role=role, actor_role=Role.OWNER, actor=owner
    )


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [
        ("as_owner", 201),
        ("as_admin", 201),
        ("as_member", 403),
        ("as_viewer", 403),
        ("as_outsider", 404),
        ("as_staff", 201),
    ],
)
def test_create_role_matrix(request, client_name, expected, org, owner):
    response = request.getfixturevalue(client_name).post(
        URL, {"email": "New@Example.test ", "role": "member"}, format="json"
    )
    assert response.status_code == expected, response.content
    assert Invitation.objects.filter(email="new@example.test").exists() == (expected == 201)
    assert len(mail.outbox) == (1 if expected == 201 else 0)


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
def test_list_resend_revoke_role_matrix(request, client_name, expected, org, owner):
    invitation, _ = _invite(org, owner)
    client = request.getfixturevalue(client_name)
    listed = client.get(URL)
    assert listed.status_code == expected
    if expected == 200:
        (row,) = listed.json()["results"]
        assert row["email"] == "new@example.test"
        assert row["status"] == "pending"
        assert row["invited_by"] == "owner"
        assert "token" not in json.dumps(row)
    resent = client.post(f"{URL}{invitation.pk}/resend/")
    assert resent.status_code == expected
    assert len(mail.outbox) == (2 if expected == 200 else 1)
    revoked = client.delete(f"{URL}{invitation.pk}/")
    assert revoked.status_code == (204 if expected == 200 else expected)
    invitation.refresh_from_db()
    assert (invitation.revoked_at is not None) == (expected == 200)


def test_only_owners_invite_owners(as_admin, as_owner, org, owner):
    body = {"email": "a@example.test", "role": "owner"}
    assert as_admin.post(URL, body, format="json").status_code == 403
    assert as_owner.post(URL, body, format="json").status_code == 201
    owner_invitation = Invitation.objects.get(email="a@example.test")
    assert as_admin.post(f"{URL}{owner_invitation.pk}/resend/").status_code == 403
    assert as_admin.delete(f"{URL}{owner_invitation.pk}/").status_code == 403


def test_no_probing_the_answer_is_the_same_for_any_address(as_owner, org, owner, viewer):
    UserFactory(username="known", email="known@example.test")
    answers = []
    for email in ("stranger@example.test", "known@example.test", viewer.email):
        response = as_owner.post(URL, {"email": email, "role": "member"}, format="json")
        body = response.json()
        answers.append(
            (
                response.status_code,
                sorted(body),
                body["status"],
                body["role"],
                body["accepted_by"],
                body["accepted_at"],
            )
        )
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 201
    # Each address got the same e-mail, their own link aside.
    bodies = [LINK.sub("LINK", message.body) for message in mail.outbox]
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]


def test_the_email_carries_a_working_absolute_link(as_owner, org, owner, settings):
    settings.VLINDERS_CONSOLE_URL = "https://console.example.test"
    as_owner.post(URL, {"email": "new@example.test", "role": "admin"}, format="json")
    (message,) = mail.outbox
    assert message.to == ["new@example.test"]
    assert "Acme" in message.subject
    assert "https://console.example.test/invitations/vli_" in message.body
    token = _token_from_last_mail()
    invitation = Invitation.objects.get()
    assert invitation.token_hash == hash_key(token)
    assert token not in json.dumps(list(Invitation.objects.values()), default=str)
    joiner = UserFactory(username="joiner")
    membership = services.invitation_accept(token=token, user=joiner)
    assert (membership.organization, membership.role) == (org, Role.ADMIN)


def test_single_use(org, owner):
    _, token = _invite(org, owner)
    first, second = UserFactory(), UserFactory()
    services.invitation_accept(token=token, user=first)
    with pytest.raises(InvitationUnusable, match="already been used") as error:
        services.invitation_accept(token=token, user=second)
    assert error.value.status == 410
    assert not Membership.objects.filter(user=second).exists()
    invitation = Invitation.objects.get()
    assert invitation.status == Invitation.Status.ACCEPTED
    assert invitation.accepted_by == first


def test_expiry(org, owner, settings):
    settings.VLINDERS_INVITATION_TTL_DAYS = 2
    invitation, token = _invite(org, owner)
    assert timedelta(days=2) - (invitation.expires_at - timezone.now()) < timedelta(minutes=1)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvitationUnusable, match="expired") as error:
        services.invitation_accept(token=token, user=UserFactory())
    assert error.value.status == 410


def test_revoked_and_unknown_links(org, owner):
    invitation, token = _invite(org, owner)
    services.invitation_revoke(invitation=invitation, actor_role=Role.ADMIN, actor=owner)
    services.invitation_revoke(invitation=invitation, actor_role=Role.ADMIN, actor=owner)  # no-op
    assert AuditEvent.objects.filter(action="member.invitation_revoked").count() == 1
    with pytest.raises(InvitationUnusable, match="withdrawn"):
        services.invitation_accept(token=token, user=UserFactory())
    with pytest.raises(InvitationUnusable) as error:
        services.invitation_accept(token="vli_nope", user=UserFactory())
    assert error.value.status == 404


def test_resend_kills_the_old_link(org, owner):
    invitation, old_token = _invite(org, owner)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(days=1))  # even if expired
    renewed, new_token = services.invitation_resend(
        invitation=invitation, actor_role=Role.ADMIN, actor=owner
    )
    assert new_token != old_token
    assert renewed.status == Invitation.Status.PENDING
    assert _token_from_last_mail() == new_token
    with pytest.raises(InvitationUnusable) as error:
        services.invitation_accept(token=old_token, user=UserFactory())
    assert error.value.status == 404
    services.invitation_accept(token=new_token, user=UserFactory())
    with pytest.raises(ValidationError):
        services.invitation_resend(invitation=invitation, actor_role=Role.ADMIN, actor=owner)
    with pytest.raises(ValidationError):
        services.invitation_revoke(invitation=invitation, actor_role=Role.ADMIN, actor=owner)


def test_one_open_invitation_per_address_inviting_again_renews_it(org, owner):
    first, first_token = _invite(org, owner, email="Same@Example.test")
    second, _ = _invite(org, owner, email="same@example.test", role=Role.VIEWER)
    assert first.pk == second.pk
    assert Invitation.objects.count() == 1
    assert second.role == Role.VIEWER
    with pytest.raises(InvitationUnusable):
        services.invitation_accept(token=first_token, user=UserFactory())
    services.invitation_revoke(invitation=second, actor_role=Role.OWNER, actor=owner)
    third, _ = _invite(org, owner, email="same@example.test")
    assert third.pk != first.pk  # after a revocation a new invitation is opened


def test_a_member_accepting_keeps_their_role(org, owner, viewer):
    _, token = _invite(org, owner, email=viewer.email, role=Role.ADMIN)
    membership = services.invitation_accept(token=token, user=viewer)
    assert membership.role == Role.VIEWER
    joined = AuditEvent.objects.get(action="member.joined")
    assert joined.after["already_a_member"] is True


def test_the_link_is_the_proof_any_account_may_accept(org, owner):
    _, token = _invite(org, owner, email="someone@example.test")
    other = UserFactory(username="other", email="other@example.test")
    membership = services.invitation_accept(token=token, user=other)
    assert membership.user == other
    assert Invitation.objects.get().accepted_by == other


def test_a_suspended_organisations_link_does_not_work(org, owner):
    _, token = _invite(org, owner)
    services.organization_set_status(organization=org, status="suspended")
    with pytest.raises(InvitationUnusable, match="suspended"):
        services.invitation_accept(token=token, user=UserFactory())


def test_rules_in_the_services(org, owner):
    with pytest.raises(PermissionDenied):
        services.invitation_create(
            organization=org,
            email="x@example.test",
            role=Role.MEMBER,
            actor_role=Role.MEMBER,
            actor=owner,
        )
    with pytest.raises(ValidationError) as error:
        _invite(org, owner, email="not an address")
    assert "email" in error.value.message_dict


def test_bad_bodies_are_400s(as_owner, org, owner):
    for body in ({"email": "nope"}, {"email": "a@example.test", "role": "emperor"}, {}):
        response = as_owner.post(URL, body, format="json")
        assert response.status_code == 400
        assert set(response.json()) & {"email", "role"}


def test_other_organisations_invitations_are_not_reachable(as_owner, org, outsider):
    foreign_org = Membership.objects.get(user=outsider).organization
    foreign, _ = services.invitation_create(
        organization=foreign_org,
        email="x@example.test",
        role=Role.MEMBER,
        actor_role=Role.OWNER,
        actor=outsider,
    )
    assert as_owner.get(f"{URL}{foreign.pk}/").status_code == 404
    assert as_owner.post(f"{URL}{foreign.pk}/resend/").status_code == 404
    assert as_owner.delete(f"{URL}{foreign.pk}/").status_code == 404
    assert as_owner.get(URL).json()["count"] == 0


def test_every_step_is_audited_without_the_token(as_owner, org, owner):
    as_owner.post(URL, {"email": "new@example.test", "role": "member"}, format="json")
    invitation = Invitation.objects.get()
    as_owner.post(f"{URL}{invitation.pk}/resend/")
    token = _token_from_last_mail()
    joiner = UserFactory(username="joiner")
    services.invitation_accept(token=token, user=joiner)
    invited = AuditEvent.objects.get(action="member.invited")
    assert (invited.actor, invited.target_id) == (owner, str(invitation.pk))
    assert invited.after["email"] == "new@example.test"
    assert invited.after["role"] == "member"
    resent = AuditEvent.objects.get(action="member.invitation_resent")
    assert resent.before["expires_at"] != resent.after["expires_at"]
    joined = AuditEvent.objects.get(action="member.joined")
    assert (joined.actor, joined.organization) == (joiner, org)
    assert joined.after["role"] == "member"
    everything = json.dumps(list(AuditEvent.objects.values("before", "after")))
    assert token not in everything
    assert invitation.token_hash not in everything
    assert "token" not in everything
