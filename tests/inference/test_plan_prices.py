"""The price book's per-plan model prices (docs/billing.md, "Price book"): rendered into the
deployment spec (contract 1) so the gateway charges them, applied in place (nothing restarts),
edited by staff inline on the catalog model's admin page, shown to each organisation at its own
plan's price, and the organisation's plan in its access-snapshot record (contract 2)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from inference.deployment import render_applications, render_spec
from inference.models import PlanModelPrice
from inference.serving.pricing import Prices
from inference.serving.spec import DeploymentSpec
from tenants import services as tenant_services
from tenants.catalog import available_models_for_organization
from tenants.snapshot import org_record_name
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def _override(model: Any, plan: str, price_in: str, price_out: str) -> PlanModelPrice:
    return PlanModelPrice.objects.create(
        plan=plan,
        catalog_model=model,
        price_input_per_mtok=Decimal(price_in),
        price_output_per_mtok=Decimal(price_out),
    )


def _spec_model(name: str) -> dict[str, Any]:
    return next(model for model in render_spec()["models"] if model["name"] == name)


def test_the_spec_carries_each_plans_prices_of_a_model() -> None:
    llama = CatalogModelFactory(name="llama", price_input_per_mtok=Decimal("0.6"))
    CatalogModelFactory(name="qwen")
    _override(llama, "premium", "0.5", "0.7")
    _override(llama, "free", "0.9", "1.2")
    rendered = _spec_model("llama")
    assert rendered["price_input_per_mtok"] == "0.600000"
    # Sorted by plan, decimal strings with 6 places, like the catalog's prices.
    assert list(rendered["plan_prices"]) == ["free", "premium"]
    assert rendered["plan_prices"]["premium"] == {
        "price_input_per_mtok": "0.500000",
        "price_output_per_mtok": "0.700000",
    }
    assert _spec_model("qwen")["plan_prices"] == {}


def test_the_gateways_route_charges_the_plans_price_else_the_catalogs() -> None:
    llama = CatalogModelFactory(
        name="llama", price_input_per_mtok=Decimal("0.6"), price_output_per_mtok=Decimal("0.8")
    )
    ModelAliasFactory(name="gpt-4", target=llama)
    _override(llama, "premium", "0.5", "0.7")
    routes = DeploymentSpec.model_validate(render_spec()).gateway_config().routes()
    for name in ("llama", "gpt-4"):  # an alias is charged its target's prices
        route = routes[name]
        assert route.prices_for("premium") == Prices(Decimal("0.5"), Decimal("0.7"))
        assert route.prices_for("standard") == Prices(Decimal("0.6"), Decimal("0.8"))
        assert route.prices_for("") == Prices(Decimal("0.6"), Decimal("0.8"))
    assert routes["llama"].prices_for("premium").cost(1000, 100) == Decimal("0.00057")


def test_a_price_override_changes_the_gateways_config_only() -> None:
    """A new revision to apply, in the gateway's user_config (applied in place by
    ``reconfigure``): no application's args change, so nothing restarts."""
    llama = CatalogModelFactory(name="llama")
    before_spec = render_spec()
    before = render_applications(before_spec)
    _override(llama, "premium", "0.5", "0.7")
    after_spec = render_spec()
    after = render_applications(after_spec)
    assert after_spec["revision"] != before_spec["revision"]
    assert [app["args"] for app in after] == [app["args"] for app in before]
    gateway = after[0]["deployments"][0]["user_config"]
    assert gateway["models"][0]["plan_prices"]["premium"]["price_input_per_mtok"] == "0.500000"


def test_a_spec_without_plan_prices_is_still_read() -> None:
    spec = render_spec()
    for model in spec["models"]:
        model.pop("plan_prices", None)
    DeploymentSpec.model_validate(spec)


# --- the admin --------------------------------------------------------------------------------


