"""The members page: the list for everyone in the organisation, and for owners and admins the
controls to change roles, remove members, invite, resend and revoke, each through the API's
services with the API's rules, for every role."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants import services
from tenants.models import AuditEvent, Invitation, Membership, Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

MEMBERS = "/orgs/acme/members/"
INVITE = "/orgs/acme/members/invite/"
# Owners, admins and staff (who act as owners) manage; members and viewers may not.
MANAGERS = {"owner": 302, "admin": 302, "staff": 302}
REFUSED = {"member": 403, "viewer": 403, "outsider": 404, "anonymous": 302}
# Invitations made through a page link to the request's host; those made in a test have no host.
LINK = re.compile(r"(?:http://testserver)?(/invitations/vli_[A-Za-z0-9_-]+/)")


def _membership(user) -> Membership:  # type: ignore[no-untyped-def]
    return Membership.objects.get(organization__slug="acme", user=user)


def _invite(org, owner, email: str = "new@example.test", role: str = Role.MEMBER) -> Invitation:  # type: ignore[no-untyped-def]
    invitation, _token = services.invitation_create(
        organization=org, email=email, role=role, actor_role=Role.OWNER, actor=owner
    )
    return invitation


def _shown(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- the list --------------------------------------------------------------------------------


def test_the_members_page_by_role(assert_matrix):
    assert_matrix(
        MEMBERS,
        {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
        | {"outsider": 404, "anonymous": 302},
    )


def test_everyone_sees_who_is_in_it_with_role_and_date(role_client, member):
    page = role_client("viewer").get(MEMBERS)
    html = page.content.decode()
    for name in ("owner", "admin", "member", "viewer"):
        assert f'<th scope="row">{name}' in html
        assert f"{name}@example.test" in html
    assert _membership(member).created_at.strftime("%Y-%m-%d") in html
    assert 'aria-current="page">Members</a>' in html
    assert "<title>Members · Vlinders</title>" in html


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_get_no_controls(role_client, org, owner, role):
    _invite(org, owner)
    html = role_client(role).get(MEMBERS).content.decode()
    assert "Change role" not in html
    assert ">Remove</button>" not in html
    assert "Send invitation" not in html
    assert "new@example.test" not in html  # invitations are for admins
    assert 'id="invitations"' not in html


def test_admins_get_controls_but_not_on_owners_nor_the_owner_role(role_client, owner, member):
    page = role_client("admin").get(MEMBERS)
    html = page.content.decode()
    assert f'action="/orgs/acme/members/{_membership(member).pk}/role/"' in html
    assert f'action="/orgs/acme/members/{_membership(owner).pk}/role/"' not in html
    assert f'action="/orgs/acme/members/{_membership(owner).pk}/remove/"' not in html
    assert "Only an owner changes an owner" in html
    assert '<option value="owner"' not in html
    assert "Send invitation" in html
    assert 'id="invitations"' in html


def test_owners_get_every_control(role_client, owner):
    html = role_client("owner").get(MEMBERS).content.decode()
    assert f'action="/orgs/acme/members/{_membership(owner).pk}/role/"' in html
    assert '<option value="owner"' in html
    assert 'data-confirm="Remove member from Acme?"' in html


def test_the_page_has_no_inline_script_or_style(role_client, org, owner):
    _invite(org, owner)
    response = role_client("owner").get(MEMBERS)
    html = response.content.decode()
    assert "<script>" not in html
    assert "style=" not in html
    assert " onclick" not in html
    assert "unsafe-inline" not in response["Content-Security-Policy"]


def test_the_members_list_is_paginated(role_client, org):
    for n in range(55):
        MembershipFactory(organization=org, user=UserFactory(username=f"extra{n:02}"))
    client = role_client("viewer")
    first = client.get(MEMBERS)
    assert len(first.context["rows"]) == 50
    second = client.get(MEMBERS + "?page=2")
    assert len(second.context["rows"]) == 59 - 50
    assert client.get(MEMBERS + "?page=nope").status_code == 200


# --- changing roles --------------------------------------------------------------------------


def test_posting_a_role_change_by_role(assert_matrix, member):
    # A no-op change (member stays member), so every role can try it in turn.
    url = f"/orgs/acme/members/{_membership(member).pk}/role/"
    assert_matrix(url, MANAGERS | REFUSED, method="post", data={"role": "member"})
    assert _membership(member).role == Role.MEMBER


def test_the_role_urls_take_only_posts(role_client, member):
    url = f"/orgs/acme/members/{_membership(member).pk}/role/"
    assert role_client("admin").get(url).status_code == 405
    assert role_client("member").get(url).status_code == 403


def test_an_admin_changes_a_role_and_the_service_records_it(role_client, admin, member):
    membership = _membership(member)
    response = role_client("admin").post(
        f"/orgs/acme/members/{membership.pk}/role/", {"role": "viewer"}
    )
    assert (response.status_code, response["Location"]) == (302, MEMBERS)
    assert _shown(response) == ["member is now Viewer."]
    assert _membership(member).role == Role.VIEWER
    event = AuditEvent.objects.get(action="member.role_changed")
    assert event.actor == admin
    assert (event.before["role"], event.after["role"]) == ("member", "viewer")


def test_an_admin_may_not_grant_the_owner_role(role_client, member):
    response = role_client("admin").post(
        f"/orgs/acme/members/{_membership(member).pk}/role/", {"role": "owner"}
    )
    assert response.status_code == 403
    assert "Only owners grant or take the owner role." in response.content.decode()
    assert _membership(member).role == Role.MEMBER


def test_an_admin_may_not_demote_an_owner(role_client, owner):
    response = role_client("admin").post(
        f"/orgs/acme/members/{_membership(owner).pk}/role/", {"role": "viewer"}
    )
    assert response.status_code == 403
    assert _membership(owner).role == Role.OWNER


def test_the_last_owner_cannot_step_down(role_client, owner):
    response = role_client("owner").post(
        f"/orgs/acme/members/{_membership(owner).pk}/role/", {"role": "admin"}
    )
    assert response.status_code == 400
    assert "An organisation keeps at least one owner." in response.content.decode()
    assert _membership(owner).role == Role.OWNER


def test_an_unknown_role_is_a_clear_error(role_client, member):
    response = role_client("owner").post(
        f"/orgs/acme/members/{_membership(member).pk}/role/", {"role": "emperor"}
    )
    assert response.status_code == 400
    assert "Choose one of the roles." in response.content.decode()


def test_a_member_of_another_organisation_is_not_found(role_client, outsider):
    elsewhere = Membership.objects.get(user=outsider)
    for action in ("role", "remove"):
        response = role_client("owner").post(
            f"/orgs/acme/members/{elsewhere.pk}/{action}/", {"role": "viewer"}
        )
        assert response.status_code == 404
    assert Membership.objects.get(user=outsider).role == Role.OWNER


# --- removing members --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("owner", 302),
        ("admin", 302),
        ("member", 403),
        ("viewer", 403),
        ("outsider", 404),
        ("staff", 302),
        ("anonymous", 302),
    ],
)
def test_removing_a_member_by_role(role_client, org, role, status):
    target = MembershipFactory(organization=org, user=UserFactory(username="leaving"))
    response = role_client(role).post(f"/orgs/acme/members/{target.pk}/remove/")
    assert response.status_code == status
    removed = not Membership.objects.filter(pk=target.pk).exists()
    assert removed == (role in ("owner", "admin", "staff"))
    if role == "anonymous":
        assert response["Location"].startswith("/login/")


def test_removing_is_recorded_by_the_service(role_client, owner, member):
    membership = _membership(member)
    response = role_client("owner").post(f"/orgs/acme/members/{membership.pk}/remove/")
    assert response["Location"] == MEMBERS
    assert _shown(response) == ["member was removed from Acme."]
    event = AuditEvent.objects.get(action="member.removed")
    assert (event.actor, event.before["role"]) == (owner, "member")


def test_an_admin_may_not_remove_an_owner(role_client, owner):
    response = role_client("admin").post(f"/orgs/acme/members/{_membership(owner).pk}/remove/")
    assert response.status_code == 403
    assert Membership.objects.filter(user=owner).exists()


def test_the_last_owner_cannot_be_removed(role_client, owner):
    response = role_client("staff").post(f"/orgs/acme/members/{_membership(owner).pk}/remove/")
    assert response.status_code == 400
    assert "An organisation keeps at least one owner." in response.content.decode()


def test_an_admin_who_removes_themselves_goes_home(role_client, admin):
    response = role_client("admin").post(f"/orgs/acme/members/{_membership(admin).pk}/remove/")
    assert response["Location"] == "/"
    assert not Membership.objects.filter(user=admin).exists()


# --- inviting ------------------------------------------------------------------------------------


def test_posting_an_invitation_by_role(assert_matrix):
    # Inviting the same address again renews the open invitation: every manager can in turn.
    assert_matrix(
        INVITE,
        MANAGERS | REFUSED,
        method="post",
        data={"email": "new@example.test", "role": "viewer"},
    )
    assert Invitation.objects.get().email == "new@example.test"
    assert len(mail.outbox) == 3


def test_the_invite_form_labels(role_client):
    html = role_client("admin").get(MEMBERS).content.decode()
    assert '<label for="id_email">E-mail address</label>' in html
    assert '<label for="id_role">Role</label>' in html
    assert '<option value="member" selected>Member</option>' in html
    assert ">Send invitation</button>" in html


def test_an_admin_invites_and_the_link_lets_a_new_person_join(role_client, org, admin):
    response = role_client("admin").post(INVITE, {"email": "New@Example.test", "role": "viewer"})
    assert (response.status_code, response["Location"]) == (302, MEMBERS + "#invitations")
    assert _shown(response) == ["Invitation sent to new@example.test as Viewer."]
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by) == (
        "new@example.test",
        Role.VIEWER,
        admin,
    )
    event = AuditEvent.objects.get(action="member.invited")
    assert event.actor == admin
    assert event.after["email"] == "new@example.test"
    assert mail.outbox[0].to == ["new@example.test"]
    link = LINK.search(mail.outbox[0].body)
    assert link, mail.outbox[0].body
    password = "a long enough passphrase 42"
    joined = Client().post(
        link.group(1), {"username": "newbie", "password1": password, "password2": password}
    )
    assert joined.status_code == 302
    assert Membership.objects.get(organization=org, user__username="newbie").role == Role.VIEWER


def test_the_page_lists_the_new_invitation(role_client):
    client = role_client("admin")
    client.post(INVITE, {"email": "new@example.test", "role": "member"})
    page = client.get(MEMBERS)
    html = page.content.decode()
    assert '<th scope="row">new@example.test</th>' in html
    assert "Pending" in html
    assert "Invitation sent to new@example.test as Member." in html  # the message, once


def test_inviting_never_tells_whether_the_address_has_an_account(role_client, member):
    UserFactory(username="known", email="known@example.test")
    answers = []
    for email in ("known@example.test", "unknown@example.test", "member@example.test"):
        response = role_client("admin").post(INVITE, {"email": email, "role": "member"})
        message = [m.replace(email, "ADDRESS") for m in _shown(response)]
        answers.append((response.status_code, response["Location"], message))
    assert answers[0] == answers[1] == answers[2]
    bodies = {LINK.sub("LINK", m.body).replace(m.to[0], "ADDRESS") for m in mail.outbox}
    assert len(bodies) == 1


def test_an_admin_may_not_invite_an_owner(role_client):
    response = role_client("admin").post(INVITE, {"email": "boss@example.test", "role": "owner"})
    assert response.status_code == 403
    assert "Only owners grant or take the owner role." in response.content.decode()
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_an_owner_may_invite_an_owner(role_client):
    response = role_client("owner").post(INVITE, {"email": "boss@example.test", "role": "owner"})
    assert response.status_code == 302
    assert Invitation.objects.get().role == Role.OWNER


@pytest.mark.parametrize(
    "data", [{"email": "not an address", "role": "member"}, {"email": "", "role": "member"}]
)
def test_a_bad_address_is_shown_next_to_the_field(role_client, data):
    response = role_client("admin").post(INVITE, data)
    assert response.status_code == 400
    assert response.context["invite_form"].errors["email"]
    assert 'aria-invalid="true"' in response.content.decode()
    assert not Invitation.objects.exists()


def test_a_mail_server_failure_is_shown_not_a_500(role_client, settings, monkeypatch):
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("no mail server")

    monkeypatch.setattr("tenants.invitations.send_mail", refuse)
    response = role_client("admin").post(INVITE, {"email": "new@example.test", "role": "member"})
    assert response.status_code == 503
    assert "could not be sent" in response.content.decode()
    assert not Invitation.objects.exists()


# --- the invitations list ----------------------------------------------------------------------


@pytest.fixture
def four_invitations(org, owner, member) -> dict[str, Invitation]:  # type: ignore[no-untyped-def]
    pending = _invite(org, owner, "pending@example.test")
    expired = _invite(org, owner, "expired@example.test")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    revoked = _invite(org, owner, "revoked@example.test")
    services.invitation_revoke(invitation=revoked, actor_role=Role.OWNER, actor=owner)
    accepted, token = services.invitation_create(
        organization=org,
        email="accepted@example.test",
        role=Role.VIEWER,
        actor_role=Role.OWNER,
        actor=owner,
    )
    services.invitation_accept(token=token, user=UserFactory(username="joiner"))
    return {"pending": pending, "expired": expired, "revoked": revoked, "accepted": accepted}


@pytest.mark.parametrize("status", ["pending", "expired", "revoked", "accepted"])
def test_the_invitations_filter_by_status(role_client, four_invitations, status):
    page = role_client("admin").get(MEMBERS + f"?status={status}")
    assert page.status_code == 200
    shown = [row.invitation.email for row in page.context["invitation_rows"]]
    assert shown == [f"{status}@example.test"]
    assert [row.status for row in page.context["invitation_rows"]] == [status]


def test_all_invitations_are_listed_without_a_filter(role_client, four_invitations):
    page = role_client("admin").get(MEMBERS)
    assert len(page.context["invitation_rows"]) == 4
    html = page.content.decode()
    # Open ones can be resent and revoked (with a confirmation); closed ones cannot.
    for name in ("pending", "expired"):
        pk = four_invitations[name].pk
        assert f'action="/orgs/acme/invitations/{pk}/resend/"' in html
        assert f'action="/orgs/acme/invitations/{pk}/revoke/"' in html
        assert f'data-confirm="Revoke the invitation to {name}@example.test?' in html
    for name in ("revoked", "accepted"):
        assert f"/invitations/{four_invitations[name].pk}/" not in html
    assert "joiner" in html  # who accepted


def test_an_unknown_status_is_a_form_error(role_client, four_invitations):
    page = role_client("admin").get(MEMBERS + "?status=bogus")
    assert page.status_code == 400
    assert "Select a valid choice" in page.content.decode()


def test_the_filter_answers_htmx_with_the_invitations_section_only(role_client, four_invitations):
    page = role_client("admin").get(
        MEMBERS + "?status=pending", headers={"HX-Request": "true", "HX-Target": "invitations"}
    )
    html = page.content.decode()
    assert html.lstrip().startswith('<section id="invitations"')
    assert "<html" not in html
    assert "pending@example.test" in html
    assert "expired@example.test" not in html


def test_the_filter_form_works_without_javascript(role_client):
    html = role_client("admin").get(MEMBERS).content.decode()
    assert 'method="get" action="/orgs/acme/members/#invitations"' in html
    assert 'hx-get="/orgs/acme/members/"' in html
    assert 'hx-push-url="true"' in html


def test_the_invitations_list_is_paginated(role_client, org, owner):
    for n in range(30):
        _invite(org, owner, f"person{n}@example.test")
    client = role_client("admin")
    assert len(client.get(MEMBERS).context["invitation_rows"]) == 25
    second = client.get(MEMBERS + "?invitations_page=2")
    assert len(second.context["invitation_rows"]) == 5


# --- resending and revoking ------------------------------------------------------------------


def test_resending_by_role(assert_matrix, org, owner):
    invitation = _invite(org, owner)
    url = f"/orgs/acme/invitations/{invitation.pk}/resend/"
    assert_matrix(url, MANAGERS | REFUSED, method="post")
    assert len(mail.outbox) == 1 + 3


def test_revoking_by_role(assert_matrix, org, owner):
    # Revoking a revoked invitation is a no-op: every manager can in turn.
    invitation = _invite(org, owner)
    url = f"/orgs/acme/invitations/{invitation.pk}/revoke/"
    assert_matrix(url, MANAGERS | REFUSED, method="post")
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.REVOKED


def test_resending_sends_a_new_link_and_kills_the_old(role_client, org, owner, admin):
    invitation = _invite(org, owner)
    old = LINK.search(mail.outbox[0].body)
    assert old
    response = role_client("admin").post(f"/orgs/acme/invitations/{invitation.pk}/resend/")
    assert (response.status_code, response["Location"]) == (302, MEMBERS + "#invitations")
    assert _shown(response) == ["A new link was sent to new@example.test."]
    new = LINK.search(mail.outbox[1].body)
    assert new
    assert new.group(1) != old.group(1)
    assert Client().get(old.group(1)).status_code == 404
    assert Client().get(new.group(1)).status_code == 200
    assert AuditEvent.objects.get(action="member.invitation_resent").actor == admin


def test_revoking_kills_the_link_and_is_recorded(role_client, org, owner, admin):
    invitation = _invite(org, owner)
    link = LINK.search(mail.outbox[0].body)
    assert link
    response = role_client("admin").post(f"/orgs/acme/invitations/{invitation.pk}/revoke/")
    assert _shown(response) == ["The invitation to new@example.test was revoked."]
    assert Client().get(link.group(1)).status_code == 410
    event = AuditEvent.objects.get(action="member.invitation_revoked")
    assert event.actor == admin


def test_a_closed_invitation_cannot_be_resent_nor_an_accepted_one_revoked(
    role_client, four_invitations
):
    client = role_client("owner")
    resend = client.post(f"/orgs/acme/invitations/{four_invitations['revoked'].pk}/resend/")
    assert resend.status_code == 400
    assert "This invitation is revoked: invite again." in resend.content.decode()
    revoke = client.post(f"/orgs/acme/invitations/{four_invitations['accepted'].pk}/revoke/")
    assert revoke.status_code == 400
    assert "This invitation was accepted: remove the member." in revoke.content.decode()


def test_an_admin_may_not_manage_an_owners_invitation(role_client, org, owner):
    invitation = _invite(org, owner, "boss@example.test", Role.OWNER)
    client = role_client("admin")
    assert "Only an owner manages an owner" in client.get(MEMBERS).content.decode()
    for action in ("resend", "revoke"):
        response = client.post(f"/orgs/acme/invitations/{invitation.pk}/{action}/")
        assert response.status_code == 403
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING


def test_another_organisations_invitation_is_not_found(role_client, outsider):
    theirs = Membership.objects.get(user=outsider).organization
    invitation = _invite(theirs, outsider)
    for action in ("resend", "revoke"):
        response = role_client("owner").post(f"/orgs/acme/invitations/{invitation.pk}/{action}/")
        assert response.status_code == 404
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING


def test_the_switcher_lists_the_organisations_and_offers_a_new_one(role_client, member):
    MembershipFactory(user=member, organization=OrganizationFactory(name="Zeta", slug="zeta"))
    html = role_client("member").get(MEMBERS).content.decode()
    assert 'href="/orgs/zeta/"' in html
    assert 'href="/orgs/new/">+ New organisation</a>' in html
