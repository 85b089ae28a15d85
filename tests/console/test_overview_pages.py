"""The console's overview, models and limits pages (``console.pages.overview``): every member
reads them, outsiders get 404; the figures come from the rollups, the catalog's one rule of what
an organisation may use, and the organisation's limits; another organisation's data never shows.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import alerts, spend
from billing.models import BudgetAlert, UsageRollup
from inference.models import CatalogModel, EngineKind, Visibility
from tenants.catalog import available_models_for_organization, model_names_for_organization
from tenants.models import Organization
from tests.billing.usage_data import add_rollup, make_key
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

EVERYONE = {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
SHUT = {"outsider": 404, "anonymous": 302}


def _this_hour() -> datetime:
    return timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _today() -> datetime:
    return _this_hour().replace(hour=0)


def _json_block(html: str, block_id: str) -> Any:
    match = re.search(rf'<script id="{block_id}" type="application/json">(.*?)</script>', html)
    assert match, f"no json_script block {block_id!r}"
    return json.loads(match.group(1))


def _other_orgs_usage() -> Organization:
    """An organisation with much more usage, a budget alert and a model of its own, none of
    which may show on acme's pages."""
    other = OrganizationFactory(name="Globex", slug="globex", monthly_spend_budget=Decimal(1))
    key = make_key(other, "globex-secret-key")
    add_rollup(key, _this_hour(), model="someone-elses-model", requests=999, cost="900")
    BudgetAlert.objects.create(
        organization=other,
        month=spend.current_month(),
        kind=BudgetAlert.Kind.SPEND,
        threshold_percent=100,
        used=Decimal(900),
        budget=Decimal(1),
    )
    return other


# --- who sees the pages ------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["", "models/", "limits/"])
def test_every_member_reads_the_pages_and_outsiders_get_404(assert_matrix, org, page):
    key = make_key(org)
    add_rollup(key, _this_hour(), requests=2, cost="0.5")
    CatalogModelFactory(name="pub-chat")
    assert_matrix(f"/orgs/acme/{page}", EVERYONE | SHUT)


@pytest.mark.parametrize("page", ["", "models/", "limits/"])
def test_anonymous_is_sent_to_sign_in(role_client, org, page):
    response = role_client("anonymous").get(f"/orgs/acme/{page}")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("page", ["", "models/", "limits/"])
def test_the_pages_are_read_only(role_client, org, page):
    """Nothing to send: a form POST is refused (405 for owners, 403 for weaker roles)."""
    assert role_client("owner").post(f"/orgs/acme/{page}").status_code in (403, 405)
    assert role_client("viewer").post(f"/orgs/acme/{page}").status_code == 403


@pytest.mark.parametrize(
    ("page", "section"), [("", "overview"), ("models/", "models"), ("limits/", "limits")]
)
def test_the_navigation_marks_the_page(role_client, org, page, section):
    response = role_client("viewer").get(f"/orgs/acme/{page}")
    assert response.context["section"] == section
    assert f'href="/orgs/acme/{page}" aria-current="page"' in response.content.decode()


# --- overview ----------------------------------------------------------------------------------
def test_the_overview_shows_month_to_date_spend_against_the_budget(role_client, org):
    org.monthly_spend_budget = Decimal("10.0000")
    org.monthly_token_budget = 1000
    org.save()
    key = make_key(org, "web-app")
    add_rollup(key, _this_hour(), model="tiny", requests=3, prompt=100, completion=50, cost="2.5")
    add_rollup(key, _this_hour(), model="big", requests=1, prompt=400, completion=200, cost="5")
    _other_orgs_usage()

    response = role_client("viewer").get("/orgs/acme/")

    assert response.status_code == 200
    budgets = response.context["budgets"]
    assert budgets.spend.used == Decimal("7.5")
    assert budgets.spend.budget == Decimal(10)
    assert budgets.spend.percent == Decimal("75.0")
    assert not budgets.spend.exhausted
    assert budgets.tokens.used == 750
    assert budgets.tokens.percent == Decimal("75.0")
    html = response.content.decode()
    assert 'id="live-month-spend" data-live="month_spend" data-format="fixed2">7.50<' in html
    assert "of 10.00 budget" in html
    assert (
        '<meter id="budget-spend-meter" data-follows="live-month-spend-raw" '
        'data-percent="budget-spend-percent" min="0" max="10" low="8" high="10" optimum="0" '
        'value="7.5">75.0%</meter>'
    ) in html
    assert 'id="budget-tokens-meter"' in html
    assert 'max="1000"' in html
    assert 'value="750"' in html
    assert 'id="month-requests">4<' in html
    # nothing of the other organisation
    assert "someone-elses-model" not in html
    assert "globex-secret-key" not in html
    assert "900.00" not in html


