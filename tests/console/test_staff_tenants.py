"""Operator console: Tenants (``console.pages.staff_tenants``, ``billing.tenant_usage``).

Staff only on every view and action (anonymous: sign in; any signed-in non-staff, members of the
organisation included: 404); the list's figures are the month's rollups summed independently
here; search, each sort and pages; the list's number of queries does not grow with the number of
organisations; every write goes through the service with the staff member as the actor (audited)
and reaches the gateway's access snapshot (read back through the gateway's own ``AccessCache``).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing import spend
from billing.models import UsageRollup
from inference.serving.access import AccessCache
from inference.serving.errors import ApiError
from tenants import services, snapshot
from tenants.models import ApiKey, AuditEvent, Organization, Role
from tests.billing.usage_data import make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

LIST = "/staff/tenants/"
NON_STAFF = ("owner", "admin", "member", "viewer", "outsider")


def _page_url(slug: str = "acme", tail: str = "") -> str:
    return f"/staff/tenants/{slug}/{tail}"


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


def _month_start():  # type: ignore[no-untyped-def]
    return spend.month_range(spend.current_month())[0]


def _usage(org: Organization, *, seed: int, rows: int = 3) -> None:
    """Rollup rows of the current month over two keys and two models, and rows of the month
    before (which must not count)."""
    start = _month_start()
    keys = [make_key(org, "a"), make_key(org, "b")]
    objs = []
    for i in range(rows):
        for model in ("llama", "qwen"):
            for hour in (start + timedelta(hours=i), start - timedelta(hours=i + 1)):
                objs.append(
                    UsageRollup(
                        organization_id=org.pk,
                        api_key_id=keys[i % 2].pk,
                        hour=hour,
                        model=model,
                        requests=seed * 3 + i + 1,
                        prompt_tokens=seed * 101 + i,
                        completion_tokens=seed * 37 + 2 * i,
                        cost=Decimal(seed * 1000 + i) / Decimal(10**9) + Decimal("0.000000000007"),
                    )
                )
    UsageRollup.objects.bulk_create(objs)


def _expected(org: Organization) -> dict[str, Any]:
    """The org's sums over this month's rollups, computed here from the rows themselves."""
    start, end = spend.month_range(spend.current_month())
    rows = UsageRollup.objects.filter(organization_id=org.pk, hour__gte=start, hour__lt=end)
    requests = tokens = 0
    cost = Decimal(0)
    for row in rows:
        requests += row.requests
        tokens += row.prompt_tokens + row.completion_tokens
        cost += row.cost
    return {"requests": requests, "tokens": tokens, "spend": cost}


def _rows(html: str) -> list[dict[str, str]]:
    """The list's rows: slug and the data-value of each figure."""
    body = re.search(r'<table id="tenants-table">.*?<tbody>(.*?)</tbody>', html, re.S)
    if body is None:
        return []
    out = []
    for row in re.findall(
        r'<tr id="tenant-[^"]*" data-slug="([^"]*)">(.*?)</tr>', body.group(1), re.S
    ):
        slug, cells = row
        values = re.findall(r'data-value="([^"]*)"', cells)
        out.append({"slug": slug, "requests": values[0], "tokens": values[1], "spend": values[2]})
    return out


