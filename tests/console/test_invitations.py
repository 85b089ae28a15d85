"""The page an invitation e-mail links to, end to end with Django's test client: a new person
sets a password and joins; a signed-in user joins with one POST; unusable links answer 404 or
410 with a page that says why, never a 500."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants import services
from tenants.models import AuditEvent, Invitation, Membership, Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LINK = re.compile(r"http://testserver(/invitations/vli_[A-Za-z0-9_-]+/)")


@pytest.fixture
def link(as_owner, org, owner) -> str:  # type: ignore[no-untyped-def]
    """Invite through the API, as an admin would, and take the link from the e-mail."""
    response = as_owner.post(
        "/api/v1/orgs/acme/invitations/",
        {"email": "new@example.test", "role": "admin"},
        format="json",
    )
    assert response.status_code == 201
    match = LINK.search(mail.outbox[-1].body)
    assert match, mail.outbox[-1].body
    return match.group(1)


def test_a_new_person_sets_a_password_and_joins(link, org):
    client = Client(enforce_csrf_checks=True)
    page = client.get(link)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Join Acme as admin" in html
    assert 'name="csrfmiddlewaretoken"' in html
    csrf = client.cookies["csrftoken"].value
    password = "a long enough passphrase 42"
    response = client.post(
        link,
        {
            "username": "newbie",
            "password1": password,
            "password2": password,
            "csrfmiddlewaretoken": csrf,
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/orgs/acme/"
    membership = Membership.objects.get(user__username="newbie")
    assert (membership.organization, membership.role) == (org, Role.ADMIN)
    assert membership.user.email == "new@example.test"
    assert membership.user.check_password(password)
    assert AuditEvent.objects.get(action="member.joined").actor == membership.user
    # Signed in now (home leads to the one organisation), and the link is spent.
    home = client.get("/")
    assert (home.status_code, home["Location"]) == (302, "/orgs/acme/")
    spent = Client().get(link)
    assert spent.status_code == 410
    assert "already been used" in spent.content.decode()


def test_the_form_refuses_a_bad_password_and_creates_nothing(link):
    response = Client().post(link, {"username": "newbie", "password1": "x", "password2": "y"})
    assert response.status_code == 200
    assert response.context["form"].errors
    assert not Membership.objects.filter(user__username="newbie").exists()
    assert Invitation.objects.get().status == Invitation.Status.PENDING


def test_a_post_without_csrf_is_refused(link):
    client = Client(enforce_csrf_checks=True)
    response = client.post(link, {"username": "n", "password1": "p", "password2": "p"})
    assert response.status_code == 403


def test_a_signed_in_user_joins_with_one_post(link, org):
    someone = UserFactory(username="someone")
    client = Client()
    client.force_login(someone)
    page = client.get(link)
    assert page.status_code == 200
    assert "Join Acme as admin" in page.content.decode()
    assert page.context["form"] is None
    response = client.post(link)
    assert response.status_code == 302
    assert Membership.objects.get(organization=org, user=someone).role == Role.ADMIN
    assert Invitation.objects.get().accepted_by == someone


def test_an_existing_user_signs_in_and_comes_back(link, org):
    UserFactory(username="known")
    client = Client()
    page = client.get(link)
    assert f"/login/?next={link}" in page.content.decode().replace("%2F", "/")
    signed_in = client.post(
        f"/login/?next={link}",
        {"username": "known", "password": "correct horse battery staple", "next": link},
    )
    assert signed_in.status_code == 302
    assert signed_in["Location"] == link
    assert client.post(link).status_code == 302
    assert Membership.objects.filter(organization=org, user__username="known").exists()


@pytest.mark.parametrize(
    ("spoil", "status", "message"),
    [
        ("unknown", 404, "not valid"),
        ("revoked", 410, "withdrawn"),
        ("expired", 410, "expired"),
        ("resent", 404, "not valid"),
    ],
)
def test_unusable_links_say_why(link, owner, spoil, status, message):
    invitation = Invitation.objects.get()
    target = link
    if spoil == "unknown":
        target = "/invitations/vli_doesnotexist/"
    elif spoil == "revoked":
        services.invitation_revoke(invitation=invitation, actor_role=Role.OWNER, actor=owner)
    elif spoil == "expired":
        Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    else:
        services.invitation_resend(invitation=invitation, actor_role=Role.OWNER, actor=owner)
    for client in (Client(), _signed_in()):
        for response in (client.get(target), client.post(target)):
            assert response.status_code == status
            assert message in response.content.decode()
    assert not Membership.objects.filter(role=Role.ADMIN).exists()


def _signed_in() -> Client:
    client = Client()
    client.force_login(UserFactory())
    return client


def test_the_accept_page_uses_the_layout_with_labelled_fields(link):
    html = Client().get(link).content.decode()
    assert 'class="auth"' in html
    assert "<title>Join Acme · Vlinders</title>" in html
    for field, label in (
        ("username", "Username"),
        ("password1", "Password"),
        ("password2", "Password confirmation"),
    ):
        assert f'<label for="id_{field}">{label}</label>' in html
    assert ">Create my account and join</button>" in html
    assert "style=" not in html
    assert "<script>" not in html


def test_joining_says_with_which_role(link):
    client = Client()
    client.force_login(UserFactory(username="someone"))
    joined = client.post(link, follow=False)
    assert joined["Location"] == "/orgs/acme/"
    messages = [str(m) for m in joined.wsgi_request._messages]  # type: ignore[attr-defined]
    assert messages == ["You are a member of Acme as Admin."]


# --- the API's list, filtered by status with the console's selector ---------------------------


@pytest.fixture
def invitations_in_every_state(org, owner) -> None:  # type: ignore[no-untyped-def]
    def invite(email: str) -> tuple[Invitation, str]:
        return services.invitation_create(
            organization=org, email=email, role=Role.MEMBER, actor_role=Role.OWNER, actor=owner
        )

    invite("pending@example.test")
    expired, _ = invite("expired@example.test")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    revoked, _ = invite("revoked@example.test")
    services.invitation_revoke(invitation=revoked, actor_role=Role.OWNER, actor=owner)
    _, token = invite("accepted@example.test")
    services.invitation_accept(token=token, user=UserFactory(username="joiner"))


@pytest.mark.parametrize("status", ["pending", "expired", "revoked", "accepted"])
def test_the_api_filters_invitations_by_status(as_owner, invitations_in_every_state, status):
    response = as_owner.get(f"/api/v1/orgs/acme/invitations/?status={status}")
    assert response.status_code == 200
    body = response.json()
    assert [(row["email"], row["status"]) for row in body["results"]] == [
        (f"{status}@example.test", status)
    ]
    assert body["count"] == 1


def test_the_api_lists_every_invitation_without_a_filter(as_owner, invitations_in_every_state):
    response = as_owner.get("/api/v1/orgs/acme/invitations/")
    assert response.json()["count"] == 4


def test_the_api_refuses_an_unknown_status(as_owner, invitations_in_every_state):
    response = as_owner.get("/api/v1/orgs/acme/invitations/?status=bogus")
    assert response.status_code == 400
    assert "status" in response.content.decode()


def test_the_api_filter_keeps_the_role_rules(as_member, as_outsider, invitations_in_every_state):
    assert as_member.get("/api/v1/orgs/acme/invitations/?status=pending").status_code == 403
    assert as_outsider.get("/api/v1/orgs/acme/invitations/?status=pending").status_code == 404
