"""The tenant console end to end: Debian's Chromium, driven by Playwright, against the console
served by uvicorn (``console_server``) and the real gateway on Ray Serve of this package.

What a tenant admin does is done in the browser: sign in, invite a colleague who accepts, create
a key and copy it, call the gateway with the ``openai`` SDK and that key, find the request on the
Requests page and in the usage chart, rotate and revoke the key and see the gateway refuse it,
chat in the playground. Each page is photographed at laptop and phone widths into
``artifacts/screenshots/`` (kept by CI) for a reviewer.

The usage events the gateway sends to its broker are ingested by calling the same function the
Celery task calls (``billing.ingest.ingest_events``), in this process: the test owns the queue.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from playwright.sync_api import Browser, Page, expect, sync_playwright

from billing.ingest import ingest_events
from billing.models import UsageEvent, UsageRollup
from tenants import services
from tenants.models import ApiKey, Membership, Organization, Role
from tests.factories import CatalogModelFactory
from tests.serving.conftest import SESSION_PREFIX, usage_events
from tests.serving.console_server import ROOT, ConsoleServer, start_console

pytestmark = [pytest.mark.ray]

SCREENSHOTS = Path(os.environ.get("VLINDERS_SCREENSHOTS_DIR", ROOT / "artifacts" / "screenshots"))
CHROMIUM = os.environ.get("VLINDERS_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "a-long-test-passphrase-17"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 900}
SLUG = "acme-e2e"
# The catalog rows of the deployed models this module's organisation uses (the package gateway
# serves them; the synthetic engine is the labelled test engine, not a model).
MODELS = ("syn-fast", "syn-slow")


@pytest.fixture(scope="module")
def committed(django_db_setup, django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Database access that commits: the console server is another process and reads only
    committed rows. What this module creates it deletes at the end (no table flush, which would
    also take the package's own rows). pytest-django runs these tests after the database tests,
    one of which terminates server connections on purpose: start from a fresh connection."""
    with django_db_blocker.unblock():
        connections.close_all()
        yield


@pytest.fixture(scope="module")
def acme(committed, gateway) -> Iterator[tuple[Organization, User]]:  # type: ignore[no-untyped-def]
    """An organisation with an owner who has a password, created as the API creates one (so it
    is published to the gateway's access snapshot), with the models it may use."""
    previous_prefix = settings.VLINDERS_REDIS_PREFIX
    settings.VLINDERS_REDIS_PREFIX = SESSION_PREFIX  # published where the gateway reads
    made = [CatalogModelFactory(name=name) for name in MODELS]
    owner = User.objects.create_user("ada", "ada@example.com", PASSWORD)
    org = services.organization_create(name="Acme Robotics", slug=SLUG, owner=owner)
    try:
        yield org, owner
    finally:
        UsageEvent.objects.filter(organization_id=org.id).delete()
        UsageRollup.objects.filter(organization_id=org.id).delete()
        org.delete()
        User.objects.filter(username__in=["ada", "grace"]).delete()
        for model in made:
            model.delete()
        settings.VLINDERS_REDIS_PREFIX = previous_prefix


@pytest.fixture(scope="module")
def console(acme, gateway) -> Iterator[ConsoleServer]:  # type: ignore[no-untyped-def]
    port = int(gateway.base_url.rsplit(":", 1)[1])
    yield from start_console(redis_prefix=SESSION_PREFIX, gateway_port=port)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Playwright's sync API keeps an event loop running in this thread, where Django would then
    refuse ORM calls; the tests' own ORM calls are plain blocking ones, which Playwright's
    documentation for Django says to allow while it runs."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield from _chromium()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def ada(browser, console) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    """The owner, signed in, in a browser context of her own."""
    context = browser.new_context(viewport=LAPTOP)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
    page = context.new_page()
    sign_in(page, console, "ada")
    yield page
    context.close()


def shoot(page: Page, name: str) -> None:
    """Save the page at laptop width, then at phone width (and back)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(LAPTOP)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
    page.set_viewport_size(LAPTOP)