def test_an_overview_without_budgets_says_so_and_draws_no_meter(role_client, org):
    add_rollup(make_key(org), _this_hour(), requests=1, cost="1")
    html = role_client("member").get("/orgs/acme/").content.decode()
    assert "no monthly budget" in html
    assert "no token budget" in html
    assert "<meter" not in html


def test_a_used_up_budget_is_flagged(role_client, org):
    org.monthly_spend_budget = Decimal(2)
    org.save()
    add_rollup(make_key(org), _this_hour(), requests=1, cost="3")
    response = role_client("viewer").get("/orgs/acme/")
    assert response.context["budgets"].spend.exhausted
    assert response.context["budgets"].spend.percent == Decimal("150.0")
    assert "Budget used up" in response.content.decode()


def test_the_chart_holds_requests_and_tokens_per_day_for_the_last_30_days(role_client, org):
    key = make_key(org)
    today = _today()
    add_rollup(key, today + timedelta(hours=1), requests=4, errors=1, prompt=10, completion=20)
    add_rollup(key, today, model="m2", requests=1, prompt=5, completion=5)
    add_rollup(key, today - timedelta(days=3, hours=-5), requests=6, prompt=60, completion=6)
    add_rollup(key, today - timedelta(days=30), requests=100)  # day 31: outside the chart
    add_rollup(make_key(OrganizationFactory()), today, requests=50)  # another organisation

    html = role_client("viewer").get("/orgs/acme/").content.decode()

    assert 'data-chart="overview-requests-data"' in html
    assert 'data-chart="overview-tokens-data"' in html
    requests = _json_block(html, "overview-requests-data")
    tokens = _json_block(html, "overview-tokens-data")
    days = [int((today - timedelta(days=n)).timestamp()) for n in range(29, -1, -1)]
    assert requests["x"] == days == tokens["x"]
    assert requests["unit"] == "requests"
    assert tokens["unit"] == "tokens"
    values = {s["label"]: s["values"] for s in requests["series"]}
    assert values["Requests"][-1] == 5
    assert values["Errors"][-1] == 1
    assert values["Requests"][-4] == 6
    assert sum(values["Requests"]) == 11
    token_values = {s["label"]: s["values"] for s in tokens["series"]}
    assert token_values["Prompt tokens"][-1] == 15
    assert token_values["Completion tokens"][-1] == 25
    assert token_values["Prompt tokens"][-4] == 60
    # the table under the chart says the same
    assert f'<th scope="row">{today:%Y-%m-%d}</th><td class="num">5</td>' in html


def test_without_usage_the_chart_says_so(role_client, org):
    html = role_client("viewer").get("/orgs/acme/").content.decode()
    assert _json_block(html, "overview-requests-data")["x"] == []
    assert html.count("No usage this month.") == 2
    assert "No budget alert has fired." in html


def test_top_models_and_keys_by_cost_then_requests_and_bounded(role_client, org):
    hour = _this_hour()
    keys = [make_key(org, f"key-{n}") for n in range(7)]
    for n, key in enumerate(keys):
        # key-n spends n, on model-n; key-5 and key-6 spend the same, key-6 with more requests
        cost = str(min(n, 5))
        add_rollup(key, hour, model=f"model-{n}", requests=n + 1, prompt=n, cost=cost)
    gone = UsageRollup.objects.create(
        organization=org, api_key_id=uuid.uuid4(), hour=hour, model="model-0", cost=Decimal(9)
    )

    response = role_client("viewer").get("/orgs/acme/")

    models = response.context["top_models"]
    assert [row["model"] for row in models] == [f"model-{n}" for n in (0, 6, 5, 4, 3)]
    assert models[0]["cost"] == Decimal(9)  # the deleted key's usage still counts for its model
    top_keys = response.context["top_keys"]
    assert [row["api_key"].name if row["api_key"] else None for row in top_keys] == [
        None,
        "key-6",
        "key-5",
        "key-4",
        "key-3",
    ]
    assert top_keys[0]["api_key_id"] == gone.api_key_id
    html = response.content.decode()
    assert "a deleted key" in html
    assert keys[6].display in html
    assert "key-2" not in html  # only the top five