@pytest.fixture
def staff_admin() -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def _change_form(model: Any, rows: list[dict[str, str]], initial: int = 0) -> dict[str, str]:
    data = {
        "name": model.name,
        "description": "",
        "status": "active",
        "engine_kind": "synthetic",
        "source_path": "",
        "upstream_base_url": "",
        "upstream_model": "",
        "upstream_api_key": "",
        "engine_args": json.dumps(model.engine_args),
        "context_length": str(model.context_length),
        "price_input_per_mtok": str(model.price_input_per_mtok),
        "price_output_per_mtok": str(model.price_output_per_mtok),
        "min_replicas": "1",
        "max_replicas": "1",
        "target_ongoing_requests": "16",
        "replica_cpus": "1",
        "replica_gpus": "0",
        "accelerator_type": "",
        "request_router": "default",
        "visibility": "public",
        "cache_ttl_s": "0",  # the response cache (docs/response-cache.md): off
        "price_cache_hit_per_mtok": "0",
        "plan_prices-TOTAL_FORMS": str(len(rows)),
        "plan_prices-INITIAL_FORMS": str(initial),
        "scaling_windows-TOTAL_FORMS": "0",
        "scaling_windows-INITIAL_FORMS": "0",
    }
    for i, row in enumerate(rows):
        data |= {f"plan_prices-{i}-{field}": value for field, value in row.items()}
    return data


def test_staff_set_and_remove_a_plans_prices_inline(staff_admin) -> None:  # type: ignore[no-untyped-def]
    llama = CatalogModelFactory(name="llama")
    url = f"/admin/inference/catalogmodel/{llama.pk}/change/"
    page = staff_admin.get(url)
    assert page.status_code == 200
    assert b"plan_prices-TOTAL_FORMS" in page.content
    row = {"plan": "premium", "price_input_per_mtok": "0.5", "price_output_per_mtok": "0.7"}
    response = staff_admin.post(url, _change_form(llama, [row]), follow=True)
    assert response.status_code == 200
    assert "serve apply" in response.content.decode()  # staff are told how it takes effect
    saved = PlanModelPrice.objects.get(catalog_model=llama)
    assert (saved.plan, saved.price_input_per_mtok) == ("premium", Decimal("0.5"))
    assert _spec_model("llama")["plan_prices"]["premium"]["price_output_per_mtok"] == "0.700000"

    removal = _change_form(
        llama, [{**row, "id": str(saved.pk), "catalog_model": str(llama.pk), "DELETE": "on"}], 1
    )
    assert staff_admin.post(url, removal).status_code == 302
    assert not PlanModelPrice.objects.exists()
    assert _spec_model("llama")["plan_prices"] == {}


def test_a_plan_twice_or_a_negative_price_is_a_form_error(staff_admin) -> None:  # type: ignore[no-untyped-def]
    llama = CatalogModelFactory(name="llama")
    url = f"/admin/inference/catalogmodel/{llama.pk}/change/"
    row = {"plan": "premium", "price_input_per_mtok": "0.5", "price_output_per_mtok": "0.7"}
    twice = staff_admin.post(url, _change_form(llama, [row, row]))
    assert twice.status_code == 200  # the form again, with the error
    negative = staff_admin.post(url, _change_form(llama, [{**row, "price_input_per_mtok": "-1"}]))
    assert negative.status_code == 200
    assert not PlanModelPrice.objects.exists()


# --- what tenants see, and the access snapshot ---------------------------------------------------


def test_each_organisation_sees_the_price_it_is_charged() -> None:
    llama = CatalogModelFactory(name="llama", price_input_per_mtok=Decimal("0.6"))
    ModelAliasFactory(name="gpt-4", target=llama)
    _override(llama, "premium", "0.5", "0.7")
    premium = OrganizationFactory(slug="prem", plan="premium")
    standard = OrganizationFactory(slug="std", plan="standard")
    seen = {
        (org.slug, row.name): (row.price_input_per_mtok, row.price_output_per_mtok)
        for org in (premium, standard)
        for row in available_models_for_organization(org)
    }
    assert seen[("prem", "llama")] == seen[("prem", "gpt-4")] == (Decimal("0.5"), Decimal("0.7"))
    assert seen[("std", "llama")] == seen[("std", "gpt-4")] == (Decimal("0.6"), Decimal("1.5"))


