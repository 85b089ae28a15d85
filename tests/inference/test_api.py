"""Catalog administration API: staff only, thin over the services, 400 (never 500) on bad input,
and the upstream API key never leaves the server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from inference import upstream_secrets
from inference.models import CatalogModel, ModelAlias, Visibility
from tenants import services as tenant_services
from tenants.models import Role, Scope
from tenants.snapshot import org_record_name
from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = pytest.mark.django_db

MODELS = "/api/v1/models/"
ALIASES = "/api/v1/aliases/"
SECRET = "sk-upstream-very-secret-value"


def model_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "meta-llama/Llama-3.1-8B-Instruct",
        "engine_kind": "vllm",
        "source_path": "/models/llama-3.1-8b-instruct",
        "engine_args": {"dtype": "bfloat16", "max_model_len": 8192},
        "context_length": 8192,
        "price_input_per_mtok": "0.20",
        "price_output_per_mtok": "0.60",
        "max_replicas": 2,
        **overrides,
    }


def openai_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "upstream-4o",
        "engine_kind": "openai",
        "upstream_base_url": "https://upstream.example.test/v1",
        "upstream_model": "gpt-4o",
        "upstream_api_key": SECRET,
        "context_length": 128000,
        **overrides,
    }


def post(client: APIClient, url: str, body: Any) -> Any:
    return client.post(url, body, format="json")


def patch(client: APIClient, url: str, body: Any) -> Any:
    return client.patch(url, body, format="json")


# --- staff CRUD --------------------------------------------------------------------------------


def test_staff_creates_reads_updates_and_deletes_a_model(as_staff) -> None:
    created = post(as_staff, MODELS, model_body())
    assert created.status_code == 201, created.json()
    assert created.json()["name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert created.json()["engine_args"] == {"dtype": "bfloat16", "max_model_len": 8192}
    assert CatalogModel.objects.filter(name="meta-llama/Llama-3.1-8B-Instruct").exists()

    url = MODELS + "meta-llama/Llama-3.1-8B-Instruct/"
    shown = as_staff.get(url)
    assert shown.status_code == 200
    assert shown.json()["id"] == created.json()["id"]
    assert shown.json()["price_input_per_mtok"] == "0.200000"

    listed = as_staff.get(MODELS)
    assert listed.status_code == 200
    assert [row["name"] for row in listed.json()["results"]] == ["meta-llama/Llama-3.1-8B-Instruct"]

    changed = patch(as_staff, url, {"max_replicas": 4, "description": "The 8B."})
    assert changed.status_code == 200, changed.json()
    assert changed.json()["max_replicas"] == 4
    model = CatalogModel.objects.get()
    assert (model.max_replicas, model.description, model.min_replicas) == (4, "The 8B.", 1)

    replaced = as_staff.put(url, model_body(min_replicas=2, max_replicas=3), format="json")
    assert replaced.status_code == 200, replaced.json()
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas) == (2, 3)

    deleted = as_staff.delete(url)
    assert deleted.status_code == 204
    assert not CatalogModel.objects.exists()
    assert as_staff.get(url).status_code == 404


def test_model_names_with_dots_and_colons_are_addressable(as_staff) -> None:
    CatalogModelFactory(name="qwen2.5:7b")
    response = as_staff.get(MODELS + "qwen2.5:7b/")
    assert response.status_code == 200
    assert response.json()["name"] == "qwen2.5:7b"


def test_renaming_moves_the_model_to_its_new_url(as_staff) -> None:
    CatalogModelFactory(name="old-name")
    response = patch(as_staff, MODELS + "old-name/", {"name": "new-name"})
    assert response.status_code == 200, response.json()
    assert as_staff.get(MODELS + "old-name/").status_code == 404
    assert as_staff.get(MODELS + "new-name/").status_code == 200


def test_organisations_are_slugs(as_staff, org) -> None:
    body = model_body(visibility=Visibility.RESTRICTED, organizations=[org.slug])
    response = post(as_staff, MODELS, body)
    assert response.status_code == 201, response.json()
    assert response.json()["organizations"] == ["acme"]
    assert list(CatalogModel.objects.get().organizations.all()) == [org]

    url = MODELS + body["name"] + "/"
    cleared = patch(as_staff, url, {"organizations": []})
    assert cleared.status_code == 200
    assert cleared.json()["organizations"] == []
    assert CatalogModel.objects.get().organizations.count() == 0


def test_staff_crud_of_aliases(as_staff) -> None:
    CatalogModelFactory(name="llama")
    CatalogModelFactory(name="mistral")
    created = post(as_staff, ALIASES, {"name": "gpt-4", "target": "llama"})
    assert created.status_code == 201, created.json()
    assert created.json()["target"] == "llama"
    assert ModelAlias.objects.get().target.name == "llama"

    assert as_staff.get(ALIASES).json()["results"][0]["name"] == "gpt-4"
    assert as_staff.get(ALIASES + "gpt-4/").json()["target"] == "llama"

    moved = patch(as_staff, ALIASES + "gpt-4/", {"target": "mistral"})
    assert moved.status_code == 200, moved.json()
    assert ModelAlias.objects.get().target.name == "mistral"

    assert as_staff.get(MODELS + "mistral/").json()["aliases"] == ["gpt-4"]

    assert as_staff.delete(ALIASES + "gpt-4/").status_code == 204
    assert not ModelAlias.objects.exists()
    assert CatalogModel.objects.count() == 2


def test_api_writes_publish_the_snapshot(
    as_staff, org, redis_client, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = post(
            as_staff,
            MODELS,
            model_body(name="acme-only", visibility="restricted", organizations=["acme"]),
        )
    assert response.status_code == 201
    record = json.loads(redis_client.get(org_record_name(org.id)))
    assert record["models"] == ["acme-only"]

    with django_capture_on_commit_callbacks(execute=True):
        post(as_staff, ALIASES, {"name": "acme-alias", "target": "acme-only"})
    record = json.loads(redis_client.get(org_record_name(org.id)))
    assert record["models"] == ["acme-alias", "acme-only"]


# --- everybody else is refused -----------------------------------------------------------------


def _requests(model_name: str, alias_name: str) -> list[tuple[str, str, Any]]:
    return [
        ("get", MODELS, None),
        ("get", f"{MODELS}{model_name}/", None),
        ("post", MODELS, model_body(name="intruder")),
        ("patch", f"{MODELS}{model_name}/", {"description": "hacked"}),
        ("put", f"{MODELS}{model_name}/", model_body(name=model_name)),
        ("delete", f"{MODELS}{model_name}/", None),
        ("get", ALIASES, None),
        ("get", f"{ALIASES}{alias_name}/", None),
        ("post", ALIASES, {"name": "intruder-alias", "target": model_name}),
        ("patch", f"{ALIASES}{alias_name}/", {"description": "hacked"}),
        ("delete", f"{ALIASES}{alias_name}/", None),
    ]


def _assert_refused_everywhere(client: APIClient, allowed_statuses: set[int]) -> None:
    alias = ModelAliasFactory(name="the-alias", target=CatalogModelFactory(name="the-model"))
    for method, url, body in _requests("the-model", alias.name):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code in allowed_statuses, (method, url, response.status_code)
        assert "the-model" not in response.content.decode()
    assert list(CatalogModel.objects.values_list("name", "description")) == [("the-model", "")]
    assert list(ModelAlias.objects.values_list("name", "description")) == [("the-alias", "")]


@pytest.mark.parametrize("actor", ["as_owner", "as_viewer", "as_member", "as_outsider"])
def test_authenticated_non_staff_get_403(actor, request) -> None:
    _assert_refused_everywhere(request.getfixturevalue(actor), {403})


def test_anonymous_is_refused(anonymous) -> None:
    _assert_refused_everywhere(anonymous, {401, 403})


def test_anonymous_is_told_to_authenticate(anonymous) -> None:
    assert anonymous.get(MODELS).status_code == 401


def test_an_api_key_is_never_staff(org, owner) -> None:
    _, plaintext = tenant_services.api_key_create(
        organization=org,
        name="admin key",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=[Scope.MANAGEMENT_READ, Scope.MANAGEMENT_WRITE],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    _assert_refused_everywhere(client, {403})


# --- bad input is a 400 naming the field, never a 500 -------------------------------------------


def test_bad_engine_args_name_the_argument(as_staff) -> None:
    response = post(as_staff, MODELS, model_body(engine_args={"dtype": "float32", "tp": 2}))
    assert response.status_code == 400
    assert list(response.json()) == ["engine_args"]
    assert "tp" in response.json()["engine_args"][0]
    assert not CatalogModel.objects.exists()


def test_model_taking_an_alias_name_is_400(as_staff) -> None:
    ModelAliasFactory(name="gpt-4")
    response = post(as_staff, MODELS, model_body(name="gpt-4"))
    assert response.status_code == 400
    assert list(response.json()) == ["name"]


def test_alias_taking_a_model_name_is_400(as_staff) -> None:
    CatalogModelFactory(name="llama")
    CatalogModelFactory(name="mistral")
    response = post(as_staff, ALIASES, {"name": "mistral", "target": "llama"})
    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert not ModelAlias.objects.exists()


def test_duplicate_model_name_is_400(as_staff) -> None:
    CatalogModelFactory(name="meta-llama/Llama-3.1-8B-Instruct")
    response = post(as_staff, MODELS, model_body())
    assert response.status_code == 400
    assert list(response.json()) == ["name"]


def test_min_above_max_replicas_is_400(as_staff) -> None:
    response = post(as_staff, MODELS, model_body(min_replicas=3, max_replicas=2))
    assert response.status_code == 400
    assert list(response.json()) == ["min_replicas"]


def test_patch_breaking_a_rule_is_400_and_changes_nothing(as_staff) -> None:
    CatalogModelFactory(name="m", max_replicas=2)
    response = patch(as_staff, MODELS + "m/", {"min_replicas": 5, "description": "x"})
    assert response.status_code == 400
    assert "min_replicas" in response.json()
    assert CatalogModel.objects.values_list("min_replicas", "description").get() == (1, "")


def test_scale_to_zero_rule_is_400(as_staff) -> None:
    response = post(as_staff, MODELS, model_body(min_replicas=0))
    assert response.status_code == 400
    assert list(response.json()) == ["min_replicas"]
    ok = post(as_staff, MODELS, model_body(min_replicas=0, scale_to_zero=True))
    assert ok.status_code == 201, ok.json()


def test_malformed_json_is_400(as_staff) -> None:
    response = as_staff.post(MODELS, '{"name": "x", ', content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


@pytest.mark.parametrize("body", ["[]", '"a string"', "42", "null"])
def test_a_body_that_is_not_an_object_is_400(as_staff, body: str) -> None:
    response = as_staff.post(MODELS, body, content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
        ({"engine_kind": "tgi"}, "engine_kind"),
        ({"engine_args": ["dtype"]}, "engine_args"),
        ({"engine_args": {"max_model_len": "8k"}}, "engine_args"),
        ({"source_path": ""}, "source_path"),
        ({"upstream_api_key": SECRET}, "upstream_api_key"),
        ({"context_length": 8}, "context_length"),
        ({"context_length": 10**20}, "context_length"),
        ({"context_length": "long"}, "context_length"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"price_input_per_mtok": "-1"}, "price_input_per_mtok"),
        ({"price_input_per_mtok": "1" * 20}, "price_input_per_mtok"),
        ({"replica_gpus": "1", "engine_args": {"tensor_parallel_size": 2}}, "engine_args"),
        ({"visibility": "secret"}, "visibility"),
        ({"status": "paused"}, "status"),
        ({"organizations": ["no-such-org"]}, "organizations"),
        ({"organizations": "acme"}, "organizations"),
        ({"description": "nul\x00byte"}, "description"),
    ],
)
def test_invalid_model_fields_are_400_naming_the_field(
    as_staff, org, overrides: dict[str, Any], field: str
) -> None:
    response = post(as_staff, MODELS, model_body(**overrides))
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not CatalogModel.objects.exists()


def test_public_model_with_organisations_is_400(as_staff, org) -> None:
    response = post(as_staff, MODELS, model_body(organizations=["acme"]))
    assert response.status_code == 400
    assert list(response.json()) == ["organizations"]


def test_missing_required_fields_are_named(as_staff) -> None:
    response = post(as_staff, MODELS, {})
    assert response.status_code == 400
    assert {"name", "engine_kind", "context_length"} <= set(response.json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "target": "no-such-model"}, "target"),
        ({"name": "a"}, "target"),
        ({"name": "bad name", "target": "llama"}, "name"),
        ({"name": "a", "target": ["llama"]}, "target"),
    ],
)
def test_invalid_alias_fields_are_400(as_staff, body: dict[str, Any], field: str) -> None:
    CatalogModelFactory(name="llama")
    response = post(as_staff, ALIASES, body)
    assert response.status_code == 400
    assert field in response.json()


# --- the upstream API key stays on the server --------------------------------------------------


def test_upstream_api_key_is_never_returned(as_staff) -> None:
    responses = [post(as_staff, MODELS, openai_body())]
    assert responses[0].status_code == 201, responses[0].json()
    url = MODELS + "upstream-4o/"
    responses.append(as_staff.get(url))
    responses.append(as_staff.get(MODELS))
    responses.append(patch(as_staff, url, {"description": "still secret"}))
    responses.append(as_staff.put(url, openai_body(), format="json"))
    for response in responses:
        assert response.status_code in (200, 201)
        assert SECRET not in response.content.decode()
        rows = response.json().get("results", [response.json()])
        assert rows
        assert all("upstream_api_key" not in row for row in rows)
    assert responses[1].json()["has_upstream_api_key"] is True
    stored = CatalogModel.objects.get().upstream_api_key
    assert SECRET not in stored  # encrypted at rest
    assert upstream_secrets.decrypt(stored) == SECRET


def test_patch_without_the_key_keeps_it_and_an_empty_key_clears_it(as_staff) -> None:
    post(as_staff, MODELS, openai_body())
    url = MODELS + "upstream-4o/"
    patch(as_staff, url, {"upstream_model": "gpt-4o-mini"})
    assert upstream_secrets.decrypt(CatalogModel.objects.get().upstream_api_key) == SECRET
    cleared = patch(as_staff, url, {"upstream_api_key": ""})
    assert cleared.status_code == 200
    assert cleared.json()["has_upstream_api_key"] is False
    assert CatalogModel.objects.get().upstream_api_key == ""
