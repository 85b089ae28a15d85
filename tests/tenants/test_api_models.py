"""What an organisation may use: GET /api/v1/orgs/{slug}/models/ (three actors)."""

from decimal import Decimal

import pytest

from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/models/"


@pytest.fixture
def catalog(org):
    public = CatalogModelFactory(name="llama-3-70b", price_input_per_mtok=Decimal("0.6"))
    restricted = CatalogModelFactory(name="private-ft", visibility="restricted")
    hidden = CatalogModelFactory(name="other-ft", visibility="restricted")
    CatalogModelFactory(name="retired", status="disabled")
    restricted.organizations.add(org)
    ModelAliasFactory(name="gpt-4", target=public)
    ModelAliasFactory(name="secret-alias", target=hidden)
    return public


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [("as_owner", 200), ("as_viewer", 200), ("as_outsider", 404), ("as_staff", 200)],
)
def test_list(request, client_name, expected, catalog):
    response = request.getfixturevalue(client_name).get(URL)
    assert response.status_code == expected
    if expected == 200:
        rows = {row["name"]: row for row in response.json()}
        assert set(rows) == {"gpt-4", "llama-3-70b", "private-ft"}
        assert rows["gpt-4"]["kind"] == "alias"
        assert rows["gpt-4"]["target"] == "llama-3-70b"
        assert rows["gpt-4"]["price_input_per_mtok"] == "0.600000"
        assert "engine_args" not in rows["llama-3-70b"]
        assert "upstream_api_key" not in rows["llama-3-70b"]


def test_writes_are_not_allowed(as_owner, catalog):
    assert as_owner.post(URL, {"name": "x"}, format="json").status_code == 405