def test_budget_alerts_that_fired_are_listed(role_client, org):
    org.monthly_spend_budget = Decimal(10)
    org.save()
    key = make_key(org, "batch-job", monthly_token_budget=100)
    add_rollup(key, _this_hour(), requests=5, prompt=90, completion=20, cost="8.5")
    usage = spend.month_usage(
        month=spend.current_month(), org_ids=[str(org.pk)], keys=[(str(org.pk), str(key.pk))]
    )
    created = alerts.check(usage)  # how the ingest pipeline records them
    assert {(a.api_key_id, a.kind, a.threshold_percent) for a in created} == {
        (None, "spend", 80),
        (key.pk, "tokens", 80),
        (key.pk, "tokens", 100),
    }
    _other_orgs_usage()

    response = role_client("viewer").get("/orgs/acme/")

    shown = response.context["alerts"]
    assert {a.pk for a in shown} == {a.pk for a in created}
    html = response.content.decode()
    assert "Monthly spend of the organisation" in html
    assert "Monthly tokens of key batch-job" in html
    assert "8.50 USD" in html
    assert "900.00" not in html  # the other organisation's alert


def test_the_live_tiles_listen_on_the_organisations_websocket(role_client, org):
    html = role_client("viewer").get("/orgs/acme/").content.decode()
    section = html[html.index('<section id="overview-live"') :]
    assert section.index(f'data-ws-path="/ws/orgs/{org.pk}/usage/"') < section.index(">")
    for field in ("requests_per_second", "tokens_per_second", "month_spend", "month_tokens"):
        assert f'data-live="{field}"' in html
    assert "data-live-status" in html
    assert "<script>" not in html  # the page's script is a file (CSP)
    assert "console/overview.js" in html
    assert "vendor/uplot/uPlot.iife.min.js" in html


# --- models ------------------------------------------------------------------------------------
def test_the_models_page_lists_what_the_organisation_may_use_by_the_catalogs_rule(role_client, org):
    other = OrganizationFactory(slug="globex")
    chat = CatalogModelFactory(name="pub-chat", description="A chatty one.")
    CatalogModelFactory(
        name="embedder",
        engine_kind=EngineKind.VLLM,
        source_path="/models/minilm",
        engine_args={"task": "embed"},
        context_length=512,
        price_input_per_mtok=Decimal("0.000150"),
        price_output_per_mtok=Decimal(0),
    )
    CatalogModelFactory(
        name="upstream-x",
        engine_kind=EngineKind.OPENAI,
        engine_args={},
        upstream_base_url="http://upstream.test/v1",
        upstream_model="x",
    )
    CatalogModelFactory(
        name="gguf-chat", engine_kind="llamacpp", source_path="/models/x.gguf", engine_args={}
    )
    mine = CatalogModelFactory(name="acme-only", visibility=Visibility.RESTRICTED)
    mine.organizations.add(org)
    secret = CatalogModelFactory(name="globex-only", visibility=Visibility.RESTRICTED)
    secret.organizations.add(other)
    CatalogModelFactory(name="old-model", status=CatalogModel.Status.DISABLED)
    ModelAliasFactory(name="gpt-4", target=chat)
    ModelAliasFactory(name="globex-alias", target=secret)

    response = role_client("viewer").get("/orgs/acme/models/")

    rows = response.context["rows"]
    names = [row.model.name for row in rows]
    assert names == [m.name for m in available_models_for_organization(org)]
    assert names == model_names_for_organization(org)  # what the access snapshot allows
    assert names == ["acme-only", "embedder", "gguf-chat", "gpt-4", "pub-chat", "upstream-x"]
    html = response.content.decode()
    for hidden in ("globex-only", "globex-alias", "old-model"):
        assert hidden not in html
    by_name = {row.model.name: row for row in rows}
    assert [label for label, _ in by_name["pub-chat"].endpoints] == ["chat", "completions"]
    assert [label for label, _ in by_name["gpt-4"].endpoints] == ["chat", "completions"]
    assert [label for label, _ in by_name["embedder"].endpoints] == ["embeddings"]
    assert [label for label, _ in by_name["gguf-chat"].endpoints] == ["chat", "completions"]
    assert by_name["upstream-x"].endpoints is None
    assert "as the upstream server serves" in html
    assert (by_name["pub-chat"].price_input, by_name["pub-chat"].price_output) == ("0.50", "1.50")
    assert (by_name["embedder"].price_input, by_name["embedder"].price_output) == (
        "0.00015",
        "0.00",
    )
    assert "alias of <code>pub-chat</code>" in html
    assert "A chatty one." in html
    assert '<td class="num">4,096</td>' in html
    assert '<td class="num">512</td>' in html


