"""A weighted alias through the gateway class Serve runs, called in-process through ASGI (no Ray),
with the routes rendered from the catalog by the control plane's own renderer: each request is
served by the target the split chose, and everything about it is that target's: the response's
``model`` (each stream chunk's too), the prices reserved and billed, the usage event's
``served_model``, the alias metric. The synthetic engine (a labelled test engine) answers.

The same through a real Ray Serve gateway, 2,000 requests: ``test_weighted_aliases_e2e.py``.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from inference import services as catalog_services
from inference.deployment import deployment_name
from inference.models import CatalogModel, ModelAlias, Visibility
from inference.serving.engines.synthetic import SyntheticEngine
from tenants.models import Organization
from tests.factories import CatalogModelFactory, OrganizationFactory
from tests.serving.gateway_harness import InProcessGateway, publish_key, rendered_config

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

MESSAGES = [{"role": "user", "content": "one two three"}]
PRICES = {
    "chat-v1": (Decimal("1.000000"), Decimal("2.000000")),
    "chat-v2": (Decimal("3.000000"), Decimal("5.000000")),
}


def _alias_count(alias: str, served: str) -> float:
    """``vlinders_alias_requests_total`` of one alias and target (this process's registry)."""
    return float(
        REGISTRY.get_sample_value(
            "vlinders_alias_requests_total",
            {"alias": alias, "served_model": served, "status": "200"},
        )
        or 0.0
    )


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InProcessGateway:
    """A gateway whose models each have their own synthetic engine (``served`` counts the
    requests that reached each); its config is rendered in each test, after the catalog."""
    engines = {
        deployment_name(name): SyntheticEngine(model=name, default_max_tokens=4) for name in PRICES
    }
    return InProcessGateway(tmp_path, monkeypatch, engines)


@pytest.fixture
def catalog() -> tuple[Organization, Organization]:
    """chat-v1 (public) and chat-v2 (restricted to ``insider``), and ``chat`` at 50/50."""
    insider = OrganizationFactory(slug="insider")
    outsider = OrganizationFactory(slug="outsider")
    stable = CatalogModelFactory(
        name="chat-v1",
        price_input_per_mtok=PRICES["chat-v1"][0],
        price_output_per_mtok=PRICES["chat-v1"][1],
    )
    canary = CatalogModelFactory(
        name="chat-v2",
        price_input_per_mtok=PRICES["chat-v2"][0],
        price_output_per_mtok=PRICES["chat-v2"][1],
        visibility=Visibility.RESTRICTED,
    )
    canary.organizations.set([insider])
    catalog_services.model_alias_create(
        name="chat", target=stable, weight=50, splits=[(canary, 50)]
    )
    return insider, outsider


async def _models(client: openai.AsyncOpenAI, n: int, **body: Any) -> Counter[str]:
    """The ``model`` of ``n`` replies of the alias (the target that served each)."""
    return Counter(
        [
            (await client.chat.completions.create(model="chat", messages=MESSAGES, **body)).model
            for _ in range(n)
        ]
    )


def test_each_request_is_the_served_targets_in_every_respect(
    gateway: InProcessGateway, catalog
) -> None:
    served, events = gateway.served, gateway.events
    insider, outsider = catalog
    insider_secret, outsider_secret = publish_key(insider), publish_key(outsider)
    before = {name: _alias_count("chat", name) for name in PRICES}

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        client = gateway.client(insider_secret)
        out["replies"] = [
            await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
            for _ in range(120)
        ]
        # Streamed: every chunk (and the usage chunk) names the served target.
        out["streams"] = []
        for _ in range(20):
            chunks = await client.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            out["streams"].append([chunk async for chunk in chunks])
        # The same user: the same target every time.
        out["alice"] = set(await _models(client, 15, max_tokens=1, user="alice"))
        # The outsider may not use the canary: the stable target serves all of its requests.
        other = gateway.client(outsider_secret)
        out["outsider"] = Counter(
            [
                (
                    await other.chat.completions.create(
                        model="chat", messages=MESSAGES, max_tokens=1, user=f"u{i}"
                    )
                ).model
                for i in range(40)
            ]
        )
        return out

    out = gateway.run(run, config=rendered_config())
    replies = out["replies"]
    models = Counter(reply.model for reply in replies)
    assert set(models) == {"chat-v1", "chat-v2"}, models  # both arms served (50/50 of 120)
    for stream in out["streams"]:
        assert {chunk.model for chunk in stream} in ({"chat-v1"}, {"chat-v2"})
        assert stream[-1].usage is not None
    assert len(out["alice"]) == 1
    assert out["outsider"] == Counter({"chat-v1": 40})

    # The usage events: asked for the alias, served by the target the response named, charged
    # that target's prices.
    assert len(events) == 120 + 20 + 15 + 40
    by_request = events[:120]
    for event, reply in zip(by_request, replies, strict=True):
        assert event.model == "chat"
        assert event.served_model == reply.model
        price_in, price_out = PRICES[reply.model]
        assert (event.price_input_per_mtok, event.price_output_per_mtok) == (price_in, price_out)
        assert (
            event.cost
            == (event.prompt_tokens * price_in + event.completion_tokens * price_out) / 10**6
        )
    # The engines saw exactly what the responses say.
    all_models = [r.model for r in replies] + [s[0].model for s in out["streams"]]
    all_models += list(out["alice"]) * 15 + ["chat-v1"] * 40
    assert served == Counter(all_models)
    # The alias metric counts each request under the target that served it.
    after = {name: _alias_count("chat", name) for name in PRICES}
    assert after["chat-v2"] - before["chat-v2"] == served["chat-v2"]
    assert after["chat-v1"] - before["chat-v1"] == served["chat-v1"]


def test_a_weight_of_zero_drains_the_target_in_place(gateway: InProcessGateway, catalog) -> None:
    served = gateway.served
    insider, _ = catalog
    secret = publish_key(insider)

    async def burst(n: int) -> Counter[str]:
        return await _models(gateway.client(secret), n, max_tokens=1)

    # The two configs the control plane would apply: 50/50, then the canary drained (rendered
    # here: the ORM is not for the event loop).
    split = rendered_config()
    alias = ModelAlias.objects.get(name="chat")
    catalog_services.model_alias_splits_set(
        alias=alias, weight=100, splits=[(alias.splits.get().catalog_model, 0)]
    )
    drained = rendered_config()
    assert drained["aliases"][0]["targets"][1] == {"model": "chat-v2", "weight": 0}

    async def run() -> tuple[Counter[str], Counter[str]]:
        first = await burst(60)
        handles = dict(gateway.gateway.handles)
        await gateway.configure(drained)  # in place: the same handles, no restart
        assert gateway.gateway.handles == handles
        canary_before = served["chat-v2"]
        second = await burst(100)
        assert served["chat-v2"] == canary_before  # not one request reached the drained target
        return first, second

    first, second = gateway.run(run, config=split)
    assert first["chat-v2"] > 0
    assert second == Counter({"chat-v1": 100})


def test_a_key_allowed_the_alias_is_served_by_its_targets_and_only_the_alias(
    gateway: InProcessGateway, catalog
) -> None:
    """A key's allowed models name public names: a key allowed only ``chat`` is served by either
    target through the alias (the split checks the organisation's models, not the key's), and
    may not call a target by its own name; a key allowed only a target may not call the alias."""
    insider, _ = catalog
    alias_only = publish_key(insider, allowed_models=["chat"])
    target_only = publish_key(insider, allowed_models=["chat-v1"])

    async def run() -> tuple[Counter[str], list[int]]:
        served = await _models(gateway.client(alias_only), 60, max_tokens=1)
        refused = []
        for secret, model in ((alias_only, "chat-v2"), (target_only, "chat")):
            try:
                await gateway.client(secret).chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=1
                )
            except openai.PermissionDeniedError as error:
                refused.append(error.status_code)
        return served, refused

    served, refused = gateway.run(run, config=rendered_config())
    assert set(served) == {"chat-v1", "chat-v2"}, served
    assert refused == [403, 403]


