"""The operator console end to end: Debian's Chromium, driven by Playwright, against the console
served by uvicorn (``tests/serving/console_server.py``), which applies to the session's REAL
local Ray (``ray_cluster``). Nothing is deployed by the test itself: every deploy is the
console's own, from its pages.

A platform operator signs in and, in the browser:

1. adds a model on the catalog page (the synthetic engine: a labelled test engine, not a real
   model), applies on the Deploy page and watches the rollout until the model runs; a tenant's
   request with the official ``openai`` SDK then succeeds through the gateway;
2. edits the model's price on its catalog page and applies: the next request's usage event
   carries the new price, and the model's replica ids (Ray's ``GET /api/serve/applications/``)
   are unchanged — no replica restarted;
3. scales the model to two replicas on the Cluster page and sees both running;
4. rolls back to the revision of step 1 and sees it running again (one replica, the old price).

Each page is photographed into ``artifacts/screenshots/operator-*.png``. The usage events are
read off the broker queue of the console's own (``VLINDERS_USAGE_QUEUE``: no worker takes them).
The module removes what it made: its rows, its queue, and Serve's applications.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from playwright.sync_api import Browser, Page, expect, sync_playwright

from inference.deploy_services import deployed_revision
from inference.deployment import APP_NAME, deployment_name
from inference.models import CatalogModel, DeploymentRevision, ModelDeploymentStatus
from inference.ray_client import RayDashboardClient
from inference.ray_local import LocalRay
from tenants import services
from tenants.models import AuditEvent, Organization, Role
from tests.inference.test_deploy_apply import clear_applications
from tests.serving.console_server import ConsoleServer, start_console
from tests.serving.test_console_e2e import CHROMIUM, LAPTOP, SCREENSHOTS, shoot, sign_in

pytestmark = [pytest.mark.ray]

PASSWORD = "an-operator-passphrase-42"
PREFIX = f"vltest:opconsole:{uuid.uuid4().hex[:8]}:"
USAGE_QUEUE = f"vltest-opconsole-usage-{uuid.uuid4().hex[:8]}"
MODEL = "syn-ops"
SETTLE_MS = 180_000


@pytest.fixture(scope="module")
def committed(django_db_setup, django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Database access that commits (the console is another process); start from a fresh
    connection (a database test may have terminated the server's connections on purpose)."""
    with django_db_blocker.unblock():
        connections.close_all()
        yield
        connections.close_all()


@pytest.fixture(scope="module")
def dashboard(ray_cluster: LocalRay, serve_port: int) -> Iterator[RayDashboardClient]:
    """The session's Ray, as the test reads it; emptied of applications at the end."""
    client = RayDashboardClient(base_url=ray_cluster.dashboard_url, token=ray_cluster.token)
    yield client
    where = SimpleNamespace(VLINDERS_GATEWAY_HOST="127.0.0.1", VLINDERS_GATEWAY_PORT=serve_port)
    clear_applications(client, where)


@pytest.fixture(scope="module")
def people(committed) -> Iterator[tuple[User, Organization, str]]:  # type: ignore[no-untyped-def]
    """The operator (staff, with a password), and a tenant with an API key, published where the
    gateway the console deploys reads (``PREFIX``)."""
    previous = settings.VLINDERS_REDIS_PREFIX
    settings.VLINDERS_REDIS_PREFIX = PREFIX
    first_revision = DeploymentRevision.objects.order_by("-id").values_list("id", flat=True).first()
    operator = User.objects.create_user("operator", "ops@example.com", PASSWORD, is_staff=True)
    owner = User.objects.create_user("tenant-owner", "owner@example.com", PASSWORD)
    org = services.organization_create(name="Tenant Co", slug="tenant-co-ops", owner=owner)
    _, secret = services.api_key_create(
        organization=org, name="e2e", created_by=owner, actor_role=Role.OWNER
    )
    try:
        yield operator, org, secret
    finally:
        DeploymentRevision.objects.filter(id__gt=first_revision or 0).delete()
        ModelDeploymentStatus.objects.filter(catalog_model__name=MODEL).delete()
        CatalogModel.objects.filter(name=MODEL).delete()
        AuditEvent.objects.filter(actor__in=[operator, owner]).delete()
        org.delete()
        operator.delete()
        owner.delete()
        redis.Redis.from_url(settings.REDIS_URL).delete(USAGE_QUEUE)
        settings.VLINDERS_REDIS_PREFIX = previous


