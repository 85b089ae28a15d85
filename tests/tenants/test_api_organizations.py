"""Organisations API: three actors (owner, read-only member, outsider) plus staff."""

import pytest

from tenants.models import Membership, Organization, Role

pytestmark = pytest.mark.django_db


def test_list_shows_only_the_callers_organisations(as_owner, as_outsider, as_staff, org, outsider):
    assert [o["slug"] for o in as_owner.get("/api/v1/orgs/").json()["results"]] == ["acme"]
    assert as_owner.get("/api/v1/orgs/").json()["results"][0]["role"] == "owner"
    outsider_slugs = [o["slug"] for o in as_outsider.get("/api/v1/orgs/").json()["results"]]
    assert "acme" not in outsider_slugs
    assert len(outsider_slugs) == 1
    staff_slugs = {o["slug"] for o in as_staff.get("/api/v1/orgs/").json()["results"]}
    assert {"acme", *outsider_slugs} <= staff_slugs


def test_anonymous_is_refused(anonymous, org):
    assert anonymous.get("/api/v1/orgs/").status_code in (401, 403)
    assert anonymous.get("/api/v1/orgs/acme/").status_code in (401, 403)


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 200), ("as_outsider", 404), ("as_staff", 200)],
)
def test_retrieve(request, client_name, expected, org):
    response = request.getfixturevalue(client_name).get("/api/v1/orgs/acme/")
    assert response.status_code == expected
    if expected == 200:
        assert response.json()["slug"] == "acme"


def test_unknown_organisation_is_404_like_a_foreign_one(as_owner, org):
    assert as_owner.get("/api/v1/orgs/nope/").status_code == 404


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_rename(request, client_name, expected, org):
    response = request.getfixturevalue(client_name).patch(
        "/api/v1/orgs/acme/", {"name": "Acme Corp"}, format="json"
    )
    assert response.status_code == expected
    org.refresh_from_db()
    assert (org.name == "Acme Corp") == (expected == 200)


def test_create_makes_the_caller_owner(as_outsider, outsider):
    response = as_outsider.post("/api/v1/orgs/", {"name": "New", "slug": "new-co"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["role"] == "owner"
    created = Organization.objects.get(slug="new-co")
    assert Membership.objects.get(organization=created, user=outsider).role == Role.OWNER


def test_create_validates_fields(as_owner, org):
    duplicate = as_owner.post("/api/v1/orgs/", {"name": "Dup", "slug": "acme"}, format="json")
    assert duplicate.status_code == 400
    assert "slug" in duplicate.json()
    bad_slug = as_owner.post("/api/v1/orgs/", {"name": "x", "slug": "not a slug!"}, format="json")
    assert bad_slug.status_code == 400
    assert "slug" in bad_slug.json()
    missing = as_owner.post("/api/v1/orgs/", {}, format="json")
    assert missing.status_code == 400
    assert set(missing.json()) == {"name", "slug"}


def test_a_slug_the_console_uses_for_a_page_is_refused(as_owner, org):
    """``/orgs/new/`` is the console's create page: an organisation named so could not be
    reached there."""
    response = as_owner.post("/api/v1/orgs/", {"name": "New", "slug": "new"}, format="json")
    assert response.status_code == 400
    assert "reserved" in str(response.json()["slug"])
    assert not Organization.objects.filter(slug="new").exists()


def test_malformed_json_is_400(as_owner, org):
    response = as_owner.post("/api/v1/orgs/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 403), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_suspend_is_for_staff(request, client_name, expected, org):
    response = request.getfixturevalue(client_name).post(
        "/api/v1/orgs/acme/status/", {"status": "suspended"}, format="json"
    )
    assert response.status_code == expected
    org.refresh_from_db()
    assert (org.status == "suspended") == (expected == 200)


def test_status_must_be_a_known_value(as_staff, org):
    response = as_staff.post("/api/v1/orgs/acme/status/", {"status": "gone"}, format="json")
    assert response.status_code == 400
    assert "status" in response.json()


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 200), ("as_outsider", 404), ("as_staff", 200)],
)
def test_read_limits(request, client_name, expected, org):
    org.requests_per_minute = 600
    org.save()
    response = request.getfixturevalue(client_name).get("/api/v1/orgs/acme/limits/")
    assert response.status_code == expected
    if expected == 200:
        assert response.json()["requests_per_minute"] == 600


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 403), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_set_limits_is_for_staff(request, client_name, expected, org):
    response = request.getfixturevalue(client_name).patch(
        "/api/v1/orgs/acme/limits/",
        {"tokens_per_minute": 100000, "monthly_spend_budget": "250.50"},
        format="json",
    )
    assert response.status_code == expected
    org.refresh_from_db()
    assert (org.tokens_per_minute == 100000) == (expected == 200)
    if expected == 200:
        assert response.json()["monthly_spend_budget"] == "250.5000"


@pytest.mark.parametrize(
    "body",
    [
        {"requests_per_minute": -1},
        {"requests_per_minute": "many"},
        {"monthly_spend_budget": "-5"},
        {"monthly_spend_budget": "1e400"},
    ],
)
def test_invalid_limits_are_400_with_the_field(as_staff, org, body):
    response = as_staff.patch("/api/v1/orgs/acme/limits/", body, format="json")
    assert response.status_code == 400
    assert set(response.json()) == set(body)


def test_limit_can_be_removed_with_null(as_staff, org):
    org.requests_per_minute = 10
    org.save()
    response = as_staff.patch(
        "/api/v1/orgs/acme/limits/", {"requests_per_minute": None}, format="json"
    )
    assert response.status_code == 200
    org.refresh_from_db()
    assert org.requests_per_minute is None


def test_huge_body_is_refused_without_a_500(as_owner, org):
    body = '{"name": "' + "x" * (2 * 1024 * 1024) + '"}'
    response = as_owner.patch("/api/v1/orgs/acme/", body, content_type="application/json")
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    org.refresh_from_db()
    assert org.name == "Acme"


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 403), ("as_viewer", 403), ("as_outsider", 404), ("as_staff", 200)],
)
def test_the_plan_is_set_by_staff(request, client_name, expected, org):
    response = request.getfixturevalue(client_name).post(
        "/api/v1/orgs/acme/plan/", {"plan": "premium"}, format="json"
    )
    assert response.status_code == expected
    org.refresh_from_db()
    assert (org.plan == "premium") == (expected == 200)
    if expected == 200:
        assert response.json()["plan"] == "premium"


def test_plan_must_be_a_known_value_and_is_read_only_elsewhere(as_staff, as_owner, org):
    response = as_staff.post("/api/v1/orgs/acme/plan/", {"plan": "gold"}, format="json")
    assert response.status_code == 400
    assert "plan" in response.json()
    as_owner.patch("/api/v1/orgs/acme/", {"plan": "premium"}, format="json")
    org.refresh_from_db()
    assert org.plan == "standard"
