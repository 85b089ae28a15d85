"""The console's usage pages: the month from the rollups, members only; the staff page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.utils import timezone

from tests.billing.usage_data import add_rollup, make_key
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/usage/"


def test_a_member_sees_the_months_usage_by_day_and_model_and_the_live_panel(as_viewer, org):
    key = make_key(org)
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    mine = add_rollup(key, now, model="tiny-model", requests=7, cost="1.25")
    add_rollup(make_key(OrganizationFactory()), now, model="someone-elses-model", requests=99)

    response = as_viewer.get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert "tiny-model" in html
    assert "someone-elses-model" not in html
    assert response.context["totals"]["requests"] == mine.requests
    assert [d["requests"] for d in response.context["days"]] == [mine.requests]
    assert f'data-ws-path="/ws/orgs/{org.pk}/usage/"' in html


def test_a_past_month_has_no_live_panel(as_owner, org):
    add_rollup(make_key(org), datetime(2020, 1, 5, tzinfo=UTC), requests=3)
    response = as_owner.get(URL, {"month": "2020-01"})
    assert response.context["totals"]["requests"] == 3
    assert "data-ws-path" not in response.content.decode()


def test_outsiders_get_404_and_anonymous_the_sign_in_page(as_outsider, anonymous, org):
    assert as_outsider.get(URL).status_code == 404
    response = anonymous.get(URL)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_a_bad_month_is_a_400(as_owner, org):
    assert as_owner.get(URL, {"month": "2026-13"}).status_code == 400


def test_the_platform_page_is_for_staff(as_staff, as_owner):
    assert as_staff.get("/staff/usage/").status_code == 200
    assert as_owner.get("/staff/usage/").status_code == 302
