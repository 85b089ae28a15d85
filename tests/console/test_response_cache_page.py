"""The response cache's opt-in in the tenant console (the models page, ``console.pages.overview``):
every member sees whether it is on; owners and admins switch it (a POST, audited like every
organisation setting, published to the gateway), weaker roles get 403 and outsiders 404."""

from __future__ import annotations

import pytest

from tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/models/response-cache/"
MODELS = "/orgs/acme/models/"


def test_only_owners_and_admins_switch_it(assert_matrix, org) -> None:  # type: ignore[no-untyped-def]
    assert_matrix(
        URL,
        {
            "owner": 302,
            "admin": 302,
            "member": 403,
            "viewer": 403,
            "outsider": 404,
            "staff": 302,
            "anonymous": 302,
        },
        method="post",
        data={"enabled": "on"},
    )
    # A GET does nothing: the switch is a POST.
    assert_matrix(
        URL,
        {
            "owner": 405,
            "admin": 405,
            "member": 405,
            "viewer": 405,
            "outsider": 404,
            "staff": 405,
            "anonymous": 302,
        },
    )


def test_the_models_page_shows_and_switches_it(role_client, org) -> None:  # type: ignore[no-untyped-def]
    owner, viewer = role_client("owner"), role_client("viewer")
    page = viewer.get(MODELS).content.decode()
    assert "The response cache is <strong>off</strong>" in page
    assert URL not in page  # a viewer sees no switch
    assert URL in owner.get(MODELS).content.decode()
    response = owner.post(URL, {"enabled": "on"}, follow=True)
    assert "The response cache is on." in response.content.decode()
    org.refresh_from_db()
    assert org.response_cache_enabled is True
    assert "The response cache is <strong>on</strong>" in viewer.get(MODELS).content.decode()
    owner.post(URL, {"enabled": "off"})
    org.refresh_from_db()
    assert org.response_cache_enabled is False
    records = AuditEvent.objects.filter(organization=org, action="organization.updated")
    assert [r.after for r in records.order_by("created_at")] == [
        {"response_cache_enabled": True},
        {"response_cache_enabled": False},
    ]
