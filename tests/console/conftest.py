"""Shared fixtures of the console's tests: the five roles plus staff, and the role matrix.

``ROLES`` names every actor a console view is tested with. ``role_client(name)`` signs one in;
``assert_matrix(url, expected)`` asks the page as each of them and compares the statuses, so a
test states the whole matrix in one dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tenants.models import Role
from tests.factories import MembershipFactory, UserFactory

ROLES = ("owner", "admin", "member", "viewer", "outsider", "staff", "anonymous")


@pytest.fixture
def admin(org):  # type: ignore[no-untyped-def]
    return MembershipFactory(
        organization=org, user=UserFactory(username="admin"), role=Role.ADMIN
    ).user


@pytest.fixture
def role_client(owner, admin, member, viewer, outsider, staff) -> Callable[[str], Client]:  # type: ignore[no-untyped-def]
    users = {
        "owner": owner,
        "admin": admin,
        "member": member,
        "viewer": viewer,
        "outsider": outsider,
        "staff": staff,
    }

    def client_for(role: str) -> Client:
        client = Client()
        if role != "anonymous":
            client.force_login(users[role])
        return client

    return client_for


@pytest.fixture
def assert_matrix(role_client) -> Callable[..., None]:  # type: ignore[no-untyped-def]
    """``assert_matrix(url, {"owner": 200, …}, method="get", data=None)``: every role in ROLES
    must be in ``expected``; anonymous is expected to be sent to the sign-in page (302)."""

    def check(url: str, expected: dict[str, int], *, method: str = "get", data: Any = None) -> None:
        assert set(expected) == set(ROLES), f"the matrix must name every role: {ROLES}"
        seen = {}
        for role in ROLES:
            response = getattr(role_client(role), method)(url, data or {})
            seen[role] = response.status_code
        assert seen == expected

    return check
