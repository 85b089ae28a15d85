"""The prepaid balance API (docs/billing.md, "Prepaid"): balance and ledger for owners and
admins (members and viewers 403, outsiders 404), money as decimal strings, bad ranges 400."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from billing import prepaid, prepaid_services
from tenants.models import BillingMode, Role
from tests.billing.usage_data import add_rollup, make_key
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

HOUR = dt.datetime(2026, 10, 14, 9, tzinfo=dt.UTC)


def _prepaid(org, staff):  # type: ignore[no-untyped-def]
    return prepaid_services.billing_mode_set(
        org, BillingMode.PREPAID, staff, now=HOUR + dt.timedelta(minutes=37)
    )


@pytest.fixture
def as_admin(org) -> APIClient:  # type: ignore[no-untyped-def]
    user = MembershipFactory(organization=org, user=UserFactory(username="admin"), role=Role.ADMIN)
    client = APIClient()
    client.force_login(user.user)
    return client


@pytest.mark.parametrize(
    ("actor", "status"),
    [
        ("as_owner", 200),
        ("as_admin", 200),
        ("as_member", 403),
        ("as_viewer", 403),
        ("as_outsider", 404),
    ],
)
def test_role_matrix(request, org, actor: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client = request.getfixturevalue(actor)
    for url in ("/api/v1/orgs/acme/balance/", "/api/v1/orgs/acme/ledger/"):
        assert client.get(url).status_code == status, url


def test_anonymous_is_refused(anonymous, org) -> None:  # type: ignore[no-untyped-def]
    assert anonymous.get("/api/v1/orgs/acme/balance/").status_code in (401, 403)


def test_balance_and_ledger_as_decimal_strings(as_owner, org, staff) -> None:  # type: ignore[no-untyped-def]
    key = make_key(org)
    _prepaid(org, staff)
    prepaid.credit(org, Decimal("10"), kind="topup", reference="checkout:cs_1")
    add_rollup(key, HOUR, cost="0.000000000001")

    body = as_owner.get("/api/v1/orgs/acme/balance/").json()
    assert body == {
        "mode": "prepaid",
        "prepaid_since": "2026-10-14T09:00:00Z",
        "credited": "10.000000000000",
        "usage": "0.000000000001",
        "balance": "9.999999999999",
    }
    day = HOUR.date()
    ledger = as_owner.get(
        "/api/v1/orgs/acme/ledger/", {"from": str(day), "to": str(day + dt.timedelta(days=1))}
    ).json()
    assert ledger["closing"] == "-0.000000000001"  # the top-up is today, after this range
    assert ledger["rows"] == [
        {
            "kind": "usage",
            "at": "2026-10-14T00:00:00Z",
            "amount": "-0.000000000001",
            "description": "Usage",
            "reference": "",
            "balance": "-0.000000000001",
        }
    ]
    # The default range is this month: it holds the top-up.
    default = as_owner.get("/api/v1/orgs/acme/ledger/").json()
    assert [row["kind"] for row in default["rows"]] == ["topup"]


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2026-10-02", "to": "2026-10-01"},
        {"from": "2025-01-01", "to": "2026-10-01"},
        {"from": "yesterday"},
        {"to": "2026-13-01"},
    ],
)
def test_a_bad_ledger_range_is_a_400(as_owner, org, query) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.get("/api/v1/orgs/acme/ledger/", query)
    assert response.status_code == 400
    assert set(response.json()) <= {"from", "to"}
