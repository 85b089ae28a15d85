"""The Django admin goes through the catalog services: same rules, same snapshot publishing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from inference import upstream_secrets
from inference.models import CatalogModel, ModelAlias
from tenants.snapshot import org_record_name
from tests.factories import CatalogModelFactory, ModelAliasFactory, UserFactory

pytestmark = pytest.mark.django_db

ADD_MODEL = "/admin/inference/catalogmodel/add/"
SECRET = "sk-admin-upstream-secret"


@pytest.fixture
def admin_client_() -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "admin-model",
        "description": "",
        "status": "active",
        "engine_kind": "synthetic",
        "source_path": "",
        "upstream_base_url": "",
        "upstream_model": "",
        "upstream_api_key": "",
        "engine_args": "{}",
        "context_length": "4096",
        "price_input_per_mtok": "0",
        "price_output_per_mtok": "0",
        "min_replicas": "1",
        "max_replicas": "1",
        "target_ongoing_requests": "16",
        "replica_cpus": "1",
        "replica_gpus": "0",
        "accelerator_type": "",
        "request_router": "default",  # Serve's own (docs/model-catalog.md, "Request routing")
        "visibility": "public",
        "cache_ttl_s": "0",  # the response cache (docs/response-cache.md): off
        "price_cache_hit_per_mtok": "0",
        # The plan prices' inline formset (tests/inference/test_plan_prices.py): no rows.
        "plan_prices-TOTAL_FORMS": "0",
        "plan_prices-INITIAL_FORMS": "0",
        # The scaling windows' inline formset (tests/inference/test_scaling_schedule.py): none.
        "scaling_windows-TOTAL_FORMS": "0",
        "scaling_windows-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def names_of(redis_client: Any, org: Any) -> list[str]:
    return json.loads(redis_client.get(org_record_name(org.id)))["models"]


def test_adding_a_model_publishes_the_snapshot(
    admin_client_, org, redis_client, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            ADD_MODEL, form(visibility="restricted", organizations=[str(org.pk)])
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    model = CatalogModel.objects.get()
    assert list(model.organizations.all()) == [org]
    assert names_of(redis_client, org) == ["admin-model"]


def test_a_broken_rule_shows_on_the_form(admin_client_) -> None:
    ModelAliasFactory(name="taken")
    response = admin_client_.post(ADD_MODEL, form(name="taken", min_replicas="3"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "name" in errors
    assert "min_replicas" in errors
    assert CatalogModel.objects.count() == 1  # only the alias's target


def test_the_upstream_key_is_not_shown_and_kept_when_left_blank(admin_client_) -> None:
    model = CatalogModelFactory(
        name="up",
        engine_kind="openai",
        engine_args={},
        upstream_base_url="https://upstream.example.test/v1",
        upstream_model="m",
        upstream_api_key=upstream_secrets.encrypt(SECRET),
    )
    url = f"/admin/inference/catalogmodel/{model.pk}/change/"
    page = admin_client_.get(url)
    assert page.status_code == 200
    assert SECRET not in page.content.decode()
    assert model.upstream_api_key not in page.content.decode()  # nor its token
    assert "A key is set" in page.content.decode()

    response = admin_client_.post(
        url,
        form(
            name="up",
            engine_kind="openai",
            upstream_base_url="https://upstream.example.test/v1",
            upstream_model="m2",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert model.upstream_model == "m2"
    assert upstream_secrets.decrypt(model.upstream_api_key) == SECRET


def test_a_key_typed_in_the_admin_is_stored_encrypted_and_can_be_cleared(admin_client_) -> None:
    body = form(
        name="up",
        engine_kind="openai",
        upstream_base_url="https://upstream.example.test/v1",
        upstream_model="m",
        upstream_api_key=SECRET,
    )
    response = admin_client_.post("/admin/inference/catalogmodel/add/", body)
    assert response.status_code == 302, response.content.decode()[:2000]
    model = CatalogModel.objects.get(name="up")
    assert SECRET not in model.upstream_api_key
    assert upstream_secrets.decrypt(model.upstream_api_key) == SECRET

    url = f"/admin/inference/catalogmodel/{model.pk}/change/"
    body = {**body, "upstream_api_key": "", "clear_upstream_api_key": "on"}
    assert admin_client_.post(url, body).status_code == 302
    model.refresh_from_db()
    assert model.upstream_api_key == ""
    assert "No key is set" in admin_client_.get(url).content.decode()


def test_a_key_for_an_engine_that_uses_none_is_refused_on_the_form(admin_client_) -> None:
    body = form(name="syn", engine_kind="synthetic", upstream_api_key=SECRET)
    response = admin_client_.post("/admin/inference/catalogmodel/add/", body)
    assert response.status_code == 200
    assert "upstream_api_key" in response.context["adminform"].form.errors
    assert not CatalogModel.objects.filter(name="syn").exists()


def test_disabling_through_the_admin_publishes(
    admin_client_, org, redis_client, django_capture_on_commit_callbacks
) -> None:
    model = CatalogModelFactory(name="visible")
    url = f"/admin/inference/catalogmodel/{model.pk}/change/"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(url, form(name="visible", status="disabled"))
    assert response.status_code == 302
    assert names_of(redis_client, org) == []


def test_bulk_delete_goes_through_the_service(
    admin_client_, org, redis_client, django_capture_on_commit_callbacks
) -> None:
    models = [CatalogModelFactory(name="a"), CatalogModelFactory(name="b")]
    ModelAliasFactory(name="c", target=models[0])
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client_.post(
            "/admin/inference/catalogmodel/",
            {
                "action": "delete_selected",
                "_selected_action": [str(m.pk) for m in models],
                "post": "yes",
            },
        )
    assert response.status_code == 302
    assert not CatalogModel.objects.exists()
    assert not ModelAlias.objects.exists()
    assert len(callbacks) == 1
    assert names_of(redis_client, org) == []


def test_alias_admin_adds_and_refuses_taken_names(
    admin_client_, org, redis_client, django_capture_on_commit_callbacks
) -> None:
    target = CatalogModelFactory(name="base")
    add = "/admin/inference/modelalias/add/"
    # No splits (the weighted targets' inline): a plain alias.
    plain = {"weight": "100", "splits-TOTAL_FORMS": "0", "splits-INITIAL_FORMS": "0"}
    refused = admin_client_.post(add, {"name": "base", "target": str(target.pk), **plain})
    assert refused.status_code == 200
    assert "name" in refused.context["adminform"].form.errors

    with django_capture_on_commit_callbacks(execute=True):
        added = admin_client_.post(add, {"name": "nick", "target": str(target.pk), **plain})
    assert added.status_code == 302
    assert names_of(redis_client, org) == ["base", "nick"]

    alias = ModelAlias.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        deleted = admin_client_.post(
            f"/admin/inference/modelalias/{alias.pk}/delete/", {"post": "yes"}
        )
    assert deleted.status_code == 302
    assert names_of(redis_client, org) == ["base"]
