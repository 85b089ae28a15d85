"""The usage API: /api/v1/orgs/<org>/usage/ and usage.csv, from the rollups, tenant-scoped."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.api import views
from tenants import services
from tenants.models import Role
from tests.billing.usage_data import add_rollup, make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/usage/"
CSV_URL = "/api/v1/orgs/acme/usage.csv"
DAY1 = datetime(2026, 3, 1, tzinfo=UTC)
RANGE = {"from": "2026-03-01", "to": "2026-03-03"}


@pytest.fixture
def usage(org):
    """Rollups of two keys and two models over two days, plus rows that must never show: one
    outside the range and one of another organisation."""
    a, b = make_key(org, "alpha"), make_key(org, "=HYPERLINK(1)")
    rows = [
        add_rollup(
            a,
            DAY1.replace(hour=1),
            model="m1",
            requests=3,
            prompt=30,
            completion=3,
            cached=10,
            cost="0.000030000001",
        ),
        add_rollup(a, DAY1.replace(hour=1), model="m2", requests=1, errors=1, prompt=5, cost="0"),
        add_rollup(
            b, DAY1.replace(hour=7), model="m1", requests=2, prompt=20, completion=20, cost="1.5"
        ),
        add_rollup(
            a,
            DAY1.replace(day=2, hour=23),
            model="m1",
            requests=4,
            errors=2,
            prompt=40,
            completion=4,
            cost="0.25",
        ),
    ]
    add_rollup(a, DAY1.replace(day=3), model="m1", requests=100, cost="100")  # `to` is exclusive
    add_rollup(make_key(OrganizationFactory()), DAY1.replace(hour=1), requests=1000, cost="9")
    return {"keys": (a, b), "rows": rows}


def _sum(rows, field):
    return sum(getattr(r, field) for r in rows)


def test_daily_usage_with_totals(as_owner, usage):
    rows = usage["rows"]
    response = as_owner.get(URL, RANGE)

    assert response.status_code == 200
    body = response.json()
    assert (body["organization"], body["granularity"], body["group_by"]) == ("acme", "day", [])
    assert (body["from"], body["to"]) == ("2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z")
    assert [r["start"] for r in body["rows"]] == ["2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"]
    first_day = [r for r in rows if r.hour.day == 1]
    day1 = body["rows"][0]
    assert day1["requests"] == _sum(first_day, "requests")
    assert day1["errors"] == _sum(first_day, "errors")
    assert day1["total_tokens"] == _sum(first_day, "prompt_tokens") + _sum(
        first_day, "completion_tokens"
    )
    assert Decimal(day1["cost"]) == _sum(first_day, "cost")
    assert (day1["api_key"], day1["model"]) == (None, None)
    totals = body["totals"]
    assert totals["requests"] == _sum(rows, "requests")
    assert totals["cached_tokens"] == _sum(rows, "cached_tokens")
    assert totals["cost"] == f"{_sum(rows, 'cost'):.12f}"  # a decimal string, never a float


def test_hourly_usage_by_key_and_model(as_owner, usage):
    response = as_owner.get(URL, RANGE | {"granularity": "hour", "group_by": "model,key"})

    body = response.json()
    assert body["group_by"] == ["key", "model"]
    got = [
        (r["start"], r["api_key"], r["api_key_name"], r["model"], r["requests"])
        for r in body["rows"]
    ]
    expected = sorted(
        (
            r.hour.isoformat().replace("+00:00", "Z"),
            str(r.api_key_id),
            r.api_key.name,
            r.model,
            r.requests,
        )
        for r in usage["rows"]
    )
    assert sorted(got) == expected


def test_every_member_and_staff_read_usage_outsiders_do_not_see_it(
    usage, as_owner, as_viewer, as_member, as_staff, as_outsider, anonymous
):
    for client in (as_owner, as_viewer, as_member, as_staff):
        assert client.get(URL, RANGE).status_code == 200
        assert client.get(CSV_URL, RANGE).status_code == 200
    assert as_outsider.get(URL, RANGE).status_code == 404
    assert as_outsider.get(CSV_URL, RANGE).status_code == 404
    assert anonymous.get(URL, RANGE).status_code in (401, 403)
    assert anonymous.get(CSV_URL, RANGE).status_code in (401, 403)
    assert as_owner.get("/api/v1/orgs/no-such-org/usage/").status_code == 404


def test_an_api_key_with_management_read_reads_its_own_organisation_only(org, owner, usage):
    _, secret = services.api_key_create(
        organization=org,
        name="k",
        created_by=owner,
        actor_role=Role.OWNER,
        scopes=["management:read"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(URL, RANGE).status_code == 200
    other = OrganizationFactory()
    assert client.get(f"/api/v1/orgs/{other.slug}/usage/", RANGE).status_code == 404


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"from": "yesterday"}, "from", "format"),
        ({"from": "2026-03-01T10:30:00Z"}, "from", "whole hour"),
        ({"to": "2026-03-01T10:00:01Z", "from": "2026-03-01"}, "to", "whole hour"),
        ({"from": "2026-03-02", "to": "2026-03-02"}, "to", "after"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "to", "after"),
        ({"from": "2026-01-01", "to": "2026-02-02", "granularity": "hour"}, "to", "31 days"),
        ({"from": "2025-01-01", "to": "2026-01-03"}, "to", "366 days"),
        ({"granularity": "week"}, "granularity", "not a valid choice"),
        ({"group_by": "key,colour"}, "group_by", "colour"),
        ({"format": "xml"}, "format", "not a valid choice"),
    ],
)
def test_bad_queries_are_400_with_a_message_on_the_field(as_owner, org, params, field, message):
    response = as_owner.get(URL, params)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert message in " ".join(response.json()[field])


def test_bad_query_of_the_csv_export_is_json_even_when_csv_is_asked_for(as_owner, org):
    response = as_owner.get(CSV_URL, {"from": "nope"}, HTTP_ACCEPT="text/csv")
    assert response.status_code == 400
    assert "from" in response.json()


def test_offsets_are_converted_to_utc(as_owner, usage):
    # 02:00+01:00 is 01:00Z: the first hour with usage is inside.
    response = as_owner.get(
        URL,
        {"from": "2026-03-01T02:00:00+01:00", "to": "2026-03-01T02:00:00Z", "granularity": "hour"},
    )
    body = response.json()
    assert body["from"] == "2026-03-01T01:00:00Z"
    assert [r["start"] for r in body["rows"]] == ["2026-03-01T01:00:00Z"]


def test_default_range_is_the_current_month(as_owner, org):
    key = make_key(org)
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    this_hour = add_rollup(key, now, requests=2, cost="0.5")
    add_rollup(key, now.replace(day=1, hour=0) - timedelta(hours=1), requests=7)  # last month

    body = as_owner.get(URL).json()

    assert body["from"] == now.replace(day=1, hour=0).isoformat().replace("+00:00", "Z")
    assert body["totals"]["requests"] == this_hour.requests


def test_csv_export(as_owner, usage):
    response = as_owner.get(CSV_URL, RANGE | {"group_by": "key,model"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="usage-acme-20260301T00-20260303T00.csv"'
    )
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert lines[0] == [
        "start",
        "api_key",
        "api_key_name",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "total_tokens",
        "cost",
    ]
    assert len(lines) == 1 + len(usage["rows"])
    by_name = {line[2]: line for line in lines[1:]}
    # A key name a spreadsheet would run as a formula is quoted; money is a plain decimal string.
    assert by_name["'=HYPERLINK(1)"][10] == "1.500000000000"
    costs = sorted(Decimal(line[10]) for line in lines[1:])
    assert costs == sorted(r.cost for r in usage["rows"])


def test_format_csv_on_the_report_is_the_same_export(as_owner, usage):
    params = RANGE | {"group_by": "model"}
    export = b"".join(as_owner.get(CSV_URL, params).streaming_content)
    report = as_owner.get(URL, params | {"format": "csv"})
    assert report["Content-Type"] == "text/csv; charset=utf-8"
    assert b"".join(report.streaming_content) == export


def test_tiny_costs_are_never_written_in_exponent_notation(as_owner, org):
    add_rollup(make_key(org), DAY1, cost="0.000000000001")
    body = as_owner.get(URL, RANGE).json()
    assert body["totals"]["cost"] == "0.000000000001"
    lines = b"".join(as_owner.get(CSV_URL, RANGE).streaming_content).decode().splitlines()
    assert lines[1].endswith(",0.000000000001")


def test_too_many_rows_for_json_is_a_400_pointing_at_the_csv(as_owner, usage, monkeypatch):
    monkeypatch.setattr(views, "MAX_JSON_ROWS", 1)
    response = as_owner.get(URL, RANGE)
    assert response.status_code == 400
    assert "usage.csv" in response.json()["detail"]
    assert as_owner.get(CSV_URL, RANGE).status_code == 200