def sign_in(page: Page, console: ConsoleServer, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{console.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def ingest_for(org: Organization, usage_broker: Any, count: int) -> list[dict[str, Any]]:
    """Take this organisation's events off the gateway's broker and ingest them, as the worker
    would (the same function the Celery task calls)."""
    events = usage_events(
        usage_broker,
        wait_for=lambda seen: sum(e.get("org_id") == str(org.id) for e in seen) >= count,
    )
    mine = [e for e in events if e.get("org_id") == str(org.id)]
    assert len(mine) >= count, mine
    ingest_events(mine, task_id=f"e2e-{org.id}-{len(mine)}")
    return mine


def refused_within(secret: str, base_url: str, seconds: float) -> float:
    """Call the gateway with ``secret`` until it answers 401; how long that took."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0)
    start = time.monotonic()
    while True:
        try:
            client.chat.completions.create(
                model="syn-fast", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        except openai.AuthenticationError:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"still accepted after {seconds} s"
        time.sleep(0.05)


PAGES = [
    ("", "01-overview"),
    ("keys/", "02-keys"),
    ("usage/", "03-usage"),
    ("requests/", "04-requests"),
    ("models/", "05-models"),
    ("limits/", "06-limits"),
    ("members/", "07-members"),
    ("audit/", "08-audit"),
    ("playground/", "09-playground"),
    ("keys/new/", "10-key-create"),
    ("billing/", "12-billing"),
]
AXE = ROOT / "console" / "assets" / "node_modules" / "axe-core" / "axe.min.js"


def test_every_page_renders_for_the_owner(ada, console, acme) -> None:
    """Every page answers 200 and the browser reports no Content Security Policy violation
    (the pages' own scripts and styles all come from the console's origin)."""
    org, _ = acme
    refused: list[str] = []
    ada.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    for path, name in PAGES:
        response = ada.goto(f"{console.url}/orgs/{org.slug}/{path}")
        assert response is not None
        assert response.status == 200, (path, console.log()[-3000:])
        ada.wait_for_load_state("networkidle")
        shoot(ada, name)
    assert refused == []
    ada.goto(f"{console.url}/orgs/new/")
    shoot(ada, "11-org-create")
    ada.context.clear_cookies()
    ada.goto(f"{console.url}/login/")
    shoot(ada, "00-sign-in")


def test_every_page_passes_an_accessibility_check(browser, console, acme) -> None:
    """axe-core (pinned in console/assets) finds no WCAG 2 A/AA violation on any page: labels,
    contrast, landmarks, names of buttons and links. Its script is injected into the page, which
    the Content Security Policy would refuse, so this context alone bypasses the policy."""
    org, _ = acme
    context = browser.new_context(viewport=LAPTOP, bypass_csp=True)
    page = context.new_page()
    sign_in(page, console, "ada")
    found = {}
    for path, _name in [*PAGES, ("../new/", "org-create")]:
        page.goto(f"{console.url}/orgs/{org.slug}/{path}")
        page.wait_for_load_state("networkidle")
        page.add_script_tag(path=str(AXE))
        result = page.evaluate(
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})"
        )
        violations = [
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"]
        ]
        if violations:
            found[path or "overview"] = violations
    context.close()
    assert found == {}


# Read-only on the database, so it may run inside a test transaction: its mark also tells
# pytest-django to create the test database when this module runs alone.
@pytest.mark.django_db
def test_invite_a_colleague_who_accepts(ada, browser, console, acme) -> None:
    org, _ = acme
    ada.goto(f"{console.url}/orgs/{org.slug}/members/")
    ada.get_by_label("E-mail address").fill("grace@example.com")
    ada.get_by_label("Role", exact=True).select_option("member")
    ada.get_by_role("button", name="Send invitation").click()
    expect(ada.get_by_text("Invitation sent to grace@example.com")).to_be_visible()
    shoot(ada, "12-members-invited")

    links = [
        m
        for body in console.mails()
        for m in re.findall(r"https?://\S+/invitations/vli_[\w-]+/", body)
    ]
    assert links, console.mails()
    grace = browser.new_context(viewport=LAPTOP).new_page()
    grace.goto(links[-1])
    expect(grace.get_by_role("heading", name=re.compile("Join Acme Robotics"))).to_be_visible()
    shoot(grace, "13-invitation")
    grace.get_by_label("Username").fill("grace")
    grace.get_by_label("Password", exact=True).fill(PASSWORD)
    grace.get_by_label("Password confirmation").fill(PASSWORD)
    grace.get_by_role("button", name="Create my account and join").click()
    expect(grace.get_by_role("button", name="Sign out")).to_be_visible()
    assert grace.url.rstrip("/").endswith(f"/orgs/{org.slug}")
    assert Membership.objects.get(organization=org, user__username="grace").role == Role.MEMBER
    grace.context.close()


def test_a_key_from_creation_to_revocation(ada, console, acme, gateway, usage_broker) -> None:
    org, _ = acme
    ada.goto(f"{console.url}/orgs/{org.slug}/keys/new/")
    ada.get_by_label("Name").fill("ci-key")
    ada.get_by_role("button", name="Create key").click()
    secret = ada.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("vlk_")
    ada.get_by_role("button", name="Copy key").click()
    expect(ada.get_by_role("button", name="Copied")).to_be_visible()
    assert ada.evaluate("navigator.clipboard.readText()") == secret
    snippet = ada.locator("#new-key-snippet").inner_text()
    assert f"{gateway.base_url}/v1" in snippet
    shoot(ada, "14-key-revealed")

    # The key works at the gateway, with the official SDK, at once.
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)
    reply = client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert reply.usage is not None
    ingest_for(org, usage_broker, 1)

    # The request shows on the Requests page and in the usage chart.
    ada.goto(f"{console.url}/orgs/{org.slug}/requests/")
    row = ada.locator("tbody tr").filter(has_text="ci-key").filter(has_text="syn-fast")
    expect(row.first).to_be_visible()
    shoot(ada, "15-requests")
    ada.goto(f"{console.url}/orgs/{org.slug}/usage/?granularity=hour&group_by=model")
    chart = json.loads(ada.locator("script#usage-chart-data").inner_text())
    assert any(
        series["label"] == "syn-fast" and sum(series["values"]) >= 1 for series in chart["series"]
    ), chart
    expect(ada.locator(".chart canvas").first).to_be_visible()
    shoot(ada, "16-usage")

    # Rotate without grace: the old secret is refused, the new one works.
    ada.goto(f"{console.url}/orgs/{org.slug}/keys/")
    ada.get_by_role("link", name="Rotate ci-key").click()
    ada.get_by_label("Grace period").select_option(label="None: the old key stops working now")
    ada.get_by_role("button", name="Rotate key").click()
    rotated = ada.locator("#new-key-secret").inner_text().strip()
    assert rotated.startswith("vlk_")
    assert rotated != secret
    assert refused_within(secret, gateway.base_url, 1.0) < 1.0
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=rotated, max_retries=0)
    client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "again"}], max_tokens=2
    )

    # Revoke from the list, confirming the dialog: the gateway refuses it within a second.
    ada.goto(f"{console.url}/orgs/{org.slug}/keys/")
    ada.once("dialog", lambda dialog: dialog.accept())
    ada.get_by_role("button", name="Revoke ci-key").click()
    expect(ada.get_by_text(re.compile("the gateway refuses it from now on"))).to_be_visible()
    assert refused_within(rotated, gateway.base_url, 1.0) < 1.0
    shoot(ada, "17-key-revoked")


def test_the_playground_chats_through_the_gateway(ada, console, acme) -> None:
    org, _ = acme
    ada.goto(f"{console.url}/orgs/{org.slug}/playground/")
    ada.get_by_label("Model").select_option("syn-fast")
    ada.get_by_label("Max tokens").fill("12")
    ada.get_by_label("Message").fill("Say something")
    ada.get_by_role("button", name="Send").click()
    expect(ada.locator("#playground-usage")).to_contain_text("Last reply", timeout=30_000)
    reply = ada.locator("#playground-conversation li.turn-assistant .content").last
    assert reply.inner_text().strip()
    expect(ada.locator("#playground-usage")).to_contain_text("12 completion tokens")
    assert "vlk_" not in ada.content()
    shoot(ada, "18-playground")
    # Metered to the organisation under the member's console credential.
    key = ApiKey.objects.get(organization=org, source=ApiKey.Source.CONSOLE)
    assert key.created_by is not None
    assert key.created_by.username == "ada"
