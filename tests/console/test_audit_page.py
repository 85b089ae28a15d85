"""The console's Audit log (``/orgs/<slug>/audit/``): for admins and owners, the records the
services wrote (actor, action, target, what changed, when), filtered by action, actor and dates,
paginated; the export is the API's ``audit.csv`` with the same filters, on the console's
session."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from html import unescape

import pytest
from django.utils import timezone

from console.pages import audit as page
from tenants import services
from tenants.models import AuditEvent, Membership, Role
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/audit/"
ADMINS = {"owner": 200, "admin": 200, "staff": 200, "member": 403, "viewer": 403}
SHUT = {"outsider": 404, "anonymous": 302}


def _actions(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [row["event"].action for row in response.context["rows"]]


@pytest.fixture
def history(org, owner, admin, member):  # type: ignore[no-untyped-def]
    """A key created by the owner and renamed by the admin, the member made a viewer, the
    organisation renamed; and a change in another organisation."""
    key, _secret = services.api_key_create(
        organization=org, name="build-bot", created_by=owner, actor_role=Role.OWNER
    )
    services.api_key_update(api_key=key, actor_role=Role.ADMIN, actor=admin, name="ci-bot")
    membership = Membership.objects.get(organization=org, user=member)
    services.membership_change_role(
        membership=membership, role=Role.VIEWER, actor_role=Role.OWNER, actor=owner
    )
    services.organization_update(organization=org, name="Acme Corp", actor=admin)
    other = OrganizationFactory(slug="other")
    services.organization_update(organization=other, name="Not yours", actor=owner)
    return key


def test_the_audit_log_is_for_admins_and_owners(assert_matrix, history):
    assert_matrix(URL, ADMINS | SHUT)
    assert_matrix(URL + "?action=api_key.created&actor=owner", ADMINS | SHUT)


def test_the_navigation_shows_it_to_admins_only(role_client):
    assert "/orgs/acme/audit/" in role_client("admin").get("/orgs/acme/usage/").content.decode()
    assert (
        "/orgs/acme/audit/" not in role_client("member").get("/orgs/acme/usage/").content.decode()
    )


def test_who_did_what_to_which_target_and_what_changed(role_client, history):
    response = role_client("admin").get(URL)
    assert response.status_code == 200
    assert _actions(response) == [
        "organization.updated",
        "member.role_changed",
        "api_key.updated",
        "api_key.created",
    ]
    html = response.content.decode()
    assert "Not yours" not in html  # another organisation's log
    rows = {row["event"].action: row for row in response.context["rows"]}
    renamed = rows["api_key.updated"]
    assert renamed["event"].actor_username == "admin"
    assert renamed["changes"] == [{"field": "name", "before": "build-bot", "after": "ci-bot"}]
    assert "build-bot → ci-bot" in unescape(html)
    role = rows["member.role_changed"]["changes"]
    assert role == [{"field": "role", "before": "member", "after": "viewer"}]
    # A created target: its fields, with no before; never a secret.
    created = {change["field"]: change for change in rows["api_key.created"]["changes"]}
    assert created["name"] == {"field": "name", "before": "", "after": "build-bot"}
    assert "secret_hash" not in created
    assert history.secret_hash not in html
    # The target as a person calls it: a key by its name then, a membership by its member.
    created_row = rows["api_key.created"]
    assert (created_row["type"], created_row["name"]) == ("API key", "build-bot")
    assert rows["member.role_changed"]["name"] == "member"
    assert "API key <strong>ci-bot</strong>" in html
    assert created["created_by"]["after"] == "owner"  # a user's id shown as the username


def test_filters_by_action_actor_and_dates(role_client, history):
    client = role_client("owner")
    assert _actions(client.get(URL, {"action": "api_key.updated"})) == ["api_key.updated"]
    assert _actions(client.get(URL, {"actor": "admin"})) == [
        "organization.updated",
        "api_key.updated",
    ]
    both = client.get(URL, {"actor": "owner", "action": "member.role_changed"})
    assert _actions(both) == ["member.role_changed"]
    assert "1 record match these filters" in both.content.decode()
    today = timezone.now().date()
    assert len(_actions(client.get(URL, {"from": today.isoformat()}))) == 4
    yesterday = (today - timedelta(days=1)).isoformat()
    assert _actions(client.get(URL, {"to": yesterday})) == []
    none = client.get(URL, {"actor": "nobody"})
    assert "No record matches these filters." in none.content.decode()


@pytest.mark.parametrize(
    "query",
    [{"action": "api_key.exploded"}, {"from": "2026-02-03", "to": "2026-02-01"}, {"from": "x"}],
)
def test_bad_filters_are_a_400_with_the_reason(role_client, query):
    response = role_client("admin").get(URL, query)
    assert response.status_code == 400
    assert response.context["form"].errors


def test_pages_of_the_log(role_client, org, owner, monkeypatch):
    monkeypatch.setattr(page, "PAGE_SIZE", 2)
    for i in range(5):
        services.organization_update(organization=org, name=f"Name {i}", actor=owner)
    client = role_client("owner")
    first = client.get(URL, {"action": "organization.updated"})
    assert [row["changes"][0]["after"] for row in first.context["rows"]] == ["Name 4", "Name 3"]
    assert "Page 1 of 3" in first.content.decode()
    older = re.search(r'<a href="\?([^"]+)" rel="next">', first.content.decode())
    assert older
    last = client.get(URL + "?" + unescape(older.group(1)).replace("page=2", "page=3"))
    assert [row["changes"][0]["after"] for row in last.context["rows"]] == ["Name 0"]
    assert client.get(URL, {"page": "99"}).status_code == 200  # the last page, not an error


def test_the_export_is_the_apis_csv_with_the_same_filters(role_client, history):
    admin = role_client("admin")
    response = admin.get(URL, {"actor": "admin", "to": timezone.now().date().isoformat()})
    link = unescape(re.search(r'id="audit-export" href="([^"]+)"', response.content.decode())[1])
    tomorrow = (timezone.now().date() + timedelta(days=1)).isoformat()
    assert link == f"/api/v1/orgs/acme/audit.csv?actor=admin&to={tomorrow}"

    export = admin.get(link)  # the console's session authenticates the API

    assert export.status_code == 200
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [row["action"] for row in rows] == _actions(response)
    # The export follows the API's rule: not for members.
    assert role_client("member").get(link).status_code == 403
    assert role_client("outsider").get(link).status_code == 404


def test_an_empty_log(role_client):
    response = role_client("owner").get(URL)
    assert response.status_code == 200
    assert "Nothing recorded yet." in response.content.decode()
    assert AuditEvent.objects.count() == 0


def test_htmx_gets_the_results_alone(role_client, history):
    response = role_client("admin").get(URL, {"action": "api_key.created"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="audit-results">')
    assert "<html" not in html
    assert _actions(response) == ["api_key.created"]