def test_a_price_is_shown_exactly():
    from console.pages.overview import _price

    assert _price(Decimal("0.500000")) == "0.50"
    assert _price(Decimal("1234.5")) == "1,234.50"
    assert _price(Decimal("0.000001")) == "0.000001"
    assert _price(Decimal("100")) == "100.00"
    assert _price(Decimal("0")) == "0.00"


def test_without_models_the_page_says_so(role_client, org):
    secret = CatalogModelFactory(name="globex-only", visibility=Visibility.RESTRICTED)
    secret.organizations.add(OrganizationFactory())
    html = role_client("viewer").get("/orgs/acme/models/").content.decode()
    assert "No model is available" in html
    assert "globex-only" not in html


# --- limits ------------------------------------------------------------------------------------
def test_the_limits_page_shows_limits_budgets_and_the_months_use(role_client, org):
    org.requests_per_minute = 600
    org.tokens_per_minute = 120000
    org.max_concurrent_requests = None
    org.monthly_spend_budget = Decimal("50.0000")
    org.monthly_token_budget = 2000000
    org.plan = "premium"
    org.save()
    key = make_key(org)
    add_rollup(key, _this_hour(), requests=3, prompt=1000, completion=500, cost="12.345")
    _other_orgs_usage()

    response = role_client("viewer").get("/orgs/acme/limits/")

    html = response.content.decode()
    assert "600 requests" in html
    assert "120,000 tokens" in html
    concurrency = html[html.index("Concurrent requests") :]
    assert concurrency.index("no limit") < concurrency.index("</tr>")
    assert "Premium plan" in html
    budgets = response.context["budgets"]
    assert budgets.spend.used == Decimal("12.345")
    assert budgets.tokens.used == 1500
    spend_row = html[html.index('id="limits-spend"') : html.index('id="limits-tokens"')]
    for shown in ("50.00", "12.35", "24.7%"):
        assert shown in spend_row
    tokens_row = html[html.index('id="limits-tokens"') :]
    for shown in ("2,000,000", "1,500", "0.1%"):
        assert shown in tokens_row
    assert "900.00" not in html  # the other organisation's spend
    # read-only for tenants: no form, no link to change them
    assert "<form" not in html.split('<main id="main"')[1]
    assert "/admin/" not in html
    assert "Read-only" in html


def test_staff_see_where_limits_are_changed(role_client, org):
    html = role_client("staff").get("/orgs/acme/limits/").content.decode()
    assert f'href="/admin/tenants/organization/{org.pk}/change/"' in html
    assert "PUT /api/v1/orgs/acme/limits/" in html
    owner_html = role_client("owner").get("/orgs/acme/limits/").content.decode()
    assert "/admin/tenants/organization/" not in owner_html


def test_limits_without_any_limit(role_client, org):
    html = role_client("member").get("/orgs/acme/limits/").content.decode()
    assert html.count("no limit") == 3
    assert html.count("no budget") == 2
    assert "<meter" not in html


@pytest.mark.parametrize("page", ["", "models/", "limits/"])
def test_the_number_of_queries_does_not_grow_with_the_data(
    role_client, org, page, django_assert_max_num_queries
):
    """No query per key, model or alert: twenty of each cost what two do."""

    def seed(n: int) -> None:
        for _ in range(n):
            key = make_key(org, f"k{uuid.uuid4().hex[:6]}")
            add_rollup(key, _this_hour(), model=f"m{uuid.uuid4().hex[:6]}", cost="1")
            ModelAliasFactory(target=CatalogModelFactory())
            BudgetAlert.objects.create(
                organization=org,
                api_key=key,
                month=spend.current_month(),
                kind=BudgetAlert.Kind.SPEND,
                threshold_percent=80,
                used=Decimal(1),
                budget=Decimal(1),
            )

    client = role_client("viewer")
    seed(2)
    with CaptureQueriesContext(connection) as few:
        assert client.get(f"/orgs/acme/{page}").status_code == 200
    seed(18)
    with django_assert_max_num_queries(len(few)):
        assert client.get(f"/orgs/acme/{page}").status_code == 200
