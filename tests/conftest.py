"""Shared fixtures: the three actors (owner, read-only member, outsider) plus staff, API
clients for each, and a real Redis under a prefix of the test run's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from tenants.models import Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory


@pytest.fixture(autouse=True)
def _redis_prefix(settings) -> None:  # type: ignore[no-untyped-def]
    """Give every test its own Redis key prefix so tests never see each other's keys."""
    settings.VLINDERS_REDIS_PREFIX = f"vltest:{os.getpid()}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    """Real hashers are slow on purpose; the tests are not about password strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def redis_client(_redis_prefix) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    """The real Redis at REDIS_URL; everything under the test's prefix is removed afterwards."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    yield client
    keys = list(client.scan_iter(match=settings.VLINDERS_REDIS_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def org(db):  # type: ignore[no-untyped-def]
    return OrganizationFactory(name="Acme", slug="acme")


@pytest.fixture
def owner(org):  # type: ignore[no-untyped-def]
    return MembershipFactory(
        organization=org, user=UserFactory(username="owner"), role=Role.OWNER
    ).user


@pytest.fixture
def viewer(org):  # type: ignore[no-untyped-def]
    """The read-only member."""
    return MembershipFactory(
        organization=org, user=UserFactory(username="viewer"), role=Role.VIEWER
    ).user


@pytest.fixture
def member(org):  # type: ignore[no-untyped-def]
    return MembershipFactory(
        organization=org, user=UserFactory(username="member"), role=Role.MEMBER
    ).user


@pytest.fixture
def outsider(db):  # type: ignore[no-untyped-def]
    """A user with a membership elsewhere but none in ``org``."""
    return MembershipFactory(user=UserFactory(username="outsider"), role=Role.OWNER).user


@pytest.fixture
def staff(db):  # type: ignore[no-untyped-def]
    return UserFactory(username="staff", is_staff=True)


def _client_for(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def as_owner(owner) -> APIClient:  # type: ignore[no-untyped-def]
    return _client_for(owner)


@pytest.fixture
def as_viewer(viewer) -> APIClient:  # type: ignore[no-untyped-def]
    return _client_for(viewer)


@pytest.fixture
def as_member(member) -> APIClient:  # type: ignore[no-untyped-def]
    return _client_for(member)


@pytest.fixture
def as_outsider(outsider) -> APIClient:  # type: ignore[no-untyped-def]
    return _client_for(outsider)


@pytest.fixture
def as_staff(staff) -> APIClient:  # type: ignore[no-untyped-def]
    return _client_for(staff)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


from tests.ray_fixtures import ray_cluster, serve_port  # noqa: E402,F401  (session fixtures)
