"""The catalog's write rules, and that catalog changes reach the access snapshot in Redis."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from inference import services, upstream_secrets
from inference.models import CatalogModel, ModelAlias, Visibility
from tenants.snapshot import org_record_name
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

VLLM = {
    "engine_kind": "vllm",
    "source_path": "/models/smollm2-135m-instruct",
    "engine_args": {"dtype": "float32", "max_model_len": 2048},
}
OPENAI = {
    "engine_kind": "openai",
    "upstream_base_url": "https://upstream.example.test/v1",
    "upstream_model": "gpt-4o-mini",
    "upstream_api_key": "sk-upstream-secret",
}
SYNTHETIC = {"engine_kind": "synthetic"}


def create(name: str = "m", **fields: Any) -> CatalogModel:
    return services.catalog_model_create(
        **{"name": name, "context_length": 4096, **SYNTHETIC, **fields}
    )


def errors_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return excinfo.value.message_dict


# --- creating models ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [VLLM, OPENAI, SYNTHETIC], ids=["vllm", "openai", "synthetic"])
def test_each_engine_kind_with_its_source_is_created(engine: dict[str, Any]) -> None:
    model = create("smollm2", **engine)
    stored = CatalogModel.objects.get(pk=model.pk)
    assert stored.engine_kind == engine["engine_kind"]
    assert stored.engine_args == engine.get("engine_args", {})
    assert list(stored.organizations.all()) == []


def test_vllm_needs_a_source_path() -> None:
    with pytest.raises(ValidationError) as caught:
        create(**{**VLLM, "source_path": ""})
    assert list(errors_of(caught)) == ["source_path"]
    assert not CatalogModel.objects.exists()


def test_openai_needs_an_upstream_url_and_model() -> None:
    with pytest.raises(ValidationError) as caught:
        create(engine_kind="openai")
    assert set(errors_of(caught)) == {"upstream_base_url", "upstream_model"}


def test_openai_upstream_api_key_is_optional() -> None:
    model = create(**{**OPENAI, "upstream_api_key": ""})
    assert model.upstream_api_key == ""


@pytest.mark.parametrize(
    ("engine", "stray"),
    [
        (SYNTHETIC, {"source_path": "/models/x"}),
        (SYNTHETIC, {"upstream_base_url": "https://x.test/v1"}),
        (VLLM, {"upstream_api_key": "sk-leftover"}),
        (OPENAI, {"source_path": "/models/x"}),
    ],
)
def test_source_fields_the_engine_does_not_use_are_refused(
    engine: dict[str, Any], stray: dict[str, str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        create(**{**engine, **stray})
    assert list(errors_of(caught)) == list(stray)


def test_bad_engine_args_name_the_argument() -> None:
    with pytest.raises(ValidationError) as caught:
        create(**{**VLLM, "engine_args": {"dtype": "float32", "max_modle_len": 2048}})
    assert list(errors_of(caught)) == ["engine_args"]
    assert "max_modle_len" in errors_of(caught)["engine_args"][0]


def test_engine_args_are_checked_against_the_engine_kind() -> None:
    with pytest.raises(ValidationError) as caught:
        create(engine_args={"dtype": "float32"})  # a vLLM argument on the synthetic engine
    assert "dtype" in errors_of(caught)["engine_args"][0]


def test_unknown_engine_kind_is_refused_on_engine_kind() -> None:
    with pytest.raises(ValidationError) as caught:
        create(engine_kind="tgi")
    assert "engine_kind" in errors_of(caught)


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "x" * 129, "semi;colon"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        create(name)
    assert "name" in errors_of(caught)


def test_names_with_slash_dot_colon_are_allowed() -> None:
    assert create("meta-llama/Llama-3.1-8B:instruct").name == "meta-llama/Llama-3.1-8B:instruct"


def test_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        create(colour="blue")


def test_every_broken_rule_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        create(
            engine_kind="vllm",
            engine_args={"seed": "x"},
            min_replicas=3,
            max_replicas=2,
            context_length=4,
        )
    assert {"source_path", "engine_args", "min_replicas", "context_length"} <= set(
        errors_of(caught)
    )


# --- the shared namespace ----------------------------------------------------------------------


def test_a_model_cannot_take_an_alias_name() -> None:
    ModelAliasFactory(name="gpt-4")
    with pytest.raises(ValidationError) as caught:
        create("gpt-4")
    assert list(errors_of(caught)) == ["name"]


def test_a_model_cannot_take_another_models_name() -> None:
    CatalogModelFactory(name="taken")
    with pytest.raises(ValidationError) as caught:
        create("taken")
    assert list(errors_of(caught)) == ["name"]


def test_an_alias_cannot_take_a_model_name() -> None:
    target = CatalogModelFactory(name="llama")
    CatalogModelFactory(name="mistral")
    with pytest.raises(ValidationError) as caught:
        services.model_alias_create(name="mistral", target=target)
    assert list(errors_of(caught)) == ["name"]
    with pytest.raises(ValidationError):
        services.model_alias_create(name="llama", target=target)  # not even its own target's
    assert not ModelAlias.objects.exists()


def test_an_alias_cannot_take_another_alias_name() -> None:
    alias = ModelAliasFactory(name="fast")
    with pytest.raises(ValidationError) as caught:
        services.model_alias_create(name="fast", target=alias.target)
    assert list(errors_of(caught)) == ["name"]


def test_renaming_into_a_taken_name_is_refused_but_keeping_ones_own_is_fine() -> None:
    model = create("one")
    ModelAliasFactory(name="two")
    with pytest.raises(ValidationError) as caught:
        services.catalog_model_update(model=model, name="two")
    assert list(errors_of(caught)) == ["name"]
    services.catalog_model_update(model=model, name="one", description="same name")
    alias = ModelAliasFactory(name="three")
    with pytest.raises(ValidationError):
        services.model_alias_update(alias=alias, name="one")
    services.model_alias_update(alias=alias, name="three", description="same name")


# --- replicas and scale to zero ----------------------------------------------------------------


def test_min_replicas_may_not_exceed_max_replicas() -> None:
    with pytest.raises(ValidationError) as caught:
        create(min_replicas=3, max_replicas=2)
    assert list(errors_of(caught)) == ["min_replicas"]
    assert create("ok", min_replicas=2, max_replicas=2).max_replicas == 2


def test_zero_replicas_needs_scale_to_zero() -> None:
    with pytest.raises(ValidationError) as caught:
        create(min_replicas=0, max_replicas=2)
    assert list(errors_of(caught)) == ["min_replicas"]


def test_scale_to_zero_needs_zero_min_replicas() -> None:
    with pytest.raises(ValidationError) as caught:
        create(min_replicas=1, max_replicas=2, scale_to_zero=True)
    assert list(errors_of(caught)) == ["scale_to_zero"]


def test_scale_to_zero_with_zero_min_replicas_is_accepted() -> None:
    model = create(min_replicas=0, max_replicas=2, scale_to_zero=True)
    assert (model.min_replicas, model.scale_to_zero) == (0, True)


def test_max_replicas_is_at_least_one() -> None:
    with pytest.raises(ValidationError) as caught:
        create(min_replicas=0, max_replicas=0, scale_to_zero=True)
    assert "max_replicas" in errors_of(caught)


# --- vLLM parallelism against GPUs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "pp", "gpus", "ok"),
    [
        (2, 2, "4", True),
        (2, 2, "3", False),
        (4, 1, "2", False),
        (1, 2, "1", False),
        (1, 1, "0.5", True),  # one worker may share a GPU
        (2, 1, "0", True),  # CPU replicas are not checked
    ],
)
def test_vllm_parallelism_must_fit_the_replica_gpus(tp: int, pp: int, gpus: str, ok: bool) -> None:
    fields = {
        **VLLM,
        "engine_args": {"tensor_parallel_size": tp, "pipeline_parallel_size": pp},
        "replica_gpus": Decimal(gpus),
    }
    if ok:
        create(**fields)
    else:
        with pytest.raises(ValidationError) as caught:
            create(**fields)
        assert list(errors_of(caught)) == ["engine_args"]
        assert "replica_gpus" in errors_of(caught)["engine_args"][0]


@pytest.mark.parametrize(("max_model_len", "ok"), [(2048, True), (4096, True), (4097, False)])
def test_vllm_max_model_len_fits_the_advertised_context(max_model_len: int, ok: bool) -> None:
    fields = {**VLLM, "engine_args": {"max_model_len": max_model_len}, "context_length": 4096}
    if ok:
        create(**fields)
    else:
        with pytest.raises(ValidationError) as caught:
            create(**fields)
        assert list(errors_of(caught)) == ["engine_args"]
        assert "context_length" in errors_of(caught)["engine_args"][0]


# --- visibility --------------------------------------------------------------------------------


def test_a_public_model_lists_no_organisations() -> None:
    acme = OrganizationFactory()
    with pytest.raises(ValidationError) as caught:
        create(visibility=Visibility.PUBLIC, organizations=[acme])
    assert list(errors_of(caught)) == ["organizations"]


def test_a_restricted_model_keeps_its_organisations() -> None:
    acme, globex = OrganizationFactory(), OrganizationFactory()
    model = create(visibility=Visibility.RESTRICTED, organizations=[acme, globex])
    assert set(model.organizations.all()) == {acme, globex}
    services.catalog_model_update(model=model, organizations=[globex])
    assert list(model.organizations.all()) == [globex]


def test_a_restricted_model_may_list_nobody_yet() -> None:
    assert create(visibility=Visibility.RESTRICTED).organizations.count() == 0


def test_going_public_while_organisations_are_listed_is_refused() -> None:
    model = create(visibility=Visibility.RESTRICTED, organizations=[OrganizationFactory()])
    with pytest.raises(ValidationError) as caught:
        services.catalog_model_update(model=model, visibility=Visibility.PUBLIC)
    assert list(errors_of(caught)) == ["organizations"]
    services.catalog_model_update(model=model, visibility=Visibility.PUBLIC, organizations=[])
    model.refresh_from_db()
    assert model.visibility == Visibility.PUBLIC


# --- updates and deletes -----------------------------------------------------------------------


def test_a_refused_update_changes_neither_the_row_nor_the_instance() -> None:
    model = create("stable", min_replicas=1, max_replicas=2)
    with pytest.raises(ValidationError):
        services.catalog_model_update(model=model, min_replicas=5, description="changed")
    assert (model.min_replicas, model.description) == (1, "")
    model.refresh_from_db()
    assert (model.min_replicas, model.description) == (1, "")


def test_update_keeps_fields_it_was_not_given() -> None:
    model = create("keep", **OPENAI)
    services.catalog_model_update(model=model, upstream_model="gpt-4o")
    model.refresh_from_db()
    assert model.upstream_model == "gpt-4o"
    assert upstream_secrets.decrypt(model.upstream_api_key) == "sk-upstream-secret"


def test_switching_engine_kind_needs_the_new_source() -> None:
    model = create("switch", **OPENAI)
    with pytest.raises(ValidationError) as caught:
        services.catalog_model_update(model=model, engine_kind="vllm")
    assert {"source_path", "upstream_base_url", "upstream_model", "upstream_api_key"} == set(
        errors_of(caught)
    )


def test_deleting_a_model_deletes_its_aliases() -> None:
    model = create("doomed")
    services.model_alias_create(name="doomed-alias", target=model)
    other = ModelAliasFactory()
    services.catalog_model_delete(model=model)
    assert not CatalogModel.objects.filter(name="doomed").exists()
    assert list(ModelAlias.objects.all()) == [other]


def test_bulk_delete_counts_models() -> None:
    models = [CatalogModelFactory(), CatalogModelFactory()]
    ModelAliasFactory(target=models[0])
    assert services.catalog_models_delete(models=models) == 2
    assert not CatalogModel.objects.exists()


def test_alias_update_and_delete() -> None:
    first, second = CatalogModelFactory(), CatalogModelFactory()
    alias = services.model_alias_create(name="best", target=first, description="d")
    services.model_alias_update(alias=alias, target=second)
    alias.refresh_from_db()
    assert (alias.name, alias.target, alias.description) == ("best", second, "d")
    services.model_alias_delete(alias=alias)
    assert not ModelAlias.objects.exists()
    assert CatalogModel.objects.count() == 2


# --- the access snapshot -----------------------------------------------------------------------


def published_names(redis_client: Any, org: Any) -> list[str] | None:
    raw = redis_client.get(org_record_name(org.id))
    return None if raw is None else json.loads(raw)["models"]


def test_restricted_model_gaining_an_organisation_is_published(
    redis_client, django_capture_on_commit_callbacks
) -> None:
    acme, globex = OrganizationFactory(), OrganizationFactory()
    with django_capture_on_commit_callbacks(execute=True):
        model = create("private-model", visibility=Visibility.RESTRICTED, organizations=[globex])
    assert published_names(redis_client, acme) == []
    assert published_names(redis_client, globex) == ["private-model"]

    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, organizations=[acme, globex])
    assert published_names(redis_client, acme) == ["private-model"]
    assert published_names(redis_client, globex) == ["private-model"]


def test_disabling_a_model_is_published(redis_client, django_capture_on_commit_callbacks) -> None:
    acme = OrganizationFactory()
    with django_capture_on_commit_callbacks(execute=True):
        model = create("public-model")
        services.model_alias_create(name="public-alias", target=model)
    assert published_names(redis_client, acme) == ["public-alias", "public-model"]

    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, status=CatalogModel.Status.DISABLED)
    assert published_names(redis_client, acme) == []


def test_adding_renaming_and_deleting_an_alias_is_published(
    redis_client, django_capture_on_commit_callbacks
) -> None:
    acme = OrganizationFactory()
    model = CatalogModelFactory(name="base")
    with django_capture_on_commit_callbacks(execute=True):
        alias = services.model_alias_create(name="nickname", target=model)
    assert published_names(redis_client, acme) == ["base", "nickname"]

    with django_capture_on_commit_callbacks(execute=True):
        services.model_alias_update(alias=alias, name="new-nickname")
    assert published_names(redis_client, acme) == ["base", "new-nickname"]

    with django_capture_on_commit_callbacks(execute=True):
        services.model_alias_delete(alias=alias)
    assert published_names(redis_client, acme) == ["base"]


def test_deleting_a_model_is_published(redis_client, django_capture_on_commit_callbacks) -> None:
    acme = OrganizationFactory()
    with django_capture_on_commit_callbacks(execute=True):
        model = create("short-lived")
    assert published_names(redis_client, acme) == ["short-lived"]
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_delete(model=model)
    assert published_names(redis_client, acme) == []


def test_publishing_waits_for_the_commit(redis_client, django_capture_on_commit_callbacks) -> None:
    acme = OrganizationFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        create("pending")
    assert published_names(redis_client, acme) is None  # nothing before the commit
    assert len(callbacks) == 1


def test_a_refused_write_publishes_nothing(django_capture_on_commit_callbacks) -> None:
    model = create("fine")
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(ValidationError):
            services.catalog_model_update(
                model=model, status=CatalogModel.Status.DISABLED, min_replicas=9
            )
        with pytest.raises(ValidationError):
            services.model_alias_create(name="fine", target=model)
    assert callbacks == []


def test_changes_that_do_not_touch_names_publish_nothing(
    django_capture_on_commit_callbacks,
) -> None:
    model = create("quiet", max_replicas=2)
    alias = services.model_alias_create(name="quiet-alias", target=model)
    with django_capture_on_commit_callbacks() as callbacks:
        services.catalog_model_update(
            model=model, description="new words", max_replicas=4, price_input_per_mtok=Decimal(2)
        )
        services.model_alias_update(alias=alias, description="new words")
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks:
        services.catalog_model_update(model=model, name="loud")
    assert len(callbacks) == 1
