"""Which models and aliases an organisation may use."""

from __future__ import annotations

import pytest

from inference.models import CatalogModel, Visibility
from inference.selectors import (
    aliases_for_organization,
    model_names_for_organization,
    models_for_organization,
    public_name_taken,
)
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

DISABLED = CatalogModel.Status.DISABLED


@pytest.fixture
def acme():
    return OrganizationFactory(slug="acme")


@pytest.fixture
def globex():
    return OrganizationFactory(slug="globex")


def names(queryset) -> list[str]:
    return sorted(queryset.values_list("name", flat=True))


def test_public_active_models_are_everyones(acme, globex) -> None:
    CatalogModelFactory(name="open")
    assert names(models_for_organization(acme)) == ["open"]
    assert names(models_for_organization(globex)) == ["open"]


def test_restricted_models_only_for_listed_organisations(acme, globex) -> None:
    private = CatalogModelFactory(name="private", visibility=Visibility.RESTRICTED)
    private.organizations.set([acme])
    CatalogModelFactory(name="nobodys", visibility=Visibility.RESTRICTED)
    assert names(models_for_organization(acme)) == ["private"]
    assert names(models_for_organization(globex)) == []


def test_disabled_models_are_nobodys(acme) -> None:
    CatalogModelFactory(name="off", status=DISABLED)
    private_off = CatalogModelFactory(
        name="private-off", status=DISABLED, visibility=Visibility.RESTRICTED
    )
    private_off.organizations.set([acme])
    assert names(models_for_organization(acme)) == []


def test_a_model_shared_with_several_organisations_is_listed_once(acme, globex) -> None:
    shared = CatalogModelFactory(name="shared", visibility=Visibility.RESTRICTED)
    shared.organizations.set([acme, globex])
    assert list(models_for_organization(acme).values_list("name", flat=True)) == ["shared"]


def test_alias_is_visible_only_when_its_target_is(acme, globex) -> None:
    ModelAliasFactory(name="open-alias", target=CatalogModelFactory(name="open"))
    private = CatalogModelFactory(name="private", visibility=Visibility.RESTRICTED)
    private.organizations.set([acme])
    ModelAliasFactory(name="private-alias", target=private)
    ModelAliasFactory(name="off-alias", target=CatalogModelFactory(name="off", status=DISABLED))

    assert names(aliases_for_organization(acme)) == ["open-alias", "private-alias"]
    assert names(aliases_for_organization(globex)) == ["open-alias"]


def test_model_names_merge_models_and_aliases_sorted(acme, globex) -> None:
    target = CatalogModelFactory(name="m-2")
    ModelAliasFactory(name="a-1", target=target)
    CatalogModelFactory(name="z-3")
    private = CatalogModelFactory(name="b-private", visibility=Visibility.RESTRICTED)
    private.organizations.set([globex])
    assert model_names_for_organization(acme) == ["a-1", "m-2", "z-3"]
    assert model_names_for_organization(globex) == ["a-1", "b-private", "m-2", "z-3"]


def test_public_name_taken_spans_models_and_aliases() -> None:
    model = CatalogModelFactory(name="model-name")
    alias = ModelAliasFactory(name="alias-name")
    assert public_name_taken("model-name")
    assert public_name_taken("alias-name")
    assert not public_name_taken("free-name")
    assert not public_name_taken("model-name", exclude_model=model)
    assert not public_name_taken("alias-name", exclude_alias=alias)
    assert public_name_taken("alias-name", exclude_model=model)
