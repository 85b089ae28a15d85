"""The management API keeps the contract its OpenAPI schema states.

Schemathesis reads the live schema from ``/api/v1/schema/`` and sends generated requests to the
Django application in-process (WSGI, no server), with **every** check it has: no 5xx, only
documented status codes, content types and headers, bodies that match the response schemas,
schema-valid requests accepted, schema-invalid ones refused, authentication not ignored,
unsupported methods refused. Clients are generated from this schema, so a failure here is a
client that breaks on a real answer.

It runs over every operation once per identity:

- platform staff, signed in (session cookie and CSRF token, as the console sends them);
- an organisation owner, signed in the same way;
- the same owner's API key with the management scopes (``Authorization: Bearer vlk_...``).

Each identity's organisation, a second key, a member, a pending invitation, a catalog model and
alias, a deployment, usage and audit records exist, and the schema's example path parameters
name them, so the generated requests reach the views' logic rather than stopping at 404. Every
generated request runs inside a savepoint that is rolled back afterwards: each starts from the
same seeded state (a request that revokes the identity's own key or removes its membership does
not blind the ones after it), and the runs are derandomised, so a failure reproduces.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.management.color import no_style
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection, transaction
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import PositiveDataAcceptanceConfig
from werkzeug.test import Client as WerkzeugClient

from billing.models import UsageRollup
from inference.models import DeploymentRevision, ModelDeploymentStatus
from tenants import services
from tenants.models import ApiKey, Invitation, Membership, Role
from tests.factories import (
    CatalogModelFactory,
    MembershipFactory,
    ModelAliasFactory,
    OrganizationFactory,
    UserFactory,
)
from vlinders import openapi

# Examples per operation and generation phase. Enough to walk every parameter's edge values
# (the coverage phase is exhaustive over the schema, not random) and a sample of random inputs;
# few enough that three identities over every operation run in about a minute on two cores.
MAX_EXAMPLES = 15

pytestmark = [pytest.mark.django_db, pytest.mark.redis, pytest.mark.timeout(900)]


@dataclass(frozen=True)
class Identity:
    """What authenticates one actor, as a real client sends it."""

    headers: dict[str, str]
    cookies: dict[str, str] = field(default_factory=dict)


def _contract_config() -> SchemathesisConfig:
    """All checks, all per-operation phases, deterministic and bounded.

    ``positive_data_acceptance`` also expects a 400 on exactly the operations whose 400 names
    rules between fields, the clock or existing objects (``vlinders.openapi.BUSINESS_RULES``),
    which no JSON Schema constraint can express; everywhere else a schema-valid request that
    is refused with a 400 is a contract failure.
    """
    default = PositiveDataAcceptanceConfig().expected_statuses
    return SchemathesisConfig.from_dict(
        {
            "operations": [
                {
                    "include-operation-id": operation_id,
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*default, "400"]}
                    },
                }
                for operation_id in openapi.BUSINESS_RULES
            ],
            "phases": {"examples": {}, "coverage": {}, "fuzzing": {}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "mode": "all",
            },
            "checks": {"enabled": True},
            # One Host Django accepts (ALLOWED_HOSTS).
            "headers": {"Host": "localhost"},
        }
    )


@pytest.fixture(autouse=True)
def _no_ray(settings) -> None:  # type: ignore[no-untyped-def]
    """Endpoints that apply the catalog (scale) talk to a dashboard where nothing listens: the
    contract run must never change a Ray cluster that happens to run on this machine."""
    from tests.ray_fixtures import free_port

    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _requests_in_test_transaction() -> Iterator[None]:
    """Django closes "old" connections at the start and end of each request; inside the test's
    transaction that would end it. Django's own test client disconnects the same handler."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(db, redis_client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The objects the schema's example path parameters name, and the identities' accounts."""
    org = OrganizationFactory(name="Acme", slug=openapi.EXAMPLE_ORG_SLUG)
    owner = MembershipFactory(
        organization=org, user=UserFactory(username="owner"), role=Role.OWNER
    ).user
    viewer = UserFactory(username="viewer")
    Membership.objects.create(
        id=openapi.EXAMPLE_MEMBER_ID, organization=org, user=viewer, role=Role.VIEWER
    )
    # The example id is fixed; move the sequence past it so later inserts never collide.
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Membership]):
            cursor.execute(sql)
    UserFactory(username="newcomer")  # someone who can be added as a member
    staff = UserFactory(username="staff", is_staff=True)
    model = CatalogModelFactory(name=openapi.EXAMPLE_MODEL_NAME)
    ModelAliasFactory(name=openapi.EXAMPLE_ALIAS_NAME, target=model)
    management_key, secret = services.api_key_create(
        organization=org,
        name="contract test",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=["inference", "management:read", "management:write"],
    )
    example_key, _ = services.api_key_create(
        organization=org,
        name="example",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=["inference"],
    )
    ApiKey.objects.filter(pk=example_key.pk).update(id=uuid.UUID(openapi.EXAMPLE_KEY_ID))
    invitation, _ = services.invitation_create(
        organization=org,
        email="invitee@example.test",
        role=Role.MEMBER,
        actor_role=Role.OWNER,
        actor=owner,
    )
    Invitation.objects.filter(pk=invitation.pk).update(id=uuid.UUID(openapi.EXAMPLE_INVITATION_ID))
    revision = DeploymentRevision.objects.create(
        revision="r1", config_hash="0" * 64, config={}, applied_by=staff
    )
    ModelDeploymentStatus.objects.create(
        catalog_model=model, deployment="d1", revision=revision.revision
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    UsageRollup.objects.create(
        organization=org,
        api_key=ApiKey.objects.get(pk=openapi.EXAMPLE_KEY_ID),
        hour=hour,
        model=model.name,
        requests=3,
        prompt_tokens=30,
        completion_tokens=12,
        cost=Decimal("0.000033"),
    )
    return {"owner": owner, "staff": staff, "secret": secret, "management_key": management_key}


def _session_identity(user: Any) -> Identity:
    """A signed-in person: the session cookie, and the CSRF token as cookie and header (Django
    refuses unsafe methods without them, exactly as for the console)."""
    client = Client()
    client.force_login(user)
    token = _get_new_csrf_string()
    return Identity(
        headers={"X-CSRFToken": token},
        cookies={
            settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value,
            settings.CSRF_COOKIE_NAME: token,
        },
    )


# Loaded when the module is collected: schema generation reads no database.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", WSGIHandler(), config=_contract_config())


# The identity of the test that is running; the auth provider below reads it.
_current: dict[str, Identity] = {}


@schema.auth(refresh_interval=None)
class _IdentityAuth:
    """Puts the running test's credentials on every generated request, as schemathesis auth, so
    its ``ignored_auth`` check knows them and can retry without them (and expect a 401)."""

    def get(self, case: Any, context: Any) -> Identity | None:
        # None (no credentials) while the tests are collected, before any identity exists.
        return _current.get("identity")

    def set(self, case: Any, data: Identity, context: Any) -> None:
        case.headers = {**(case.headers or {}), **data.headers}
        case.cookies = {**(case.cookies or {}), **data.cookies}


def _call(case: Any) -> None:
    """One generated request and all checks, then back to the seeded state."""
    with transaction.atomic():
        try:
            case.call_and_validate()
        finally:
            transaction.set_rollback(True)


_SETTINGS = hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def _acting_as(identity: Identity) -> Iterator[Identity]:
    """The auth provider reads the identity when hypothesis draws a case, before the test body
    runs: so the fixture, not the body, says who is acting."""
    _current["identity"] = identity
    yield identity
    _current.pop("identity", None)


@pytest.fixture
def staff_signed_in(seeded) -> Iterator[Identity]:  # type: ignore[no-untyped-def]
    yield from _acting_as(_session_identity(seeded["staff"]))


@pytest.fixture
def owner_signed_in(seeded) -> Iterator[Identity]:  # type: ignore[no-untyped-def]
    yield from _acting_as(_session_identity(seeded["owner"]))


@pytest.fixture
def owner_api_key(seeded) -> Iterator[Identity]:  # type: ignore[no-untyped-def]
    yield from _acting_as(Identity(headers={"Authorization": f"Bearer {seeded['secret']}"}))


@schema.parametrize()
@_SETTINGS
def test_contract_as_platform_staff(case, staff_signed_in):  # type: ignore[no-untyped-def]
    _call(case)


@schema.parametrize()
@_SETTINGS
def test_contract_as_organisation_owner_signed_in(case, owner_signed_in):  # type: ignore[no-untyped-def]
    _call(case)


@schema.parametrize()
@_SETTINGS
def test_contract_as_organisation_api_key(case, owner_api_key):  # type: ignore[no-untyped-def]
    _call(case)


@pytest.mark.parametrize(
    ("identity", "staff_only_status", "own_role"),
    [
        ("staff_signed_in", 200, "owner"),
        ("owner_signed_in", 403, "owner"),
        ("owner_api_key", 403, "admin"),
    ],
)
def test_identities_reach_the_views(request, identity, staff_only_status, own_role):  # type: ignore[no-untyped-def]
    """The identities above are real: reads and writes (CSRF included) get through, so the
    contract runs exercise the views and not only their 401s and 403s."""
    actor = request.getfixturevalue(identity)
    headers = actor.headers
    client = WerkzeugClient(WSGIHandler())
    for name, value in actor.cookies.items():
        client.set_cookie(name, value, domain="localhost")
    org = client.get(f"/api/v1/orgs/{openapi.EXAMPLE_ORG_SLUG}/", headers=headers)
    assert org.status_code == 200, org.get_data(as_text=True)
    assert org.json["role"] == own_role
    created = client.post(
        f"/api/v1/orgs/{openapi.EXAMPLE_ORG_SLUG}/keys/", json={"name": "probe"}, headers=headers
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    assert client.get("/api/v1/deployments/", headers=headers).status_code == staff_only_status
