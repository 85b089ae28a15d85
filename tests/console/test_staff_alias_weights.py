"""The staff console's alias form with weighted targets (a canary, an A/B test): written through
the audited catalog path with the services' rules, shown in the catalog's alias table with each
target's share; staff only, like every catalog view."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from inference.deployment import render_spec
from inference.models import ModelAlias
from tenants.models import AuditEvent
from tests.console.test_staff_catalog import NEW_ALIAS, _rows, field_error, matrix
from tests.factories import CatalogModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


def test_staff_add_a_canary_and_drain_it(staff_client: Client) -> None:
    stable = CatalogModelFactory(name="chat-v1")
    CatalogModelFactory(name="chat-v2")
    response = staff_client.post(
        NEW_ALIAS,
        {"name": "chat", "target": stable.pk, "weight": "90", "splits": "chat-v2 = 10\n"},
    )
    assert response.status_code == 302, field_error(response.content.decode(), "splits")
    alias = ModelAlias.objects.get(name="chat")
    assert alias.weight == 90
    assert [(s.catalog_model.name, s.weight) for s in alias.splits.all()] == [("chat-v2", 10)]
    assert render_spec()["aliases"] == [
        {
            "name": "chat",
            "targets": [{"model": "chat-v1", "weight": 90}, {"model": "chat-v2", "weight": 10}],
        }
    ]
    created = AuditEvent.objects.get(action="model_alias.created")
    assert created.after["splits"] == {"chat-v2": 10}

    html = staff_client.get("/staff/models/").content.decode()
    assert _rows(html, "aliases-table") == [["chat", "chat-v1 90%, chat-v2 10%", ""]]

    edit = reverse("console:staff-alias-edit", args=[alias.pk])
    page = staff_client.get(edit).content.decode()
    assert "chat-v2 = 10" in page
    assert 'value="90"' in page
    drained = staff_client.post(
        edit, {"name": "chat", "target": stable.pk, "weight": "90", "splits": "chat-v2 = 0"}
    )
    assert drained.status_code == 302
    assert alias.splits.get().weight == 0
    assert AuditEvent.objects.get(action="model_alias.updated").after["splits"] == {"chat-v2": 0}
    # Emptied: a plain alias again.
    staff_client.post(edit, {"name": "chat", "target": stable.pk, "weight": "", "splits": ""})
    alias.refresh_from_db()
    assert (alias.weight, alias.splits.count()) == (90, 0)
    assert render_spec()["aliases"] == []


@pytest.mark.parametrize(
    ("splits", "weight", "field", "message"),
    [
        ("chat-v2 10", "90", "splits", "model = weight"),
        ("chat-v2 = ten", "90", "splits", "model = weight"),
        ("nowhere = 10", "90", "splits", "no catalog model"),
        ("chat-v2 = 1\nchat-v2 = 2", "90", "splits", "listed twice"),
        ("chat-v1 = 10", "90", "splits", "primary target already"),
        ("chat-v2 = 10001", "90", "splits", "from 0 to 10000"),
        ("chat-v2 = 0", "0", "weight", "add up to 0"),
        ("", "-1", "weight", ""),
    ],
)
def test_bad_weights_are_shown_on_the_form(
    staff_client: Client, splits: str, weight: str, field: str, message: str
) -> None:
    stable = CatalogModelFactory(name="chat-v1")
    CatalogModelFactory(name="chat-v2")
    response = staff_client.post(
        NEW_ALIAS, {"name": "chat", "target": stable.pk, "weight": weight, "splits": splits}
    )
    assert response.status_code == 400
    shown = field_error(response.content.decode(), field)
    assert shown
    assert message in shown
    assert not ModelAlias.objects.exists()


def test_only_staff_may_set_weights(assert_matrix) -> None:  # type: ignore[no-untyped-def]
    stable = CatalogModelFactory(name="chat-v1")
    CatalogModelFactory(name="chat-v2")
    data = {"name": "chat", "target": stable.pk, "weight": "90", "splits": "chat-v2 = 10"}
    # Staff adds it; every other role gets 404 and writes nothing (one alias, once).
    assert_matrix(NEW_ALIAS, matrix(302), method="post", data=data)
    alias = ModelAlias.objects.get()
    assert alias.splits.get().weight == 10
    edit = reverse("console:staff-alias-edit", args=[alias.pk])
    assert_matrix(edit, matrix(200), method="get")
