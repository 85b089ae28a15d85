"""The console's one scoping mechanism (``console.scoping.org_page``), shown on every section of
the navigation: outsiders 404, too weak 403, anonymous to the sign-in page, the navigation
hiding what the role cannot open, and a Content Security Policy on every page."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

EVERYONE = {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
SHUT = {"outsider": 404, "anonymous": 302}


@pytest.mark.parametrize(
    "page", ["", "keys/", "usage/", "requests/", "models/", "limits/", "members/"]
)
def test_every_member_sees_the_organisations_pages(assert_matrix, page):
    assert_matrix(f"/orgs/acme/{page}", EVERYONE | SHUT)


def test_the_audit_log_is_for_admins(assert_matrix):
    assert_matrix(
        "/orgs/acme/audit/",
        {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "staff": 200} | SHUT,
    )


def test_the_playground_is_not_for_viewers(assert_matrix):
    assert_matrix(
        "/orgs/acme/playground/",
        {"owner": 200, "admin": 200, "member": 200, "viewer": 403, "staff": 200} | SHUT,
    )


def test_an_unknown_organisation_is_a_404_like_an_outsiders(role_client):
    assert role_client("owner").get("/orgs/nope/").status_code == 404


def test_the_navigation_hides_what_the_role_cannot_open(role_client):
    viewer = role_client("viewer").get("/orgs/acme/").content.decode()
    admin = role_client("admin").get("/orgs/acme/").content.decode()
    assert "/orgs/acme/audit/" not in viewer
    assert "/orgs/acme/playground/" not in viewer
    assert "/orgs/acme/audit/" in admin
    assert "/orgs/acme/playground/" in admin


def test_every_page_carries_a_content_security_policy_without_inline_script(role_client):
    response = role_client("owner").get("/orgs/acme/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.content.decode()
