"""The response cache's control-plane settings (docs/response-cache.md): the organisation's opt-in
through the management API (owner and admin only, audited, published in the access snapshot), the
catalog's TTL and hit price through the catalog API (audited, rendered into the gateway's routes
with the model's revision), and billing's validation of the usage event's ``cache`` field."""

import json
from decimal import Decimal

import pytest

from billing.events import InvalidEvent, parse_event
from inference.catalog_changes import audited_state
from inference.deployment import render_spec
from inference.models import CatalogModel
from inference.serving.spec import DeploymentSpec
from tenants import snapshot
from tenants.models import AuditEvent, Role
from tests.factories import CatalogModelFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_admin(org):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    user = MembershipFactory(
        organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
    ).user
    client = APIClient()
    client.force_login(user)
    return client


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
def test_owners_and_admins_opt_in(request, client_name, expected, org):  # type: ignore[no-untyped-def]
    client = request.getfixturevalue(client_name)
    response = client.patch("/api/v1/orgs/acme/", {"response_cache_enabled": True}, format="json")
    assert response.status_code == expected
    org.refresh_from_db()
    assert org.response_cache_enabled is (expected == 200)
    if expected == 200:
        assert response.json()["response_cache_enabled"] is True
        assert response.json()["name"] == org.name  # a PATCH of the flag keeps the name


def test_the_opt_in_is_read_by_members_and_audited(as_owner, as_viewer, org):  # type: ignore[no-untyped-def]
    assert as_viewer.get("/api/v1/orgs/acme/").json()["response_cache_enabled"] is False
    as_owner.patch("/api/v1/orgs/acme/", {"response_cache_enabled": True}, format="json")
    as_owner.patch("/api/v1/orgs/acme/", {"response_cache_enabled": False}, format="json")
    records = AuditEvent.objects.filter(organization=org, action="organization.updated")
    assert [(r.before, r.after) for r in records.order_by("created_at")] == [
        ({"response_cache_enabled": False}, {"response_cache_enabled": True}),
        ({"response_cache_enabled": True}, {"response_cache_enabled": False}),
    ]
    # A rename alone leaves the flag as it is.
    as_owner.patch("/api/v1/orgs/acme/", {"response_cache_enabled": True}, format="json")
    as_owner.patch("/api/v1/orgs/acme/", {"name": "Acme 2"}, format="json")
    org.refresh_from_db()
    assert org.response_cache_enabled is True


def test_a_non_boolean_opt_in_is_a_400(as_owner, org):  # type: ignore[no-untyped-def]
    response = as_owner.patch(
        "/api/v1/orgs/acme/", {"response_cache_enabled": "maybe"}, format="json"
    )
    assert response.status_code == 400
    assert "response_cache_enabled" in response.json()


@pytest.mark.redis
def test_the_opt_in_is_published_in_the_organisation_record(  # type: ignore[no-untyped-def]
    as_owner, org, redis_client, django_capture_on_commit_callbacks
):
    def record() -> dict:  # type: ignore[type-arg]
        return json.loads(redis_client.get(snapshot.org_record_name(org.id)))

    with django_capture_on_commit_callbacks(execute=True):
        snapshot.publish_organizations(type(org).objects.filter(pk=org.pk))
    assert record()["response_cache"] is False
    with django_capture_on_commit_callbacks(execute=True):
        as_owner.patch("/api/v1/orgs/acme/", {"response_cache_enabled": True}, format="json")
    assert record()["response_cache"] is True


def test_the_catalog_api_reads_and_writes_the_ttl_and_hit_price(as_staff) -> None:  # type: ignore[no-untyped-def]
    CatalogModelFactory(name="cached")
    url = "/api/v1/models/cached/"
    shown = as_staff.get(url).json()
    assert (shown["cache_ttl_s"], shown["price_cache_hit_per_mtok"]) == (0, "0.000000")
    changed = as_staff.patch(
        url, {"cache_ttl_s": 600, "price_cache_hit_per_mtok": "0.05"}, format="json"
    )
    assert changed.status_code == 200, changed.json()
    model = CatalogModel.objects.get(name="cached")
    assert (model.cache_ttl_s, model.price_cache_hit_per_mtok) == (600, Decimal("0.05"))
    # What the console's and the admin's audit records keep of a model holds both.
    state = audited_state(model)
    assert (state["cache_ttl_s"], state["price_cache_hit_per_mtok"]) == (600, "0.050000")
    assert as_staff.patch(url, {"cache_ttl_s": -1}, format="json").status_code == 400
    bad_price = as_staff.patch(url, {"price_cache_hit_per_mtok": "-1"}, format="json")
    assert bad_price.status_code == 400
    # Rendered into the gateway's route, with the model's revision.
    route = DeploymentSpec.model_validate(render_spec()).gateway_config().models[0]
    assert (route.cache_ttl_s, route.price_cache_hit_per_mtok) == (600, Decimal("0.05"))
    assert len(route.model_revision) == 16


def _event(**extra: object) -> dict[str, object]:
    return {
        "schema": 1,
        "request_id": "req_1",
        "org_id": "00000000-0000-0000-0000-000000000001",
        "key_id": "00000000-0000-0000-0000-000000000002",
        "model": "m",
        "served_model": "m",
        "endpoint": "chat.completions",
        "stream": False,
        "status": 200,
        "error_type": None,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 10,
        "cached_tokens": 0,
        "cost": "0.000002",
        "price_input_per_mtok": "0.100000",
        "price_output_per_mtok": "0.100000",
        "latency_ms": 1.0,
        "ttft_ms": None,
        "started_at": "2026-12-01T00:00:00+00:00",
        "http_request_id": None,
        **extra,
    }


def test_billing_reads_the_events_cache_field() -> None:
    assert parse_event(_event()).cache_hit is False  # an older gateway's event
    assert parse_event(_event(cache=None)).cache_hit is False
    assert parse_event(_event(cache="miss")).cache_hit is False
    assert parse_event(_event(cache="hit")).cache_hit is True
    with pytest.raises(InvalidEvent, match="cache"):
        parse_event(_event(cache="yes"))
    # A hit's cost is its tokens at its (hit) prices, like any event.
    with pytest.raises(InvalidEvent, match="cost"):
        parse_event(_event(cache="hit", cost="0.000001"))
