"""factory_boy factories for the control plane's models."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth.models import User

from inference.models import CatalogModel, EngineKind, ModelAlias
from tenants.models import Membership, Organization, Role


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")
    password = factory.django.Password("correct horse battery staple")


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


class CatalogModelFactory(factory.django.DjangoModelFactory):
    """A catalog entry on the synthetic engine (the labelled test engine, not a model)."""

    class Meta:
        model = CatalogModel

    name = factory.Sequence(lambda n: f"synthetic-{n}")
    engine_kind = EngineKind.SYNTHETIC
    engine_args = factory.LazyFunction(lambda: {"ttft_ms": 0, "tpot_ms": 0})
    context_length = 4096
    price_input_per_mtok = Decimal("0.50")
    price_output_per_mtok = Decimal("1.50")


class ModelAliasFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelAlias

    name = factory.Sequence(lambda n: f"alias-{n}")
    target = factory.SubFactory(CatalogModelFactory)