def test_the_models_api_shows_the_organisations_own_price(as_owner, org) -> None:  # type: ignore[no-untyped-def]
    llama = CatalogModelFactory(name="llama", price_input_per_mtok=Decimal("0.6"))
    org.plan = "premium"
    org.save()
    _override(llama, "premium", "0.5", "0.7")
    rows = {row["name"]: row for row in as_owner.get(f"/api/v1/orgs/{org.slug}/models/").json()}
    assert rows["llama"]["price_input_per_mtok"] == "0.500000"
    assert rows["llama"]["price_output_per_mtok"] == "0.700000"


def test_the_snapshot_tells_the_gateway_the_organisations_plan(org, redis_client) -> None:  # type: ignore[no-untyped-def]
    from tenants.models import Organization
    from tenants.snapshot import publish_organizations

    publish_organizations(Organization.objects.filter(pk=org.pk))
    assert json.loads(redis_client.get(org_record_name(org.id)))["plan"] == org.plan
    tenant_services.organization_set_plan(organization=org, plan="premium")
    publish_organizations(Organization.objects.filter(pk=org.pk))
    assert json.loads(redis_client.get(org_record_name(org.id)))["plan"] == "premium"


# --- the management API --------------------------------------------------------------------------

MODELS = "/api/v1/models/"


def _body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "api-llama",
        "engine_kind": "synthetic",
        "context_length": 4096,
        "price_input_per_mtok": "0.6",
        "price_output_per_mtok": "0.8",
        **overrides,
    }


def test_staff_set_replace_and_clear_plan_prices_through_the_api(as_staff) -> None:  # type: ignore[no-untyped-def]
    premium = {"plan": "premium", "price_input_per_mtok": "0.5", "price_output_per_mtok": "0.7"}
    created = as_staff.post(MODELS, _body(plan_prices=[premium]), format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["plan_prices"] == [
        {"plan": "premium", "price_input_per_mtok": "0.500000", "price_output_per_mtok": "0.700000"}
    ]
    url = f"{MODELS}api-llama/"
    free = {"plan": "free", "price_input_per_mtok": "0.9", "price_output_per_mtok": "1.2"}
    replaced = as_staff.patch(url, {"plan_prices": [free]}, format="json")
    assert replaced.status_code == 200, replaced.json()
    assert [row["plan"] for row in replaced.json()["plan_prices"]] == ["free"]
    assert set(PlanModelPrice.objects.values_list("plan", flat=True)) == {"free"}
    assert _spec_model("api-llama")["plan_prices"]["free"]["price_input_per_mtok"] == "0.900000"
    # A write without plan_prices keeps them; an empty list clears them.
    assert as_staff.patch(url, {"description": "x"}, format="json").json()["plan_prices"]
    assert as_staff.patch(url, {"plan_prices": []}, format="json").json()["plan_prices"] == []
    assert not PlanModelPrice.objects.exists()


def _row(plan: str, price_in: Any, price_out: Any = "1") -> dict[str, Any]:
    return {"plan": plan, "price_input_per_mtok": price_in, "price_output_per_mtok": price_out}


@pytest.mark.parametrize(
    ("rows", "status"),
    [
        ([_row("gold", "1")], 400),
        ([_row("free", "-1")], 400),
        ([_row("free", "0.1234567")], 400),
        ([_row("free", "1"), _row("free", "2")], 400),
        ([_row("free", 1.5)], 400),
        ("premium", 400),
    ],
)
def test_bad_plan_prices_are_a_400_naming_the_field(as_staff, rows, status) -> None:  # type: ignore[no-untyped-def]
    response = as_staff.post(MODELS, _body(plan_prices=rows), format="json")
    assert response.status_code == status
    assert "plan_prices" in json.dumps(response.json())
    assert not PlanModelPrice.objects.exists()


def test_only_staff_edit_plan_prices(as_owner) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="llama")
    row = {"plan": "premium", "price_input_per_mtok": "0", "price_output_per_mtok": "0"}
    response = as_owner.patch(f"{MODELS}{model.name}/", {"plan_prices": [row]}, format="json")
    assert response.status_code == 403
    assert not PlanModelPrice.objects.exists()