def test_the_models_list_describes_an_alias_by_the_targets_that_can_serve_the_organisation(
    gateway: InProcessGateway, catalog
) -> None:
    """``/v1/models`` and ``/v1/models/{name}``: a weighted alias has the smallest context length
    of the targets that can serve the asking organisation (a prompt that fits it fits whichever
    target the split picks), and an alias none of whose live targets the organisation may use is
    neither listed nor found (a request to it would be a 404)."""
    insider, outsider = catalog
    v1 = CatalogModel.objects.get(name="chat-v1")
    v2 = CatalogModel.objects.get(name="chat-v2")
    v1.context_length, v2.context_length = 4096, 2048
    v1.save(update_fields=["context_length"])
    v2.save(update_fields=["context_length"])
    # Listed under chat-v1 (the outsider may use it), but only the restricted canary serves it.
    catalog_services.model_alias_create(name="canary-only", target=v1, weight=0, splits=[(v2, 100)])
    insider_secret, outsider_secret = publish_key(insider), publish_key(outsider)

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for who, secret in (("insider", insider_secret), ("outsider", outsider_secret)):
            client = gateway.client(secret)
            listed = await client.models.list()
            out[who] = {model.id: model.model_extra["context_length"] async for model in listed}
            out[f"{who}-chat"] = (await client.models.retrieve("chat")).model_extra
            try:
                await client.models.retrieve("canary-only")
                out[f"{who}-canary-only"] = 200
            except openai.NotFoundError as error:
                out[f"{who}-canary-only"] = error.status_code
        return out

    out = gateway.run(run, config=rendered_config())
    assert out["insider"]["chat"] == 2048  # either target may serve it: the smaller context
    assert out["insider-chat"]["context_length"] == 2048
    assert out["outsider"]["chat"] == 4096  # only chat-v1 serves the outsider
    assert out["outsider-chat"]["context_length"] == 4096
    assert "chat-v2" not in out["outsider"]
    assert out["insider"]["canary-only"] == 2048
    assert out["insider-canary-only"] == 200
    assert "canary-only" not in out["outsider"]
    assert out["outsider-canary-only"] == 404
