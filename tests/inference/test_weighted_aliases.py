"""Weighted aliases in the control plane: the services' rules, the audited path, the access rule
(an alias never widens access), the renderer (weighted aliases travel in the gateway's
``user_config``, in place) and the management API (staff only, 400 never 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from inference import catalog_changes, services
from inference.deployment import render_applications, render_spec
from inference.models import CatalogModel, ModelAlias, ModelAliasSplit, Visibility
from inference.selectors import (
    available_models_for_organization,
    model_names_for_organization,
)
from inference.serving.spec import DeploymentSpec
from tenants.models import AuditEvent
from tenants.snapshot import org_record_name
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

ALIASES = "/api/v1/aliases/"


@pytest.fixture
def stable() -> CatalogModel:
    return CatalogModelFactory(name="chat-v1", description="the stable one")


@pytest.fixture
def canary() -> CatalogModel:
    return CatalogModelFactory(name="chat-v2", description="the canary")


def _splits(alias: ModelAlias) -> dict[str, int]:
    return {row.catalog_model.name: row.weight for row in alias.splits.all()}


# --- services ----------------------------------------------------------------------------------


def test_create_a_canary_and_reweight_it(stable, canary) -> None:
    alias = services.model_alias_create(
        name="chat", target=stable, weight=90, splits=[(canary, 10)]
    )
    assert (alias.weight, _splits(alias)) == (90, {"chat-v2": 10})
    services.model_alias_splits_set(alias=alias, weight=100, splits=[(canary, 0)])
    alias.refresh_from_db()
    assert (alias.weight, _splits(alias)) == (100, {"chat-v2": 0})
    # Empty splits: a plain alias again.
    services.model_alias_splits_set(alias=alias, splits=[])
    assert not ModelAliasSplit.objects.exists()


@pytest.mark.parametrize(
    ("weight", "splits", "field", "message"),
    [
        (100, lambda s, c: [(c, 10), (c, 5)], "splits", "listed twice"),
        (100, lambda s, c: [(s, 10)], "splits", "primary target already"),
        (100, lambda s, c: [(c, 10001)], "splits", "from 0 to 10000"),
        (100, lambda s, c: [(c, -1)], "splits", "from 0 to 10000"),
        (0, lambda s, c: [(c, 0)], "weight", "add up to 0"),
        (10001, lambda s, c: [(c, 1)], "weight", ""),
    ],
)
def test_bad_splits_are_refused_and_nothing_is_written(
    stable, canary, weight, splits, field, message
) -> None:
    with pytest.raises(ValidationError) as refused:
        services.model_alias_create(
            name="chat", target=stable, weight=weight, splits=splits(stable, canary)
        )
    assert message in " ".join(refused.value.message_dict[field])
    assert not ModelAlias.objects.exists()
    assert not ModelAliasSplit.objects.exists()


def test_an_update_is_checked_against_the_stored_splits(stable, canary) -> None:
    alias = services.model_alias_create(
        name="chat", target=stable, weight=90, splits=[(canary, 10)]
    )
    # Repointing the primary target at the canary would list it twice.
    with pytest.raises(ValidationError, match="primary target already"):
        services.model_alias_update(alias=alias, target=canary)
    with pytest.raises(ValidationError, match="add up to 0"):
        services.model_alias_splits_set(alias=alias, weight=0, splits=[(canary, 0)])
    alias.refresh_from_db()
    assert (alias.target, alias.weight, _splits(alias)) == (stable, 90, {"chat-v2": 10})


def test_a_disabled_target_is_allowed_and_gets_no_traffic(stable, canary) -> None:
    services.catalog_model_update(model=canary, status=CatalogModel.Status.DISABLED)
    services.model_alias_create(name="chat", target=stable, weight=90, splits=[(canary, 10)])
    (alias,) = render_spec()["aliases"]
    assert alias == {"name": "chat", "targets": [{"model": "chat-v1", "weight": 90}]}


def test_the_audited_path_records_weights_and_splits(stable, canary, staff) -> None:
    alias = catalog_changes.model_alias_save(
        actor=staff, alias=None, name="chat", target=stable, weight=90, splits=[(canary, 10)]
    )
    catalog_changes.model_alias_save(
        actor=staff, alias=alias, name="chat", target=stable, splits=[(canary, 0)]
    )
    created, updated = AuditEvent.objects.filter(action__startswith="model_alias.").order_by("id")
    assert created.action == "model_alias.created"
    assert created.after["weight"] == 90
    assert created.after["splits"] == {"chat-v2": 10}
    assert updated.before["splits"] == {"chat-v2": 10}
    assert updated.after["splits"] == {"chat-v2": 0}
    assert updated.after["weight"] == 90
    catalog_changes.model_alias_remove(actor=staff, alias=alias)
    deleted = AuditEvent.objects.get(action="model_alias.deleted")
    assert deleted.before["splits"] == {"chat-v2": 0}


# --- who may use it ----------------------------------------------------------------------------


def test_an_alias_never_widens_access(stable, canary) -> None:
    """A canary restricted to one organisation: the others still see the alias (they may use
    its primary target) but never the canary; an alias whose only live target they may not use
    is not theirs."""
    insider, other = OrganizationFactory(slug="insider"), OrganizationFactory(slug="other")
    services.catalog_model_update(
        model=canary, visibility=Visibility.RESTRICTED, organizations=[insider]
    )
    services.model_alias_create(name="chat", target=stable, weight=90, splits=[(canary, 10)])
    services.model_alias_create(name="canary-only", target=stable, weight=0, splits=[(canary, 5)])
    assert model_names_for_organization(insider) == ["canary-only", "chat", "chat-v1", "chat-v2"]
    assert model_names_for_organization(other) == ["chat", "chat-v1"]
    # The alias is described by a target the organisation may use.
    shown = {row.name: row for row in available_models_for_organization(insider)}
    assert shown["canary-only"].target == "chat-v2"
    assert shown["canary-only"].description == "the canary"
    assert {row.name: row.target for row in available_models_for_organization(other)} == {
        "chat": "chat-v1",
        "chat-v1": None,
    }


def test_the_snapshot_lists_the_alias_for_organisations_per_the_rule(
    stable, canary, redis_client, django_capture_on_commit_callbacks
) -> None:
    insider = OrganizationFactory(slug="insider")
    other = OrganizationFactory(slug="other")
    services.catalog_model_update(
        model=canary, visibility=Visibility.RESTRICTED, organizations=[insider]
    )
    with django_capture_on_commit_callbacks(execute=True):
        alias = services.model_alias_create(
            name="chat", target=stable, weight=0, splits=[(canary, 10)]
        )

    def names(org: Any) -> list[str]:
        return json.loads(redis_client.get(org_record_name(org.id)))["models"]

    assert "chat" in names(insider)
    assert "chat" not in names(other)
    # Weight moved to the public primary: the other organisation may use the alias now.
    with django_capture_on_commit_callbacks(execute=True):
        services.model_alias_splits_set(alias=alias, weight=100, splits=[(canary, 10)])
    assert "chat" in names(other)


# --- rendering ---------------------------------------------------------------------------------


def test_weighted_aliases_render_into_the_gateways_user_config(stable, canary) -> None:
    plain = CatalogModelFactory(name="plain-target")
    services.model_alias_create(name="old-name", target=plain)
    services.model_alias_create(name="chat", target=stable, weight=90, splits=[(canary, 10)])
    spec = render_spec()
    by_name = {model["name"]: model for model in spec["models"]}
    # A weighted alias is not one of its primary target's plain aliases.
    assert by_name["chat-v1"]["aliases"] == []
    assert by_name["plain-target"]["aliases"] == ["old-name"]
    assert spec["aliases"] == [
        {
            "name": "chat",
            "targets": [{"model": "chat-v1", "weight": 90}, {"model": "chat-v2", "weight": 10}],
        }
    ]
    parsed = DeploymentSpec.model_validate(spec)
    assert parsed.routes()["chat"].name == "chat-v1"
    (gateway, *models) = render_applications(spec)
    assert gateway["deployments"][0]["user_config"]["aliases"] == spec["aliases"]
    # A reweight changes the gateway's user_config only: every application's args stay.
    before = {app["name"]: app["args"] for app in [gateway, *models]}
    services.model_alias_splits_set(
        alias=ModelAlias.objects.get(name="chat"), weight=100, splits=[(canary, 0)]
    )
    respec = render_spec()
    assert respec["revision"] != spec["revision"]
    apps = render_applications(respec)
    assert {app["name"]: app["args"] for app in apps} == before
    assert apps[0]["deployments"][0]["user_config"]["aliases"][0]["targets"][1] == {
        "model": "chat-v2",
        "weight": 0,
    }


def test_a_catalog_without_weighted_aliases_renders_an_empty_list(stable) -> None:
    assert render_spec()["aliases"] == []


# --- management API ----------------------------------------------------------------------------


def test_staff_create_read_and_reweight_a_weighted_alias(as_staff, stable, canary) -> None:
    created = as_staff.post(
        ALIASES,
        {
            "name": "chat",
            "target": "chat-v1",
            "weight": 90,
            "splits": [{"model": "chat-v2", "weight": 10}],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["weight"], body["splits"]) == (90, [{"model": "chat-v2", "weight": 10}])
    drained = as_staff.patch(
        ALIASES + "chat/", {"splits": [{"model": "chat-v2", "weight": 0}]}, format="json"
    )
    assert drained.status_code == 200, drained.json()
    assert drained.json()["splits"] == [{"model": "chat-v2", "weight": 0}]
    assert drained.json()["weight"] == 90  # left out: kept
    described = as_staff.patch(ALIASES + "chat/", {"description": "A/B"}, format="json")
    assert described.json()["splits"] == [{"model": "chat-v2", "weight": 0}]  # kept too
    # A plain alias reads as one: weight 100, no splits.
    plain = as_staff.post(ALIASES, {"name": "plain", "target": "chat-v1"}, format="json")
    assert (plain.json()["weight"], plain.json()["splits"]) == (100, [])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"splits": [{"model": "chat-v2", "weight": "10"}]}, "splits"),
        ({"splits": [{"model": "nowhere", "weight": 10}]}, "splits"),
        ({"splits": [{"model": "chat-v2", "weight": 10001}]}, "splits"),
        ({"splits": [{"model": "chat-v1", "weight": 10}]}, "splits"),
        (
            {"splits": [{"model": "chat-v2", "weight": 1}, {"model": "chat-v2", "weight": 2}]},
            "splits",
        ),
        ({"splits": "chat-v2"}, "splits"),
        ({"weight": 0, "splits": [{"model": "chat-v2", "weight": 0}]}, "weight"),
        ({"weight": -1}, "weight"),
        ({"weight": "90"}, "weight"),
    ],
)
def test_bad_weights_and_splits_are_400(as_staff, stable, canary, body, field) -> None:
    response = as_staff.post(ALIASES, {"name": "chat", "target": "chat-v1", **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not ModelAlias.objects.exists()


@pytest.mark.parametrize("actor", ["as_owner", "as_viewer", "as_member", "as_outsider"])
def test_non_staff_cannot_set_splits(actor, request, stable, canary) -> None:
    client = request.getfixturevalue(actor)
    alias = services.model_alias_create(name="chat", target=stable)
    response = client.patch(
        ALIASES + "chat/", {"splits": [{"model": "chat-v2", "weight": 50}]}, format="json"
    )
    assert response.status_code == 403
    assert not alias.splits.exists()
    created = client.post(
        ALIASES,
        {"name": "x", "target": "chat-v1", "splits": [{"model": "chat-v2", "weight": 1}]},
        format="json",
    )
    assert created.status_code == 403
    assert ModelAlias.objects.count() == 1


def test_anonymous_cannot_set_splits(client, stable, canary) -> None:
    services.model_alias_create(name="chat", target=stable)
    response = client.patch(
        ALIASES + "chat/",
        json.dumps({"splits": [{"model": "chat-v2", "weight": 50}]}),
        content_type="application/json",
    )
    assert response.status_code in (401, 403)
    assert not ModelAliasSplit.objects.exists()


# --- admin -------------------------------------------------------------------------------------


def _admin_form(
    target: CatalogModel, weight: int, splits: list[tuple[CatalogModel, int]]
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "chat",
        "target": str(target.pk),
        "weight": str(weight),
        "description": "",
        "splits-TOTAL_FORMS": str(len(splits)),
        "splits-INITIAL_FORMS": "0",
    }
    for i, (model, split_weight) in enumerate(splits):
        data[f"splits-{i}-catalog_model"] = str(model.pk)
        data[f"splits-{i}-weight"] = str(split_weight)
    return data


def test_the_admin_sets_splits_through_the_services(
    stable, canary, redis_client, django_capture_on_commit_callbacks
) -> None:
    from django.test import Client

    from tests.factories import UserFactory

    admin = Client()
    admin.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    add = "/admin/inference/modelalias/add/"
    for bad, message in (
        ([(canary, 10), (canary, 5)], "duplicate"),
        ([(stable, 10)], "primary target already"),
    ):
        refused = admin.post(add, _admin_form(stable, 90, bad))
        assert refused.status_code == 200
        assert message in refused.content.decode()
    # Every weight 0: refused on the inline as a whole.
    refused = admin.post(add, _admin_form(stable, 0, [(canary, 0)]))
    assert refused.status_code == 200
    assert not ModelAlias.objects.exists()

    org = OrganizationFactory()
    with django_capture_on_commit_callbacks(execute=True):
        added = admin.post(add, _admin_form(stable, 90, [(canary, 10)]))
    assert added.status_code == 302, added.content.decode()[:2000]
    alias = ModelAlias.objects.get()
    assert (alias.weight, _splits(alias)) == (90, {"chat-v2": 10})
    record = json.loads(redis_client.get(org_record_name(org.id)))
    assert "chat" in record["models"]
    page = admin.get(f"/admin/inference/modelalias/{alias.pk}/change/")
    assert page.status_code == 200
    assert "weighted targets" in page.content.decode().lower()
