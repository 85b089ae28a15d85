"""The console's Requests page (``/orgs/<slug>/requests/``): the organisation's usage events
within their retention period, newest first, filtered by key, model, outcome and dates, turned
page by page on a keyset; never prompts or outputs (an event holds none)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.utils import timezone

from billing.models import UsageEvent
from billing.selectors import REQUEST_FIELDS
from console.pages import requests as page
from tenants.models import ApiKey
from tests.billing.usage_data import add_event, make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/requests/"
EVERYONE = {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
SHUT = {"outsider": 404, "anonymous": 302}


def _ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [row["request_id"] for row in response.context["rows"]]


def _link(response, rel: str) -> str:  # type: ignore[no-untyped-def]
    found = re.search(rf'<a href="([^"]+)" rel="{rel}"', response.content.decode())
    assert found, f"no {rel} link"
    return URL + unescape(found.group(1))


@pytest.fixture
def now():  # type: ignore[no-untyped-def]
    return timezone.now()


def test_every_member_sees_the_requests_and_outsiders_get_404(assert_matrix):
    assert_matrix(URL, EVERYONE | SHUT)
    assert_matrix(URL + "?outcome=error&model=m1", EVERYONE | SHUT)


def test_a_request_shows_what_was_metered(as_viewer, org, now):
    key = make_key(org, "prod")
    add_event(
        key,
        now - timedelta(minutes=3),
        request_id="req_shown",
        model="gpt-4",
        served_model="llama-70b",
        stream=True,
        prompt_tokens=1234,
        completion_tokens=56,
        cost=Decimal("0.001234"),
        latency_ms=812.4,
        ttft_ms=95.6,
    )
    add_event(make_key(OrganizationFactory()), now, request_id="req_someone_elses")

    response = as_viewer.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert _ids(response) == ["req_shown"]
    row = re.search(r'<tr data-request-id="req_shown">(.*?)</tr>', html, re.S)
    assert row
    cells = row.group(1)
    for shown in ("prod", key.display, "gpt-4", "llama-70b", "stream", "200", "1,234", "56"):
        assert shown in cells
    assert "0.001234" in cells  # cost, to the millionth of a dollar
    assert ">812<" in cells
    assert ">96<" in cells
    assert "req_someone_elses" not in html


def test_the_page_never_shows_prompts_or_outputs(as_owner, org, now):
    """An event holds no prompt and no output, and the page reads a fixed list of its fields."""
    fields = {field.attname for field in UsageEvent._meta.concrete_fields}
    for text_field in ("prompt", "messages", "input", "output", "completion", "content", "text"):
        assert text_field not in fields
    assert set(REQUEST_FIELDS) <= fields
    add_event(make_key(org), now)
    row = as_owner.get(URL).context["rows"][0]
    assert set(row) == {*REQUEST_FIELDS, "api_key", "ok", "playground"}


def test_newest_first_within_the_retention_period(as_owner, org, now, settings):
    settings.VLINDERS_USAGE_RETENTION_DAYS = 30
    key = make_key(org)
    add_event(key, now - timedelta(days=31), request_id="req_too_old")
    add_event(key, now - timedelta(days=29), request_id="req_old")
    add_event(key, now - timedelta(hours=1), request_id="req_new")
    response = as_owner.get(URL)
    assert _ids(response) == ["req_new", "req_old"]
    assert "kept for 30 days" in response.content.decode()
    # Even when the dates ask for it.
    old = (now - timedelta(days=40)).date().isoformat()
    assert _ids(as_owner.get(URL, {"from": old})) == ["req_new", "req_old"]


def test_filters_by_key_model_outcome_and_dates(as_owner, org, now):
    prod, test = make_key(org, "prod"), make_key(org, "test")
    add_event(prod, now - timedelta(days=3), request_id="req_a", model="gpt-4", served_model="x")
    add_event(prod, now - timedelta(days=2), request_id="req_b", status=429, error_type="rate")
    add_event(test, now - timedelta(days=1), request_id="req_c", status=500)
    add_event(test, now - timedelta(hours=1), request_id="req_d", model="x", served_model="x")

    assert _ids(as_owner.get(URL, {"key": str(prod.pk)})) == ["req_b", "req_a"]
    # A model by the name asked for or the catalog model that served it.
    assert _ids(as_owner.get(URL, {"model": "gpt-4"})) == ["req_a"]
    assert _ids(as_owner.get(URL, {"model": "x"})) == ["req_d", "req_a"]
    assert _ids(as_owner.get(URL, {"outcome": "error"})) == ["req_c", "req_b"]
    assert _ids(as_owner.get(URL, {"outcome": "ok", "key": str(test.pk)})) == ["req_d"]
    day = (now - timedelta(days=2)).date().isoformat()
    assert _ids(as_owner.get(URL, {"from": day, "to": day})) == ["req_b"]
    response = as_owner.get(URL, {"key": str(prod.pk), "outcome": "error"})
    assert "matching the filters" in response.content.decode()
    empty = as_owner.get(URL, {"model": "nothing-like-it"})
    assert _ids(empty) == []
    assert "No request matches these filters." in empty.content.decode()


def test_a_key_of_another_organisation_is_not_a_choice(as_owner, org, now):
    other = make_key(OrganizationFactory(), "theirs")
    add_event(other, now, request_id="req_theirs")
    response = as_owner.get(URL, {"key": str(other.pk)})
    assert response.status_code == 400
    assert "valid choice" in " ".join(response.context["form"].errors["key"])
    assert "req_theirs" not in response.content.decode()


def test_pages_turn_on_a_keyset_both_ways(as_owner, org, now, monkeypatch):
    monkeypatch.setattr(page, "PAGE_SIZE", 3)
    key = make_key(org)
    moment = now - timedelta(hours=1)
    # Seven events, three of them at the same instant: the request id breaks the tie.
    ids = [f"req_{i}" for i in range(7)]
    for i, request_id in enumerate(ids):
        add_event(key, moment + timedelta(seconds=min(i, 4)), request_id=request_id)
    newest_first = ["req_6", "req_5", "req_4", "req_3", "req_2", "req_1", "req_0"]

    first = as_owner.get(URL, {"outcome": "ok"})
    assert _ids(first) == newest_first[:3]
    assert "Newer" not in first.content.decode()
    second = as_owner.get(_link(first, "next"))
    assert _ids(second) == newest_first[3:6]
    assert "outcome=ok" in _link(second, "next")  # the filters stay
    third = as_owner.get(_link(second, "next"))
    assert _ids(third) == newest_first[6:]
    assert 'rel="next"' not in third.content.decode()
    back = as_owner.get(_link(third, "prev"))
    assert _ids(back) == newest_first[3:6]
    back_again = as_owner.get(_link(back, "prev"))
    assert _ids(back_again) == newest_first[:3]
    assert 'rel="prev"' not in back_again.content.decode()
    assert "Newest" in third.content.decode()


def test_a_bad_page_link_is_a_400_with_a_way_back(as_owner, org):
    response = as_owner.get(URL, {"before": "yesterday,req_x"})
    assert response.status_code == 400
    assert "This page link is not valid" in response.content.decode()
    naive = as_owner.get(URL, {"after": "2026-01-01T00:00:00,req_x"})
    assert naive.status_code == 400


def test_bad_dates_are_a_400(as_owner, org):
    response = as_owner.get(URL, {"from": "2026-02-03", "to": "2026-02-01"})
    assert response.status_code == 400
    assert "on or after the start date" in response.content.decode()
    assert as_owner.get(URL, {"from": "not a date"}).status_code == 400


def test_htmx_gets_the_results_alone(as_owner, org, now):
    add_event(make_key(org), now, request_id="req_partial")
    response = as_owner.get(URL, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="requests-results">')
    assert "req_partial" in html
    assert "<html" not in html
    # htmx swaps no 4xx answer in: the errors come as a 200 partial.
    bad = as_owner.get(URL, {"before": "nonsense"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 200
    assert "This page link is not valid" in bad.content.decode()


def test_a_page_costs_the_same_few_queries_with_many_keys(
    as_owner, org, now, django_assert_max_num_queries
):
    keys = [make_key(org, f"k{i}") for i in range(60)]
    for i, key in enumerate(keys):
        add_event(key, now - timedelta(minutes=i))
    # Session, user, organisation, role, the keys for the filter, the models and aliases for
    # the model filter's suggestions (2), the events, their keys, the organisation switcher.
    with django_assert_max_num_queries(10):
        response = as_owner.get(URL)
    assert len(response.context["rows"]) == 50
    assert all(row["api_key"] is not None for row in response.context["rows"])


def test_a_deleted_key_still_lists_its_requests(as_owner, org, now):
    key = make_key(org, "gone")
    add_event(key, now, request_id="req_orphan")
    key.delete()
    response = as_owner.get(URL)
    assert _ids(response) == ["req_orphan"]
    assert "a deleted key" in response.content.decode()


def test_the_playgrounds_requests_are_marked(as_owner, org, now):
    key = make_key(org, "Console playground · owner")
    ApiKey.objects.filter(pk=key.pk).update(source=ApiKey.Source.CONSOLE)
    add_event(key, now, request_id="req_from_the_console")
    response = as_owner.get(URL)
    assert response.context["rows"][0]["playground"] is True
    assert '<span class="badge">playground</span>' in response.content.decode()