@pytest.fixture(scope="module")
def console(people, ray_cluster: LocalRay, serve_port: int, dashboard) -> Iterator[ConsoleServer]:  # type: ignore[no-untyped-def]
    """The console, pointed at the session's Ray, its gateway on the session's Serve port and
    its usage events going to a queue of this module's own."""
    extra = {
        "VLINDERS_RAY_DASHBOARD_URL": ray_cluster.dashboard_url,
        "VLINDERS_RAY_AUTH_TOKEN": ray_cluster.token,
        "VLINDERS_USAGE_QUEUE": USAGE_QUEUE,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "VLINDERS_GATEWAY_MIN_REPLICAS": "1",
        "VLINDERS_GATEWAY_MAX_REPLICAS": "1",
    }
    previous = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield from start_console(redis_prefix=PREFIX, gateway_port=serve_port)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium; Django's ORM calls of the test run beside Playwright's event loop (allowed as
    Playwright's documentation for Django says)."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield launched
            launched.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def operator_page(browser, console) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    sign_in(page, console, "operator", PASSWORD)
    yield page
    context.close()


@pytest.mark.django_db
def test_operator_pages_are_staff_only(client, member) -> None:  # type: ignore[no-untyped-def]
    """Every page the operator uses below is refused to a signed-in tenant member (and, being a
    database test, makes pytest-django set the test database up when this module runs alone)."""
    client.force_login(member)
    for url in ("/staff/models/", "/staff/deploy/", "/staff/cluster/"):
        assert client.get(url).status_code == 404


# --- helpers -----------------------------------------------------------------------------------


def usage_events(
    wait_for: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The usage events on this module's queue (Celery protocol 2 messages, left in place),
    read until ``wait_for`` is satisfied."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = []
        for raw in client.lrange(USAGE_QUEUE, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            events.extend(body[0][0])
        if wait_for(events):
            break
        time.sleep(0.2)
    return events


def ask(base_url: str, secret: str) -> str:
    """One chat completion with the official SDK; returns the answer's id."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0, timeout=30)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    return answer.id


def priced_event(org: Organization, seen_before: int) -> dict[str, Any]:
    """The organisation's newest usage event, once there are more than ``seen_before``."""
    events = usage_events(lambda all_: len(mine(all_, org)) > seen_before)
    ours = mine(events, org)
    assert len(ours) > seen_before, events
    return ours[-1]


def mine(events: list[dict[str, Any]], org: Organization) -> list[dict[str, Any]]:
    return sorted(
        (e for e in events if e.get("org_id") == str(org.id) and e.get("model") == MODEL),
        key=lambda e: e["started_at"],
    )


def model_replicas(dashboard: RayDashboardClient) -> frozenset[str]:
    app = dashboard.get_applications()["applications"][deployment_name(MODEL)]
    return frozenset(
        str(replica["replica_id"])
        for deployment in app["deployments"].values()
        for replica in deployment["replicas"]
    )


def apply_and_watch(page: Page, console: ConsoleServer, shot: str | None = None) -> None:
    """Press Apply on the Deploy page, then let the page's own polling run until it settles."""
    page.goto(f"{console.url}/staff/deploy/")
    page.locator("#apply-button").click()
    expect(page.locator(".messages")).to_contain_text("accepted by Ray")
    watch(page, shot)


def watch(page: Page, shot: str | None = None) -> None:
    rollout = page.locator("#rollout")
    expect(rollout).to_have_attribute("data-settled", "yes", timeout=SETTLE_MS)
    expect(page.locator(f'#rollout tr[data-model="{MODEL}"]')).to_have_attribute(
        "data-state", "running"
    )
    if shot:
        shoot(page, shot)


def running_count(page: Page) -> str:
    return page.locator(f'#rollout tr[data-model="{MODEL}"] td.num').first.inner_text()


def add_model(page: Page, console: ConsoleServer) -> CatalogModel:
    """Step 1 on the catalog page: a synthetic model at 1/2 USD per million tokens."""
    page.goto(f"{console.url}/staff/models/new/")
    page.locator("[name=name]").fill(MODEL)
    page.locator("[name=engine_kind]").select_option("synthetic")
    expect(page.locator("[name=ea-ttft_ms]")).to_be_visible()
    page.locator("[name=ea-ttft_ms]").fill("0")
    page.locator("[name=ea-tpot_ms]").fill("1")
    page.locator("[name=ea-default_max_tokens]").fill("8")
    page.locator("[name=context_length]").fill("4096")
    page.locator("[name=price_input_per_mtok]").fill("1")
    page.locator("[name=price_output_per_mtok]").fill("2")
    page.locator("[name=replica_cpus]").fill("0.5")
    shoot(page, "operator-catalog-new")
    page.locator("#model-save").click()
    expect(page.locator(".messages")).to_be_visible()
    page.goto(f"{console.url}/staff/models/")
    expect(page.get_by_role("link", name=MODEL, exact=True).first).to_be_visible()
    shoot(page, "operator-catalog")
    return CatalogModel.objects.get(name=MODEL)


def reprice(page: Page, console: ConsoleServer, model: CatalogModel) -> None:
    """Step 2 on the model's catalog page: the output price becomes 5."""
    page.goto(f"{console.url}/staff/models/{model.pk}/")
    page.locator("[name=price_output_per_mtok]").fill("5")
    shoot(page, "operator-catalog-edit")
    page.locator("#model-save").click()
    expect(page.locator(".messages")).to_be_visible()


def scale(page: Page, console: ConsoleServer) -> None:
    """Step 3: two replicas on the Cluster page (which stores and applies at once); then the
    Deploy page's rollout settles."""
    page.goto(f"{console.url}/staff/cluster/")
    page.locator("#scale-form [name=model]").select_option(MODEL)
    page.locator("#scale-form [name=replicas]").fill("2")
    page.locator("#scale-form button[type=submit]").click()
    expect(page.locator(".messages")).to_contain_text("scaled to 2 replicas")
    shoot(page, "operator-cluster")
    page.goto(f"{console.url}/staff/deploy/")
    watch(page)


# --- the operator's day ------------------------------------------------------------------------


def test_add_apply_reprice_scale_and_roll_back(
    operator_page, console, people, dashboard, serve_port
) -> None:
    page = operator_page
    _, org, secret = people
    gateway = f"http://127.0.0.1:{serve_port}"

    # 1. Add a model on the catalog page, apply, watch it come up, call it.
    model = add_model(page, console)
    assert model.engine_kind == "synthetic"
    assert model.engine_args == {"ttft_ms": 0, "tpot_ms": 1, "default_max_tokens": 8}

    apply_and_watch(page, console, "operator-deploy")
    first = DeploymentRevision.objects.filter(outcome="applied").first()
    assert first is not None
    assert running_count(page) == "1 / 1"
    ask(gateway, secret)
    event = priced_event(org, 0)
    assert (Decimal(event["price_input_per_mtok"]), Decimal(event["price_output_per_mtok"])) == (
        Decimal(1),
        Decimal(2),
    )

    # 2. A new price, applied in place: the next request is charged it, no replica restarted.
    replicas_before = model_replicas(dashboard)
    reprice(page, console, model)
    assert CatalogModel.objects.get(pk=model.pk).price_output_per_mtok == Decimal(5)
    apply_and_watch(page, console)
    history = page.locator("#revisions-table tbody tr").first
    expect(history).to_contain_text(f"1 changed ({MODEL})")
    history.locator("summary").click()
    expect(history.locator('tr[data-field="price_output_per_mtok"]')).to_contain_text("5.000000")
    shoot(page, "operator-deploy-history")
    ask(gateway, secret)
    event = priced_event(org, 1)
    assert Decimal(event["price_output_per_mtok"]) == Decimal(5)
    assert model_replicas(dashboard) == replicas_before

    # 3. Scale to two replicas on the Cluster page; both run.
    scale(page, console)
    expect(page.locator(f'#rollout tr[data-model="{MODEL}"] td.num').first).to_have_text(
        "2 / 2", timeout=SETTLE_MS
    )
    assert replicas_before < model_replicas(dashboard)  # one added, none replaced

    # 4. Roll back to the first revision: confirmed, then running as it was.
    page.get_by_role("link", name=f"Roll back to revision #{first.pk}").click()
    expect(page.locator("h1")).to_contain_text(f"Roll back to revision #{first.pk}?")
    shoot(page, "operator-rollback")
    page.locator("#rollback-confirm").click()
    expect(page.locator(".messages")).to_contain_text(f"Rollback to revision #{first.pk}")
    watch(page, "operator-rolled-back")
    expect(page.locator(f'#rollout tr[data-model="{MODEL}"] td.num').first).to_have_text(
        "1 / 1", timeout=SETTLE_MS
    )
    gateway_app = dashboard.get_applications()["applications"][APP_NAME]
    assert deployed_revision(gateway_app) == first.revision
    ask(gateway, secret)
    event = priced_event(org, 2)
    assert Decimal(event["price_output_per_mtok"]) == Decimal(2)
    newest = DeploymentRevision.objects.first()
    assert newest is not None
    assert newest.config == first.config
    assert newest.applied_by is not None
    assert newest.applied_by.username == "operator"
    assert re.search(r"operator-.*\.png", " ".join(p.name for p in SCREENSHOTS.iterdir()))
