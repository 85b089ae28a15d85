"""Signing in and out, the home page, creating an organisation, and resetting a password by
e-mail: each for every role, and what each changes."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from tenants.models import AuditEvent, Membership, Organization, Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # the factories' password
SIGNED_IN = ("owner", "admin", "member", "viewer", "outsider", "staff")
RESET_LINK = re.compile(r"https?://[^/\s]+(/password-reset/[^/\s]+/[^/\s]+/)")


# --- signing in and out ------------------------------------------------------------------------


def test_the_sign_in_page_uses_the_layout_and_links_to_password_reset():
    page = Client().get("/login/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="auth"' in html
    assert '<label for="id_username">Username</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert ">Sign in</button>" in html
    assert 'href="/password-reset/"' in html
    assert "Forgot your password?" in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert "<title>Sign in · Vlinders</title>" in html


def test_signing_in_leads_home_and_a_wrong_password_says_so(member):
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    csrf = client.cookies["csrftoken"].value
    wrong = client.post(
        "/login/", {"username": "member", "password": "nope", "csrfmiddlewaretoken": csrf}
    )
    assert wrong.status_code == 200
    assert "Please enter a correct username and password" in wrong.content.decode()
    assert "_auth_user_id" not in client.session
    right = client.post(
        "/login/", {"username": "member", "password": PASSWORD, "csrfmiddlewaretoken": csrf}
    )
    assert (right.status_code, right["Location"]) == (302, "/")
    assert client.session["_auth_user_id"] == str(member.pk)


def test_signing_out_is_a_post_and_ends_the_session(role_client):
    client = role_client("member")
    assert client.get("/logout/").status_code == 405
    out = client.post("/logout/")
    assert (out.status_code, out["Location"]) == (302, "/login/")
    assert client.get("/").status_code == 302
    assert client.get("/")["Location"].startswith("/login/")


def test_every_signed_in_page_offers_sign_out(role_client):
    html = role_client("staff").get("/").content.decode()
    assert 'action="/logout/"' in html
    assert ">Sign out</button>" in html


# --- home ----------------------------------------------------------------------------------------


def test_home_by_role(assert_matrix):
    # Everyone but staff is in exactly one organisation here: they go to its overview.
    assert_matrix(
        "/",
        {
            "owner": 302,
            "admin": 302,
            "member": 302,
            "viewer": 302,
            "outsider": 302,
            "staff": 200,
            "anonymous": 302,
        },
    )


def test_home_leads_someone_in_one_organisation_to_its_overview(role_client, outsider):
    assert role_client("viewer").get("/")["Location"] == "/orgs/acme/"
    theirs = Membership.objects.get(user=outsider).organization
    assert role_client("outsider").get("/")["Location"] == f"/orgs/{theirs.slug}/"
    assert role_client("anonymous").get("/")["Location"] == "/login/?next=/"


def test_home_lists_several_organisations_with_the_role_in_each(member):
    MembershipFactory(
        user=member, organization=OrganizationFactory(name="Zeta", slug="zeta"), role=Role.ADMIN
    )
    OrganizationFactory(name="Hidden", slug="hidden")
    client = Client()
    client.force_login(member)
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/orgs/acme/"' in html
    assert 'href="/orgs/zeta/"' in html
    assert "Hidden" not in html
    assert [(org.slug, role) for org, role in page.context["rows"]] == [
        ("acme", "Member"),
        ("zeta", "Admin"),
    ]
    assert 'href="/orgs/new/"' in html


def test_home_without_organisations_offers_to_create_one():
    client = Client()
    client.force_login(UserFactory(username="lonely"))
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "not a member of any organisation" in html
    assert 'href="/orgs/new/"' in html


def test_staff_see_every_organisation_and_the_platform_links(role_client, org, outsider):
    page = role_client("staff").get("/")
    slugs = [o.slug for o, _role in page.context["rows"]]
    assert slugs == sorted(Organization.objects.values_list("slug", flat=True))
    assert "/staff/usage/" in page.content.decode()


# --- creating an organisation --------------------------------------------------------------------

ANYONE_SIGNED_IN = dict.fromkeys(SIGNED_IN, 200) | {"anonymous": 302}


def test_the_create_page_by_role(assert_matrix):
    assert_matrix("/orgs/new/", ANYONE_SIGNED_IN)


def test_posting_the_create_form_by_role(assert_matrix):
    # Anyone signed in may create one (as with the API); an empty name is a form error for all.
    assert_matrix(
        "/orgs/new/",
        dict.fromkeys(SIGNED_IN, 400) | {"anonymous": 302},
        method="post",
        data={"name": "", "slug": "fresh"},
    )
    assert not Organization.objects.filter(slug="fresh").exists()


def test_creating_an_organisation_makes_you_its_owner(role_client, viewer):
    client = role_client("viewer")
    response = client.post("/orgs/new/", {"name": "Fresh Start", "slug": "fresh"})
    assert (response.status_code, response["Location"]) == (302, "/orgs/fresh/")
    org = Organization.objects.get(slug="fresh")
    assert org.name == "Fresh Start"
    assert Membership.objects.get(organization=org).user == viewer
    assert Membership.objects.get(organization=org).role == Role.OWNER
    event = AuditEvent.objects.get(organization=org, action="organization.created")
    assert event.actor == viewer
    # Two organisations now: home lists both instead of choosing one.
    assert client.get("/").status_code == 200


def test_a_taken_slug_is_shown_on_the_form(role_client, org):
    page = role_client("member").post("/orgs/new/", {"name": "Copycat", "slug": "acme"})
    assert page.status_code == 400
    form = page.context["form"]
    assert form.errors["slug"] == ["Organization with this Slug already exists."]
    assert "Organization with this Slug already exists." in page.content.decode()
    assert Organization.objects.filter(slug="acme").count() == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "Bad", "slug": "Not A Slug"}, "slug"),
        ({"name": "Bad", "slug": ""}, "slug"),
        ({"name": "x" * 201, "slug": "ok-slug"}, "name"),
    ],
)
def test_bad_input_is_a_form_error_next_to_the_field(role_client, data, field):
    page = role_client("member").post("/orgs/new/", data)
    assert page.status_code == 400
    assert field in page.context["form"].errors
    assert Organization.objects.count() == 2  # acme and the member's outsider fixture's own


# --- password reset ------------------------------------------------------------------------------


def _ask_for_reset(client: Client, email: str):  # type: ignore[no-untyped-def]
    return client.post("/password-reset/", {"email": email})


def test_the_reset_form_and_sent_page():
    page = Client().get("/password-reset/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="auth"' in html
    assert ">E-mail address</label>" in html
    assert Client().get("/password-reset/sent/").status_code == 200


def test_a_reset_link_sets_a_new_password_once(member):
    client = Client()
    asked = _ask_for_reset(client, "MEMBER@example.test")
    assert (asked.status_code, asked["Location"]) == (302, "/password-reset/sent/")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["member@example.test"]
    assert message.subject == "Reset your Vlinders password"
    link = RESET_LINK.search(message.body)
    assert link, message.body
    # Django swaps the token in the URL for one in the session, then asks for the password.
    opened = client.get(link.group(1))
    assert opened.status_code == 302
    form_url = opened["Location"]
    assert client.get(form_url).context["validlink"] is True
    new = "a brand new passphrase 77"
    done = client.post(form_url, {"new_password1": new, "new_password2": new})
    assert (done.status_code, done["Location"]) == (302, "/password-reset/done/")
    member.refresh_from_db()
    assert member.check_password(new)
    assert Client().post("/login/", {"username": "member", "password": new}).status_code == 302
    # The link is spent: the password it was made for changed.
    again = Client().get(link.group(1), follow=True)
    assert again.context["validlink"] is False
    assert "This link cannot be used" in again.content.decode()


def test_a_weak_new_password_is_refused_on_the_form(member):
    client = Client()
    _ask_for_reset(client, "member@example.test")
    link = RESET_LINK.search(mail.outbox[0].body)
    assert link
    form_url = client.get(link.group(1))["Location"]
    page = client.post(form_url, {"new_password1": "123", "new_password2": "123"})
    assert page.status_code == 200
    assert page.context["form"].errors["new_password2"]
    member.refresh_from_db()
    assert member.check_password(PASSWORD)


def test_asking_never_tells_whether_an_address_has_an_account(member):
    known = _ask_for_reset(Client(), "member@example.test")
    unknown = _ask_for_reset(Client(), "nobody@example.test")
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    assert [m.to for m in mail.outbox] == [["member@example.test"]]


def test_the_link_uses_the_console_url_when_set(member, settings):
    settings.VLINDERS_CONSOLE_URL = "https://console.example.test/"
    _ask_for_reset(Client(), "member@example.test")
    assert "https://console.example.test/password-reset/" in mail.outbox[0].body
