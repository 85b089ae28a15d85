"""A catalog change restarts only what it changes (contract 1, docs/deployment-spec.md).

Through the control plane's own apply on the session's REAL local Ray: every replica id of every
application is recorded from Serve's status before and after each kind of change, and exactly
the expected replicas must have changed. A client (the ``openai`` SDK) calls an untouched model
in a loop, streaming and not, across every apply, and must see no error at all.

The models are on the synthetic engine (a labelled test engine, not a model): what is measured
is which replicas Serve replaced, not what they compute.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import openai
import pytest

from inference.deploy_services import deployment_apply, deployment_wait
from inference.deployment import APP_NAME, deployment_name
from inference.models import CatalogModel
from inference.ray_client import RayDashboardClient
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

DEPLOY_TIMEOUT = 180.0
FAST = {"ttft_ms": 0, "tpot_ms": 1, "default_max_tokens": 8}
FREE = {"price_input_per_mtok": Decimal(0), "price_output_per_mtok": Decimal(0)}


def replica_ids(serve: RayDashboardClient) -> dict[str, frozenset[str]]:
    """Every application's replica ids (all states), by application name."""
    out: dict[str, frozenset[str]] = {}
    for name, app in (serve.get_applications().get("applications") or {}).items():
        ids = {
            str(replica["replica_id"])
            for deployment in (app.get("deployments") or {}).values()
            for replica in deployment.get("replicas") or []
        }
        out[name] = frozenset(ids)
    return out


def apply_and_settle(serve: RayDashboardClient) -> dict[str, frozenset[str]]:
    """Apply the catalog, wait until every application of it runs, then wait until the replica
    ids stop changing (a restart in progress shows as new ids) and no application is being
    deleted, and return them."""
    record = deployment_apply()
    assert record.outcome == "applied", record.error
    status = deployment_wait(revision=record.revision, timeout=DEPLOY_TIMEOUT)
    assert status == "RUNNING", serve.get_applications()
    seen = replica_ids(serve)
    for _ in range(60):
        time.sleep(1.0)
        now = replica_ids(serve)
        if now == seen and not deleting(serve):
            break
        seen = now
    return seen


def deleting(serve: RayDashboardClient) -> bool:
    """Whether an application is still being removed (it is listed until it is gone)."""
    apps = serve.get_applications().get("applications") or {}
    return any(app.get("status") == "DELETING" for app in apps.values())


class ClientLoop(threading.Thread):
    """Calls one model over and over (alternating streamed and whole answers) until stopped;
    keeps every error it sees."""

    def __init__(self, base_url: str, key: str, model: str) -> None:
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
        self.model = model
        self.errors: list[str] = []
        self.done = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        messages: Any = [{"role": "user", "content": "hello"}]
        while not self.stopping.is_set():
            try:
                if self.done % 2:
                    stream = self.client.chat.completions.create(
                        model=self.model, messages=messages, max_tokens=4, stream=True
                    )
                    assert [chunk for chunk in stream]
                else:
                    reply = self.client.chat.completions.create(
                        model=self.model, messages=messages, max_tokens=4
                    )
                    assert reply.choices[0].message.content
                self.done += 1
            except Exception as error:
                self.errors.append(repr(error))
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def changed(before: dict[str, frozenset[str]], after: dict[str, frozenset[str]]) -> set[str]:
    """Applications whose replicas were replaced, added or removed."""
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_each_kind_of_change_restarts_only_what_it_changes(ray_settings, serve) -> None:  # type: ignore[no-untyped-def]
    # The loop's model is free: the organisation's tiny budget is for the price test below.
    kept = CatalogModelFactory(
        name="keep-me", engine_args=FAST, replica_cpus=Decimal("0.25"), **FREE
    )
    other = CatalogModelFactory(
        name="other",
        engine_args=FAST,
        replica_cpus=Decimal("0.25"),
        price_input_per_mtok=Decimal("1"),
        price_output_per_mtok=Decimal("1"),
    )
    org = OrganizationFactory(monthly_spend_budget=Decimal("0.01"))
    key, secret = services.api_key_create(
        organization=org, name="loop", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    base_url = f"http://127.0.0.1:{ray_settings.VLINDERS_GATEWAY_PORT}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=30)

    def ask(model: str) -> Any:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )

    start = apply_and_settle(serve)
    kept_app, other_app = deployment_name(kept.name), deployment_name(other.name)
    assert {APP_NAME, kept_app, other_app} <= start.keys()
    assert ask("other").choices[0].message.content

    loop = ClientLoop(base_url, secret, "keep-me")
    loop.start()
    try:
        # 1. Adding a model starts only that model's replicas.
        added = CatalogModelFactory(
            name="added", engine_args=FAST, replica_cpus=Decimal("0.25"), **FREE
        )
        snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
        after_add = apply_and_settle(serve)
        added_app = deployment_name(added.name)
        assert changed(start, after_add) == {added_app}
        assert ask("added").choices[0].message.content

        # 2. Price, alias, visibility, description and scaling: nothing restarts, and the
        # gateway serves the new routes and prices at once. At 100,000 per million tokens a
        # request reserves far more than the organisation's 0.01 budget: refused.
        CatalogModel.objects.filter(pk=other.pk).update(
            price_input_per_mtok=Decimal("100000"),
            description="a new description",
            max_replicas=2,
        )
        CatalogModel.objects.filter(pk=added.pk).update(visibility="public", description="x")
        ModelAliasFactory(name="keep-alias", target=kept)
        snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
        after_routes = apply_and_settle(serve)
        assert changed(after_add, after_routes) == set()
        assert ask("keep-alias").choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:
            ask("other")
        assert refused.value.code == "insufficient_quota"

        # 3. A model's engine arguments: only that model restarts.
        CatalogModel.objects.filter(pk=other.pk).update(
            engine_args={**FAST, "tpot_ms": 2}, price_input_per_mtok=Decimal("1")
        )
        after_engine = apply_and_settle(serve)
        assert changed(after_routes, after_engine) == {other_app}

        # 4. A model's resources: only that model restarts.
        CatalogModel.objects.filter(pk=added.pk).update(replica_cpus=Decimal("0.3"))
        after_resources = apply_and_settle(serve)
        assert changed(after_engine, after_resources) == {added_app}

        # 5. Removing a model stops only its own replicas.
        CatalogModel.objects.filter(pk=added.pk).update(status=CatalogModel.Status.DISABLED)
        snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
        after_remove = apply_and_settle(serve)
        assert changed(after_resources, after_remove) == {added_app}
        assert added_app not in after_remove
    finally:
        loop.stop()

    assert loop.errors == []
    assert loop.done > 10
    assert after_remove[APP_NAME] == start[APP_NAME]
    assert after_remove[kept_app] == start[kept_app]
