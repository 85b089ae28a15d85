"""The response cache's opt-in in the tenant console (the models page, ``console.pages.overview``):
every member sees whether it is on; owners and admins switch it (a POST, audited like every
organisation setting, published to the gateway), weaker roles get 403 and outsiders 404. The
page also says per model whether it caches, how long and at what hit price."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tenants.models import AuditEvent
from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = pytest.mark.django_db

URL = "/orgs/acme/models/response-cache/"
MODELS = "/orgs/acme/models/"


def test_only_owners_and_admins_switch_it(assert_matrix, org) -> None:  # type: ignore[no-untyped-def]
    assert_matrix(
        URL,
        {
            "owner": 302,
            "admin": 302,
            "member": 403,
            "viewer": 403,
            "outsider": 404,
            "staff": 302,
            "anonymous": 302,
        },
        method="post",
        data={"enabled": "on"},
    )
    # A GET does nothing: the switch is a POST.
    assert_matrix(
        URL,
        {
            "owner": 405,
            "admin": 405,
            "member": 405,
            "viewer": 405,
            "outsider": 404,
            "staff": 405,
            "anonymous": 302,
        },
    )


def test_the_models_page_shows_and_switches_it(role_client, org) -> None:  # type: ignore[no-untyped-def]
    owner, viewer = role_client("owner"), role_client("viewer")
    page = viewer.get(MODELS).content.decode()
    assert "The response cache is <strong>off</strong>" in page
    assert URL not in page  # a viewer sees no switch
    assert URL in owner.get(MODELS).content.decode()
    response = owner.post(URL, {"enabled": "on"}, follow=True)
    assert "The response cache is on." in response.content.decode()
    org.refresh_from_db()
    assert org.response_cache_enabled is True
    assert "The response cache is <strong>on</strong>" in viewer.get(MODELS).content.decode()
    owner.post(URL, {"enabled": "off"})
    org.refresh_from_db()
    assert org.response_cache_enabled is False
    records = AuditEvent.objects.filter(organization=org, action="organization.updated")
    assert [r.after for r in records.order_by("created_at")] == [
        {"response_cache_enabled": True},
        {"response_cache_enabled": False},
    ]


def test_the_models_page_says_which_models_cache_for_how_long_and_at_what_price(
    role_client, org
) -> None:  # type: ignore[no-untyped-def]
    cached = CatalogModelFactory(
        name="cached-chat", cache_ttl_s=7200, price_cache_hit_per_mtok=Decimal("0.05")
    )
    CatalogModelFactory(name="fresh-chat", price_cache_hit_per_mtok=Decimal("0.07"))  # TTL 0
    ModelAliasFactory(name="cached-alias", target=cached)

    response = role_client("viewer").get(MODELS)

    by_name = {row.model.name: row for row in response.context["rows"]}
    assert (by_name["cached-chat"].cache_ttl, by_name["cached-chat"].price_cache_hit) == (
        "2 hours",
        "0.05",
    )
    assert (by_name["cached-alias"].cache_ttl, by_name["cached-alias"].price_cache_hit) == (
        "2 hours",
        "0.05",
    )  # an alias caches as its model
    assert (by_name["fresh-chat"].cache_ttl, by_name["fresh-chat"].price_cache_hit) == (None, None)
    html = response.content.decode()

    def cell(name: str) -> str:
        row = html[html.index(f'data-model="{name}"') :].split("</tr>")[0]
        return row[row.index('class="response-cache"') :]

    assert "answers kept 2 hours; a hit costs 0.05 per 1M tokens" in cell("cached-chat")
    assert "answers kept 2 hours" in cell("cached-alias")
    assert "not cached" in cell("fresh-chat")
    assert "0.07" not in html  # a model that does not cache has no hit price to show
    # Whether the organisation opted in, and where: the section below, switched by owners/admins.
    assert "while the response cache is on for" in html
    assert 'it is <strong>off</strong>, <a href="#response-cache">below</a>' in html
    assert "An owner or admin of" in html


def test_without_a_caching_model_the_page_says_none_caches(role_client, org) -> None:  # type: ignore[no-untyped-def]
    CatalogModelFactory(name="fresh-chat")
    html = role_client("owner").get(MODELS).content.decode()
    assert "None of these models caches now." in html
    assert "answers kept" not in html
    assert "An owner or admin of" not in html  # an owner has the switch itself


def test_a_ttl_is_shown_exactly_in_its_largest_whole_unit() -> None:
    from console.pages.overview import _duration

    assert _duration(1) == "1 second"
    assert _duration(90) == "90 seconds"
    assert _duration(120) == "2 minutes"
    assert _duration(3600) == "1 hour"
    assert _duration(5400) == "90 minutes"
    assert _duration(30 * 86400) == "30 days"
