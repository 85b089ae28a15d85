"""The console's Usage page (``/orgs/<slug>/usage/``): a bounded range of UTC days per day or
hour, optionally split by model or key, as a chart, the chart's table and a table per model or
key, from the rollups only; the CSV export is the API's ``usage.csv`` of the same view. And the
platform's live page for staff."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.utils import timezone

from console.pages import usage as page
from tests.billing.usage_data import add_event, add_rollup, make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/usage/"
EVERYONE = {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
SHUT = {"outsider": 404, "anonymous": 302}
# A past range with nothing live: January 2026, and three days of it.
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def _chart(response) -> dict:  # type: ignore[no-untyped-def]
    found = re.search(
        r'<script id="usage-chart-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert found, "the page carries the chart's data"
    return json.loads(unescape(found.group(1)))


def _series(chart: dict) -> dict[str, list]:
    return {series["label"]: series["values"] for series in chart["series"]}


def test_every_member_sees_the_usage_page_and_outsiders_get_404(assert_matrix):
    assert_matrix(URL, EVERYONE | SHUT)
    assert_matrix(URL + "?from=2026-01-01&to=2026-01-03&group_by=key", EVERYONE | SHUT)


def test_the_current_month_by_day_with_the_live_panel(as_viewer, org):
    key = make_key(org, "prod")
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    mine = add_rollup(key, now, model="tiny-model", requests=7, errors=1, prompt=30, cost="1.25")
    add_rollup(make_key(OrganizationFactory()), now, model="someone-elses-model", requests=99)

    response = as_viewer.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert "someone-elses-model" not in html
    totals = response.context["totals"]
    assert (totals["requests"], totals["errors"], totals["cost"]) == (7, 1, Decimal("1.25"))
    today = now.replace(hour=0)
    chart = _chart(response)
    assert chart["unit"] == "requests"
    first, next_month = today.replace(day=1), (today.replace(day=28) + timedelta(days=4))
    last = next_month.replace(day=1) - timedelta(days=1)
    assert chart["x"][0] == int(first.timestamp())  # the whole month, days to come as zeros
    assert chart["x"][-1] == int(last.timestamp())
    values = [0] * len(chart["x"])
    values[today.day - 1] = mine.requests
    assert _series(chart) == {"Requests": values}
    assert [line["cells"][0] for line in response.context["table"]] == ["7"]
    assert 'id="usage-table"' in html
    assert 'data-chart="usage-chart-data"' in html
    # Live: the organisation's websocket and the fields console.js fills in.
    assert f'data-ws-path="/ws/orgs/{org.pk}/usage/"' in html
    for field in ("requests_per_second", "tokens_per_second", "month_spend"):
        assert f'data-live="{field}"' in html
    assert response.context["month_spend"] == Decimal("1.25")


def test_a_past_range_has_no_live_panel(as_owner, org):
    add_rollup(make_key(org), JAN + timedelta(days=4, hours=3), requests=3)
    response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-31"})
    assert response.context["totals"]["requests"] == 3
    assert "data-ws-path" not in response.content.decode()


def test_per_hour_every_hour_of_the_range_is_on_the_chart(as_owner, org):
    key = make_key(org)
    add_rollup(key, JAN + timedelta(hours=5), requests=2)
    add_rollup(key, JAN + timedelta(days=1, hours=23), requests=4, model="m2")
    response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-02", "granularity": "hour"})
    chart = _chart(response)
    assert len(chart["x"]) == 48
    assert chart["x"][5] - chart["x"][0] == 5 * 3600
    values = _series(chart)["Requests"]
    assert (values[5], values[47], sum(values)) == (2, 4, 6)
    labels = [line["label"] for line in response.context["table"]]
    assert labels == ["2026-01-02 23:00", "2026-01-01 05:00"]  # newest first, empty hours left out


def test_split_by_model_every_model_is_a_series_and_a_row(as_owner, org):
    key = make_key(org)
    add_rollup(key, JAN, model="big", requests=1, prompt=900, completion=100, cost="0.5")
    add_rollup(key, JAN + timedelta(days=1), model="small", requests=5, prompt=10, cost="0.01")
    response = as_owner.get(
        URL, {"from": "2026-01-01", "to": "2026-01-03", "group_by": "model", "metric": "tokens"}
    )
    chart = _chart(response)
    assert chart["unit"] == "tokens"
    assert _series(chart) == {"big": [1000, 0, 0], "small": [0, 10, 0]}
    # The table per model: the most tokens first, every metric.
    rows = [
        (row["model"], row["requests"], row["total_tokens"]) for row in response.context["groups"]
    ]
    assert rows == [("big", 1, 1000), ("small", 5, 10)]
    # The chart's table: one column per model and the bucket's total.
    assert response.context["series_labels"] == ["big", "small"]
    assert [line["cells"] for line in response.context["table"]] == [
        ["0", "10", "10"],
        ["1,000", "0", "1,000"],
    ]


def test_split_by_key_the_top_keys_are_series_and_the_rest_is_other(as_owner, org):
    keys = [make_key(org, f"key-{i}") for i in range(page.TOP_SERIES + 3)]
    for i, key in enumerate(keys):  # key-0 has the most requests, key-9 the least
        add_rollup(key, JAN, requests=100 - i, cost="0.000001")
        add_rollup(key, JAN + timedelta(days=2), requests=1, cost=f"{i}.5")
    response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-03", "group_by": "key"})

    series = _series(_chart(response))
    top = [f"key-{i} …abcd" for i in range(page.TOP_SERIES)]
    assert list(series) == [*top, "Other"]
    assert series["key-0 …abcd"] == [100, 0, 1]
    # "Other": the bucket's total less the top keys, exactly.
    assert series["Other"] == [93 + 92 + 91, 0, 3]
    assert response.context["other_count"] == 3
    assert "the 3 others are summed as “Other”" in response.content.decode()
    # Every key in the table per key, with the link to its requests.
    assert [row["label"] for row in response.context["groups"]] == [
        f"key-{i} …abcd" for i in range(10)
    ]
    assert f"/orgs/acme/requests/?key={keys[9].pk}" in response.content.decode()

    # Charting cost ranks the keys by cost: key-9 spent most.
    by_cost = as_owner.get(
        URL, {"from": "2026-01-01", "to": "2026-01-03", "group_by": "key", "metric": "cost"}
    )
    chart = _chart(by_cost)
    assert chart["unit"] == "USD"
    assert chart["series"][0] == {"label": "key-9 …abcd", "values": [0.000001, 0, 9.5]}
    assert by_cost.context["totals"]["cost"] == sum(
        (Decimal(f"{i}.5") + Decimal("0.000001") for i in range(10)), Decimal(0)
    )


def test_a_deleted_key_is_still_counted(as_owner, org):
    key = make_key(org, "gone")
    add_rollup(key, JAN, requests=2)
    key_id = key.pk
    key.delete()
    response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-01", "group_by": "key"})
    assert response.context["totals"]["requests"] == 2
    assert list(_series(_chart(response))) == [f"deleted key {str(key_id)[:8]}"]
    assert "a deleted key" in response.content.decode()


def test_the_csv_export_is_the_same_view_through_the_api(as_viewer, org):
    key = make_key(org, "prod")
    add_rollup(key, JAN + timedelta(hours=1), model="a", requests=2, cost="0.25")
    add_rollup(key, JAN + timedelta(days=2), model="b", requests=3, cost="0.5")
    add_rollup(key, JAN + timedelta(days=3), model="b", requests=100)  # after the range
    response = as_viewer.get(URL, {"from": "2026-01-01", "to": "2026-01-03", "group_by": "model"})
    link = unescape(re.search(r'id="usage-export" href="([^"]+)"', response.content.decode())[1])
    assert link == (
        "/api/v1/orgs/acme/usage.csv?from=2026-01-01&to=2026-01-04&granularity=day&group_by=model"
    )

    export = as_viewer.get(link)  # the console's session is enough

    assert export.status_code == 200
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [(r["start"], r["model"], r["requests"]) for r in rows] == [
        ("2026-01-01T00:00:00Z", "a", "2"),
        ("2026-01-03T00:00:00Z", "b", "3"),
    ]
    assert sum(int(r["requests"]) for r in rows) == response.context["totals"]["requests"]
    assert sum(Decimal(r["cost"]) for r in rows) == response.context["totals"]["cost"]


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"from": "2026-01-01", "to": "2026-02-01", "granularity": "hour"}, "to", "at most 31"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "to", "at most 366 days"),
        ({"from": "2026-01-05", "to": "2026-01-04"}, "to", "on or after the start"),
        ({"from": "2026-13-01"}, "from", "valid date"),
        ({"from": "1999-12-31"}, "from", "from 2000-01-01"),
        ({"to": "9999-12-31"}, "to", "to 2100-12-31"),
        ({"granularity": "minute"}, "granularity", "valid choice"),
        ({"group_by": "colour"}, "group_by", "valid choice"),
        ({"metric": "joy"}, "metric", "valid choice"),
    ],
)
def test_a_bad_view_is_a_400_with_the_reason_next_to_the_field(as_owner, query, field, message):
    response = as_owner.get(URL, query)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    html = response.content.decode()
    assert message in unescape(html)
    assert 'id="usage-chart"' not in html


def test_the_longest_ranges_are_accepted(as_owner, org):
    assert as_owner.get(URL, {"from": "2025-01-01", "to": "2026-01-01"}).status_code == 200
    month = {"from": "2026-01-01", "to": "2026-01-31", "granularity": "hour", "group_by": "key"}
    assert as_owner.get(URL, month).status_code == 200


def test_the_queries_do_not_grow_with_keys_or_days(as_owner, org, django_assert_max_num_queries):
    keys = [make_key(org, f"k{i}") for i in range(30)]
    for day in range(20):
        for key in keys:
            add_rollup(key, JAN + timedelta(days=day), requests=1)
    # Session, user, organisation, role, the ranking, the keys' names, two usage queries.
    with django_assert_max_num_queries(9):
        response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-31", "group_by": "key"})
    assert response.context["totals"]["requests"] == 600


def test_the_page_reads_the_rollups_not_the_events(as_owner, org):
    """Usage comes from the rollups only: an event whose rollup is not there is not counted."""
    add_event(make_key(org), JAN + timedelta(hours=2))
    response = as_owner.get(URL, {"from": "2026-01-01", "to": "2026-01-02"})
    assert response.context["totals"]["requests"] == 0
    assert "No usage in this range." in response.content.decode()


def test_the_default_range_is_this_utc_month(as_owner, org):
    response = as_owner.get(URL)
    query = response.context["query"]
    today = datetime.now(UTC).date()
    first = date(today.year, today.month, 1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    assert (query.first, query.last) == (first, last)
    assert (query.granularity, query.group, query.metric) == ("day", "", "requests")


def test_the_platform_page_is_for_staff(as_staff, as_owner):
    assert as_staff.get("/staff/usage/").status_code == 200
    assert as_owner.get("/staff/usage/").status_code == 404  # console.staff.staff_page


@pytest.mark.parametrize(
    "path", [URL, URL + "?from=2026-01-01&to=2026-01-02&group_by=key", "/orgs/acme/requests/"]
)
def test_no_inline_script_style_or_handlers(role_client, org, path):
    add_rollup(make_key(org), JAN, requests=1)
    add_event(make_key(org, "x"), timezone.now())
    for page_path in (path, "/orgs/acme/audit/"):
        html = role_client("owner").get(page_path).content.decode()
        assert "<script>" not in html
        assert ' style="' not in html
        assert not re.search(r"\son[a-z]+=", html)