def _slugs(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200
    return [row["slug"] for row in _rows(response.content.decode())]


def _text(response) -> str:  # type: ignore[no-untyped-def]
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


# --- who may see them, and who may act -----------------------------------------------------------
@pytest.fixture
def key(org, owner) -> ApiKey:  # type: ignore[no-untyped-def]
    return services.api_key_create(
        organization=org, name="prod", created_by=owner, actor_role=Role.OWNER
    )[0]


@pytest.mark.parametrize(
    "tail",
    ["", "status/?status=suspended", "KEY"],
    ids=["tenant", "status-confirmation", "key-revoke-confirmation"],
)
def test_only_staff_see_the_tenant_pages(tail, key, role_client) -> None:  # type: ignore[no-untyped-def]
    url = _page_url(tail=f"keys/{key.pk}/revoke/" if tail == "KEY" else tail)
    for role in NON_STAFF:
        assert role_client(role).get(url).status_code == 404, role
    anonymous = role_client("anonymous").get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/")
    assert role_client("staff").get(url).status_code == 200


def test_only_staff_see_the_list(org, role_client) -> None:  # type: ignore[no-untyped-def]
    for role in NON_STAFF:
        assert role_client(role).get(LIST).status_code == 404, role
    anonymous = role_client("anonymous").get(LIST)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/")
    assert role_client("staff").get(LIST).status_code == 200


def _actions(key: ApiKey) -> list[tuple[str, dict[str, str]]]:
    return [
        (_page_url(tail="limits/"), {"requests_per_minute": "7"}),
        (_page_url(tail="plan/"), {"plan": "premium"}),
        (_page_url(tail="status/"), {"status": "suspended", "confirm": "yes"}),
        (_page_url(tail=f"keys/{key.pk}/revoke/"), {"confirm": "yes"}),
    ]


def test_non_staff_cannot_act_not_even_the_organisations_owner(key, role_client, org) -> None:  # type: ignore[no-untyped-def]
    for url, data in _actions(key):
        for role in NON_STAFF:
            assert role_client(role).post(url, data).status_code == 404, (url, role)
        anonymous = role_client("anonymous").post(url, data)
        assert anonymous.status_code == 302
        assert anonymous["Location"].startswith("/login/")
    org.refresh_from_db()
    key.refresh_from_db()
    assert (org.requests_per_minute, org.plan, org.status) == (None, "standard", "active")
    assert key.revoked_at is None
    assert not AuditEvent.objects.filter(organization=org).exclude(action="api_key.created")


def test_staff_can_do_each_action(key, role_client, org, staff) -> None:  # type: ignore[no-untyped-def]
    client = role_client("staff")
    for url, data in _actions(key):
        response = client.post(url, data)
        assert response.status_code == 302, url
        assert response["Location"] == _page_url()
    org.refresh_from_db()
    key.refresh_from_db()
    assert (org.requests_per_minute, org.plan, org.status) == (7, "premium", "suspended")
    assert key.revoked_at is not None
    actions = set(
        AuditEvent.objects.filter(organization=org, actor=staff).values_list("action", flat=True)
    )
    assert actions == {
        "organization.updated",
        "organization.plan_changed",
        "organization.status_changed",
        "api_key.revoked",
    }


def test_the_actions_are_posts(staff_client, org) -> None:  # type: ignore[no-untyped-def]
    assert staff_client.get(_page_url(tail="limits/")).status_code == 405
    assert staff_client.get(_page_url(tail="plan/")).status_code == 405


def test_an_unknown_tenant_or_key_is_404(staff_client, org) -> None:  # type: ignore[no-untyped-def]
    assert staff_client.get(_page_url("nope")).status_code == 404
    other_key = make_key(OrganizationFactory(slug="other"))
    url = _page_url(tail=f"keys/{other_key.pk}/revoke/")
    assert staff_client.post(url, {"confirm": "yes"}).status_code == 404
    other_key.refresh_from_db()
    assert other_key.revoked_at is None


# --- the list: figures, search, sort, pages -------------------------------------------------------
@pytest.fixture
def tenants(db) -> list[Organization]:  # type: ignore[no-untyped-def]
    """Five organisations, four with usage (different sizes), one without any."""
    names = ["delta", "Alpha", "charlie", "bravo", "echo"]
    orgs = []
    for i, name in enumerate(names):
        org = OrganizationFactory(
            name=name.capitalize() if i else name,
            slug=f"t-{name.lower()}",
            created_at=_month_start() - timedelta(days=10 - i),
        )
        if name != "echo":
            _usage(org, seed=(i * 7) % 5 + 1, rows=i + 1)
        orgs.append(org)
    return orgs


def test_the_figures_are_the_months_rollups(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    rows = {row["slug"]: row for row in _rows(staff_client.get(LIST).content.decode())}
    assert set(rows) == {org.slug for org in tenants}
    for org in tenants:
        expected = _expected(org)
        row = rows[org.slug]
        assert int(row["requests"]) == expected["requests"]
        assert int(row["tokens"]) == expected["tokens"]
        assert Decimal(row["spend"]) == expected["spend"]
    echo = rows["t-echo"]  # no usage: zeros, not blanks
    assert (echo["requests"], echo["tokens"], Decimal(echo["spend"])) == ("0", "0", 0)


def test_the_list_shows_status_plan_and_billing_mode(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    services.organization_set_status(organization=tenants[0], status="suspended")
    services.organization_set_plan(organization=tenants[1], plan="premium")
    html = staff_client.get(LIST).content.decode()
    row = re.search(r'<tr id="tenant-t-delta".*?</tr>', html, re.S)
    assert row
    assert "Suspended" in row.group(0)
    assert "postpaid" in row.group(0)
    row = re.search(r'<tr id="tenant-t-alpha".*?</tr>', html, re.S)
    assert row
    assert "Premium" in row.group(0)
    assert "Active" in row.group(0)


def test_search_matches_name_or_slug_in_any_case(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    assert _slugs(staff_client.get(LIST, {"q": "ALPHA"})) == ["t-alpha"]
    assert _slugs(staff_client.get(LIST, {"q": "t-br"})) == ["t-bravo"]
    assert sorted(_slugs(staff_client.get(LIST, {"q": "t-"}))) == sorted(o.slug for o in tenants)
    response = staff_client.get(LIST, {"q": "zulu"})
    assert _slugs(response) == []
    assert "No organisation matches “zulu”" in _text(response)


def _expected_order(orgs: list[Organization], sort: str, descending: bool) -> list[str]:
    def value(org: Organization) -> Any:
        if sort == "name":
            return org.name.lower()
        if sort == "created":
            return org.created_at
        return _expected(org)[sort]

    ordered = sorted(orgs, key=lambda o: (value(o), o.slug), reverse=descending)
    return [o.slug for o in ordered]


@pytest.mark.parametrize("sort", ["name", "created", "requests", "tokens", "spend"])
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_each_sort_in_both_directions(staff_client, tenants, sort, descending) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(LIST, {"sort": f"{'-' if descending else ''}{sort}"})
    assert _slugs(response) == _expected_order(tenants, sort, descending)
    # The column's header says how it is sorted and links to the other direction.
    html = response.content.decode()
    direction = "descending" if descending else "ascending"
    assert f'aria-sort="{direction}"' in html
    flipped = sort if descending else f"-{sort}"
    assert f"sort={flipped}" in html


def test_the_default_sort_is_by_name(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    assert _slugs(staff_client.get(LIST)) == _expected_order(tenants, "name", False)


def test_an_unknown_sort_is_a_400_that_says_so(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(LIST, {"sort": "password"})
    assert response.status_code == 400
    assert "Select a valid choice" in _text(response)


def test_search_and_sort_together_and_htmx_gets_the_results_only(staff_client, tenants) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(
        LIST,
        {"q": "a", "sort": "-requests"},
        headers={"HX-Request": "true", "HX-Target": "tenants-results"},
    )
    html = response.content.decode()
    assert '<div id="tenants-results">' in html
    assert "<html" not in html
    matching = [o for o in tenants if "a" in o.name.lower() or "a" in o.slug]
    assert _slugs(response) == _expected_order(matching, "requests", True)


def test_pages_of_fifty(staff_client) -> None:  # type: ignore[no-untyped-def]
    Organization.objects.bulk_create(
        [Organization(name=f"Org {i:03d}", slug=f"org-{i:03d}") for i in range(60)]
    )
    first = staff_client.get(LIST)
    assert _slugs(first) == [f"org-{i:03d}" for i in range(50)]
    assert "60 organisations" in _text(first)
    assert "Page 1 of 2" in _text(first)
    second = staff_client.get(LIST, {"page": 2, "sort": "name"})
    assert _slugs(second) == [f"org-{i:03d}" for i in range(50, 60)]
    # The page links keep the sort.
    assert "sort=name&amp;page=1" in second.content.decode()
    # Sorted the other way, page 2 holds the first ten names.
    back = staff_client.get(LIST, {"page": 2, "sort": "-name"})
    assert _slugs(back) == [f"org-{i:03d}" for i in reversed(range(10))]


def _list_queries(client: Client, **params: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(LIST, params).status_code == 200
    return len(queries)


SORTS = (
    "name",
    "-name",
    "created",
    "-created",
    "requests",
    "-requests",
    "tokens",
    "spend",
    "-spend",
)


def test_the_number_of_queries_does_not_grow_with_the_organisations(
    staff_client, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        _usage(OrganizationFactory(slug=f"few-{i}"), seed=i + 1, rows=1)
    few = {sort: _list_queries(staff_client, sort=sort) for sort in SORTS}
    for i in range(70):  # more than a page
        _usage(OrganizationFactory(slug=f"many-{i}"), seed=i % 9 + 1, rows=1)
    for sort in SORTS:
        # The session, the user, the count, the page: by usage one statement with its figures;
        # by name or date the organisations, then their figures in one grouped query.
        with django_assert_max_num_queries(5):
            assert staff_client.get(LIST, {"sort": sort}).status_code == 200
        assert _list_queries(staff_client, sort=sort) == few[sort], sort
        assert _list_queries(staff_client, sort=sort, page="2") == few[sort], sort


def test_three_hundred_organisations_with_usage(staff_client) -> None:  # type: ignore[no-untyped-def]
    start = _month_start()
    orgs = Organization.objects.bulk_create(
        [Organization(name=f"Tenant {i:03d}", slug=f"tenant-{i:03d}") for i in range(300)]
    )
    keys = ApiKey.objects.bulk_create(
        [
            ApiKey(
                organization=org,
                name="k",
                prefix=f"p{i:05d}",
                last_four="abcd",
                secret_hash=f"{i:064d}",
            )
            for i, org in enumerate(orgs)
        ]
    )
    rows, expected = [], {}
    for i, (org, api_key) in enumerate(zip(orgs, keys, strict=True)):
        # Spend is not in the order of requests, so each sort has its own answer.
        spend_each = Decimal((i * 7919) % 300 + 1) / Decimal(1000)
        for h in range(3):
            rows.append(
                UsageRollup(
                    organization_id=org.pk,
                    api_key_id=api_key.pk,
                    hour=start + timedelta(hours=h),
                    model="m",
                    requests=i + 1,
                    prompt_tokens=(300 - i) * 10,
                    completion_tokens=1,
                    cost=spend_each,
                )
            )
        rows.append(  # last month: never counted
            UsageRollup(
                organization_id=org.pk,
                api_key_id=api_key.pk,
                hour=start - timedelta(hours=1),
                model="m",
                requests=10**6,
                prompt_tokens=10**6,
                cost=Decimal(1000),
            )
        )
        expected[org.slug] = (3 * (i + 1), 3 * ((300 - i) * 10 + 1), 3 * spend_each)
    UsageRollup.objects.bulk_create(rows)

    by_spend = sorted(expected, key=lambda slug: (expected[slug][2], slug), reverse=True)
    pages = [staff_client.get(LIST, {"sort": "-spend", "page": page}) for page in range(1, 7)]
    assert "300 organisations" in _text(pages[0])
    seen = [row for page in pages for row in _rows(page.content.decode())]
    assert [row["slug"] for row in seen] == by_spend
    for row in seen:
        requests, tokens, spend_total = expected[row["slug"]]
        assert (int(row["requests"]), int(row["tokens"])) == (requests, tokens)
        assert Decimal(row["spend"]) == spend_total
    by_tokens = sorted(expected, key=lambda slug: (expected[slug][1], slug))
    assert _slugs(staff_client.get(LIST, {"sort": "tokens"})) == by_tokens[:50]


# --- the tenant's page ----------------------------------------------------------------------------
def test_the_tenant_page_shows_limits_members_keys_usage_and_audit(
    staff_client, org, owner, viewer, key, staff
) -> None:  # type: ignore[no-untyped-def]
    services.organization_set_limits(
        organization=org, actor=staff, requests_per_minute=60, monthly_spend_budget=Decimal("5")
    )
    _usage(org, seed=3, rows=2)
    response = staff_client.get(_page_url())
    assert response.status_code == 200
    html = response.content.decode()
    text = _text(response)
    # Limits as set, and the form filled with them.
    assert re.search(r"Requests per minute</th><td class=\"num\">60<", html)
    assert 'name="requests_per_minute" value="60"' in html
    assert 'name="monthly_spend_budget" value="5.0000"' in html
    # Members and keys.
    assert 'data-username="owner"' in html
    assert 'data-username="viewer"' in html
    assert key.display in text
    assert "prod" in text
    assert f'id="key-{key.pk}" data-status="active"' in html
    # Usage by model: each model's sums are the rollups'.
    start, end = spend.month_range(spend.current_month())
    for model in ("llama", "qwen"):
        rows = UsageRollup.objects.filter(
            organization_id=org.pk, model=model, hour__gte=start, hour__lt=end
        )
        total = sum((row.cost for row in rows), Decimal(0))
        requests = sum(row.requests for row in rows)
        row_html = re.search(rf'<tr data-model="{model}">(.*?)</tr>', html, re.S)
        assert row_html is not None
        assert f'<td class="num">{requests}</td>' in row_html.group(1)
        assert Decimal(re.findall(r'data-value="([^"]*)"', row_html.group(1))[0]) == total
    # The audit log's latest records, with a link to all of them.
    assert 'data-action="organization.updated"' in html
    assert 'data-action="api_key.created"' in html
    assert "/orgs/acme/audit/" in html


def test_a_limit_edit_is_saved_audited_and_published(
    staff_client, org, staff, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            _page_url(tail="limits/"),
            {"requests_per_minute": "120", "tokens_per_minute": "", "monthly_spend_budget": "25.5"},
        )
    assert response.status_code == 302
    org.refresh_from_db()
    assert org.requests_per_minute == 120
    assert org.monthly_spend_budget == Decimal("25.5")
    event = AuditEvent.objects.get(organization=org, action="organization.updated")
    assert event.actor == staff
    assert event.before == {"requests_per_minute": None, "monthly_spend_budget": None}
    assert event.after["requests_per_minute"] == 120
    assert Decimal(event.after["monthly_spend_budget"]) == Decimal("25.5")
    record = json.loads(redis_client.get(snapshot.org_record_name(org.id)))
    assert record["limits"]["requests_per_minute"] == 120
    assert record["limits"]["monthly_spend_budget"] == "25.5000"
    # The page then shows the new values; clearing one removes the limit.
    assert "Saved the limits of Acme." in _text(staff_client.get(_page_url()))
    staff_client.post(
        _page_url(tail="limits/"), {"requests_per_minute": "", "monthly_spend_budget": "25.5"}
    )
    org.refresh_from_db()
    assert org.requests_per_minute is None


def test_an_unchanged_limits_form_records_nothing(staff_client, org) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.post(_page_url(tail="limits/"), {})
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(organization=org)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("requests_per_minute", "-1", "Ensure this value is greater than or equal to 0."),
        ("tokens_per_minute", "lots", "Enter a whole number."),
        ("max_concurrent_requests", str(2**31), "Ensure this value is less than or equal to"),
        ("monthly_spend_budget", "1.23456", "Ensure that there are no more than 4 decimal places."),
        ("monthly_spend_budget", "-5", "Ensure this value is greater than or equal to 0."),
    ],
)
def test_invalid_limits_are_a_400_with_the_message_by_the_field(
    staff_client, org, field, value, message
) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.post(_page_url(tail="limits/"), {field: value})
    assert response.status_code == 400
    html = response.content.decode()
    # The error is inside the field's own block, after its input.
    block = re.search(
        rf'<input[^>]*name="{field}"[^>]*>(.*?)</div>\s*(?:<div class="field">|<p)', html, re.S
    )
    assert block is not None
    assert message in unescape(block.group(1))
    org.refresh_from_db()
    assert getattr(org, field) is None
    assert not AuditEvent.objects.filter(organization=org)


def test_plan_change_is_audited_and_an_unknown_plan_is_a_400(staff_client, org, staff) -> None:  # type: ignore[no-untyped-def]
    assert staff_client.post(_page_url(tail="plan/"), {"plan": "free"}).status_code == 302
    org.refresh_from_db()
    assert org.plan == "free"
    event = AuditEvent.objects.get(organization=org, action="organization.plan_changed")
    assert (event.actor, event.before, event.after) == (
        staff,
        {"plan": "standard"},
        {"plan": "free"},
    )
    response = staff_client.post(_page_url(tail="plan/"), {"plan": "platinum"})
    assert response.status_code == 400
    assert "Select a valid choice. platinum is not one of the available choices." in _text(response)
    org.refresh_from_db()
    assert org.plan == "free"


def _authorize(secret: str) -> Any:
    """Authorise ``secret`` the way the gateway does: its ``AccessCache`` over the snapshot in
    Redis (a fresh cache, as a replica would after the invalidation message)."""

    async def run() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        cache = AccessCache(
            client, prefix=settings.VLINDERS_REDIS_PREFIX, pepper=settings.VLINDERS_KEY_PEPPER
        )
        try:
            return await cache.authorize(f"Bearer {secret}")
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.fixture
def published_key(org, owner, redis_client, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """A key of ``org`` with its snapshot records published, and its secret."""
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = services.api_key_create(
            organization=org, name="prod", created_by=owner, actor_role=Role.OWNER
        )
        services.organization_set_limits(organization=org, requests_per_minute=1000)
    assert _authorize(secret).org_slug == "acme"
    return key, secret


def test_suspend_asks_first_then_suspends_audits_and_the_gateway_refuses(
    staff_client, org, staff, published_key, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    _key, secret = published_key
    url = _page_url(tail="status/")
    # Without the confirmation: the question, nothing changed.
    asked = staff_client.post(url, {"status": "suspended"})
    assert asked.status_code == 200
    assert "Suspend Acme?" in _text(asked)
    assert 'name="confirm" value="yes"' in asked.content.decode()
    org.refresh_from_db()
    assert org.status == "active"
    with django_capture_on_commit_callbacks(execute=True):
        done = staff_client.post(url, {"status": "suspended", "confirm": "yes"})
    assert done.status_code == 302
    org.refresh_from_db()
    assert org.status == "suspended"
    event = AuditEvent.objects.get(organization=org, action="organization.status_changed")
    assert (event.actor, event.before, event.after) == (
        staff,
        {"status": "active"},
        {"status": "suspended"},
    )
    with pytest.raises(ApiError) as refused:
        _authorize(secret)
    assert refused.value.status == 401
    assert refused.value.code == "organization_suspended"
    # And back.
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(url, {"status": "active", "confirm": "yes"})
    org.refresh_from_db()
    assert org.status == "active"
    assert (
        AuditEvent.objects.filter(organization=org, action="organization.status_changed").count()
        == 2
    )
    assert _authorize(secret).org_slug == "acme"


def test_an_unknown_status_is_a_400(staff_client, org) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.post(_page_url(tail="status/"), {"status": "deleted", "confirm": "yes"})
    assert response.status_code == 400
    assert "Select a valid choice" in _text(response)
    org.refresh_from_db()
    assert org.status == "active"


def test_key_revoke_asks_first_then_revokes_audits_and_the_gateway_refuses(
    staff_client, org, staff, published_key, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    key, secret = published_key
    url = _page_url(tail=f"keys/{key.pk}/revoke/")
    asked = staff_client.post(url, {})
    assert asked.status_code == 200
    assert "Revoke “prod”?" in _text(asked)
    key.refresh_from_db()
    assert key.revoked_at is None
    with django_capture_on_commit_callbacks(execute=True):
        done = staff_client.post(url, {"confirm": "yes"})
    assert done.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(organization=org, action="api_key.revoked")
    assert event.actor == staff
    assert event.target_id == str(key.pk)
    with pytest.raises(ApiError) as refused:
        _authorize(secret)
    assert refused.value.status == 401
    assert refused.value.code == "revoked_api_key"
    # The page shows it revoked, without a revoke button; revoking again records nothing.
    html = staff_client.get(_page_url()).content.decode()
    assert f'id="key-{key.pk}" data-status="revoked"' in html
    assert f"keys/{key.pk}/revoke/" not in html
    staff_client.post(url, {"confirm": "yes"})
    assert AuditEvent.objects.filter(organization=org, action="api_key.revoked").count() == 1


def _tenant_queries(client: Client, **params: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(_page_url(), params).status_code == 200
    return len(queries)


def test_the_tenant_page_pages_its_keys_in_a_constant_number_of_queries(
    staff_client, org, owner, member
) -> None:  # type: ignore[no-untyped-def]
    def create(name: str, user: Any) -> ApiKey:
        return services.api_key_create(
            organization=org, name=name, created_by=user, actor_role=Role.OWNER
        )[0]

    create("first", owner)
    few = _tenant_queries(staff_client)
    keys = [create(f"key {i:02d}", member if i % 2 else owner) for i in range(60)]
    assert _tenant_queries(staff_client) == few
    first = staff_client.get(_page_url()).content.decode()
    assert "61 keys, newest first." in _text(staff_client.get(_page_url()))
    assert f'id="key-{keys[-1].pk}"' in first
    assert "/staff/tenants/acme/?keys_page=2#keys" in first
    second = staff_client.get(_page_url(), {"keys_page": 2}).content.decode()
    assert second.count('<tr id="key-') == 11
    assert 'id="key-' + str(keys[0].pk) + '"' in second


def test_the_audit_rows_name_people_and_link_to_the_whole_log(
    staff_client, org, owner, key, staff
) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(_page_url())
    row = re.search(r'<tr data-action="api_key.created">.*?</tr>', response.content.decode(), re.S)
    assert row is not None
    assert "created_by:</span> owner" in row.group(0)
    assert "<strong>prod</strong>" in row.group(0)
    # Members are managed on the organisation's own members page, where staff act as owners.
    assert "/orgs/acme/members/" in response.content.decode()
    assert staff_client.get("/orgs/acme/members/").status_code == 200
    assert staff_client.get("/orgs/acme/audit/").status_code == 200


def test_the_confirmation_for_a_revoked_key_says_so(staff_client, org, key, staff) -> None:  # type: ignore[no-untyped-def]
    services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=staff)
    response = staff_client.get(_page_url(tail=f"keys/{key.pk}/revoke/"))
    assert response.status_code == 200
    assert "is already revoked" in _text(response)
    assert 'name="confirm"' not in response.content.decode()
